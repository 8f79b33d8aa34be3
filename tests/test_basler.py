"""The basler backend on pylon's own camera emulator (transport layer ``BaslerCamEmu``, no network
discovery): settings as data, generic features, fault injection with the emulator's forced failed
buffers and its device-removal callback, drop accounting against the emulator's own statistics,
and end to end: a simulated channel played by the emulator from PNG files, tracked, and compared
with the simulator's truth."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYLON_CAMEMU", "1")  # before pypylon is imported anywhere
if importlib.util.find_spec("pypylon") is None:  # not importorskip: see acquisition.basler._pylon
    pytest.skip("pypylon not installed (mimlsort[basler])", allow_module_level=True)

from acquisition.basler import EMULATOR, BaslerCamera, list_devices  # noqa: E402
from acquisition.camera import CameraState  # noqa: E402
from acquisition.frame import FrameRing  # noqa: E402
from mimlsort.errors import ConfigError, DataFormatError, DeviceError, StateError  # noqa: E402

SERIAL = "0815-0000"


def emu(**kw) -> BaslerCamera:
    s = {"transport": EMULATOR, "width": 256, "height": 96, "exposure_us": 100.0, "fps": 2000.0, "buffers": 16}
    s.update(kw)
    return BaslerCamera(s)


def emu_run_config(tmp_path, basler: dict, seconds: float, **output):
    """A run of the emulator's test image with the channel placed by hand (it shows none)."""
    from app.config import config_from_mapping

    return config_from_mapping({
        "camera": {"backend": "basler", "pixel_size_um": 0.5,
                   "basler": {"transport": EMULATOR, "width": 256, "height": 96, "fps": 500.0, **basler}},
        "tracking": {"geometry": {"constriction_start_um": 40.0, "constriction_end_um": 80.0,
                                  "channel_top_um": 5.0, "channel_bottom_um": 40.0}},
        "model": {"path": "none"}, "autostop": {"seconds": seconds},
        "output": {"folder": str(tmp_path), "report": False, **output},
    })


def test_settings_are_validated_with_their_key():
    with pytest.raises(ConfigError, match=r"camera\.basler\.buffers"):
        BaslerCamera({"buffers": 2})
    with pytest.raises(ConfigError, match=r"camera\.basler\.no_such"):
        BaslerCamera({"no_such": 1})
    with pytest.raises(ConfigError, match=r"camera\.basler\.strategy"):
        BaslerCamera({"strategy": "fastest"})
    # named by the setting, not by the GenICam feature behind it (was camera.basler.TriggerSource,
    # ...ExposureTimeAbs: must be a number, got inf — after `config --check` had said "valid")
    with pytest.raises(ConfigError, match=r"camera\.basler\.fps: must be a finite number"):
        BaslerCamera({"fps": float("inf")})
    with pytest.raises(ConfigError, match=r"camera\.basler\.trigger: must be one of .*Line9.*TriggerSource"):
        emu(trigger="Line9").open()


def test_devices_are_listed_without_network_discovery():
    found = list_devices(network=False)
    emulated = [d for d in found if d.transport == EMULATOR]
    assert [d.serial for d in emulated][:1] == [SERIAL]
    assert all(d.transport != "BaslerGigE" for d in found)


def test_cli_lists_the_emulator(capsys):
    from app.cli import main

    assert main(["cameras", "--backend", "basler"]) == 0
    out = capsys.readouterr().out
    assert SERIAL in out and EMULATOR in out


def test_device_selection_by_serial_and_index():
    with emu(serial=SERIAL) as cam:
        assert cam.info.serial == SERIAL
    with pytest.raises(DeviceError, match="nope"):
        emu(serial="nope").open()
    with pytest.raises(DeviceError, match="index"):
        emu(index=7).open()


