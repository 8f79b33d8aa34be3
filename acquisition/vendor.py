"""What the vendor camera backends (basler, genicam, ximea) share; no vendor SDK is imported here.

* :class:`DeviceEntry`, one line of ``mimlsort cameras``; :data:`MONO_FORMATS`, the pixel formats a
  backend delivers without conversion; :func:`quiet_import` for SWIG-built vendor modules.
* :func:`check_settings`, the checks every vendor camera's settings share.
* :func:`select_device` (by serial, user name and index), :func:`open_configured` and
  :func:`reopen_with_retries`: finding and opening a camera, and the reconnect loop after a loss.
* :class:`GenicamFeatures`, a mixin for cameras with a GenApi node map underneath (pylon and any
  GenTL producer): feature get/set, where :func:`fit_value` clamps a requested value into range
  and onto the increment grid so that ``apply`` reports what is really in effect; ``apply``
  (settings as data, geometry only while idle); open and reopen around the backend's
  connect/configure hooks.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from acquisition.camera import CameraInfo, CameraState
from mimlsort.errors import ConfigError, DeviceError, DeviceSettingError, StateError
from mimlsort.settings import require

#: GenICam pixel formats a backend delivers without conversion: name -> (numpy dtype, bit depth)
MONO_FORMATS: dict[str, tuple[str, int]] = {
    "Mono8": ("uint8", 8),
    "Mono10": ("uint16", 10),
    "Mono12": ("uint16", 12),
    "Mono16": ("uint16", 16),
}

PixelFormat = Literal["Mono8", "Mono10", "Mono12", "Mono16"]

#: settings keys that change the frame geometry -> GenICam feature name
GEOMETRY_FEATURES = {"width": "Width", "height": "Height", "offset_x": "OffsetX", "offset_y": "OffsetY",
                     "pixel_format": "PixelFormat"}


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """One camera a backend can open (a line of ``mimlsort cameras``)."""

    backend: str
    serial: str
    model: str
    user_name: str = ""
    transport: str = ""
    note: str = ""


def quiet_import(name: str):
    """Import a SWIG-built vendor module with its import-time DeprecationWarnings silenced: under
    ``-W error`` they are raised inside the extension's init, which crashes the interpreter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(name)


def check_settings(s: Any) -> None:
    """The checks every vendor camera's settings share (frame geometry, exposure, frame rate,
    pixel size, reconnects); each error carries the settings key."""
    for k in ("width", "height", "offset_x", "offset_y", "exposure_us", "fps", "pixel_size_um"):
        v = getattr(s, k)  # inf passed `config --check`, then the camera refused it under its feature's name
        require(v >= 0 and math.isfinite(v), k, f"must be a finite number >= 0, got {v}")
    require(s.reconnect_attempts >= 0, "reconnect_attempts", f"must be >= 0, got {s.reconnect_attempts}")
    # bounded: inf passed, and a lost camera's reconnect ended in OverflowError from time.sleep
    # instead of a reconnect (1e12: the run slept for ever, never ending ERRORED)
    require(0 <= s.reconnect_delay_s <= 600, "reconnect_delay_s", f"must be in [0, 600] s, got {s.reconnect_delay_s}")


