"""The camera contract every backend implements, and the registry of backends by name.

Template-method style (as python-microscope does it): the public methods check the state, log and
count; a backend implements only the ``_do_*`` methods. A camera is a context manager: ``with``
opens it and guarantees ``stop`` and ``close`` on the way out, whatever happened.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from acquisition.frame import Frame, FrameRing
from mimlsort.errors import ConfigError, StateError
from mimlsort.lazy import load_backend
from mimlsort.settings import from_mapping

log = logging.getLogger(__name__)

#: the way cells move in the camera's image -> quarter turns (``np.rot90``'s ``k``) that make them
#: move left to right, as the tracker, RT-DC files and the MIML crops assume. Turns, not mirrors:
#: a cell keeps its handedness.
FLOW_DIRECTIONS: dict[str, int] = {"left-to-right": 0, "top-to-bottom": 1, "right-to-left": 2, "bottom-to-top": 3}


class CameraState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    ACQUIRING = "acquiring"


@dataclass(frozen=True, slots=True)
class CameraInfo:
    """What an open camera delivers. ``camera_clock`` is False when timestamps are host times."""

    backend: str
    model: str
    serial: str
    width: int
    height: int
    dtype: str  # numpy dtype name of a frame: "uint8" or "uint16"
    bit_depth: int
    fps: float  # nominal frame rate (0 when unknown)
    pixel_size_um: float  # µm per pixel in the object plane (0 when unknown)
    camera_clock: bool
    id_modulus: int = 0  # frame counter range, 0 when it does not wrap
    frame_count: int = -1  # frames a finite source holds, -1 for a live camera
    # host seconds per camera-clock second, nominally: 1 for a camera, 1/speed for a recording
    # replayed in real time at ``speed`` (what the camera→host clock map may fit near); 0 for a
    # source read as fast as it goes (a replay or simulation at full speed), whose clock says
    # nothing about when its frames reach the host
    clock_rate: float = 1.0
    offset: tuple[int, int] = (0, 0)  # the ROI's offset on the sensor (px), where the camera has one
    exposure_us: float = 0.0  # exposure time in effect (0 when unknown)

    def turned(self, turns: int) -> "CameraInfo":
        """What the camera delivers once its frames are turned ``turns`` quarter turns."""
        if turns % 2 == 0:
            return self
        return dataclasses.replace(self, width=self.height, height=self.width)

    def make_ring(self, capacity: int, *, shared: bool = False) -> FrameRing:
        return FrameRing(capacity, self.height, self.width, np.dtype(self.dtype), id_modulus=self.id_modulus,
                         shared=shared)


@dataclass(frozen=True, slots=True)
class GrabResult:
    """Metadata of one frame a backend wrote into the buffer it was given."""

    frame_id: int
    timestamp_ns: int  # camera clock if ``CameraInfo.camera_clock`` else host monotonic ns


class Camera(ABC):
    """Base class of every camera backend.

    Subclasses set ``Settings`` (a frozen dataclass) and implement ``_do_open`` (returning a
    :class:`CameraInfo`), ``_do_start``, ``_do_grab``, ``_do_stop`` and ``_do_close``.
    ``_do_grab`` writes one frame into the array it is given and returns its metadata, or ``None``
    when no frame arrived within the timeout. Finite sources set ``self.exhausted = True`` when
    they have no more frames.

    ``flow_direction`` (a :data:`FLOW_DIRECTIONS` key) says which way cells move in the camera's
    image; frames are turned on their way into the ring so that they move left to right. Backends
    never see the turn: ``_do_open`` returns, and ``_do_grab`` fills, the sensor's frame; a backend
    that changes its geometry later calls :meth:`_set_info`.
    """

    backend: ClassVar[str] = "?"
    Settings: ClassVar[type]

    #: True where the backend unwraps frame ids itself so that they go on across a reconnect
    #: (Basler); otherwise the ring is told the counter restarted
    ids_continue_after_reconnect: ClassVar[bool] = False

    def __init__(self, settings: Any = None, *, flow_direction: str = "left-to-right"):
        if flow_direction not in FLOW_DIRECTIONS:
            raise ConfigError("camera.flow_direction",
                              f"must be one of {', '.join(FLOW_DIRECTIONS)}, got {flow_direction!r}")
        self.flow_direction = flow_direction
        self.turns = FLOW_DIRECTIONS[flow_direction]
        self._sensor_frame: np.ndarray | None = None  # a frame as the sensor gives it, before the turn
        if settings is None:
            settings = self.Settings()
        elif not isinstance(settings, self.Settings):
            settings = from_mapping(self.Settings, settings, f"camera.{self.backend}")
        self.settings = settings
        self.state = CameraState.CLOSED
        self.exhausted = False
        self.failed_buffers = 0  # grabs the camera reported as failed/incomplete
        self.timeouts = 0  # grabs that timed out
        self.delivered = 0
        self.reconnects = 0  # times a backend reopened a camera that disappeared mid-run
        # what opening it said that a run's file must keep (a setting the camera took otherwise):
        # the camera opens before the file exists, and the process log alone said it
        self.open_notes: list[str] = []
        self._reconnects_seen = 0
        self._info: CameraInfo | None = None
        self._sensor_info: CameraInfo | None = None

    @property
    def paced(self) -> bool:
        """True when frames come at the rate they were taken (a camera; a simulation or replay in
        real time), False when they come as fast as they are asked for: then nothing a consumer
        does is ever late, and it need not skip a backlog."""
        return True

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def info(self) -> CameraInfo:
        if self._info is None:
            raise StateError(f"{self.backend} camera is not open")
        return self._info

    def open(self) -> CameraInfo:
        if self.state is not CameraState.CLOSED:
            raise StateError(f"{self.backend} camera is already open")
        self.open_notes = []
        self._set_info(self._do_open())
        self.state = CameraState.OPEN
        log.info("opened %s camera %s (%dx%d %s)", self.backend, self._info.model, self._info.width, self._info.height, self._info.dtype)
        if self.turns:
            log.info("cells flow %s in the %s camera's image: frames are turned %d° counter-clockwise",
                     self.flow_direction, self.backend, 90 * self.turns)
        return self._info

    def _set_info(self, sensor: CameraInfo) -> None:
        """Take what the sensor delivers (at open, or after a backend changed its geometry)."""
        self._sensor_info = sensor
        self._info = sensor.turned(self.turns)
        if self.turns:
            self._sensor_frame = np.empty((sensor.height, sensor.width), dtype=sensor.dtype)

    @property
    def sensor_info(self) -> CameraInfo:
        """What the sensor delivers, before frames are turned (:attr:`info` when they are not)."""
        if self._sensor_info is None:
            raise StateError(f"{self.backend} camera is not open")
        return self._sensor_info

    def start(self) -> None:
        if self.state is not CameraState.OPEN:
            raise StateError(f"{self.backend} camera must be open and idle to start (is {self.state.value})")
        self._do_start()
        self.state = CameraState.ACQUIRING

    def stop(self) -> None:
        if self.state is CameraState.ACQUIRING:
            try:
                self._do_stop()
            finally:
                self.state = CameraState.OPEN

    def close(self) -> None:
        if self.state is CameraState.CLOSED:
            return
        try:
            self.stop()
        finally:
            try:
                self._do_close()
            finally:
                self.state = CameraState.CLOSED

    def __enter__(self) -> "Camera":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames ----------------------------------------------------------------------------------
    def grab_into(self, ring: FrameRing, timeout_s: float = 1.0) -> bool:
        """Grab one frame straight into the ring's next slot; False on timeout or end of stream."""
        if self.state is not CameraState.ACQUIRING:
            raise StateError(f"{self.backend} camera is not acquiring")
        res = self._grab_turned(ring.next_slot(), timeout_s)
        if res is None:
            if not self.exhausted:
                self.timeouts += 1
            return False
        if self.reconnects != self._reconnects_seen:  # a reopened camera restarts its frame counter
            self._reconnects_seen = self.reconnects
            if not self.ids_continue_after_reconnect:
                ring.note_restart()
        ring.commit(res.frame_id, res.timestamp_ns)
        self.delivered += 1
        return True

    def grab_many_into(self, ring: FrameRing, max_frames: int, timeout_s: float = 1.0) -> int:
        """Grab up to ``max_frames`` frames into the ring, each published as soon as it is in;
        returns how many (0 on timeout or end of stream, as :meth:`grab_into`).

        A backend that can grab a run of frames without the GIL implements :meth:`_do_grab_many`
        (the grab thread then takes the GIL per run, not per frame); turned frames go one by one."""
        if not self.turns:
            n = self._do_grab_many(ring, max_frames, timeout_s)
            if n is not None:
                return n
        return 1 if max_frames > 0 and self.grab_into(ring, timeout_s) else 0

    def _grab_turned(self, out: np.ndarray, timeout_s: float) -> GrabResult | None:
        if not self.turns:
            return self._do_grab(out, timeout_s)
        res = self._do_grab(self._sensor_frame, timeout_s)
        if res is not None:
            np.copyto(out, np.rot90(self._sensor_frame, self.turns))
        return res

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        """One frame in a new array (convenience for tests and single-image tools)."""
        if self.state is not CameraState.ACQUIRING:
            raise StateError(f"{self.backend} camera is not acquiring")
        info = self.info
        out = np.empty((info.height, info.width), dtype=info.dtype)
        res = self._grab_turned(out, timeout_s)
        if res is None:
            if not self.exhausted:
                self.timeouts += 1
            return None
        self.delivered += 1
        return Frame(out, res.frame_id, res.timestamp_ns, time.monotonic_ns(), info.camera_clock)

    def apply(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply setting changes to an open camera; returns the values actually in effect.

        The default supports none; backends with live-adjustable features override it.
        """
        if changes:
            raise ConfigError(f"camera.{self.backend}.{next(iter(changes))}", "cannot be changed on an open camera")
        return {}

    # -- backend hooks ---------------------------------------------------------------------------
    @abstractmethod
    def _do_open(self) -> CameraInfo: ...

    def _do_start(self) -> None:
        pass

    @abstractmethod
    def _do_grab(self, out: np.ndarray, timeout_s: float) -> GrabResult | None: ...

    def _do_grab_many(self, ring: FrameRing, max_frames: int, timeout_s: float) -> int | None:
        """A run of frames into the ring, as :meth:`grab_many_into`; None: not here, frame by frame."""
        return None

    def _do_stop(self) -> None:
        pass

    def _do_close(self) -> None:
        pass


#: backend name -> "module:Class"; modules are imported only when the backend is asked for, so a
#: missing vendor SDK affects only its own backend.
BACKENDS: dict[str, str] = {
    "synthetic": "acquisition.synthetic:SyntheticCamera",
    "replay": "acquisition.replay:ReplayCamera",
    "basler": "acquisition.basler:BaslerCamera",
    "genicam": "acquisition.genicam:GenicamCamera",
    "ximea": "acquisition.ximea:XimeaCamera",
}


def camera_class(name: str) -> type[Camera]:
    """The camera class registered under ``name``."""
    return load_backend("camera", name, BACKENDS)


def make_camera(name: str, settings: Any = None, *, flow_direction: str = "left-to-right") -> Camera:
    """A closed camera of backend ``name`` configured from a settings object or mapping."""
    return camera_class(name)(settings, flow_direction=flow_direction)
