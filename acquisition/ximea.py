"""Ximea cameras through the vendor's xiAPI Python module (``from ximea import xiapi``).

The module ships with Ximea's software package (it loads ``libm3api``); the PyPI wrappers need that
library too, so without the vendor package this backend raises BackendUnavailable naming it.
Written against the documented xiAPI: ``xiapi.Camera``, ``xiapi.Image``, ``open_device_by_SN``,
``set_exposure``, ``set_imgdataformat``, ``start_acquisition``, ``get_image(img, timeout_ms)``,
``img.get_image_data_numpy()``, ``img.acq_nframe`` / ``img.nframe`` and ``img.tsSec`` /
``img.tsUSec``.

``acq_nframe`` counts every frame the sensor exposed since acquisition start (32-bit), so its gaps
are frames the camera or transport lost; ``tsSec``/``tsUSec`` is the camera clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from acquisition.camera import Camera, CameraInfo, CameraState, GrabResult
from acquisition.vendor import DeviceEntry, SettingNotes, check_settings, fit_value, open_configured, reopen_with_retries
from mimlsort.errors import BackendUnavailable, ConfigError, DataFormatError, DeviceError, StateError
from mimlsort.settings import require

log = logging.getLogger(__name__)

#: pixel format -> (xiAPI image data format, numpy dtype, bit depth)
_FORMATS = {"Mono8": ("XI_MONO8", "uint8", 8), "Mono16": ("XI_MONO16", "uint16", 0)}


def _xiapi():
    try:
        from ximea import xiapi
    except (ImportError, OSError) as err:  # OSError: the wrapper is there but libm3api is not
        # no pip extra: the wrapper is useless without the vendor's driver and libm3api
        raise BackendUnavailable("the ximea backend needs Ximea's xiAPI Python package (ximea.xiapi, which loads "
                                 "libm3api): install the Ximea software package (XIMEA Linux/Windows installer) "
                                 "with its Python support") from err
    return xiapi


def list_devices() -> list[DeviceEntry]:
    xiapi = _xiapi()
    cam = xiapi.Camera()
    out = []
    for i in range(cam.get_number_devices()):
        c = xiapi.Camera(dev_id=i)
        c.open_device()
        try:
            out.append(DeviceEntry("ximea", c.get_device_sn().decode(), c.get_device_name().decode(), "", "xiAPI"))
        finally:
            c.close_device()
    return out


@dataclass(frozen=True, slots=True)
class XimeaSettings:
    serial: str = ""  # open the camera with this serial number ("" = by index)
    index: int = 0  # device index when no serial is given
    width: int = 0  # ROI width in pixels (0: keep the camera's)
    height: int = 0  # ROI height in pixels (0: keep the camera's)
    offset_x: int = 0  # ROI offset in pixels
    offset_y: int = 0  # ROI offset in pixels
    pixel_format: str = "Mono8"  # Mono8, or Mono16 (uint16; bit depth read from the camera)
    exposure_us: float = 0.0  # exposure time in µs (0: keep the camera's)
    fps: float = 0.0  # frame rate limit (0: free run)
    trigger: str = "off"  # off, software, or a GPI edge: "rising", "falling"
    pixel_size_um: float = 0.0  # µm per pixel in the object plane (0: unknown)
    buffers_mb: int = 0  # acquisition buffer size in MiB (0: the driver's default)
    reconnect_attempts: int = 3  # tries to reopen a camera that disappeared before the run ends ERRORED
    reconnect_delay_s: float = 1.0  # pause before each reconnect attempt

    def __post_init__(self):
        require(self.index >= 0, "index", f"must be >= 0, got {self.index}")
        check_settings(self)
        require(self.buffers_mb >= 0, "buffers_mb", f"must be >= 0, got {self.buffers_mb}")
        require(self.pixel_format in _FORMATS, "pixel_format", f"must be one of {', '.join(_FORMATS)}, got {self.pixel_format!r}")
        require(self.trigger in ("off", "software", "rising", "falling"), "trigger",
                f"must be off, software, rising or falling, got {self.trigger!r}")


class XimeaCamera(SettingNotes, Camera):
    """A Ximea camera through xiAPI."""

    backend = "ximea"
    Settings = XimeaSettings

    def __init__(self, settings: Any = None, *, flow_direction: str = "left-to-right"):
        super().__init__(settings, flow_direction=flow_direction)
        self.skipped = 0  # drops not visible as frame-id gaps (acq_nframe shows them all: stays 0)
        self.clock_note = "camera clock (tsSec/tsUSec)"
        self._cam = None
        self._img = None
        self._serial = ""

    def _connect(self, serial: str) -> None:
        xiapi = _xiapi()
        cam = xiapi.Camera() if serial else xiapi.Camera(dev_id=self.settings.index)
        try:
            if serial:
                cam.open_device_by_SN(serial)
            else:
                cam.open_device()
        except xiapi.Xi_error as err:
            raise DeviceError(f"cannot open Ximea camera {serial or f'#{self.settings.index}'}: {err}") from err
        self._cam = cam
        self._img = xiapi.Image()
        self._xi = xiapi  # the grab loop must not re-import per frame
        self._serial = cam.get_device_sn().decode() if isinstance(cam.get_device_sn(), bytes) else str(cam.get_device_sn())

    #: settings key -> (xiAPI parameter, kind); each has get_/set_ and get_<p>_minimum/_maximum/_increment
    _PARAMS = {"width": ("width", "int"), "height": ("height", "int"), "offset_x": ("offsetX", "int"),
               "offset_y": ("offsetY", "int"), "exposure_us": ("exposure", "int"), "fps": ("framerate", "float")}

    def _set(self, key: str, asked: float) -> Any:
        """Write setting ``key`` clamped into the camera's limits and snapped onto its step, as the
        GenICam backends do; returns the value in effect, said (``_apply``) where it differs. xiAPI
        refuses a value out of range with an ``Xi_error`` that named no setting."""
        param, kind = self._PARAMS[key]
        cam, full = self._cam, f"camera.{self.backend}.{key}"
        limits = {}
        for bound, suffix in (("lo", "minimum"), ("hi", "maximum"), ("inc", "increment")):
            if kind == "float" and bound == "inc":
                continue
            try:
                limits[bound] = float(getattr(cam, f"get_{param}_{suffix}")())
            except (AttributeError, self._xi.Xi_error):  # not every camera or API version says every limit
                pass
        value = fit_value(kind, full, asked, **limits)
        try:
            getattr(cam, f"set_{param}")(value)
            got = getattr(cam, f"get_{param}")()
        except self._xi.Xi_error as err:  # refused inside the limits it gave (another setting holds it)
            raise DeviceError(f"{full}: the ximea camera {self._serial} refused {param} = {value!r}: {err}") from err
        return self._apply(key, asked, float(got) if kind == "float" else int(got))

    def _configure(self) -> None:
        s, cam = self.settings, self._cam
        cam.set_imgdataformat(_FORMATS[s.pixel_format][0])
        for key in ("offset_x", "offset_y"):  # offsets to 0 first so any width/height fits
            if s.width or s.height or getattr(s, key):
                self._set(key, 0)
        for key in ("width", "height", "offset_x", "offset_y", "exposure_us"):
            if getattr(s, key):
                self._set(key, getattr(s, key))
        if s.fps:
            cam.set_acq_timing_mode("XI_ACQ_TIMING_MODE_FRAME_RATE_LIMIT")
            self._set("fps", s.fps)
        self._set_trigger(s.trigger)
        if s.buffers_mb:
            cam.set_acq_buffer_size(s.buffers_mb * 1024 * 1024)

    def _set_trigger(self, trigger: str) -> str:
        src = {"off": "XI_TRG_OFF", "software": "XI_TRG_SOFTWARE", "rising": "XI_TRG_EDGE_RISING",
               "falling": "XI_TRG_EDGE_FALLING"}[trigger]
        self._cam.set_trigger_source(src)
        return trigger

    def _make_info(self) -> CameraInfo:
        cam = self._cam
        _, dtype, bits = _FORMATS[self.settings.pixel_format]
        if not bits:
            bits = self._data_bit_depth()
        name = cam.get_device_name()
        return CameraInfo(
            backend=self.backend, model=name.decode() if isinstance(name, bytes) else str(name), serial=self._serial,
            width=int(cam.get_width()), height=int(cam.get_height()), dtype=dtype, bit_depth=bits,
            fps=float(cam.get_framerate()) if self.settings.fps else 0.0, pixel_size_um=self.settings.pixel_size_um,
            camera_clock=True, id_modulus=2**32,
            # in effect, for the files' ROI position and flash duration (0, 0 and 0 were written)
            offset=(int(cam.get_offsetX()), int(cam.get_offsetY())), exposure_us=float(cam.get_exposure()),
        )

    def _data_bit_depth(self) -> int:
        """The bits a Mono16 pixel value uses: xiAPI's image data bit depth (what ``xiGetImage``
        returns), which ``output_bit_depth`` can set below the sensor's own; the sensor's where
        the camera does not say (the thresholds scale with it: a 10-bit image taken for 12 bits
        compares cells with 4x the threshold). 16 when neither answers."""
        cam = self._cam
        for getter in ("get_image_data_bit_depth", "get_sensor_bit_depth"):
            try:
                value = getattr(cam, getter)()
            except (AttributeError, self._xi.Xi_error):
                continue
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, str) and value.split("_")[-1].isdigit():
                return int(value.split("_")[-1])  # "XI_BPP_12"
        return 16

    def _do_open(self) -> CameraInfo:
        return open_configured(self)

    def _do_start(self) -> None:
        self._cam.start_acquisition()

    def _do_stop(self) -> None:
        self._cam.stop_acquisition()

    def _disconnect(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            cam.close_device()

    _do_close = _disconnect

    def software_trigger(self) -> None:
        self._cam.set_trigger_software(1)

    def _do_grab(self, out: np.ndarray, timeout_s: float) -> GrabResult | None:
        xiapi = self._xi
        img = self._img
        try:
            self._cam.get_image(img, timeout=max(1, int(timeout_s * 1000)))
        except xiapi.Xi_error as err:
            if getattr(err, "status", None) == 10:  # XI_TIMEOUT
                return None
            self._reconnect(str(err))
            return None
        data = img.get_image_data_numpy()
        if data.shape != out.shape:
            raise DataFormatError(f"ximea camera {self._serial}: frame {img.acq_nframe} is {data.shape}, expected {out.shape}")
        np.copyto(out, data)
        return GrabResult(int(img.acq_nframe), int(img.tsSec) * 1_000_000_000 + int(img.tsUSec) * 1000)

    def _reconnect(self, why: str) -> None:
        errors = reopen_with_retries(self, why, self._disconnect, self._reopen, log)
        if errors is None:
            return
        why = "; ".join([why, *map(str, errors)])
        raise DeviceError(f"ximea camera {self._serial} is gone ({why}); {self.settings.reconnect_attempts} reconnect attempt(s) failed")

    def _reopen(self) -> None:
        self._connect(self._serial)
        self._configure()
        self._cam.start_acquisition()

    def apply(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply exposure_us / fps / trigger (live) or geometry (idle); returns the values in effect."""
        if self.state is CameraState.CLOSED:
            raise StateError("ximea camera is not open")
        cam, out = self._cam, {}
        for key, value in changes.items():
            if key == "exposure_us":
                out[key] = float(self._set(key, value))
            elif key == "fps":
                cam.set_acq_timing_mode("XI_ACQ_TIMING_MODE_FRAME_RATE_LIMIT")
                out[key] = float(self._set(key, value))
            elif key == "trigger":
                out[key] = self._set_trigger(str(value))
            elif key in ("width", "height", "offset_x", "offset_y"):
                if self.state is CameraState.ACQUIRING:
                    raise StateError(f"camera.ximea.{key}: stop acquisition before changing the frame geometry")
                out[key] = int(self._set(key, value))
                self._set_info(self._make_info())
            else:
                raise ConfigError(f"camera.ximea.{key}", "unknown setting (known: exposure_us, fps, trigger, width, "
                                  "height, offset_x, offset_y)")
        return out
