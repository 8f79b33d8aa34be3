"""``camera-line``: the acquisition camera's own digital output as the sort pulse (GenICam SFNC).

The line is configured once (``LineSelector`` → ``LineMode = Output`` → ``LineSource =
UserOutputN``) and each pulse toggles ``UserOutputValue`` of ``UserOutputSelector = UserOutputN``
from a host scheduler thread: a camera cannot delay a user output by itself, so the pulse carries
the host's timing jitter plus one feature write (≈ 0.1–1 ms over GigE/USB3). Use it where that
is good enough or no other output exists.

The camera backend provides ``set_feature(name, value)`` (and ideally ``get_feature(name)``, so
the configuration is read back). Feature names follow SFNC; Basler's older cameras number user
outputs from 1 (``UserOutput1``), SFNC cameras from 0 (``UserOutput0``) — set ``user_output``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hardware.scheduler import PulseScheduler
from hardware.trigger import Trigger
from mimlsort.errors import DeviceError
from mimlsort.settings import require

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CameraLineSettings:
    line: str = "Line2"  # the output-capable line (opto-isolated out on most Basler ace: Line2)
    user_output: str = "UserOutput1"
    invert: bool = False  # LineInverter: active-low actuators
    reselect: bool = False  # select line/user output before every edge (if other code moves the selectors)
    spin_us: float = 0.0  # busy-wait the last µs before an edge (host-timing precision vs CPU)

    def __post_init__(self):
        require(bool(self.line), "line", "must name a line, e.g. Line2")
        require(bool(self.user_output), "user_output", "must name a user output, e.g. UserOutput1")
        require(0 <= self.spin_us <= 2000, "spin_us", f"must be in [0, 2000], got {self.spin_us}")


class CameraLineTrigger(Trigger):
    backend = "camera-line"
    Settings = CameraLineSettings
    acks = True  # the scheduler acknowledges each rising edge with its host time
    width_range_us = (100.0, 1_000_000.0)  # below ~100 µs two feature writes cannot make the pulse

    def __init__(self, settings=None, timing=None, *, set_feature: Callable[[str, Any], None] | None = None,
                 get_feature: Callable[[str], Any] | None = None, camera: Any = None):
        super().__init__(settings, timing)
        # the camera backend offers feature access as methods; explicit callables take precedence
        self._set = set_feature or getattr(camera, "set_feature", None)
        self._get = get_feature or getattr(camera, "get_feature", None)
        self._lock = threading.Lock()
        self._scheduler: PulseScheduler | None = None
        self._camera = camera
        self._reconnects_seen = 0

    def _do_open(self) -> str:
        s = self.settings
        if self._set is None:
            # "open the camera first" was said to a replay, whose camera was open and has no lines
            which = (f"the {self._camera.backend} camera has none" if hasattr(self._camera, "backend")
                     else "it was given no camera (open the camera first)")
            raise DeviceError(f"trigger.backend: camera-line fires the camera's own output line, and {which}: "
                              "no set_feature for its lines (basler and genicam have them)")
        self._configure_line()
        self._reconnects_seen = self._camera_reconnects()
        self._scheduler = PulseScheduler(self._output, self._on_edge, self._on_error, spin_us=s.spin_us,
                                         name="trigger-camera-line")
        self._scheduler.start()
        return f"camera-line:{s.line}/{s.user_output}"

    def _camera_reconnects(self) -> int:
        return int(getattr(self._camera, "reconnects", 0) or 0)

    def _configure_line(self) -> None:
        s = self.settings
        line = [("LineMode", "Output"), ("LineSource", s.user_output)]
        if s.invert:  # not every camera has LineInverter; only touch it when asked to
            line.append(("LineInverter", True))
        wanted = [("LineSelector", s.line), *line, ("UserOutputSelector", s.user_output), ("UserOutputValue", False)]
        for name, value in wanted:
            try:
                self._set(name, value)
            except Exception as err:
                raise DeviceError(f"{self._key(name)}: the camera refused {name} = {value!r}{self._hint(name)}: "
                                  f"{err}") from err
        if self._get is not None:
            try:
                self._set("LineSelector", s.line)
                for name, value in line:
                    got = self._get(name)
                    if got != value:
                        raise DeviceError(f"{self._key(name)}: {name} of {s.line} reads back {got!r} after setting "
                                          f"{value!r}{self._hint(name)}")
                self._set("UserOutputSelector", s.user_output)
            except DeviceError:
                raise
            except Exception as err:
                raise DeviceError(f"trigger.camera_line.line: reading back {s.line}'s configuration failed: "
                                  f"{err}") from err

    def _configure_again_if_reopened(self) -> None:
        """A camera the backend lost and reopened mid-run (``camera.reconnects``) comes back with its
        lines as it powers up (Line2: Input, LineSource Off): the pulses went on, each acknowledged
        with its host edge, and none reached the actuator. The caller holds ``_lock``."""
        n = self._camera_reconnects()
        if n != self._reconnects_seen:
            self._configure_line()
            self._reconnects_seen = n
            log.warning("camera-line trigger %s: the camera was reopened (reconnect %d); its output line was "
                        "configured again", self.device, n)

    def _do_poll(self) -> None:
        # off the sort path (a run polls a few times a second): the next edge need not wait for it
        with self._lock:
            self._configure_again_if_reopened()

    #: the setting each feature written at open carries: an error names the key to change (it said
    #: "trigger.camera-line", a key no configuration has, and the camera's own feature name)
    _KEYS = {"LineSelector": "line", "LineMode": "line", "LineSource": "user_output", "LineInverter": "invert",
             "UserOutputSelector": "user_output", "UserOutputValue": "user_output"}

    def _key(self, feature: str) -> str:
        return f"trigger.camera_line.{self._KEYS.get(feature, 'line')}"

    def _hint(self, feature: str) -> str:
        if feature == "LineMode":  # an input-only line (the opto-isolated in of a Basler ace: Line1)
            return f" ({self.settings.line} is not an output line here: name one that is, e.g. Line2)"
        return ""

    def _output(self, level: bool) -> None:
        with self._lock:
            if level:  # a pulse due before the next poll after a reconnect
                self._configure_again_if_reopened()
            if self.settings.reselect:
                self._set("UserOutputSelector", self.settings.user_output)
            self._set("UserOutputValue", level)

    def _on_edge(self, event_index: int, host_ns: int) -> None:
        self._ack(event_index, host_ns // 1000, host_ns, pulse_host_ns=host_ns, pulse_host_err_ns=0)  # the host set the line then

    def _on_error(self, err: Exception) -> None:
        self._set_unavailable(f"camera output failed: {type(err).__name__}: {err}")

    def _do_fire(self, event_index: int, fire_at_ns: int, width_us: float) -> tuple[int, float]:
        self._scheduler.schedule(event_index, fire_at_ns, width_us)
        now = time.monotonic_ns()
        return now, (fire_at_ns - now) / 1000.0

    def _do_close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()  # leaves the line low
            self._scheduler = None
