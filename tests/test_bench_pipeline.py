"""`mimlsort bench pipeline` end to end, briefly: the figures BENCHMARKS.md quotes are there and
consistent with each other (timings themselves are not asserted: the machines are shared)."""

from __future__ import annotations

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
