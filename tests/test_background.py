"""Background model: median estimate, cell-robust running update, dtype handling."""

import numpy as np
import pytest

from mimlsort.errors import ConfigError, DataFormatError
from tracking.background import BackgroundModel


def channel(h=32, w=64, level=150, dtype=np.uint8):
    yy, xx = np.mgrid[0:h, 0:w]
    return (level + (xx % 7) - 3 + (yy % 3)).astype(dtype)


def with_cells(bg, n, rng, darkness=40):
    """n frames with a dark 8x8 'cell' moving along x (each pixel covered in a few frames only)."""
    frames = np.repeat(bg[None], n, axis=0).astype(np.int32)
    for i in range(n):
        x = (i * 5) % (bg.shape[1] - 8)
        frames[i, 10:18, x:x + 8] -= darkness
    frames += rng.integers(-1, 2, frames.shape)
    return frames.clip(0, np.iinfo(bg.dtype).max).astype(bg.dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_estimate_is_the_empty_channel(dtype):
    bg = channel(dtype=dtype)
    frames = with_cells(bg, 41, np.random.default_rng(0))
    est = BackgroundModel.estimate(frames)
    assert est.dtype == dtype and est.shape == bg.shape
    # noise is ±1: the median is within 1 grey level everywhere, cells never show up
    assert np.abs(est.astype(int) - bg.astype(int)).max() <= 1


def test_estimate_rejects_bad_stacks():
    with pytest.raises(DataFormatError, match="stack"):
        BackgroundModel.estimate(np.zeros((4, 4), np.uint8))
    with pytest.raises(DataFormatError, match="integer"):
        BackgroundModel.estimate(np.zeros((2, 4, 4), np.float32))


@pytest.mark.parametrize("kernels", ["numba", "python"])
def test_update_ignores_cells_but_follows_slow_drift(kernels):
    bg = channel()
    model = BackgroundModel.from_image(bg, kernels=kernels, alpha=1 / 16, stride=1, threshold=10)
    rng = np.random.default_rng(1)
    frames = with_cells(bg, 64, rng)
    assert model.update(frames, np.arange(64)) == 64
    # cell pixels differ by 40 > threshold: they never leak into the model
    assert np.abs(model.image.astype(int) - bg.astype(int)).max() <= 1
    # a slow global brightening by 4 grey levels (under the threshold) is learned
    brighter = (frames.astype(int) + 4).clip(0, 255).astype(np.uint8)
    for _ in range(4):
        model.update(brighter, np.arange(64))
    diff = model.image.astype(int) - bg.astype(int)
    assert np.median(diff) == 4
    assert model.fill is model.image and model.image.dtype == np.uint8


def test_numba_and_python_updates_agree_and_stride_holds_across_batches():
    bg = channel()
    frames = with_cells(bg, 50, np.random.default_rng(2))
    a = BackgroundModel.from_image(bg, kernels="numba", alpha=0.1, stride=4)
    b = BackgroundModel.from_image(bg, kernels="python", alpha=0.1, stride=4)
    used_a = sum(a.update(frames, np.arange(i, min(i + 7, 50))) for i in range(0, 50, 7))
    used_b = b.update(frames, np.arange(50))
    assert used_a == used_b == 13  # frames 0, 4, ..., 48 whatever the batching
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_allclose(a._acc, b._acc, rtol=1e-6)


@pytest.mark.parametrize("kernels", ["numba", "python"])
def test_a_step_change_is_taken_over_after_relearn_frames_but_passing_cells_never(kernels):
    bg = channel()
    model = BackgroundModel.from_image(bg, kernels=kernels, alpha=1 / 16, stride=1, threshold=10, relearn=20)
    rng = np.random.default_rng(3)
    # cells passing over the same pixels for many frames are never taken over
    frames = with_cells(bg, 64, rng)
    model.update(frames, np.arange(64))
    assert np.abs(model.image.astype(int) - bg.astype(int)).max() <= 1
    # debris settles: a dark 4x4 patch from now on
    settled = np.repeat(bg[None], 30, axis=0).astype(np.int32)
    settled[:, 2:6, 40:44] -= 50
    settled = settled.astype(np.uint8)
    model.update(settled, np.arange(19))
    assert (model.image[2:6, 40:44].astype(int) - bg[2:6, 40:44]).max() >= -1, "taken over too early"
    model.update(settled, np.arange(19, 30))
    assert np.array_equal(model.image[2:6, 40:44], settled[0, 2:6, 40:44]), "the step was not taken over"
    assert np.abs(model.image.astype(int) - bg.astype(int))[:, :30].max() <= 1
    # relearn=0: the old behaviour, never
    never = BackgroundModel.from_image(bg, kernels=kernels, alpha=1 / 16, stride=1, threshold=10, relearn=0)
    never.update(settled, np.arange(30))
    assert np.abs(never.image.astype(int) - bg.astype(int)).max() <= 1


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="relearn"):
        BackgroundModel(channel(), relearn=-1)
    with pytest.raises(ConfigError, match="alpha"):
        BackgroundModel(channel(), alpha=0.0)
    with pytest.raises(ConfigError, match="kernels"):
        BackgroundModel(channel(), kernels="cuda")
    with pytest.raises(DataFormatError, match="2-D integer"):
        BackgroundModel(np.zeros((4, 4), np.float64))


def walls_and_channel(h=48, w=96, dtype=np.uint8, top=200):
    """A bright channel (rows 12..36) between dark walls, with a darker constriction in the middle."""
    bg = np.full((h, w), 0.3 * top)
    bg[12:36] = top
    bg[12:18, 40:56] = bg[30:36, 40:56] = 0.35 * top  # the constriction's walls inside the channel's rows
    return (bg + (np.arange(w) % 5)).astype(dtype)


