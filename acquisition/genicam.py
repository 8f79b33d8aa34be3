"""Any GenICam camera through a GenTL producer (``.cti``), driven by harvesters.

The producer comes from the settings (``cti``), else from ``GENICAM_GENTL64_PATH`` (every ``.cti`` in
its folders); only where that variable is unset, the ``viky.cti`` test producer shipped in the
``genicam`` wheel (a lab that names its producers must never get a simulated camera). Frames are
fetched with ``try_fetch`` (the wait releases the GIL inside the GenTL event wait) and copied into
the ring slot; the producer's frame id (``BUFFER_INFO_FRAMEID``, 64-bit in GenTL) is the frame id,
``id_modulus`` covers producers that wrap it earlier. Incomplete buffers, which harvesters discards
and re-queues itself, are counted through its ``INCOMPLETE_BUFFER`` callback.

This module also holds the GenICam feature logic the pylon backend shares (both are GenApi node
maps underneath): :func:`fit_value` turns a requested value into one the node accepts — clamped
into range and onto the increment grid, so ``apply`` can report what is really in effect — and
:class:`DeviceEntry`, one line of ``mimlsort cameras``.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from acquisition.camera import Camera, CameraInfo, CameraState, GrabResult
from mimlsort.errors import BackendUnavailable, ConfigError, DataFormatError, DeviceError, StateError
from mimlsort.settings import require

log = logging.getLogger(__name__)

#: GenICam pixel formats a backend delivers without conversion: name -> (numpy dtype, bit depth)
MONO_FORMATS: dict[str, tuple[str, int]] = {
    "Mono8": ("uint8", 8),
    "Mono10": ("uint16", 10),
    "Mono12": ("uint16", 12),
    "Mono16": ("uint16", 16),
}

PixelFormat = Literal["Mono8", "Mono10", "Mono12", "Mono16"]


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """One camera a backend can open (a line of ``mimlsort cameras``)."""

    backend: str
    serial: str
    model: str
    user_name: str = ""
    transport: str = ""
    note: str = ""


# -- GenICam feature values --------------------------------------------------------------------------

def fit_value(kind: str, key: str, value: Any, *, lo: float | None = None, hi: float | None = None,
              inc: float | None = None, symbolics: tuple[str, ...] = ()) -> Any:
    """The value to write into a feature of ``kind`` for the request ``value``.

    Numbers are clamped into ``[lo, hi]`` and integers snapped onto the ``inc`` grid from ``lo``,
    so that the caller can report the value in effect instead of failing on the camera's limits;
    an enumeration entry that does not exist, or a value of the wrong type, is a ConfigError at
    ``key``.
    """
    if kind == "command":
        return None
    if kind == "bool":
        if not isinstance(value, (bool, int)) or isinstance(value, float):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return bool(value)
    if kind == "enum":
        if not isinstance(value, str) or value not in symbolics:
            raise ConfigError(key, f"must be one of {', '.join(symbolics)}, got {value!r}")
        return value
    if kind == "str":
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a number, got {value!r}")
    v = float(value)
    if lo is not None:
        v = max(v, lo)
    if hi is not None:
        v = min(v, hi)
    if kind == "int":
        step = int(inc) if inc and inc > 1 else 1
        base = int(lo) if lo is not None else 0
        iv = base + int(round((v - base) / step)) * step
        if hi is not None and iv > hi:
            iv -= step
        return int(iv)
    return v


# -- harvesters node access --------------------------------------------------------------------------
def _quiet_import(name: str):
    """Import a SWIG-built vendor module with its import-time DeprecationWarnings silenced: under
    ``-W error`` they are raised inside the extension's init, which crashes the interpreter."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(name)


def _genapi():
    try:
        return _quiet_import("genicam.genapi")
    except ImportError as err:
        raise BackendUnavailable("the genicam backend needs harvesters and genicam: install mimlsort[genicam]") from err


def _node_kind(node: Any) -> str:
    genapi = _genapi()
    for cls, kind in ((genapi.IInteger, "int"), (genapi.IFloat, "float"), (genapi.IEnumeration, "enum"),
                      (genapi.IBoolean, "bool"), (genapi.ICommand, "command"), (genapi.IString, "str")):
        if isinstance(node, cls):
            return kind
    return "other"


def _access(node: Any) -> tuple[bool, bool]:
    genapi = _genapi()
    mode = node.node.get_access_mode()
    return mode in (genapi.EAccessMode.RO, genapi.EAccessMode.RW), mode in (genapi.EAccessMode.WO, genapi.EAccessMode.RW)


