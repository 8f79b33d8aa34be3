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
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tracking._pure import pure_python
from tracking.blobs import (
    B_ANGLE,
    B_AREA,
    B_BORDER,
    B_BRIGHT_AVG,
    B_BRIGHT_SD,
    B_CONTRAST,
    B_HULL_AREA,
    B_HULL_PERIM,
    B_MAJOR,
    B_MINOR,
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


@njit(nogil=True, cache=True)
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(nogil=True, cache=True)
def _runs(img, bg, ti, mode, y0, y1, mrow, run_y, run_a, run_b, parent, row_first):
    """Threshold rows y0..y1 into runs and union 8-connected runs; returns the number of runs
    (stops adding runs when the scratch is full). ``mode`` 0: |d| > ti; -1: -d > ti (dark only).

    Most of a frame is empty channel: a row is first reduced to its maximum contrast (one long
    branch-free loop that vectorises) and skipped when that is below the threshold. Rows with
    something in them are thresholded into ``mrow`` (uint8, length a multiple of 8, zero-padded),
    again branch-free, and the run scan skips its empty 8-pixel words."""
    w = img.shape[1]
    cap = run_y.shape[0]
    words = mrow.view(np.uint64)
    nw = (w + 7) // 8
    nr = 0
    prev_a = 0
    prev_b = 0
    for y in range(y0, y1):
        row_first[y - y0] = nr
        cur_a = nr
        ir = img[y]
        br = bg[y]
        m = np.int32(0)
        if mode == 0:
            for x in range(w):
                m = max(m, abs(np.int32(ir[x]) - np.int32(br[x])))
        else:
            for x in range(w):
                m = max(m, np.int32(br[x]) - np.int32(ir[x]))
        if m <= ti:
            prev_a = nr  # an empty row: nothing below can join what is above
            prev_b = nr
            continue
        if mode == 0:
            for x in range(w):
                d = np.int32(ir[x]) - np.int32(br[x])
                mrow[x] = (d > ti) | (d < -ti)
        else:
            for x in range(w):
                mrow[x] = (np.int32(br[x]) - np.int32(ir[x])) > ti
        in_run = False
        a = 0
        for wi in range(nw):
            if words[wi] == 0:
                if in_run:
                    if nr < cap:
                        run_y[nr] = y
                        run_a[nr] = a
                        run_b[nr] = wi * 8 - 1
                        parent[nr] = nr
                        nr += 1
                    in_run = False
                continue
            for x in range(wi * 8, wi * 8 + 8):
                if mrow[x]:
                    if not in_run:
                        a = x
                        in_run = True
                elif in_run:
                    if nr < cap:
                        run_y[nr] = y
                        run_a[nr] = a
                        run_b[nr] = x - 1
                        parent[nr] = nr
                        nr += 1
                    in_run = False
        if in_run and nr < cap:
            run_y[nr] = y
            run_a[nr] = a
            run_b[nr] = w - 1
            parent[nr] = nr
            nr += 1
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
    """Convex hull (monotone chain) of n points sorted by (y, x); returns (area, perimeter)."""
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
    area = 0.0
    perim = 0.0
    for i in range(k):
        j = i + 1 if i + 1 < k else 0
        area += hx[i] * hy[j] - hx[j] * hy[i]
        perim += math.sqrt((hx[j] - hx[i]) ** 2 + (hy[j] - hy[i]) ** 2)
    return abs(area) * 0.5, perim


@njit(nogil=True, cache=True)
def _span_moments(a, b, y, acc):
    """Add the pixels x = a..b of row y, weight 1 each, to the moment sums."""
    if b < a:
        return
    n = b - a + 1.0
    sx = (a + b) * n * 0.5
    # sum of x² over a..b
    sxx = (b * (b + 1.0) * (2.0 * b + 1.0) - (a - 1.0) * a * (2.0 * a - 1.0)) / 6.0
    acc[0] += n
    acc[1] += sx
    acc[2] += n * y
    acc[3] += sxx + n / 12.0
    acc[4] += n * (y * y + 1.0 / 12.0)
    acc[5] += sx * y


@njit(nogil=True, cache=True)
def _add_weighted(x, y, wgt, acc):
    acc[0] += wgt
    acc[1] += wgt * x
    acc[2] += wgt * y
    acc[3] += wgt * (x * x + 1.0 / 12.0)
    acc[4] += wgt * (y * y + 1.0 / 12.0)
    acc[5] += wgt * x * y


@njit(nogil=True, cache=True)
def _deep(lo, hi, yb0, yb1, y):
    """Deep-interior x-range of row y: inside the spans of the row and both neighbours, one pixel
    in from each end (empty: a > b)."""
    if y <= yb0 or y >= yb1:
        return 1, 0
    return max(lo[y - 1], max(lo[y], lo[y + 1])) + 1, min(hi[y - 1], min(hi[y], hi[y + 1])) - 1


@njit(nogil=True, cache=True)
def _band_pixel(x, y, wg, shift, cx, cy, q11, q12, q22, acc):
    # the shift's effect on the moments goes as wg*(1-wg): not worth its cost for the faint noise
    # pixels around the blob, which are most of the band
    if not shift or wg >= 1.0 or wg < 0.1:
        _add_weighted(x, y, wg, acc)
        return
    # outward normal of the ellipse (p-c)^T Q (p-c) = const at this pixel
    nx = q11 * (x - cx) + q12 * (y - cy)
    ny = q12 * (x - cx) + q22 * (y - cy)
    nn = math.sqrt(nx * nx + ny * ny)
    if nn == 0.0:
        _add_weighted(x, y, wg, acc)
        return
    inv = 1.0 / nn
    nx *= inv
    ny *= inv
    ext = abs(nx) + abs(ny)  # the pixel's extent along the normal
    s = 0.5 * (1.0 - wg) * ext
    px = x - s * nx
    py = y - s * ny
    # covered part: a strip wg*ext thick along the normal, a pixel wide along the edge
    vn = (wg * ext) ** 2 / 12.0
    vt = 1.0 / 12.0
    acc[0] += wg
    acc[1] += wg * px
    acc[2] += wg * py
    acc[3] += wg * (px * px + vn * nx * nx + vt * ny * ny)
    acc[4] += wg * (py * py + vn * ny * ny + vt * nx * nx)
    acc[5] += wg * (px * py + (vn - vt) * nx * ny)


@njit(nogil=True, cache=True)
def _band_moments(img, bg, yb0, yb1, lo, hi, h, w, pol, inv_c, shift, cx, cy, q11, q12, q22, acc):
    for q in range(6):
        acc[q] = 0.0
    for y in range(yb0 - 1, yb1 + 2):
        if y < 0 or y >= h:
            continue
        # spans of this row and its neighbours (rows outside the blob have lo > hi)
        la = 1 << 30
        hb = -1
        ia = 0
        ib = -1
        for yy in range(y - 1, y + 2):
            if yb0 <= yy <= yb1 and lo[yy] <= hi[yy]:
                la = min(la, lo[yy])
                hb = max(hb, hi[yy])
        if hb < 0:
            continue
        if yb0 < y < yb1:
            ia = max(lo[y - 1], max(lo[y], lo[y + 1])) + 1
            ib = min(hi[y - 1], min(hi[y], hi[y + 1])) - 1
        oa = max(la - 1, 0)
        ob = min(hb + 1, w - 1)
        fy = np.float64(y)
        if ib >= ia:
            _span_moments(np.float64(ia), np.float64(ib), fy, acc)
        else:
            ia = ob + 1
            ib = ob
        for x in range(oa, ia):
            wg = pol * (np.float64(img[y, x]) - np.float64(bg[y, x])) * inv_c
            if wg > 0.0:
                _band_pixel(np.float64(x), fy, min(wg, 1.0), shift, cx, cy, q11, q12, q22, acc)
        for x in range(ib + 1, ob + 1):
            wg = pol * (np.float64(img[y, x]) - np.float64(bg[y, x])) * inv_c
            if wg > 0.0:
                _band_pixel(np.float64(x), fy, min(wg, 1.0), shift, cx, cy, q11, q12, q22, acc)


@njit(nogil=True, cache=True)
def _measure_blob(img, bg, mode, yb0, yb1, lo, hi, h, w, sy0, sy1, hx_in, hy_in, hx, hy, acc, row):
    """Measure the blob whose filled spans are lo[y]..hi[y] for rows yb0..yb1 into ``row``.

    lo/hi are indexed by image row; rows without pixels have lo > hi. ``sy0``/``sy1`` are the
    scanned rows (a blob touching them was cut off). Returns the filled area."""
    # one pass over the filled spans: brightness, contrast, polarity, the deep interior's contrast
    # (inside the spans of the row and of both neighbours, one pixel in from each end), and the
    # spans' own moments — a first ellipse that gives the boundary normals below
    n = 0.0
    s_i = 0.0
    s_ii = 0.0
    s_d = 0.0
    s_ad = 0.0
    n_in = 0.0
    s_in = 0.0
    for q in range(6):
        acc[q] = 0.0
    for y in range(yb0, yb1 + 1):
        if lo[y] > hi[y]:
            continue
        _span_moments(np.float64(lo[y]), np.float64(hi[y]), np.float64(y), acc)
        ia, ib = _deep(lo, hi, yb0, yb1, y)
        for x in range(lo[y], hi[y] + 1):
            v = np.float64(img[y, x])
            d = v - np.float64(bg[y, x])
            s_i += v
            s_ii += v * v
            s_d += d
            s_ad += abs(d)
            if ia <= x <= ib:
                s_in += d
                n_in += 1.0
    n = acc[0]
    if n == 0.0:
        return 0.0
    pol = 1.0 if s_d >= 0.0 else -1.0
    if mode != 0:
        pol = np.float64(mode)
    c = pol * s_in / n_in if n_in >= 4.0 else pol * s_d / n
    if n_in >= 4.0:
        # texture, nucleus, granules and a darker rim only ever add contrast to the body's: the
        # mean of the interior's lower half is the body's own contrast, what edge pixels show
        s_lo = 0.0
        n_lo = 0.0
        for y in range(yb0 + 1, yb1):
            ia, ib = _deep(lo, hi, yb0, yb1, y)
            for x in range(ia, ib + 1):
                dd = pol * (np.float64(img[y, x]) - np.float64(bg[y, x]))
                if dd <= c:
                    s_lo += dd
                    n_lo += 1.0
        if n_lo >= 2.0:
            c = s_lo / n_lo
    if c < 1.0:
        c = 1.0
    inv_c = 1.0 / c
    # moments: deep interior weight 1, the band around the boundary coverage-weighted, each partial
    # pixel's mass moved to where its covered part lies (inwards along the normal of the spans'
    # ellipse), which removes the pixel-centre bias of the edge
    m0 = acc[0]
    cx = acc[1] / m0
    cy = acc[2] / m0
    mxx = acc[3] / m0 - cx * cx
    myy = acc[4] / m0 - cy * cy
    mxy = acc[5] / m0 - cx * cy
    det = mxx * myy - mxy * mxy
    if det > 1e-12:
        _band_moments(img, bg, yb0, yb1, lo, hi, h, w, pol, inv_c, True, cx, cy, myy / det, -mxy / det,
                      mxx / det, acc)
    else:
        _band_moments(img, bg, yb0, yb1, lo, hi, h, w, pol, inv_c, False, 0.0, 0.0, 0.0, 0.0, 0.0, acc)
    m0 = acc[0]
    cx = acc[1] / m0
    cy = acc[2] / m0
    mxx = acc[3] / m0 - cx * cx
    myy = acc[4] / m0 - cy * cy
    mxy = acc[5] / m0 - cx * cy
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
    mean = s_i / n
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
    row[B_BRIGHT_SD] = math.sqrt(max(s_ii / n - mean * mean, 0.0))
    border = xmin == 0 or xmax == w - 1 or ymin == 0 or ymax == h - 1 or ymin == sy0 or ymax == sy1 - 1
    row[B_BORDER] = 1.0 if border else 0.0
    row[B_CONTRAST] = s_ad / n
    return n


@njit(nogil=True, cache=True)
def _segment_frame(img, bg, seg, seg_bg, threshold, min_area_px, y0, y1, max_blobs, out, labels, mrow, run_y, run_a,
                   run_b, parent, row_first, stats, lo, hi, hx_in, hy_in, hx, hy, acc):
    """Segment one image into ``out`` (max_blobs x N_BLOB_FIELDS); returns the blob count.

    Objects are where |seg - seg_bg| > threshold (``seg``/``seg_bg`` are ``img``/``bg`` except
    for a precomputed mask); they are measured on ``img`` against ``bg``. With a (H, W)
    ``labels`` array, the filled mask of blob i is written as i + 1 there (the caller zeroes
    it); pass a (1, 1) array to skip that."""
    h, w = img.shape
    # a negative threshold segments dark pixels only (RT-DC's "bin threshold -6" convention)
    ti = np.int32(math.floor(abs(threshold)))
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
        for y in range(ya, yb + 1):
            lo[y] = w
            hi[y] = -1
        for q in range(row_first[ya - y0], row_first[yb + 1 - y0]):
            if parent[q] == r:
                y = run_y[q]
                lo[y] = min(lo[y], run_a[q])
                hi[y] = max(hi[y], run_b[q])
        area = 0
        for y in range(ya, yb + 1):
            if hi[y] >= lo[y]:
                area += hi[y] - lo[y] + 1
        if area < min_area_px:
            continue
        _measure_blob(img, bg, mode, ya, yb, lo, hi, h, w, y0, y1, hx_in, hy_in, hx, hy, acc, out[nb])
        if write_labels:
            for y in range(ya, yb + 1):
                for x in range(lo[y], hi[y] + 1):
                    labels[y, x] = nb + 1
        nb += 1
    return nb


@njit(nogil=True, cache=True)
def _segment_batch(images, slots, bg, threshold, min_area_px, y0, y1, max_blobs, out, counts):
    n = slots.shape[0]
    h, w = bg.shape
    y0 = max(0, min(y0, h))
    y1 = max(y0, min(y1, h))
    mb = min(max_blobs, out.shape[1])
    rows = max(y1 - y0, 1)
    cap = rows * ((w + 1) // 2) + 1
    run_y = np.empty(cap, np.int32)
    run_a = np.empty(cap, np.int32)
    run_b = np.empty(cap, np.int32)
    parent = np.empty(cap, np.int32)
    row_first = np.empty(rows + 1, np.int32)
    stats = np.empty((_N_R, cap), np.int32)
    lo = np.empty(h + 1, np.int32)
    hi = np.empty(h + 1, np.int32)
    hx_in = np.empty(2 * h + 2, np.float64)
    hy_in = np.empty(2 * h + 2, np.float64)
    hx = np.empty(4 * h + 4, np.float64)
    hy = np.empty(4 * h + 4, np.float64)
    acc = np.empty(6, np.float64)
    labels = np.zeros((1, 1), np.int32)
    mrow = np.zeros((w + 7) // 8 * 8, np.uint8)
    for f in range(n):
        img = images[slots[f]]
        counts[f] = _segment_frame(img, bg, img, bg, threshold, min_area_px, y0, y1, mb, out[f], labels,
                                   mrow, run_y, run_a, run_b, parent, row_first, stats, lo, hi, hx_in, hy_in, hx, hy, acc)


segment_batch = _segment_batch
"""``segment_batch(images, slots, bg, threshold, min_area_px, y0, y1, max_blobs, out, counts)``:
segment ``images[slots[i]]`` into ``out[i, :counts[i]]`` (blob table, see :mod:`tracking.blobs`).
Work arrays are allocated once per call (per batch), never per frame."""


@njit(nogil=True, cache=True)
def segment_image(img, bg, threshold, min_area_px, y0, y1, max_blobs, out, labels):
    """One image; returns the blob count. ``labels`` (H, W int32, zeroed by the caller) receives
    blob i's filled mask as i + 1, or pass a (1, 1) array to skip it."""
    h, w = img.shape
    y0 = max(0, min(y0, h))
    y1 = max(y0, min(y1, h))
    rows = max(y1 - y0, 1)
    cap = rows * ((w + 1) // 2) + 1
    return _segment_frame(img, bg, img, bg, threshold, min_area_px, y0, y1, min(max_blobs, out.shape[0]), out, labels,
                          np.zeros((w + 7) // 8 * 8, np.uint8), np.empty(cap, np.int32), np.empty(cap, np.int32), np.empty(cap, np.int32),
                          np.empty(cap, np.int32), np.empty(rows + 1, np.int32), np.empty((_N_R, cap), np.int32),
                          np.empty(h + 1, np.int32), np.empty(h + 1, np.int32), np.empty(2 * h + 2, np.float64),
                          np.empty(2 * h + 2, np.float64), np.empty(4 * h + 4, np.float64),
                          np.empty(4 * h + 4, np.float64), np.empty(6, np.float64))


@njit(nogil=True, cache=True)
def segment_mask(img, bg, mask, dark, min_area_px, max_blobs, out, labels):
    """Like :func:`segment_image` for a precomputed binary ``mask`` (uint8, nonzero = object; e.g.
    after a morphological closing): objects are the mask's components, measured on ``img``
    against ``bg`` (``dark``: the objects are darker than the background)."""
    h, w = img.shape
    cap = h * ((w + 1) // 2) + 1
    zero = np.zeros_like(mask)
    # polarity rides on the threshold's sign: dark-only tests seg_bg - seg > 0.5, so the mask goes
    # in as the "background" there; otherwise |seg - seg_bg| > 0.5
    if dark:
        return _segment_frame(img, bg, zero, mask, -0.5, min_area_px, 0, h, min(max_blobs, out.shape[0]), out,
                              labels, np.zeros((w + 7) // 8 * 8, np.uint8), np.empty(cap, np.int32),
                              np.empty(cap, np.int32), np.empty(cap, np.int32), np.empty(cap, np.int32),
                              np.empty(h + 1, np.int32), np.empty((_N_R, cap), np.int32), np.empty(h + 1, np.int32),
                              np.empty(h + 1, np.int32), np.empty(2 * h + 2, np.float64),
                              np.empty(2 * h + 2, np.float64), np.empty(4 * h + 4, np.float64),
                              np.empty(4 * h + 4, np.float64), np.empty(6, np.float64))
    return _segment_frame(img, bg, mask, zero, 0.5, min_area_px, 0, h, min(max_blobs, out.shape[0]), out, labels,
                          np.zeros((w + 7) // 8 * 8, np.uint8), np.empty(cap, np.int32), np.empty(cap, np.int32),
                          np.empty(cap, np.int32), np.empty(cap, np.int32), np.empty(h + 1, np.int32),
                          np.empty((_N_R, cap), np.int32), np.empty(h + 1, np.int32), np.empty(h + 1, np.int32),
                          np.empty(2 * h + 2, np.float64), np.empty(2 * h + 2, np.float64),
                          np.empty(4 * h + 4, np.float64), np.empty(4 * h + 4, np.float64), np.empty(6, np.float64))


@njit(nogil=True, cache=True)
def nearest_blob_mask(img, bg, threshold, min_area_px, max_blobs, x, y, ya, yb, xa, xb, mask):
    """Segment the window rows ya..yb, columns xa..xb of ``img`` and set ``mask`` (bool, full
    image) True on the filled mask of the blob whose centroid is nearest (x, y) (image
    coordinates). Returns False (mask untouched) when the window holds no blob."""
    sub = np.ascontiguousarray(img[ya:yb, xa:xb])
    sub_bg = np.ascontiguousarray(bg[ya:yb, xa:xb])
    out = np.zeros((max_blobs, N_BLOB_FIELDS), np.float64)
    labels = np.zeros((yb - ya, xb - xa), np.int32)
    nb = segment_image(sub, sub_bg, threshold, min_area_px, 0, yb - ya, max_blobs, out, labels)
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
