"""When to fire: the fire time of a cell on the host clock, and the camera-clock → host-clock map.

All times are integers in nanoseconds of the host's ``time.monotonic_ns()`` clock unless a name
says otherwise. The tracker measures a cell's exit from the constriction on the camera's clock
(when the camera has one); :class:`ClockMap` maps it to the host clock, and :func:`fire_time_ns`
adds the travel time to the sort junction and the operator's offset.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from mimlsort.errors import StateError
from mimlsort.jit import njit
from mimlsort.settings import require

log = logging.getLogger(__name__)

#: a map needs this many frames before exits are mapped through it (fewer: the exit frame's arrival)
MIN_SAMPLES = 16
#: frames the clock map takes between fits (two O(window) passes after a decision, ~30 µs)
REFIT_EVERY = 64
_RESETS_LOGGED = 5


@dataclass(frozen=True, slots=True)
class TimingSettings:
    distance_to_junction_um: float = 200.0  # from the constriction exit to the sort junction
    offset_us: float = 0.0  # added to every fire time (calibrates actuator and camera latency)
    pulse_width_us: float = 1000.0  # width of the sort pulse
    min_lead_us: float = 300.0  # a fire time closer than this to "now" is late and not fired
    default_velocity_mm_s: float = 10.0  # used when the cell's own velocity is unknown
    max_delay_us: float = 5_000_000.0  # a fire time further ahead than this is refused (clock error)

    def __post_init__(self):
        require(math.isfinite(self.distance_to_junction_um) and self.distance_to_junction_um >= 0,
                "distance_to_junction_um", f"must be >= 0, got {self.distance_to_junction_um}")
        require(math.isfinite(self.offset_us), "offset_us", f"must be finite, got {self.offset_us}")
        require(0 < self.pulse_width_us <= 1_000_000, "pulse_width_us",
                f"must be in (0, 1000000] µs, got {self.pulse_width_us}")
        require(self.min_lead_us >= 0, "min_lead_us", f"must be >= 0, got {self.min_lead_us}")
        require(math.isfinite(self.default_velocity_mm_s) and self.default_velocity_mm_s > 0,
                "default_velocity_mm_s", f"must be > 0, got {self.default_velocity_mm_s}")
        # min_lead_us's value said: a min_lead_us set past the default max_delay_us was told as
        # "max_delay_us: must be in (min_lead_us, 2e9] µs, got 5000000.0", a key the user never set
        require(self.min_lead_us < self.max_delay_us <= 2_000_000_000, "max_delay_us",
                f"must be in (min_lead_us = {self.min_lead_us:g}, 2e9] µs, got {self.max_delay_us:g}")


def travel_ns(velocity_mm_s: float, settings: TimingSettings) -> int:
    """Time the cell needs from the constriction exit to the junction; unknown speeds use the default."""
    v = velocity_mm_s
    if not (v > 0 and math.isfinite(v)):  # NaN, 0, negative, inf: the cell's speed is not known
        v = settings.default_velocity_mm_s
    # µm / (mm/s) = µm / (µm/ms) = ms  ->  × 1e6 ns
    return round(settings.distance_to_junction_um / v * 1e6)


def fire_time_ns(exit_host_ns: int, velocity_mm_s: float, settings: TimingSettings, easing_ms: float = 0.0,
                 rate: float = 1.0) -> int:
    """Host monotonic time at which to fire for a cell that left the constriction at ``exit_host_ns``
    and moves on at ``velocity_mm_s``; ``easing_ms``: what the cell gains (negative) or loses over
    that pace while it slows down past the exit (the tracker's ``exit_easing_ms``). Speed and easing
    are on the camera clock; ``rate`` (host ns per camera ns, :attr:`ClockMap.rate`) puts the travel
    on the host's."""
    ease = round(easing_ms * 1e6) if math.isfinite(easing_ms) else 0
    return int(exit_host_ns) + round(rate * (travel_ns(velocity_mm_s, settings) + ease)) + round(settings.offset_us * 1000.0)


# ClockMap._st
CS_HEAD = 0  # next slot of the window to write
CS_N = 1  # samples held
CS_NEW = 2  # samples added since the last fit
CS_STEP = 3  # why _append stopped early: 0 the camera clock went back, > 0 it stepped forward by that (ns)
N_CS = 4

#: a frame whose host arrival comes this long *before* the fit maps its camera time (arrivals can
#: only be late) means the camera clock stepped forward (a PTP master changed or resynchronised a
#: GigE camera's clock mid-run) — or that every frame the fit saw came late by that much, a backlog
#: that has drained; either way the fit is wrong by that much and starts again. Plus the latest
#: arrival above the fit in its window (frames delivered in bursts come up to a burst late) and
#: STEP_SLOPE_TOLERANCE × the time since the fit's newest frame (a sane fit's slope is within 1e-3
#: of the truth; real clocks differ by ~1e-4)
STEP_TOLERANCE_NS = 2_000_000
STEP_SLOPE_TOLERANCE = 2e-3
#: forward steps are looked for only with a fit of at least MIN_SAMPLES frames and a slope this
#: close to 1 (a fit of a few jittery frames can be far off, and would see steps in noise)
STEP_MAX_SLOPE_ERROR = 1e-3


@njit(cache=True)
def _append(cam_buf, host_buf, st, cam, host, start, count, check, slope, offset, ref, spread):
    """Append pairs ``start .. start + count`` of ``cam``/``host`` (indices modulo their length, so
    a ring's slots read in place) to the window; returns how many went in before the first whose
    camera time does not increase, or (``check``) arrived far earlier than the fit
    (``slope, offset, ref``) maps it: a restart or a step, ``st[CS_STEP]`` says which; the caller
    resets and goes on from it."""
    window = cam_buf.shape[0]
    length = cam.shape[0]
    head = st[CS_HEAD]
    n = st[CS_N]
    last = cam_buf[(head - 1) % window] if n else 0
    done = 0
    for i in range(count):
        j = (start + i) % length
        c = cam[j]
        if n and c <= last:
            st[CS_STEP] = 0
            break
        if check:
            early = np.float64(ref - host[j]) + slope * np.float64(c - ref) + offset
            if early > STEP_TOLERANCE_NS + spread + STEP_SLOPE_TOLERANCE * abs(np.float64(c - ref)):
                st[CS_STEP] = max(np.int64(1), np.int64(early))
                break
        cam_buf[head] = c
        host_buf[head] = host[j]
        head = (head + 1) % window
        n = min(n + 1, window)
        last = c
        done += 1
    st[CS_HEAD] = head
    st[CS_N] = n
    st[CS_NEW] += done
    return done


#: a fitted rate further than this (relative) from the nominal one is no clock's: a window holding
#: fewer than two timely deliveries (a young map of 16 frames, half of them held up in a burst
#: fitted 0.03), whose offset is then fitted at the last sane rate
MAX_RATE_ERROR = 1e-3


@njit(cache=True)
def _fit_envelope(cam_buf, host_buf, head, n, slope0, nominal, hx, hy):
    """(slope, offset, ref) of the lower envelope of the ``n`` samples in the window, oldest at
    ``head`` once it is full (see :class:`ClockMap`); ``hx``/``hy`` (window-long) hold its hull."""
    window = cam_buf.shape[0]
    first = 0 if n < window else head
    ref = cam_buf[(first + n - 1) % window]
    if n == 1:
        return 1.0, np.float64(host_buf[first] - ref) - np.float64(cam_buf[first] - ref), ref
    # the lower convex hull (Andrew's monotone chain; camera times increase through the window)
    m = 0
    sx = 0.0
    for i in range(n):
        j = (first + i) % window
        x = np.float64(cam_buf[j] - ref)
        y = np.float64(host_buf[j] - ref)
        sx += x
        while m >= 2 and (hx[m - 1] - hx[m - 2]) * (y - hy[m - 2]) - (hy[m - 1] - hy[m - 2]) * (x - hx[m - 2]) <= 0.0:
            m -= 1
        hx[m] = x
        hy[m] = y
        m += 1
    # the line below every sample with the least total latency above it: the hull's edge over the
    # mean camera time (the linear program of Moon, Skelly & Towsley 1999)
    xbar = sx / n
    slope = np.nan
    offset = 0.0
    for k in range(m - 1):
        if hx[k] <= xbar <= hx[k + 1] and hx[k + 1] > hx[k]:
            slope = (hy[k + 1] - hy[k]) / (hx[k + 1] - hx[k])
            offset = hy[k] - slope * hx[k]
            break
    if not abs(slope - nominal) <= MAX_RATE_ERROR * nominal:
        slope = slope0 if abs(slope0 - nominal) <= MAX_RATE_ERROR * nominal else nominal
        offset = np.inf
        for k in range(m):  # the lowest hull vertex at that slope is the lowest sample
            r = hy[k] - slope * hx[k]
            if r < offset:
                offset = r
    return slope, offset, ref


@njit(cache=True)
def _spread(cam_buf, host_buf, head, n, slope, offset, ref):
    """The largest arrival latency above the fit among the ``n`` samples (ns): how late frames come
    in bursts, which a step must exceed to be told from them."""
    window = cam_buf.shape[0]
    first = 0 if n < window else head
    worst = 0.0
    for i in range(n):
        j = (first + i) % window
        r = np.float64(host_buf[j] - ref) - slope * np.float64(cam_buf[j] - ref) - offset
        if r > worst:
            worst = r
    return worst


class ClockMap:
    """Fits ``host = slope * camera + offset`` over the most recent frames, robust to late arrivals.

    A frame's host time is its camera time plus a transfer latency that is never negative and
    varies (USB/GigE bursts, a busy GIL). An ordinary least-squares line would carry the mean
    latency *and* be tilted by late outliers; instead the map fits the lower envelope: the line
    below every sample of the window with the least total latency above it, which is the edge of
    the samples' lower convex hull over their mean camera time (Moon, Skelly & Towsley 1999). Its
    vertices are the frames delivered soonest — in bursts, the last of each — so frames that come
    in bursts tilt it no more than steady ones, as long as the window (4,096 frames: 0.4 s at 10
    kHz) holds two bursts' ends. A fitted rate further than ``MAX_RATE_ERROR`` from
    ``nominal_rate`` (1 for a camera, 1/speed for a recording replayed at ``speed``:
    :attr:`CameraInfo.clock_rate`) comes from a window with fewer (a young map, a long stall): the
    offset is then fitted at the last sane rate. The constant part of the latency that remains
    (exposure to readout) is calibrated with :attr:`TimingSettings.offset_us`.

    Feed it from the thread that owns the frames (``add``/``add_many`` per batch); ``to_host_ns``
    refits lazily once ``REFIT_EVERY`` frames (or an eighth of a smaller window) are new. A caller on a
    deadline maps with ``to_host_ns(t, refit=False)`` (the last fit: the clocks drift by ppm) and
    calls :meth:`refit` once the deadline has passed. Not thread-safe by design: one owner.

    Adding and fitting run in numba kernels (:func:`_append`, :func:`_fit_envelope`): the sort
    thread does both after every decision, and in NumPy they took ~0.1 + 0.3 ms there (cold
    code, a refit due at most cells at 10 kHz) before it could track the next frame.
    """

    def __init__(self, window: int = 4096, nominal_rate: float = 1.0):
        require(window >= 2, "window", f"must be >= 2, got {window}")
        require(0 < nominal_rate < math.inf, "nominal_rate", f"must be > 0, got {nominal_rate}")
        self.window = window
        self.nominal_rate = float(nominal_rate)
        self._cam = np.zeros(window, np.int64)
        self._host = np.zeros(window, np.int64)
        self._hull_x = np.zeros(window, np.float64)  # the fit's lower convex hull (scratch)
        self._hull_y = np.zeros(window, np.float64)
        self._st = np.zeros(N_CS, np.int64)  # next slot to write, samples held (≤ window), added since the fit
        self._dirty = False
        self._slope = self.nominal_rate
        self._offset = 0.0  # host - slope * (camera - ref), in ns
        self._ref = 0  # camera time the fit is centred on (keeps float64 precise for ns clocks)
        self._fitted = False  # a fit of the current window's samples exists
        self._fit_n = 0  # samples the fit was made from
        self._fit_spread = 0.0  # the latest arrival above the fit in its window (ns)
        self.resets = 0  # times the camera clock went back or stepped forward and the window was restarted
        self.forward_steps = 0  # of those, steps forward (a PTP clock set mid-run)

    @property
    def n(self) -> int:
        return int(self._st[CS_N])

    @staticmethod
    def warm_up() -> None:
        """Load the kernels (compiled on a machine's first run) before a run needs them on time."""
        t = np.arange(1, 4, dtype=np.int64)
        cm = ClockMap(window=4)
        cm.add_many(t, t)
        cm.add_ring(t + 10, t + 10, 1, 2)  # later times: a restart here would be logged as one
        cm.refit()

    def add(self, camera_ns: int, host_ns: int) -> None:
        self.add_many(np.array([camera_ns], np.int64), np.array([host_ns], np.int64))

    def add_many(self, camera_ns: np.ndarray, host_ns: np.ndarray) -> None:
        """A batch of (camera, host) pairs in frame order (per batch, not per frame)."""
        cam = np.ascontiguousarray(camera_ns, np.int64)
        host = np.ascontiguousarray(host_ns, np.int64)
        if cam.shape != host.shape or cam.ndim != 1:
            raise ValueError(f"camera_ns and host_ns must be 1-d and alike, got {cam.shape} and {host.shape}")
        self._add(cam, host, 0, cam.size)

    def add_ring(self, camera_ns: np.ndarray, host_ns: np.ndarray, seq0: int, count: int) -> None:
        """The pairs of ``count`` frames of a ring from sequence number ``seq0`` on (slot = sequence
        number modulo the ring's length), read in place."""
        self._add(camera_ns, host_ns, seq0, count)

    def _add(self, cam: np.ndarray, host: np.ndarray, start: int, count: int) -> None:
        if count <= 0:
            return
        done = self._append(cam, host, start, count)
        while done < count:
            # the camera clock restarted (camera reopened, timestamp latch reset) or was set forward
            # (PTP): old pairs are void, and mapping with them would time every pulse off by the step
            step = int(self._st[CS_STEP])
            self.reset()
            self.resets += 1
            self.forward_steps += step > 0
            if self.resets <= _RESETS_LOGGED:
                log.warning("%s: the camera→host clock map starts again (pulses are timed from frame arrival "
                            "until %d frames are in)%s",
                            f"frames arrive {step / 1e6:.1f} ms earlier than the clock map predicts (the camera "
                            f"clock was set forward, or the frames it was fitted on were all delayed)" if step
                            else "the camera clock went back (camera reopened?)",
                            MIN_SAMPLES, "; further restarts are only counted" if self.resets == _RESETS_LOGGED else "")
            done += self._append(cam, host, start + done, count - done)
        # refit after a fresh share of the window, not per frame: the clocks drift by ppm, and a
        # refit on the sort path per cell would cost more than the timing gains
        st = self._st
        # (and until a first fit exists: mapping before it returned the camera's time as the host's)
        self._dirty = (self._dirty or not self._fitted or st[CS_NEW] >= min(REFIT_EVERY, max(1, self.window // 8))
                       or st[CS_N] <= MIN_SAMPLES)

    def _append(self, cam: np.ndarray, host: np.ndarray, start: int, count: int) -> int:
        n = int(self._st[CS_N])
        # a fit of a few frames can be far off, and frames that come in bursts arrive up to the
        # burst's length late: neither must read as a step
        check = (self._fitted and self._fit_n >= MIN_SAMPLES
                 and abs(self._slope - self.nominal_rate) <= STEP_MAX_SLOPE_ERROR * self.nominal_rate)
        return _append(self._cam, self._host, self._st, cam, host, start, count, check, self._slope,
                       self._offset, self._ref, self._fit_spread)

    def reset(self) -> None:
        self._st[:] = 0
        self._dirty = False
        self._fitted = False
        self._fit_n = 0
        self._fit_spread = 0.0
        self._slope, self._offset, self._ref = self.nominal_rate, 0.0, 0

    def _samples(self) -> tuple[np.ndarray, np.ndarray]:
        n, head = int(self._st[CS_N]), int(self._st[CS_HEAD])
        if n < self.window:
            return self._cam[:n], self._host[:n]
        order = np.r_[head : self.window, 0 : head]
        return self._cam[order], self._host[order]

    def _fit(self) -> None:
        n = int(self._st[CS_N])
        slope0 = self._slope if n > 2 else self.nominal_rate
        head = int(self._st[CS_HEAD])
        self._slope, self._offset, self._ref = _fit_envelope(self._cam, self._host, head, n, slope0,
                                                             self.nominal_rate, self._hull_x, self._hull_y)
        self._fit_n = n
        self._fit_spread = _spread(self._cam, self._host, head, n, self._slope, self._offset, self._ref)
        self._fitted = True
        self._dirty = False
        self._st[CS_NEW] = 0

    @property
    def slope(self) -> float:
        if self._dirty:
            self._fit()
        return self._slope

    @property
    def rate(self) -> float:
        """Host ns per camera ns of the last fit, without refitting (1.0 before a fit): durations
        measured on the camera clock (a cell's travel) last this many times as long on the host's
        — 1 ± ppm for a camera, 1/speed for a recording replayed at ``speed``."""
        return self._slope if self._fitted and self._fit_n >= MIN_SAMPLES else self.nominal_rate

    def refit(self) -> None:
        """Fit now if enough new samples are due (what ``to_host_ns`` would do lazily)."""
        if self._dirty and self._st[CS_N]:
            self._fit()

    def to_host_ns(self, camera_ns: int, refit: bool = True) -> int:
        """The host monotonic time of camera time ``camera_ns``; ``refit=False`` maps with the
        last fit even if newer samples are due."""
        if self._st[CS_N] == 0:
            raise StateError("ClockMap has no samples yet: add (camera, host) pairs from frames first")
        if self._dirty and (refit or not self._fitted):
            self._fit()
        return self._ref + round(self._slope * (camera_ns - self._ref) + self._offset)

    def latency_us(self) -> tuple[float, float]:
        """Median and 99th percentile of host arrival minus mapped time over the window (µs)."""
        if self._st[CS_N] == 0:
            return math.nan, math.nan
        if self._dirty:
            self._fit()
        cam, host = self._samples()
        mapped = self._ref + self._slope * (cam - self._ref).astype(np.float64) + self._offset
        lat = (host - mapped) / 1000.0
        return float(np.median(lat)), float(np.percentile(lat, 99))


class DeviceClock:
    """Maps host monotonic ns to a device's wrapping µs counter, from request/reply round trips.

    NTP-style: the host notes when it sent ``TIME`` (``t0``) and when the reply arrived (``t1``);
    the device read its clock somewhere in between, so the midpoint is off by at most half the
    round trip. Each of ``segments`` stretches of host time contributes its sample with the
    shortest round trip, and a line through those, each weighted by its round trip, maps the
    clocks once its rate is known to ``rate_tolerance`` (its standard error from the round trips;
    a resonator-clocked board runs up to 0.5 % fast or slow). Until then the rate is taken as
    nominal through the sample whose round trip and age (at ``rate_tolerance``) leave the least
    doubt.

    Session 25 (a helper's audit: a run's pulse times on a loaded host mapped up to 1.1 ms off at
    p95, in 1 run of 2): the stretches were runs of samples, so the 16 of the start-up sync filled
    6 of the 8 and the rate rested on one or two later samples, each as far off as its own round
    trip (milliseconds under load); and before 2 s of samples the nominal rate ran from the best
    sample of all, the start-up's, so a board 0.1 % fast was 1-2 ms off for the first two
    seconds. Simulated (TIME every 100 ms after the start-up's 16, 30 / 70 / 95 % of the round
    trips stretched by up to 4 ms each way; the median over 30 seeds of each run's p95 mapping
    error): a nominal board 17 / 194 / 582 µs before, 20 / 26 / 260 µs now; 0.1 % fast
    1,675 / 1,771 / 1,864 µs before, 20 / 36 / 585 now; 0.4 % fast 6,679 / 7,072 / 7,467 before,
    20 / 35 / 2,263 now.
    """

    def __init__(self, window: int = 64, segments: int = 8, bits: int = 32, min_span_s: float = 0.3,
                 rate_tolerance: float = 1e-3):
        require(window >= 2, "window", f"must be >= 2, got {window}")
        self.window = window
        self.segments = segments
        self.modulus = 1 << bits
        self.min_span_ns = round(min_span_s * 1e9)
        self.rate_tolerance = float(rate_tolerance)
        self._d: list[int] = []  # unwrapped device µs
        self._mid: list[int] = []  # host ns at the round trip's midpoint
        self._rtt: list[int] = []
        self._wraps = 0
        self._last_raw: int | None = None
        self._fit: tuple[float, float, int, int] | None = None  # (ns per µs, offset ns, d_ref, error bound ns)
        # how the fit's doubt grows away from where it is best known: (x there, µs from d_ref; the
        # doubt there, ns²; the slope's doubt, ns² per µs²)
        self._doubt: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def n(self) -> int:
        return len(self._d)

    def add(self, t0_ns: int, device_us: int, t1_ns: int) -> None:
        if self._last_raw is not None and device_us < self._last_raw - self.modulus // 2:
            self._wraps += 1  # the counter wrapped (every 71.6 min for 32-bit µs)
        self._last_raw = device_us
        self._d.append(device_us + self._wraps * self.modulus)
        self._mid.append((t0_ns + t1_ns) // 2)
        self._rtt.append(t1_ns - t0_ns)
        if len(self._d) > self.window:
            del self._d[0], self._mid[0], self._rtt[0]
        self._fit = None

    def _refit(self) -> tuple[float, float, int, int]:
        d = np.asarray(self._d, np.int64)
        mid = np.asarray(self._mid, np.int64)
        rtt = np.asarray(self._rtt, np.int64)
        edges = np.linspace(int(mid.min()), int(mid.max()) + 1, self.segments + 1)
        seg = np.searchsorted(edges, mid, side="right") - 1
        idx = np.array([np.flatnonzero(seg == k)[np.argmin(rtt[seg == k])] for k in np.unique(seg)])
        ref = int(d[-1])
        x = (d[idx] - ref).astype(np.float64)
        y = mid[idx].astype(np.float64)
        # half a round trip bounds a sample's error; below ~20 µs the host's own timing does
        sd = np.maximum(rtt[idx], 20_000).astype(np.float64) / 2
        fit = len(idx) >= 2 and (mid[idx].max() - mid[idx].min()) >= self.min_span_ns
        if fit:
            w = 1.0 / sd ** 2
            xm = float(np.sum(w * x) / w.sum())
            rate_sd = math.sqrt(1.0 / float(np.sum(w * (x - xm) ** 2))) / 1000.0  # relative
            fit = rate_sd <= self.rate_tolerance
        if fit:
            rate, offset = np.polyfit(x, y, 1, w=1.0 / sd)
            bound = int(rtt[idx].max() // 2)
            # the weighted line's standard error, a sample's half round trip taken as its sd
            self._doubt = (xm, 1.0 / float(w.sum()), 1.0 / float(np.sum(w * (x - xm) ** 2)))
        else:  # nominal rate through the sample least in doubt: its round trip and its age
            doubt = rtt / 2 + self.rate_tolerance * (mid[-1] - mid)
            best = int(np.argmin(doubt))
            rate, offset = 1000.0, float(mid[best] - 1000.0 * (d[best] - ref))
            bound = int(doubt[best])
            self._doubt = (float(d[best] - ref), float(rtt[best] / 2) ** 2, (1000.0 * self.rate_tolerance) ** 2)
        self._fit = (float(rate), float(offset), ref, bound)
        return self._fit

    @property
    def error_bound_ns(self) -> int:
        """Half the round trip of the samples the map rests on (exact bound when rates are equal)."""
        return (self._fit or self._refit())[3]

    def doubt_ns(self, device_us: int) -> int:
        """How far off :meth:`to_host_ns` of ``device_us`` may be: the samples' half round trips
        carried along the fitted line (its standard error, each half round trip taken as a
        sample's sd), or, while the rate is taken as nominal, the best sample's half round trip and
        the rate's tolerance over the time since it. Grows with a loaded host's round trips, and
        with the time past the last sample."""
        if not self._d:
            raise StateError("DeviceClock has no TIME samples yet")
        _rate, _offset, ref, _ = self._fit or self._refit()
        at, base, slope = self._doubt
        delta = (device_us - ref) % self.modulus
        if delta >= self.modulus // 2:
            delta -= self.modulus
        return round(math.sqrt(base + slope * (delta - at) ** 2))

    def to_device_us(self, host_ns: int) -> int:
        """The device's counter value (wrapped) at host time ``host_ns``."""
        if not self._d:
            raise StateError("DeviceClock has no TIME samples yet")
        rate, offset, ref, _ = self._fit or self._refit()
        return (ref + round((host_ns - offset) / rate)) % self.modulus

    def to_host_ns(self, device_us: int) -> int:
        """The host time of device counter value ``device_us`` (taken as the nearest to the last sample)."""
        if not self._d:
            raise StateError("DeviceClock has no TIME samples yet")
        rate, offset, ref, _ = self._fit or self._refit()
        delta = (device_us - ref) % self.modulus
        if delta >= self.modulus // 2:
            delta -= self.modulus
        return round(offset + rate * delta)
