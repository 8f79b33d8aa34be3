"""The live tracking loop: wait for the next frame in the ring, track it, repeat — in one kernel
without the GIL, back in Python only when cells finished, after ``max_frames`` or on a timeout.

Tracking a ring batch from Python costs a GIL round trip per kernel (background, segmentation,
linking) and ~20 µs of bookkeeping; a live run that keeps up reads batches of one or two frames, so
at 10 kHz that was most of the tracking thread's time, and every round trip waited for the GIL
behind the other threads. Here a frame costs only the kernels' own work.

Each frame is tracked exactly as :meth:`tracking.tracker.Tracker.process` tracks a batch of one
frame (same background phase, same segmentation, same linking), so the events are identical to
those of single-frame batches; full-speed replays keep their fixed batch boundaries (and
reproducible background updates) on the batch path.
"""

from __future__ import annotations

import numpy as np

from mimlsort.jit import njit
from mimlsort.realtime import monotonic_ns, sleep_ns
from tracking.background import rows_max, update_kernel
from tracking.link import link_batch
from tracking.segment import _scratch, _segment_level

# out[] of track_ring
O_FRAMES = 0  # frames tracked (taken from the reader's cursor on)
O_DONE = 1  # finished tracks in the done buffers
O_STOP = 2  # why it returned: STOP_*
O_T_END = 3  # monotonic ns when the kernel finished (the GIL wait after it is the caller's)
N_O = 4
STOP_DONE = 0  # cells finished (harvest them) or max_frames tracked
STOP_IDLE = 1  # no frame arrived within the timeout, or ``halt[0]`` was set while none was waiting
STOP_BEHIND = 2  # the reader fell more than capacity - guard frames behind: read the batch way (counts the loss)


@njit(nogil=True, cache=True)
def track_ring(images, ring_ids, ring_stamps, ring_host, seq, guard, cursor, max_frames, timeout_ns, poll_ns, ts,
               behind_ok, halt, t0_ns, phase, stride, alpha, bg_threshold, relearn, acc, count, bg,
               threshold, min_area_px, y0, y1, max_blobs, split_ratio, light_clip, correct, level, light_out, blobs, counts,
               pi, pf, si, sf, motion, hist, crops, done_i, done_hist, done_crops, done_n, done_f, counters, out):
    """Track the ring's frames from sequence number ``cursor`` on as they are published
    (``seq[0]``), until cells finish (and at most ``behind_ok`` frames wait), ``max_frames`` are
    tracked, no frame comes for ``timeout_ns`` (or one is awaited while ``halt[0]`` is set: the
    source ended) or the reader falls behind; results in ``out``. ``phase`` (int64[1]) is the
    background model's frame phase (see :meth:`BackgroundModel.update`); ``light_clip``, ``correct``:
    each frame's light (lamp flicker), see :func:`tracking.segment._segment_level`."""
    cap = images.shape[0]
    h, w = bg.shape
    sy0 = max(0, min(y0, h))
    sy1 = max(sy0, min(y1, h))
    mb = min(max_blobs, blobs.shape[1])
    sc = _scratch(h, w, max(sy1 - sy0, 1))
    labels = np.zeros((1, 1), np.int32)
    bgs = np.empty_like(bg)
    bg_top = rows_max(bg, sy0, sy1)
    slot1 = np.zeros(1, np.int64)
    fid1 = np.zeros(1, np.int64)
    time1 = np.zeros(1, np.float64)
    host1 = np.zeros(1, np.int64)
    n = 0
    n_done = 0
    stop = STOP_DONE
    deadline = monotonic_ns(ts) + timeout_ns
    while n < max_frames:
        head = seq[0]
        if n_done and head - cursor <= behind_ok:
            break  # caught up with cells in hand (they finished while the camera was ahead)
        if head <= cursor:
            if halt[0] or monotonic_ns(ts) >= deadline:
                stop = STOP_IDLE
                break
            sleep_ns(ts, poll_ns)
            continue
        if cursor < head - (cap - guard):
            stop = STOP_BEHIND
            break
        slot = cursor % cap
        slot1[0] = slot
        fid1[0] = ring_ids[slot]
        time1[0] = np.float64(ring_stamps[slot] - t0_ns) * 1e-6
        host1[0] = ring_host[slot]
        if phase[0] == 0:
            update_kernel(images, slot1, stride, alpha, bg_threshold, relearn, acc, count, bg, sy0, sy1,
                          light_clip if correct else 0.0, level)
            bg_top = rows_max(bg, sy0, sy1)
        phase[0] = (phase[0] + 1) % stride
        img = images[slot]
        counts[0] = _segment_level(img, bg, bg_top, bgs, light_clip, correct, level, light_out, threshold, min_area_px, sy0, sy1,
                                   mb, split_ratio, blobs[0], labels, sc)
        # finished tracks are appended to those of earlier frames of this call
        done, nd = link_batch(images, slot1, fid1, time1, host1, bg, blobs, counts, pi, pf, si, sf, motion, hist, crops,
                              done_i[n_done:], done_hist[n_done:], done_crops[n_done:], done_n[n_done:], done_f[n_done:],
                              counters)
        cursor += 1
        n += 1
        deadline = monotonic_ns(ts) + timeout_ns
        if nd > 0:
            n_done += nd
            # back to Python with them — unless the camera is ahead: then returning per cell (a
            # GIL round trip and the harvest each) would keep it ahead, so go on while the done
            # buffers can take every track of another frame
            if seq[0] - cursor <= behind_ok or n_done + si.shape[0] > done_i.shape[0]:
                break
    out[O_FRAMES] = n
    out[O_DONE] = n_done
    out[O_STOP] = stop
    out[O_T_END] = monotonic_ns(ts)
