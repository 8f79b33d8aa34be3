"""The sort-trigger contract every output implements, its records, and the registry of backends.

Template-method style, like :mod:`acquisition.camera`: the public methods check state, time,
count and log; a backend implements ``_do_open``, ``_do_fire`` and ``_do_close`` (and optionally
``_do_poll`` for device state read by ``status()``, ``_forget`` for acks that never came). A
trigger is a context manager.

The one rule of the sort path: :meth:`Trigger.fire` never raises and never waits on anything
but the write itself. A device that fails mid-run turns into records with ``ok=False`` and the
error, ``available`` goes False, the error is logged once and shown by :meth:`Trigger.status`;
the run goes on deciding (the pipeline records those cells as "trigger unavailable").
:meth:`Trigger.reconnect` tries to bring the device back.

Times are host ``time.monotonic_ns()``; delays and widths are µs.

Test pulses (:meth:`Trigger.test_fire`, negative indices) are counted apart from the cells'
(``test_fired``, ``test_acked`` …): a GUI Test fire during a run counted among the cells' pulses
broke the run's books (fired = acked + device_refused + unacked). The counters are written from
several threads (the sort thread, a test-fire thread, a reader or scheduler thread, the one
draining acks) under ``_pending_lock``: ``x += 1`` on an attribute is a load and a store, and a
free-threaded interpreter (or an eval-breaker between them) loses increments.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from hardware.timing import TimingSettings, fire_time_ns
from mimlsort.pickling import by_fields
from mimlsort.errors import StateError
from mimlsort.logthrottle import LogThrottle
from mimlsort.lazy import load_backend
from mimlsort.settings import from_mapping

log = logging.getLogger(__name__)

#: after the last pulse's end, how long ``settle`` still gives a device without acks to be done
_SETTLE_MARGIN_NS = 5_000_000
#: pulses counted unacked that a late ack can still be matched to (the newest; ~1 s at 4,000 cells/s)
LATE_ACK_MEMORY = 4096


@dataclass(frozen=True, slots=True)
class FireRequest:
    """Fire a pulse of ``width_us`` at host time ``fire_at_ns`` for cell ``event_index``.

    Not validated on construction (it is built per cell on the sort path); :meth:`Trigger.fire`
    turns a bad request into a failed record.
    """

    event_index: int
    fire_at_ns: int
    width_us: float

    @classmethod
    def for_cell(cls, event_index: int, exit_host_ns: int, velocity_mm_s: float,
                 timing: TimingSettings) -> "FireRequest":
        """The request for a cell that left the constriction at ``exit_host_ns`` (host clock)."""
        return cls(event_index, fire_time_ns(exit_host_ns, velocity_mm_s, timing), timing.pulse_width_us)


@by_fields
@dataclass(frozen=True, slots=True)
class FireRecord:
    """What happened to one request: the audit trail stored with the cell.

    ``scheduled_ns`` is the requested fire time, ``sent_ns`` when the command left the host (0
    if it never did), ``delay_us`` the delay handed to the device (device-timed outputs) or to
    the host scheduler. ``late``: the fire time was closer than ``min_lead_us`` to now, nothing
    was sent. ``ok``: the command was handed over; the device's confirmation arrives later as an
    :class:`Ack`.
    """

    event_index: int
    scheduled_ns: int
    sent_ns: int
    delay_us: float
    width_us: float
    late: bool
    ok: bool
    error: str
    device: str

    @property
    def unavailable(self) -> bool:
        """Not sent because the device failed, now or before (decision reason "trigger unavailable")."""
        return not self.ok and self.error.startswith("unavailable")

    @property
    def refused(self) -> bool:
        """Not sent because the request itself was out of range (a fire time further ahead than
        ``max_delay_us``, a width the device cannot make): the device is fine."""
        return not self.ok and self.error.startswith("refused")


@dataclass(frozen=True, slots=True)
class Ack:
    """The device says it fired the pulse of ``event_index`` at ``device_time_us`` (its own clock;
    host µs for host-timed outputs); ``host_ns`` is when the host learned of it; ``pulse_host_ns``
    when the pulse went out on the host clock, where that is known (host-timed outputs, a device
    clock related to the host's), else -1: against the fire record's ``scheduled_ns`` it says how
    well the pulse was timed. ``pulse_host_err_ns``: how far off ``pulse_host_ns`` may be (a
    device clock mapped through round trips: about one standard error, see
    :meth:`~hardware.timing.DeviceClock.doubt_ns`; 0 where the host set the edge itself; -1 not
    known)."""

    event_index: int
    device_time_us: int
    host_ns: int
    pulse_host_ns: int = -1
    pulse_host_err_ns: int = -1


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """The device says, after the command was handed over, that the pulse of ``event_index`` was
    not output (``kind`` "refused": its queue was full, it was not armed, the counter was busy) or
    came later than its tolerance ("late"); ``host_ns`` is when the host learned of it. Stored with
    the run, so a cell recorded as fired can be told apart from one whose pulse never came."""

    event_index: int
    host_ns: int
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class TriggerStatus:
    device: str
    open: bool
    available: bool
    error: str  # the last error ("" when none)
    fired: int  # requests handed to the device
    late: int  # requests not fired because they came too late
    failed: int  # requests refused or lost to a device error
    acked: int  # acks received
    unacked: int  # fired requests whose ack did not come within ack_timeout_s after the pulse
    device_errors: int  # errors the device reported asynchronously
    device_late: int  # pulses the device output later than its own tolerance (still fired)
    device_refused: int = 0  # pulses handed over that the device then did not output (see DeviceReport)
    late_acks: int = 0  # acks that came after their pulse was counted unacked (then counted acked)
    # test pulses (test_fire), counted as the cells' are above and kept out of those counters
    test_fired: int = 0
    test_late: int = 0
    test_failed: int = 0
    test_acked: int = 0
    test_unacked: int = 0
    test_refused: int = 0


class Trigger(ABC):
    """Base class of every sort output.

    Subclasses set ``backend``, ``Settings`` (a frozen dataclass) and implement ``_do_open``
    (returning a device description), ``_do_fire(event_index, fire_at_ns, width_us)`` returning
    ``(sent_ns, delay_us)`` and raising on a device error, and ``_do_close``. Backends whose
    device confirms pulses set ``acks = True`` and call :meth:`_ack` (from any thread).
    """

    backend: ClassVar[str] = "?"
    Settings: ClassVar[type]
    acks: ClassVar[bool] = False
    ack_timeout_s: ClassVar[float] = 1.0
    #: this many pulses in a row without their ack, and nothing else heard from the device for
    #: ``ack_timeout_s``: the device is taken as hung (a crashed sketch behind a USB bridge keeps
    #: the port open and takes the bytes; the run went on "firing" into it, reported the trigger
    #: ok and ended with exit code 0)
    unacked_fault_after: ClassVar[int] = 5
    #: shortest and longest pulse the output can make (µs)
    width_range_us: ClassVar[tuple[float, float]] = (1.0, 1_000_000.0)
    #: a device outputs the pulses (the dry-run backends only count or write them down)
    has_device: ClassVar[bool] = True
    #: the device counts a record's ``delay_us`` from when the command reached it (serial in delay
    #: mode, an instrument's trigger delay); else the pulse is due at a time, on the host's clock
    #: (a scheduler thread) or the device's (serial clock mode)
    delay_from_arrival: ClassVar[bool] = False

    def __init__(self, settings: Any = None, timing: TimingSettings | None = None):
        if settings is None:
            settings = self.Settings()
        elif not isinstance(settings, self.Settings):
            # the configuration's table: [trigger.camera_line] (it said trigger.camera-line.spin_us)
            settings = from_mapping(self.Settings, settings, f"trigger.{self.backend.replace('-', '_')}")
        self.settings = settings
        self.timing = timing or TimingSettings()
        self.is_open = False
        self.available = False
        self.faulted = False  # failed while open (not merely closed); cleared by a successful open
        self.device = self.backend
        self.error = ""
        self.fired = 0
        self.late = 0
        self.failed = 0
        self.acked = 0
        self.unacked = 0
        self.device_errors = 0
        self.device_late = 0
        self.device_refused = 0
        self._reports: collections.deque[DeviceReport] = collections.deque()
        # a device can report an error per pulse (1,000 a second): counted in full, logged thinned
        self._log = LogThrottle(log)
        self._acks: collections.deque[Ack] = collections.deque()
        self._pending: dict[int, int] = {}  # event_index -> time by which its ack must have come
        self._last_pulse_end_ns = 0  # when the last pulse handed to the device ends
        self._pending_lock = threading.Lock()
        self._unacked_in_row = 0  # overdue acks while nothing was heard from the device
        self._last_heard_ns = 0  # when the device last said anything (an ack, a reply, an error)
        self.acks_lost = 0  # pulses the device says it output without an ack (serial ERR 7)
        # counted unacked, newest last: an ack that still comes moves its pulse to acked
        self._written_off: dict[int, None] = {}
        self.late_acks = 0  # acks that came after their pulse was counted unacked (then taken off it)
        self._test_pulses = 0  # test pulses asked for (they take the indices -1, -2, ...)
        self.test_fired = self.test_late = self.test_failed = 0
        self.test_acked = self.test_unacked = self.test_refused = 0
        # the test pulses' records, for the run's audit trail (drain_test_pulses): an operator's
        # pulse mid-run sorts whatever is at the junction then
        self._tests: collections.deque[FireRecord] = collections.deque()
        self._min_lead_ns = round(self.timing.min_lead_us * 1000)
        self._max_delay_ns = round(self.timing.max_delay_us * 1000)

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> "Trigger":
        if self.is_open:
            raise StateError(f"{self.backend} trigger is already open")
        self.device = self._do_open() or self.backend
        self.is_open = True
        self.available = True
        self.faulted = False
        self.error = ""
        log.info("opened %s trigger %s", self.backend, self.device)
        return self

    def close(self) -> None:
        if not self.is_open:
            return
        try:
            self._do_close()
        except Exception as err:
            if not self.faulted:
                raise
            # the device failed during the run, and that was said: failing again as it closes (a
            # removed DAQ's task, a full disk's last flush) is the same failure, and raised, it made
            # the run's end "closing failed" (exit code 1) where its trigger had failed (3)
            log.warning("%s trigger %s: closing after its failure: %s", self.backend, self.device, err)
        finally:
            self.is_open = False
            self.available = False
            self._log.flush()
            log.info("closed %s trigger %s (fired %d, late %d, failed %d; test pulses %d)", self.backend,
                     self.device, self.fired, self.late, self.failed, self.test_fired)

    def __enter__(self) -> "Trigger":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reconnect(self) -> bool:
        """Close the device quietly and open it again; True when it is available again."""
        if self.is_open:
            try:
                self._do_close()
            except Exception as err:  # the device is already broken; closing is best effort
                log.debug("%s trigger: close before reconnect failed: %s", self.backend, err)
        self.is_open = self.available = False
        try:
            self.open()
        except Exception as err:
            self._set_unavailable(f"reconnect failed: {err}")
            return False
        with self._pending_lock:
            # pulses handed to the device before it was closed: whether they came out is not known
            # (cleared uncounted, they were neither acked nor unacked: fired != acked + refused + unacked)
            self._count_unacked(list(self._pending))
            self._write_off(list(self._pending))
            self._pending.clear()
        self._unacked_in_row = 0
        self._last_heard_ns = time.monotonic_ns()
        return True

    # -- the sort path ---------------------------------------------------------------------------
    def fire(self, request: FireRequest) -> FireRecord:
        """Hand one pulse to the device. Never raises; see the module docstring."""
        idx, at, width = request.event_index, request.fire_at_ns, request.width_us
        if not self.available:
            self._count("failed", idx)
            why = self.error or ("trigger is not open" if not self.is_open else "trigger unavailable")
            return FireRecord(idx, at, 0, 0.0, width, False, False, f"unavailable: {why}", self.device)
        lead = at - time.monotonic_ns()
        if lead < self._min_lead_ns:
            self._count("late", idx)
            return FireRecord(idx, at, 0, lead / 1000.0, width, True, False,
                              f"late: fire time {lead / 1000.0:.0f} µs ahead < min_lead_us "
                              f"{self.timing.min_lead_us:g}", self.device)
        busy = self._link_busy_ns()
        if lead - busy < self._min_lead_ns:
            self._count("late", idx)
            return FireRecord(idx, at, 0, lead / 1000.0, width, True, False,
                              f"late: {self._link_busy_why(busy)}, the fire time is {lead / 1000.0:.0f} µs ahead",
                              self.device)
        lo, hi = self.width_range_us
        if not (lo <= width <= hi) or lead > self._max_delay_ns:
            self._count("failed", idx)
            why = (f"width {width} µs outside [{lo:g}, {hi:g}]" if not (lo <= width <= hi)
                   else f"fire time {lead / 1e9:.3f} s ahead > max_delay_us {self.timing.max_delay_us:g}")
            return FireRecord(idx, at, 0, lead / 1000.0, width, False, False, f"refused: {why}", self.device)
        end = at + round(width * 1000)
        if self.acks:
            # awaited before the command goes: the device's refusal (ERR 3, queue full) can reach
            # the reader thread before _do_fire returns, and found nothing to take off the list,
            # so the refused pulse was later counted as unacknowledged too
            with self._pending_lock:
                self._pending[idx] = end + round(self.ack_timeout_s * 1e9)
        try:
            sent_ns, delay_us = self._do_fire(idx, at, width)
        except Exception as err:  # whatever the device or its driver raised: the run must go on
            with self._pending_lock:
                self._pending.pop(idx, None)
                if idx < 0:
                    self.test_failed += 1
                else:
                    self.failed += 1
            self._set_unavailable(f"{type(err).__name__}: {err}")
            return FireRecord(idx, at, 0, lead / 1000.0, width, False, False, f"unavailable: {self.error}",
                              self.device)
        # the one lock a pulse takes for its books (an ack backend took it once more above)
        with self._pending_lock:
            if idx < 0:
                self.test_fired += 1
            else:
                self.fired += 1
            if end > self._last_pulse_end_ns:
                self._last_pulse_end_ns = end
        return FireRecord(idx, at, sent_ns, delay_us, width, False, True, "", self.device)

    def settle(self, timeout_s: float = 5.0) -> list[Ack]:
        """Wait until the pulses already handed over have gone out and, where the device
        acknowledges, their acks are in (at most ``timeout_s``); returns the acks that came. A run
        calls this before closing its files and the device: closing disarms a device, which drops
        the pulses still queued for the last cells decided, and their acks would miss the file."""
        out: list[Ack] = []
        deadline = time.monotonic_ns() + round(timeout_s * 1e9)
        while self.is_open and self.available:
            out += self.drain_acks()
            with self._pending_lock:
                waiting = bool(self._pending)
            now = time.monotonic_ns()
            if (not waiting and now >= self._last_pulse_end_ns + _SETTLE_MARGIN_NS) or now >= deadline:
                break
            time.sleep(0.002)
        if self.is_open and self.faulted:
            # a device that failed acknowledges nothing more: the pulses it was handed and has
            # not acknowledged are unacked now, not when their deadlines pass. The run reads its
            # counters next, and they were left out (camera-line: fired 3, acked 0, unacked 0)
            out += self.drain_acks()
            with self._pending_lock:
                lost = list(self._pending)
                self._pending.clear()
                self._count_unacked(lost)
                self._write_off(lost)
            if lost:
                self._forget(lost)
        return out

    def drain_acks(self) -> list[Ack]:
        """The acks that arrived since the last call; also counts overdue ones as ``unacked``."""
        out = []
        while self._acks:
            out.append(self._acks.popleft())
        if self.acks:
            now = time.monotonic_ns()
            with self._pending_lock:
                late = late_tests = 0
                for a in out:
                    # an ack after its deadline (a stalled link or reader) was counted acked on top
                    # of unacked: fired != acked + refused + unacked. The pulse came: it is acked
                    if self._pending.pop(a.event_index, None) is None and a.event_index in self._written_off:
                        del self._written_off[a.event_index]
                        if a.event_index < 0:
                            late_tests += 1
                        else:
                            late += 1
                due = [(k, deadline) for k, deadline in self._pending.items() if deadline < now]
                for k, _ in due:
                    del self._pending[k]
                self._write_off([k for k, _ in due])
                self._count_unacked([k for k, _ in due])
                self.unacked -= late
                self.test_unacked -= late_tests
                self.late_acks += late
            late += late_tests
            if late:
                self._log.log(logging.WARNING, "late ack", "%s trigger: %d ack(s) came after the pulse was counted "
                              "unacked (more than %g s after its end); counted acked", self.backend, late,
                              self.ack_timeout_s)
            overdue = [k for k, _ in due]
            # a pulse after whose end the device said anything (other acks, ERR 7 for acks it had
            # no room to send, a TIME reply) was not lost to a hang
            timeout_ns = round(self.ack_timeout_s * 1e9)
            silent = sum(self._last_heard_ns < deadline - timeout_ns for _, deadline in due)
            if out or silent < len(due):
                self._unacked_in_row = 0
            self._unacked_in_row += silent
            if overdue:
                self._forget(overdue)
                # a test pulse has no cell: "cell -2" read as a cell's index
                example = f"cell {overdue[0]}" if overdue[0] >= 0 else f"test pulse {overdue[0]}"
                self._log.log(logging.WARNING, "no ack", "%s trigger: no ack for %d pulse(s), e.g. %s", self.backend,
                              len(overdue), example)
                if self._unacked_in_row >= self.unacked_fault_after and self.available:
                    self._set_unavailable(
                        f"the device acknowledged none of the last {self._unacked_in_row} pulses within "
                        f"{self.ack_timeout_s:g} s of their end: it may have hung, been reset or lost power "
                        "(whether those pulses came out is not known)")
        return out

    def drain_reports(self) -> list[DeviceReport]:
        """The device's reports about single pulses since the last call (see :class:`DeviceReport`)."""
        out = []
        while self._reports:
            out.append(self._reports.popleft())
        return out

    def test_fire(self, width_us: float | None = None, delay_us: float | None = None) -> FireRecord:
        """Fire one pulse now (plus ``delay_us``) for checking the wiring. The default delay is 2 ×
        the min lead (at least 1 ms) after the command can have reached the device: a serial link
        at 115200 baud takes ~1.9 ms for the command, and a fixed 1–2 ms was always "late" there."""
        if not self.is_open:
            raise StateError(f"{self.backend} trigger is not open")
        delay = delay_us if delay_us is not None else self.default_test_delay_us()
        # -1, -2, ...: pulses awaiting their acks are kept by index, and test pulses that shared -1
        # were one: a silent device's missing test acks went uncounted, and a late one could take
        # a written-off -1 off unacked
        with self._pending_lock:  # two test fires at once (the GUI's worker threads) took one index
            self._test_pulses += 1
            idx = -self._test_pulses
        rec = self.fire(FireRequest(idx, time.monotonic_ns() + round(delay * 1000),
                                    width_us or self.timing.pulse_width_us))
        self._tests.append(rec)
        return rec

    def drain_test_pulses(self) -> list[FireRecord]:
        """The records of the test pulses asked for since the last call (sent or not), oldest
        first: a run writes them into its file's log."""
        out = []
        while self._tests:
            out.append(self._tests.popleft())
        return out

    def default_test_delay_us(self) -> float:
        """The delay :meth:`test_fire` uses unless given one (µs)."""
        return max(2 * self.timing.min_lead_us, 1000.0) + self._link_busy_ns() / 1000.0

    #: whether a run may poll the device while it sorts (``poll``). Not where polling holds the
    #: lock a pulse needs (VISA: an error-queue query takes the bus for milliseconds, and a cell
    #: decided meanwhile would be fired late)
    poll_during_run: ClassVar[bool] = True

    def poll(self) -> None:
        """Let the backend look after its device (error queue, clock sync); a run calls this a few
        times a second off the sort path. A device that fails here is marked unavailable."""
        if self.available and self.is_open:
            try:
                self._do_poll()
            except Exception as err:
                self._set_unavailable(f"{type(err).__name__}: {err}")

    def status(self) -> TriggerStatus:
        """A snapshot for the operator; polls the device's error state where the backend can."""
        self.poll()
        return TriggerStatus(self.device, self.is_open, self.available, self.error, self.fired, self.late,
                             self.failed, self.acked, self.unacked, self.device_errors, self.device_late,
                             self.device_refused, self.late_acks, self.test_fired, self.test_late,
                             self.test_failed, self.test_acked, self.test_unacked, self.test_refused)

    # -- for backends ----------------------------------------------------------------------------
    def _link_busy_ns(self) -> int:
        """How long a command sent now would wait for, and take on, a slow link (0: no such link)."""
        return 0

    def _count(self, counter: str, event_index: int) -> None:
        """One more in ``counter`` (its ``test_`` twin for a test pulse); off the fired path."""
        name = "test_" + counter if event_index < 0 else counter
        with self._pending_lock:
            setattr(self, name, getattr(self, name) + 1)

    def _count_unacked(self, indices: list[int]) -> None:
        """Count these pulses unacked, test pulses apart; the caller holds ``_pending_lock``."""
        tests = sum(1 for k in indices if k < 0)
        self.unacked += len(indices) - tests
        self.test_unacked += tests

    def _write_off(self, indices: list[int]) -> None:
        """Remember pulses counted unacked (the newest ``LATE_ACK_MEMORY``), for an ack that still
        comes; the caller holds ``_pending_lock``."""
        self._written_off.update(dict.fromkeys(indices))
        while len(self._written_off) > LATE_ACK_MEMORY:
            del self._written_off[next(iter(self._written_off))]

    def _link_busy_why(self, busy_ns: int) -> str:
        """What ``busy_ns`` from :meth:`_link_busy_ns` is made of, for the late record's reason."""
        return f"the command would reach the device in {busy_ns / 1000.0:.0f} µs"

    def _heard(self) -> None:
        """The device said something (any line, any reply): it is not hung."""
        self._last_heard_ns = time.monotonic_ns()

    def _ack(self, event_index: int, device_time_us: int, host_ns: int | None = None, pulse_host_ns: int = -1,
             pulse_host_err_ns: int = -1) -> None:
        self._heard()
        with self._pending_lock:
            if event_index < 0:
                self.test_acked += 1
            else:
                self.acked += 1
        self._acks.append(Ack(event_index, device_time_us, host_ns if host_ns is not None else time.monotonic_ns(),
                              pulse_host_ns, pulse_host_err_ns))

    def _device_error(self, message: str, level: int = logging.ERROR) -> None:
        """The device reported an error it recovered from (the trigger stays available)."""
        with self._pending_lock:
            self.device_errors += 1
        self.error = message
        self._log.log(level, "device error", "%s trigger %s reports: %s", self.backend, self.device, message)

    def _report(self, event_index: int, kind: str, message: str) -> None:
        """The device reported on one pulse already handed over: "refused" (it will not come: no
        ack is waited for, and it counts as failed) or "late" (it came, later than it should)."""
        test = event_index < 0
        with self._pending_lock:
            if kind == "refused":
                if test:
                    self.test_refused += 1
                    self.test_failed += 1
                else:
                    self.device_refused += 1
                    self.failed += 1
                # a refusal after the ack deadline (a stalled link) was counted refused on top of
                # unacked: fired != acked + refused + unacked. It will not come: it is refused
                if self._pending.pop(event_index, None) is None and event_index in self._written_off:
                    del self._written_off[event_index]
                    if test:
                        self.test_unacked -= 1
                    else:
                        self.unacked -= 1
            elif not test:  # a test pulse's lateness is in its report (the file's device_reports)
                self.device_late += 1
        self._reports.append(DeviceReport(event_index, time.monotonic_ns(), kind, message))

    def _set_unavailable(self, message: str) -> None:
        was = self.available
        self.available = False
        self.faulted = True
        self.error = message
        if was:
            log.error("%s trigger %s is unavailable: %s — cells are no longer sorted", self.backend, self.device,
                      message)

    # -- backend hooks ---------------------------------------------------------------------------
    @classmethod
    def check_installed(cls, settings: Any) -> None:
        """Raise what opening would raise for a missing SDK or driver (BackendUnavailable), or a
        device the driver does not know, without opening or reserving anything (``config --check``)."""

    @abstractmethod
    def _do_open(self) -> str: ...

    @abstractmethod
    def _do_fire(self, event_index: int, fire_at_ns: int, width_us: float) -> tuple[int, float]: ...

    def _do_close(self) -> None:
        pass

    def _do_poll(self) -> None:
        pass

    def _forget(self, event_indices: list[int]) -> None:
        """These pulses' acks are overdue: drop whatever the backend keeps for them."""


#: backend name -> "module:Class"; a backend's module (and its SDK) is imported only when asked for.
TRIGGERS: dict[str, str] = {
    "null": "hardware.dryrun:NullTrigger",
    "log": "hardware.dryrun:LogTrigger",
    "serial": "hardware.serial_trigger:SerialTrigger",
    "visa": "hardware.visa_trigger:VisaTrigger",
    "camera-line": "hardware.camera_line:CameraLineTrigger",
    "nidaqmx": "hardware.nidaq:NidaqTrigger",
}


def trigger_class(name: str) -> type[Trigger]:
    """The trigger class registered under ``name``."""
    return load_backend("trigger", name, TRIGGERS)


def make_trigger(name: str, settings: Any = None, timing: TimingSettings | None = None, **resources: Any) -> Trigger:
    """A closed trigger of backend ``name``.

    ``resources`` are objects a backend may need besides its settings (``camera-line``: the open
    ``camera``, or its ``set_feature``/``get_feature``); each backend gets only those it declares,
    so a caller can offer the same resources whatever backend is configured.
    """
    cls = trigger_class(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return cls(settings, timing, **{k: v for k, v in resources.items() if takes_any or k in params})