def select_device(devices: list[Any], serial: str, s: Any, *, serial_of: Callable[[Any], str],
                  name_of: Callable[[Any], str], backend: str, what: str, where: str = "",
                  found: str = "found", note: Callable[[str], None] | None = None) -> Any:
    """The device of ``devices`` that ``serial`` and the settings' ``user_name`` and ``index`` pick.

    A reconnect passes the serial of the device it lost, which then alone decides. Errors name what
    was asked and what is there: "no {what} matches ...{where} ({found}: serials)". Where nothing
    chose among several, the first is taken and ``note`` (else a warning) says which and what
    else was there.
    """
    matches = [d for d in devices
               if (not serial or serial_of(d) == serial) and (not s.user_name or name_of(d) == s.user_name)]
    want = ", ".join(f"{k}={v!r}" for k, v in (("serial", serial), ("user_name", s.user_name)) if v) or "any"
    if not matches:
        hint = "is it connected, powered, and not open already, in this program or another?"
        serials = ", ".join(serial_of(d) for d in devices) or f"none: {hint}"
        if serial and serial != s.serial:  # a reconnect asks by the serial it lost: no setting did
            raise DeviceError(f"no {what} matches {want}{where} ({found}: {serials})")
        # the setting that asked, so the operator knows what to change; where none asked for a
        # particular camera, the backend chose them: "no … matches any" named no key at all
        key = next((f"camera.{backend}.{k}" for k, v in (("serial", s.serial), ("user_name", s.user_name)) if v),
                   None)
        if key is not None:
            raise DeviceSettingError(key, f"no {what} matches {want}{where} ({found}: {serials})")
        raise DeviceSettingError("camera.backend", f"{backend!r}, but no {what} is attached{where} ({hint})")
    i = max(s.index, 0) if serial == s.serial else 0
    if i >= len(matches):
        noun = what.split()[-1]
        raise DeviceError(f"camera.{backend}.index: {s.index} but only {len(matches)} {noun}(s) match {want}")
    if len(matches) > 1 and not serial and s.index < 0:
        # the enumeration order is the transport's and may change from one start to the next: a
        # run on the other camera of two said nothing but "opened" (and then found no channel)
        line = (f"camera.{backend}.serial: not given, and {len(matches)} {what}s "
                f"{'are attached' if want == 'any' else 'match ' + want}{where} "
                f"({', '.join(serial_of(d) for d in matches)}): opened the first, {serial_of(matches[0])}; "
                f"set camera.{backend}.serial to choose")
        if note is None:
            logging.getLogger(__name__).warning("%s", line)
        else:
            note(line)
    return matches[i]


def open_configured(cam: Any) -> CameraInfo:
    """Connect ``cam`` to the camera its settings name, configure it and describe what it delivers;
    a failure on the way disconnects again (the backend's ``_connect``, ``_configure``,
    ``_make_info`` and ``_disconnect``)."""
    cam._connect(cam.settings.serial)
    try:
        cam._configure()
        return cam._make_info()
    except BaseException:
        cam._disconnect()
        raise


def reopen_with_retries(cam: Any, why: str, teardown: Callable[[], None], reopen: Callable[[], None],
                        log: logging.Logger) -> list[Exception] | None:
    """Tear down and reopen a lost camera up to ``reconnect_attempts`` times, ``reconnect_delay_s``
    apart. None once ``reopen`` succeeded (``cam.reconnects`` counts it), else the error of every
    attempt, for the backend to word its DeviceError."""
    s = cam.settings
    errors: list[Exception] = []
    for attempt in range(1, s.reconnect_attempts + 1):
        log.warning("%s camera %s lost (%s): reconnect attempt %d of %d", cam.backend, cam._serial, why, attempt,
                    s.reconnect_attempts)
        try:
            teardown()
        except Exception as e:  # the device is gone: tearing down may fail too
            log.debug("teardown after loss: %s", e)
        time.sleep(s.reconnect_delay_s)
        try:
            reopen()
        except Exception as e:  # keep trying; the backend reports the errors
            errors.append(e)
        else:
            cam.reconnects += 1
            return None
    return errors


