"""numba kernel: one cell's features from its observation history.

The same definitions as :func:`tracking.tracker.measure_passage` (the readable NumPy reference the
tests hold it to), in one compiled pass: the per-event work of the tracker must stay far below
the frame budget even at hundreds of cells per second, and a few dozen small NumPy calls per event
cost a few hundred µs with cold caches.
"""

from __future__ import annotations

import math

import numpy as np

from mimlsort.jit import njit
from tracking.blobs import (
    B_AREA,
    B_BORDER,
    B_BRIGHT_AVG,
    B_BRIGHT_SD,
    B_CONTRAST,
    B_HULL_AREA,
    B_HULL_PERIM,
    B_MAJOR,
    B_MINOR,
    B_SPLIT,
    B_X,
    B_XMAX,
    B_Y,
)
from tracking.link import H_T, N_H_EXTRA

#: output order of :func:`passage_kernel`
FEATURE_ORDER = ("di", "di_entry", "di_exit", "transit_time_ms", "v_max_mm_s", "v_before_mm_s", "v_after_mm_s",
                 "dir_per_ms", "diameter_um", "deform", "area_um", "bright_avg", "bright_sd", "entry_time_ms",
                 "exit_time_ms", "pos_y_um")
N_FEATURES = len(FEATURE_ORDER)

#: upstream DI above which a passage is a doublet (TrackerSettings.doublet_di's default). A cell at
#: rest in the wide channel is round (DI ~0.02, at most ~0.04 in the simulator); two touching
#: cells make one blob of DI ~0.3 (equal sizes), ~0.1 when one is a third of the other's diameter.
DOUBLET_DI = 0.12

# quality bits (tracking.events.Quality)
_Q_DOUBLET = 1
_Q_INCOMPLETE = 4
_Q_LOW_CONTRAST = 8
_Q_STUCK = 16
_Q_TOUCHING = 32
#: share of a passage's rows (before entry to after exit) a blob must be cut on one side in to be
#: half of a doublet: a frame may miss the waist, or a third cell touch for a moment
_JOINED = 0.9
#: the rows not cut from a neighbour missed a cell's maximum speed when their fastest is below this
#: share of the mean speed through the constriction (no maximum is below the mean; the margin keeps
#: noise in a few rows from taking the cut rows back in)
V_MEAN_SHARE = 0.9


