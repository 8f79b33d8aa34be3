"""Any GenICam camera through a GenTL producer (``.cti``), driven by harvesters.

The producer comes from the settings (``cti``), else from ``GENICAM_GENTL64_PATH`` (every ``.cti`` in
its folders); only where that variable is unset, the ``viky.cti`` test producer shipped in the
``genicam`` wheel (a lab that names its producers must never get a simulated camera). Frames are
fetched with ``try_fetch`` (the wait releases the GIL inside the GenTL event wait) and copied into
the ring slot; the producer's frame id (``BUFFER_INFO_FRAMEID``, 64-bit in GenTL) is the frame id,
``id_modulus`` covers producers that wrap it earlier. Incomplete buffers, which harvesters discards
and re-queues itself, are counted through its ``INCOMPLETE_BUFFER`` callback.

The feature logic it shares with the pylon backend (both are GenApi node maps underneath) is in
:mod:`acquisition.vendor`; ``fit_value``, ``DeviceEntry`` and ``MONO_FORMATS`` are re-exported here.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from acquisition.camera import Camera, CameraInfo, GrabResult
from acquisition.vendor import (  # noqa: F401 - re-exported: the GenICam names' historical home
    MONO_FORMATS,
    DeviceEntry,
    GenicamFeatures,
    PixelFormat,
    check_settings,
    fit_value,
    quiet_import,
    reopen_with_retries,
    select_device,
)
from mimlsort.errors import BackendUnavailable, ConfigError, DataFormatError, DeviceError, StateError
from mimlsort.settings import require

log = logging.getLogger(__name__)

def _genapi():
    try:
        return quiet_import("genicam.genapi")
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


def _producers_key(cti: str) -> str:
    """What named the producers: the setting, else the environment variable it fell back to."""
    return "camera.genicam.cti" if cti or os.environ.get("GENICAM_GENTL64_PATH") is None else "GENICAM_GENTL64_PATH"


def viky_cti() -> str | None:
    """Path of the ``viky.cti`` GenTL producer shipped in the ``genicam`` wheel, if installed."""
    import importlib.util

    # the file is found without importing the package (its import has side effects: see _quiet_import)
    spec = importlib.util.find_spec("genicam")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "viky.cti"
    return str(path) if path.is_file() else None


def check_producer(cti: str, key: str = "camera.genicam.cti") -> None:
    """ConfigError at ``key`` unless ``cti`` is a library that exports the GenTL entry points.

    harvesters only logs a producer it cannot load, so a wrong file (a 32-bit producer, a
    document) ended in "no GenICam device ... is it connected, powered?"; and a library that
    loads but is no producer crashed the process (segmentation fault) inside the genicam wheel.
    Loading it here runs nothing harvesters would not run anyway."""
    import ctypes

    if not os.path.isfile(cti):
        raise ConfigError(key, f"no such GenTL producer file: {cti}")
    try:
        lib = ctypes.CDLL(cti)
    except OSError as err:
        raise ConfigError(key, f"{cti} is not a GenTL producer this machine can load ({err}): give the camera "
                          "vendor's .cti built for this system") from None
    missing = [name for name in ("GCInitLib", "TLOpen", "DSStartAcquisition") if not hasattr(lib, name)]
    if missing:
        raise ConfigError(key, f"{cti} is not a GenTL producer: it exports no {', '.join(missing)} "
                          "(the camera vendor's .cti file)")


def producers(cti: str = "") -> list[str]:
    """The GenTL producer files a camera with setting ``cti`` loads, each checked
    (:func:`check_producer`); nothing is opened."""
    key = _producers_key(cti)
    files = [cti] if cti else _default_producers()
    if not files:
        where = os.environ.get("GENICAM_GENTL64_PATH")
        raise BackendUnavailable("no GenTL producer" + (f" in GENICAM_GENTL64_PATH={where}" if where is not None else "")
                                 + ": set camera.genicam.cti or GENICAM_GENTL64_PATH to the camera vendor's .cti")
    if key != "GENICAM_GENTL64_PATH":
        for f in files:
            check_producer(f, key)
        return files
    # a folder of the variable may hold a producer for another system beside the good one, which
    # harvesters skipped: skipped here too, said, and refused only when none is left
    good = []
    for f in files:
        try:
            check_producer(f, key)
        except ConfigError as err:
            log.warning("%s: skipped", err)
        else:
            good.append(f)
    if not good:
        raise ConfigError(key, f"none of {', '.join(files)} is a GenTL producer this machine can load")
    return good


def _harvester(cti: str):
    try:
        Harvester = quiet_import("harvesters.core").Harvester
    except ImportError as err:
        raise BackendUnavailable("the genicam backend needs harvesters: install mimlsort[genicam]") from err
    files = producers(cti)
    h = Harvester()
    for f in files:
        h.add_file(f)
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
    h = _harvester(cti)
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
    id_modulus: int = 0  # ids the producer's frame id cycles through if it wraps (65535 for GigE Vision 1.x block ids 1..65535; 0: 64-bit, no wrap)
    timestamps: Literal["host", "camera"] = "host"  # camera: GenTL buffer timestamps (ns), where the device has them
    reconnect_attempts: int = 3  # tries to reopen a device that disappeared before the run ends ERRORED
    reconnect_delay_s: float = 1.0  # pause before each reconnect attempt
    features: dict[str, Any] = field(default_factory=dict)  # further GenICam features set at open, name = value

    def __post_init__(self):
        require(self.index >= -1, "index", f"must be >= -1, got {self.index}")
        check_settings(self)
        require(self.buffers >= 2, "buffers", f"must be >= 2, got {self.buffers}")
        require(self.id_modulus >= 0, "id_modulus", f"must be >= 0, got {self.id_modulus}")


class GenicamCamera(GenicamFeatures, Camera):
    """A GenICam camera through harvesters and a GenTL producer."""

    backend = "genicam"
    Settings = GenicamSettings

    def __init__(self, settings: Any = None, *, flow_direction: str = "left-to-right"):
        super().__init__(settings, flow_direction=flow_direction)
        self.skipped = 0  # drops not visible as frame-id gaps (GenTL reports none: stays 0)
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

    @staticmethod
    def _node_kind(node: Any) -> str:
        return _node_kind(node)

    @staticmethod
    def _node_access(node: Any) -> tuple[bool, bool]:
        return _access(node)

    @staticmethod
    def _node_limits(node: Any, kind: str) -> dict[str, Any]:
        if kind == "int":
            return {"lo": node.min, "hi": node.max, "inc": node.inc}
        if kind == "float":
            return {"lo": node.min, "hi": node.max}
        if kind == "enum":
            return {"symbolics": tuple(node.symbolics)}
        return {}

    @staticmethod
    def _read_node(node: Any) -> Any:
        return node.value if _node_kind(node) in ("int", "float", "enum", "bool", "str") else node.to_string()

    @staticmethod
    def _write_node(node: Any, value: Any) -> None:
        node.value = value

    @staticmethod
    def _execute_node(node: Any) -> None:
        node.execute()

    # -- lifecycle -------------------------------------------------------------------------------
    def _select(self, serial: str):
        return select_device(
            list(self._h.device_info_list), serial, self.settings,
            serial_of=lambda d: _dev_attr(d, "serial_number"), name_of=lambda d: _dev_attr(d, "user_defined_name"),
            backend=self.backend, what="GenICam device", found="found serials", note=self._note,
            # the producers asked, and what chose them: no device may be the wrong .cti
            where=f" through {', '.join(self._h.files)} ({_producers_key(self.settings.cti)})")

    def _connect(self, serial: str) -> None:
        s = self.settings
        self._h = _harvester(s.cti)
        try:
            dev = self._select(serial)
            self._serial = _dev_attr(dev, "serial_number")
            self._ia = self._h.create(dev)
        except BaseException:
            self._h.reset()
            self._h = None
            raise
        ImageAcquirer = quiet_import("harvesters.core").ImageAcquirer

        def count_incomplete() -> None:
            self.failed_buffers += 1

        self._ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, count_incomplete)
        self._ia.num_buffers = max(s.buffers, self._ia.min_num_buffers)
        self._gentl_error = quiet_import("genicam.gentl").GenericException

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
        self._configure_common(self.settings, optional_offsets=True, fps_zero_frees=False)

    _exposure_nodes = ("ExposureTime", "ExposureTimeAbs")

    def _set_exposure(self, us: float) -> float:
        for name in self._exposure_nodes:
            if self.has_feature(name):
                if self._writable("ExposureAuto"):
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
        return self._set_frame_start_trigger(trigger)

    def _make_info(self) -> CameraInfo:
        dtype, bits = self._mono_format()
        fps = self._first_value("ResultingFrameRate", "ResultingFrameRateAbs", "AcquisitionFrameRate",
                                "AcquisitionFrameRateAbs")
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
            offset=self.offset_in_effect(), exposure_us=self.exposure_in_effect_us(),
            camera_clock=camera_clock, id_modulus=self.settings.id_modulus,
        )

    def _do_start(self) -> None:
        self._ia.start()

    _restart = _do_start

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
        errors = reopen_with_retries(self, str(err), self._disconnect, self._reopen, log)
        if errors is None:
            return
        last = errors[-1] if errors else err
        raise DeviceError(f"genicam camera {self._serial} is gone: {err}; "
                          f"{self.settings.reconnect_attempts} reconnect attempt(s) failed (last: {last})") from last