@pytest.mark.parametrize("fmt, dtype, bits", [("Mono8", "uint8", 8), ("Mono12", "uint16", 12)])
def test_roi_offsets_and_pixel_formats(fmt, dtype, bits):
    with emu(pixel_format=fmt, width=128, height=64, offset_x=32, offset_y=16) as cam:
        info = cam.info
        assert (info.width, info.height, info.dtype, info.bit_depth) == (128, 64, dtype, bits)
        assert (cam.get_feature("OffsetX"), cam.get_feature("OffsetY")) == (32, 16)
        cam.start()
        f = cam.read(timeout_s=2.0)
        cam.stop()
    assert f.image.shape == (64, 128) and f.image.dtype == np.dtype(dtype)
    assert 0 < int(f.image.max()) < 2**bits


def test_settings_the_camera_cannot_take_are_said_and_what_it_took_is_described(caplog):
    # a 5000 px width opened as 4096, an exposure of 10 µs ran at 100 µs: the only sign was an
    # INFO line "(4096x96 uint8)" or a later geometry error, and the exposure was in no file
    import logging

    with caplog.at_level(logging.WARNING, logger="acquisition"):
        with emu(width=5000, offset_y=5000, exposure_us=10.0) as cam:
            info = cam.info
            assert info.width == cam.get_feature("Width") < 5000
            assert info.offset == (0, cam.get_feature("OffsetY")) and 0 < info.offset[1] < 5000
            assert info.exposure_us == cam.get_feature("ExposureTimeAbs") >= 100.0
    text = caplog.text
    for key, asked in (("width", "5000"), ("offset_y", "5000"), ("exposure_us", "10")):
        assert f"camera.basler.{key}: the basler camera {SERIAL} took" in text and f"for the {asked} asked" in text, text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="acquisition"):
        with emu(offset_x=16, offset_y=8) as cam:  # what it can take draws no warning
            assert cam.info.offset == (16, 8) and cam.info.exposure_us == 100.0
    assert "took" not in caplog.text


def test_a_run_records_the_cameras_offset_exposure_and_clock(tmp_path):
    # the file said "camera clock" for host arrival times, ROI position 0,0 for an offset ROI and
    # the 2 µs placeholder as the flash duration while the camera exposed for 100 µs
    import h5py

    from app.session import build_run

    cfg = emu_run_config(tmp_path, {"offset_x": 16, "offset_y": 8, "exposure_us": 100.0}, 0.5, record_raw=True)
    with build_run(cfg) as run:
        assert run.wait(60)
    for path in (run.events_path, run.raw_path):
        with h5py.File(path, "r") as f:
            a = f.attrs
            assert (a["imaging:roi position x"], a["imaging:roi position y"]) == (16, 8), path
            assert a["imaging:flash duration"] == pytest.approx(100.0), path
            assert "flash duration" not in str(a.get("user:setup placeholders", ""))
    with h5py.File(run.events_path, "r") as f:
        assert f.attrs["user:frame times"] != "camera clock"
    from acquisition.replay import ReplayCamera

    with ReplayCamera({"path": str(run.raw_path)}) as rec:  # and a replay of it writes them again
        assert rec.info.offset == (16, 8)


def test_a_run_file_says_which_settings_the_camera_took_otherwise(tmp_path):
    # the file's configuration said offset_x = 5000 and exposure_us = 10, its attributes ROI
    # position 3840 and flash 100 µs, and only the process's log said why
    from app.session import build_run
    from app.storage import read_events

    cfg = emu_run_config(tmp_path, {"offset_x": 5000, "exposure_us": 10.0}, 0.3)
    with build_run(cfg) as run:
        assert run.wait(60)
    _, stored = read_events(run.events_path)
    text = "".join(stored.run_log)
    for key, got, asked in (("offset_x", 3840, 5000), ("exposure_us", 100, 10)):
        assert f"camera.basler.{key}: the basler camera {SERIAL} took {got} for the {asked} asked" in text, text
    assert "camera.basler.fps" not in text  # what it could take is not said


def test_emulator_runs_on_host_time_and_says_so():
    with emu() as cam:
        assert cam.info.camera_clock is False
        assert "emulator" in cam.clock_note
        cam.start()
        t0 = time.monotonic_ns()
        f = cam.read(timeout_s=2.0)
        cam.stop()
    assert abs(f.timestamp_ns - t0) < 5e9  # host monotonic, not the emulator's TimeStamp 0
    with pytest.raises(DeviceError, match="TimeStamp 0"):
        emu(timestamps="camera").open()


