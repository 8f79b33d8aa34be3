"""Segmentation and per-blob measurement kernels (numba, ``nogil``, no per-frame allocation).

Per frame:

1. *Runs*: each scanned row is thresholded (|image - background| > threshold) into runs of
   foreground pixels; runs touching a run of the previous row (8-connectivity) are joined with
   union-find. Only the rows ``y0..y1`` (the channel) are scanned: the pixel pass is the cost.
2. *Blobs*: per connected component the filled mask is, per row, the span from its leftmost to its
   rightmost pixel (this fills holes of brightfield cells, whose interior often matches the
   background, and is exact for the convex shapes cells have). Area, bounding box, brightness and
   the convex hull (monotone chain over the span end points, pixel centres — ShapeIn's and dcnum's
   convention, which reproduces their ``area_um``/``deform`` exactly for the same mask) come from
   the spans.
3. *Ellipse*: the moment ellipse must be unbiased for anti-aliased, slightly blurred edges, because
   a 0.3 px bias of the boundary of an elongated cell (b ≈ 5 px) is 0.01 in DI. Pixels in a 1-px band
   around the mask boundary are weighted with their coverage ``clip(s*(image-bg)/C, 0, 1)``; pixels
   deeper inside count 1 whatever their texture. ``C`` is the body's own contrast: the mean of
   the lower half of the deep interior (texture, nucleus, granules and a dark rim only ever add
   contrast, and partly covered edge pixels show the body's). Each band pixel's mass sits where
   its covered part lies — moved inwards along the normal of the spans' own moment ellipse by
   (1 - coverage)/2 of the pixel's extent — which removes the pixel-centre bias of a weighted
   edge (+0.06 px on b otherwise); each pixel adds its own intra-pixel variance.

``blob_mask`` returns the filled mask of the blob nearest a point, for event snapshots.

Speed (the kernel runs per frame on the sort thread): small helpers are inlined at numba's IR
level (``inline="always"``: numba does not inline calls between separately compiled kernels,
and a call per pixel or run costs more than its work); pixel loops run from an unsigned offset
so they vectorise; sums of integers are integer sums. The output is bit-for-bit that of the
straightforward per-pixel formulation (kept in the history of this file): every float sum
keeps its order of terms, and no operation is replaced by a cheaper one that rounds
differently.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.core.extending import overload
from numba.cpython.unsafe.numbers import trailing_zeros

from mimlsort.jit import njit
from tracking._pure import pure_python
from tracking.background import corrects, frame_light, rows_max, scale_rows
from tracking.blobs import (
    B_ANGLE,
    B_AREA,
    B_BG_OFF,
    B_BORDER,
    B_BRIGHT_AVG,
    B_BRIGHT_SD,
    B_CONTRAST,
    B_HULL_AREA,
    B_HULL_PERIM,
    B_LIGHT,
    B_MAJOR,
    B_MINOR,
    B_SPLIT,
    B_X,
    B_XMAX,
    B_XMIN,
    B_Y,
    B_YMAX,
    B_YMIN,
    N_BLOB_FIELDS,
)

# per-candidate scratch columns kept per run root
_R_XMIN = 0  # (the root run is a component's first, so its row is the component's top)
_R_XMAX = 1
_R_YMAX = 2
_N_R = 3


@njit(nogil=True, cache=True, inline="always")
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


# --- pixel passes of the run scan ------------------------------------------------------------
# Each has a plain-Python version (what tracking._pure.pure_python runs) and a compiled one chosen
# by type: for unsigned frames of the background's dtype the contrast is computed in the pixel
# type itself (max - min), which LLVM vectorises 32 pixels to an AVX2 register; widening to int32
# first runs at a quarter of that and is the per-row cost of an empty channel.


def _ctz(x):
    """Index of the lowest set bit of a nonzero uint64."""
    x = int(x)
    return (x & -x).bit_length() - 1


@overload(_ctz, jit_options={"nogil": True}, inline="always")
def _ctz_compiled(x):
    def impl(x):
        return np.int64(trailing_zeros(x))

    return impl


def _pack8(u):
    """The 8 bytes (0 or 1) of a uint64 as the 8 low bits of a uint64, byte k -> bit k."""
    u = u | (u >> np.uint64(7))
    u = u | (u >> np.uint64(14))
    u = u | (u >> np.uint64(28))
    return u & np.uint64(0xFF)


@overload(_pack8, jit_options={"nogil": True}, inline="always")
def _pack8_compiled(u):
    def impl(u):
        # byte k (bit 8k) times bit 56 - 7k lands on bit 56 + k; no two products share a bit
        return (u * np.uint64(0x0102040810204080)) >> np.uint64(56)

    return impl


def _row_peak(img, bg, y, dark):
    """Largest contrast in row y (>= 0): max |image - background|, or max (background - image)."""
    d = img[y].astype(np.int32) - bg[y].astype(np.int32)
    return max(0, int((-d if dark else np.abs(d)).max()))


def _row_mask(img, bg, y, dark, ti, mrow):
    """mrow[x] = contrast of pixel (y, x) > ti (0/1), x < width; ti >= 0."""
    d = img[y].astype(np.int32) - bg[y].astype(np.int32)
    mrow[:img.shape[1]] = (-d > ti) if dark else (np.abs(d) > ti)


def _same_unsigned(img, bg):
    return (isinstance(img, types.Array) and isinstance(img.dtype, types.Integer) and not img.dtype.signed
            and img.dtype == bg.dtype)


@overload(_row_peak, jit_options={"nogil": True}, inline="always")
def _row_peak_compiled(img, bg, y, dark):
    if _same_unsigned(img, bg):
        def impl(img, bg, y, dark):
            m = img.dtype.type(0)
            if dark:
                for x in range(img.shape[1]):
                    a = img[y, x]
                    b = bg[y, x]
                    m = max(m, img.dtype.type(b - min(a, b)))
            else:
                for x in range(img.shape[1]):
                    a = img[y, x]
                    b = bg[y, x]
                    m = max(m, img.dtype.type(max(a, b) - min(a, b)))
            return np.int64(m)

        return impl

    def generic(img, bg, y, dark):
        m = np.int32(0)
        for x in range(img.shape[1]):
            d = np.int32(img[y, x]) - np.int32(bg[y, x])
            m = max(m, np.int32(-d if dark else max(d, -d)))
        return np.int64(m)

    return generic


@overload(_row_mask, jit_options={"nogil": True}, inline="always")
def _row_mask_compiled(img, bg, y, dark, ti, mrow):
    if _same_unsigned(img, bg):
        def impl(img, bg, y, dark, ti, mrow):
            t = img.dtype.type(min(ti, np.iinfo(img.dtype).max))
            if dark:
                for x in range(img.shape[1]):
                    a = img[y, x]
                    b = bg[y, x]
                    mrow[x] = img.dtype.type(b - min(a, b)) > t
            else:
                for x in range(img.shape[1]):
                    a = img[y, x]
                    b = bg[y, x]
                    mrow[x] = img.dtype.type(max(a, b) - min(a, b)) > t
        return impl

    def generic(img, bg, y, dark, ti, mrow):
        for x in range(img.shape[1]):
            d = np.int64(img[y, x]) - np.int64(bg[y, x])
            mrow[x] = (-d if dark else max(d, -d)) > ti

    return generic


@njit(nogil=True, cache=True, inline="always")
def _add_run(run_y, run_a, run_b, parent, nr, y, a, b):
    if nr < run_y.shape[0]:
        run_y[nr] = y
        run_a[nr] = a
        run_b[nr] = b
        parent[nr] = nr
        nr += 1
    return nr


@njit(nogil=True, cache=True)
def _runs(img, bg, ti, mode, y0, y1, mrow, run_y, run_a, run_b, parent, row_first):
    """Threshold rows y0..y1 into runs and union 8-connected runs; returns the number of runs
    (stops adding runs when the scratch is full). ``mode`` 0: |d| > ti; -1: -d > ti (dark only);
    ``ti`` >= 0.

    Most of a frame is empty channel: a row is first reduced to its peak contrast (one
    branch-free loop that vectorises) and skipped when that is not above the threshold. Rows with
    something in them are thresholded into ``mrow`` (uint8 0/1, length a multiple of 64, zero
    past the row), which is packed into one bit per pixel, 64 pixels a word; runs are read off
    a word's 0→1 and 1→0 transitions (count trailing zeros): a few integer operations per run and
    per 64 pixels instead of a branch per pixel, whose mispredictions were most of the cost."""
    w = img.shape[1]
    dark = mode != 0
    words = mrow.view(np.uint64)
    nck = (w + 63) // 64
    nr = 0
    prev_a = 0
    prev_b = 0
    for y in range(y0, y1):
        row_first[y - y0] = nr
        cur_a = nr
        if _row_peak(img, bg, y, dark) <= ti:
            prev_a = nr  # an empty row: nothing below can join what is above
            prev_b = nr
            continue
        _row_mask(img, bg, y, dark, ti, mrow)
        in_run = False
        a = 0
        carry = np.uint64(0)  # the previous chunk's last pixel, as bit 0
        for c in range(nck):
            fg = np.uint64(0)  # pixels 64 c .. 64 c + 63 as bits
            for k in range(8):
                fg |= _pack8(words[8 * c + k]) << np.uint64(8 * k)
            if fg == 0 and not in_run:
                carry = np.uint64(0)
                continue
            before = (fg << np.uint64(1)) | carry  # bit k: pixel 64 c + k - 1
            carry = fg >> np.uint64(63)
            starts = fg & ~before
            ends = before & ~fg  # bit k: a run ended at pixel 64 c + k - 1
            base = 64 * c
            if in_run:
                if ends == 0:
                    continue
                nr = _add_run(run_y, run_a, run_b, parent, nr, y, a, base + _ctz(ends) - 1)
                ends &= ends - np.uint64(1)
                in_run = False
            # starts and ends alternate: the k-th start of the chunk ends at its k-th end
            while starts != 0:
                a = base + _ctz(starts)
                starts &= starts - np.uint64(1)
                if ends == 0:
                    in_run = True
                    break
                nr = _add_run(run_y, run_a, run_b, parent, nr, y, a, base + _ctz(ends) - 1)
                ends &= ends - np.uint64(1)
        if in_run:
            nr = _add_run(run_y, run_a, run_b, parent, nr, y, a, w - 1)
        cur_b = nr
        # join with the previous row's runs: both lists are sorted by x, so one merge pass
        q = prev_a
        for r in range(cur_a, cur_b):
            ra = run_a[r] - 1
            rb = run_b[r] + 1
            while q < prev_b and run_b[q] < ra:
                q += 1
            qq = q
            while qq < prev_b and run_a[qq] <= rb:
                pr = _find(parent, r)
                pq = _find(parent, qq)
                if pr != pq:
                    if pr < pq:
                        parent[pq] = pr
                    else:
                        parent[pr] = pq
                qq += 1
        prev_a = cur_a
        prev_b = cur_b
    row_first[y1 - y0] = nr
    return nr


@njit(nogil=True, cache=True)
def _hull(px, py, n, hx, hy):
    """Convex hull (monotone chain) of n integer points sorted by (y, x); returns (area,
    perimeter). Integer arithmetic: the orientation tests and the area are exact."""
    if n == 0:
        return 0.0, 0.0
    # lower chain then upper chain, in the (y, x) order the points come in
    k = 0
    for i in range(n):
        while k >= 2 and ((hx[k - 1] - hx[k - 2]) * (py[i] - hy[k - 2]) - (hy[k - 1] - hy[k - 2]) * (px[i] - hx[k - 2])) <= 0:
            k -= 1
        hx[k] = px[i]
        hy[k] = py[i]
        k += 1
    lo = k + 1
    for i in range(n - 2, -1, -1):
        while k >= lo and ((hx[k - 1] - hx[k - 2]) * (py[i] - hy[k - 2]) - (hy[k - 1] - hy[k - 2]) * (px[i] - hx[k - 2])) <= 0:
            k -= 1
        hx[k] = px[i]
        hy[k] = py[i]
        k += 1
    k -= 1  # the first point is repeated at the end
    if k < 1:
        return 0.0, 0.0
    area = 0
    perim = 0.0
    for i in range(k):
        j = i + 1 if i + 1 < k else 0
        area += hx[i] * hy[j] - hx[j] * hy[i]
        dx = hx[j] - hx[i]
        dy = hy[j] - hy[i]
        perim += math.sqrt(np.float64(dx * dx + dy * dy))
    return abs(np.float64(area)) * 0.5, perim


# Pixel loops index from an unsigned offset: with a signed index numba wraps negative indices
# around, and the select that takes blocks contiguous vector loads (6x slower on short rows).


# --- moments -----------------------------------------------------------------------------------
# The moment sums are float64 sums whose order is part of the result (a reordered sum differs in
# the last bits), so they are kept as six scalar accumulators in registers and each pixel's six
# terms come from these helpers; the brightness and contrast sums are integer sums (exact, and
# equal to the float64 sum of the same integers while that is below 2**53).


@njit(nogil=True, cache=True, inline="always")
def _span_terms(a, b, y):
    """Moment terms of the pixels x = a..b (a <= b) of row y, weight 1 each."""
    n = b - a + 1.0
    sx = (a + b) * n * 0.5
    # sum of x² over a..b
    sxx = (b * (b + 1.0) * (2.0 * b + 1.0) - (a - 1.0) * a * (2.0 * a - 1.0)) / 6.0
    return n, sx, n * y, sxx + n / 12.0, n * (y * y + 1.0 / 12.0), sx * y


@njit(nogil=True, cache=True, inline="always")
def _deep(lo, hi, yb0, yb1, y):
    """Deep-interior x-range of row y: inside the spans of the row and both neighbours, one pixel
    in from each end (empty: a > b)."""
    if y <= yb0 or y >= yb1:
        return 1, 0
    return max(lo[y - 1], max(lo[y], lo[y + 1])) + 1, min(hi[y - 1], min(hi[y], hi[y + 1])) - 1


@njit(nogil=True, cache=True, inline="always")
def _row_sums(img, bg, y, a, b):
    """Integer sums over pixels a..b of row y: v, v², d = v - bg, |d|."""
    # int32 sums of one row's 16-bit values cannot overflow; v² is summed in int64
    s_i = np.int32(0)
    s_ii = 0
    s_d = np.int32(0)
    s_ad = np.int32(0)
    ua = np.uint64(max(a, 0))
    for i in range(b - a + 1):
        x = ua + np.uint64(i)
        v = np.int32(img[y, x])
        d = v - np.int32(bg[y, x])
        s_i += v
        s_ii += np.int64(v) * np.int64(v)
        s_d += d
        s_ad += max(d, -d)
    return np.int64(s_i), s_ii, np.int64(s_d), np.int64(s_ad)


@njit(nogil=True, cache=True, inline="always")
def _row_dsum(img, bg, y, a, b):
    s = np.int32(0)
    ua = np.uint64(max(a, 0))
    for i in range(b - a + 1):
        x = ua + np.uint64(i)
        s += np.int32(img[y, x]) - np.int32(bg[y, x])
    return np.int64(s)


@njit(nogil=True, cache=True, inline="always")
def _row_lower(img, bg, y, a, b, ip, ci):
    """Sum and count of the polarity-signed contrasts ip*d <= ci over pixels a..b of row y."""
    # int32 lanes vectorise twice as wide; a row's sum of 16-bit contrasts fits
    s = np.int32(0)
    n = np.int32(0)
    ip32 = np.int32(ip)
    c32 = np.int32(max(min(ci, 1 << 30), -(1 << 30)))
    ua = np.uint64(max(a, 0))
    for i in range(b - a + 1):
        x = ua + np.uint64(i)
        dd = ip32 * (np.int32(img[y, x]) - np.int32(bg[y, x]))
        low = dd <= c32
        s += dd if low else np.int32(0)
        n += np.int32(1) if low else np.int32(0)
    return np.int64(s), np.int64(n)


@njit(nogil=True, cache=True, inline="always")
def _band_row(lo, hi, yb0, yb1, y, w):
    """Band geometry of row y: (has pixels, oa, ob, ia, ib). The band is oa..ob less the deep
    interior ia..ib (weight 1; empty: ib < ia), from the spans of the row and its neighbours."""
    la = 1 << 30
    hb = -1
    for yy in range(y - 1, y + 2):
        if yb0 <= yy <= yb1 and lo[yy] <= hi[yy]:
            la = min(la, lo[yy])
            hb = max(hb, hi[yy])
    ia = 0
    ib = -1
    if yb0 < y < yb1:
        ia = max(lo[y - 1], max(lo[y], lo[y + 1])) + 1
        ib = min(hi[y - 1], min(hi[y], hi[y + 1])) - 1
    return hb >= 0, max(la - 1, 0), min(hb + 1, w - 1), ia, ib


@njit(nogil=True, cache=True, inline="always")
def _band_collect(img, bg, y, xa, xb, ip, inv_c, tb, ne):
    """Append the covered pixels (coverage > 0) of xa..xb in row y to the entry list (``tb`` rows
    0-2: coverage, x, y); returns the new entry count."""
    fy = np.float64(y)
    ua = np.uint64(max(xa, 0))
    for i in range(xb - xa + 1):
        x = ua + np.uint64(i)
        k = ip * (np.int64(img[y, x]) - np.int64(bg[y, x]))
        wg = min(np.float64(k) * inv_c, 1.0)
        tb[0, ne] = wg
        tb[1, ne] = np.float64(xa + i)
        tb[2, ne] = fy
        ne += 1 if wg > 0.0 else 0
    return ne


@njit(nogil=True, cache=True, error_model="numpy")
def _band_moments(img, bg, yb0, yb1, lo, hi, h, w, ip, inv_c, shift, cx, cy, q11, q12, q22, tb, rc):
    """Moment sums of the deep interior (weight 1) and the coverage-weighted band around it, in
    the order of rows, and within a row: interior, band left of it, band right of it (the order
    of a float sum is part of its result). ``ip`` is the polarity (+1 bright, -1 dark).

    A partly covered pixel's mass is moved inwards along the normal of the spans' ellipse
    (``shift``; (p-c)^T Q (p-c) = const with Q = [[q11, q12], [q12, q22]]). Per pixel that is a
    square root, divisions and a data-dependent choice — in a loop over short band rows mostly
    branch mispredictions and scalar code. So rows are taken in groups: their covered pixels are
    listed first (``tb`` rows 0-2: coverage, x, y), every listed pixel's terms computed by one
    branch-free loop that vectorises (rows 3-7), and the sums are then taken in order. ``tb`` is
    (8, >= W) scratch, ``rc`` (>= H + 3) the row ends of a group's list."""
    m0 = 0.0
    m1 = 0.0
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    m5 = 0.0
    cap = tb.shape[1]
    vt = 1.0 / 12.0
    y_end = min(yb1 + 2, h)
    g0 = max(yb0 - 1, 0)
    while g0 < y_end:
        # list the covered band pixels of rows g0.. while another full row would still fit
        ne = 0
        g1 = g0
        while g1 < y_end and ne + w <= cap:
            has, oa, ob, ia, ib = _band_row(lo, hi, yb0, yb1, g1, w)
            if has:
                if ib < ia:
                    ia = ob + 1
                    ib = ob
                ne = _band_collect(img, bg, g1, oa, ia - 1, ip, inv_c, tb, ne)
                ne = _band_collect(img, bg, g1, ib + 1, ob, ip, inv_c, tb, ne)
            rc[g1 - g0] = ne
            g1 += 1
        # each pixel's terms, moved or not, by one branch-free loop that vectorises
        for e in range(ne):
            wg = tb[0, e]
            fx = tb[1, e]
            fy = tb[2, e]
            # outward normal of the ellipse at this pixel
            nx = q11 * (fx - cx) + q12 * (fy - cy)
            ny = q12 * (fx - cx) + q22 * (fy - cy)
            nn = math.sqrt(nx * nx + ny * ny)
            inv = 1.0 / (nn if nn != 0.0 else 1.0)
            nx *= inv
            ny *= inv
            ext = abs(nx) + abs(ny)  # the pixel's extent along the normal
            s = 0.5 * (1.0 - wg) * ext
            px = fx - s * nx
            py = fy - s * ny
            # covered part: a strip wg*ext thick along the normal, a pixel wide along the edge
            e2 = wg * ext
            vn = e2 * e2 / 12.0
            # the shift's effect on the moments goes as wg*(1-wg): not worth its cost for the faint
            # noise pixels around the blob, which are most of the band
            moved = shift & (0.1 <= wg) & (wg < 1.0) & (nn != 0.0)
            tb[3, e] = wg * px if moved else wg * fx
            tb[4, e] = wg * py if moved else wg * fy
            tb[5, e] = wg * (px * px + vn * nx * nx + vt * ny * ny) if moved else wg * (fx * fx + 1.0 / 12.0)
            tb[6, e] = wg * (py * py + vn * ny * ny + vt * nx * nx) if moved else wg * (fy * fy + 1.0 / 12.0)
            tb[7, e] = wg * (px * py + (vn - vt) * nx * ny) if moved else wg * fx * fy
        # the sums, in order
        e0 = 0
        for y in range(g0, g1):
            has, oa, ob, ia, ib = _band_row(lo, hi, yb0, yb1, y, w)
            if has and ib >= ia:
                t0, t1, t2, t3, t4, t5 = _span_terms(np.float64(ia), np.float64(ib), np.float64(y))
                m0 += t0
                m1 += t1
                m2 += t2
                m3 += t3
                m4 += t4
                m5 += t5
            e1 = rc[y - g0]
            ue = np.uint64(e0)
            for i in range(e1 - e0):
                e = ue + np.uint64(i)
                m0 += tb[0, e]
                m1 += tb[3, e]
                m2 += tb[4, e]
                m3 += tb[5, e]
                m4 += tb[6, e]
                m5 += tb[7, e]
            e0 = e1
        g0 = g1
    return m0, m1, m2, m3, m4, m5


