"""A sort pulse goes out when the cell reaches the junction: the fire time's travel from the
constriction exit (``v_after_mm_s`` and ``exit_easing_ms`` of the tracked event, through
:func:`hardware.timing.fire_time_ns`) against the simulator's truth (``TruthRecord.v_after_mm_s``:
the cell's speed past the exit once it has slowed down)."""

import numpy as np
import pytest

synthetic = pytest.importorskip("acquisition.synthetic")

from app.bench import SORT_FLOW, bench_pulse_timing  # noqa: E402
from app.validate import match_events, travel_errors  # noqa: E402
from tracking.tracker import Tracker, TrackerSettings  # noqa: E402


def _travel_errors(flow: dict, fps: float, cells_per_second: float, seconds: float):
    s = synthetic.SyntheticSettings(duration_s=seconds, fps=fps, cells_per_second=cells_per_second, seed=3,
                                    **{k.split(".", 1)[1]: v for k, v in flow.items()})
    n = round(seconds * fps)
    frames, truth = synthetic.render_frames(s, n)
    tracker = Tracker.from_frames(frames, s.pixel_size_um, TrackerSettings(snapshots=False))
    events = tracker.process_frames(frames, fps=fps) + tracker.flush()
    return travel_errors(match_events(events, truth, run_ms=n * 1e3 / fps, frame_ms=1e3 / fps), 200.0)


@pytest.mark.parametrize("flow, fps, rate, seconds", [
    # 60 mm/s past the exit, 2-3 frames between exit and emission: timed with the cell's speed
    # there, where it still slows down, pulses came 20% of the travel early (median)
    (SORT_FLOW, 8000.0, 100.0, 0.45),
    ({}, 4000.0, 40.0, 1.5),  # the default channel, 5 mm/s past the exit
])
def test_pulse_travel_time_matches_the_cells_arrival(flow, fps, rate, seconds):
    err = _travel_errors(flow, fps, rate, seconds)
    print(f"{len(err)} cells, travel error median {np.median(err):+.3f}, p5 {np.percentile(err, 5):+.3f}, "
          f"p95 {np.percentile(err, 95):+.3f}")
    assert len(err) >= 25
    assert abs(np.median(err)) <= 0.03  # no bias: the pulse comes when the cell does
    assert np.percentile(np.abs(err), 90) <= 0.08  # well inside a 1 ms pulse on a 3 ms travel


def test_pulse_timing_bench_reports_each_channel():
    res = bench_pulse_timing(seconds=0.3)
    keys = [k for k in res if k.endswith("_cells") and not k.endswith("_queued_cells")]
    assert len(keys) == 4
    for k in keys:
        base = k.removesuffix("_cells")
        assert res[k] > 0 and res[f"{base}_exit_speed_mm_s"] > 0
        assert res[f"{base}_travel_err_pct_p5"] <= res[f"{base}_travel_err_pct_p50"] <= res[f"{base}_travel_err_pct_p95"]
    assert res["sorting_dense_8kHz_1400_cells_s_queued_cells"] > 0  # dense flow queues at the mouth


def test_cells_that_queued_at_the_mouth_are_timed_by_their_free_pace():
    # a queued cell's upstream steps include its wait behind the cell ahead: counted as its pace,
    # it looked up to 1.7x slower than it moves, and its pulse came late
    from app.bench import SORT_FLOW as flow

    s = synthetic.SyntheticSettings(duration_s=0.3, fps=8000.0, cells_per_second=1400.0, seed=3,
                                    **{k.split(".", 1)[1]: v for k, v in flow.items()})
    frames, truth = synthetic.render_frames(s, 2400)
    tracker = Tracker.from_frames(frames, s.pixel_size_um, TrackerSettings(snapshots=False))
    events = tracker.process_frames(frames, fps=8000.0) + tracker.flush()
    m = match_events(events, truth, run_ms=300.0, frame_ms=0.125)
    queued = travel_errors(m, 200.0, queued=True)
    print(f"{len(queued)} queued cells, travel error median {np.median(queued):+.3f}, p95 {np.percentile(queued, 95):+.3f}")
    assert len(queued) >= 30
    assert abs(np.median(queued)) <= 0.03 and np.percentile(queued, 95) <= 0.10


def test_without_the_cells_own_pace_every_cell_moves_at_the_channels():
    from dataclasses import replace

    s = synthetic.SyntheticSettings(duration_s=0.45, fps=8000.0, cells_per_second=100.0, seed=3,
                                    **{k.split(".", 1)[1]: v for k, v in SORT_FLOW.items()})
    frames, truth = synthetic.render_frames(s, 3600)

    def speeds(per_cell):
        ts = replace(TrackerSettings(snapshots=False), pace_per_cell=per_cell)
        tracker = Tracker.from_frames(frames, s.pixel_size_um, ts)
        evs = tracker.process_frames(frames, fps=8000.0) + tracker.flush()
        n_own = tracker.stats.paces_unlearned
        return np.array([e.features["v_after_mm_s"] for e in evs[n_own + 2:] if e.features["v_after_mm_s"] > 0])

    own, channel = speeds(True), speeds(False)
    # the simulator gives each cell its own share of the flow: the channel's pace is one number
    # for all (it drifts only as the profile learns), a cell's own pace spreads as the truth does
    assert np.std(channel) / np.mean(channel) < 0.5 * np.std(own) / np.mean(own)
    assert np.mean(channel) == pytest.approx(np.mean(own), rel=0.05)


@pytest.mark.parametrize("speed", [2.0, 0.5])
def test_a_recording_replayed_faster_brings_its_cells_to_the_junction_sooner(tmp_path, speed):
    """Speeds are measured on the camera clock; a recording replayed in real time at ``speed``
    runs its cells ``speed`` times as fast on the host clock, so each pulse's travel past the
    exit is 1/speed of the camera-clock travel (it was the camera-clock travel whatever the speed:
    at 0.5 every pulse came half its travel early, at 2 twice as late as the cell)."""
    from app.config import bundled_model_path, config_from_mapping
    from app.session import build_run
    from app.simdata import record_simulation
    from app.storage import read_events
    from hardware.timing import TimingSettings, travel_ns

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    raw = tmp_path / "rec.rtdc"
    record_simulation(synthetic.SyntheticSettings(duration_s=1.6, seed=5, cells_per_second=60.0), raw)
    cfg = config_from_mapping({
        "camera": {"backend": "replay", "replay": {"path": str(raw), "realtime": True, "speed": speed}},
        "sorting": {"mode": "yield", "threshold": 0.0}, "trigger": {"backend": "null"},
        "output": {"folder": str(tmp_path / "out"), "report": False}})
    with build_run(cfg) as run:
        assert run.wait(60)
    f, _stored = read_events(run.events_path)
    m = (f["fired"] == 1) & (f["fire_scheduled_ns"] > 0)
    assert m.sum() >= 10
    s = TimingSettings()
    travel = np.array([travel_ns(v, s) for v in f["v_after_mm_s"][m]], float)
    # scheduled − the exit frame's arrival: the mapped exit (at most a little before that arrival)
    # + travel / speed (+ the easing, a few % of it) + the offset
    ratio = (f["fire_scheduled_ns"][m] - f["exit_host_ns"][m] - s.offset_us * 1000) / travel
    assert abs(np.median(ratio) - 1 / speed) < 0.15 / speed, np.percentile(ratio, [5, 50, 95])
