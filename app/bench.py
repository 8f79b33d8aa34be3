"""``mimlsort bench pipeline`` and ``mimlsort bench sorting``: the whole sort path, measured end to end.

Both run the real pipeline (synthetic camera thread → ring → tracker → bundled miml-mini model →
sort policy → trigger, with the event writer on its own thread) on this machine and report what
the status snapshot says: frame rates in and processed, frames missed, cells per second, and the
decision latency (host arrival of the frame that completed a cell → fire command written, or
decision taken when nothing fires).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

from app.config import RunConfig
from app.session import build_run, with_changes


#: a faster channel than the defaults: at 3 mm/s a single-file channel passes at most ~170 cells/s
FAST_FLOW = {"synthetic.flow_speed_mm_s": 20.0, "synthetic.constriction_speed_mm_s": 60.0,
             "synthetic.exit_speed_mm_s": 30.0}


def _run(cfg: RunConfig, folder: Path, *, lossless: bool = False, timeout_s: float = 120.0,
         stages: bool = False) -> dict:
    if stages:
        from app.stages import StageProbe

        with StageProbe().attached() as probe:
            res = _run(cfg, folder, lossless=lossless, timeout_s=timeout_s)
        return {**res, **probe.summary()}
    run = build_run(cfg, folder=folder, lossless=lossless, trigger=True)  # a replay's pulses are what it measures
    t0 = time.monotonic()
    run.start()
    live = None  # the last status while the run went: child processes' CPU is read from them
    try:
        while not run.wait(0.5):
            live = run.status()
            if time.monotonic() - t0 > timeout_s:
                run.stop()
                run.wait(30)
                break
    finally:
        run.pipeline.stop()
        run.pipeline.wait(30)
        run.close()
    wall = time.monotonic() - t0
    st = run.status()
    recorded = None
    if run.events_path is not None and run.events_path.exists():
        try:
            from app.storage import read_events

            feats, _meta = read_events(run.events_path)
            recorded = len(next(iter(feats.values()))) if feats else 0
        except Exception:  # the figure is informative; the tests check the file
            recorded = None
    elapsed = max(st.elapsed_s, 1e-9)
    return {
        "finish": f"{st.finish_reason.value if st.finish_reason else '?'} {st.message}".strip(),
        "seconds": round(elapsed, 2),
        "wall_s": round(wall, 2),
        "frames_in": st.frames_in,
        "frames_processed": st.frames_processed,
        "startup_frames": st.startup_frames,  # the background estimate's frames, not tracked (live runs)
        "fps_in": round(st.frames_in / elapsed),
        "fps_processed": round(st.frames_processed / elapsed),
        "frames_missed": st.frames_missed,
        "camera_dropped": st.camera_dropped,
        "cells": st.cells,
        "cells_per_s": round(st.cells / elapsed, 1),
        "events_in_file": recorded,
        "fired": st.fired,
        "late": st.late,
        "pulses_to": getattr(run.pipeline.trigger, "backend", "no trigger"),  # the device the decisions went to
        "decide_waits": st.decide_waits,
        "images_shed": st.images_shed,  # cells recorded without their ROI image (the event file fell behind)
        "trigger_failed": st.trigger_failed,
        "not_fired": st.not_fired,
        "latency_us_p50": round(st.latency_p50_us, 1) if math.isfinite(st.latency_p50_us) else None,
        "latency_us_p99": round(st.latency_p99_us, 1) if math.isfinite(st.latency_p99_us) else None,
        "latency_us_max": round(st.latency_max_us, 1) if math.isfinite(st.latency_max_us) else None,
        # the same decisions timed from the frame in which the cell left the constriction (its
        # features are complete only emit_after_exit_um further on)
        "latency_from_exit_us_p50": (round(st.latency_from_exit_p50_us, 1)
                                     if math.isfinite(st.latency_from_exit_p50_us) else None),
        "latency_from_exit_us_p99": (round(st.latency_from_exit_p99_us, 1)
                                     if math.isfinite(st.latency_from_exit_p99_us) else None),
        "file_mb": round(st.file_bytes / 1e6, 2),
        # cores each worker thread and child process used, averaged over the run
        "cpu_cores": {k: round(v / elapsed, 2) for k, v in
                      {**(live.cpu_s if live is not None else {}), **st.cpu_s}.items()},
    }


def bench_pipeline(seconds: float = 5.0, fps: float = 10_000.0, cells_per_second: float = 400.0,
                   model: str | None = None, compression: str = "all", stages: bool = False) -> dict:
    """The camera paced at ``fps`` (what a real camera does) through the full pipeline, writing events.
    ``stages``: where each decision's time went (:mod:`app.stages`)."""
    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-") as tmp:
        cfg = with_changes(RunConfig(),
                           camera={"backend": "synthetic", "synthetic.fps": fps, "synthetic.realtime": True,
                                   "synthetic.pregenerate": True,
                                   "synthetic.duration_s": seconds, "synthetic.cells_per_second": cells_per_second,
                                   **FAST_FLOW},
                           model={"path": model or "demo"}, trigger={"backend": "null"},
                           output={"folder": tmp, "sample": "bench", "compression": compression}, daemon={"log_file": ""})
        res = {"roi": f"{cfg.camera.synthetic.width}x{cfg.camera.synthetic.height}", "offered_fps": fps,
               "offered_cells_per_s": cells_per_second, "cpus": len(os.sched_getaffinity(0)), "compression": compression}
        res.update(_run(cfg, Path(tmp), timeout_s=seconds * 4 + 60, stages=stages))
        return res