@njit(nogil=True, cache=True)
def _measure_blob(img, bg, mode, yb0, yb1, lo, hi, h, w, sy0, sy1, hx_in, hy_in, hx, hy, tb, rc, row):
    """Measure the blob whose filled spans are lo[y]..hi[y] for rows yb0..yb1 into ``row``.

    lo/hi are indexed by image row; rows without pixels have lo > hi. ``sy0``/``sy1`` are the
    scanned rows (a blob touching them was cut off). Returns the filled area."""
    # one pass over the filled spans: brightness, contrast, polarity, the deep interior's contrast
    # (inside the spans of the row and of both neighbours, one pixel in from each end), and the
    # spans' own moments — a first ellipse that gives the boundary normals below
    m0 = 0.0
    m1 = 0.0
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    m5 = 0.0
    s_i = 0
    s_ii = 0
    s_d = 0
    s_ad = 0
    s_in = 0
    n_in = 0
    for y in range(yb0, yb1 + 1):
        a = lo[y]
        b = hi[y]
        if a > b:
            continue
        t0, t1, t2, t3, t4, t5 = _span_terms(np.float64(a), np.float64(b), np.float64(y))
        m0 += t0
        m1 += t1
        m2 += t2
        m3 += t3
        m4 += t4
        m5 += t5
        r_i, r_ii, r_d, r_ad = _row_sums(img, bg, y, a, b)
        s_i += r_i
        s_ii += r_ii
        s_d += r_d
        s_ad += r_ad
        ia, ib = _deep(lo, hi, yb0, yb1, y)
        ia = max(ia, a)
        ib = min(ib, b)
        if ib >= ia:
            # the interior's sum from the row's: its ends outside the interior are a pixel or two
            s_in += r_d - _row_dsum(img, bg, y, a, ia - 1) - _row_dsum(img, bg, y, ib + 1, b)
            n_in += ib - ia + 1
    n = m0
    if n == 0.0:
        return 0.0
    pol = 1.0 if s_d >= 0 else -1.0
    if mode != 0:
        pol = np.float64(mode)
    ip = 1 if pol > 0.0 else -1
    c = pol * np.float64(s_in) / np.float64(n_in) if n_in >= 4 else pol * np.float64(s_d) / n
    if n_in >= 4:
        # texture, nucleus, granules and a darker rim only ever add contrast to the body's: the
        # mean of the interior's lower half is the body's own contrast, what edge pixels show.
        # The contrasts are integers, so "<= c" is "<= floor(c)"
        ci = np.int64(math.floor(c))
        s_lo = 0
        n_lo = 0
        for y in range(yb0 + 1, yb1):
            ia, ib = _deep(lo, hi, yb0, yb1, y)
            r_lo, r_n = _row_lower(img, bg, y, ia, ib, ip, ci)
            s_lo += r_lo
            n_lo += r_n
        if n_lo >= 2:
            c = np.float64(s_lo) / np.float64(n_lo)
    if c < 1.0:
        c = 1.0
    inv_c = 1.0 / c
    # moments: deep interior weight 1, the band around the boundary coverage-weighted, each partial
    # pixel's mass moved to where its covered part lies (inwards along the normal of the spans'
    # ellipse), which removes the pixel-centre bias of the edge
    cx = m1 / m0
    cy = m2 / m0
    mxx = m3 / m0 - cx * cx
    myy = m4 / m0 - cy * cy
    mxy = m5 / m0 - cx * cy
    det = mxx * myy - mxy * mxy
    if det > 1e-12:
        m0, m1, m2, m3, m4, m5 = _band_moments(img, bg, yb0, yb1, lo, hi, h, w, ip, inv_c, True, cx, cy, myy / det,
                                               -mxy / det, mxx / det, tb, rc)
    else:
        m0, m1, m2, m3, m4, m5 = _band_moments(img, bg, yb0, yb1, lo, hi, h, w, ip, inv_c, False, 0.0, 0.0, 0.0, 0.0,
                                               0.0, tb, rc)
    cx = m1 / m0
    cy = m2 / m0
    mxx = m3 / m0 - cx * cx
    myy = m4 / m0 - cy * cy
    mxy = m5 / m0 - cx * cy
    tr = 0.5 * (mxx + myy)
    dd = math.sqrt(max(0.25 * (mxx - myy) ** 2 + mxy * mxy, 0.0))
    l1 = tr + dd
    l2 = max(tr - dd, 0.0)
    angle = 0.5 * math.atan2(2.0 * mxy, mxx - myy)
    if angle <= -0.5 * math.pi:
        angle += math.pi
    # hull of the span end points (pixel centres), in (y, x) order
    k = 0
    xmin = w
    xmax = -1
    ymin = -1
    ymax = -1
    for y in range(yb0, yb1 + 1):
        if lo[y] > hi[y]:
            continue
        if ymin < 0:
            ymin = y
        ymax = y
        xmin = min(xmin, lo[y])
        xmax = max(xmax, hi[y])
        hx_in[k] = lo[y]
        hy_in[k] = y
        k += 1
        if hi[y] != lo[y]:
            hx_in[k] = hi[y]
            hy_in[k] = y
            k += 1
    ha, hp = _hull(hx_in, hy_in, k, hx, hy)
    mean = np.float64(s_i) / n
    row[B_AREA] = n
    row[B_X] = cx
    row[B_Y] = cy
    row[B_XMIN] = xmin
    row[B_XMAX] = xmax
    row[B_YMIN] = ymin
    row[B_YMAX] = ymax
    row[B_MAJOR] = 2.0 * math.sqrt(l1)
    row[B_MINOR] = 2.0 * math.sqrt(l2)
    row[B_ANGLE] = angle
    row[B_HULL_AREA] = ha
    row[B_HULL_PERIM] = hp
    row[B_BRIGHT_AVG] = mean
    row[B_BRIGHT_SD] = math.sqrt(max(np.float64(s_ii) / n - mean * mean, 0.0))
    border = xmin == 0 or xmax == w - 1 or ymin == 0 or ymax == h - 1 or ymin == sy0 or ymax == sy1 - 1
    row[B_BORDER] = 1.0 if border else 0.0
    row[B_CONTRAST] = np.float64(s_ad) / n
    row[B_LIGHT] = 1.0  # (unmeasured: see _segment_level)
    row[B_BG_OFF] = 0.0
    return n


