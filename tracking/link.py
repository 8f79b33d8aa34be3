"""numba kernel that links blobs into tracks across a batch of frames.

Per frame it greedily matches blobs to the predicted positions of live tracks, appends each matched
blob to its track's history and keeps the crops at constriction entry and at the last frame inside
the constriction. When a track is finished (it passed the emission line downstream of the
constriction, or it was lost) its history, crops and metadata are copied into the *done* buffers
for Python to turn into a :class:`~tracking.events.CellEvent`. A track that was emitted at the
emission line stays alive (state ``ABSORB``) so the same cell further downstream does not start a
new track.

Two cells in single file may touch for a few frames (the leader elongates in the constriction
mouth): a blob holding the predictions of two tracks is not given to either; both coast on their
predictions (``MAX_MERGE_FRAMES`` at most) and pick up their own blobs when the cells part.
Each history row keeps the ring slot of its frame so that the tracker can copy the frame of
maximum DI back into the event (``CellEvent.snapshot``).

Everything is in ROI pixels and milliseconds since the run's first frame. All arrays are
preallocated by :class:`tracking.tracker.Tracker`; the kernel never allocates per frame.
"""

from __future__ import annotations

import numpy as np

from mimlsort.jit import njit
from tracking.blobs import (
    B_AREA,
    B_BORDER,
    B_X,
    B_XMAX,
    B_XMIN,
    B_Y,
    B_YMAX,
    B_YMIN,
)

# track states
FREE = 0
ACTIVE = 1
ABSORB = 2  # already emitted; still swallows its blob until it leaves

# integer track state columns
SI_STATE = 0
SI_ID = 1
SI_NHIST = 2
SI_MISSES = 3
SI_FLAGS = 4  # Quality bits found while linking
SI_ENTRY_FRAME = 5  # frame id of the first frame inside the constriction (-1: not yet)
SI_EXIT_FRAME = 6  # frame id of the first frame past the constriction (-1: not yet)
SI_EXIT_HOST = 7  # host ns of that frame
SI_HAS_FIRST = 8
SI_HAS_LAST = 9
SI_EMIT_FRAME = 10  # frame id at which it was emitted
SI_EMIT_HOST = 11
SI_MERGED = 12  # consecutive frames coasted inside a blob shared with another track
N_SI = 13

# float track state columns
SF_X = 0
SF_Y = 1
SF_VX = 2  # px per ms, smoothed
SF_T = 3  # ms of last observation
SF_AREA = 4
SF_RATIO = 5  # this cell's time per px relative to the motion profile, smoothed
SF_STEP_X = 6  # where the step being learned began (a slow cell's steps add up to MIN_STEP_PX)
SF_STEP_T = 7
SF_STEP_F = 8  # its frame id
N_SF = 9

# motion profile: how fast cells move at each x, learned from the tracks themselves (rows of
# ``motion``, one column per MOTION_BIN_PX of x). Cells triple their speed entering the
# constriction and halve it leaving; a constant-velocity prediction then lands one cell length
# off, behind the gate, and the track breaks (most often at the exit: an incomplete passage).
M_SLOW = 0  # ms per px, smoothed over the cells that crossed the bin
M_N = 1  # how many steps were learned in the bin
N_M = 2
MOTION_BIN_PX = 4.0
MOTION_MIN_SAMPLES = 4.0  # a bin is used for predictions once this many steps crossed it
MOTION_ALPHA = 0.05  # weight of a new step in a bin's mean
MIN_STEP_PX = 1.0  # steps shorter than this teach nothing about speed (a cell at rest, noise)
#: a slow cell's frame-to-frame steps are added up until they reach MIN_STEP_PX, within this many
#: frames (a cell that takes longer has stopped, and a stop is no pace). Learning from single
#: frames only, a channel where cells moved 0.5 px a frame upstream was never learned there, and
#: the pulses, timed with each cell's pace relative to it, came 13-17% of the travel late
MAX_STEP_FRAMES = 8
RATIO_MIN = 0.25
QUEUE_PACE = 1.5  # steps this much slower than a cell's own pace are waiting in a queue, not moving
RATIO_MAX = 4.0

