"""``mimlsort bench tracking``: ring → tracker speed on a simulated 256×96 stream held in memory.

Two figures, measured in one process on one core:

* throughput — frames pushed into a ring and tracked in batches (what happens when the tracker has
  fallen behind and catches up), frames/s of the tracker's side (read, track, release; the push
  is the camera thread's work), by the wall clock and by the thread's CPU time (``_cpu``: on a
  shared, busy machine the wall clock also counts other processes' time slices);
* per-frame latency — each frame tracked as soon as it is in the ring (batch of one, what happens
  when the tracker keeps up), µs per frame p50/p99, including all Python overhead of a call.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np

from acquisition.frame import FrameRing
from acquisition.synthetic import SyntheticSettings, render_frames
from tracking.tracker import Tracker, TrackerSettings


def _pin_one_core() -> None:
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    except (AttributeError, OSError):  # not on Linux: measure as is
        pass


def bench_tracking(n_frames: int = 20000, batch: int = 64, cells_per_second: float | None = None, seed: int = 7,
                   one_core: bool = True) -> dict:
    if one_core:
        _pin_one_core()
    base = SyntheticSettings(seed=seed)
    if cells_per_second is not None:
        base = replace(base, cells_per_second=cells_per_second)
    frames, truth = render_frames(base, n_frames)
    h, w = frames.shape[1:]
    tracker = Tracker.from_frames(frames, base.pixel_size_um, TrackerSettings(batch_frames=batch))
    fps = base.fps
    ids = np.arange(n_frames, dtype=np.int64)
    ts = np.round(ids * (1e9 / fps)).astype(np.int64)

    # count cells in view from the blob table of a tracking pass (also warms everything up)
    warm = Tracker(tracker.settings, tracker.geometry, tracker.background.image.copy())
    warm.process_frames(frames[:512], ids[:512], ts[:512])

    # throughput: push into the ring and track whole batches; only the tracker's side is timed
    # (pushing is the camera thread's work, on another core)
    ring = FrameRing(4096, h, w)
    reader = ring.reader("tracker")
    t_run = Tracker(tracker.settings, tracker.geometry, tracker.background.image.copy())
    events = 0
    t_total = 0.0
    c_total = 0.0  # CPU time: what a shared, busy machine inflates least

    def track(n: int) -> int:
        nonlocal t_total, c_total
        t1, c1 = time.perf_counter(), time.thread_time()
        b = reader.read(n)
        found = len(t_run.process_batch(ring, b))
        reader.release(b)
        t_total += time.perf_counter() - t1
        c_total += time.thread_time() - c1
        return found

    for i in range(n_frames):
        ring.push(frames[i], int(ids[i]), int(ts[i]))
        if reader.pending >= batch:
            events += track(batch)
    events += track(ring.capacity)
    events += len(t_run.flush())
    blobs_per_frame = t_run.stats.blobs / max(1, t_run.stats.frames)

    # latency: one frame at a time, as when the tracker keeps up with the camera
    ring = FrameRing(4096, h, w)
    reader = ring.reader("tracker")
    t_lat = Tracker(tracker.settings, tracker.geometry, tracker.background.image.copy())
    n_lat = min(n_frames, 10000)
    lat = np.empty(n_lat)
    for i in range(n_lat):
        ring.push(frames[i], int(ids[i]), int(ts[i]))
        t1 = time.perf_counter_ns()
        b = reader.read(1)
        t_lat.process_batch(ring, b)
        reader.release(b)
        lat[i] = (time.perf_counter_ns() - t1) / 1000.0
    return {
        "frames": n_frames,
        "roi": f"{w}x{h}",
        "batch": batch,
        "cells_simulated": len(truth),
        "events": events,
        "blobs_per_frame": round(blobs_per_frame, 2),
        "throughput_fps": round(n_frames / t_total),
        "batch_us_per_frame": round(1e6 * t_total / n_frames, 2),
        "throughput_fps_cpu": round(n_frames / c_total) if c_total > 0 else None,
        "latency_us_p50": round(float(np.percentile(lat, 50)), 1),
        "latency_us_p99": round(float(np.percentile(lat, 99)), 1),
        "latency_fps_equiv": round(1e6 / float(np.mean(lat))),
    }