# --- touching cells -----------------------------------------------------------------------------
# Cells pass in single file, so two that touch make one blob elongated along x with a waist where
# they meet. A convex shape's height (its vertical extent per column) is a concave function of x:
# it never dips below its value at both ends of any stretch. A blob whose height profile dips to
# ``split_ratio`` of the lower of the peaks on either side is cut at the deepest such column
# (the column itself goes to neither part) and each part is a blob of its own, B_SPLIT saying on
# which side it was cut.
# The profile is taken from the thresholded runs, not the filled spans (filling bridges the
# waist), and averaged over 3 columns: a ragged edge pixel moves a thin cell's height by one
# pixel in eight.
_SPLIT_MARGIN = 2  # columns kept off each end of a part when looking for a waist
_SPLIT_MIN_H = 3.0  # px: the lower peak must be at least this high (noise makes no waist)
_MAX_PARTS = 8  # parts one blob may be cut into


@njit(nogil=True, cache=True)
def _waist(hs, csum, pa, pb, ratio, min_area_px, pmax, smax):
    """The column of pa..pb where the smoothed height ``hs`` dips deepest below the lower of the
    peaks on either side, if that is <= ``ratio`` and both sides hold ``min_area_px`` (``csum``:
    running sum of the column heights, csum[x] = heights of columns < x); else -1."""
    if pb - pa < 2 * _SPLIT_MARGIN + 2:
        return -1
    m = 0.0
    for x in range(pa, pb + 1):
        m = max(m, hs[x])
        pmax[x] = m
    m = 0.0
    for x in range(pb, pa - 1, -1):
        m = max(m, hs[x])
        smax[x] = m
    best = ratio
    xs = -1
    for x in range(pa + _SPLIT_MARGIN + 1, pb - _SPLIT_MARGIN):
        ref = min(pmax[x - 1], smax[x + 1])
        if ref < _SPLIT_MIN_H:
            continue
        r = hs[x] / ref
        if r <= best and (xs < 0 or r < best):
            if csum[x] - csum[pa] >= min_area_px and csum[pb + 1] - csum[x + 1] >= min_area_px:
                best = r
                xs = x
    return xs