# history columns (one row per observation)
H_T = 0  # ms since run start
H_FRAME = 1
H_SLOT = 2  # ring slot the frame was read from (event snapshots copy it back at harvest)
N_H_EXTRA = 3  # followed by the N_BLOB_FIELDS blob columns

# integer parameter indices
PI_MAX_GAP = 0
PI_CROP = 1
PI_NEXT_ID = 2  # running track id (read-write)
N_PI = 3

# float parameter indices
PF_X0 = 0
PF_X1 = 1
PF_EMIT_X = 2
PF_GATE_BACK = 3  # px a blob may lie behind the position its track was last seen at
PF_GATE_FWD = 4  # px a blob may lie ahead of the prediction
PF_GATE_Y = 5
PF_V_INIT = 6  # px/ms assumed for a brand-new track
PF_MAX_AREA_JUMP = 7  # area ratio beyond which a match is a merge/split
PF_FAR0 = 8  # the stretch past the exit whose learned pace times the pulses (see downstream_pace)
PF_FAR1 = 9
PF_PACE_END = 10  # a cell's own pace: from its steps that end before this x (px; clear of a queue at the mouth)
PF_SCALE = 11  # 1: scale the channel's pace by the cell's own; 0: every cell at the channel's pace
PF_MAX_STEP = 12  # frames a track's step may span (max_gap_frames + 1): longer ones are where rows were thinned
N_PF = 13

# done_f: what a track's finish adds from the motion profile at that moment (a later harvest
# would see a profile that learned from later cells, and live and batch tracking would differ)
DF_PACE = 0  # ms per px downstream (-1: not known), downstream_pace's out[0]
DF_EASING = 1  # ms, its out[1]
N_DF = 2

# counters
C_FRAMES = 0
C_BLOBS = 1
C_TRACKS = 2
C_EMITTED = 3
C_LOST = 4  # tracks that ended without ever reaching the constriction
C_TRACK_OVERFLOW = 5  # blobs that found no free track slot
C_HIST_OVERFLOW = 6
C_MERGES = 7
N_C = 8

# Two cells in single file touch for a few frames when the leader elongates in the constriction
# mouth; their blobs merge. Both tracks then coast on their predictions (no observation recorded)
# for up to this many frames, so neither grabs the other's blob when they part again.
MAX_MERGE_FRAMES = 8
MERGE_MARGIN_PX = 2.0
_MERGED = -2  # taken[] marker of a blob shared by several tracks

Q_DOUBLET = 1
Q_BORDER = 2
Q_INCOMPLETE = 4
Q_STUCK = 16


#: upstream rows next to the constriction that thinning a full history leaves as they are (the
#: entry time is interpolated through the two before the crossing)
THIN_KEEP = 4


@njit(nogil=True, cache=True)
def thin_history(h, n, x_col, x0, drop):
    """Make room in a full history ``h[:n]``: of its rows upstream of the constriction (``x0``)
    but the last ``THIN_KEEP``, drop ``MAX_STEP_FRAMES`` (at least ``drop``), keep as many, drop
    …; returns the rows left. A cell in view for longer than the history holds (a slow flow over
    a long ROI) was flagged STUCK and, its rows in the constriction never recorded, INCOMPLETE;
    its rest shape needs its upstream rows, not every one of them. Kept in runs, the rows still
    hold the frame-to-frame steps a slow cell's pace is learned from (:func:`_pace_ratio` adds
    them up over up to ``MAX_STEP_FRAMES``), and with ``drop`` the largest gap a track may have
    plus one, the jumps between runs are longer than any step of a track, which leaves them out
    (over every step of thinned rows it read the pace up to 40% off)."""
    keep = MAX_STEP_FRAMES
    skip = max(drop, keep)
    u = 0
    while u < n and h[u, x_col] < x0:
        u += 1
    end = u - THIN_KEEP
    if end < keep + skip:
        return n
    m = 0
    for i in range(end):
        if i % (keep + skip) >= skip:  # the oldest go first (the first are cut by the ROI's edge)
            h[m, :] = h[i, :]
            m += 1
    for i in range(end, n):
        h[m, :] = h[i, :]
        m += 1
    return m


