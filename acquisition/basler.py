"""Basler cameras through pypylon, and the pylon camera emulator through its own transport layer.

Grabbing: pylon's grab engine fills its own buffers; ``RetrieveResult`` waits with the GIL released
and the frame is copied into the ring slot the caller gives (24 kB at 256x96: far below the cost of
one Python call), then the pylon buffer goes straight back to the engine. The loop costs ~20-30 µs
of CPU a frame, most of it pylon's wake-up of the waiting thread and a handful of SWIG calls.

pylon ends a grab session by itself when its stream grabber signals a result it cannot hand out
(on the emulator once in 10^4 to 10^5 frames, with either strategy): the backend starts grabbing again (~2 ms) instead of
reopening the device and counts what the ended session held as camera-side drops
(``grab_restarts``, ``lost_at_restart``; the empty buffers pylon cancelled then are
``cancelled_at_restart``).

The default grab strategy is ``latest`` (``GrabStrategy_LatestImages`` with an output queue of
``buffers``): like a real sensor, the camera never waits for the host; when the grab thread falls
behind, pylon drops the oldest queued frames and says how many (``GetNumberOfSkippedImages``).
``one_by_one`` makes the pylon *emulator* wait for the host instead, which hides drops.

Drops are counted once: the frame id is the camera's ``BlockID`` unwrapped to a 64-bit counter,
so skipped images, failed buffers and frames the camera lost all appear as frame-id gaps in the
ring's ``camera_dropped``. ``skipped_images`` and ``failed_buffers`` say which part was which; they
are not added again (``skipped``, the drops a pipeline adds to the ring's count, stays 0 here).

Timestamps: GigE ticks are scaled by ``GevTimestampTickFrequency``, USB3 counts ns; the emulator
reports ``TimeStamp`` 0, so it runs on host time and ``clock_note`` says so.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from acquisition.camera import Camera, CameraInfo, GrabResult
from acquisition.vendor import (DeviceEntry, GenicamFeatures, PixelFormat, check_settings, quiet_import,
                                reopen_with_retries, select_device)
from mimlsort.errors import BackendUnavailable, ConfigError, DataFormatError, DeviceError, StateError
from mimlsort.settings import require

log = logging.getLogger(__name__)

EMULATOR = "BaslerCamEmu"
_NO_BLOCK_ID = 2**64 - 1  # pylon's BlockID where the transport layer has none
#: transport layers that find devices without broadcasting on the network
_LOCAL_TLS = ("BaslerUsb", EMULATOR)


def _pixel_type_name(value: int) -> str:
    """pylon's name of a grab result's pixel type ("Mono12"), not its number (a refused frame's error)."""
    pylon, _ = _pylon()
    names = [n.removeprefix("PixelType_") for n in dir(pylon) if n.startswith("PixelType_")
             and getattr(pylon, n) == value]
    return names[0] if names else f"pixel type {value:#x}"


def _pylon(emulator: bool = False):
    """Import pypylon lazily; the emulator transport layer is enabled through PYLON_CAMEMU."""
    if emulator:
        # pylon reads PYLON_CAMEMU when the emulator transport layer enumerates, not at import
        os.environ.setdefault("PYLON_CAMEMU", "1")
    try:
        # SWIG's "builtin type SwigPyPacked has no __module__" DeprecationWarning (see quiet_import)
        return quiet_import("pypylon.pylon"), quiet_import("pypylon.genicam")
    except ImportError as err:
        raise BackendUnavailable("the basler backend needs pypylon: install mimlsort[basler]") from err


def list_devices(network: bool = False, emulator: bool = True) -> list[DeviceEntry]:
    """Basler devices on local transport layers (USB3, the emulator); GigE only with ``network``
    (its discovery broadcasts on every interface)."""
    pylon, _ = _pylon(emulator)
    factory = pylon.TlFactory.GetInstance()
    classes = [t.GetDeviceClass() for t in factory.EnumerateTls()]
    if emulator and EMULATOR not in classes:
        classes.append(EMULATOR)
    out: list[DeviceEntry] = []
    for dc in classes:
        if dc == EMULATOR and not emulator:
            continue
        if dc not in _LOCAL_TLS and not network:
            continue
        tl = factory.CreateTl(dc)
        if tl is None:
            continue
        try:
            for d in tl.EnumerateDevices():
                out.append(DeviceEntry("basler", d.GetSerialNumber(), d.GetModelName(), d.GetUserDefinedName(), dc,
                                       "pylon camera emulator" if dc == EMULATOR else d.GetFullName()))
        finally:
            factory.ReleaseTl(tl)
    return out


@dataclass(frozen=True, slots=True)
class BaslerSettings:
    serial: str = ""  # open the camera with this serial number ("" = any)
    user_name: str = ""  # ... or with this DeviceUserID
    index: int = -1  # ... or the n-th of the cameras that match (-1: the first)
    transport: str = ""  # "" = all (GigE discovery broadcasts), BaslerUsb, BaslerGigE, BaslerCamEmu (emulator)
    width: int = 0  # ROI width in pixels (0: keep the camera's)
    height: int = 0  # ROI height in pixels (0: keep the camera's)
    offset_x: int = 0  # ROI offset in pixels
    offset_y: int = 0  # ROI offset in pixels
    pixel_format: PixelFormat = "Mono8"  # Mono10/12/16 arrive as uint16 with the bit depth recorded
    exposure_us: float = 0.0  # exposure time in µs (0: keep the camera's; the emulator needs >= 100)
    fps: float = 0.0  # acquisition frame rate limit (0: free run as fast as the exposure allows)
    trigger: str = "off"  # "off" (free run) or the FrameStart TriggerSource: "Line1", "Software", ...
    pixel_size_um: float = 0.0  # µm per pixel in the object plane (0: unknown, give it to the tracker)
    buffers: int = 64  # pylon grab buffers (MaxNumBuffer); the output queue of "latest" holds buffers - 2
    strategy: Literal["latest", "one_by_one"] = "latest"  # latest: the camera never waits for the host
    timestamps: Literal["auto", "camera", "host", "frame_counter"] = "auto"  # auto|camera|host|frame_counter (id/fps: playback)
    reconnect_attempts: int = 3  # tries to reopen a camera that disappeared before the run ends ERRORED
    reconnect_delay_s: float = 1.0  # pause before each reconnect attempt
    features: dict[str, Any] = field(default_factory=dict)  # further GenICam features set at open, name = value

    def __post_init__(self):
        require(self.index >= -1, "index", f"must be >= -1, got {self.index}")
        check_settings(self)
        require(self.buffers >= 4, "buffers", f"must be >= 4, got {self.buffers}")


class BaslerCamera(GenicamFeatures, Camera):
    """A Basler camera (or the pylon emulator) through pypylon's InstantCamera."""

    backend = "basler"
    Settings = BaslerSettings

    ids_continue_after_reconnect = True  # _frame_id unwraps them across restarts and reconnects

    def __init__(self, settings: Any = None, *, flow_direction: str = "left-to-right"):
        super().__init__(settings, flow_direction=flow_direction)
        # pylon's GetNumberOfSkippedImages: frames its output queue dropped. Their block ids are
        # missing, so they are already part of the ring's camera_dropped; ``skipped`` (what a
        # pipeline adds to the ring's count) stays 0 on this backend.
        self.skipped_images = 0
        # skipped before the first frame of a run: its id already says they went by (no gap in
        # the ring, so not in skipped_images, which equals the ring's gaps)
        self.skipped_before_first = 0
        self._seen_first = False
        self.skipped = 0
        self.discarded_at_stop = 0  # frames still queued when acquisition stopped, and those pylon skipped among them
        self.grab_errors = 0  # retrievals pylon failed without the camera being gone
        self.grab_restarts = 0  # grab sessions pylon ended by itself, restarted without reopening
        self.lost_at_restart = 0  # frames the stream grabber held, unseen, when such a session ended
        self.cancelled_at_restart = 0  # empty buffers pylon cancelled then (in the camera's total, no frames)
        self.last_error = ""  # description of the last failed buffer or grab error
        self.clock_note = ""
        self.statistics_at_stop: dict[str, int] = {}
        self._cam = None
        self._serial = ""
        self._device_class = ""
        self._ts_scale = 0.0  # ns per camera tick; 0: host clock; < 0: -ns per frame id (frame_counter)
        self._wrap = 0  # BlockID cycle length (GigE: 65535, ids 1..65535), 0: 64-bit
        self._last_raw: int | None = None
        self._last_fid: int | None = None
        self._restart_gap = 0  # frames lost at a grab restart, added to the next frame id
        self._sensor_stopped = False  # AcquisitionStop executed through set_feature while grabbing
        self._stats_before: dict[str, int] = {}  # stream statistics of the ended grab sessions of this run

    # -- features (node access for GenicamFeatures) --------------------------------------------------
    def _node(self, name: str):
        if self._cam is None:
            raise StateError("basler camera is not open")
        p = self._cam.GetNodeMap().GetNode(name)
        if not p.IsValid():
            raise ConfigError(f"camera.basler.{name}", "unknown feature on this camera")
        return p

    def set_feature(self, name: str, value: Any = None) -> Any:
        out = super().set_feature(name, value)
        if name in ("AcquisitionStop", "AcquisitionStart"):
            # a session pylon ends after an AcquisitionStop (draining what the sensor sent) is not
            # grabbed again: that would start the sensor again and the drain would never end
            self._sensor_stopped = name == "AcquisitionStop"
        return out

    def has_feature(self, name: str) -> bool:
        return self._cam is not None and self._cam.GetNodeMap().GetNode(name).IsValid()

    def _node_kind(self, p: Any) -> str:
        pylon, _ = self._sdk
        for cls, kind in ((pylon.IntegerParameter, "int"), (pylon.FloatParameter, "float"),
                          (pylon.EnumParameter, "enum"), (pylon.BooleanParameter, "bool"),
                          (pylon.CommandParameter, "command"), (pylon.StringParameter, "str")):
            if isinstance(p, cls):
                return kind
        return "other"

    @staticmethod
    def _node_access(p: Any) -> tuple[bool, bool]:
        return p.IsReadable(), p.IsWritable()

    @staticmethod
    def _node_limits(p: Any, kind: str) -> dict[str, Any]:
        if kind == "int":
            return {"lo": p.Min, "hi": p.Max, "inc": p.Inc}
        if kind == "float":
            return {"lo": p.Min, "hi": p.Max}
        if kind == "enum":
            return {"symbolics": tuple(p.Symbolics)}
        return {}

    @staticmethod
    def _read_node(p: Any) -> Any:
        return p.Value if hasattr(p, "Value") else p.ToString()

    @staticmethod
    def _write_node(p: Any, value: Any) -> None:
        p.Value = value

    @staticmethod
    def _execute_node(p: Any) -> None:
        p.Execute()

    # -- lifecycle -------------------------------------------------------------------------------
    def _devices(self, serial: str):
        pylon, _ = _pylon(self.settings.transport == EMULATOR)
        factory = pylon.TlFactory.GetInstance()
        if self.settings.transport:
            tl = factory.CreateTl(self.settings.transport)
            if tl is None:
                raise BackendUnavailable(f"pylon transport layer {self.settings.transport!r} is not installed")
            devices = list(tl.EnumerateDevices())
            factory.ReleaseTl(tl)
        else:
            devices = list(factory.EnumerateDevices())
        return factory, select_device(
            devices, serial, self.settings, serial_of=lambda d: d.GetSerialNumber(),
            name_of=lambda d: d.GetUserDefinedName(), backend=self.backend, what="Basler camera",
            where=f" on {self.settings.transport} (camera.{self.backend}.transport)" if self.settings.transport
            else " on any transport", note=self._note)

    def _connect(self, serial: str) -> None:
        pylon, genicam = _pylon(self.settings.transport == EMULATOR)
        factory, dev = self._devices(serial)
        try:
            cam = pylon.InstantCamera(factory.CreateDevice(dev))
            cam.Open()
        except genicam.GenericException as err:
            raise DeviceError(f"cannot open Basler camera {dev.GetSerialNumber()}: {err}") from err
        self._cam = cam
        self._sdk = (pylon, genicam)  # the grab loop must not re-import per frame
        self._refused = genicam.GenericException
        self._serial = dev.GetSerialNumber()
        self._device_class = dev.GetDeviceClass()

    def _disconnect(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            if cam.IsGrabbing():
                cam.StopGrabbing()
            cam.Close()
        finally:
            cam.DestroyDevice()

    def _configure(self) -> None:
        s = self.settings
        # fps 0 turns the frame-rate limit off (free run)
        self._configure_common(s, optional_offsets=False, fps_zero_frees=True)
        self._cam.MaxNumBuffer.Value = s.buffers
        if s.strategy == "latest":
            self._cam.OutputQueueSize.Value = s.buffers - 2  # leaves the engine buffers to fill meanwhile

    def _first(self, *names: str) -> str:
        for n in names:
            if self.has_feature(n):
                return n
        raise ConfigError(f"camera.basler.{names[0]}", "this camera has none of " + ", ".join(names))

    def _set_exposure(self, us: float) -> float:
        # GigE (SFNC 1) cameras, the emulator among them, expose both names; there only the *Abs
        # node drives the sensor, so it comes first
        if self._writable("ExposureAuto"):
            self.set_feature("ExposureAuto", "Off")
        return float(self.set_feature(self._first("ExposureTimeAbs", "ExposureTime"), us))

    def _set_fps(self, fps: float) -> float:
        enable = self.has_feature("AcquisitionFrameRateEnable")
        if not fps:
            if enable:
                self.set_feature("AcquisitionFrameRateEnable", False)
            return 0.0
        if enable:
            self.set_feature("AcquisitionFrameRateEnable", True)
        return float(self.set_feature(self._first("AcquisitionFrameRateAbs", "AcquisitionFrameRate"), fps))

    def _set_trigger(self, trigger: str) -> str:
        self.set_feature("TriggerSelector", "FrameStart")
        return self._set_frame_start_trigger(trigger)

    def software_trigger(self, timeout_s: float = 1.0) -> None:
        """Fire one FrameStart software trigger (trigger = "Software") once the camera is ready for it."""
        pylon, _ = self._sdk
        if not self._cam.WaitForFrameTriggerReady(int(timeout_s * 1000), pylon.TimeoutHandling_Return):
            raise DeviceError(f"basler camera {self._serial}: not ready for a frame trigger within {timeout_s:g} s")
        self._cam.ExecuteSoftwareTrigger()

    def _clock(self) -> tuple[float, bool, str]:
        mode = self.settings.timestamps
        if mode == "host":
            return 0.0, False, "host monotonic time (camera.basler.timestamps = host)"
        if mode == "frame_counter":
            # a played-back image sequence has its own time base: frame k was taken at k / fps,
            # however fast or unevenly the emulator delivers it
            if not self.settings.fps:
                raise ConfigError("camera.basler.fps", "timestamps = frame_counter needs the frame rate")
            return -1e9 / self.settings.fps, True, f"nominal: frame id / {self.settings.fps:g} fps"
        scale, why = 0.0, ""
        if self._device_class == EMULATOR:
            why = "the pylon camera emulator reports TimeStamp 0"
        elif self.has_feature("GevTimestampTickFrequency"):
            scale = 1e9 / float(self.get_feature("GevTimestampTickFrequency"))
        elif self._device_class == "BaslerUsb":
            scale = 1.0  # USB3 Vision timestamps count nanoseconds
        else:
            why = f"no known timestamp unit on {self._device_class}"
        if scale:
            return scale, True, "camera clock"
        if mode == "camera":
            raise DeviceError(f"basler camera {self._serial}: camera timestamps requested but {why}")
        return 0.0, False, f"host monotonic time: {why}"

    def _make_info(self) -> CameraInfo:
        dtype, bits = self._mono_format()
        fps = self._first_value("ResultingFrameRate", "ResultingFrameRateAbs")
        self._ts_scale, clock, self.clock_note = self._clock()
        # GigE Vision's 16-bit block id runs 1..65535 (0 is reserved) unless extended ids are on
        extended = self.has_feature("GevGVSPExtendedIDMode") and self.get_feature("GevGVSPExtendedIDMode") == "On"
        self._wrap = 65535 if self._device_class == "BaslerGigE" and not extended else 0
        return CameraInfo(
            backend=self.backend, model=self._cam.GetDeviceInfo().GetModelName(), serial=self._serial,
            width=int(self.get_feature("Width")), height=int(self.get_feature("Height")),
            dtype=dtype, bit_depth=bits, fps=fps, pixel_size_um=self.settings.pixel_size_um,
            offset=self.offset_in_effect(), exposure_us=self.exposure_in_effect_us(),
            camera_clock=clock, id_modulus=0,  # ids are unwrapped here (see _frame_id)
        )

    def _start_grabbing(self) -> None:
        pylon, _ = _pylon()
        strategy = pylon.GrabStrategy_LatestImages if self.settings.strategy == "latest" else pylon.GrabStrategy_OneByOne
        self._last_raw = None
        self._sensor_stopped = False
        self._cam.StartGrabbing(strategy)

    _restart = _start_grabbing

    def _do_start(self) -> None:
        self._stats_before = {}
        self._restart_gap = 0
        self._seen_first = False
        self._start_grabbing()

    def _resume_grabbing(self, why: str) -> None:
        """Start grabbing again after pylon ended the grab session by itself, the device still there.

        pylon stops grabbing when its stream grabber signals a result it then cannot hand out
        ("signals an available result but the retrieval fails"); on the emulator this happens once
        in 10^4 to 10^5 frames (more often while other threads compete for the CPU), with either
        strategy: every few seconds at 5,000+ fps.
        StartGrabbing again takes ~2 ms, where a reconnect would close and reopen the device.
        StartGrabbing restarts the block ids and the stream statistics, so the statistics of the
        ended session are kept (:meth:`statistics` adds them), and the frames its stream grabber
        held that we never saw become a frame-id gap before the next frame: camera-side drops,
        counted once, like every other loss (see :meth:`_unseen`).
        """
        stats = self._session_statistics()
        lost, cancelled = self._unseen(stats)
        for k, v in stats.items():
            self._stats_before[k] = self._stats_before.get(k, 0) + v
        self.grab_restarts += 1
        self.lost_at_restart += lost
        self.cancelled_at_restart += cancelled
        self._restart_gap += lost
        self.last_error = why
        log.warning("basler camera %s: pylon ended the grab (%s); grabbing again, %d frame(s) lost",
                    self._serial, why, lost)
        self._start_grabbing()

    def _do_stop(self) -> None:
        cam = self._cam
        if cam is None:
            return
        pylon, genicam = _pylon()
        if not cam.IsGrabbing():  # pylon ended the last grab session itself: what it held is lost
            try:
                lost, cancelled = self._unseen(self._session_statistics())
                self.discarded_at_stop += lost
                self.cancelled_at_restart += cancelled
                self.statistics_at_stop = self.statistics()
            except genicam.GenericException as err:
                log.warning("basler camera %s: no statistics at stop: %s", self._serial, err)
            return
        try:
            # stop the sensor, then count what is still queued, so the camera's own statistics
            # (read before StopGrabbing cancels the queued buffers) add up with our counters
            cam.AcquisitionStop.Execute()
            # at most what pylon's buffers hold: a camera that went on sending after
            # AcquisitionStop (one that ignores it in some trigger mode) kept this loop, and the
            # stop, going for as long as it sent
            ready = cam.GetGrabResultWaitObject()
            for _ in range(self.settings.buffers + 1):
                # waited for on pylon's wait object, then taken without a wait: RetrieveResult's
                # own 20 ms wait never returned now and then (the emulator, after other tests in
                # the process: the suite hung here, and in _do_grab's)
                if not ready.Wait(20):
                    break
                r = cam.RetrieveResult(0, pylon.TimeoutHandling_Return)
                if not r.IsValid():
                    break
                self.discarded_at_stop += 1 + r.GetNumberOfSkippedImages()
                r.Release()
            else:
                log.warning("basler camera %s: it went on sending frames after AcquisitionStop; stopped the grab "
                            "after %d of them", self._serial, self.settings.buffers + 1)
            self.statistics_at_stop = self.statistics()
        except genicam.GenericException as err:  # a camera that is gone cannot be drained
            log.warning("basler camera %s: could not drain at stop: %s", self._serial, err)
        finally:
            cam.StopGrabbing()

    def _do_close(self) -> None:
        self._disconnect()

    def statistics(self) -> dict[str, int]:
        """The stream grabber's own counters (total, failed buffers, underruns) where it has them,
        summed over the grab sessions of this acquisition (see :meth:`_resume_grabbing`)."""
        if self._cam is None:
            return dict(self.statistics_at_stop)
        out = self._session_statistics()
        for k, v in self._stats_before.items():
            out[k] = out.get(k, 0) + v
        return out

    def _session_statistics(self) -> dict[str, int]:
        nm = self._cam.GetStreamGrabberNodeMap()
        out = {}
        for name in ("Statistic_Total_Buffer_Count", "Statistic_Failed_Buffer_Count", "Statistic_Buffer_Underrun_Count"):
            node = nm.GetNode(name)
            if node is not None:
                try:
                    out[name.removeprefix("Statistic_").lower()] = int(node.GetValue())
                except Exception:  # not every transport layer implements every counter
                    pass
        return out

    # -- frames ----------------------------------------------------------------------------------
    def _frame_id(self, raw: int) -> int:
        last_raw, last = self._last_raw, self._last_fid
        self._last_raw = raw
        if last is None:
            fid = raw
        elif last_raw is None:  # first frame after a start or a reconnect: ids restarted
            fid = last + 1 + self._restart_gap
            self._restart_gap = 0
        else:
            delta = raw - last_raw
            if self._wrap:
                delta %= self._wrap
            fid = last + (delta if delta > 0 else 1)  # a counter that went back restarted
        self._last_fid = fid
        return fid

    def _do_grab(self, out: np.ndarray, timeout_s: float) -> GrabResult | None:
        # the hot path (one good frame) makes one wait and no clock reads but the host timestamp;
        # failed buffers and grab errors retry within one more timeout at most
        pylon, genicam = self._sdk
        cam = self._cam
        wait_ms = int(timeout_s * 1000)
        deadline = 0.0
        while True:
            try:
                # waited for on pylon's wait object (without the GIL), then taken without a wait:
                # RetrieveResult's own wait now and then never returned (see _do_stop)
                cam.GetGrabResultWaitObject().Wait(wait_ms)
                r = cam.RetrieveResult(0, pylon.TimeoutHandling_Return)
            except genicam.GenericException as err:
                if cam.IsCameraDeviceRemoved():
                    self._reconnect(str(err))
                    return None
                self.grab_errors += 1
                self.last_error = str(err)
                if not cam.IsGrabbing() and not self._resume_or_reconnect(str(err)):  # pylon ended the session
                    return None
            else:
                if not r.IsValid():
                    if cam.IsCameraDeviceRemoved():  # costs ~1 ms: only on the timeout path
                        self._reconnect("device removed")
                        return None
                    if cam.IsGrabbing() or not self._resume_or_reconnect("grabbing stopped"):
                        return None  # a plain timeout, or the sensor was stopped on purpose
                    # grabbing again: wait for its first frame within the timeout
                else:
                    try:
                        n = r.GetNumberOfSkippedImages()
                        if n:
                            if self._seen_first:
                                self.skipped_images += n
                            else:
                                self.skipped_before_first += n
                        self._seen_first = True
                        if r.GrabSucceeded():
                            raw = r.BlockID
                            if raw >= _NO_BLOCK_ID:  # a transport without block ids: count frames instead
                                raw = (self._last_raw + 1 + n) if self._last_raw is not None else 0
                            self._copy_image(r, out, raw)
                            fid = self._frame_id(raw)
                            scale = self._ts_scale
                            if scale > 0:
                                return GrabResult(fid, int(r.TimeStamp * scale))
                            if scale < 0:  # frame_counter clock
                                return GrabResult(fid, int(-fid * scale))
                            return GrabResult(fid, time.monotonic_ns())
                        self.failed_buffers += 1
                        self.last_error = r.GetErrorDescription()
                    finally:
                        r.Release()
            now = time.monotonic()
            if not deadline:
                deadline = now + timeout_s
            if now >= deadline:
                return None
            wait_ms = int((deadline - now) * 1000)

    def _copy_image(self, r: Any, out: np.ndarray, raw: int) -> None:
        """Copy the image of grab result ``r`` into ``out`` (a C-contiguous ring slot).

        The buffer's raw memoryview is copied byte for byte: pypylon's ``GetArrayZeroCopy`` costs
        ~7 µs a frame in Python (context manager, pixel-type tables, a cast and a reference-count
        check), about a fifth of the grab loop's whole CPU time at 5,000+ fps. The settings allow
        only unpacked Mono formats, whose buffer is the image row after row; a size that differs
        (another ROI or pixel format, row padding) is refused with what arrived.
        """
        mv = r.GetImageMemoryView()
        try:
            if mv.nbytes != out.nbytes:
                raise DataFormatError(
                    f"basler camera {self._serial}: frame {raw} is {r.Width}x{r.Height} {_pixel_type_name(r.PixelType)} "
                    f"({mv.nbytes} bytes, row padding {r.PaddingX}), expected {out.shape[1]}x{out.shape[0]} "
                    f"{out.dtype} ({out.nbytes} bytes)")
            memoryview(out).cast("B")[:] = mv.cast("B") if mv.format != "B" else mv
        finally:
            mv.release()  # before the result goes back to the grab engine

    def _unseen(self, stats: dict[str, int]) -> tuple[int, int]:
        """(frames, empty buffers) the stream grabber counted in a session pylon ended, beyond the
        last block id we saw.

        Stopping a grab adds the buffers queued at the stream grabber, empty, to its total:
        min(MaxNumQueuedBuffer, MaxNumBuffer) of them while the output queue leaves that many
        free (measured on the emulator: 10 frames seen, 88 waiting, total 98 before the stop
        and 149 after, 50 queued). Only when the output queue held more than MaxNumBuffer -
        MaxNumQueuedBuffer frames were fewer buffers queued; then the frames are a lower bound
        and the sum is still exact.
        """
        total = stats.get("total_buffer_count")
        if total is None:
            return 0, 0
        first_id = 1 if self._device_class == "BaslerGigE" else 0  # GigE Vision block ids start at 1
        seen = self._last_raw + 1 - first_id if self._last_raw is not None else 0
        unseen = max(0, total - seen)
        try:
            queued = min(int(self._cam.MaxNumQueuedBuffer.Value), int(self._cam.MaxNumBuffer.Value))
        except (AttributeError, self._refused):  # no such parameters: count all as frames (an upper bound)
            queued = 0
        cancelled = min(queued, unseen)
        return unseen - cancelled, cancelled

    def _resume_or_reconnect(self, why: str) -> bool:
        """Grab again after pylon ended the session; False (and nothing restarted) after an
        AcquisitionStop of ours: a drain then ends, and :meth:`_do_stop` counts what was left."""
        if self._sensor_stopped:
            return False
        try:
            self._resume_grabbing(why)
        except self._refused as err:  # the device cannot grab any more: treat it as lost
            self._reconnect(f"{why}; grabbing again failed: {err}")
        return True

    def _reconnect(self, why: str) -> None:
        errors = reopen_with_retries(self, why, self._disconnect, self._reopen, log)
        if errors is None:
            return
        n = self.settings.reconnect_attempts
        raise DeviceError(f"basler camera {self._serial} is gone ({why}); "
                          f"{n} reconnect attempt(s) failed" + (f" (last: {errors[-1]})" if n else ""))
