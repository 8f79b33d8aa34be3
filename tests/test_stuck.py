"""STUCK means a cell that stopped, not a cell that took long to cross the view: on a long field
of view or at a slow flow every cell was flagged STUCK, and nothing was sorted."""

from __future__ import annotations

import numpy as np

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


def _notes(s: synthetic.SyntheticSettings) -> tuple[list[str], float]:
    frames, _truth = synthetic.render_frames(s, s.frame_count)
    tracker = Tracker.from_frames(frames, s.pixel_size_um, TrackerSettings())
    notes = []
    tracker.on_note = notes.append
    tracker.process_frames(frames, fps=s.fps)
    return notes, tracker.blocked_s


def test_a_blocked_constriction_is_said_and_so_is_its_end():
    # a cell stuck at the constriction's mouth for 0.6 s stopped every cell behind it; the run
    # read "0 cells/s", as for an empty sample, the stuck cell became background after 2,048
    # frames and vanished from the tracker, and nothing said why
    base = dict(duration_s=1.2, cells_per_second=20.0, debris_per_second=0.0, doublet_fraction=0.0, seed=4)
    notes, blocked = _notes(synthetic.SyntheticSettings(stuck_fraction=0.5, stuck_ms=(600.0, 600.0), **base))
    said = [n for n in notes if "looks blocked" in n]
    again = [n for n in notes if "pass the constriction again" in n]
    assert said and again, notes
    assert notes.index(said[0]) < notes.index(again[0])
    # said within the half of the background's relearn time (2,048 frames at 4 kHz: 256 ms)
    assert all(200 <= float(n.split(" for ")[1].split(" ms")[0]) <= 260 for n in said), said
    assert all(0.45 <= float(n.split("blocked for ")[1].split(" s")[0]) <= 0.75 for n in again), again
    # cells that stop for less (STUCK, 70-90 ms) and a free flow block nothing
    for stuck in (dict(stuck_fraction=0.5, stuck_ms=(70.0, 90.0)), {}):
        notes, blocked = _notes(synthetic.SyntheticSettings(**stuck, **base))
        assert not [n for n in notes if "blocked" in n], notes
        assert blocked != blocked  # NaN: not blocked


def test_debris_stuck_to_a_wall_at_the_mouth_while_cells_pass_it_blocks_nothing():
    # a speck stuck at the mouth beside the cells' way (x 42 µm, 12 µm from the channel's centre)
    # stood still 250 ms while cells went by it: "the constriction looks blocked ... no cell
    # passes while it stays", twice, and "blocked for 0.3 s" though a cell passed every 25 ms
    s = synthetic.SyntheticSettings(duration_s=1.5, cells_per_second=40.0, debris_per_second=0.0, seed=7)
    frames, _truth = synthetic.render_frames(s, s.frame_count)
    yy, xx = np.mgrid[: s.height, : s.width]
    speck = (xx - 84) ** 2 + (yy - 24) ** 2 <= 5.5**2
    frames[1000:, speck] -= 50  # (the lumen there is ~155)
    tracker = Tracker.from_frames(frames[:512], s.pixel_size_um, TrackerSettings())
    notes = []
    tracker.on_note = notes.append
    events = tracker.process_frames(frames, fps=s.fps)
    assert sum(e.exit_frame > 1300 for e in events) >= 20  # cells went by it all along
    assert not [n for n in notes if "blocked" in n], notes


def test_a_large_object_stuck_in_front_of_the_mouth_blocks_the_constriction():
    # a rigid 26 µm bead that stopped against the mouth, its centroid 13 µm upstream: the look
    # reached 10 µm (a cell radius) upstream, and the block was never said
    s = synthetic.SyntheticSettings(duration_s=0.8, cells_per_second=2.0, debris_per_second=0.0, seed=3)
    frames, _truth = synthetic.render_frames(s, s.frame_count)
    tracker = Tracker.from_frames(frames[:512], s.pixel_size_um, TrackerSettings())
    g = tracker.geometry
    r = 13.0 / s.pixel_size_um
    yy, xx = np.mgrid[: s.height, : s.width]
    cy = 0.5 * (g.channel_y0 + g.channel_y1)
    bead = (xx - (g.constriction_x0 - r)) ** 2 + (yy - cy) ** 2 <= r**2
    frames[1000:, bead] = np.minimum(frames[1000:, bead], 110)  # (the lumen is ~155)
    notes = []
    tracker.on_note = notes.append
    tracker.process_frames(frames, fps=s.fps)
    assert [n for n in notes if "looks blocked" in n and "at its mouth" in n], notes
    assert tracker.blocked_s > 0.3


def test_cells_after_a_block_are_measured_against_the_empty_channel():
    # a cell stuck 0.9 s at the mouth became background after 2,048 frames; once it left, the
    # cells that came were measured against a background that still held it: 8 of the 9 next
    # cells flagged DOUBLET (merged with its imprint), 38 events for 20 cells
    s = synthetic.SyntheticSettings(duration_s=2.0, cells_per_second=20.0, debris_per_second=0.0, doublet_fraction=0.0,
                                    stuck_fraction=0.15, stuck_ms=(900.0, 900.0), seed=4)
    frames, truth = synthetic.render_frames(s, s.frame_count)
    tracker = Tracker.from_frames(frames[:512], s.pixel_size_um, TrackerSettings())
    notes = []
    tracker.on_note = notes.append
    events = tracker.process_frames(frames, fps=s.fps) + tracker.flush()
    assert [n for n in notes if "looks blocked" in n]
    pairs = match_events(events, truth, run_ms=s.frame_count * 1000 / s.fps, frame_ms=1000 / s.fps).pairs
    left = [t.exit_ms * s.fps / 1000 for t in truth if t.stuck_ms > 0]
    after = [e for e, t in pairs if t.stuck_ms == 0 and any(0 < t.first_frame - f < 1600 for f in left)]
    assert len(after) >= 8
    assert not any(e.quality & Quality.DOUBLET for e in after), [str(Quality(e.quality)) for e in after]
    assert len(events) <= len(truth)