def _plain(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


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


class SettingNotes:
    """Mixin (before :class:`~acquisition.camera.Camera`) for a vendor camera that says a setting
    it took otherwise than asked (``backend`` and ``_serial`` name the camera)."""

    def _apply(self, key: str, asked: float, got: Any) -> Any:
        """``got``, the value the camera took for setting ``key`` = ``asked`` (its limits clamp and
        snap); said when it differs: a 5000 px width opened as 4096, an exposure of 10 µs ran at
        100, and only a later geometry error or nothing told the operator."""
        try:
            differs = not math.isclose(float(got), float(asked), rel_tol=1e-3, abs_tol=1e-9)
        except (TypeError, ValueError):
            differs = False
        if differs:
            self._note(f"camera.{self.backend}.{key}: the {self.backend} camera {self._serial} took {_plain(got)} "
                       f"for the {_plain(asked)} asked (its limits or step)")
        return got

    def _note(self, line: str) -> None:
        """Warn, and keep the line for the run's file (the file's configuration says what was asked)."""
        logging.getLogger(type(self).__module__).warning("%s", line)
        self.open_notes.append(line)


class GenicamFeatures(SettingNotes):
    """Mixin (before :class:`~acquisition.camera.Camera`) for a camera with a GenApi node map.

    The backend supplies the node access — ``_node(name)`` (StateError when closed, ConfigError
    for an unknown feature), ``has_feature``, ``_node_kind`` ("int", "float", "enum", "bool",
    "str", "command" or "other"), ``_node_access`` (readable, writable), ``_node_limits``,
    ``_read_node``, ``_write_node``, ``_execute_node`` and ``_refused`` (the SDK's exception for
    a refused write) — and the lifecycle hooks ``_connect(serial)``, ``_disconnect``,
    ``_configure``, ``_make_info``, ``_set_exposure``, ``_set_fps``, ``_set_trigger`` and
    ``_restart`` (start acquiring again after a reconnect).
    """

    _refused: type[BaseException] = Exception

    def _key(self, name: str) -> str:
        return f"camera.{self.backend}.{name}"

    def get_feature(self, name: str) -> Any:
        node = self._node(name)
        if not self._node_access(node)[0]:
            raise ConfigError(self._key(name), "feature is not readable now")
        return self._read_node(node)

    def set_feature(self, name: str, value: Any = None) -> Any:
        """Write a feature (a command is executed); returns the value in effect afterwards."""
        node = self._node(name)
        key = self._key(name)
        kind = self._node_kind(node)
        if not self._node_access(node)[1]:
            raise ConfigError(key, "feature is not writable now" + (" (stop acquisition first)" if self.state is CameraState.ACQUIRING else ""))
        if kind == "command":
            self._execute_node(node)
            return None
        if kind == "other":  # categories, registers, ports: no value a setting could name
            raise ConfigError(key, f"cannot set a {type(node).__name__}")
        v = fit_value(kind, key, value, **self._node_limits(node, kind))
        try:
            self._write_node(node, v)
        except self._refused as err:  # the device refused a value inside the advertised range
            raise DeviceError(f"{self.backend} camera {self._serial}: {name} = {v!r} refused: {err}") from err
        return self._read_node(node)

    def _writable(self, name: str) -> bool:
        return self.has_feature(name) and self._node_access(self._node(name))[1]

    def _first_value(self, *names: str) -> float:
        """The first of ``names`` the camera has, as a number; 0.0 where it has none."""
        for name in names:
            if self.has_feature(name):
                return float(self.get_feature(name))
        return 0.0

    # -- configuration ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _setting(self, key: str):
        """Errors of the features behind setting ``key`` named by the setting (the operator wrote
        ``trigger = "Line9"``, and was told ``camera.basler.TriggerSource: must be one of …``)."""
        full = f"camera.{self.backend}.{key}"
        try:
            yield
        except ConfigError as err:
            if err.key == full or not err.key.startswith(f"camera.{self.backend}."):
                raise
            raise ConfigError(full, f"{err.problem} (the camera's {err.key.rsplit('.', 1)[-1]})") from None

    def _configure_common(self, s: Any, *, optional_offsets: bool, fps_zero_frees: bool) -> None:
        """ROI, exposure, trigger, frame rate and the raw features from the settings ``s``, each
        value the camera took in place of the one asked reported (``_apply``)."""
        self._set_roi(s, optional_offsets=optional_offsets)
        if s.exposure_us:
            with self._setting("exposure_us"):
                self._apply("exposure_us", s.exposure_us, self._set_exposure(s.exposure_us))
        with self._setting("trigger"):
            self._set_trigger(s.trigger)
        if s.fps or fps_zero_frees:
            with self._setting("fps"):
                got = self._set_fps(s.fps)
            if s.fps:
                self._apply("fps", s.fps, got)
                self._check_resulting_fps(float(got))
        for name, v in s.features.items():
            self.set_feature(name, v)

    def _check_resulting_fps(self, limit: float) -> None:
        """Say where the camera runs slower than the frame-rate limit it took: the limit is only a
        ceiling, and an exposure longer than 1 / fps (or a ROI or link too slow) sets the rate;
        a run asked for 500 fps at the emulator's 10 ms exposure ran at 100 without a word."""
        for name in ("ResultingFrameRate", "ResultingFrameRateAbs"):
            if self.has_feature(name):
                try:
                    runs = float(self.get_feature(name))
                except Exception:  # noqa: BLE001 - a camera that cannot tell now: nothing to compare
                    return
                if 0 < runs < limit * (1 - 1e-3):
                    b = self.backend
                    self._note(f"camera.{b}.fps: the {b} camera {self._serial} runs at {runs:g} fps, under the "
                               f"{limit:g} set: its exposure ({self.exposure_in_effect_us():g} µs, camera.{b}."
                               f"exposure_us), ROI or link limits it")
                return

    #: the exposure nodes in the order the backend's ``_set_exposure`` writes them
    _exposure_nodes: tuple[str, ...] = ("ExposureTimeAbs", "ExposureTime")

    def exposure_in_effect_us(self) -> float:
        """The exposure time the camera runs at (µs; 0 where it does not say)."""
        try:
            return self._first_value(*self._exposure_nodes)
        except Exception:  # noqa: BLE001 - a camera that cannot tell: 0, as for a camera without the feature
            return 0.0

    def offset_in_effect(self) -> tuple[int, int]:
        """The ROI's offset on the sensor (px; 0 where the camera has no offsets)."""
        try:
            return int(self._first_value("OffsetX")), int(self._first_value("OffsetY"))
        except Exception:  # noqa: BLE001
            return 0, 0

    def _set_roi(self, s: Any, optional_offsets: bool) -> None:
        """Pixel format and ROI from the settings ``s``; ``optional_offsets``: a camera without
        OffsetX/OffsetY ignores the offsets with a warning instead of failing."""
        for name in ("OffsetX", "OffsetY"):  # offsets to 0 first so any width/height fits
            if not optional_offsets or self._writable(name):
                self.set_feature(name, 0)
        with self._setting("pixel_format"):
            self.set_feature("PixelFormat", s.pixel_format)
        for key, name, v in (("width", "Width", s.width), ("height", "Height", s.height)):
            if v:
                with self._setting(key):
                    self._apply(key, v, self.set_feature(name, v))
        for name, key, v in (("OffsetX", "offset_x", s.offset_x), ("OffsetY", "offset_y", s.offset_y)):
            if not v:
                continue
            if optional_offsets and not self.has_feature(name):
                self._note(f"camera.{self.backend}.{key}: the {self.backend} camera {self._serial} has no {name}: "
                           f"offset {v} ignored")
            else:
                with self._setting(key):
                    self._apply(key, v, self.set_feature(name, v))

    def _set_frame_start_trigger(self, trigger: str) -> str:
        """FrameStart triggered by ``trigger`` (a TriggerSource) or free running ("off"); the
        backend has selected FrameStart."""
        if trigger.lower() == "off":
            self.set_feature("TriggerMode", "Off")
            return "off"
        self.set_feature("TriggerSource", trigger)
        self.set_feature("TriggerMode", "On")
        return str(self.get_feature("TriggerSource"))

    def _mono_format(self) -> tuple[str, int]:
        """(numpy dtype, bit depth) of the pixel format in effect; ConfigError if not monochrome."""
        fmt = str(self.get_feature("PixelFormat"))
        if fmt not in MONO_FORMATS:
            raise ConfigError(self._key("pixel_format"), f"camera delivers {fmt}, not one of {', '.join(MONO_FORMATS)}")
        return MONO_FORMATS[fmt]

    # -- lifecycle -------------------------------------------------------------------------------
    def _do_open(self) -> CameraInfo:
        return open_configured(self)

    def _reopen(self) -> None:
        """Open the lost camera again by its serial (whatever selected it first), with the frame
        geometry the ring was built for, and acquire."""
        self._connect(self._serial)
        self._configure()
        info = self._make_info()
        if (info.width, info.height, info.dtype) != (self.sensor_info.width, self.sensor_info.height, self.sensor_info.dtype):
            raise DeviceError(f"reopened camera delivers {info.width}x{info.height} {info.dtype}")
        self._restart()

    # -- settings as data ------------------------------------------------------------------------
    def apply(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply settings keys (exposure_us, fps, trigger; geometry while idle) or raw feature names;
        returns the values in effect, keyed as given."""
        if self.state is CameraState.CLOSED:
            raise StateError(f"{self.backend} camera is not open")
        out: dict[str, Any] = {}
        geometry = False
        for key, value in changes.items():
            if key == "exposure_us":
                out[key] = self._set_exposure(value)
            elif key == "fps":
                out[key] = self._set_fps(value)
            elif key == "trigger":
                out[key] = self._set_trigger(str(value))
            elif key in GEOMETRY_FEATURES:
                if self.state is CameraState.ACQUIRING:
                    raise StateError(f"{self._key(key)}: stop acquisition before changing the frame geometry")
                out[key] = self.set_feature(GEOMETRY_FEATURES[key], value)
                geometry = True
            else:
                out[key] = self.set_feature(key, value)
        if geometry:
            self._set_info(self._make_info())
        return out
