"""`mimlsort bench pipeline` end to end, briefly: the figures BENCHMARKS.md quotes are there and
consistent with each other (timings themselves are not asserted: the machines are shared)."""

from __future__ import annotations

import pytest

from app.bench import bench_pipeline


def test_bench_pipeline_reports_latency_from_the_emission_and_from_the_exit():
    r = bench_pipeline(seconds=1.5, fps=4000, cells_per_second=60)
    assert r["frames_missed"] == 0
    assert r["cells"] > 0 and r["events_in_file"] == r["cells"]
    # a cell leaves the constriction frames before it reaches the emission line, where its
    # features are complete and its decision starts: timed from the exit, every decision is
    # longer by that travel (at least one frame, 250 µs at 4 kHz)
    assert r["latency_from_exit_us_p50"] > r["latency_us_p50"] + 200
    assert r["latency_from_exit_us_p99"] is not None


def test_bench_clock_map_scores_every_frame_against_when_it_was_due(tmp_path):
    import numpy as np

    from app.bench import bench_clock_map

    r = bench_clock_map(seconds=1.5, fps=4000, cells_per_second=60, save=str(tmp_path / "pairs.npz"))
    d = np.load(tmp_path / "pairs.npz")
    # the observer saw the run's frames from its first look on, in order, none twice
    assert r["frames"] == len(d["camera_ns"]) > 4000 and r["frames_not_scored"] == 0
    steps = np.diff(d["camera_ns"])
    assert np.all(steps > 0) and np.all(steps % 250_000 == 0)  # frames the camera skipped under load may miss
    # a frame arrives when it is due or later, never before (the truth the map is scored against)
    assert (d["host_ns"] >= d["due_ns"]).all() and r["delivery_late_us_p50"] >= 0
    assert r["map_resets"] == 0 and r["map_error_us_p1"] <= r["map_error_us_p50"] <= r["map_error_us_p99"]


def test_bench_sorting_fires_its_serial_trigger():
    # a replay fires no sorter unless asked (app.session.build_run): the bench asks, or it would
    # time a null trigger and call it the serial one
    from app.bench import bench_sorting
    from app.config import bundled_model_path

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    from app.pipeline import Pipeline
    from app.stages import STAGES
    from tracking.tracker import Tracker

    track_live, handle = Tracker.track_live, Pipeline._handle
    res = bench_sorting(seconds=0.4, cells_per_second=100.0, stages=True)
    assert res["pulses_to"] == "serial" and res["fired"] > 0
    # the stage probe timed the cells handed to the trigger from the tracking thread (fired, or
    # found late by it), each stage in order on one clock (the kernel's own stamp included), and
    # gave the classes back as it found them
    assert 0 < res["stage_cells"] <= res["fired"] + res["late"]
    for name in STAGES:
        p50, p90, p99 = res[f"stage_{name}_us_p50_p90_p99"]
        assert 0 <= p50 <= p90 <= p99, name
    assert res["stage_classify_us_p50_p90_p99"][0] > 0 and res["stage_kernel_us_p50_p90_p99"][0] > 0
    assert (Tracker.track_live, Pipeline._handle) == (track_live, handle)


def test_stage_probe_keeps_each_threads_stamps_apart(monkeypatch):
    # the decide thread classifies and fires too: its stamps went into the tracking thread's
    # (one dict for both), and its end of handling emptied it, so a tracking-thread cell decided
    # meanwhile was dropped or timed with the other thread's model call
    import threading
    from types import SimpleNamespace

    import numpy as np

    from app.stages import StageProbe
    from tracking import live
    from tracking.tracker import Tracker

    monkeypatch.setattr(Tracker, "track_live", lambda tracker: None)
    kernel_end = np.zeros((1, live.O_T_END + 1), np.int64)
    kernel_end[0, live.O_T_END] = 3
    pipeline = SimpleNamespace(classifier=SimpleNamespace(classify=lambda *a: None),
                               trigger=SimpleNamespace(fire=lambda *a: None))
    with StageProbe().attached() as probe:
        probe._wrap(pipeline)
        Tracker.track_live(SimpleNamespace(_live=kernel_end))  # this thread tracks
        pipeline.classifier.classify()

        def decide():  # a cell handed to the decide thread, handled in the middle of this one's
            pipeline.classifier.classify()
            pipeline.trigger.fire()
            probe._record([])

        t = threading.Thread(target=decide)
        t.start()
        t.join()
        pipeline.trigger.fire()
        probe._record([SimpleNamespace(extra={"emit_host_ns": 1})])
    assert probe.summary()["stage_cells"] == 1
    (_arrived, call, kend, ret, cls0, cls1, fired), = probe._rows
    assert call <= ret <= cls0 <= cls1 <= fired and kend == 3