def bench_clock_map(seconds: float = 5.0, fps: float = 10_000.0, cells_per_second: float = 400.0,
                    save: str | None = None) -> dict:
    """How well the camera→host clock map times a frame on the host clock in a loaded run.

    The pipeline of :func:`bench_pipeline` runs; beside it a thread copies every frame's camera
    time and host arrival out of the ring. The simulated camera knows when each frame was due on
    the host clock (its arrival is that plus the delivery's lateness: the camera thread held up
    on 2 shared cores). Afterwards the frames are fed to a :class:`~hardware.timing.ClockMap` in
    64-frame batches, as the sort thread feeds them, and the newest frame of each batch is mapped
    through the fit before it (as an exit is): the error against the truth is what a pulse's
    timing inherits. ``save``: an ``.npz`` of the (camera, arrival, due) triples, to compare fits.
    """
    import threading

    import numpy as np

    from hardware.timing import MIN_SAMPLES, ClockMap

    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-") as tmp:
        cfg = with_changes(RunConfig(),
                           camera={"backend": "synthetic", "synthetic.fps": fps, "synthetic.realtime": True,
                                   "synthetic.pregenerate": True, "synthetic.duration_s": seconds,
                                   "synthetic.cells_per_second": cells_per_second, **FAST_FLOW},
                           model={"path": "demo"}, trigger={"backend": "null"},
                           output={"folder": tmp, "sample": "bench"}, daemon={"log_file": ""})
        run = build_run(cfg, folder=Path(tmp))
        cam_t, host_t, gaps = [], [], [0]
        done = threading.Event()

        def observe():
            next_seq = None
            while not done.is_set():
                ring = run.pipeline.ring
                if ring is not None:
                    head = ring.written
                    lo = head if next_seq is None else max(next_seq, head - ring.capacity + ring.guard)
                    if next_seq is not None and lo > next_seq:
                        gaps[0] += lo - next_seq  # lapped while this thread waited: those frames are not scored
                    idx = np.arange(lo, head) % ring.capacity
                    cam_t.append(ring.timestamps_ns[idx].copy())
                    host_t.append(ring.host_ns[idx].copy())
                    if ring.written - ring.capacity + ring.guard > lo:  # overwritten while copied
                        cam_t.pop(), host_t.pop()
                        gaps[0] += head - lo
                    next_seq = head
                time.sleep(0.002)

        watcher = threading.Thread(target=observe, name="clock-observer", daemon=True)
        run.start()
        watcher.start()
        try:
            run.wait(seconds * 4 + 60)
        finally:
            done.set()
            watcher.join()
            run.pipeline.stop()
            run.pipeline.wait(30)
            run.close()
        cam = np.concatenate(cam_t) if cam_t else np.zeros(0, np.int64)
        host = np.concatenate(host_t) if host_t else np.zeros(0, np.int64)
        due = np.array([run.pipeline.camera.due_host_ns(int(t)) for t in cam], np.int64)
    if save:
        np.savez(save, camera_ns=cam, host_ns=host, due_ns=due)
    cm = ClockMap()
    errs = []
    for k in range(0, len(cam), 64):
        e = min(len(cam), k + 64)
        if cm.n >= MIN_SAMPLES:
            errs.append(cm.to_host_ns(int(cam[e - 1]), refit=False) - int(due[e - 1]))
        cm.add_many(cam[k:e], host[k:e])
        cm.refit()
    err = np.array(errs, np.float64) / 1000.0
    late = (host - due) / 1000.0
    pct = (lambda v, q: round(float(np.percentile(v, q)), 1) if v.size else None)
    return {"frames": int(len(cam)), "frames_not_scored": gaps[0], "fps": fps, "cells_per_second": cells_per_second,
            "delivery_late_us_p50": pct(late, 50), "delivery_late_us_p99": pct(late, 99),
            "delivery_late_us_max": pct(late, 100), "map_error_us_p1": pct(err, 1), "map_error_us_p50": pct(err, 50),
            "map_error_us_p99": pct(err, 99), "map_abs_error_us_max": pct(np.abs(err), 100), "map_resets": cm.resets}