def test_frame_counter_clock_follows_the_frame_ids():
    with emu(timestamps="frame_counter", fps=1000.0) as cam:
        assert cam.info.camera_clock is True
        ring = cam.info.make_ring(16)
        cam.start()
        for _ in range(5):
            assert cam.grab_into(ring, timeout_s=2.0)
        cam.stop()
    np.testing.assert_array_equal(ring.timestamps_ns[:5], ring.frame_ids[:5] * 1_000_000)


def test_apply_clamps_and_reports_what_is_in_effect():
    with emu() as cam:
        got = cam.apply({"exposure_us": 50.0, "fps": 1e6, "Gain": 3})
        assert got["exposure_us"] == cam.get_feature("ExposureTimeAbs") >= 100.0  # the emulator's minimum
        assert got["fps"] == cam.get_feature("AcquisitionFrameRateAbs") < 1e6
        assert got["Gain"] == pytest.approx(cam.get_feature("Gain"))
        assert cam.apply({"width": 200}) == {"width": 200} and cam.info.width == 200
        with pytest.raises(ConfigError, match=r"camera\.basler\.NoSuchFeature"):
            cam.apply({"NoSuchFeature": 1})
        with pytest.raises(ConfigError, match="Mono8"):
            cam.apply({"pixel_format": "Mono7"})
        cam.start()
        with pytest.raises(StateError, match="width"):
            cam.apply({"width": 128})
        assert cam.apply({"exposure_us": 200.0})["exposure_us"] == 200.0  # live features stay adjustable
        cam.stop()


def test_generic_features_drive_a_camera_output_line():
    with emu() as cam:
        cam.set_feature("LineSelector", "Line2")
        assert cam.set_feature("LineMode", "Output") == "Output"
        assert cam.set_feature("LineSource", "UserOutput1") == "UserOutput1"
        cam.set_feature("UserOutputSelector", "UserOutput1")
        assert cam.set_feature("UserOutputValue", True) is True
        assert cam.get_feature("UserOutputValue") is True
        with pytest.raises(ConfigError, match="LineMode"):
            cam.set_feature("LineMode", "Sideways")


def test_forced_failed_buffers_are_counted_and_show_as_frame_id_gaps():
    with emu(fps=1000.0, strategy="one_by_one") as cam:
        cam.set_feature("ForceFailedBufferCount", 3)
        ring = cam.info.make_ring(64)
        cam.start()
        assert cam.grab_into(ring, timeout_s=2.0)
        cam.set_feature("ForceFailedBuffer")
        for _ in range(20):
            assert cam.grab_into(ring, timeout_s=2.0)
        cam.stop()
        stats = cam.statistics_at_stop
    assert cam.failed_buffers == 3 == stats["failed_buffer_count"]
    assert ring.camera_dropped == 3  # their block ids are missing from the ring
    assert "incomplete" in cam.last_error


def test_every_lost_frame_is_accounted_against_the_emulator_statistics():
    """A grab thread too slow for the camera (camera-side skipped frames) and a ring reader too
    slow for the ring (ring-side missed frames): together with what the reader got, they add up
    to the frames the emulator produced."""
    with emu(fps=5000.0, buffers=8, strategy="latest") as cam:
        ring = FrameRing(16, 96, 256, np.uint8)
        reader = ring.reader("slow", from_start=True)
        cam.start()
        for k in range(60):
            assert cam.grab_into(ring, timeout_s=2.0)
            time.sleep(0.002)  # far slower than 5,000 fps: pylon's queue overflows
            if k % 20 == 19:
                reader.release(reader.read(4))  # and the reader keeps only a little of it
        cam.set_feature("AcquisitionStop")  # stop the sensor, then take what it already sent
        while cam.grab_into(ring, timeout_s=0.2):
            pass
        cam.stop()
        total = cam.statistics_at_stop["total_buffer_count"]
    reader.release(reader.read(ring.capacity))
    first_id = int(ring.newest().frame_id) - (ring.written - 1) - ring.camera_dropped
    assert cam.skipped_images > 0 and reader.missed > 0
    assert ring.camera_dropped == cam.skipped_images + cam.failed_buffers
    assert cam.skipped == 0  # nothing for a pipeline to add: the block-id gaps hold them all
    assert reader.consumed + reader.missed == ring.written
    assert reader.consumed + reader.missed + ring.camera_dropped + first_id + cam.discarded_at_stop == total


