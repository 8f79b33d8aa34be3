"""The fast preprocessing path is held to the implementation the models were trained on.

The reference below is the original preprocessing written out independently of the module: centre
square by ``np.pad(mode="edge")``/slicing, then ``cv2.resize`` (INTER_AREA when shrinking, else
INTER_LINEAR) on the crop's own dtype (uint8 rounding included), then (p − mean) / std in float32.
The numba kernel must agree within 1e-5 per pixel — in fact bit for bit — for every field size
(shrink by a fractional or integer factor, the 2× case cv2 rounds half up, copy, enlarge), for
non-square crops and images, and for both normalisations; and the allocation-free one-cell path
must give what a batch gives.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from inference.preprocess import AREA, AREA_2X2, AREA_INT, LINEAR, Preprocessor, _crops_to_image, make_plan
from inference.spec import FeatureSpec, ImageSpec, ModelSpec, PixelNorm
from tracking._pure import pure_python
from tracking.events import CellEvent


def spec_for(h: int = 48, w: int = 48, crop_um: float | None = 40.0, px: float | None = 0.5,
             norm: PixelNorm = PixelNorm("fixed", 129.2, 22.9), channels=("first", "last")) -> ModelSpec:
    feats = (FeatureSpec("di", mean=0.2, std=0.05), FeatureSpec("transit_time_ms", mean=2.0, std=0.5, clip=(-3.0, 3.0)),
             FeatureSpec("v_max_mm_s", "minmax", min=10.0, max=50.0, clip=None), FeatureSpec("dir_per_ms", "none"))
    return ModelSpec(("a", "b"), feats, ImageSpec(h, w, tuple(channels), crop_um, px), "test", norm)


def reference_channel(crop: np.ndarray, field: int | None, hw: tuple[int, int]) -> np.ndarray:
    img = np.asarray(crop)
    if field is not None:
        for axis in (0, 1):
            size = img.shape[axis]
            if size > field:
                s = (size - field) // 2
                img = img[s:s + field] if axis == 0 else img[:, s:s + field]
            elif size < field:
                pad = [(0, 0), (0, 0)]
                pad[axis] = ((field - size) // 2, field - size - (field - size) // 2)
                img = np.pad(img, pad, mode="edge")
    h, w = hw
    if img.shape == (h, w):
        return img.astype(np.float32)
    interp = cv2.INTER_AREA if img.shape[0] >= h and img.shape[1] >= w else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp).astype(np.float32)


def reference_images(spec: ModelSpec, firsts, lasts, field) -> np.ndarray:
    c = [[reference_channel(f if ch == "first" else l, field, (spec.image.height, spec.image.width))
          for ch in spec.image.channels] for f, l in zip(firsts, lasts)]
    x = np.asarray(c, np.float32)
    pn = spec.pixel_norm
    if pn.mode == "per_image":
        mean = x.mean(axis=(2, 3), keepdims=True)
        std = x.std(axis=(2, 3), keepdims=True)
        x -= mean
        x /= np.maximum(std, 1e-6)
    else:
        x -= np.float32(pn.mean)
        x *= np.float32(1.0 / pn.std)
    return x


def crops(rng, shape, n: int = 3) -> list[np.ndarray]:
    """Noise, a smooth gradient with a bright disc (many exact .5 cases), and saturated extremes."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = [rng.integers(0, 256, shape).astype(np.uint8),
           ((xx * 3 + yy * 5) % 256 + 60 * ((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2)).clip(0, 255).astype(np.uint8),
           np.where(rng.random(shape) < 0.5, 0, 255).astype(np.uint8)]
    return out[:n]


# crop shape, pixel size (µm) → field pixels for a 40 µm field, image (h, w), expected mode
CASES = [
    ((80, 80), 0.5, (48, 48), AREA),  # the bundled model's own case: 80 → 48
    ((80, 80), 0.4, (48, 48), AREA),  # field 100 > crop: edge padding, then shrink
    ((80, 80), 0.3, (48, 48), AREA),  # field 133
    ((80, 80), 40 / 96, (48, 48), AREA_2X2),  # exactly 2×: cv2 rounds half up here
    ((80, 80), 40 / 144, (48, 48), AREA_INT),  # exactly 3×
    ((100, 100), 0.25, (40, 40), AREA_INT),  # exactly 4× (160 → 40)
    ((80, 80), 40 / 48, (48, 48), AREA_INT),  # field 48 = image: a copy (a 1×1 box)
    ((80, 80), 1.0, (48, 48), LINEAR),  # field 40 < 48: enlarge
    ((80, 80), 40 / 24, (48, 48), LINEAR),  # exactly 2× enlarge
    ((60, 60), 40 / 17, (64, 64), LINEAR),  # strong enlarge, odd field
    ((70, 90), 0.5, (48, 48), AREA),  # non-square crop: cut one axis, pad the other
    ((81, 79), 0.45, (32, 48), AREA),  # non-square image
    ((80, 80), 0.95, (32, 48), LINEAR),  # field 42: shrink rows, enlarge columns
]