#: twice FAST_FLOW (12 cm/s in the constriction): single file, a channel passes ~1,200 cells/s
#: that the tracker can tell apart at 8 kHz; at FAST_FLOW and 4 kHz, 1,000 cells/s offered come out
#: as ~750 events, most of them touching pairs
SORT_FLOW = {k: 2.0 * v for k, v in FAST_FLOW.items()}


def bench_sorting(seconds: float = 5.0, fps: float = 8_000.0, cells_per_second: float = 1400.0,
                  model: str | None = None, compression: str = "all", stages: bool = False) -> dict:
    """Decision latency and sustained decisions per second, serial trigger on a pseudo-terminal.

    The dense simulated channel is rendered to a raw recording first and replayed in real time at
    its frame rate, so the figures are those of the sort path (tracker, model, policy, trigger,
    event writer), not of the simulator's renderer. ``stages``: where each decision's time went
    (:mod:`app.stages`).
    """
    from acquisition.synthetic import SyntheticSettings
    from app.simdata import record_simulation
    from hardware.bench import serial_emulator

    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-") as tmp, serial_emulator(Path(tmp)) as port:
        raw = Path(tmp) / "dense.rtdc"
        sim = SyntheticSettings(duration_s=seconds, fps=fps, cells_per_second=cells_per_second, seed=3,
                                **{k.split(".", 1)[1]: v for k, v in SORT_FLOW.items()})
        truth = record_simulation(sim, raw)
        cfg = with_changes(RunConfig(),
                           camera={"backend": "replay", "replay.path": str(raw), "replay.realtime": True},
                           model={"path": model or "demo"},
                           sorting={"mode": "yield", "threshold": 0.0, "reject_flags": []},
                           trigger={"backend": "serial", "serial.port": port, "serial.compensate_transmission": False},
                           output={"folder": tmp, "sample": "bench", "compression": compression}, daemon={"log_file": ""})
        res = {"offered_fps": fps, "simulated_cells": sum(1 for t in truth if t.kind != "debris"),
               "trigger": "serial (pseudo-terminal, emulator process)", "compression": compression}
        res.update(_run(cfg, Path(tmp), timeout_s=seconds * 4 + 60, stages=stages))
    try:
        from hardware.bench import bench_serial_jitter

        jit = bench_serial_jitter(n=2000)
        res.update({f"serial_{k}": v for k, v in jit.items()})
    except ImportError:
        pass
    return res


def bench_pulse_timing(seconds: float = 3.0, distance_um: float = 200.0, seed: int = 3) -> dict:
    """When the sort pulse comes against when the cell reaches the junction ``distance_um`` past
    the constriction exit, on simulated runs in three channels (the simulator's default, the
    pipeline bench's and the sorting bench's flows; every frame tracked, no real time involved):
    the travel time the pulse is timed with relative to the truth's, minus 1 (median, p5, p95 and
    the largest deviation, in % of the travel; cells that queued at the constriction apart), the
    cells' speed past the exit and the cells without a speed."""
    import numpy as np

    from acquisition.synthetic import SyntheticSettings, render_frames
    from app.validate import match_events, travel_errors
    from tracking.tracker import Tracker, TrackerSettings

    res: dict = {"seconds": seconds, "distance_um": distance_um}
    for name, flow, fps, cps in (("default", {}, 4000.0, 40.0), ("pipeline", FAST_FLOW, 10_000.0, 100.0),
                                 ("sorting", SORT_FLOW, 8000.0, 100.0), ("sorting_dense", SORT_FLOW, 8000.0, 1400.0)):
        n = round(seconds * fps)
        sim = SyntheticSettings(duration_s=seconds, fps=fps, cells_per_second=cps, seed=seed,
                                **{k.split(".", 1)[1]: v for k, v in flow.items()})
        frames, truth = render_frames(sim, n)
        tracker = Tracker.from_frames(frames, sim.pixel_size_um, TrackerSettings(snapshots=False))
        events = tracker.process_frames(frames, fps=fps) + tracker.flush()
        m = match_events(events, truth, run_ms=n * 1e3 / fps, frame_ms=1e3 / fps)
        v_out = [t.v_after_mm_s for _, t in m.pairs if t.kind == "cell" and t.v_after_mm_s > 0]
        key = f"{name}_{fps / 1000:g}kHz_{cps:g}_cells_s"
        res[f"{key}_exit_speed_mm_s"] = round(float(np.median(v_out)), 1) if v_out else math.nan
        # cells that queued behind the one ahead at the constriction's mouth, apart: dense flow
        for sub, queued in (("", False), ("_queued", True)):
            err = 100.0 * travel_errors(m, distance_um, queued=queued)
            if queued and not err.size:
                continue
            res[f"{key}{sub}_cells"] = int(err.size)
            if err.size:
                res[f"{key}{sub}_travel_err_pct_p50"] = round(float(np.median(err)), 2)
                res[f"{key}{sub}_travel_err_pct_p5"] = round(float(np.percentile(err, 5)), 2)
                res[f"{key}{sub}_travel_err_pct_p95"] = round(float(np.percentile(err, 95)), 2)
                res[f"{key}{sub}_travel_err_pct_max_abs"] = round(float(np.abs(err).max()), 2)
        res[f"{key}_without_speed"] = sum(1 for e, _ in m.pairs if not e.features.get("v_after_mm_s", math.nan) > 0)
    return res