def test_a_grab_pylon_ends_by_itself_resumes_and_its_frames_count_as_drops():
    """pylon stops grabbing when a signalled result cannot be retrieved (once in 10^4 to 10^5
    frames on the emulator); the backend grabs again without reopening the device, and the frames that
    session held become a frame-id gap, so the emulator's statistics still add up."""
    with emu(fps=2000.0, buffers=128, strategy="latest") as cam:  # room for pylon's 50 queued buffers
        ring = FrameRing(128, 96, 256, np.uint8)
        cam.start()
        for _ in range(10):
            assert cam.grab_into(ring, timeout_s=2.0)
        time.sleep(0.02)  # ~40 frames wait in pylon's output queue
        cam._cam.StopGrabbing()  # what pylon does itself after such a failed retrieval
        for _ in range(10):
            assert cam.grab_into(ring, timeout_s=2.0)  # no timeout: it grabs again within the wait
        cam.set_feature("AcquisitionStop")
        while cam.grab_into(ring, timeout_s=0.2):
            pass
        cam.stop()
        total = cam.statistics_at_stop["total_buffer_count"]
    assert cam.grab_restarts == 1 and cam.reconnects == 0
    assert ring.camera_dropped == cam.lost_at_restart + cam.skipped_images
    assert cam.lost_at_restart > 0  # the frames that waited in the output queue
    assert cam.cancelled_at_restart == 50  # MaxNumQueuedBuffer empty buffers, cancelled
    assert ring.written >= 20 and total >= ring.written + cam.lost_at_restart + 50  # both sessions
    first_id = int(ring.newest().frame_id) - (ring.written - 1) - ring.camera_dropped
    assert ring.written + ring.camera_dropped + first_id + cam.discarded_at_stop + cam.cancelled_at_restart == total


def test_a_grab_pylon_ends_while_draining_after_acquisition_stop_is_not_restarted():
    with emu(fps=2000.0, buffers=128, strategy="latest") as cam:
        ring = FrameRing(128, 96, 256, np.uint8)
        cam.start()
        for _ in range(10):
            assert cam.grab_into(ring, timeout_s=2.0)
        time.sleep(0.02)
        cam.set_feature("AcquisitionStop")  # the sensor stops; what it sent is to be drained
        cam._cam.StopGrabbing()  # and pylon ends the session meanwhile
        assert not cam.grab_into(ring, timeout_s=0.5)  # the drain ends: the sensor is not started again
        cam.stop()
        total = cam.statistics_at_stop["total_buffer_count"]
    assert cam.grab_restarts == 0 and cam.discarded_at_stop > 0 and cam.cancelled_at_restart == 50
    first_id = int(ring.newest().frame_id) - (ring.written - 1) - ring.camera_dropped
    assert ring.written + ring.camera_dropped + first_id + cam.discarded_at_stop + cam.cancelled_at_restart == total


def test_a_frame_of_another_size_is_refused_naming_what_arrived():
    with emu(fps=1000.0) as cam:
        cam.set_feature("Width", 128)  # behind the backend's back: the ring was made for 256
        cam.start()
        with pytest.raises(DataFormatError, match=r"128x96 Mono8 .*expected 256x96"):
            cam.read(timeout_s=2.0)
        cam.stop()


