"""Segmentation kernel against exact geometry: rectangles, diamonds, anti-aliased ellipses, random blobs."""

import math

import numpy as np
import pytest

from tracking import measure
from tracking.blobs import (
    B_AREA,
    B_BORDER,
    B_HULL_AREA,
    B_HULL_PERIM,
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
from tracking._pure import pure_python
from tracking.segment import blob_mask, segment_batch, segment_image

BG = 120


def coverage_ellipse(h, w, cx, cy, a, b, theta, ss=8):
    """Exact-ish pixel coverage of an ellipse (supersampled ss x ss per pixel, pixel centres at integers)."""
    yy, xx = np.mgrid[0:h * ss, 0:w * ss]
    x = (xx + 0.5) / ss - 0.5
    y = (yy + 0.5) / ss - 0.5
    c, s = math.cos(theta), math.sin(theta)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    inside = ((u / a) ** 2 + (v / b) ** 2 <= 1.0).astype(np.float64)
    return inside.reshape(h, ss, w, ss).mean(axis=(1, 3))


def render(cov, contrast=-40.0, noise=0.0, rng=None):
    img = BG + contrast * cov
    if noise:
        img = img + rng.normal(0.0, noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def one(img, bg=None, threshold=10.0, min_area=1.0, y0=0, y1=None, max_blobs=16, kernels="numba", split=0.0):
    h, w = img.shape
    bg = np.full((h, w), BG, np.uint8) if bg is None else bg
    out = np.zeros((max_blobs, N_BLOB_FIELDS))
    fn = pure_python(segment_image) if kernels == "python" else segment_image
    n = fn(img, bg, threshold, min_area, y0, h if y1 is None else y1, max_blobs, out, np.zeros((1, 1), np.int32),
           split)
    return out[:n]


def test_rectangle_is_exact():
    img = np.full((40, 80), BG, np.uint8)
    img[10:20, 30:55] = BG - 50  # 25 x 10 px
    (r,) = one(img)
    assert r[B_AREA] == 250
    assert r[B_X] == pytest.approx(42.0) and r[B_Y] == pytest.approx(14.5)
    assert (r[B_XMIN], r[B_XMAX], r[B_YMIN], r[B_YMAX]) == (30, 54, 10, 19)
    # a full-pixel rectangle has variance w²/12 along each side: semi-axis 2*sqrt(var)
    assert r[B_MAJOR] == pytest.approx(25 / math.sqrt(3)) and r[B_MINOR] == pytest.approx(10 / math.sqrt(3))
    # pixel-centre hull: (25-1) x (10-1)
    assert r[B_HULL_AREA] == pytest.approx(24 * 9) and r[B_HULL_PERIM] == pytest.approx(2 * (24 + 9))
    assert r[B_BORDER] == 0.0


def test_diamond_hull_area_perimeter_and_deform():
    h, w, cx, cy, rad = 50, 60, 30, 25, 12
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.where(np.abs(xx - cx) + np.abs(yy - cy) <= rad, BG - 40, BG).astype(np.uint8)
    (s,) = measure(img, np.full_like(img, BG), 0.5, threshold=10)
    assert s.hull_area_px == pytest.approx(2 * rad**2)
    perim = 4 * math.sqrt(2) * rad
    assert s.hull_perimeter_um == pytest.approx(perim * 0.5)
    assert s.area_um == pytest.approx(2 * rad**2 * 0.25)
    assert s.deform == pytest.approx(1 - 2 * math.sqrt(math.pi * 2 * rad**2) / perim)
    assert s.area_px == 2 * rad * rad + 2 * rad + 1  # lattice points of the diamond
    assert (s.x_um, s.y_um) == (pytest.approx(cx * 0.5), pytest.approx(cy * 0.5))


@pytest.mark.parametrize("a,b,theta", [(35.0, 6.0, 0.03), (20.0, 10.0, 0.4), (12.0, 11.0, -1.2), (28.0, 8.0, 1.5)])
def test_antialiased_ellipse_moments_are_unbiased(a, b, theta):
    rng = np.random.default_rng(int(a * 100 + b))
    errs = []
    for _ in range(4):
        cx, cy = 60 + rng.random(), 32 + rng.random()
        img = render(coverage_ellipse(64, 120, cx, cy, a, b, theta), noise=1.0, rng=rng)
        (s,) = measure(img, np.full_like(img, BG), 1.0, threshold=10)
        assert s.x_um == pytest.approx(cx, abs=0.03) and s.y_um == pytest.approx(cy, abs=0.03)
        assert s.major_um == pytest.approx(a, abs=0.05) and s.minor_um == pytest.approx(b, abs=0.05)
        if a / b > 1.2:
            d = (s.angle - theta + math.pi / 2) % math.pi - math.pi / 2
            assert abs(d) < 0.01
        # convex hull of the mask: close to the ellipse (pixel-centre hull lies ~half a pixel inside)
        assert s.area_um == pytest.approx(math.pi * a * b, rel=0.12)
        errs.append(s.di - (a - b) / (a + b))
    assert abs(np.mean(errs)) < 0.002


def test_deform_of_a_disc_is_small_and_of_an_ellipse_matches_its_hull():
    img = render(coverage_ellipse(60, 60, 30, 30, 15, 15, 0.0))
    (s,) = measure(img, np.full_like(img, BG), 1.0, threshold=10)
    assert 0 <= s.deform < 0.01
    assert s.di < 0.003
    img = render(coverage_ellipse(60, 100, 50, 30, 30, 10, 0.0))
    (e,) = measure(img, np.full_like(img, BG), 1.0, threshold=10)
    # Ramanujan's perimeter of the ellipse: the hull deform must come close to the ellipse's own
    a, b = 30, 10
    p = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    assert e.deform == pytest.approx(1 - 2 * math.sqrt(math.pi * math.pi * a * b) / p, abs=0.01)


def random_blobs(rng, h=64, w=160, n=6):
    img = np.full((h, w), BG, np.int16)
    for _ in range(n):
        cx, cy = rng.uniform(5, w - 5), rng.uniform(5, h - 5)
        for _ in range(3):
            r = rng.uniform(2, 6)
            yy, xx = np.mgrid[0:h, 0:w]
            img[(xx - cx - rng.normal(0, 3)) ** 2 + (yy - cy - rng.normal(0, 2)) ** 2 <= r * r] = BG - rng.integers(15, 60)
    img += rng.integers(-3, 4, img.shape).astype(np.int16)
    return img.clip(0, 255).astype(np.uint8)


def test_hull_matches_opencv_on_random_blobs():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    for _ in range(5):
        img = random_blobs(rng)
        shapes, labels = measure(img, np.full_like(img, BG), 1.0, threshold=10, return_labels=True)
        assert shapes
        for i, s in enumerate(shapes):
            pts = np.argwhere(labels == i + 1)[:, ::-1].astype(np.int32)
            assert len(pts) == s.area_px
            hull = cv2.convexHull(pts)
            assert s.hull_area_px == pytest.approx(cv2.contourArea(hull), abs=1e-6)
            if len(hull) >= 2:
                assert s.hull_perimeter_um == pytest.approx(cv2.arcLength(hull, True), rel=1e-6)  # cv2 sums in float32


def test_numba_and_python_paths_agree():
    rng = np.random.default_rng(11)
    for _ in range(3):
        img = random_blobs(rng)
        a = one(img, kernels="numba", min_area=10)
        b = one(img, kernels="python", min_area=10)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_batch_equals_single_images_and_respects_slots():
    rng = np.random.default_rng(5)
    images = np.stack([random_blobs(rng) for _ in range(4)])
    bg = np.full(images.shape[1:], BG, np.uint8)
    slots = np.array([2, 0, 3], np.int64)
    out = np.zeros((3, 16, N_BLOB_FIELDS))
    counts = np.zeros(3, np.int32)
    segment_batch(images, slots, bg, 10.0, 10.0, 0, images.shape[1], 16, out, counts)
    for i, sl in enumerate(slots):
        ref = one(images[sl], min_area=10)
        assert counts[i] == len(ref)
        np.testing.assert_allclose(out[i, :counts[i]], ref)


def test_min_area_border_rows_max_blobs_and_polarity():
    img = np.full((50, 100), BG, np.uint8)
    img[20:26, 10:16] = BG - 40  # 36 px, dark
    img[20:23, 40:43] = BG - 40  # 9 px: debris
    img[0:5, 60:70] = BG - 40  # touches the top border
    img[30:40, 80:90] = BG + 40  # bright
    found = one(img, min_area=20)
    assert sorted(found[:, B_AREA]) == [36, 50, 100]
    by_area = {int(r[B_AREA]): r for r in found}
    assert by_area[50][B_BORDER] == 1.0 and by_area[36][B_BORDER] == 0.0
    assert len(one(img, min_area=5)) == 4
    assert len(one(img, min_area=5, max_blobs=2)) == 2
    # only rows 15..45 scanned: the border blob is not seen, the others are
    rows = one(img, min_area=20, y0=15, y1=45)
    assert sorted(rows[:, B_AREA]) == [36, 100]
    # negative threshold: dark pixels only (RT-DC convention)
    dark = one(img, threshold=-10.0, min_area=20)
    assert sorted(dark[:, B_AREA]) == [36, 50]


def test_holes_are_filled_and_diagonal_pixels_connect():
    img = np.full((40, 40), BG, np.uint8)
    img[10:30, 10:30] = BG - 40
    img[15:25, 15:25] = BG  # a hole: brightfield cells often match the background inside
    img[30, 30] = img[31, 31] = img[32, 32] = BG - 40  # a diagonal tail, 8-connected
    (r,) = one(img)
    assert r[B_AREA] == 400 + 3
    assert (r[B_XMAX], r[B_YMAX]) == (32, 32)


def test_blob_mask_picks_the_nearest_blob():
    img = np.full((40, 80), BG, np.uint8)
    img[10:20, 10:20] = BG - 40
    img[10:20, 50:60] = BG - 40
    bg = np.full_like(img, BG)
    m = blob_mask(img, bg, 10.0, 5.0, 52.0, 14.0)
    assert m.dtype == bool and m.sum() == 100 and m[15, 55] and not m[15, 15]
    assert blob_mask(bg, bg, 10.0, 5.0, 0.0, 0.0) is None
    # a window around one blob sees only that one, and the Python path agrees
    w = blob_mask(img, bg, 10.0, 5.0, 14.0, 14.0, window=(8, 22, 8, 22))
    assert w.sum() == 100 and w[15, 15] and not w[15, 55]
    np.testing.assert_array_equal(w, blob_mask(img, bg, 10.0, 5.0, 14.0, 14.0, window=(8, 22, 8, 22), kernels="python"))
    assert blob_mask(img, bg, 10.0, 5.0, 30.0, 30.0, window=(25, 35, 25, 45)) is None


def test_measure_rejects_bad_input():
    from mimlsort.errors import ConfigError, DataFormatError

    img = np.zeros((10, 10), np.uint8)
    with pytest.raises(DataFormatError, match="shape"):
        measure(img, np.zeros((10, 11), np.uint8), 0.5)
    with pytest.raises(DataFormatError, match="2-D integer"):
        measure(np.zeros((10, 10), np.float32), img, 0.5)
    with pytest.raises(ConfigError, match="pixel_size_um"):
        measure(img, img, 0.0)


def test_closing_joins_nearby_fragments_and_keeps_the_image_ellipse():
    pytest.importorskip("cv2")
    img = render(coverage_ellipse(60, 120, 60, 30, 25, 10, 0.0))
    img[:, 59:61] = BG  # a 2-px cut: two fragments without post-processing
    bg = np.full_like(img, BG)
    assert len(measure(img, bg, 1.0, threshold=-10, min_area_um=20)) == 2
    (s,) = measure(img, bg, 1.0, threshold=-10, min_area_um=20, closing_px=5)
    # the closed mask's hull spans the whole ellipse again
    assert s.bbox[0] <= 36 and s.bbox[2] >= 84
    (p,) = measure(img, bg, 1.0, threshold=-10, min_area_um=20, closing_px=5, kernels="python")
    assert (p.area_um, p.deform, p.major_um) == (s.area_um, s.deform, pytest.approx(s.major_um))
    # an opening removes a thin spur that a plain threshold keeps
    spur = render(coverage_ellipse(60, 120, 60, 30, 20, 12, 0.0))
    spur[30, 80:100] = BG - 40
    plain = measure(spur, bg, 1.0, threshold=-10, min_area_um=20)[0]
    opened = measure(spur, bg, 1.0, threshold=-10, min_area_um=20, opening_px=5)[0]
    assert plain.bbox[2] >= 99 and opened.bbox[2] <= 81


# -- touching cells ---------------------------------------------------------------------------------
def _pair(h, w, cells, noise=2.0, seed=0):
    """Dark anti-aliased ellipses (cx, cy, a, b, theta) in one image, with noise."""
    cov = np.zeros((h, w))
    for c in cells:
        cov = np.maximum(cov, coverage_ellipse(h, w, *c))
    return render(cov, noise=noise, rng=np.random.default_rng(seed))


@pytest.mark.parametrize("kernels", ["numba", "python"])
@pytest.mark.parametrize("cells", [
    [(30, 24, 12, 12, 0.0), (54.5, 24, 12, 12, 0.0)],  # two round cells queued, tangent
    [(40, 24, 30, 4, 0.0), (80.5, 24, 11, 9, 0.0)],  # a squeezed cell's tip on a relaxing one
    [(30, 24, 20, 5, 0.0), (68, 24, 18, 5, 0.0)],  # two squeezed cells end to end
])
def test_touching_cells_are_cut_at_their_waist(cells, kernels):
    img = _pair(48, 120, cells)
    assert len(one(img, min_area=20)) == 1  # one blob without cutting
    parts = one(img, min_area=20, split=0.75, kernels=kernels)
    assert len(parts) == 2
    parts = parts[np.argsort(parts[:, B_X])]
    # the upstream part was cut on its downstream side (2), the other on its upstream side (1)
    assert parts[:, B_SPLIT].tolist() == [2.0, 1.0]
    for r, (cx, cy, a, b, _) in zip(parts, cells):
        assert r[B_X] == pytest.approx(cx, abs=1.5)
        assert r[B_Y] == pytest.approx(cy, abs=0.5)
        assert r[B_AREA] == pytest.approx(math.pi * a * b, rel=0.15)
    assert parts[0, B_XMAX] < parts[1, B_XMIN]


def test_three_in_a_row_are_cut_twice():
    cells = [(20, 24, 10, 10, 0.0), (40.5, 24, 10, 10, 0.0), (61, 24, 10, 10, 0.0)]
    parts = one(_pair(48, 90, cells), min_area=20, split=0.75)
    parts = parts[np.argsort(parts[:, B_X])]
    assert parts[:, B_SPLIT].tolist() == [2.0, 3.0, 1.0]
    assert parts[:, B_X] == pytest.approx([c[0] for c in cells], abs=1.5)


@pytest.mark.parametrize("seed", range(6))
def test_single_cells_are_never_cut(seed):
    rng = np.random.default_rng(seed)
    # round, squeezed (thin and long, where a pixel of edge noise is an eighth of the height),
    # tilted, and a cell half in the constriction (a convex bullet: wide behind, thin in front)
    cells = [(40, 24, 12, 12, 0.0), (60, 24, 45, 4, 0.0), (60, 24, 20, 8, 0.3)]
    for c in cells:
        img = _pair(48, 120, [c], noise=3.0, seed=int(rng.integers(1 << 30)))
        (r,) = one(img, min_area=20, split=0.75)
        assert r[B_SPLIT] == 0.0
    yy, xx = np.mgrid[0:48, 0:120]
    bullet = ((xx - 40) ** 2 + (yy - 24) ** 2 <= 144) | ((xx >= 40) & (xx <= 75) & (np.abs(yy - 24) <= 4 - (xx - 40) / 12))
    img = render(bullet.astype(float), noise=3.0, rng=rng)
    (r,) = one(img, min_area=20, split=0.75)
    assert r[B_SPLIT] == 0.0


def test_a_blob_is_not_cut_into_parts_below_the_minimum_area():
    # a ~50 px speck touching a cell is cut off as a blob of its own, but stays with the cell
    # when the minimum area is above the speck's (it would be dropped as debris)
    img = _pair(48, 90, [(30, 24, 12, 12, 0.0), (46.5, 24, 4, 4, 0.0)])
    assert len(one(img, min_area=20, split=0.75)) == 2
    (r,) = one(img, min_area=60, split=0.75)
    assert r[B_SPLIT] == 0.0


@pytest.mark.parametrize("kernels", ["numba", "python"])
def test_a_blob_at_the_edge_of_the_scanned_rows_is_measured_against_the_scaled_background(kernels):
    # a flickering frame is segmented against the background scaled by its light; a blob touching
    # the first or last scanned row is measured over a band one row beyond them, which read the
    # scaled background's rows outside y0..y1: uninitialised memory (np.empty_like)
    from tracking.background import scale_rows

    fn = pure_python(segment_batch) if kernels == "python" else segment_batch
    h, w, y0, y1 = 48, 96, 12, 36
    bg = np.full((h, w), 200, np.uint8)
    img = np.full((1, h, w), 220, np.uint8)  # 10% brighter frame
    img[0, 8:18, 30:44] = 100  # dark cells reaching over the first and the last scanned row
    img[0, 30:40, 60:74] = 100
    img[0, 7, 30:44] = img[0, 36, 60:74] = 170  # their edges beyond them
    scaled = bg.copy()
    scale_rows(bg, 1.1, 0, h, scaled)
    expect = np.zeros((4, N_BLOB_FIELDS))
    n = segment_image(img[0], scaled, -6.0, 10.0, y0, y1, 4, expect, np.zeros((1, 1), np.int32))
    assert n == 2
    for _ in range(3):  # (whatever the freed memory the scaled rows are taken from holds)
        out = np.zeros((1, 4, N_BLOB_FIELDS))
        counts = np.zeros(1, np.int32)
        fn(img, np.zeros(1, np.int64), bg, -6.0, 10.0, y0, y1, 4, out, counts, 0.0, 6.0, True)
        assert counts[0] == 2
        assert out[0, 0, 18] == pytest.approx(1.1, abs=1e-6)  # B_LIGHT
        np.testing.assert_allclose(out[0, :2, :17], expect[:2, :17], rtol=1e-12, atol=1e-12)
