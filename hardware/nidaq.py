"""``nidaqmx``: a counter pulse on an NI-DAQ device (NI-DAQmx driver + the ``nidaqmx`` package).

One counter output task makes one pulse per cell. The counter times the delay itself: a worker
thread arms the counter ``arm_ahead_us`` before the fire time with ``initial_delay`` = the time
left, so the host's jitter only has to stay below ``arm_ahead_us``. A counter makes one pulse at
a time; a pulse due while the previous one is still armed or running waits for it and is fired
late or dropped (counted, logged) — keep ``arm_ahead_us`` below the closest cell spacing.

NI's driver cannot be installed here: without it, opening raises BackendUnavailable naming what
to install; the pulse logic is tested against a stand-in of the ``nidaqmx`` package
(tests/test_triggers.py) that follows NI's documented task semantics.
"""

from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from dataclasses import dataclass

from hardware.trigger import Trigger
from mimlsort.errors import BackendUnavailable, DeviceError
from mimlsort.settings import require

log = logging.getLogger(__name__)

#: how often the pulse thread looks whether the counter's previous pulse is over
_BUSY_POLL_S = 50e-6


def _nidaqmx():
    try:
        import nidaqmx
        import nidaqmx.constants
        import nidaqmx.system
    except ImportError as err:
        raise BackendUnavailable("the nidaqmx trigger needs NI-DAQmx: install NI's NI-DAQmx driver and "
                                 "`pip install nidaqmx`") from err
    return nidaqmx


def _present(nidaqmx, device: str) -> None:
    """``device`` is one the driver knows; BackendUnavailable where NI's driver is not installed."""
    try:
        names = nidaqmx.system.System.local().devices.device_names
    except Exception as err:  # the package is there but NI's driver library is not
        raise BackendUnavailable(f"NI-DAQmx driver not found ({err}); install NI-DAQmx from ni.com") from err
    if device not in names:
        raise DeviceError(f"trigger.nidaqmx.device: {device!r} not found (present: {', '.join(names) or 'none'})")


@dataclass(frozen=True, slots=True)
class NidaqSettings:
    device: str = "Dev1"
    counter: str = "ctr0"
    output_terminal: str = ""  # e.g. "/Dev1/PFI12"; "" = the counter's default output
    arm_ahead_us: float = 2000.0  # arm the counter this long before the fire time
    min_low_time_us: float = 1.0  # the counter's low time before each pulse, µs (NI's low_time)

    def __post_init__(self):
        require(bool(self.device), "device", "must name the DAQ device, e.g. Dev1")
        require(bool(self.counter), "counter", "must name a counter, e.g. ctr0")
        # finite: inf passed, and the scheduler thread died on round(inf) as it started (no pulse went out)
        require(100 <= self.arm_ahead_us < math.inf, "arm_ahead_us",
                f"must be >= 100 and finite, got {self.arm_ahead_us}")
        # a negative or infinite low time passed `config --check` and went to NI-DAQmx as low_time
        # only when the run opened the counter
        require(0 < self.min_low_time_us < math.inf, "min_low_time_us",
                f"must be > 0 and finite, got {self.min_low_time_us}")


class NidaqTrigger(Trigger):
    backend = "nidaqmx"
    Settings = NidaqSettings
    acks = True  # acknowledged when the counter is armed with the pulse (host time)
    width_range_us = (0.1, 1_000_000.0)

    def __init__(self, settings=None, timing=None):
        super().__init__(settings, timing)
        self._task = None
        self._chan = None
        self._heap: list[tuple[int, int, float]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    @classmethod
    def check_installed(cls, settings: NidaqSettings) -> None:
        # the driver lists its devices without reserving one: a missing driver or a device name
        # it does not know passed `config --check`, and the run was refused at its start
        _present(_nidaqmx(), settings.device)

    def _do_open(self) -> str:
        s = self.settings
        nidaqmx = _nidaqmx()
        _present(nidaqmx, s.device)
        task = None
        try:
            task = nidaqmx.Task("mimlsort-sort-pulse")
            chan = task.co_channels.add_co_pulse_chan_time(
                f"{s.device}/{s.counter}", low_time=s.min_low_time_us * 1e-6,
                high_time=self.timing.pulse_width_us * 1e-6, initial_delay=1e-6,
                idle_state=nidaqmx.constants.Level.LOW)
            if s.output_terminal:
                chan.co_pulse_term = s.output_terminal
            task.timing.cfg_implicit_timing(sample_mode=nidaqmx.constants.AcquisitionType.FINITE, samps_per_chan=1)
        except Exception as err:
            if task is not None:
                # left open, the driver keeps the task's name (and its counter) taken: every later
                # open in this process (the GUI's next Test fire, a run after the setting was
                # corrected) failed with "task name already in use"
                try:
                    task.close()
                except Exception as close_err:
                    log.debug("nidaqmx trigger: closing the task that failed to set up: %s", close_err)
            raise DeviceError(f"trigger.nidaqmx: cannot set up {s.device}/{s.counter}: {err}") from err
        self._task, self._chan = task, chan
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="trigger-nidaqmx", daemon=True)
        self._thread.start()
        return f"nidaqmx:{s.device}/{s.counter}"

    def _do_fire(self, event_index: int, fire_at_ns: int, width_us: float) -> tuple[int, float]:
        with self._cond:
            heapq.heappush(self._heap, (fire_at_ns, event_index, width_us))
            self._cond.notify()
        now = time.monotonic_ns()
        return now, (fire_at_ns - now) / 1000.0

    def _run(self) -> None:
        ahead = round(self.settings.arm_ahead_us * 1000)
        try:
            while True:
                with self._cond:
                    if self._stop:
                        return
                    if not self._heap:
                        self._cond.wait(0.5)
                        continue
                    at, idx, width = self._heap[0]
                    wait = at - ahead - time.monotonic_ns()
                    if wait > 0:
                        self._cond.wait(wait / 1e9)
                        continue
                    heapq.heappop(self._heap)
                # the previous pulse still armed or running: wait for it up to this one's fire time.
                # Polled, not ``wait_until_done(timeout)``, whose timeout is a driver error — it
                # would take the trigger down for the rest of the run over one close pair of cells
                busy = False
                while not self._task.is_task_done() and time.monotonic_ns() < at:
                    busy = True
                    time.sleep(_BUSY_POLL_S)
                left = (at - time.monotonic_ns()) * 1e-9
                if left <= 0:
                    if busy:
                        why = f"pulse for cell {idx} dropped: counter busy until after its fire time"
                        self._report(idx, "refused", why)
                        self._device_error(why)
                    else:  # the host's doing, not the device's: no device error
                        why = (f"pulse for cell {idx} dropped: armed {-left * 1e6:.0f} µs after its fire time "
                               f"(the host held this thread up)")
                        self._report(idx, "refused", why)
                        self._log.log(logging.WARNING, "armed late", "nidaqmx trigger %s: %s", self.device, why)
                    continue
                self._task.stop()
                self._chan.co_pulse_time_initial_delay = left
                self._chan.co_pulse_high_time = width * 1e-6
                self._task.start()
                self._ack(idx, time.monotonic_ns() // 1000)
        except Exception as err:  # driver error: the trigger becomes unavailable, the run goes on
            if not self._stop:
                self._set_unavailable(f"NI-DAQmx: {err}")

    def _do_close(self) -> None:
        with self._cond:
            self._stop = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        if self._task is not None:
            try:
                self._task.stop()
            finally:
                try:
                    self._task.close()  # also when stop fails: the task must not keep its name and counter
                finally:
                    self._task = self._chan = None