@pytest.mark.parametrize("fmt", ["bmp", "png", "tif"])
def test_image_files_play_pixel_exact_without_a_frame_rate_limit(fmt, tmp_path):
    pytest.importorskip("cv2")
    from app.bench_camera import write_images

    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (6, 96, 256), dtype=np.uint8)
    folder = write_images(frames, tmp_path / fmt, fmt)
    cam = emu(fps=0.0, strategy="one_by_one",
              features={"TestImageSelector": "Off", "ImageFilename": str(folder), "ImageFileMode": "On"})
    with cam:
        assert cam.get_feature("AcquisitionFrameRateEnable") is False  # free run: the bench's 5,000+ fps
        cam.start()
        got = [cam.read(timeout_s=2.0) for _ in range(8)]
        cam.stop()
    for f in got:  # the folder plays in name order, from the first file, and wraps around
        np.testing.assert_array_equal(f.image, frames[(f.frame_id - got[0].frame_id) % len(frames)])
    with pytest.raises(ConfigError, match="image_format"):
        write_images(frames, tmp_path / "x", "jpg")


def test_block_ids_are_unwrapped_and_restarts_are_not_drops():
    cam = BaslerCamera()
    ring = FrameRing(8, 2, 2, np.uint8)
    cam._wrap = 65535  # GigE Vision: 16-bit ids 1..65535, 0 reserved
    for raw in (65533, 65535, 1, 2):  # 65534 lost; 65535 -> 1 is no gap
        ring.push(np.zeros((2, 2), np.uint8), cam._frame_id(raw), 0)
    assert ring.camera_dropped == 1
    cam._last_raw = None  # what a start or a reconnect does: the camera restarts its counter
    ring.push(np.zeros((2, 2), np.uint8), cam._frame_id(0), 0)
    assert ring.camera_dropped == 1
    assert list(ring.frame_ids[:5]) == [65533, 65535, 65536, 65537, 65538]


def test_reconnects_after_the_device_is_removed():
    with emu(trigger="Software", reconnect_attempts=2, reconnect_delay_s=0.0) as cam:
        cam.start()
        cam.software_trigger()
        f1 = cam.read(timeout_s=2.0)
        cam.set_feature("FirePnPCallback")  # the emulator's device-removal notification
        assert cam.read(timeout_s=0.2) is None  # the wait times out, finds the device gone, reconnects
        assert cam.reconnects == 1 and cam.state is CameraState.ACQUIRING
        cam.software_trigger()
        f2 = cam.read(timeout_s=2.0)
        cam.stop()
    assert f1 is not None and f2 is not None and f2.frame_id > f1.frame_id


def test_a_camera_that_stays_gone_raises_device_error(monkeypatch):
    with emu(trigger="Software", reconnect_attempts=2, reconnect_delay_s=0.0) as cam:
        cam.start()
        cam.set_feature("FirePnPCallback")
        monkeypatch.setenv("PYLON_CAMEMU", "0")  # and the emulator enumerates no device any more
        with pytest.raises(DeviceError, match="gone .* 2 reconnect attempt"):
            cam.read(timeout_s=0.2)
    assert cam.state is CameraState.CLOSED and cam.reconnects == 0


def test_simulated_channel_played_by_the_emulator_is_tracked_to_the_truth(tmp_path, request):
    synthetic = pytest.importorskip("acquisition.synthetic", reason="acquisition.synthetic not written yet")
    offline = pytest.importorskip("app.offline", reason="app.offline not written yet")
    validate = pytest.importorskip("app.validate", reason="app.validate not written yet")
    pytest.importorskip("cv2")
    from app.bench_camera import write_pngs

    fps, n = 2000.0, 1000
    settings = synthetic.SyntheticSettings(width=256, height=96, fps=fps, duration_s=n / fps, seed=3,
                                           cells_per_second=80.0)
    frames = np.empty((n, 96, 256), np.uint8)
    with synthetic.SyntheticCamera(settings) as sim:
        sim.start()
        for k in range(n):
            frames[k] = sim.read(timeout_s=1.0).image
        sim.stop()
    with synthetic.SyntheticCamera(settings) as sim:  # the same seed: the same frames and truth
        direct = offline.track_camera(sim)
        truth = list(sim.truth)
    shm = Path("/dev/shm")
    folder = write_pngs(frames, Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path / "frames")
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    cam = emu(fps=fps, timestamps="frame_counter", strategy="one_by_one", pixel_size_um=settings.pixel_size_um,
              features={"TestImageSelector": "Off", "ImageFilename": str(folder), "ImageFileMode": "On"})
    with cam:
        res = offline.track_camera(cam, max_frames=n)
    if cam.grab_restarts:  # about once in 10^4-10^5 frames; the emulator then plays from the first file
        pytest.skip("pylon ended the grab session mid-run: the emulator's playback restarted")
    assert res.frames == n and cam.failed_buffers == 0
    frame_ms = 1000.0 / fps
    m = validate.match_events(res.events, truth, run_ms=n * frame_ms, frame_ms=frame_ms)
    assert m.complete_truth >= 5
    assert m.detection_rate >= 0.9 and m.swaps == 0
    # the same pixels at the same times: the emulator path measures what the direct path measures
    assert len(res.events) == len(direct.events)
    np.testing.assert_allclose([e.features["di"] for e in res.events], [e.features["di"] for e in direct.events])