@njit(nogil=True, cache=True)
def _median(buf, n):
    """Median of buf[:n] ignoring NaNs (buf is reordered); NaN if none."""
    m = 0
    for i in range(n):
        if not math.isnan(buf[i]):
            buf[m] = buf[i]
            m += 1
    if m == 0:
        return math.nan
    s = np.sort(buf[:m])
    if m % 2:
        return s[m // 2]
    return 0.5 * (s[m // 2 - 1] + s[m // 2])


@njit(nogil=True, cache=True)
def _crossing(t, x, n, line):
    """(time the track crosses x = line, index of the first observation at or past it)."""
    for i in range(n):
        if x[i] >= line:
            if i == 0:
                return math.nan, 0
            return _crossing_time(t, x, n, i, line), i
    return math.nan, -1


@njit(nogil=True, cache=True)
def _pchip_slope(d0, d1):
    """Slope at a knot between secants ``d0`` and ``d1`` that keeps the cubic monotone
    (Fritsch-Butland: their harmonic mean, 0 at a turn)."""
    if d0 * d1 <= 0:
        return 0.0
    return 2.0 * d0 * d1 / (d0 + d1)


#: halvings of the interval when solving for a crossing time (2^-32 of a frame)
CROSSING_STEPS = 32


@njit(nogil=True, cache=True)
def _crossing_time(t, x, n, i, line):
    """When the track crosses x = ``line`` between rows i - 1 and i: on the monotone cubic
    (PCHIP) through the rows around it, not on the straight line between the two.

    A cell speeds up several-fold into the constriction and slows down out of it: the straight
    line put the entry early and the exit late, by up to a third of a frame (with two frames
    inside: transit +6%, and the mean speed through the constriction, v_max's floor, -6%). The
    cubic takes the speeds on either side from the steps next to the interval, so it does not
    assume where in it the speed changes."""
    ta = t[i - 1]
    tb = t[i]
    xa = x[i - 1]
    xb = x[i]
    h = tb - ta
    if xb <= xa or h <= 0:
        return tb
    d = (xb - xa) / h
    ma = _pchip_slope((xa - x[i - 2]) / (ta - t[i - 2]), d) if i >= 2 and ta > t[i - 2] else d
    mb = _pchip_slope(d, (x[i + 1] - xb) / (t[i + 1] - tb)) if i + 1 < n and t[i + 1] > tb else d
    lo = 0.0
    hi = 1.0
    for _ in range(CROSSING_STEPS):
        u = 0.5 * (lo + hi)
        # cubic Hermite basis: x(u) from the end points and the end slopes (per unit u: times h)
        xu = ((2 * u - 3) * u * u + 1) * xa + ((u - 2) * u + 1) * u * h * ma + (3 - 2 * u) * u * u * xb \
            + (u - 1) * u * u * h * mb
        if xu < line:
            lo = u
        else:
            hi = u
    return ta + 0.5 * (lo + hi) * h


@njit(nogil=True, cache=True)
def _nanmedian3(a, b, c):
    if math.isnan(a):
        if math.isnan(b):
            return c
        if math.isnan(c):
            return b
        return 0.5 * (b + c)
    if math.isnan(b):
        return a if math.isnan(c) else 0.5 * (a + c)
    if math.isnan(c):
        return 0.5 * (a + b)
    return max(min(a, b), min(max(a, b), c))


#: a cell whose centroid stays within this of where it stopped has not moved on (centroid jitter
#: and a squeeze at the constriction's mouth move it less; a sixth of a cell's diameter)
STOP_UM = 2.0


@njit(nogil=True, cache=True)
def longest_stop(t, x, n, reach):
    """The longest time over which the centroid ``x`` stayed within ``reach`` of where it was."""
    best = 0.0
    for i in range(n - 1):
        j = i
        while j + 1 < n and abs(x[j + 1] - x[i]) <= reach:
            j += 1
        if t[j] - t[i] > best:
            best = t[j] - t[i]
    return best


@njit(nogil=True, cache=True)
def passage_kernel(h, x0, x1, px, doublet_solidity, low_contrast, stuck_ms, out, doublet_di=DOUBLET_DI):
    """Fill ``out`` (N_FEATURES, in FEATURE_ORDER) from history rows ``h``; returns
    (quality bits, row of maximum DI in the constriction or -1).

    DOUBLET: the median DI of the rows whose blob lies wholly upstream of the constriction and
    off the ROI border exceeds ``doublet_di``, or the upstream hull solidity is below
    ``doublet_solidity``. Rows whose blob reaches into the constriction mouth are left out (the
    squeeze starts when the front touches x0), as are border rows (a cell cut by the ROI edge is
    elongated across it). Also DOUBLET: the blob was cut from a neighbour on the same side
    (B_SPLIT) in nearly every row (``_JOINED``) from the last one before the constriction to the
    first one past it, at least two of them in it — cells in single file part there, as each
    one speeds up in turn, so two that stay joined all through it are one object.

    TOUCHING: a row from the last one before the constriction on was cut from a neighbour (where
    the mechanics and the crops are measured; touching while queued upstream leaves the rest
    shape's medians nearly as they are). Rows cut from a neighbour are left out of the DI
    maximum (a cut edge is straight), of DIR, and, with their neighbours, of the maximum speed
    (the cut moves the centroid), wherever enough rows remain and, for the speed, reach the mean
    speed through the constriction; as if the cell had not been seen in them."""
    n = h.shape[0]
    c = N_H_EXTRA
    nan = math.nan
    t = h[:, H_T]
    x = h[:, c + B_X]
    y = h[:, c + B_Y]
    di = np.empty(n)
    for i in range(n):
        a = h[i, c + B_MAJOR]
        b = h[i, c + B_MINOR]
        di[i] = (a - b) / max(a + b, 1e-12) if a + b > 0 else 0.0
    q = 0
    t_in, i_in = _crossing(t, x, n, x0)
    t_out, i_out = _crossing(t, x, n, x1)
    if math.isnan(t_in) or math.isnan(t_out):
        q |= _Q_INCOMPLETE
    n_up = i_in if i_in > 0 else 0
    # speed: central differences, then a 3-point median so one bad centroid cannot make the max
    v = np.full(n, nan)
    if n >= 3:
        for i in range(1, n - 1):
            v[i] = math.hypot(x[i + 1] - x[i - 1], y[i + 1] - y[i - 1]) / max(t[i + 1] - t[i - 1], 1e-9) * px
    vm = v.copy()
    if n >= 5:
        for i in range(1, n - 1):
            vm[i] = _nanmedian3(v[i - 1], v[i], v[i + 1])
    buf = np.empty(n)
    i_max = -1
    best = -np.inf
    i_cut = -1
    best_cut = -np.inf
    v_max = -np.inf
    v_max_whole = -np.inf  # from rows neither cut nor next to one (a cut moves the centroid)
    n_inside = 0
    for i in range(n):
        cut = h[i, c + B_SPLIT] > 0.5
        if cut and (x0 <= x[i] < x1 or i == i_in - 1):
            q |= _Q_TOUCHING
        if x0 <= x[i] < x1:
            n_inside += 1
            if cut:
                if di[i] > best_cut:
                    best_cut = di[i]
                    i_cut = i
            elif di[i] > best:
                best = di[i]
                i_max = i
            if not math.isnan(vm[i]):
                v_max = max(v_max, vm[i])
                if not (cut or (i > 0 and h[i - 1, c + B_SPLIT] > 0.5) or (i + 1 < n and h[i + 1, c + B_SPLIT] > 0.5)):
                    v_max_whole = max(v_max_whole, vm[i])
    if i_max < 0:
        i_max = i_cut
    # the maximum cannot lie below the mean speed through the constriction: uncut rows that stay
    # under it missed the maximum (a cell queued behind the one ahead is at full speed only in the
    # frames where it touches it, and is cut from it there), and all the rows in it are what is left
    mean_in = (x1 - x0) * px / (t_out - t_in) if t_out > t_in else nan
    if v_max_whole > -np.inf and not v_max_whole < V_MEAN_SHARE * mean_in:
        v_max = v_max_whole
    # and never below it: seen in a few frames only, the differences straddle the slow approach
    if v_max > -np.inf and mean_in > v_max:
        v_max = mean_in
    if n_inside >= 2 and i_in > 0 and i_out > 0:
        n_up_cut = 0
        n_down_cut = 0
        for i in range(i_in - 1, i_out + 1):
            side = int(h[i, c + B_SPLIT])
            n_up_cut += side & 1
            n_down_cut += (side >> 1) & 1
        if max(n_up_cut, n_down_cut) >= _JOINED * (i_out - i_in + 2):
            q |= _Q_DOUBLET
    for k in range(out.shape[0]):
        out[k] = nan
    out[0] = di[i_max] if i_max >= 0 else nan
    out[1] = di[i_in - 1] if i_in > 0 else nan
    out[2] = di[i_out] if i_out > 0 else nan
    out[3] = t_out - t_in
    out[4] = v_max if i_max >= 0 and v_max > -np.inf else nan
    buf[:n_up] = v[:n_up]
    out[5] = _median(buf, n_up)
    if i_out > 0:
        m = n - i_out
        buf[:m] = v[i_out:]
        out[6] = _median(buf, m)
    if i_in > 0 and i_out > 0:
        # over the rows not cut from a neighbour where there are two or more, else over all
        first = -1
        last = -1
        s = 0.0
        for i in range(i_in - 1, n):
            if h[i, c + B_SPLIT] <= 0.5:
                if last >= 0:
                    s += abs(di[i] - di[last])
                else:
                    first = i
                last = i
        if first < 0 or last == first:
            first = i_in - 1
            last = n - 1
            s = 0.0
            for i in range(i_in, n):
                s += abs(di[i] - di[i - 1])
        dt = t[last] - t[first]
        if dt > 0:
            out[7] = s / dt
    if i_in > 0:
        buf[:n_up] = h[:n_up, c + B_AREA]
        out[8] = 2.0 * math.sqrt(_median(buf, n_up) / math.pi) * px
        buf[:n_up] = h[:n_up, c + B_HULL_AREA]
        out[10] = _median(buf, n_up) * px * px
        buf[:n_up] = h[:n_up, c + B_BRIGHT_AVG]
        out[11] = _median(buf, n_up)
        buf[:n_up] = h[:n_up, c + B_BRIGHT_SD]
        out[12] = _median(buf, n_up)
    if i_max >= 0:
        ha = h[i_max, c + B_HULL_AREA]
        hp = h[i_max, c + B_HULL_PERIM]
        out[9] = 1.0 - 2.0 * math.sqrt(math.pi * ha) / hp if hp > 0 else nan
    out[13] = t_in
    out[14] = t_out
    if i_out > 0:
        out[15] = y[i_out] * px
    if i_in > 1:
        for i in range(n_up):
            ha = h[i, c + B_HULL_AREA]
            buf[i] = h[i, c + B_AREA] / ha if ha > 0 else nan
        sol = _median(buf, n_up)
        if sol < doublet_solidity:
            q |= _Q_DOUBLET
    m = 0
    for i in range(n_up):
        if h[i, c + B_XMAX] < x0 and h[i, c + B_BORDER] < 0.5:
            buf[m] = di[i]
            m += 1
    if m > 0 and _median(buf, m) > doublet_di:
        q |= _Q_DOUBLET
    buf[:n] = h[:, c + B_CONTRAST]
    if _median(buf, n) < low_contrast:
        q |= _Q_LOW_CONTRAST
    if longest_stop(t, x, n, STOP_UM / px) > stuck_ms:
        q |= _Q_STUCK
    return q, i_max
