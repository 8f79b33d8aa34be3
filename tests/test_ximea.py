"""The ximea backend. Ximea's xiAPI needs the vendor's libm3api, which cannot be installed here:
without it, the backend must say what to install; with it, the contract runs on a real camera."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from acquisition.camera import make_camera
from acquisition.ximea import XimeaCamera, XimeaSettings, list_devices
from mimlsort.errors import BackendUnavailable, ConfigError


def _xiapi_available() -> bool:
    if importlib.util.find_spec("ximea") is None:
        return False
    try:
        from ximea import xiapi  # noqa: F401
    except (ImportError, OSError):  # the wrapper without libm3api
        return False
    return True


HAVE_XIAPI = _xiapi_available()
needs_sdk = pytest.mark.skipif(not HAVE_XIAPI, reason="Ximea xiAPI (ximea.xiapi + libm3api from the Ximea software "
                                                      "package) is not installable here")


def test_settings_are_validated_with_their_key():
    with pytest.raises(ConfigError, match=r"camera\.ximea\.pixel_format"):
        XimeaCamera({"pixel_format": "Mono12p"})
    with pytest.raises(ConfigError, match=r"camera\.ximea\.trigger"):
        XimeaCamera({"trigger": "Line9"})
    assert XimeaCamera({"serial": "ABC123"}).settings == XimeaSettings(serial="ABC123")


@pytest.mark.skipif(HAVE_XIAPI, reason="the Ximea SDK is installed: the camera tests below run instead")
def test_without_the_sdk_the_backend_says_what_to_install():
    cam = make_camera("ximea")
    with pytest.raises(BackendUnavailable, match="xiAPI"):
        cam.open()
    with pytest.raises(BackendUnavailable, match="Ximea software package"):
        list_devices()


@needs_sdk
def test_a_connected_camera_delivers_frames():  # pragma: no cover - needs a Ximea camera
    if not list_devices():
        pytest.skip("no Ximea camera connected")
    with XimeaCamera({"exposure_us": 100.0}) as cam:
        ring = cam.info.make_ring(16)
        cam.start()
        for _ in range(5):
            assert cam.grab_into(ring, timeout_s=2.0)
        cam.stop()
    assert np.all(np.diff(ring.frame_ids[:5]) >= 1)


class _XiError(Exception):
    pass


class _Mono16Camera:
    """Stands in for xiapi.Camera, which needs Ximea's libm3api (not installable here): only the
    getters that CameraInfo reads, a 12-bit sensor whose images carry ``data_bits``."""

    def __init__(self, data_bits):
        self.data_bits = data_bits

    def get_image_data_bit_depth(self):
        if self.data_bits is None:
            raise _XiError("Not supported")  # an older camera or API
        return f"XI_BPP_{self.data_bits}"

    def get_sensor_bit_depth(self):
        return "XI_BPP_12"

    def get_device_name(self):
        return b"MQ013MG-ON"

    def get_width(self):
        return 256

    def get_height(self):
        return 96

    def get_offsetX(self):  # noqa: N802 (xiAPI's naming)
        return 0

    def get_offsetY(self):  # noqa: N802
        return 0

    def get_exposure(self):
        return 100


@pytest.mark.parametrize("data_bits, expected", [(10, 10), (12, 12), (None, 12)])
def test_a_mono16_cameras_bit_depth_is_its_image_datas(data_bits, expected):
    # the sensor's depth was taken: a camera set to output 10 bits had its 8-bit thresholds
    # scaled for 12 (4x too high), and its recordings said 12 bits
    import types

    cam = XimeaCamera({"pixel_format": "Mono16"})
    cam._cam, cam._serial = _Mono16Camera(data_bits), "X1"
    cam._xi = types.SimpleNamespace(Xi_error=_XiError)
    info = cam._make_info()
    assert info.dtype == "uint16" and info.bit_depth == expected


class _FakeXiError(Exception):
    """xiapi.Xi_error: a status code, said as xiAPI says it."""

    def __init__(self, status: int):
        self.status = status
        super().__init__(f"ERROR {status}: Wrong parameter value")


class _FakeXiCamera:
    """xiapi.Camera with the documented parameter calls the backend makes (get_/set_<param> and
    get_<param>_minimum/_maximum/_increment), a 1280x1024 sensor: a value out of its range is
    refused with Xi_error as xiAPI refuses it, naming no setting."""

    LIMITS = {"width": (16, 1280, 16), "height": (2, 1024, 2), "offsetX": (0, 1280, 16), "offsetY": (0, 1024, 2),
              "exposure": (28, 1_000_000, 1), "framerate": (1.0, 5000.0, None)}

    def _limits(self, param):
        lo, hi, inc = self.LIMITS[param]
        if param.startswith("offset"):  # the ROI must stay on the sensor
            hi -= self.values["width" if param == "offsetX" else "height"]
        return lo, hi, inc

    def __init__(self, dev_id=0):
        self.values = {"width": 1280, "height": 1024, "offsetX": 0, "offsetY": 0, "exposure": 1000,
                       "framerate": 100.0}
        self.calls = []

    def open_device(self):
        pass

    def close_device(self):
        pass

    def get_device_sn(self):
        return b"XI42"

    def get_device_name(self):
        return b"MQ013MG-ON"

    def set_imgdataformat(self, fmt):
        pass

    def set_acq_timing_mode(self, mode):
        pass

    def set_trigger_source(self, src):
        pass

    def __getattr__(self, name):
        if name.startswith("get_") and name.endswith(("_minimum", "_maximum", "_increment")):
            param, bound = name[4:].rsplit("_", 1)
            lo, hi, inc = self._limits(param)
            value = {"minimum": lo, "maximum": hi, "increment": inc}[bound]
            if value is None:
                raise _FakeXiError(12)  # Not supported
            return lambda: value
        if name.startswith("get_") and name[4:] in self.values:
            return lambda: self.values[name[4:]]
        if name.startswith("set_") and name[4:] in self.values:
            param = name[4:]

            def set_(value):
                lo, hi, inc = self._limits(param)
                if not lo <= value <= hi or (inc and (value - lo) % inc):
                    raise _FakeXiError(11)
                self.calls.append((param, value))
                self.values[param] = value
            return set_
        raise AttributeError(name)


@pytest.fixture
def fake_xiapi(monkeypatch):
    """Ximea's xiapi module stood in for: the real one cannot be installed here (it loads the
    vendor's libm3api), so only the backend's own handling of the camera's limits is tested."""
    import sys
    import types

    if HAVE_XIAPI:
        pytest.skip("the real xiAPI is installed: the camera tests run against it")
    xiapi = types.ModuleType("ximea.xiapi")
    xiapi.Camera, xiapi.Image, xiapi.Xi_error = _FakeXiCamera, object, _FakeXiError
    package = types.ModuleType("ximea")
    package.xiapi = xiapi
    monkeypatch.setitem(sys.modules, "ximea", package)
    monkeypatch.setitem(sys.modules, "ximea.xiapi", xiapi)
    return xiapi


