"""What the sort path hands to storage: one record per decided cell.

Its own module so that storage, reports and the GUI depend on the record, not on the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.sorting import Decision
from mimlsort.pickling import by_fields
from tracking.events import CellEvent


@by_fields
@dataclass(frozen=True, slots=True)
class CellRecord:
    """Everything decided about one cell.

    ``probabilities`` is float32[K] in the model's class order (empty without a model);
    ``decision`` is None when no sort policy ran; ``fire`` is the trigger's
    :class:`hardware.trigger.FireRecord` (scheduled/sent times, device ack) or None when nothing
    was sent.
    """

    event: CellEvent
    probabilities: np.ndarray
    decision: Decision | None
    fire: Any = None