@pytest.mark.parametrize("kernels", ["numba", "python"])
@pytest.mark.parametrize("dtype, top", [(np.uint8, 200), (np.uint16, 3200)])
def test_a_frames_light_is_measured_whatever_the_cells_in_it(kernels, dtype, top):
    from tracking._pure import pure_python
    from tracking.background import frame_light

    fn = pure_python(frame_light) if kernels == "python" else frame_light
    rng = np.random.default_rng(3)
    bg = walls_and_channel(dtype=dtype, top=top)
    grey = top / 200
    for gain in (0.9, 1.0, 1.07):
        img = gain * bg.astype(float) + rng.normal(0, 2 * grey, bg.shape)
        img[14:34, 50:82] *= 0.6  # dark cells over a third of the channel's sampled pixels
        img = np.rint(img).clip(0, np.iinfo(dtype).max).astype(dtype)
        g, off = fn(img, bg, 12, 36, 6.0 * grey)
        assert g == pytest.approx(gain, abs=0.003)
        # the offset is the mean of image - background over the empty channel's sampled rows
        assert off / grey == pytest.approx((gain - 1) * (np.mean(bg[12:36:8].astype(float)) / grey), abs=0.5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_the_background_is_scaled_with_rounding_and_held_to_its_range(dtype):
    from tracking.background import scale_rows

    top = np.iinfo(dtype).max
    bg = np.array([[0, 1, 100, 101, top - 10, top]] * 4, dtype)
    out = np.full_like(bg, 7)
    scale_rows(bg, 1.004, 1, 3, out)  # (no x.5 ties: float32 and float64 round those apart)
    expect = np.minimum(np.floor(bg.astype(float) * 1.004 + 0.5), top)
    np.testing.assert_array_equal(out[1:3], expect[1:3])
    assert (out[0] == 7).all() and (out[3] == 7).all()  # rows outside y0..y1 untouched
    scale_rows(bg, 0.5, 0, 4, out)
    np.testing.assert_array_equal(out, np.floor(bg.astype(float) * 0.5 + 0.5))


@pytest.mark.parametrize("kernels", ["numba", "python"])
def test_a_local_change_is_followed_under_a_flickering_lamp(kernels):
    # every frame 8% brighter or darker than the background: the bright channel differs from the
    # model by more than the threshold in every frame, so it was never learned, and a slow local
    # change (here +5 grey levels where debris settled or the focus drifted) stayed out of the
    # model for the whole run. (A change of the whole channel is the light's: the gain takes it.)
    bg = walls_and_channel()
    drifted = bg.astype(float)
    drifted[20:28, 60:90] += 5
    rng = np.random.default_rng(4)
    gains = 1 + 0.08 * np.sign(rng.uniform(-1, 1, 64))
    frames = np.rint(gains[:, None, None] * drifted + rng.normal(0, 1, (64, *bg.shape))).clip(0, 255).astype(np.uint8)
    err = {}
    for clip in (6.0, 0.0):
        m = BackgroundModel(bg, alpha=0.125, stride=1, threshold=6.0, kernels=kernels)
        m.light_clip, m.light_rows = clip, (12, 36)
        m.update(frames, np.arange(64))
        err[clip] = np.median(np.abs(m.image[20:28, 60:90].astype(float) - drifted[20:28, 60:90]))
    assert err[6.0] <= 1.0 and err[0.0] >= 4.0, err


@pytest.mark.parametrize("kernels", ["numba", "python"])
def test_a_saturated_spot_stays_in_range_when_the_lamp_dims(kernels):
    # frames divided by a gain < 1 go beyond 255 where the camera saturates: the model jumped
    # there after relearn frames and its uint8 image wrapped around (255 -> 12)
    bg = walls_and_channel()
    bg[20:28, 60:70] = 255  # a saturated spot in the channel
    true = bg.astype(float)
    true[20:28, 60:70] = 300  # brighter than the camera shows
    rng = np.random.default_rng(0)
    frames = np.rint(0.95 * true + rng.normal(0, 1, (40, *bg.shape))).clip(0, 255).astype(np.uint8)
    m = BackgroundModel(bg, alpha=0.125, stride=1, threshold=6.0, relearn=8, kernels=kernels)
    m.light_clip, m.light_rows = 6.0, (12, 36)
    m.update(frames, np.arange(40))
    assert (m.image[20:28, 60:70] == 255).all(), np.unique(m.image[20:28, 60:70])
    assert np.abs(m.image[12:36, :50].astype(int) - bg[12:36, :50]).max() <= 1  # the rest: the light's


@pytest.mark.parametrize("kernels", ["numba", "python"])
def test_a_steady_lamps_model_is_learned_as_without_the_correction(kernels):
    # a steady lamp's gain, measured on noise and cells, moves no level by half a level:
    # segmentation leaves it out, and so must the update (dividing by it changed the model of a
    # steady run by a grey level in hundreds of pixels, and some of its events)
    bg = walls_and_channel()
    rng = np.random.default_rng(5)
    frames = np.rint(bg + rng.normal(0, 2, (64, *bg.shape))).clip(0, 255).astype(np.uint8)
    for i, f in enumerate(frames):  # a dark cell passing
        x = (3 * i) % 80
        f[16:30, x:x + 12] = (f[16:30, x:x + 12] * 0.6).astype(np.uint8)
    images = {}
    for clip in (6.0, 0.0):
        m = BackgroundModel(bg, alpha=0.125, stride=1, threshold=6.0, kernels=kernels)
        m.light_clip, m.light_rows = clip, (12, 36)
        m.update(frames, np.arange(64))
        images[clip] = m.image
    np.testing.assert_array_equal(images[6.0], images[0.0])
