"""The genicam backend through harvesters and a real GenTL producer: ``viky.cti`` from the genicam
wheel (Mono8, width/height 100-800, <= 200 fps, no offsets, no timestamps)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("harvesters") is None:  # not importorskip: see acquisition.genicam._quiet_import
    pytest.skip("harvesters not installed (mimlsort[genicam])", allow_module_level=True)

from acquisition.camera import CameraState  # noqa: E402
from acquisition.genicam import GenicamCamera, fit_value, list_devices, viky_cti  # noqa: E402
from mimlsort.errors import BackendUnavailable, ConfigError, DeviceError, StateError  # noqa: E402

CTI = viky_cti()
if CTI is None:
    pytest.skip("the genicam wheel ships no viky.cti here", allow_module_level=True)


def viky(**kw) -> GenicamCamera:
    s = {"cti": CTI, "serial": "1", "width": 256, "height": 128, "fps": 200.0}
    s.update(kw)
    return GenicamCamera(s)


def test_fit_value_clamps_snaps_and_rejects():
    assert fit_value("int", "k", 257, lo=100, hi=800, inc=4) == 256
    assert fit_value("int", "k", 5000, lo=100, hi=802, inc=4) == 800  # onto the grid, not past the max
    assert fit_value("float", "k", 1e6, lo=1.0, hi=200.0) == 200.0
    assert fit_value("bool", "k", 1) is True
    with pytest.raises(ConfigError, match="Mono8"):
        fit_value("enum", "k", "Mono7", symbolics=("Mono8", "RGBa8"))
    with pytest.raises(ConfigError, match="number"):
        fit_value("float", "k", "fast")


def test_producer_lists_its_devices():
    found = list_devices(CTI)
    assert sorted(d.serial for d in found) == ["0", "1", "2"]
    assert all(d.backend == "genicam" and "Viky" in d.model for d in found)


def test_cti_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="no GenTL producer"):  # named, empty: no fallback to viky
        list_devices()
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(__import__("pathlib").Path(CTI).parent))
    assert len(list_devices()) == 3


def test_selection_by_serial_and_errors():
    with viky(serial="2") as cam:
        assert cam.info.serial == "2"
    # the producers asked and the setting that chose them: a wrong .cti looks like an unplugged camera
    with pytest.raises(DeviceError) as raised:
        viky(serial="9").open()
    assert str(raised.value) == (f"camera.genicam.serial: no GenICam device matches serial='9' through {CTI} "
                                 "(camera.genicam.cti) (found serials: 0, 1, 2)")
    with pytest.raises(DeviceError, match=r"^camera\.genicam\.user_name: no GenICam device matches user_name='x'"):
        viky(serial="", user_name="x").open()
    with pytest.raises(ConfigError, match="no such GenTL producer"):
        viky(cti="/nonexistent/x.cti").open()


def test_frames_carry_the_producer_frame_ids():
    with viky() as cam:
        info = cam.info
        assert (info.width, info.height, info.dtype, info.bit_depth) == (256, 128, "uint8", 8)
        assert info.camera_clock is False and "host" in cam.clock_note
        ring = info.make_ring(16)
        cam.start()
        for _ in range(6):
            assert cam.grab_into(ring, timeout_s=2.0)
        cam.stop()
    ids = ring.frame_ids[:6]
    np.testing.assert_array_equal(np.diff(ids), 1)
    assert ring.camera_dropped == 0 and cam.failed_buffers == 0
    assert ring.images[:6].std() > 0


def test_apply_clamps_to_the_producer_limits():
    with viky() as cam:
        got = cam.apply({"fps": 1000.0, "width": 900, "AcquisitionFrameRate": 50.0})
        assert got["fps"] == 200.0 and got["width"] == 800 and got["AcquisitionFrameRate"] == 50.0
        assert cam.info.width == 800
        with pytest.raises(ConfigError, match=r"camera\.genicam\.NoSuchFeature"):
            cam.apply({"NoSuchFeature": 1})
        with pytest.raises(ConfigError, match="pixel_format"):
            viky(pixel_format="Mono7")
        cam.start()
        with pytest.raises(StateError, match="height"):
            cam.apply({"height": 200})
        cam.stop()
        assert cam.get_feature("PixelFormat") == "Mono8"


def test_timeout_returns_none_and_is_counted():
    with viky(fps=1.0) as cam:
        cam.start()
        cam.read(timeout_s=2.0)  # the next frame is a second away
        assert cam.read(timeout_s=0.05) is None
        assert cam.timeouts == 1 and cam.state is CameraState.ACQUIRING
        cam.stop()


def test_offsets_on_a_camera_without_them_are_ignored_with_a_warning(caplog):
    with viky(offset_x=8) as cam:
        assert cam.info.width == 256
    assert "OffsetX" in caplog.text


def test_a_pixel_format_the_camera_lacks_is_named_by_its_setting():
    from mimlsort.errors import ConfigError

    with pytest.raises(ConfigError, match=r"camera\.genicam\.pixel_format: must be one of .*Mono12.*PixelFormat"):
        viky(pixel_format="Mono12").open()


def test_cli_lists_the_producer_devices(capsys):
    from app.cli import main

    assert main(["cameras", "--backend", "genicam", "--cti", CTI]) == 0
    out = capsys.readouterr().out
    assert out.count("genicam") == 3 and "serial=1" in out


def test_camera_timestamps_where_the_device_has_none_fail_loudly():
    with viky(timestamps="camera") as cam:
        assert cam.info.camera_clock is True
        cam.start()
        with pytest.raises(DeviceError, match="timestamps = .host"):
            cam.read(timeout_s=2.0)


def test_a_camera_open_already_is_not_said_to_be_missing_without_a_hint():
    with viky(serial="0"):
        with pytest.raises(DeviceError, match=r"serial='0' through .*viky\.cti \(camera\.genicam\.cti\) \(found "
                                              r"serials: none: is it connected, powered, and not open already"):
            viky(serial="0").open()


def test_a_cti_that_is_no_producer_is_named_by_its_setting(tmp_path):
    # harvesters only logs a producer it cannot load: a document given as the .cti ended in "no
    # GenICam device matches any (... is it connected, powered ...?)"
    doc = tmp_path / "vendor.cti"
    doc.write_text("not a library\n")
    with pytest.raises(ConfigError, match=r"camera\.genicam\.cti: .*vendor\.cti is not a GenTL producer"):
        viky(cti=str(doc)).open()


def test_a_library_that_is_no_producer_is_refused_not_a_crash(tmp_path):
    # a shared library without the GenTL entry points crashed the process inside the genicam
    # wheel (segmentation fault): a subprocess, so that the crash cannot take pytest with it
    import _ctypes
    import subprocess
    import sys

    lib = _ctypes.__file__  # a real shared library, and no GenTL producer
    r = subprocess.run([sys.executable, "-m", "app.cli", "cameras", "--backend", "genicam", "--cti", lib],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    # the option typed, not the configuration key (which no file of this command set)
    assert f"error: --cti: {lib} is not a GenTL producer: it exports no GCInitLib" in r.stderr, r.stderr[-2000:]
    assert "camera.genicam.cti" not in r.stderr


def test_cameras_names_a_missing_cti_by_its_option(tmp_path, capsys):
    from app.cli import main

    gone = tmp_path / "gone.cti"
    assert main(["cameras", "--backend", "genicam", "--cti", str(gone)]) == 2
    err = capsys.readouterr().err
    assert f"error: --cti: no such GenTL producer file: {gone}" in err and "camera.genicam" not in err, err


def test_a_bad_producer_beside_a_good_one_in_the_environment_is_skipped(monkeypatch, tmp_path, caplog):
    import shutil

    shutil.copy(CTI, tmp_path / "viky.cti")
    (tmp_path / "old.cti").write_text("a producer for another system\n")
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path))
    assert len(list_devices()) == 3  # as harvesters did: the good producer's devices
    assert "GENICAM_GENTL64_PATH" in caplog.text and "old.cti is not a GenTL producer" in caplog.text
    (tmp_path / "viky.cti").unlink()
    with pytest.raises(ConfigError, match=r"GENICAM_GENTL64_PATH: none of .*old\.cti"):
        list_devices()


def test_several_devices_and_none_chosen_is_said_with_the_key(caplog):
    # the first of three opened with nothing said but "opened": a lab with two cameras ran on
    # whichever the transport listed first
    with GenicamCamera({"cti": CTI}) as cam:
        assert cam.info.serial == "0"
        notes = list(cam.open_notes)
    assert notes == [f"camera.genicam.serial: not given, and 3 GenICam devices are attached through {CTI} "
                     "(camera.genicam.cti) (0, 1, 2): opened the first, 0; set camera.genicam.serial to choose"]
    assert notes[0] in caplog.text
    for chosen in ({"serial": "2"}, {"index": 0}):  # a choice, even of the first, is not warned about
        with GenicamCamera({"cti": CTI, **chosen}) as cam:
            assert not cam.open_notes


def test_a_camera_slower_than_its_frame_rate_limit_is_said():
    # the limit is a ceiling: a camera exposing for 10 ms ran at 100 fps with fps = 500 set and
    # nothing said. Neither the producer here nor the pylon emulator models it (their resulting
    # rate is the limit), so the camera's answers are given by hand, through the shared code
    from acquisition.vendor import GenicamFeatures

    class Camera(GenicamFeatures):
        backend, _serial = "genicam", "7"

        def __init__(self, features):
            self.features, self.open_notes = features, []

        def has_feature(self, name):
            return name in self.features

        def get_feature(self, name):
            return self.features[name]

    cam = Camera({"ResultingFrameRate": 100.0, "ExposureTime": 10000.0})
    cam._check_resulting_fps(500.0)
    assert cam.open_notes == ["camera.genicam.fps: the genicam camera 7 runs at 100 fps, under the 500 set: its "
                              "exposure (10000 µs, camera.genicam.exposure_us), ROI or link limits it"]
    for features in ({"ResultingFrameRate": 500.0}, {"ResultingFrameRateAbs": 499.9}, {}):
        cam = Camera(features)
        cam._check_resulting_fps(500.0)
        assert cam.open_notes == []