@pytest.mark.parametrize("norm", [PixelNorm("fixed", 129.2, 22.9), PixelNorm("per_image")], ids=["fixed", "per_image"])
@pytest.mark.parametrize("shape,px,hw,mode", CASES)
def test_kernel_matches_cv2_reference(shape, px, hw, mode, norm):
    spec = spec_for(*hw, norm=norm)
    pre = Preprocessor(spec)
    field = pre.field_pixels(px)
    assert pre.plan(shape, field).mode == mode
    rng = np.random.default_rng(hash((shape, hw, round(px, 4))) % 2**32)
    firsts, lasts = crops(rng, shape), crops(rng, shape)[::-1]
    got = pre.images(firsts, lasts, px)
    want = reference_images(spec, firsts, lasts, field)
    assert got.shape == want.shape == (3, 2, *hw)
    assert float(np.abs(got - want).max()) <= 1e-5
    np.testing.assert_array_equal(got, want)  # bit for bit: the same arithmetic, not an approximation


def test_kernel_matches_cv2_over_a_sweep_of_sizes():
    """Every field from 17 to 130 pixels (area, integer and enlarge) into 48×48, grey values exact."""
    rng = np.random.default_rng(7)
    for field in range(17, 131):
        crop = rng.integers(0, 256, (field, field)).astype(np.uint8)
        p = make_plan(crop.shape, None, (48, 48))
        out = np.empty((1, 48, 48), np.float32)
        _crops_to_image(crop, crop, np.zeros(1, np.int64), p.mode, p.rows, p.y_pos, p.y_w, p.x_idx, p.x_w, p.inv_area,
                        np.float32(0.0), np.float32(1.0), out)
        np.testing.assert_array_equal(out[0], reference_channel(crop, None, (48, 48)), err_msg=f"field {field}")


def test_python_path_of_the_kernel_gives_the_same_numbers():
    rng = np.random.default_rng(3)
    py = pure_python(_crops_to_image)
    for shape, field, hw in [((30, 30), None, (16, 16)), ((12, 12), None, (16, 16)), ((32, 32), None, (16, 16))]:
        a, b = crops(rng, shape, 2)
        p = make_plan(shape, field, hw)
        args = (np.array([1, 0]), p.mode, p.rows, p.y_pos, p.y_w, p.x_idx, p.x_w, p.inv_area,
                np.float32(100.0), np.float32(1 / 50))
        fast, slow = np.empty((2, *hw), np.float32), np.empty((2, *hw), np.float32)
        _crops_to_image(a, b, *args, fast)
        py(a, b, *args, slow)
        np.testing.assert_array_equal(fast, slow)
        np.testing.assert_array_equal(slow[0], (reference_channel(b, field, hw) - np.float32(100.0)) * np.float32(1 / 50))


def event(i, rng, shape=(80, 80), px=0.5, **feats) -> CellEvent:
    f = {"di": 0.2 + 0.05 * rng.standard_normal(), "transit_time_ms": 2.0 + rng.standard_normal(),
         "v_max_mm_s": 30.0 + 20 * rng.standard_normal(), "dir_per_ms": 0.1 * rng.standard_normal()}
    f.update(feats)
    a, b = crops(rng, shape, 2)
    return CellEvent(i, i, f, a, b, px, 10 * i, 10 * i + 4, 0)


@pytest.mark.parametrize("norm", [PixelNorm("fixed", 129.2, 22.9), PixelNorm("per_image")], ids=["fixed", "per_image"])
def test_one_cell_fill_equals_the_batch_path(norm):
    pre = Preprocessor(spec_for(norm=norm, channels=("last", "first")))
    rng = np.random.default_rng(11)
    events = [event(0, rng), event(1, rng, px=1.0, di=np.nan, transit_time_ms=9.0), event(2, rng, shape=(70, 90), px=0.4)]
    image, feats = pre(events)
    for i, ev in enumerate(events):
        im1 = np.full(image.shape[1:], np.nan, np.float32)
        f1 = np.full(feats.shape[1:], np.nan, np.float32)
        pre.fill(ev, im1, f1, index=i)
        np.testing.assert_array_equal(im1, image[i])
        np.testing.assert_array_equal(f1, feats[i])
    assert feats[1, 0] == 0.0 and feats[1, 1] == 3.0  # NaN → fill, clipped at 3
    assert pre.filled == 2  # counted once by the batch and once by fill


