"""numba helpers of the grab loops that run without the GIL (``Camera.grab_many_into``): publish
a frame into the ring, and copy a run of frames from a replay's block with pacing.

A frame is published the way :meth:`FrameRing.commit` publishes it: metadata into its slot, the
camera-side gap counted against the previous frame id, then the write counter incremented after
a release fence (readers never see a half-written slot).
"""

from __future__ import annotations

import numpy as np

from mimlsort.jit import njit
from mimlsort.realtime import monotonic_ns, publish_fence, sleep_ns

# results of a run (an int64 array the caller passes)
R_PUBLISHED = 0  # frames written to the ring and published
R_NEXT = 1  # index of the next frame of the source
R_FAILED = 2  # frames lost to failed buffers
R_GAPS = 3  # frame-id gaps the published frames show (camera-side drops)
R_LAST_ID = 4  # in: id of the ring's last frame (-1: none); out: the same after this call
R_STOP = 5  # why the call returned: STOP_*
N_R = 6
STOP_DONE = 0  # reached the end of the run
STOP_TIMEOUT = 1  # the next frame is due after the deadline
STOP_LAGGED = 2  # the consumer fell too far behind: R_NEXT jumped ahead, frames lost


def start_run(res, ring) -> None:
    """Prepare ``res`` for a run into ``ring`` (the id its last frame had, for the gap count)."""
    res[R_LAST_ID] = -1 if ring._last_id is None else ring._last_id


def book_run(res, ring, camera) -> int:
    """Book a run's results: the ring's last id and camera-side drops, the camera's delivered and
    failed-buffer counts. Returns the frames published."""
    n = int(res[R_PUBLISHED])
    if n:
        ring._last_id = int(res[R_LAST_ID])
        ring.camera_dropped += int(res[R_GAPS])
    camera.failed_buffers += int(res[R_FAILED])
    camera.delivered += n
    return n


@njit(nogil=True, cache=True)
def end_run(res, published, nxt, failed, gaps, last_id, stop):
    res[R_PUBLISHED] = published
    res[R_NEXT] = nxt
    res[R_FAILED] = failed
    res[R_GAPS] = gaps
    res[R_LAST_ID] = last_id
    res[R_STOP] = stop


@njit(nogil=True, cache=True)
def publish(frame_ids, stamps, host_ns, seq, slot, fid, t_ns, last_id, id_modulus, ts):
    """Write the metadata of the frame just written into ``slot`` and publish it; returns the
    frame-id gap to ``last_id`` (frames the camera dropped; 0 when ``last_id`` < 0)."""
    frame_ids[slot] = fid
    stamps[slot] = t_ns
    host_ns[slot] = monotonic_ns(ts)
    gap = 0
    if last_id >= 0:
        d = fid - last_id
        if id_modulus:
            d %= id_modulus
        if d > 1:
            gap = d - 1
    publish_fence()
    seq[0] += 1
    return gap


@njit(nogil=True, cache=True)
def copy_run(block, block_i0, i, stop_at, ids, times, id_off, t_off, images, frame_ids, stamps, host_ns, seq,
             realtime, wall0, t_first, speed, deadline, ts, res):
    """A replay's frames ``i`` .. ``stop_at - 1`` (all inside ``block``, which holds frames from
    ``block_i0`` on) into the ring: each paced to ``wall0 + (t - t_first) / speed`` when
    ``realtime``, copied into the next slot and published. Results in ``res``."""
    cap = images.shape[0]
    last_id = res[R_LAST_ID]
    published = 0
    gaps = 0
    stop = STOP_DONE
    while i < stop_at:
        t_ns = times[i] + t_off
        if realtime:
            now = monotonic_ns(ts)
            due = wall0 + np.int64((t_ns - t_first) / speed)
            if due > deadline:
                sleep_ns(ts, deadline - now)
                stop = STOP_TIMEOUT
                break
            sleep_ns(ts, due - now)
        slot = seq[0] % cap
        images[slot] = block[i - block_i0]
        fid = ids[i] + id_off
        gaps += publish(frame_ids, stamps, host_ns, seq, slot, fid, t_ns, last_id, 0, ts)
        last_id = fid
        published += 1
        i += 1
    end_run(res, published, i, 0, gaps, last_id, stop)
