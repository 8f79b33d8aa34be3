"""Debris and platelets that pass the size limit are flagged SMALL: a constriction made to squeeze
cells does not squeeze them, so their mechanics mean nothing; they are never sorted by default and
never become training data."""

from __future__ import annotations

import dataclasses

from acquisition.synthetic import SyntheticCamera, SyntheticSettings
from app.offline import track_camera
from app.sorting import SortSettings
from app.validate import match_events
from tracking.events import NOT_FOR_TRAINING, Quality


def test_debris_is_flagged_small_and_cells_are_not():
    # debris right at the tracker's size limit (4.4 µm: 15 µm²), plenty of it
    s = SyntheticSettings(duration_s=2.0, realtime=False, seed=12, fps=4000.0, cells_per_second=40.0,
                          debris_per_second=60.0, debris_diameter_um=(4.0, 4.6), doublet_fraction=0.0)
    with SyntheticCamera(s) as cam:
        res = track_camera(cam)
        truth = list(cam.truth)
    # the matcher pairs events with cells: debris goes in as cells, told apart by its class
    as_cells = [dataclasses.replace(t, kind="cell") if t.kind == "debris" else t for t in truth]
    m = match_events(res.events, as_cells, run_ms=res.frames * 1000.0 / s.fps, frame_ms=1000.0 / s.fps)
    debris = [e for e, t in m.pairs if t.cls == "debris"]
    cells = [e for e, t in m.pairs if t.cls != "debris"]
    assert len(debris) >= 5 and len(cells) >= 40
    # (a few lumps of two particles measure as large as a small cell)
    assert sum(bool(e.quality & Quality.SMALL) for e in debris) >= 0.9 * len(debris)
    assert not any(e.quality & Quality.SMALL for e in cells)
    assert Quality.SMALL & NOT_FOR_TRAINING and "SMALL" in SortSettings().reject_flags