def test_other_dtypes_and_shapes_take_cv2_itself():
    spec = spec_for()
    pre = Preprocessor(spec)
    rng = np.random.default_rng(5)
    a16 = rng.integers(0, 4096, (80, 80)).astype(np.uint16)
    f32 = rng.random((80, 80)).astype(np.float32) * 255
    u8 = crops(rng, (80, 80), 1)[0]
    for first, last in [(a16, a16), (f32, u8), (u8, u8[:70])]:
        got = pre.images([first], [last], 0.5)
        np.testing.assert_array_equal(got, reference_images(spec, [first], [last], 80))
    # non-contiguous and read-only crops go through the kernel too
    ro = u8.copy()
    ro.flags.writeable = False
    strided = np.ascontiguousarray(np.repeat(u8, 2, axis=1))[:, ::2]
    got = pre.images([ro], [strided], 0.5)
    np.testing.assert_array_equal(got, reference_images(spec, [u8], [u8], 80))


def test_bad_crops_are_model_errors():
    from mimlsort.errors import ModelError

    pre = Preprocessor(spec_for())
    ok = np.zeros((80, 80), np.uint8)
    with pytest.raises(ModelError, match="must not be empty"):
        pre.images([np.zeros((0, 80), np.uint8)], [ok], 0.5)
    with pytest.raises(ModelError, match="2-D grey images"):
        pre.images([ok], [np.zeros((80, 80, 3), np.uint8)], 0.5)
    with pytest.raises(ModelError, match="pixel size must be known"):
        pre.fill(replace(event(0, np.random.default_rng(0)), crop_pixel_size_um=float("nan")),
                 np.empty((2, 48, 48), np.float32), np.empty(4, np.float32))


def test_plans_are_cached_per_crop_shape_and_field():
    pre = Preprocessor(spec_for())
    assert pre.plan((80, 80), 80) is pre.plan((80, 80), 80)
    assert pre.plan((80, 80), 100) is not pre.plan((80, 80), 80)


def test_bundled_model_sees_the_same_inputs_as_in_training():
    """The demonstration model's own spec: kernel path and reference agree on tracker-like crops."""
    from inference.classifier import bundled_model
    from inference.spec import read_spec

    path = bundled_model()
    if not path.is_file():
        pytest.skip("the bundled demo model is not built yet (make model)")
    spec = read_spec(path)
    pre = Preprocessor(spec)
    rng = np.random.default_rng(0)
    side = int(round(spec.image.crop_size_um / spec.image.pixel_size_um))
    for px in (spec.image.pixel_size_um, 0.4, 0.65):
        firsts, lasts = crops(rng, (side, side)), crops(rng, (side, side))
        np.testing.assert_array_equal(pre.images(firsts, lasts, px),
                                      reference_images(spec, firsts, lasts, pre.field_pixels(px)))


def test_single_cell_classify_matches_batch_and_reference(tmp_path):
    """Classifier.classify([event]) (IOBinding, preallocated buffers) equals a batch call and the
    reference preprocessing fed to the session directly."""
    from inference.classifier import bundled_model, Classifier

    if not bundled_model().is_file():
        pytest.skip("the bundled demo model is not built yet (make model)")
    rng = np.random.default_rng(2)
    with Classifier(bundled_model()) as clf:
        side = int(round(clf.spec.image.crop_size_um / 0.5))
        events = [event(i, rng, shape=(side, side)) for i in range(4)]
        batch = clf.classify(events)
        singles = np.concatenate([clf.classify([e]) for e in events])
        first = clf.classify(events[0])
        assert not np.shares_memory(first, clf.classify(events[1]))  # results are not the reused buffer
        np.testing.assert_allclose(singles, batch, atol=1e-6)
        ref_img = reference_images(clf.spec, [e.first_crop for e in events], [e.last_crop for e in events],
                                   clf.preprocess.field_pixels(0.5))
        ref = clf.run_arrays(ref_img, clf.preprocess.scale_features(clf.preprocess.raw_features(events)))
        np.testing.assert_allclose(singles, ref, atol=1e-6)
        assert clf.latency_stats()["calls"] == 7
    with pytest.raises(Exception, match="closed"):
        clf.classify(events[0])
