"""``camera.flow_direction``: a channel filmed with the cells moving right to left, top to bottom
or bottom to top is turned on its way into the ring, and tracks exactly as the same channel filmed
left to right; the files say so, and a turned recording is not turned twice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from acquisition.camera import FLOW_DIRECTIONS
from acquisition.replay import ReplayCamera, ReplaySettings
from acquisition.synthetic import SyntheticCamera, SyntheticSettings
from mimlsort.errors import ConfigError, MimlsortError

PX, FPS = 0.5, 4000.0
TURNED = [d for d in FLOW_DIRECTIONS if d != "left-to-right"]


@pytest.fixture(scope="module")
def channel():
    """Frames of a simulated channel, cells left to right (RT-DC's way)."""
    with SyntheticCamera(SyntheticSettings(duration_s=0.25, fps=FPS, cells_per_second=120.0, seed=11)) as cam:
        cam.start()
        frames = []
        while (f := cam.read(0.1)) is not None:
            frames.append(f.image)
    return np.stack(frames)


def filmed(frames: np.ndarray, direction: str) -> np.ndarray:
    """The frames as a camera mounted so that cells move ``direction`` would have taken them."""
    return np.ascontiguousarray(np.rot90(frames, -FLOW_DIRECTIONS[direction], axes=(1, 2)))


def tiff(path, frames) -> str:
    assert cv2.imwritemulti(str(path), list(frames))
    return str(path)


def replay(path, direction="left-to-right") -> ReplayCamera:
    return ReplayCamera(ReplaySettings(path=path, pixel_size_um=PX, fps=FPS), flow_direction=direction)


@pytest.mark.parametrize("direction", TURNED)
def test_turned_frames_reach_the_ring_as_the_channel_filmed_left_to_right(tmp_path, channel, direction):
    cam_frames = filmed(channel, direction)
    assert direction == "right-to-left" or cam_frames.shape[1:] == channel.shape[:0:-1]
    with replay(tiff(tmp_path / "rec.tif", cam_frames), direction) as cam:
        assert (cam.info.height, cam.info.width) == channel.shape[1:]
        assert (cam.sensor_info.height, cam.sensor_info.width) == cam_frames.shape[1:]
        ring = cam.info.make_ring(1024)
        cam.start()
        n = 0
        while (got := cam.grab_many_into(ring, 64, 0.5)) or not cam.exhausted:
            n += got
        assert n == len(channel)
        np.testing.assert_array_equal(ring.images[:n], channel)


def _events(path, direction="left-to-right") -> np.ndarray:
    from app.offline import events_table, track_camera

    with replay(path, direction) as cam:
        res = track_camera(cam)
    return events_table(res.events)[1]


def test_a_turned_channel_tracks_exactly_as_filmed_left_to_right(tmp_path, channel):
    ref = _events(tiff(tmp_path / "ltr.tif", channel))
    assert (ref[:, 4] == 0).sum() >= 5  # enough whole, unflagged passages to compare
    for direction in TURNED:
        path = tiff(tmp_path / f"{direction}.tif", filmed(channel, direction))
        np.testing.assert_array_equal(_events(path, direction), ref, err_msg=direction)
        # not turned, the same frames are another channel (or none the tracker can use)
        try:
            wrong = _events(path)
        except MimlsortError:
            continue
        assert wrong.shape != ref.shape or not np.array_equal(wrong, ref, equal_nan=True), direction


def test_cells_moving_right_to_left_untold_are_said():
    # a camera turned against the flow, run without camera.flow_direction, gave a few INCOMPLETE
    # events (10 of 29 cells) and nothing said why
    from acquisition.synthetic import render_frames
    from tracking.tracker import Tracker, TrackerSettings

    channel, _ = render_frames(SyntheticSettings(fps=FPS, cells_per_second=120.0, seed=11), 3000)
    said = {}
    for direction in ("left-to-right", "right-to-left"):
        frames = filmed(channel, direction)
        tracker = Tracker.from_frames(frames, PX, TrackerSettings())
        notes = []
        tracker.on_note = notes.append
        tracker.process_frames(frames, fps=FPS)
        tracker.flush()
        said[direction] = [n for n in notes if "flow_direction" in n]
    assert said["left-to-right"] == []
    assert len(said["right-to-left"]) == 1 and "right to left" in said["right-to-left"][0]


def test_the_synthetic_camera_and_an_unknown_direction_are_refused():
    from app.config import config_from_mapping

    with pytest.raises(ConfigError, match=r"camera\.flow_direction.*synthetic"):
        config_from_mapping({"camera": {"flow_direction": "right-to-left"}})
    with pytest.raises(ConfigError, match=r"camera\.flow_direction.*left-to-right.*'up'"):
        config_from_mapping({"camera": {"backend": "replay", "flow_direction": "up"}})
    with pytest.raises(ConfigError, match=r"camera\.flow_direction"):
        ReplayCamera(ReplaySettings(path="x.tif"), flow_direction="sideways")


def test_files_of_a_turned_run_say_so_and_its_recording_is_not_turned_twice(tmp_path, channel):
    import dclab
    from dclab.rtdc_dataset.check import check_dataset

    from app.config import config_from_mapping
    from app.session import build_run

    src = tiff(tmp_path / "btt.tif", filmed(channel, "bottom-to-top"))
    out = tmp_path / "out"
    cfg = config_from_mapping({
        "camera": {"backend": "replay", "flow_direction": "bottom-to-top",
                   "replay": {"path": src, "pixel_size_um": PX, "fps": FPS}},
        "model": {"path": "none"},
        "output": {"folder": str(out), "report": False, "record_raw": True},
    })
    with build_run(cfg) as run:
        assert run.wait(120)
    raw = next(out.glob("*_raw.rtdc"))
    events = run.events_path
    for path in (raw, events):
        viol, _alerts, _info = check_dataset(path)
        assert viol == [], (path.name, viol)
        with dclab.new_dataset(path) as ds:
            assert ds.config["user"]["camera flow direction"] == "bottom-to-top"
            assert ds.config["imaging"]["roi size x"] == channel.shape[2]  # the turned frame, as the images
    with dclab.new_dataset(raw) as ds:
        np.testing.assert_array_equal(ds["image"][:], channel)  # recorded as turned
    with dclab.new_dataset(events) as ds:
        n_cells = len(ds)
        assert n_cells >= 5 and ds["image"][0].shape == channel.shape[1:]

    with pytest.raises(ConfigError, match=r"camera\.flow_direction.*turned already.*bottom-to-top"):
        replay(str(raw), "bottom-to-top").open()
    # replayed as it is, the recording keeps saying how its frames were turned
    again = tmp_path / "again"
    cfg2 = config_from_mapping({
        "camera": {"backend": "replay", "replay": {"path": str(raw)}},
        "model": {"path": "none"},
        "output": {"folder": str(again), "report": False},
    })
    with build_run(cfg2) as run2:
        assert run2.wait(120)
    with dclab.new_dataset(run2.events_path) as ds:
        assert ds.config["user"]["camera flow direction"] == "bottom-to-top"
        assert len(ds) == n_cells


def test_config_check_refuses_turning_a_turned_recording(tmp_path, channel):
    from app.config import config_from_mapping
    from app.session import preflight
    from acquisition.recording import RawRecorder
    from app.storage import RunMeta

    raw = tmp_path / "turned_raw.rtdc"
    meta = RunMeta(pixel_size_um=PX, fps=FPS, roi=channel.shape[:0:-1], flow_direction="right-to-left").setup_attrs()
    with RawRecorder(raw, channel.shape[2], channel.shape[1], "uint8", pixel_size_um=PX, fps=FPS, metadata=meta) as rec:
        rec.write(channel[:8], np.arange(8), np.arange(8) * 250_000)
    cfg = config_from_mapping({"camera": {"backend": "replay", "flow_direction": "right-to-left",
                                          "replay": {"path": str(raw)}}, "model": {"path": "none"}})
    with pytest.raises(ConfigError, match=r"camera\.flow_direction.*turned already"):
        preflight(cfg)
    assert any("turned_raw.rtdc" in c for c in preflight(config_from_mapping(
        {"camera": {"backend": "replay", "replay": {"path": str(raw)}}, "model": {"path": "none"}})))


def test_a_vertical_recording_replayed_untold_is_told_its_flow_and_nothing_else(tmp_path, channel, caplog):
    # before the error that says the cells flow vertically, the run warned "only 0 px of the ROI lie
    # between ... past the constriction": the kernels' warm-up tracker on its placeholder geometry
    import logging

    from app.config import config_from_mapping
    from app.pipeline import FinishReason
    from app.session import build_run

    src = tiff(tmp_path / "ttb.tif", filmed(channel, "top-to-bottom"))
    cfg = config_from_mapping({
        "camera": {"backend": "replay", "replay": {"path": src, "pixel_size_um": PX, "fps": FPS}},
        "model": {"path": "none"},
        "output": {"folder": str(tmp_path / "out"), "report": False},
    })
    with caplog.at_level(logging.INFO), build_run(cfg) as run:
        assert run.wait(120)
    st = run.status()
    assert st.finish_reason == FinishReason.ERRORED and "camera.flow_direction" in st.message, st.message
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said and not [m for m in said if "px of the ROI lie between" in m], said