def test_bench_accounts_for_every_frame():
    pytest.importorskip("tracking.tracker")
    from app.bench_camera import bench_camera

    r = bench_camera("basler", seconds=0.5, images=300)
    assert r["frame_rate_limit"] == "off (free run)" and r["images"] == "300 bmp files"
    assert r["frames_delivered"] > 0 and r["frames_tracked"] + r["ring_missed"] == r["frames_delivered"]
    assert r["unexplained"] == 0 and r["ring_unexplained"] == 0
    assert r["camera_dropped"] >= r["skipped_images"] + r["lost_at_restart"]
    assert r["cancelled_at_restart"] <= 50 * r["grab_restarts"]  # MaxNumQueuedBuffer per restart
    assert r["cpu_grab_us_per_frame"] > 0 and r["cpu_tracker_us_per_frame"] > 0


def test_a_lost_camera_ends_the_pipeline_errored(monkeypatch):
    pipeline = pytest.importorskip("app.pipeline", reason="app.pipeline not written yet")
    cam = emu(trigger="Software", reconnect_attempts=1, reconnect_delay_s=0.0, pixel_size_um=0.5)
    run = pipeline.Pipeline(cam, pixel_size_um=0.5)
    run.start()
    try:
        cam.set_feature("FirePnPCallback")  # removal: the camera loop's next timeout finds it
        monkeypatch.setenv("PYLON_CAMEMU", "0")
        assert run.wait(10.0)
    finally:
        run.stop()
        run.wait(10.0)
    assert run.finish_reason is pipeline.FinishReason.ERRORED
    assert "gone" in run.message and cam.state is CameraState.CLOSED


def test_a_camera_that_sends_no_frame_is_said(tmp_path, monkeypatch, caplog):
    # trigger = "Software" and nobody triggering: every status line said "in 0fps", the run ended
    # "completed" with an empty file, and nothing told the operator why
    import logging

    import app.pipeline as pipeline
    from app.config import config_from_mapping
    from app.session import build_run

    monkeypatch.setattr(pipeline, "NO_FRAME_WARN_S", 1.0)
    cfg = config_from_mapping({
        "camera": {"backend": "basler", "pixel_size_um": 0.5,
                   "basler": {"transport": EMULATOR, "width": 256, "height": 96, "fps": 500.0, "trigger": "Software"}},
        "model": {"path": "none"}, "autostop": {"seconds": 2.0},
        "output": {"folder": str(tmp_path), "report": False},
    })
    with caplog.at_level(logging.WARNING, logger="app.pipeline"):
        with build_run(cfg) as run:
            assert run.wait(60)
    assert run.status().frames_in == 0
    assert "no frame from the basler camera for 1 s: is it waiting for a trigger (camera.basler.trigger)" in caplog.text