def _default_producers() -> list[str]:
    """``.cti`` files in the folders of ``GENICAM_GENTL64_PATH``; only where that is unset, the test
    producer in the genicam wheel (a lab that names its producers must never get a simulated camera)."""
    path = os.environ.get("GENICAM_GENTL64_PATH")
    if path is not None:
        return [cti for folder in path.split(os.pathsep) if folder
                for cti in sorted(glob.glob(os.path.join(folder, "*.cti")))]
    viky = viky_cti()
    return [viky] if viky else []


def viky_cti() -> str | None:
    """Path of the ``viky.cti`` GenTL producer shipped in the ``genicam`` wheel, if installed."""
    import importlib.util

    # the file is found without importing the package (its import has side effects: see _quiet_import)
    spec = importlib.util.find_spec("genicam")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "viky.cti"
    return str(path) if path.is_file() else None


def _harvester(producers: list[str]):
    try:
        Harvester = _quiet_import("harvesters.core").Harvester
    except ImportError as err:
        raise BackendUnavailable("the genicam backend needs harvesters: install mimlsort[genicam]") from err
    if not producers:
        where = os.environ.get("GENICAM_GENTL64_PATH")
        raise BackendUnavailable("no GenTL producer" + (f" in GENICAM_GENTL64_PATH={where}" if where is not None else "")
                                 + ": set camera.genicam.cti or GENICAM_GENTL64_PATH to the camera vendor's .cti")
    h = Harvester()
    for cti in producers:
        if not os.path.isfile(cti):
            h.reset()
            raise ConfigError("camera.genicam.cti", f"no such GenTL producer file: {cti}")
        h.add_file(cti)
    h.update()
    return h


def _dev_attr(info: Any, name: str) -> str:
    try:
        v = getattr(info, name)
    except Exception:  # a producer may not implement every device-info query
        return ""
    return "" if v is None else str(v)


def list_devices(cti: str = "") -> list[DeviceEntry]:
    """Devices every GenTL producer (``cti``, else the default ones) reports; no device is opened."""
    producers = [cti] if cti else _default_producers()
    h = _harvester(producers)
    try:
        return [
            DeviceEntry("genicam", _dev_attr(d, "serial_number"), f"{_dev_attr(d, 'vendor')} {_dev_attr(d, 'model')}".strip(),
                        _dev_attr(d, "user_defined_name"), _dev_attr(d, "tl_type"), f"id {_dev_attr(d, 'id_')}")
            for d in h.device_info_list
        ]
    finally:
        h.reset()


# -- the camera ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GenicamSettings:
    cti: str = ""  # GenTL producer; "" = the .cti files in GENICAM_GENTL64_PATH (if unset: viky.cti, a test producer)
    serial: str = ""  # open the device with this serial number ("" = any)
    user_name: str = ""  # ... or with this user-defined name
    index: int = -1  # ... or the n-th device of those that match (-1: the first)
    width: int = 0  # ROI width in pixels (0: keep the camera's)
    height: int = 0  # ROI height in pixels (0: keep the camera's)
    offset_x: int = 0  # ROI offset; ignored (with a warning) by cameras without OffsetX
    offset_y: int = 0  # ROI offset; ignored (with a warning) by cameras without OffsetY
    pixel_format: PixelFormat = "Mono8"  # Mono10/12/16 arrive as uint16 with the bit depth recorded
    exposure_us: float = 0.0  # exposure time in µs (0: keep the camera's)
    fps: float = 0.0  # acquisition frame rate (0: keep the camera's)
    trigger: str = "off"  # "off" (free run) or the TriggerSource for FrameStart, e.g. "Line1", "Software"
    pixel_size_um: float = 0.0  # µm per pixel in the object plane (0: unknown, give it to the tracker)
    buffers: int = 32  # buffers announced to the producer
    id_modulus: int = 0  # range of the producer's frame id if it wraps (0: 64-bit, no wrap)
    timestamps: Literal["host", "camera"] = "host"  # camera: GenTL buffer timestamps (ns), where the device has them
    reconnect_attempts: int = 3  # tries to reopen a device that disappeared before the run ends ERRORED
    reconnect_delay_s: float = 1.0  # pause before each reconnect attempt
    features: dict[str, Any] = field(default_factory=dict)  # further GenICam features set at open, name = value

    def __post_init__(self):
        require(self.index >= -1, "index", f"must be >= -1, got {self.index}")
        for k in ("width", "height", "offset_x", "offset_y"):
            require(getattr(self, k) >= 0, k, f"must be >= 0, got {getattr(self, k)}")
        require(self.exposure_us >= 0, "exposure_us", f"must be >= 0, got {self.exposure_us}")
        require(self.fps >= 0, "fps", f"must be >= 0, got {self.fps}")
        require(self.pixel_size_um >= 0, "pixel_size_um", f"must be >= 0, got {self.pixel_size_um}")
        require(self.buffers >= 2, "buffers", f"must be >= 2, got {self.buffers}")
        require(self.id_modulus >= 0, "id_modulus", f"must be >= 0, got {self.id_modulus}")
        require(self.reconnect_attempts >= 0, "reconnect_attempts", f"must be >= 0, got {self.reconnect_attempts}")
        require(self.reconnect_delay_s >= 0, "reconnect_delay_s", f"must be >= 0, got {self.reconnect_delay_s}")


