"""STUCK means a cell that stopped, not a cell that took long to cross the view: on a long field
of view or at a slow flow every cell was flagged STUCK, and nothing was sorted."""

from __future__ import annotations

from acquisition import synthetic
from app.validate import match_events
from tracking.events import Quality
from tracking.tracker import Tracker, TrackerSettings


def _matched(s: synthetic.SyntheticSettings, kernels: str = "numba"):
    n = s.frame_count
    frames, truth = synthetic.render_frames(s, n)
    tracker = Tracker.from_frames(frames, s.pixel_size_um, TrackerSettings(), kernels=kernels)
    events = tracker.process_frames(frames, fps=s.fps) + tracker.flush()
    return match_events(events, truth, run_ms=n * 1000 / s.fps, frame_ms=1000 / s.fps).pairs


def test_slow_cells_crossing_a_long_view_are_not_stuck(kernels="numba"):
    # in view ~90 ms (under tracking.max_history's 512 frames, past which a cell is flagged too)
    s = synthetic.SyntheticSettings(width=512, constriction_start_um=150.0, duration_s=0.3,
                                    cells_per_second=40.0, debris_per_second=0.0, doublet_fraction=0.0, seed=5)
    pairs = _matched(s, kernels)
    slow = [(e, t) for e, t in pairs if (t.last_frame - t.first_frame) / s.fps * 1000 > 1.5 * 50.0]
    assert len(slow) >= 3  # in view for longer than the stuck limit: flagged before
    assert not any(e.quality & Quality.STUCK for e, _ in slow)


def test_a_cell_that_stops_at_the_constriction_is_stuck(kernels="numba"):
    s = synthetic.SyntheticSettings(stuck_fraction=0.5, stuck_ms=(70.0, 90.0), duration_s=0.5, cells_per_second=30.0,
                                    debris_per_second=0.0, doublet_fraction=0.0, seed=6)
    pairs = _matched(s, kernels)
    stuck = [e for e, t in pairs if t.stuck_ms > 0]
    # (a cell that waits behind a stuck one stops too: only those in view for less than the limit)
    free = [e for e, t in pairs if t.stuck_ms == 0 and (t.last_frame - t.first_frame) / s.fps * 1000 < 50.0]
    assert len(stuck) >= 2 and len(free) >= 2
    assert all(e.quality & Quality.STUCK for e in stuck)
    assert not any(e.quality & Quality.STUCK for e in free)