@njit(nogil=True, cache=True)
def _parts(r, xa, xb, ya, yb, y0, parent, run_y, run_a, run_b, row_first, ratio, min_area_px, ctop, cbot, hs, csum,
           pmax, smax, parts):
    """Cut component ``r`` (columns xa..xb) at its waists: column ranges into ``parts`` (2, n),
    in x order; returns n (1: not cut)."""
    for x in range(xa, xb + 1):
        ctop[x] = 1 << 30
        cbot[x] = -1
    # runs come in row order: a column's first run is its top, its last its bottom
    for q in range(row_first[ya - y0], row_first[yb + 1 - y0]):
        if parent[q] == r:
            y = np.int64(run_y[q])
            ua = np.uint64(run_a[q])
            for i in range(run_b[q] - run_a[q] + 1):
                x = ua + np.uint64(i)
                ctop[x] = min(ctop[x], y)
                cbot[x] = y
    csum[xa] = 0.0
    for x in range(xa, xb + 1):
        hx = cbot[x] - ctop[x] + 1 if cbot[x] >= 0 else 0
        csum[x + 1] = csum[x] + hx
    for x in range(xa, xb + 1):
        # 3-column mean of the heights (0 outside the blob)
        s3 = csum[min(x + 2, xb + 1)] - csum[max(x - 1, xa)]
        hs[x] = s3 / 3.0
    parts[0, 0] = xa
    parts[1, 0] = xb
    n = 1
    i = 0
    while i < n:
        xs = _waist(hs, csum, parts[0, i], parts[1, i], ratio, min_area_px, pmax, smax) if n < _MAX_PARTS else -1
        if xs < 0:
            i += 1
            continue
        for k in range(n, i + 1, -1):
            parts[0, k] = parts[0, k - 1]
            parts[1, k] = parts[1, k - 1]
        parts[0, i + 1] = xs + 1
        parts[1, i + 1] = parts[1, i]
        parts[1, i] = xs - 1
        n += 1
    return n