@njit(nogil=True, cache=True)
def _copy_crop(img, cx, cy, half, fill, out):
    h, w = img.shape
    size = out.shape[0]
    x0 = int(np.floor(cx + 0.5)) - half
    y0 = int(np.floor(cy + 0.5)) - half
    for j in range(size):
        yy = y0 + j
        for i in range(size):
            xx = x0 + i
            if 0 <= yy < h and 0 <= xx < w:
                out[j, i] = img[yy, xx]
            else:
                yc = min(max(yy, 0), h - 1)
                xc = min(max(xx, 0), w - 1)
                out[j, i] = fill[yc, xc]


def motion_bins(width: int) -> int:
    """Columns of the motion profile for a ROI ``width`` px wide."""
    return int(width // MOTION_BIN_PX) + 2


def shift_profile(motion: np.ndarray, dx: float) -> None:
    """Move the learned profile ``dx`` px along x, in place: the channel moved in the view, and
    its speeds go with it (left where they were, the constriction's fast bins lay 2.5 bins off
    after a 5 µm move and the pulses were timed ~2% off until the cells relearned them). Bins
    that come into view, or lie across a known and an unknown one, are unknown again."""
    n = motion.shape[1]
    src = np.arange(n) - dx / MOTION_BIN_PX  # the bin each one now takes its speed from, fractional
    lo = np.floor(src).astype(np.int64)
    w = src - lo
    inside = (lo >= 0) & (lo + 1 < n)
    a, b = np.clip(lo, 0, n - 1), np.clip(lo + 1, 0, n - 1)
    whole = np.isclose(w, 0.0)  # a move by whole bins takes one bin's value
    slow = np.where(whole, motion[M_SLOW, a], (1.0 - w) * motion[M_SLOW, a] + w * motion[M_SLOW, b])
    count = np.where(whole, motion[M_N, a], np.minimum(motion[M_N, a], motion[M_N, b]))
    ok = (inside | (whole & (lo >= 0) & (lo < n))) & (count > 0.0)
    motion[M_SLOW] = np.where(ok, slow, 0.0)
    motion[M_N] = np.where(ok, count, 0.0)


@njit(nogil=True, cache=True)
def _predict_x(x, vx, ratio, dt, motion):
    """Where a cell seen at ``x`` is ``dt`` ms later: along the motion profile, scaled by the
    cell's own ratio, while the profile is known; at the cell's own speed ``vx`` from the first
    stretch it is not (a new run learns it within a few cells)."""
    if dt <= 0.0:
        return x
    nbins = motion.shape[1]
    pos = x
    left = dt
    for _ in range(nbins + 1):
        b = int(np.floor(pos / MOTION_BIN_PX))
        if b < 0 or b >= nbins or motion[M_N, b] < MOTION_MIN_SAMPLES:
            return pos + vx * left
        s = motion[M_SLOW, b] * ratio
        need = ((b + 1) * MOTION_BIN_PX - pos) * s
        if need >= left:
            return pos + left / s
        left -= need
        pos = (b + 1) * MOTION_BIN_PX
    return pos


@njit(nogil=True, cache=True)
def _profile_ms(xa, xb, motion):
    """Time the profile takes from ``xa`` to ``xb`` (xa <= xb, ratio 1); -1 where a bin on the way
    is not known yet."""
    nbins = motion.shape[1]
    total = 0.0
    pos = xa
    while pos < xb:
        b = int(np.floor(pos / MOTION_BIN_PX))
        if b < 0 or b >= nbins or motion[M_N, b] < MOTION_MIN_SAMPLES:
            return -1.0
        edge = min((b + 1) * MOTION_BIN_PX, xb)
        total += (edge - pos) * motion[M_SLOW, b]
        pos = edge
    return total


@njit(nogil=True, cache=True)
def _learn_step(xa, xb, dt, motion):
    """Teach the profile that a cell went from ``xa`` to ``xb`` (> xa) in ``dt`` ms: each bin on
    the way takes the step's mean time per px."""
    nbins = motion.shape[1]
    slow = dt / (xb - xa)
    b0 = max(int(np.floor(xa / MOTION_BIN_PX)), 0)
    b1 = min(int(np.floor(xb / MOTION_BIN_PX)), nbins - 1)
    for b in range(b0, b1 + 1):
        if motion[M_N, b] == 0.0:
            motion[M_SLOW, b] = slow
        else:
            w = max(MOTION_ALPHA, 1.0 / (motion[M_N, b] + 1.0))  # a plain mean while few steps are in
            motion[M_SLOW, b] += w * (slow - motion[M_SLOW, b])
        motion[M_N, b] += 1.0


@njit(nogil=True, cache=True)
def _finish(k, si, hist, crops, done_i, done_hist, done_crops, done_n, n_done, motion, pf, done_f):
    """Copy track k to the done buffers; returns the new n_done (or -1 if the buffers are full)."""
    if n_done >= done_i.shape[0]:
        return -1
    nh = si[k, SI_NHIST]
    downstream_pace(hist[k, :nh], H_T, N_H_EXTRA + B_X, N_H_EXTRA + B_BORDER, pf[PF_PACE_END], pf[PF_X1], pf[PF_FAR0],
                    pf[PF_FAR1], pf[PF_SCALE] > 0.5, pf[PF_MAX_STEP], motion, done_f[n_done])
    for q in range(nh):
        for c in range(hist.shape[2]):
            done_hist[n_done, q, c] = hist[k, q, c]
    done_n[n_done] = nh
    for c in range(N_SI):
        done_i[n_done, c] = si[k, c]
    done_crops[n_done, 0] = crops[k, 0]
    done_crops[n_done, 1] = crops[k, 1]
    return n_done + 1


@njit(nogil=True, cache=True)
def link_batch(images, slots, frame_ids, times_ms, host_ns, fill, blobs, counts,
               pi, pf, si, sf, motion, hist, crops, done_i, done_hist, done_crops, done_n, done_f, counters):
    """Link the blobs of ``len(slots)`` frames. Returns ``(frames_processed, n_done)``.

    Stops early (frames_processed < len(slots)) when the done buffers are full, so the caller
    harvests them and calls again with the remaining frames.
    """
    n_frames = slots.shape[0]
    max_tracks = si.shape[0]
    max_hist = hist.shape[1]
    nbf = blobs.shape[2]
    half = pi[PI_CROP] // 2
    x0 = pf[PF_X0]
    x1 = pf[PF_X1]
    n_done = 0
    max_blobs = blobs.shape[1]
    taken = np.zeros(max_blobs, dtype=np.int64)
    matched = np.zeros(max_tracks, dtype=np.int64)
    pred = np.zeros(max_tracks, dtype=np.float64)  # predicted x of each live track in this frame
    for f in range(n_frames):
        # a frame may finish at most every live track: stop while there is room for all of them
        live = 0
        for k in range(max_tracks):
            if si[k, SI_STATE] != FREE:
                live += 1
        if n_done + live > done_i.shape[0]:
            return f, n_done
        img = images[slots[f]]
        t = times_ms[f]
        nb = counts[f]
        counters[C_FRAMES] += 1
        counters[C_BLOBS] += nb
        for b in range(nb):
            taken[b] = -1
        for k in range(max_tracks):
            matched[k] = 0
            if si[k, SI_STATE] != FREE:
                pred[k] = _predict_x(sf[k, SF_X], sf[k, SF_VX], sf[k, SF_RATIO], t - sf[k, SF_T], motion)
        # blobs holding the predictions of two or more tracks are merged cells: nobody takes them
        for b in range(nb):
            inside_n = 0
            for k in range(max_tracks):
                if si[k, SI_STATE] == FREE or si[k, SI_MERGED] >= MAX_MERGE_FRAMES:
                    continue
                px = pred[k]
                py = sf[k, SF_Y]
                if (blobs[f, b, B_XMIN] - MERGE_MARGIN_PX <= px <= blobs[f, b, B_XMAX] + MERGE_MARGIN_PX
                        and blobs[f, b, B_YMIN] - MERGE_MARGIN_PX <= py <= blobs[f, b, B_YMAX] + MERGE_MARGIN_PX):
                    inside_n += 1
            if inside_n >= 2:
                taken[b] = _MERGED
                counters[C_MERGES] += 1
                for k in range(max_tracks):
                    if si[k, SI_STATE] == FREE or si[k, SI_MERGED] >= MAX_MERGE_FRAMES:
                        continue
                    px = pred[k]
                    py = sf[k, SF_Y]
                    if (blobs[f, b, B_XMIN] - MERGE_MARGIN_PX <= px <= blobs[f, b, B_XMAX] + MERGE_MARGIN_PX
                            and blobs[f, b, B_YMIN] - MERGE_MARGIN_PX <= py <= blobs[f, b, B_YMAX] + MERGE_MARGIN_PX):
                        matched[k] = 2
        # greedy global nearest-prediction matching
        while True:
            best = 1e300
            bk = -1
            bb = -1
            for k in range(max_tracks):
                if si[k, SI_STATE] == FREE or matched[k]:
                    continue
                px = pred[k]
                py = sf[k, SF_Y]
                for b in range(nb):
                    if taken[b] != -1:
                        continue
                    dx = blobs[f, b, B_X] - px
                    dy = blobs[f, b, B_Y] - py
                    # cells only move downstream: a blob behind where the cell was last seen is
                    # someone else. How far short of the prediction it may fall is not gated: a
                    # cell that slowed (leaving the constriction, queueing) is still nearest to it.
                    if blobs[f, b, B_X] < sf[k, SF_X] - pf[PF_GATE_BACK] or dx > pf[PF_GATE_FWD] or abs(dy) > pf[PF_GATE_Y]:
                        continue
                    cost = dx * dx + 4.0 * dy * dy
                    if cost < best:
                        best = cost
                        bk = k
                        bb = b
            if bk < 0:
                break
            taken[bb] = bk
            matched[bk] = 1
        # update matched tracks, age unmatched ones
        for k in range(max_tracks):
            st = si[k, SI_STATE]
            if st == FREE:
                continue
            if matched[k] == 2:
                si[k, SI_MERGED] += 1  # coasting through a merge: no observation, no miss
                if si[k, SI_MERGED] >= MAX_MERGE_FRAMES:
                    si[k, SI_FLAGS] |= Q_DOUBLET  # they did not part: one object from now on
                continue
            was_merged = si[k, SI_MERGED] > 0
            si[k, SI_MERGED] = 0
            if matched[k] == 0:
                # a lost track whose prediction lies inside a blob another track took: merge (doublet)
                px = pred[k]
                py = sf[k, SF_Y]
                for b in range(nb):
                    o = taken[b]
                    if o >= 0 and blobs[f, b, B_XMIN] <= px <= blobs[f, b, B_XMAX] and blobs[f, b, B_YMIN] <= py <= blobs[f, b, B_YMAX]:
                        si[k, SI_FLAGS] |= Q_DOUBLET
                        si[o, SI_FLAGS] |= Q_DOUBLET
                        si[k, SI_MISSES] = pi[PI_MAX_GAP]  # ends now
                        counters[C_MERGES] += 1
                        break
                si[k, SI_MISSES] += 1
                if si[k, SI_MISSES] > pi[PI_MAX_GAP]:
                    if st == ACTIVE:
                        if si[k, SI_ENTRY_FRAME] < 0 and si[k, SI_EXIT_FRAME] < 0:
                            counters[C_LOST] += 1
                        else:
                            si[k, SI_EMIT_FRAME] = frame_ids[f]
                            si[k, SI_EMIT_HOST] = host_ns[f]
                            n_done = _finish(k, si, hist, crops, done_i, done_hist, done_crops, done_n, n_done, motion, pf, done_f)
                            counters[C_EMITTED] += 1
                    si[k, SI_STATE] = FREE
                continue
            b = -1
            for q in range(nb):
                if taken[q] == k:
                    b = q
            # a step seen from frame to frame (not bridged over a miss or a merge) teaches speed
            clean = si[k, SI_MISSES] == 0 and not was_merged
            si[k, SI_MISSES] = 0
            bx = blobs[f, b, B_X]
            prev_x = sf[k, SF_X]
            dt = t - sf[k, SF_T]
            if dt > 0:
                v = (bx - prev_x) / dt
                if si[k, SI_NHIST] <= 1:
                    sf[k, SF_VX] = v
                else:
                    sf[k, SF_VX] = 0.5 * sf[k, SF_VX] + 0.5 * v
            # the step being learned: from where the last one ended, over clean frame-to-frame steps
            ax = sf[k, SF_STEP_X]
            if not clean or bx < ax or frame_ids[f] - sf[k, SF_STEP_F] > MAX_STEP_FRAMES:
                ax = prev_x if clean and prev_x <= bx else bx
                sf[k, SF_STEP_X] = ax
                sf[k, SF_STEP_T] = sf[k, SF_T] if ax == prev_x else t
                sf[k, SF_STEP_F] = frame_ids[f] - 1 if ax == prev_x else frame_ids[f]
            step_dt = t - sf[k, SF_STEP_T]
            if bx - ax >= MIN_STEP_PX and step_dt > 0:
                tp = _profile_ms(ax, bx, motion)
                if tp > 0.0:
                    r = min(max(step_dt / tp, RATIO_MIN), RATIO_MAX)
                    sf[k, SF_RATIO] = 0.5 * sf[k, SF_RATIO] + 0.5 * r
                _learn_step(ax, bx, step_dt, motion)
                sf[k, SF_STEP_X] = bx
                sf[k, SF_STEP_T] = t
                sf[k, SF_STEP_F] = frame_ids[f]
            sf[k, SF_X] = bx
            sf[k, SF_Y] = blobs[f, b, B_Y]
            sf[k, SF_T] = t
            sf[k, SF_AREA] = blobs[f, b, B_AREA]
            if st != ACTIVE:
                continue
            nh = si[k, SI_NHIST]
            if nh == max_hist:
                nh = thin_history(hist[k], nh, N_H_EXTRA + B_X, x0, pi[PI_MAX_GAP] + 1)
                si[k, SI_NHIST] = nh
            if nh < max_hist:
                hist[k, nh, H_T] = t
                hist[k, nh, H_FRAME] = frame_ids[f]
                hist[k, nh, H_SLOT] = slots[f]
                for c in range(nbf):
                    hist[k, nh, N_H_EXTRA + c] = blobs[f, b, c]
                si[k, SI_NHIST] = nh + 1
            else:
                si[k, SI_FLAGS] |= Q_STUCK
                counters[C_HIST_OVERFLOW] += 1
            if blobs[f, b, B_BORDER] > 0.5 and x0 - half <= bx <= x1 + half:
                si[k, SI_FLAGS] |= Q_BORDER
            inside = x0 <= bx < x1
            if inside:
                if si[k, SI_HAS_FIRST] == 0 and si[k, SI_NHIST] > 1 and prev_x < x0:
                    _copy_crop(img, bx, blobs[f, b, B_Y], half, fill, crops[k, 0])
                    si[k, SI_HAS_FIRST] = 1
                    si[k, SI_ENTRY_FRAME] = frame_ids[f]
                elif si[k, SI_ENTRY_FRAME] < 0:
                    si[k, SI_ENTRY_FRAME] = frame_ids[f]  # first seen inside: incomplete
                _copy_crop(img, bx, blobs[f, b, B_Y], half, fill, crops[k, 1])
                si[k, SI_HAS_LAST] = 1
            elif bx >= x1 and si[k, SI_EXIT_FRAME] < 0:
                si[k, SI_EXIT_FRAME] = frame_ids[f]
                si[k, SI_EXIT_HOST] = host_ns[f]
            if bx >= pf[PF_EMIT_X] and si[k, SI_EXIT_FRAME] >= 0:
                si[k, SI_EMIT_FRAME] = frame_ids[f]
                si[k, SI_EMIT_HOST] = host_ns[f]
                n_done = _finish(k, si, hist, crops, done_i, done_hist, done_crops, done_n, n_done, motion, pf, done_f)
                counters[C_EMITTED] += 1
                si[k, SI_STATE] = ABSORB
        # unmatched blobs start new tracks
        for b in range(nb):
            if taken[b] != -1:
                continue
            slot = -1
            for k in range(max_tracks):
                if si[k, SI_STATE] == FREE:
                    slot = k
                    break
            if slot < 0:
                counters[C_TRACK_OVERFLOW] += 1
                continue
            k = slot
            for c in range(N_SI):
                si[k, c] = 0
            si[k, SI_STATE] = ACTIVE
            si[k, SI_ID] = pi[PI_NEXT_ID]
            pi[PI_NEXT_ID] += 1
            si[k, SI_ENTRY_FRAME] = -1
            si[k, SI_EXIT_FRAME] = -1
            si[k, SI_EMIT_FRAME] = -1
            bx = blobs[f, b, B_X]
            sf[k, SF_X] = bx
            sf[k, SF_Y] = blobs[f, b, B_Y]
            sf[k, SF_VX] = pf[PF_V_INIT]
            sf[k, SF_RATIO] = 1.0
            sf[k, SF_T] = t
            sf[k, SF_AREA] = blobs[f, b, B_AREA]
            sf[k, SF_STEP_X] = bx
            sf[k, SF_STEP_T] = t
            sf[k, SF_STEP_F] = frame_ids[f]
            hist[k, 0, H_T] = t
            hist[k, 0, H_FRAME] = frame_ids[f]
            hist[k, 0, H_SLOT] = slots[f]
            for c in range(nbf):
                hist[k, 0, N_H_EXTRA + c] = blobs[f, b, c]
            si[k, SI_NHIST] = 1
            if blobs[f, b, B_BORDER] > 0.5 and x0 - half <= bx <= x1 + half:
                si[k, SI_FLAGS] |= Q_BORDER
            if x0 <= bx < x1:
                si[k, SI_ENTRY_FRAME] = frame_ids[f]
                _copy_crop(img, bx, blobs[f, b, B_Y], half, fill, crops[k, 1])
                si[k, SI_HAS_LAST] = 1
            elif bx >= x1:
                # first seen downstream: nothing to measure, just absorb it
                si[k, SI_STATE] = ABSORB
            counters[C_TRACKS] += 1
    return n_frames, n_done


@njit(nogil=True, cache=True)
def flush_tracks(si, hist, crops, done_i, done_hist, done_crops, done_n, done_f, motion, pf, counters):
    """End every live track (run end): ACTIVE ones that reached the constriction are emitted."""
    n_done = 0
    for k in range(si.shape[0]):
        if si[k, SI_STATE] == ACTIVE and (si[k, SI_ENTRY_FRAME] >= 0 or si[k, SI_EXIT_FRAME] >= 0):
            if n_done < done_i.shape[0]:
                n_done = _finish(k, si, hist, crops, done_i, done_hist, done_crops, done_n, n_done, motion, pf, done_f)
                counters[C_EMITTED] += 1
        elif si[k, SI_STATE] == ACTIVE:
            counters[C_LOST] += 1
        si[k, SI_STATE] = FREE
    return n_done


@njit(nogil=True, cache=True)
def predicted_exits(si, sf, motion, x1, out):
    """Constriction exit times (ms) of the tracks still followed and moving downstream, into
    ``out``; returns how many. Extrapolated from each track's last position along the motion
    profile (at the track's own speed where the profile is not known yet): ahead for cells
    upstream, back for cells already past the exit but not yet emitted."""
    n = 0
    for k in range(si.shape[0]):
        if si[k, SI_STATE] == ACTIVE and sf[k, SF_VX] > 0 and n < out.shape[0]:
            x = sf[k, SF_X]
            back = x > x1
            tp = _profile_ms(x1, x, motion) if back else _profile_ms(x, x1, motion)
            if tp >= 0.0:
                out[n] = sf[k, SF_T] + (-tp if back else tp) * sf[k, SF_RATIO]
            else:
                out[n] = sf[k, SF_T] + (x1 - x) / sf[k, SF_VX]
            n += 1
    return n


@njit(nogil=True, cache=True)
def _pace_ratio(h, col_t, col_x, col_border, x_end, motion, cap, max_step):
    """A track's time over the profile's along its steps that end before ``x_end`` (px); 0 if
    none. Steps are learned as the link kernel learns them: frame-to-frame steps added up until
    they reach ``MIN_STEP_PX`` within ``MAX_STEP_FRAMES``. Left out: steps on the ROI's border (a
    cell entering the view has its centroid pulled in), across more than ``max_step`` frames
    between rows (where :func:`thin_history` dropped rows) and, with ``cap`` > 0, steps slower
    than ``cap`` times the profile (waiting in a queue)."""
    dt = 0.0
    tp = 0.0
    a = 0
    for i in range(1, h.shape[0]):
        if (h[i, col_border] > 0.5 or h[i - 1, col_border] > 0.5 or h[i, H_FRAME] - h[i - 1, H_FRAME] > max_step
                or h[i, col_x] >= x_end or h[i, col_x] < h[a, col_x]):
            a = i
            continue
        xa = h[a, col_x]
        xb = h[i, col_x]
        if xb - xa < MIN_STEP_PX:
            if h[i, H_FRAME] - h[a, H_FRAME] >= MAX_STEP_FRAMES:
                a = i  # no step from a stop
            continue
        d = h[i, col_t] - h[a, col_t]
        too_long = h[i, H_FRAME] - h[a, H_FRAME] > MAX_STEP_FRAMES
        a = i
        if too_long:
            continue
        p = _profile_ms(xa, xb, motion)
        if p <= 0.0:
            continue
        if cap > 0.0 and d > cap * p:
            continue
        dt += d
        tp += p
    return min(max(dt / tp, RATIO_MIN), RATIO_MAX) if tp > 0.0 and dt > 0.0 else 0.0


@njit(nogil=True, cache=True)
def _robust_pace_ratio(h, col_t, col_x, col_border, x_end, motion, max_step):
    """:func:`_pace_ratio`, then again without the steps slower than 1.5 times that: a cell that
    queued behind another at the constriction's mouth looked up to 1.7x slower than it moves."""
    r = _pace_ratio(h, col_t, col_x, col_border, x_end, motion, 0.0, max_step)
    return _pace_ratio(h, col_t, col_x, col_border, x_end, motion, QUEUE_PACE * r, max_step) if r > 0.0 else r



@njit(nogil=True, cache=True)
def downstream_pace(h, col_t, col_x, col_border, pace_end, x1, far0, far1, scale, max_step, motion, out):
    """How a cell goes on past the constriction exit ``x1`` (px), for timing its sort pulse.

    A cell leaving the constriction slows down over about its own radius; measured there (2–3
    frames before it is emitted at fast flow) its speed came out up to 1.3× its speed further on,
    and a pulse timed with it ~20% of the travel early. The run's learned motion profile knows the
    channel past that region from every cell that crossed it: ``out[0]`` is the profile's mean ms
    per px over its known bins wholly inside ``[far0, far1)``, scaled (``scale``) by this cell's own
    pace relative to the profile over its steps that end before ``pace_end`` (upstream, short of
    where cells queue at the constriction's mouth: the longest stretch where it moves freely in a
    wide channel, as it does past the exit; its whole track if it was not seen there, a typical
    cell's if the profile is not known there); ``out[1]`` is the time (ms) the
    cell takes from ``x1`` to ``far0`` minus what that pace would take (negative: it leaves the
    constriction faster). ``out[0] = -1`` while the far bins are not known (a run's first cells).

    On the simulator (its cells' speed past the exit is their upstream speed's share of the
    flow) the pulse then comes within ±4% of the travel time at p5–p95 at 5–60 mm/s, against
    −20% (median) at 60 mm/s with the speed measured past the exit."""
    out[0] = -1.0
    out[1] = 0.0
    nbins = motion.shape[1]
    tot = 0.0
    cnt = 0
    for b in range(max(int(np.ceil(far0 / MOTION_BIN_PX)), 0), min(int(np.floor(far1 / MOTION_BIN_PX)), nbins)):
        if motion[M_N, b] >= MOTION_MIN_SAMPLES:
            tot += motion[M_SLOW, b]
            cnt += 1
    if cnt == 0:
        return
    slow_far = tot / cnt
    ratio = 1.0
    if scale:
        ratio = _robust_pace_ratio(h, col_t, col_x, col_border, pace_end, motion, max_step)
        if ratio == 0.0:
            ratio = _robust_pace_ratio(h, col_t, col_x, col_border, np.inf, motion, max_step)
        if ratio == 0.0:
            ratio = 1.0
    out[0] = ratio * slow_far
    p = _profile_ms(x1, far0, motion)
    if p > 0.0:
        out[1] = ratio * (p - (far0 - x1) * slow_far)
