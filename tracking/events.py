"""What the tracker emits: one :class:`CellEvent` per cell that finished its passage."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mimlsort.errors import DataFormatError
from mimlsort.pickling import by_fields


class Quality(enum.IntFlag):
    """Quality flags of an event (a bitmask, stored as an integer in files)."""

    OK = 0
    DOUBLET = 1  # two touching cells segmented as one blob (area/shape outliers, or a merge seen)
    BORDER = 2  # the blob touched the ROI border while it was measured
    INCOMPLETE = 4  # the passage was not seen whole (entered mid-constriction, lost, run ended)
    LOW_CONTRAST = 8  # the cell barely stands out of the background
    STUCK = 16  # the cell stopped in the channel for longer than the stuck limit
    TOUCHING = 32  # touched a neighbour in or past the constriction: cut from it at their waist there
    SMALL = 64  # smaller at rest than tracking.min_cell_diameter_um: debris or a platelet, not a squeezed cell
    # set by the event file only, never by the tracker: the file holds no ROI image of this cell
    # (its frame was overwritten before the cell was emitted, or the image was shed while the
    # writer was behind); its image is the background and its mask a 3x3-pixel placeholder
    NO_ROI_IMAGE = 128


#: flags that keep an event out of training data (and the MIML authors' export): it is not one
#: whole cell seen clearly. TOUCHING is not among them: such a cell is measured on the frames where
#: it was seen whole, the sorter classifies it, and a model trained with such cells classifies
#: them better (NOTES.md, "Touching cells")
NOT_FOR_TRAINING = (Quality.DOUBLET | Quality.BORDER | Quality.INCOMPLETE | Quality.LOW_CONTRAST | Quality.STUCK
                    | Quality.SMALL)


@by_fields
@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole ROI at one frame of a cell's passage (the frame of maximum DI in the
    constriction), with the background and this cell's filled mask — what an RT-DC event file
    stores as ``image``, ``image_bg`` and ``mask``."""

    image: np.ndarray  # (H, W), the frames' dtype
    background: np.ndarray  # (H, W), same dtype
    mask: np.ndarray  # (H, W) bool, this cell only
    frame_id: int
    pos_x_px: float  # the cell's centroid in that frame
    pos_y_px: float

    def __post_init__(self):
        if self.image.ndim != 2 or self.image.shape != self.background.shape or self.image.shape != self.mask.shape:
            raise DataFormatError(f"snapshot of frame {self.frame_id}: arrays must share one (H, W) shape, got image {self.image.shape}, "
                             f"background {self.background.shape}, mask {self.mask.shape}")
        if self.mask.dtype != np.bool_:
            raise DataFormatError(f"snapshot of frame {self.frame_id}: mask must be boolean, got {self.mask.dtype}")


@by_fields
@dataclass(frozen=True, slots=True)
class CellEvent:
    """One cell's passage through the constriction.

    ``features`` maps names from :mod:`tracking.features` to values in their units.
    ``first_crop``/``last_crop`` are fixed-size 8-bit crops (a deeper camera's grey levels shifted
    down, as models are trained on 8-bit grey) centred on the cell at the frames of constriction
    entry and exit, padded with the background at the border. ``extra`` holds what the tracker
    adds for the event image's columns and the pulse timing (``exit_easing_ms``).
    """

    index: int  # running number of the event in the run
    track_id: int
    features: Mapping[str, float]
    first_crop: np.ndarray
    last_crop: np.ndarray
    crop_pixel_size_um: float
    entry_frame: int  # frame_id of the first frame with the centroid inside the constriction
    exit_frame: int  # frame_id of the first frame with the centroid past the constriction
    exit_host_ns: int  # host monotonic time of the exit frame's arrival (drives sort timing)
    quality: Quality = Quality.OK
    extra: Mapping[str, object] = field(default_factory=dict)
    snapshot: Snapshot | None = None  # full-ROI image, background and mask at the frame of max DI

    @property
    def ok(self) -> bool:
        return self.quality == Quality.OK

    @property
    def trainable(self) -> bool:
        """No flag in :data:`NOT_FOR_TRAINING`."""
        return not int(self.quality) & int(NOT_FOR_TRAINING)