@njit(nogil=True, cache=True)
def _segment_frame(img, bg, seg, seg_bg, threshold, min_area_px, y0, y1, max_blobs, split_ratio, out, labels, mrow,
                   run_y, run_a, run_b, parent, row_first, stats, lo, hi, hx_in, hy_in, hx, hy, tb, rc, ctop, cbot, hs,
                   csum, pmax, smax, parts):
    """Segment one image into ``out`` (max_blobs x N_BLOB_FIELDS); returns the blob count.

    Objects are where |seg - seg_bg| > threshold (``seg``/``seg_bg`` are ``img``/``bg`` except
    for a precomputed mask); they are measured on ``img`` against ``bg``. With a (H, W)
    ``labels`` array, the filled mask of blob i is written as i + 1 there (the caller zeroes
    it); pass a (1, 1) array to skip that. ``split_ratio`` > 0 cuts touching cells apart at
    their waist (see above); 0 never cuts."""
    h, w = img.shape
    # a negative threshold segments dark pixels only (RT-DC's "bin threshold -6" convention)
    # (clamped: a threshold beyond any contrast segments nothing)
    ti = np.int64(math.floor(min(abs(threshold), 2147483647.0)))
    mode = np.int32(-1) if threshold < 0 else np.int32(0)
    nr = _runs(seg, seg_bg, ti, mode, y0, y1, mrow, run_y, run_a, run_b, parent, row_first)
    # per root: pixel count and bounding box
    for r in range(nr):
        p = _find(parent, r)
        parent[r] = p  # fully compressed from here on: parent[r] is the root
        if p == r:
            stats[_R_XMIN, r] = run_a[r]
            stats[_R_XMAX, r] = run_b[r]
            stats[_R_YMAX, r] = run_y[r]
    for r in range(nr):
        p = parent[r]
        stats[_R_XMIN, p] = min(stats[_R_XMIN, p], run_a[r])
        stats[_R_XMAX, p] = max(stats[_R_XMAX, p], run_b[r])
        stats[_R_YMAX, p] = max(stats[_R_YMAX, p], run_y[r])
    write_labels = labels.shape[0] == h and labels.shape[1] == w
    nb = 0
    for r in range(nr):
        if parent[r] != r:
            continue
        xa = stats[_R_XMIN, r]
        xb = stats[_R_XMAX, r]
        ya = run_y[r]
        yb = stats[_R_YMAX, r]
        if (xb - xa + 1) * (yb - ya + 1) < min_area_px:
            continue  # even its bounding box is too small
        if nb >= max_blobs:
            break
        n_parts = 1
        parts[0, 0] = xa
        parts[1, 0] = xb
        if split_ratio > 0.0 and xb - xa >= 2 * _SPLIT_MARGIN + 2:
            n_parts = _parts(r, xa, xb, ya, yb, y0, parent, run_y, run_a, run_b, row_first, split_ratio, min_area_px,
                             ctop, cbot, hs, csum, pmax, smax, parts)
        for k in range(n_parts):
            if nb >= max_blobs:
                break
            pa = parts[0, k]
            pb = parts[1, k]
            for y in range(ya, yb + 1):
                lo[y] = w
                hi[y] = -1
            for q in range(row_first[ya - y0], row_first[yb + 1 - y0]):
                if parent[q] == r:
                    a = max(run_a[q], pa)
                    b = min(run_b[q], pb)
                    if a <= b:
                        y = run_y[q]
                        lo[y] = min(lo[y], a)
                        hi[y] = max(hi[y], b)
            area = 0
            pya = yb + 1
            pyb = ya - 1
            for y in range(ya, yb + 1):
                if hi[y] >= lo[y]:
                    area += hi[y] - lo[y] + 1
                    pya = min(pya, y)
                    pyb = y
            if area < min_area_px:
                continue
            _measure_blob(img, bg, mode, pya, pyb, lo, hi, h, w, y0, y1, hx_in, hy_in, hx, hy, tb, rc, out[nb])
            out[nb, B_SPLIT] = (1.0 if k > 0 else 0.0) + (2.0 if k < n_parts - 1 else 0.0)
            if write_labels:
                for y in range(pya, pyb + 1):
                    for x in range(lo[y], hi[y] + 1):
                        labels[y, x] = nb + 1
            nb += 1
    return nb


