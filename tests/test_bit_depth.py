"""A 12-bit camera is tracked and classified as the same scene on an 8-bit camera: the grey
levels in the tracking settings are an 8-bit image's, and crops reach the model as 8-bit grey."""

import numpy as np
import pytest

synthetic = pytest.importorskip("acquisition.synthetic")

from tracking.tracker import Tracker, TrackerSettings  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    s = synthetic.SyntheticSettings(seed=11, cells_per_second=80.0)
    frames, _ = synthetic.render_frames(s, 1500)
    return s, frames


def _track(frames, px, bit_depth=None):
    t = Tracker.from_frames(frames, px, TrackerSettings(snapshots=False), bit_depth=bit_depth)
    return t, t.process_frames(frames, fps=4000.0) + t.flush()


def test_a_12_bit_camera_gives_the_8_bit_events(scene):
    s, frames8 = scene
    frames12 = frames8.astype(np.uint16) << 4  # the same light on a 12-bit sensor
    t8, ev8 = _track(frames8, s.pixel_size_um)
    t12, ev12 = _track(frames12, s.pixel_size_um, bit_depth=12)
    assert t12.threshold == 16 * t8.threshold and t12.low_contrast == 16 * t8.low_contrast
    assert len(ev8) >= 10 and len(ev12) == len(ev8)
    same_crops = 0
    for a, b in zip(ev8, ev12):
        assert b.first_crop.dtype == np.uint8 and b.last_crop.dtype == np.uint8
        # the same grey levels (a crop a frame later where a centroid crosses a frame apart)
        assert abs(float(b.first_crop.mean()) - float(a.first_crop.mean())) < 3.0
        same_crops += np.array_equal(a.first_crop, b.first_crop) and np.array_equal(a.last_crop, b.last_crop)
        assert int(a.quality) == int(b.quality)
        # the background model rounds at its own grey levels: sub-grey-level differences only
        for k in ("di", "transit_time_ms", "v_max_mm_s", "area_um", "exit_time_ms"):
            assert b.features[k] == pytest.approx(a.features[k], rel=1e-2, abs=1e-3), k
    assert same_crops >= 0.8 * len(ev8)


def test_without_its_bit_depth_a_12_bit_camera_is_read_as_16_bit_and_says_so(scene, caplog):
    # the frames' dtype says 16 bits: thresholds 256x an 8-bit image's find nothing in 12-bit
    # values, which is why the pipeline passes the camera's bit depth; the tracker warns
    s, frames8 = scene
    with caplog.at_level("WARNING", logger="tracking.tracker"):
        _, ev = _track(frames8.astype(np.uint16) << 4, s.pixel_size_um)
    assert ev == []
    assert any("under an eighth (8192) of the 16-bit range" in r.getMessage() and "--bit-depth" in r.getMessage()
               for r in caplog.records)


def test_a_12_bit_tiff_recording_is_tracked_once_its_bit_depth_is_given(scene, tmp_path):
    import cv2

    from acquisition.replay import ReplayCamera, ReplaySettings
    from app.offline import track_camera
    from mimlsort.errors import ConfigError

    s, frames8 = scene
    path = tmp_path / "twelve.tif"
    assert cv2.imwritemulti(str(path), list(frames8[:600].astype(np.uint16) << 4))
    settings = ReplaySettings(path=str(path), pixel_size_um=s.pixel_size_um, fps=4000.0, bit_depth=12)
    with ReplayCamera(settings) as cam:
        assert cam.info.bit_depth == 12
        res = track_camera(cam)
    _, ev8 = _track(frames8[:600], s.pixel_size_um)
    assert len(ev8) >= 3 and len(res.events) == len(ev8)
    with pytest.raises(ConfigError, match=r"camera\.replay\.bit_depth: is 12, but .* holds uint8 frames"):
        assert cv2.imwritemulti(str(tmp_path / "eight.tif"), list(frames8[:10]))
        with ReplayCamera(ReplaySettings(path=str(tmp_path / "eight.tif"), pixel_size_um=0.5, fps=1000.0,
                                         bit_depth=12)) as cam:
            cam.info  # noqa: B018


def test_a_bit_depth_beyond_the_frames_dtype_is_refused(scene):
    from mimlsort.errors import ConfigError

    s, frames8 = scene
    with pytest.raises(ConfigError, match="bit_depth"):
        Tracker.from_frames(frames8[:64], s.pixel_size_um, bit_depth=12)