def test_values_out_of_the_cameras_range_are_clamped_said_with_their_key_and_recorded(fake_xiapi, caplog):
    """_configure called set_width & co. with the configured values: one out of range ended the
    open with a bare "ERROR 11: Wrong parameter value" naming no key, and nothing the camera took
    was recorded (the basler and genicam backends clamp, warn naming the key, and keep the line
    for the event file)."""
    cam = XimeaCamera({"width": 5000, "height": 100, "offset_x": 5000, "offset_y": 10, "exposure_us": 10.0,
                       "fps": 9000.0})
    info = cam.open()
    try:
        assert (info.width, info.height) == (1280, 100) and info.offset == (0, 10)
        assert info.exposure_us == 28.0 and info.fps == 5000.0
        notes = "\n".join(cam.open_notes)
        for line in ("camera.ximea.width: the ximea camera XI42 took 1280 for the 5000 asked",
                     "camera.ximea.offset_x: the ximea camera XI42 took 0 for the 5000 asked",
                     "camera.ximea.exposure_us: the ximea camera XI42 took 28 for the 10 asked",
                     "camera.ximea.fps: the ximea camera XI42 took 5000 for the 9000 asked"):
            assert line in notes and line in caplog.text, notes
        assert "height" not in notes and "offset_y" not in notes
        # live changes go the same way: the value in effect comes back, and is said
        assert cam.apply({"exposure_us": 5.0e6}) == {"exposure_us": 1_000_000.0}
        assert "camera.ximea.exposure_us: the ximea camera XI42 took 1000000 for the 5e+06 asked" in caplog.text
    finally:
        cam.close()


def test_a_value_the_camera_refuses_inside_its_range_names_the_key(fake_xiapi):
    from mimlsort.errors import DeviceError

    class Refusing(_FakeXiCamera):
        def set_offsetY(self, value):
            if value:
                raise _FakeXiError(11)  # another setting holds it

    fake_xiapi.Camera = Refusing
    with pytest.raises(DeviceError, match=r"^camera\.ximea\.offset_y: the ximea camera XI42 refused offsetY = 10: "
                                          r"ERROR 11"):
        XimeaCamera({"height": 100, "offset_y": 10}).open()
