"""Records cross to the event-writer process pickled: every field must survive, at C speed."""

import dataclasses
import pickle

import numpy as np
import pytest

from app.records import CellRecord
from app.sorting import Decision, Reason
from hardware.trigger import FireRecord
from mimlsort.pickling import by_fields
from tracking.events import CellEvent, Quality, Snapshot


def _record():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (12, 20), dtype=np.uint8)
    snap = Snapshot(img, img // 2, img > 100, 77, 3.5, 6.25)
    ev = CellEvent(5, 9, {"di": 0.12, "transit_time_ms": float("nan")}, img[:8, :8].copy(), img[4:, 4:12].copy(),
                   0.5, 100, 104, 123456789, Quality.DOUBLET | Quality.BORDER, {"emit_host_ns": 42}, snap)
    fire = FireRecord(5, 10, 11, 250.0, 100.0, False, True, "", "log")
    return CellRecord(ev, np.array([0.25, 0.75], np.float32), Decision(5, True, Reason.FIRED, "wbc", 0.75, True, "x"),
                      fire)


def _same(a, b):
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b)
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b and type(a) is type(b)


def test_records_round_trip_through_pickle_field_by_field():
    rec = _record()
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        _same(rec, pickle.loads(pickle.dumps(rec, proto)))


@by_fields
@dataclasses.dataclass(frozen=True, slots=True)
class Checked:
    a: int
    b: int

    def __post_init__(self):
        if self.a > self.b:
            raise ValueError("a > b")


def test_by_fields_rebuilds_through_the_constructor_and_refuses_what_it_would_lose():
    x = Checked(1, 2)
    assert pickle.loads(pickle.dumps(x)) == x
    object.__setattr__(x, "b", 0)  # state the constructor refuses does not come back silently
    with pytest.raises(ValueError):
        pickle.loads(pickle.dumps(x))

    with pytest.raises(TypeError):
        @by_fields
        @dataclasses.dataclass(frozen=True)
        class Hidden:
            a: int
            b: int
            c: int = dataclasses.field(default=0, init=False)
