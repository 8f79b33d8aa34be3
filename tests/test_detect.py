"""Channel geometry detection from background images."""

import numpy as np
import pytest

from mimlsort.errors import ConfigError
from tracking.detect import detect_geometry
from tracking.geometry import GeometrySettings


def chip(h=80, w=240, x0=90.0, x1=170.0, half_wide=24.0, half_gap=6.0, lumen=170.0, wall=120.0, edge=70.0,
         line=1.6, ss=4):
    """Brightfield-like channel: bright lumen, darker walls, dark lines on the wall faces (supersampled)."""
    off = (np.arange(ss) + 0.5) / ss - 0.5
    ys = (np.arange(h)[:, None] + off).ravel()
    xs = (np.arange(w)[:, None] + off).ravel()
    X, Y = np.meshgrid(xs, ys)
    yc = (h - 1) / 2
    half = np.where((X >= x0) & (X < x1), half_gap, half_wide)
    inside = np.abs(Y - yc) < half
    # distance to the lumen boundary (horizontal faces and the vertical end faces)
    d = np.abs(np.abs(Y - yc) - half)
    face = (np.abs(Y - yc) >= half_gap) & (np.abs(Y - yc) <= half_wide)
    d = np.where(face, np.minimum(d, np.minimum(np.abs(X - x0), np.abs(X - x1))), d)
    img = np.where(inside, lumen, wall)
    img = np.where(d < line / 2, edge, img)
    img = img.reshape(h, ss, w, ss).mean(axis=(1, 3))
    img = img * (1 + 0.05 * (np.arange(w) / w - 0.5))[None, :]
    return np.round(img + np.random.default_rng(0).normal(0, 0.7, img.shape)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("x0,x1", [(90.0, 170.0), (40.5, 75.25), (150.0, 235.0)])
def test_constriction_and_walls_are_found(x0, x1):
    bg = chip(x0=x0, x1=x1)
    g = detect_geometry(bg, 0.5)
    assert g.constriction_x0 == pytest.approx(x0, abs=0.6)
    assert g.constriction_x1 == pytest.approx(x1, abs=0.6)
    yc = (80 - 1) / 2
    # the scanned rows end on the lumen side of the walls' dark lines (a pixel or so inside the faces)
    assert g.channel_y0 == pytest.approx(yc - 24, abs=1.5)
    assert g.channel_y1 == pytest.approx(yc + 24 + 1, abs=1.5)  # exclusive row bound
    assert g.constriction_width_px == pytest.approx(12 - 1.6, abs=1.0)  # bright lumen between the lines


def test_settings_resolve_detects_only_what_is_missing():
    bg = chip()
    px = 0.5
    auto = GeometrySettings().resolve(bg, px)
    assert auto.constriction_x0 == pytest.approx(90, abs=0.6)
    fixed = GeometrySettings(constriction_start_um=30.0, constriction_end_um=60.0).resolve(bg, px)
    assert (fixed.constriction_x0, fixed.constriction_x1) == (60.0, 120.0)
    assert fixed.channel_y0 == pytest.approx(auto.channel_y0)


def test_flat_image_names_the_wall_keys():
    with pytest.raises(ConfigError, match="channel_top_um"):
        detect_geometry(np.full((60, 200), 150, np.uint8), 0.5)


@pytest.mark.parametrize("turns", [1, 3])
def test_a_channel_running_up_the_image_points_to_the_flow_direction(turns):
    # a turned camera's recording replayed without its turn was told only to set the channel geometry
    with pytest.raises(ConfigError, match=r"channel_top_um.*walls run up and down the image.*--flow-direction"):
        detect_geometry(np.rot90(chip(), turns), 0.5)
    with pytest.raises(ConfigError) as err:
        detect_geometry(np.full((60, 200), 150, np.uint8), 0.5)
    assert "flow" not in str(err.value)


def test_straight_channel_names_the_constriction_keys():
    with pytest.raises(ConfigError, match="constriction_start_um"):
        detect_geometry(chip(half_gap=24.0), 0.5)
    # once the constriction is given, only the walls are looked for (the error said to set the
    # constriction the user had set: a real RT-DC recording's straight channel)
    g = GeometrySettings(constriction_start_um=30.0, constriction_end_um=60.0).resolve(chip(half_gap=24.0), 0.5)
    assert (g.constriction_x0, g.constriction_x1) == (60.0, 120.0)
    assert g.channel_y0 == pytest.approx((80 - 1) / 2 - 24, abs=1.5)


def test_simulator_background_is_detected():
    synthetic = pytest.importorskip("acquisition.synthetic")
    for kw in ({}, {"pixel_size_um": 0.6, "width": 320, "height": 80, "constriction_length_um": 30.0}):
        s = synthetic.SyntheticSettings(**kw)
        bg = np.round(synthetic.render_background(s)).clip(0, 255).astype(np.uint8)
        g = detect_geometry(bg, s.pixel_size_um)
        x0 = s.constriction_start_um / s.pixel_size_um - 0.5  # the simulator's pixel-edge convention
        assert g.constriction_x0 == pytest.approx(x0, abs=0.6)
        assert g.constriction_x1 == pytest.approx(x0 + s.constriction_length_um / s.pixel_size_um, abs=0.6)


@pytest.mark.parametrize("gradient", [0.35, 0.5, 0.7])
def test_a_brightness_gradient_along_the_flow_does_not_move_the_constriction(gradient):
    # one threshold for the whole image cut into the lumen on the dark side: the constriction was
    # found at 7-14 µm (0.35) or 34-44 µm (0.5) instead of 44-84 µm, and every cell measured wrong
    synthetic = pytest.importorskip("acquisition.synthetic")
    for seed in (1, 2):
        s = synthetic.SyntheticSettings(illumination_gradient=gradient, seed=seed)
        bg = np.round(synthetic.render_background(s)).clip(0, 255).astype(np.uint8)
        g = detect_geometry(bg, s.pixel_size_um)
        x0 = s.constriction_start_um / s.pixel_size_um - 0.5
        assert g.constriction_x0 == pytest.approx(x0, abs=1.5)
        assert g.constriction_x1 == pytest.approx(x0 + s.constriction_length_um / s.pixel_size_um, abs=1.5)


def test_frames_too_small_for_a_channel_say_so_and_where_to_set_the_roi():
    # a camera left with a 1-px-wide ROI: "detect_geometry: background must be a 2-D image"
    from mimlsort.errors import DataFormatError
    from tracking.detect import detect_geometry

    with pytest.raises(DataFormatError, match=r"the frames are 1x1040 px: too small .*\(camera\.<backend>\.width"):
        detect_geometry(np.full((1040, 1), 160.0), 0.5)


def turned(img: np.ndarray, deg: float) -> np.ndarray:
    """``img`` as a camera turned by ``deg`` (counterclockwise as shown, row 0 at the top) sees it."""
    import cv2

    h, w = img.shape[-2:]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize("deg", [-3.0, 0.0, 0.5, 2.0, 5.0])
def test_the_channel_s_tilt_against_the_rows_is_measured(deg):
    # positive is clockwise as shown: the centre line falls towards +x
    g = detect_geometry(turned(chip(), deg), 0.5)
    assert g.tilt_deg == pytest.approx(-deg, abs=0.1)
    assert detect_geometry(turned(chip(), deg), 0.5, constriction=False).tilt_deg == pytest.approx(-deg, abs=0.1)


def test_a_tilted_channel_is_said_when_the_tracker_starts():
    from acquisition import synthetic
    from tracking.tracker import Tracker, TrackerSettings

    s = synthetic.SyntheticSettings(duration_s=0.06, cells_per_second=60.0, seed=7)
    frames, _ = synthetic.render_frames(s, s.frame_count)

    def notes(deg: float) -> list[str]:
        fr = np.stack([turned(f, deg) for f in frames]) if deg else frames
        tracker = Tracker.from_frames(fr, s.pixel_size_um, TrackerSettings())
        return [n for n in tracker.setup_notes() if "the channel runs" in n]

    assert notes(0.0) == [] and notes(0.5) == []
    said = notes(3.0)
    assert len(said) == 1 and "3.0° counterclockwise" in said[0] and "rises" in said[0], said
    assert "2.0° clockwise" in notes(-2.0)[0]
