"""The fast paths of the segmentation kernel: bit-parallel run scan, pixel-type contrast, grouped
band moments. Each is checked against an independent answer (OpenCV's connected components) or
an invariant the fast path could break (numba == pure Python bit for bit, dtype, scratch size).
Speed itself is measured by ``mimlsort bench tracking``, not here."""

import numpy as np
import pytest

from acquisition.synthetic import SyntheticSettings, render_frames
from tracking._pure import pure_python
from tracking.background import estimate_background
from tracking.blobs import B_AREA, B_BRIGHT_AVG, B_XMAX, B_XMIN, B_YMAX, B_YMIN, N_BLOB_FIELDS
from tracking.segment import segment_batch, segment_image

cv2 = pytest.importorskip("cv2")

BG = 120


def segment(img, bg, threshold, min_area=0.0, max_blobs=4096, kernels="numba"):
    out = np.zeros((max_blobs, N_BLOB_FIELDS))
    fn = pure_python(segment_image) if kernels == "python" else segment_image
    n = fn(img, bg, threshold, min_area, 0, img.shape[0], max_blobs, out, np.zeros((1, 1), np.int32))
    return out[:n]


def boxes(rows):
    return sorted((int(r[B_XMIN]), int(r[B_YMIN]), int(r[B_XMAX]), int(r[B_YMAX])) for r in rows)


def cv2_boxes(mask):
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return sorted((int(x), int(y), int(x + w - 1), int(y + h - 1)) for x, y, w, h, _ in stats[1:n])


def random_mask(rng, h, w):
    """Speckle plus long horizontal runs, so runs start, end and continue across 8- and 64-pixel
    word boundaries and at the last column."""
    mask = rng.random((h, w)) < 0.25
    for _ in range(h // 2):
        y = rng.integers(h)
        a = rng.integers(w)
        mask[y, a:a + rng.integers(1, 150)] = True
    mask[:, -1] |= rng.random(h) < 0.5
    return mask


@pytest.mark.parametrize("w", [1, 7, 8, 9, 63, 64, 65, 130, 200])
def test_components_match_opencv_at_every_word_boundary(w):
    rng = np.random.default_rng(w)
    h = 23
    dark = random_mask(rng, h, w)
    bright = random_mask(rng, h, w) & ~dark
    img = np.full((h, w), BG, np.uint8)
    img[dark] = BG - 40
    img[bright] = BG + 40
    bg = np.full_like(img, BG)
    # |image - background| > 10: both polarities are objects
    assert boxes(segment(img, bg, 10.0)) == cv2_boxes(dark | bright)
    # negative threshold: dark pixels only
    assert boxes(segment(img, bg, -10.0)) == cv2_boxes(dark)


def test_numba_and_pure_python_agree_bit_for_bit_at_dense_flow():
    frames, _ = render_frames(SyntheticSettings(seed=4, cells_per_second=2500.0), 120)
    bg = estimate_background(frames[:64])
    h = frames.shape[1]
    slots = np.arange(len(frames), dtype=np.int64)
    out = np.zeros((len(frames), 16, N_BLOB_FIELDS))
    counts = np.zeros(len(frames), np.int32)
    segment_batch(frames, slots, bg, 10.0, 60.0, 0, h, 16, out, counts)
    busiest = np.argsort(-counts, kind="stable")[:2].astype(np.int64)
    assert counts[busiest].min() >= 3  # several cells in view: the dense-flow case
    py_out = np.zeros((2, 16, N_BLOB_FIELDS))
    py_counts = np.zeros(2, np.int32)
    pure_python(segment_batch)(frames, busiest, bg, 10.0, 60.0, 0, h, 16, py_out, py_counts)
    np.testing.assert_array_equal(py_counts, counts[busiest])
    # the same float operations in the same order: equal to the last bit, not only close
    assert np.array_equal(py_out.view(np.uint64), out[busiest].view(np.uint64))


def test_band_moments_do_not_depend_on_the_scratch_size():
    # a tall blob has more covered band pixels than one group of rows of a narrow image holds
    # (the group size scales with the width): padding the image with background columns changes
    # the grouping, and must not change a bit of the result
    rng = np.random.default_rng(2)
    h, w = 300, 40
    yy, xx = np.mgrid[0:h, 0:w]
    cover = np.clip(6.5 - np.abs(xx - 19.3 - 0.01 * (yy - 150)), 0.0, 1.0) * (np.abs(yy - 150) < 140)
    img = np.clip(np.round(BG - 40 * cover + rng.normal(0, 2, (h, w))), 0, 255).astype(np.uint8)
    wide = np.full((h, 11 * w), BG, np.uint8)
    wide[:, :w] = img
    narrow_rows = segment(img, np.full_like(img, BG), 10.0, min_area=100)
    wide_rows = segment(wide, np.full_like(wide, BG), 10.0, min_area=100)
    assert len(narrow_rows) == len(wide_rows) == 1
    assert narrow_rows[0, B_AREA] > 2500
    assert np.array_equal(narrow_rows.view(np.uint64), wide_rows.view(np.uint64))


@pytest.mark.parametrize("dtype, scale", [(np.uint16, 256), (np.int16, 1)])
def test_other_pixel_types_find_the_same_objects(dtype, scale):
    rng = np.random.default_rng(9)
    h, w = 40, 130
    dark = random_mask(rng, h, w)
    img8 = np.where(dark, BG - 40, BG).astype(np.uint8)
    img8 = np.clip(img8.astype(int) + rng.integers(-3, 4, (h, w)), 0, 255).astype(np.uint8)
    bg8 = np.full_like(img8, BG)
    ref = segment(img8, bg8, 10.0)
    img = img8.astype(dtype) * dtype(scale)
    bg = bg8.astype(dtype) * dtype(scale)
    got = segment(img, bg, 10.0 * scale)
    assert boxes(got) == boxes(ref) == cv2_boxes(np.abs(img8.astype(int) - BG) > 10)
    order = np.lexsort((ref[:, B_XMIN], ref[:, B_YMIN]))
    order_got = np.lexsort((got[:, B_XMIN], got[:, B_YMIN]))
    np.testing.assert_array_equal(got[order_got, B_AREA], ref[order, B_AREA])
    np.testing.assert_allclose(got[order_got, B_BRIGHT_AVG], scale * ref[order, B_BRIGHT_AVG], rtol=1e-12)


def test_python_fallbacks_of_the_pixel_passes_match_the_compiled_ones():
    # the contrast/threshold passes and the bit scan have separate pure-Python versions
    rng = np.random.default_rng(4)
    for w in (9, 64, 130):
        h = 12
        img = rng.integers(90, 150, (h, w)).astype(np.uint8)
        bg = np.full_like(img, BG)
        for thr in (10.0, -10.0, 25.5):
            a = segment(img, bg, thr)
            b = segment(img, bg, thr, kernels="python")
            assert len(a) > 0
            assert np.array_equal(a.view(np.uint64), b.view(np.uint64))
