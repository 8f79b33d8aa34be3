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
