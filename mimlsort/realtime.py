"""What real-time loops need from the OS: the monotonic clock and sleeps inside numba kernels (so a
loop can pace or wait without the GIL), the thread's timer slack, and thread names.

A Python thread that sleep-polls takes the GIL back at every wake-up, and at 10 kHz those
wake-ups queue behind the other threads' Python work; a kernel that calls ``clock_gettime`` and
``nanosleep`` itself holds no GIL while it waits or paces. Linux only (``AVAILABLE``): the kernels
read ``CLOCK_MONOTONIC``, the clock of :func:`time.monotonic_ns`, and callers fall back to their
Python loops elsewhere.

The kernels take a scratch ``int64[2]`` (a ``struct timespec``) from the caller rather than
allocating one per call: see :func:`scratch`.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import types
from numba.extending import intrinsic

from mimlsort.jit import njit

#: clock_gettime/nanosleep from numba kernels, with CLOCK_MONOTONIC == time.monotonic_ns's clock
AVAILABLE = sys.platform.startswith("linux")

_CLOCK_MONOTONIC = 1  # Linux's value
_clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.voidptr))
_nanosleep = types.ExternalFunction("nanosleep", types.int32(types.voidptr, types.voidptr))


def scratch() -> np.ndarray:
    """A timespec the kernels can write into (one per thread that calls them)."""
    return np.zeros(2, np.int64)


@njit(nogil=True, cache=True)
def monotonic_ns(ts):
    """time.monotonic_ns() inside a kernel."""
    _clock_gettime(_CLOCK_MONOTONIC, ts.ctypes)
    return ts[0] * 1000000000 + ts[1]


@njit(nogil=True, cache=True)
def sleep_ns(ts, ns):
    """Sleep ``ns`` nanoseconds (no-op for ns <= 0); how long it overshoots is the thread's timer
    slack (see :func:`set_timer_slack_ns`) plus the scheduler's wake-up."""
    if ns <= 0:
        return
    ts[0] = ns // 1000000000
    ts[1] = ns % 1000000000
    _nanosleep(ts.ctypes, 0)


@intrinsic
def publish_fence(typingctx):
    """Stores before this point are not moved after the stores that follow it (a release fence):
    a producer writes a frame and its metadata, then the counter that publishes it."""
    def codegen(context, builder, signature, args):
        builder.fence("release")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(nogil=True, cache=True)
def wait_counter(counter, target, timeout_ns, poll_ns, ts):
    """Wait until ``counter[0] >= target`` or ``timeout_ns`` pass, polling every ``poll_ns``;
    True if the counter got there."""
    if counter[0] >= target:
        return True
    deadline = monotonic_ns(ts) + timeout_ns
    while True:
        sleep_ns(ts, poll_ns)
        if counter[0] >= target:
            return True
        if monotonic_ns(ts) >= deadline:
            return counter[0] >= target


def set_timer_slack_ns(ns: int) -> bool:
    """Set the calling thread's timer slack (how late Linux may end its sleeps and timed waits to
    batch wake-ups; 50 µs by default, which turns a 20 µs poll into ~80 µs). True if it was set."""
    if not AVAILABLE:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(29, int(ns), 0, 0, 0) == 0  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return False


def name_thread(name: str) -> None:
    """Give the calling thread an OS-level name (``top -H``, ``ps -L``, py-spy show it; Linux
    keeps the first 15 bytes). Best effort."""
    if not AVAILABLE:
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used — or its thread ``tid`` (a native
    thread id, :func:`threading.get_native_id`) — from /proc; None where that cannot be read (it
    has ended and been reaped, or this is not Linux). Safe to call for any id, unlike the pthread
    CPU clocks, whose use on a thread that has ended is undefined."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        with open(path, "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()  # the name before ")" may hold spaces
        return (int(fields[11]) + int(fields[12])) / _clock_ticks()  # utime, stime: fields 14, 15
    except (OSError, IndexError, ValueError):
        return None


def _clock_ticks() -> int:
    import os

    return os.sysconf("SC_CLK_TCK")


def memory_available() -> int:
    """Bytes of memory the OS could give without swapping (``MemAvailable``); 0 where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