#: settings keys ``apply`` understands besides raw feature names
_GEOMETRY = ("width", "height", "offset_x", "offset_y", "pixel_format")


class GenicamCamera(Camera):
    """A GenICam camera through harvesters and a GenTL producer."""

    backend = "genicam"
    Settings = GenicamSettings

    def __init__(self, settings: Any = None):
        super().__init__(settings)
        self.skipped = 0  # drops not visible as frame-id gaps (GenTL reports none: stays 0)
        self.reconnects = 0
        self.clock_note = ""
        self._h = None
        self._ia = None
        self._serial = ""
        self._incomplete_cb = None

    # -- features --------------------------------------------------------------------------------
    def _node(self, name: str):
        if self._ia is None:
            raise StateError("genicam camera is not open")
        nm = self._ia.remote_device.node_map
        if not nm.has_node(name):
            raise ConfigError(f"camera.genicam.{name}", "unknown feature on this camera")
        return nm.get_node(name)

    def has_feature(self, name: str) -> bool:
        return self._ia is not None and self._ia.remote_device.node_map.has_node(name)

    def get_feature(self, name: str) -> Any:
        node = self._node(name)
        readable, _ = _access(node)
        if not readable:
            raise ConfigError(f"camera.genicam.{name}", "feature is not readable now")
        kind = _node_kind(node)
        return node.value if kind in ("int", "float", "enum", "bool", "str") else node.to_string()

    def set_feature(self, name: str, value: Any = None) -> Any:
        """Write a feature (a command is executed); returns the value in effect afterwards."""
        node = self._node(name)
        key = f"camera.genicam.{name}"
        kind = _node_kind(node)
        _, writable = _access(node)
        if not writable:
            raise ConfigError(key, "feature is not writable now" + (" (stop acquisition first)" if self.state is CameraState.ACQUIRING else ""))
        if kind == "command":
            node.execute()
            return None
        if kind in ("int", "float"):
            v = fit_value(kind, key, value, lo=node.min, hi=node.max, inc=node.inc if kind == "int" else None)
        elif kind == "enum":
            v = fit_value(kind, key, value, symbolics=tuple(node.symbolics))
        else:
            v = fit_value(kind, key, value)
        try:
            node.value = v
        except Exception as err:  # the producer refused a value inside the advertised range
            raise DeviceError(f"genicam camera {self._serial}: {name} = {v!r} refused: {err}") from err
        return node.value

    # -- lifecycle -------------------------------------------------------------------------------
    def _select(self, serial: str):
        s = self.settings
        infos = list(self._h.device_info_list)
        matches = [d for d in infos
                   if (not serial or _dev_attr(d, "serial_number") == serial)
                   and (not s.user_name or _dev_attr(d, "user_defined_name") == s.user_name)]
        want = ", ".join(f"{k}={v!r}" for k, v in (("serial", serial), ("user_name", s.user_name)) if v) or "any"
        if not matches:
            found = ", ".join(_dev_attr(d, "serial_number") for d in infos) or "none"
            raise DeviceError(f"no GenICam device matches {want} (found serials: {found})")
        i = max(s.index, 0) if serial == s.serial else 0  # a reconnect names the device by its serial
        if i >= len(matches):
            raise DeviceError(f"camera.genicam.index: {s.index} but only {len(matches)} device(s) match {want}")
        return matches[i]

    def _connect(self, serial: str) -> None:
        s = self.settings
        self._h = _harvester([s.cti] if s.cti else _default_producers())
        try:
            dev = self._select(serial)
            self._serial = _dev_attr(dev, "serial_number")
            self._ia = self._h.create(dev)
        except BaseException:
            self._h.reset()
            self._h = None
            raise
        ImageAcquirer = _quiet_import("harvesters.core").ImageAcquirer

        def count_incomplete() -> None:
            self.failed_buffers += 1

        self._ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, count_incomplete)
        self._ia.num_buffers = max(s.buffers, self._ia.min_num_buffers)
        self._gentl_error = _quiet_import("genicam.gentl").GenericException

    def _disconnect(self) -> None:
        ia, h = self._ia, self._h
        self._ia = self._h = None
        try:
            if ia is not None:
                if ia.is_acquiring():
                    ia.stop()
                ia.destroy()
        finally:
            if h is not None:
                h.reset()

    def _configure(self) -> None:
        s = self.settings
        for name in ("OffsetX", "OffsetY"):  # offsets first to 0 so any width/height fits
            if self.has_feature(name) and _access(self._node(name))[1]:
                self.set_feature(name, 0)
        self.set_feature("PixelFormat", s.pixel_format)
        if s.width:
            self.set_feature("Width", s.width)
        if s.height:
            self.set_feature("Height", s.height)
        for name, v in (("OffsetX", s.offset_x), ("OffsetY", s.offset_y)):
            if v:
                if self.has_feature(name):
                    self.set_feature(name, v)
                else:
                    log.warning("genicam camera %s has no %s: offset %d ignored", self._serial, name, v)
        if s.exposure_us:
            self._set_exposure(s.exposure_us)
        self._set_trigger(s.trigger)
        if s.fps:
            self._set_fps(s.fps)
        for name, v in s.features.items():
            self.set_feature(name, v)

    def _set_exposure(self, us: float) -> float:
        for name in ("ExposureTime", "ExposureTimeAbs"):
            if self.has_feature(name):
                if self.has_feature("ExposureAuto") and _access(self._node("ExposureAuto"))[1]:
                    self.set_feature("ExposureAuto", "Off")
                return float(self.set_feature(name, us))
        raise ConfigError("camera.genicam.exposure_us", "this camera has no ExposureTime feature")

    def _set_fps(self, fps: float) -> float:
        if self.has_feature("AcquisitionFrameRateEnable"):
            self.set_feature("AcquisitionFrameRateEnable", True)
        for name in ("AcquisitionFrameRate", "AcquisitionFrameRateAbs"):
            if self.has_feature(name):
                return float(self.set_feature(name, fps))
        raise ConfigError("camera.genicam.fps", "this camera has no AcquisitionFrameRate feature")

    def _set_trigger(self, trigger: str) -> str:
        if not self.has_feature("TriggerMode"):
            if trigger.lower() != "off":
                raise ConfigError("camera.genicam.trigger", "this camera has no TriggerMode feature")
            return "off"
        if self.has_feature("TriggerSelector"):
            self.set_feature("TriggerSelector", "FrameStart")
        if trigger.lower() == "off":
            self.set_feature("TriggerMode", "Off")
            return "off"
        self.set_feature("TriggerSource", trigger)
        self.set_feature("TriggerMode", "On")
        return str(self.get_feature("TriggerSource"))

    def _make_info(self) -> CameraInfo:
        fmt = str(self.get_feature("PixelFormat"))
        if fmt not in MONO_FORMATS:
            raise ConfigError("camera.genicam.pixel_format", f"camera delivers {fmt}, not one of {', '.join(MONO_FORMATS)}")
        dtype, bits = MONO_FORMATS[fmt]
        fps = 0.0
        for name in ("ResultingFrameRate", "ResultingFrameRateAbs", "AcquisitionFrameRate", "AcquisitionFrameRateAbs"):
            if self.has_feature(name):
                fps = float(self.get_feature(name))
                break
        model = self.get_feature("DeviceModelName") if self.has_feature("DeviceModelName") else ""
        if not model:
            d = self._ia.device.module
            model = f"{_dev_attr(d, 'vendor')} {_dev_attr(d, 'model')}".strip() or "GenICam camera"
        # whether a device stamps its buffers shows only on the first buffer, after the ring is
        # built: so the clock is chosen in the settings, and "camera" fails loudly if it is absent
        camera_clock = self.settings.timestamps == "camera"
        self.clock_note = ("camera clock (GenTL buffer timestamps)" if camera_clock
                           else "host monotonic time (camera.genicam.timestamps = host)")
        return CameraInfo(
            backend=self.backend, model=str(model), serial=self._serial,
            width=int(self.get_feature("Width")), height=int(self.get_feature("Height")),
            dtype=dtype, bit_depth=bits, fps=fps, pixel_size_um=self.settings.pixel_size_um,
            camera_clock=camera_clock, id_modulus=self.settings.id_modulus,
        )

    def _do_open(self) -> CameraInfo:
        self._connect(self.settings.serial)
        try:
            self._configure()
            info = self._make_info()
        except BaseException:
            self._disconnect()
            raise
        return info

    def _do_start(self) -> None:
        self._ia.start()

    def _do_stop(self) -> None:
        if self._ia is not None and self._ia.is_acquiring():
            self._ia.stop()

    def _do_close(self) -> None:
        self._disconnect()

    # -- frames ----------------------------------------------------------------------------------
    def _do_grab(self, out: np.ndarray, timeout_s: float) -> GrabResult | None:
        GenericException = self._gentl_error
        try:
            buf = self._ia.try_fetch(timeout=timeout_s)
        except GenericException as err:
            self._reconnect(err)
            return None
        if buf is None:
            return None
        try:
            c = buf.payload.components[0]
            h, w = c.height, c.width
            if (h, w) != out.shape:
                raise DataFormatError(f"genicam camera {self._serial}: frame {buf.frame_id} is {w}x{h}, expected "
                                      f"{out.shape[1]}x{out.shape[0]}")
            data = c.data
            if data.dtype != out.dtype:
                raise DataFormatError(f"genicam camera {self._serial}: frame {buf.frame_id} has {data.dtype} pixels, expected {out.dtype}")
            # rows may carry padding: take the first w values of each of the h rows
            np.copyto(out, data[: h * (data.size // h)].reshape(h, -1)[:, :w])
            fid = int(buf.frame_id)
            if self._info.camera_clock:
                try:
                    ts = int(buf.timestamp_ns)
                except GenericException as err:
                    raise DeviceError(f"genicam camera {self._serial}: frame {fid} has no timestamp ({err}); "
                                      "set camera.genicam.timestamps = \"host\"") from err
            else:
                ts = time.monotonic_ns()
        finally:
            buf.queue()
        return GrabResult(fid, ts)

    def _reconnect(self, err: Exception) -> None:
        s = self.settings
        last: Exception = err
        for attempt in range(1, s.reconnect_attempts + 1):
            log.warning("genicam camera %s lost (%s): reconnect attempt %d of %d", self._serial, err, attempt, s.reconnect_attempts)
            try:
                self._disconnect()
            except Exception as e:  # the device is gone: tearing down may fail too
                log.debug("teardown after loss: %s", e)
            time.sleep(s.reconnect_delay_s)
            try:
                self._connect(self._serial)  # the same device, whatever selected it first
                self._configure()
                info = self._make_info()
                if (info.width, info.height, info.dtype) != (self.info.width, self.info.height, self.info.dtype):
                    raise DeviceError(f"reopened camera delivers {info.width}x{info.height} {info.dtype}")
                self._ia.start()
                self.reconnects += 1
                return
            except Exception as e:  # keep trying; the last error is reported
                last = e
        raise DeviceError(f"genicam camera {self._serial} is gone: {err}; "
                          f"{s.reconnect_attempts} reconnect attempt(s) failed (last: {last})") from last

    # -- settings as data ------------------------------------------------------------------------
    def apply(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply settings keys (exposure_us, fps, trigger, geometry when idle) or raw feature names;
        returns the values in effect, keyed as given."""
        if self.state is CameraState.CLOSED:
            raise StateError("genicam camera is not open")
        out: dict[str, Any] = {}
        geometry = False
        for key, value in changes.items():
            if key == "exposure_us":
                out[key] = self._set_exposure(value)
            elif key == "fps":
                out[key] = self._set_fps(value)
            elif key == "trigger":
                out[key] = self._set_trigger(str(value))
            elif key in _GEOMETRY:
                if self.state is CameraState.ACQUIRING:
                    raise StateError(f"camera.genicam.{key}: stop acquisition before changing the frame geometry")
                name = {"width": "Width", "height": "Height", "offset_x": "OffsetX", "offset_y": "OffsetY",
                        "pixel_format": "PixelFormat"}[key]
                out[key] = self.set_feature(name, value)
                geometry = True
            else:
                out[key] = self.set_feature(key, value)
        if geometry:
            self._info = self._make_info()
        return out
