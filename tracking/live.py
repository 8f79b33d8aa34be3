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
from numba import njit

from mimlsort.realtime import monotonic_ns, sleep_ns
from tracking.background import update_kernel
from tracking.link import link_batch
from tracking.segment import _scratch, _segment_frame

# out[] of track_ring
O_FRAMES = 0  # frames tracked (taken from the reader's cursor on)
O_DONE = 1  # finished tracks in the done buffers
O_STOP = 2  # why it returned: STOP_*
N_O = 3
STOP_DONE = 0  # cells finished (harvest them) or max_frames tracked
STOP_IDLE = 1  # no frame arrived within the timeout
STOP_BEHIND = 2  # the reader fell more than capacity - guard frames behind: read the batch way (counts the loss)


@njit(nogil=True, cache=True)
def track_ring(images, ring_ids, ring_stamps, ring_host, seq, guard, cursor, max_frames, timeout_ns, poll_ns, ts,
               t0_ns, phase, stride, alpha, bg_threshold, relearn, acc, count, bg,
               threshold, min_area_px, y0, y1, max_blobs, blobs, counts,
               pi, pf, si, sf, hist, crops, done_i, done_hist, done_crops, done_n, counters, out):
    """Track the ring's frames from sequence number ``cursor`` on as they are published
    (``seq[0]``), until cells finish, ``max_frames`` are tracked, no frame comes for
    ``timeout_ns`` or the reader falls behind; results in ``out``. ``phase`` (int64[1]) is the
    background model's frame phase (see :meth:`BackgroundModel.update`)."""
    cap = images.shape[0]
    h, w = bg.shape
    sy0 = max(0, min(y0, h))
    sy1 = max(sy0, min(y1, h))
    mb = min(max_blobs, blobs.shape[1])
    sc = _scratch(h, w, max(sy1 - sy0, 1))
    labels = np.zeros((1, 1), np.int32)
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
        if head <= cursor:
            if monotonic_ns(ts) >= deadline:
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
            update_kernel(images, slot1, stride, alpha, bg_threshold, relearn, acc, count, bg)
        phase[0] = (phase[0] + 1) % stride
        img = images[slot]
        counts[0] = _segment_frame(img, bg, img, bg, threshold, min_area_px, sy0, sy1, mb, blobs[0], labels, *sc)
        done, nd = link_batch(images, slot1, fid1, time1, host1, bg, blobs, counts, pi, pf, si, sf, hist, crops,
                              done_i, done_hist, done_crops, done_n, counters)
        cursor += 1
        n += 1
        deadline = monotonic_ns(ts) + timeout_ns
        if nd > 0:
            n_done = nd
            break
    out[O_FRAMES] = n
    out[O_DONE] = n_done
    out[O_STOP] = stop