def bench_tracking_accuracy(n_frames: int = 16_000, fps: float = 8_000.0,
                            rates: tuple[float, ...] = (100.0, 600.0, 1400.0), seed: int = 3,
                            split_ratio: float | None = None) -> dict:
    """The tracker against the simulator's truth in the sorting bench's channel (40 / 120 / 60
    mm/s up-, in- and downstream) at several densities: how many complete passages get an
    event, how many of those are whole (entry and exit seen), unflagged, and sortable (no flag
    the default sort policy rejects), how many touched a neighbour, and how often a track ends on
    another cell (swaps). Every frame is tracked (no real time involved). ``split_ratio``:
    the tracker's (0: touching cells are never cut apart; None: the default)."""
    from dataclasses import replace

    from acquisition.synthetic import SyntheticSettings, render_frames
    from app.sorting import SortSettings
    from app.validate import match_events
    from tracking.events import Quality
    from tracking.tracker import Tracker, TrackerSettings

    res: dict = {"frames": n_frames, "fps": fps, "flow_mm_s": "40 / 120 / 60"}
    rejected = 0
    for name in SortSettings().reject_flags:
        rejected |= int(Quality[name])
    frame_ms = 1e3 / fps
    for cps in rates:
        sim = SyntheticSettings(duration_s=n_frames / fps, fps=fps, cells_per_second=cps, seed=seed,
                                **{k.split(".", 1)[1]: v for k, v in SORT_FLOW.items()})
        frames, truth = render_frames(sim, n_frames)
        ts = replace(TrackerSettings(), snapshots=False)
        if split_ratio is not None:
            ts = replace(ts, split_ratio=split_ratio)
        tracker = Tracker.from_frames(frames, sim.pixel_size_um, ts)
        events = tracker.process_frames(frames, fps=fps) + tracker.flush()
        m = match_events(events, truth, run_ms=n_frames * frame_ms, frame_ms=frame_ms)
        n = max(m.complete_truth, 1)
        found = [e for e, t in m.pairs if m.is_complete(t)]
        whole = sum(1 for e in found if not e.quality & Quality.INCOMPLETE)
        clean = sum(1 for e in found if e.quality == Quality.OK)
        sortable = sum(1 for e in found if not e.quality & rejected)
        key = f"{cps:g}_cells_s"
        res[f"{key}_passages"] = m.complete_truth
        res[f"{key}_detected_pct"] = round(100 * len(found) / n, 1)
        res[f"{key}_whole_pct"] = round(100 * whole / n, 1)
        res[f"{key}_unflagged_pct"] = round(100 * clean / n, 1)
        res[f"{key}_sortable_pct"] = round(100 * sortable / n, 1)
        res[f"{key}_touching_pct"] = round(100 * sum(1 for e in found if e.quality & Quality.TOUCHING) / n, 1)
        res[f"{key}_swaps"] = m.swaps
        res[f"{key}_tracks_per_event"] = round(tracker.stats.tracks / max(len(events), 1), 2)
        res[f"{key}_di_mae"] = round(m.errors().get("di_mae", math.nan), 4)
    return res