def test_a_camera_lost_and_reopened_mid_run_is_in_the_status_and_the_file(tmp_path):
    # the backend reconnected, and only the process's log said so: the file showed a hole in the
    # events with no drop, no counter and no log line
    from app.session import build_run
    from app.storage import read_events

    cfg = emu_run_config(tmp_path, {"reconnect_attempts": 2, "reconnect_delay_s": 0.0}, 4.0)
    with build_run(cfg) as run:
        deadline = time.monotonic() + 30
        while run.status().frames_in < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        cam = run.pipeline.camera
        cam._cam.AcquisitionStop.Execute()  # a removed camera sends nothing more
        cam.set_feature("FirePnPCallback")  # the emulator's device removal
        assert run.wait(60)
    st = run.status()
    assert st.camera_reconnects == 1 and "camera reconnects 1" in st.line(), st.line()
    _, stored = read_events(run.events_path)
    assert stored.counters["camera_reconnects"] == 1
    assert "camera was lost and reopened (reconnect 1)" in "".join(stored.run_log).replace("\n", "")


def test_frames_skipped_before_the_first_one_are_not_counted_as_gaps():
    # a grab thread that starts late (a loaded host): pylon reports the frames its queue dropped
    # before the first one with it; they leave no gap in the ring (the first id says they went
    # by), and counted as skipped images they made camera_dropped and skipped_images differ
    with emu(fps=5000.0, buffers=8, strategy="latest") as cam:
        ring = FrameRing(64, 96, 256, np.uint8)
        cam.start()
        time.sleep(0.02)  # ~100 frames into a queue of 8
        for _ in range(20):
            assert cam.grab_into(ring, timeout_s=2.0)
        cam.set_feature("AcquisitionStop")
        while cam.grab_into(ring, timeout_s=0.2):
            pass
        cam.stop()
        total = cam.statistics_at_stop["total_buffer_count"]
    first_id = int(ring.newest().frame_id) - (ring.written - 1) - ring.camera_dropped
    assert cam.skipped_before_first > 0 and first_id >= cam.skipped_before_first
    assert ring.camera_dropped == cam.skipped_images + cam.failed_buffers
    assert ring.written + ring.camera_dropped + first_id + cam.discarded_at_stop == total


def test_a_serial_no_camera_has_names_its_key_and_the_configuration_file(tmp_path):
    """A camera refused at the run's start said its key ("camera.basler.serial: no Basler camera
    matches …") but not the file that set it, as the run's configuration errors do."""
    from app.daemon import run_daemon
    from mimlsort.errors import DeviceSettingError

    run_toml = tmp_path / "RUN.toml"
    cfg = emu_run_config(tmp_path / "out", {"serial": "nope"}, 0.2)
    with pytest.raises(DeviceSettingError) as raised:
        run_daemon(cfg, config_file=run_toml)
    assert str(raised.value).startswith("camera.basler.serial: no Basler camera matches serial='nope' on "
                                        f"{EMULATOR} (camera.basler.transport) (found: {SERIAL})"), raised.value
    assert str(raised.value).endswith(f"(in {run_toml})"), raised.value


def test_no_camera_of_the_backend_attached_names_the_setting_that_chose_it():
    """Nothing asked for a particular camera and none attached: "no Basler camera matches any on
    any transport" named no key. A real bus without cameras cannot be had here without GigE
    discovery broadcasting from the test (and the emulator's transport is missing without
    PYLON_CAMEMU), so the empty listing is handed to the selection itself."""
    from acquisition.basler import BaslerSettings
    from acquisition.vendor import select_device
    from mimlsort.errors import DeviceSettingError

    with pytest.raises(DeviceSettingError) as raised:
        select_device([], "", BaslerSettings(), serial_of=str, name_of=str, backend="basler", what="Basler camera",
                      where=" on any transport")
    assert raised.value.key == "camera.backend"
    assert str(raised.value) == ("camera.backend: 'basler', but no Basler camera is attached on any transport (is it "
                                 "connected, powered, and not open already, in this program or another?)")
    # a reconnect asks by the serial it lost, which no setting named
    with pytest.raises(DeviceError) as raised:
        select_device([], "0815", BaslerSettings(), serial_of=str, name_of=str, backend="basler", what="Basler camera")
    assert not isinstance(raised.value, DeviceSettingError) and str(raised.value).startswith("no Basler camera matches")