@njit(nogil=True, cache=True)
def _scratch(h, w, rows):
    """The work arrays of :func:`_segment_frame` (``mrow`` .. ``parts``, in its order) for an (h, w)
    image of which ``rows`` rows are scanned."""
    cap = rows * ((w + 1) // 2) + 1  # at most one run per two pixels
    return (np.zeros((w + 63) // 64 * 64, np.uint8), np.empty(cap, np.int32), np.empty(cap, np.int32),
            np.empty(cap, np.int32), np.empty(cap, np.int32), np.empty(rows + 1, np.int32),
            np.empty((_N_R, cap), np.int32), np.empty(h + 1, np.int32), np.empty(h + 1, np.int32),
            np.empty(2 * h + 2, np.int64), np.empty(2 * h + 2, np.int64), np.empty(4 * h + 4, np.int64),
            np.empty(4 * h + 4, np.int64), np.empty((8, 4 * w + 4), np.float64), np.empty(h + 3, np.int64),
            np.empty(w, np.int64), np.empty(w, np.int64), np.empty(w, np.float64), np.empty(w + 1, np.float64),
            np.empty(w, np.float64), np.empty(w, np.float64), np.empty((2, _MAX_PARTS), np.int64))


#: frames the running mean of a frame's |gain - 1| reaches back (the run's "flicker" status)
LIGHT_MEMORY = 256.0


@njit(nogil=True, cache=True)
def _segment_level(img, bg, bg_top, bgs, light_clip, correct, level, light_out, threshold, min_area_px, y0, y1,
                   max_blobs, split_ratio, out, labels, sc):
    """:func:`_segment_frame` (``sc``: its work arrays) against the background; with ``correct``,
    against the background scaled by the frame's light (lamp flicker; ``bgs`` receives the scaled
    rows y0 - 1..y1 + 1; ``bg_top``: the background's brightest level there; ``level``: grey levels
    per 8-bit level; where :func:`tracking.background.corrects`). Every blob's ``B_LIGHT``
    and ``B_BG_OFF`` are the frame's gain and offset (:func:`tracking.background.frame_light`,
    measured with ``light_clip`` > 0, else 1.0 and 0.0), applied or not: an event file says how
    its frame's light stood either way. ``light_out`` (float64[4]) receives the gain, the offset,
    and running means over the last ~LIGHT_MEMORY frames of |gain - mean gain| and of the gain, for
    the run's status."""
    use = bg
    gain = 1.0
    off = 0.0
    if light_clip > 0.0:
        gain, off = frame_light(img, bg, y0, y1, light_clip)
        # (a steady lamp's gain is left out: such runs stay as they were, and ~2 µs a frame)
        if correct and corrects(gain, bg_top, level):
            # a blob touching the first or last scanned row is measured over a band one row
            # beyond it (_band_moments): those rows are scaled too, else they were whatever
            # ``bgs`` (np.empty_like) held
            scale_rows(bg, gain, y0 - 1, y1 + 1, bgs)
            use = bgs
    nb = _segment_frame(img, use, img, use, threshold, min_area_px, y0, y1, max_blobs, split_ratio, out, labels, *sc)
    if light_clip > 0.0:
        for i in range(nb):
            out[i, B_LIGHT] = gain
            out[i, B_BG_OFF] = off
        light_out[0] = gain
        light_out[1] = off
        # flicker about the light's own running mean, not about 1: a lamp turned up for good is
        # corrected (or relearned), and read as flicker it was said as such for the rest of the run
        light_out[3] += (gain - light_out[3]) / LIGHT_MEMORY
        light_out[2] += (abs(gain - light_out[3]) - light_out[2]) / LIGHT_MEMORY
    return nb


@njit(nogil=True, cache=True)
def _segment_batch(images, slots, bg, threshold, min_area_px, y0, y1, max_blobs, out, counts, split_ratio=0.0,
                   light_clip=0.0, correct=False, level=1.0, light_out=None):
    n = slots.shape[0]
    h, w = bg.shape
    y0 = max(0, min(y0, h))
    y1 = max(y0, min(y1, h))
    mb = min(max_blobs, out.shape[1])
    sc = _scratch(h, w, max(y1 - y0, 1))
    labels = np.zeros((1, 1), np.int32)
    bgs = np.empty_like(bg)
    top = rows_max(bg, y0, y1)
    if light_out is None:
        light = np.zeros(4)
    else:
        light = light_out
    for f in range(n):
        counts[f] = _segment_level(images[slots[f]], bg, top, bgs, light_clip, correct, level, light, threshold, min_area_px, y0, y1, mb,
                                   split_ratio, out[f], labels, sc)


segment_batch = _segment_batch
"""``segment_batch(images, slots, bg, threshold, min_area_px, y0, y1, max_blobs, out, counts,
split_ratio=0.0, light_clip=0.0, correct=False, level=1.0, light_out=None)``: segment ``images[slots[i]]`` into
``out[i, :counts[i]]`` (blob table, see :mod:`tracking.blobs`; ``split_ratio``: cut touching
cells apart, see :func:`_segment_frame`; ``light_clip`` > 0: measure each frame's light,
``correct``: segment against it, see :func:`_segment_level`). Work arrays are allocated once per call (per batch), never per frame."""


@njit(nogil=True, cache=True)
def segment_image(img, bg, threshold, min_area_px, y0, y1, max_blobs, out, labels, split_ratio=0.0):
    """One image; returns the blob count. ``labels`` (H, W int32, zeroed by the caller) receives
    blob i's filled mask as i + 1, or pass a (1, 1) array to skip it. ``split_ratio``: cut
    touching cells apart (see :func:`_segment_frame`)."""
    h, w = img.shape
    y0 = max(0, min(y0, h))
    y1 = max(y0, min(y1, h))
    return _segment_frame(img, bg, img, bg, threshold, min_area_px, y0, y1, min(max_blobs, out.shape[0]), split_ratio,
                          out, labels, *_scratch(h, w, max(y1 - y0, 1)))


@njit(nogil=True, cache=True)
def segment_mask(img, bg, mask, dark, min_area_px, max_blobs, out, labels):
    """Like :func:`segment_image` for a precomputed binary ``mask`` (uint8, nonzero = object; e.g.
    after a morphological closing): objects are the mask's components, measured on ``img``
    against ``bg`` (``dark``: the objects are darker than the background)."""
    h, w = img.shape
    zero = np.zeros_like(mask)
    mb = min(max_blobs, out.shape[0])
    # polarity rides on the threshold's sign: dark-only tests seg_bg - seg > 0.5, so the mask goes
    # in as the "background" there; otherwise |seg - seg_bg| > 0.5
    if dark:
        return _segment_frame(img, bg, zero, mask, -0.5, min_area_px, 0, h, mb, 0.0, out, labels, *_scratch(h, w, h))
    return _segment_frame(img, bg, mask, zero, 0.5, min_area_px, 0, h, mb, 0.0, out, labels, *_scratch(h, w, h))


@njit(nogil=True, cache=True)
def nearest_blob_mask(img, bg, threshold, min_area_px, max_blobs, x, y, ya, yb, xa, xb, mask, split_ratio=0.0):
    """Segment the window rows ya..yb, columns xa..xb of ``img`` and set ``mask`` (bool, full
    image) True on the filled mask of the blob whose centroid is nearest (x, y) (image
    coordinates). Returns False (mask untouched) when the window holds no blob."""
    sub = np.ascontiguousarray(img[ya:yb, xa:xb])
    sub_bg = np.ascontiguousarray(bg[ya:yb, xa:xb])
    out = np.zeros((max_blobs, N_BLOB_FIELDS), np.float64)
    labels = np.zeros((yb - ya, xb - xa), np.int32)
    nb = segment_image(sub, sub_bg, threshold, min_area_px, 0, yb - ya, max_blobs, out, labels, split_ratio)
    if nb == 0:
        return False
    best = 0
    dbest = np.inf
    for i in range(nb):
        d = (out[i, B_X] + xa - x) ** 2 + (out[i, B_Y] + ya - y) ** 2
        if d < dbest:
            dbest = d
            best = i
    for r in range(yb - ya):
        for c in range(xb - xa):
            if labels[r, c] == best + 1:
                mask[ya + r, xa + c] = True
    return True


def blob_mask(img: np.ndarray, bg: np.ndarray, threshold: float, min_area_px: float, x: float, y: float,
              *, window: tuple[int, int, int, int] | None = None, max_blobs: int = 64,
              kernels: str = "numba") -> np.ndarray | None:
    """Boolean filled mask of the blob whose centroid is nearest (x, y), or None without blobs.
    ``window`` (y0, y1, x0, x1) limits the segmentation to that part of the image."""
    h, w = img.shape
    ya, yb, xa, xb = window if window is not None else (0, h, 0, w)
    ya, yb, xa, xb = max(0, int(ya)), min(h, int(yb)), max(0, int(xa)), min(w, int(xb))
    fn = pure_python(nearest_blob_mask) if kernels == "python" else nearest_blob_mask
    mask = np.zeros((h, w), bool)
    if yb <= ya or xb <= xa:
        return None
    found = fn(img, bg, float(threshold), float(min_area_px), int(max_blobs), float(x), float(y), ya, yb, xa, xb, mask)
    return mask if found else None
