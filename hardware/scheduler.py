"""A host-timed pulse scheduler for outputs that cannot time a delay themselves.

One thread owns the output: it sleeps until the next edge, drives the line through an ``output``
callable and reports each rising edge. Pulses that overlap merge into one longer pulse (the line
stays high until the last one ends), which is what a sort actuator would do with two close
cells anyway. Host timing is as good as the OS sleep (tens of µs on an idle Linux host, worse
under load); ``spin_us`` trades CPU for precision by busy-waiting the last stretch.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class PulseScheduler:
    def __init__(self, output: Callable[[bool], None], on_edge: Callable[[int, int], None],
                 on_error: Callable[[Exception], None], spin_us: float = 0.0, name: str = "pulses"):
        self._output = output
        self._on_edge = on_edge
        self._on_error = on_error
        self._spin_ns = round(spin_us * 1000)
        self._heap: list[tuple[int, int, int]] = []  # (start_ns, end_ns, event_index)
        self._cond = threading.Condition()
        self._stop = False
        self._high = False
        self._end_ns = 0
        self.pending = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def schedule(self, event_index: int, start_ns: int, width_us: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (start_ns, start_ns + round(width_us * 1000), event_index))
            self.pending = len(self._heap)
            self._cond.notify()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread; the line is left low."""
        with self._cond:
            self._stop = True
            self._heap.clear()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._high:
            self._high = False
            try:
                self._output(False)
            except Exception as err:  # closing: the device may be gone already
                log.debug("could not set the output low on stop: %s", err)

    def _next(self) -> tuple[int, bool] | None:
        """The time of the next edge and whether it is a rising one."""
        nxt = self._heap[0][0] if self._heap else None
        if self._high and (nxt is None or self._end_ns <= nxt):
            return self._end_ns, False
        return (nxt, True) if nxt is not None else None

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._stop:
                        return
                    edge = self._next()
                    if edge is None:
                        self._cond.wait(0.5)
                        continue
                    t, rising = edge
                    wait = t - time.monotonic_ns()
                    if wait > self._spin_ns + 50_000:
                        # wake a little early; a new, earlier pulse notifies and we recompute
                        self._cond.wait((wait - self._spin_ns - 20_000) / 1e9)
                        continue
                    if rising:
                        _, end, idx = heapq.heappop(self._heap)
                        self.pending = len(self._heap)
                while time.monotonic_ns() < t:  # at most spin_us + 50 µs
                    pass
                if rising:
                    if not self._high:
                        self._output(True)
                        self._high = True
                    edge = time.monotonic_ns()
                    # a late edge still gets its full width: the actuator needs it to act
                    end = edge + (end - t)
                    self._end_ns = max(self._end_ns, end)  # overlapping pulses merge
                    self._on_edge(idx, edge)
                else:
                    self._output(False)
                    self._high = False
        except Exception as err:  # the output failed: the trigger becomes unavailable, no crash
            self._on_error(err)
