"""Log lines that can repeat hundreds of times a second (a device reporting every late pulse at
1,000 cells/s) without flooding the daemon's log file and stderr.

A :class:`LogThrottle` lets the first ``burst`` lines of a kind through, then at most one line per
``interval_s``; a line that goes out after some were held back says how many, and :meth:`flush`
says it for the ones held back at the end. The counters that matter (late pulses, device errors)
are kept by their owners in full; only the log is thinned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class LogThrottle:
    """Thin out repeated log lines per kind (any hashable key)."""

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0, burst: int = 3,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval_s = interval_s
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()  # device reader threads and the sort thread both report
        self._state: dict[object, list] = {}  # key -> [lines let through, time of the last, held back, level, what]

    def log(self, level: int, key: object, msg: str, *args) -> bool:
        """Log ``msg % args`` unless too many lines of ``key`` went out lately; True if it did."""
        now = self._clock()
        with self._lock:
            st = self._state.setdefault(key, [0, -float("inf"), 0, level, ""])
            if st[0] >= self.burst and now - st[1] < self.interval_s:
                st[2] += 1
                st[3], st[4] = level, msg % args if args else msg
                return False
            held = st[2]
            st[0] += 1
            st[1] = now
            st[2] = 0
        if held:
            self.logger.log(level, msg + " (and %d more like it held back since the last such line)", *args, held)
        else:
            self.logger.log(level, msg, *args)
        return True

    def flush(self) -> None:
        """Say how many lines of each kind were held back since their last line."""
        with self._lock:
            pending = [(st[3], st[4], st[2]) for st in self._state.values() if st[2]]
            for st in self._state.values():
                st[2] = 0
        for level, last, held in pending:
            self.logger.log(level, "%d more like this were held back; the last: %s", held, last)
