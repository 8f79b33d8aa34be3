"""The channel moving in the camera's view during a run (a stage or chip that shifted).

The constriction the tracker times passages against is found once, in the run's first frames. A
chip that moves afterwards took every transit time off with nothing said (simulated, 60 cells/s
at 4 kHz: 5 µm along the flow +10% median transit, 2 µm +1.7%; 2 µm across it v_max +6%), and
until the background relearned (2,048 frames) the walls' old and new edges passed for cells.

How far it moved is measured on two brightness profiles, the column means (the constriction's
walls along the flow) and the row means (the channel's walls across it), of a frame against those
of the run's first background: the offset at which the two profiles, each normalised to zero mean
and unit spread over their overlap, differ least (:func:`profile_offsets`), refined to a fraction
of a pixel on a parabola. Normalised, the profiles do not see the light change; cells darken a few
columns of one frame by a few grey levels against the walls' tens, which does not move the minimum
(300 cells/s with 5% flicker: every frame read 0). The tracker takes a move only once two looks
agree on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mimlsort.jit import njit

#: the spread of a profile (grey levels) under which it holds no walls to read
MIN_SPREAD = 2.0


@njit(nogil=True, cache=True)
def profile_offsets(ref, cur, dmax, out):
    """``out[d + dmax]``: mean squared difference between ``ref[i]`` and ``cur[i + d]`` over
    their overlap, each normalised there to zero mean and unit spread, for d in -dmax..dmax
    (inf where the overlap is under half the profile or flat)."""
    n = ref.shape[0]
    for k in range(2 * dmax + 1):
        d = k - dmax
        i0 = max(0, -d)
        i1 = min(n, n - d)
        m = i1 - i0
        if m < n // 2 or m < 4:
            out[k] = np.inf
            continue
        sa = 0.0
        sb = 0.0
        for i in range(i0, i1):
            sa += ref[i]
            sb += cur[i + d]
        ma = sa / m
        mb = sb / m
        va = 0.0
        vb = 0.0
        for i in range(i0, i1):
            va += (ref[i] - ma) ** 2
            vb += (cur[i + d] - mb) ** 2
        if va <= 0.0 or vb <= 0.0:
            out[k] = np.inf
            continue
        fa = 1.0 / math.sqrt(va / m)
        fb = 1.0 / math.sqrt(vb / m)
        s = 0.0
        for i in range(i0, i1):
            e = (cur[i + d] - mb) * fb - (ref[i] - ma) * fa
            s += e * e
        out[k] = s / m


def _offset(ref: np.ndarray, ref_spread: float, cur: np.ndarray, dmax: int, near: np.ndarray,
            work: np.ndarray) -> float:
    """Sub-pixel offset of ``cur`` against ``ref`` (``cur[i + d] ~ ref[i]``); 0.0 where it fits
    best where it was (looked at first: the full search takes ~50 µs) or where there are no walls
    to read; ±inf where the best fit lies at the edge of ±dmax (moved further)."""
    # (the spreads relative to the means; ``ref_spread`` is ref's)
    if ref_spread == 0.0 or cur.std() < 0.5 * ref_spread * cur.mean():
        # no walls across it, or the frame lost half their contrast against its brightness (a
        # lamp turned up into saturation read as "moved more than 20 µm")
        return 0.0
    profile_offsets(ref, cur, 1, near)
    if near[1] <= near[0] and near[1] <= near[2]:
        return 0.0
    profile_offsets(ref, cur, dmax, work)
    k = int(np.argmin(work))
    if not np.isfinite(work[k]) or k == dmax:
        return 0.0
    if k == 0 or k == 2 * dmax:
        return math.copysign(math.inf, k - dmax)
    a, b, c = work[k - 1], work[k], work[k + 1]
    den = a - 2 * b + c
    frac = 0.5 * (a - c) / den if np.isfinite(a + c) and den > 0 else 0.0
    return k - dmax + max(-0.5, min(0.5, frac))


@dataclass(frozen=True, slots=True)
class Offset:
    """How far the channel lies from where it was, in pixels (+x: with the flow, +y: down)."""

    dx: float
    dy: float

    @property
    def beyond(self) -> bool:
        """Moved further than the search reaches (or out of the view)."""
        return math.isinf(self.dx) or math.isinf(self.dy)


class DriftGauge:
    """Measures a frame's (or a background's) offset against the run's first background."""

    def __init__(self, background: np.ndarray, max_px: int):
        bg = np.asarray(background, np.float64)
        # how far it looks along each axis: at most a quarter of the view across it
        self.max_x = int(max(1, min(max_px, bg.shape[1] // 4)))
        self.max_y = int(max(1, min(max_px, bg.shape[0] // 4)))
        # the profiles from every k-th row and column (~128 of each): over all of a 1280x1024
        # 16-bit frame a look took ~0.9 ms of the tracking thread
        self._sy, self._sx = max(1, bg.shape[0] // 128), max(1, bg.shape[1] // 128)
        self._ref_x = bg[::self._sy].mean(axis=0)
        self._ref_y = bg[:, ::self._sx].mean(axis=1)
        # relative spreads (0: no walls across it to read)
        self._spread_x, self._spread_y = (float(r.std() / r.mean()) if r.std() >= MIN_SPREAD and r.mean() > 0 else 0.0
                                          for r in (self._ref_x, self._ref_y))
        self._work_x = np.zeros(2 * self.max_x + 1, np.float64)
        self._work_y = np.zeros(2 * self.max_y + 1, np.float64)
        self._near = np.zeros(3, np.float64)

    def load(self) -> None:
        """Load the compiled kernel (a run's first look must not compile it with the camera on)."""
        profile_offsets(self._ref_x, self._ref_x, 1, self._near)

    def offset(self, image: np.ndarray) -> Offset:
        img = np.asarray(image)
        cur_x = img[::self._sy].mean(axis=0, dtype=np.float64)
        cur_y = img[:, ::self._sx].mean(axis=1, dtype=np.float64)
        return Offset(_offset(self._ref_x, self._spread_x, cur_x, self.max_x, self._near, self._work_x),
                      _offset(self._ref_y, self._spread_y, cur_y, self.max_y, self._near, self._work_y))


def translated(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` (float) moved by (dx, dy) pixels, linearly interpolated, its edges repeated
    into what comes into view."""
    out = np.asarray(image, np.float32)
    for axis, d in ((1, dx), (0, dy)):
        if d == 0.0:
            continue
        n = out.shape[axis]
        src = np.clip(np.arange(n) - d, 0, n - 1)  # out[i] = image[i - d]
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        w = (src - i0).astype(np.float32)
        a, b = np.take(out, i0, axis=axis), np.take(out, i1, axis=axis)
        shape = [1, 1]
        shape[axis] = n
        w = w.reshape(shape)
        out = a * (1 - w) + b * w
    return np.ascontiguousarray(out, np.float32)