def _twelve_bit_replay(scene, tmp_path, output: dict):
    """A run replaying the scene's first 600 frames as a 12-bit camera's (shifted up to 16 bits)."""
    import cv2

    from app.config import config_from_mapping

    s, frames8 = scene
    path = tmp_path / "twelve.tif"
    assert cv2.imwritemulti(str(path), list(frames8[:600].astype(np.uint16) << 4))
    return config_from_mapping({
        "camera": {"backend": "replay", "replay": {"path": str(path), "fps": 4000.0, "bit_depth": 12,
                                                   "pixel_size_um": s.pixel_size_um}},
        "model": {"path": "none"}, "output": {"folder": str(tmp_path / "out"), "report": False, **output},
    })


def test_a_12_bit_replay_through_the_pipeline_warns_of_nothing(scene, tmp_path, caplog):
    # the pipeline's kernel warm-up built a tracker on a black 16-bit frame, which warned that the
    # source's grey levels look like an eighth of its range on every 12- or 16-bit run
    from app.session import build_run

    cfg = _twelve_bit_replay(scene, tmp_path, {})
    with caplog.at_level("WARNING"):
        with build_run(cfg, lossless=True) as run:
            assert run.wait(120)
    assert run.status().cells >= 3
    assert "range" not in caplog.text, caplog.text


def test_the_raw_recording_of_a_12_bit_camera_says_12_bit_and_replays_as_it_ran(scene, tmp_path):
    # the run gave the recorder no bit depth, so the raw recording said 16 (its dtype's): replayed,
    # its thresholds were scaled for 16 bits and the audit's 12-bit run of 38 cells gave 0
    from dclab.rtdc_dataset.check import check_dataset

    from acquisition.replay import ReplayCamera, ReplaySettings
    from app.session import build_run

    cfg = _twelve_bit_replay(scene, tmp_path, {"record_raw": True, "write_events": False})
    with build_run(cfg, lossless=True) as run:
        assert run.wait(120)
    assert check_dataset(run.raw_path)[0] == []
    with ReplayCamera(ReplaySettings(path=str(run.raw_path))) as cam:
        assert cam.info.bit_depth == 12


def test_frames_brighter_than_the_stated_bit_depth_are_refused_naming_the_frame(tmp_path):
    # a 16-bit TIFF replayed with --bit-depth 12 was taken as 12-bit: thresholds 16x too low
    import cv2

    from acquisition.replay import ReplayCamera, ReplaySettings
    from mimlsort.errors import DataFormatError

    frames = np.full((80, 32, 48), 1000, np.uint16)
    frames[70, 5, 7] = 40000
    path = tmp_path / "sixteen.tif"
    assert cv2.imwritemulti(str(path), list(frames))
    played = []
    with ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=1000.0, bit_depth=12)) as cam:
        cam.start()
        with pytest.raises(DataFormatError, match=r"sixteen\.tif: frame 70: grey level 40000 is above the 12-bit "
                                                  r"range \(0\.\.4095\) that camera\.replay\.bit_depth \(--bit-depth\) states"):
            while (frame := cam.read(0.1)) is not None:
                played.append(frame.frame_id)
    # the frames before the bad one are played (its 64-frame read block was refused whole before)
    assert played == list(range(70))
    from acquisition.frame import FrameRing

    with ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=1000.0, bit_depth=12)) as cam:
        cam.start()
        ring = FrameRing(128, 32, 48, np.uint16)
        with pytest.raises(DataFormatError, match=r"frame 70: grey level 40000"):
            while cam.grab_many_into(ring, 256, 0.5) or not cam.exhausted:
                pass
        assert ring.written == 70 and int(ring.frame_ids[69]) == 69
    # the same from a recording's own user:bit depth
    import h5py

    rec = tmp_path / "rec.rtdc"
    with h5py.File(rec, "w") as f:
        f["events/image"] = frames
        f.attrs.update({"imaging:pixel size": 0.5, "imaging:frame rate": 1000.0, "user:bit depth": 12})
    with ReplayCamera(ReplaySettings(path=str(rec))) as cam:
        cam.start()
        with pytest.raises(DataFormatError, match=r"rec\.rtdc: frame 70: grey level 40000 .* the file's user:bit depth"):
            while cam.read(0.1) is not None:
                pass
    # within the range: played
    frames[70, 5, 7] = 4095
    assert cv2.imwritemulti(str(path), list(frames))
    with ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=1000.0, bit_depth=12)) as cam:
        cam.start()
        assert sum(1 for _ in iter(lambda: cam.read(0.1), None)) == 80
