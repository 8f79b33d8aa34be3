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
