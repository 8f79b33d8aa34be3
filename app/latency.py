"""The recent decision latencies of a run and their p50/p99/max for the status.

``status()`` is read by the daemon every second and by the GUI ten times a second, from threads
of the run's process. Sorting 8,192 latencies for two ``np.percentile`` calls held the GIL for
~0.65 ms each time, and any decision due meanwhile waited for it. Here the values are copied
under the GIL (a few µs) and sorted in a kernel that releases it.
"""

from __future__ import annotations

import math

import numpy as np

from mimlsort.jit import njit


@njit(nogil=True, cache=True)
def _summary(a, out):
    """p50, p99 and max of ``a`` (sorted in place) into ``out``; np.percentile's linear rule."""
    a.sort()
    n = a.size
    for j in range(2):
        pos = (n - 1) * (0.5 if j == 0 else 0.99)
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        out[j] = a[lo] + (a[hi] - a[lo]) * (pos - lo)
    out[2] = a[n - 1]


class LatencyWindow:
    """The last ``size`` latencies (µs). ``add`` from the deciding thread, ``summary`` from any."""

    def __init__(self, size: int = 8192):
        self._buf = np.zeros(size, np.float64)
        self._n = 0

    def __len__(self) -> int:
        return min(self._n, self._buf.size)

    def add(self, us: float) -> None:
        self._buf[self._n % self._buf.size] = us
        self._n += 1

    def warm(self) -> None:
        """Load the kernel (numba's cache, or compile) now, not at the first status of a run."""
        _summary(np.ones(4, np.float64), np.empty(3, np.float64))

    def summary(self) -> tuple[float, float, float]:
        """(p50, p99, max) in µs of the values in the window; NaNs while it is empty."""
        k = len(self)
        if k == 0:
            return math.nan, math.nan, math.nan
        a = self._buf[:k].copy()  # a snapshot: the deciding thread goes on adding meanwhile
        out = np.empty(3, np.float64)
        _summary(a, out)
        return float(out[0]), float(out[1]), float(out[2])
