"""Fire-time arithmetic, the camera→host clock map, the trigger contract, dry-run outputs, the
host-timed pulse scheduler and the backend registry."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hardware.dryrun import LogTrigger, NullTrigger
from hardware.scheduler import PulseScheduler
from hardware.timing import ClockMap, TimingSettings, fire_time_ns, travel_ns
from hardware.trigger import TRIGGERS, FireRecord, FireRequest, Trigger, make_trigger, trigger_class
from mimlsort.errors import BackendUnavailable, ConfigError, DeviceError, StateError
from mimlsort.settings import from_mapping

MS = 1_000_000  # ns
AHEAD = 300 * MS  # far enough ahead that even a heavily loaded host is never late


# -- timing ----------------------------------------------------------------------------------------
def test_fire_time_adds_travel_and_offset():
    s = TimingSettings(distance_to_junction_um=300.0, offset_us=-150.0)
    # 300 µm at 12 mm/s (= 12 µm/ms) takes 25 ms
    assert fire_time_ns(1_000 * MS, 12.0, s) == 1_000 * MS + 25 * MS - 150_000
    assert travel_ns(12.0, s) == 25 * MS


@pytest.mark.parametrize("v", [math.nan, 0.0, -3.0, math.inf])
def test_unknown_velocity_uses_the_default(v):
    s = TimingSettings(distance_to_junction_um=100.0, default_velocity_mm_s=5.0)
    assert fire_time_ns(0, v, s) == 20 * MS


def test_timing_settings_errors_carry_the_key_path():
    with pytest.raises(ConfigError, match=r"^timing\.pulse_width_us: must be in"):
        from_mapping(TimingSettings, {"pulse_width_us": 0}, "timing")
    with pytest.raises(ConfigError, match=r"^timing\.default_velocity_mm_s"):
        from_mapping(TimingSettings, {"default_velocity_mm_s": -1.0}, "timing")
    with pytest.raises(ConfigError, match=r"^timing\.bogus: unknown key"):
        from_mapping(TimingSettings, {"bogus": 1}, "timing")
    # a min lead past the default max delay: the error names the value that is in the way
    with pytest.raises(ConfigError, match=r"^timing\.max_delay_us: .*min_lead_us = 6e\+06"):
        from_mapping(TimingSettings, {"min_lead_us": 6e6}, "timing")


def _clock_samples(n, seed=0, t0=5_000_000_000_000, drift_ppm=80.0, offset_ns=-3_210_987_654):
    """Camera frames at 2 kHz whose host arrival is the true host time + 150 µs + jitter, with
    rare multi-ms stalls (a busy GIL, a USB burst)."""
    rng = np.random.default_rng(seed)
    cam = t0 + np.arange(n, dtype=np.int64) * 500_000
    true_host = np.round(cam * (1 + drift_ppm * 1e-6)).astype(np.int64) + offset_ns
    lat = 150_000 + rng.exponential(40_000, n)
    stall = rng.random(n) < 0.03
    lat[stall] += rng.uniform(1e6, 6e6, stall.sum())
    return cam, true_host, true_host + lat.astype(np.int64)


def test_clock_map_follows_the_lower_envelope_despite_stalls():
    cam, true_host, host = _clock_samples(2000)
    cm = ClockMap()  # the default window holds all 2,000 frames (1 s)
    cm.add_many(cam, host)
    later = int(cam[-1]) + 10 * MS  # a cell exit just after the last frame
    expected = round(later * (1 + 80e-6)) - 3_210_987_654 + 150_000  # true time + the constant latency
    err_us = abs(cm.to_host_ns(later) - expected) / 1000
    assert err_us < 25, err_us
    assert abs(cm.slope - (1 + 80e-6)) < 5e-6
    # an ordinary least-squares line carries the mean latency and the stalls: the envelope is better
    a, b = np.polyfit((cam - cam[-1]).astype(float), (host - cam[-1]).astype(float), 1)
    ols_err_us = abs(cam[-1] + a * (later - cam[-1]) + b - expected) / 1000
    assert err_us < ols_err_us
    p50, p99 = cm.latency_us()
    assert 0 <= p50 < p99


def test_clock_map_batches_equal_frame_by_frame():
    cam, _, host = _clock_samples(900, seed=2)
    one, many = ClockMap(window=256), ClockMap(window=256)
    for c, h in zip(cam.tolist(), host.tolist()):
        one.add(c, h)
    for lo in range(0, 900, 128):  # tracker-sized batches, the last one partial
        many.add_many(cam[lo:lo + 128], host[lo:lo + 128])
    t = int(cam[-1]) + 5 * MS
    assert many.n == one.n == 256 and many.to_host_ns(t) == one.to_host_ns(t)
    with pytest.raises(ValueError):
        many.add_many(cam[:3], host[:2])


def _envelope_reference(cam, host):
    """The lower envelope as the linear program it solves (scipy): the line below every sample
    with the least total latency above it, centred on the newest camera time."""
    from scipy.optimize import linprog

    ref = int(cam[-1])
    x = (cam - ref).astype(np.float64)
    y = (host - ref).astype(np.float64)
    # maximise Σ(a x_i + b)  s.t.  a x_i + b <= y_i; scaled to ms so the solver is well conditioned
    res = linprog(c=[-x.sum() / 1e6, -len(x)], A_ub=np.c_[x / 1e6, np.ones_like(x)], b_ub=y, bounds=[(None, None)] * 2,
                  method="highs")
    assert res.status == 0
    return res.x[0] / 1e6, res.x[1], ref


@pytest.mark.parametrize("n", [5, 64, 300, 700])
def test_clock_map_kernel_fits_as_the_linear_program(n):
    cam, _, host = _clock_samples(n, seed=n)
    cm = ClockMap(window=256)
    cm.add_many(cam, host)
    cm.refit()
    keep = min(n, 256)  # the window holds the newest samples, its oldest at the write position once full
    slope, offset, ref = _envelope_reference(cam[-keep:], host[-keep:])
    assert cm._ref == ref
    if abs(slope - 1) <= 1e-3:  # five frames of 2 kHz with their jitter can pin no clock rate
        assert cm._slope == pytest.approx(slope, abs=1e-9)
        assert cm._offset == pytest.approx(offset, abs=1.0)  # ns
    # below every sample, touching the lowest
    r = (host[-keep:] - ref) - (cm._slope * (cam[-keep:] - ref) + cm._offset)
    assert r.min() == pytest.approx(0.0, abs=1.0) and r.min() >= -1.0


def _bursty(fps: float, burst_ms: float, seconds: float, seed: int):
    """Frames whose host arrival is the true time + 50 µs + jitter, handed over in bursts of
    irregular length (0.2–1.8 × ``burst_ms``): a frame arrives when its burst ends."""
    rng = np.random.default_rng(seed)
    n = int(fps * seconds)
    cam = 10**12 + (np.arange(n) * (1e9 / fps)).astype(np.int64)
    true_host = cam - 10**12 + 5 * 10**9 + 50_000
    host = true_host + rng.exponential(20_000, n).astype(np.int64)
    ends = np.cumsum(rng.uniform(0.2, 1.8, int(seconds * 1000 / burst_ms * 5) + 10) * burst_ms * MS)
    delivered = true_host[0] + ends[np.searchsorted(ends, true_host - true_host[0])].astype(np.int64)
    return cam, true_host, np.maximum(host, delivered)


@pytest.mark.parametrize("burst_ms", [5, 20, 40])
def test_clock_map_times_exits_within_0_1_ms_when_frames_come_in_bursts(burst_ms):
    """The sort thread's frames come in bursts when the camera thread is held up (a busy 2-core
    host, a GIL) or a driver hands frames over in blocks. The envelope's vertices are each burst's
    last frame: the newest frame is mapped within 0.1 ms (p99). The fit through the lowest frame of
    each eighth of the window (before session 16) was 0.8 ms off at the median and 21 ms at p99
    with 20 ms bursts at 10 kHz, as most eighths held no frame delivered on time."""
    cam, true_host, host = _bursty(10_000, burst_ms, 3.0, seed=burst_ms)
    cm = ClockMap()
    errs = []
    for k in range(0, len(cam), 64):  # a tracking call's frames; the exit maps through the fit before them
        e = min(len(cam), k + 64)
        if k >= 8_000:
            errs.append(cm.to_host_ns(int(cam[e - 1]), refit=False) - int(true_host[e - 1]))
        cm.add_many(cam[k:e], host[k:e])
        cm.refit()
    errs = np.abs(np.array(errs)) / 1000
    assert cm.resets == 0
    assert np.percentile(errs, 99) < 100, np.percentile(errs, [50, 99])


def test_clock_map_fits_before_mapping_whatever_the_first_batch():
    """The first tracking calls of a run can bring fewer frames than a refit waits for: the first
    exit mapped must still go through a fit, not come back as the camera's own time."""
    cam = 10**12 + np.arange(20, dtype=np.int64) * 100_000
    cm = ClockMap()
    cm.add_many(cam, cam - 10**12 + 7 * 10**9)
    cm.refit()
    assert cm.to_host_ns(int(cam[-1]), refit=False) == int(cam[-1]) - 10**12 + 7 * 10**9


def test_clock_map_reads_ring_slots_in_place_across_the_wrap():
    cam, _, host = _clock_samples(200, seed=5)
    ring_cam = np.zeros(64, np.int64)
    ring_host = np.zeros(64, np.int64)
    seq = np.arange(100, 200)
    ring_cam[seq % 64] = cam[100:200]  # a ring of 64 slots after 200 frames: the last 64 in it
    ring_host[seq % 64] = host[100:200]
    a, b = ClockMap(window=128), ClockMap(window=128)
    a.add_ring(ring_cam, ring_host, 150, 50)  # sequence numbers 150..199, across the ring's wrap
    b.add_many(cam[150:200], host[150:200])
    assert a.n == b.n == 50
    assert a.to_host_ns(int(cam[199]) + 1_000_000) == b.to_host_ns(int(cam[199]) + 1_000_000)
    assert np.array_equal(a._samples()[0], cam[150:200])


def test_clock_map_restarts_when_the_camera_clock_goes_back():
    cam, _, host = _clock_samples(100, seed=1)
    cm = ClockMap(window=64)
    cm.add_many(cam, host)
    cm.add(1_000, 9_000_000)  # camera reopened: its counter starts again near zero
    assert cm.resets == 1 and cm.n == 1
    assert cm.to_host_ns(2_000) == 9_001_000


def test_clock_map_restarts_when_the_camera_clock_steps_forward(caplog):
    """A PTP master resetting a GigE camera's clock mid-run sets it forward: every frame after the
    step then arrives long *before* the old fit maps it (arrivals can only be late). The map
    starts again rather than time every pulse late by the step until the window turns over."""
    cam, true_host, host = _clock_samples(2000, seed=3)
    step = 40 * MS
    cam2 = cam.copy()
    cam2[1200:] += step
    cm = ClockMap(window=512)
    for k in range(0, 2000, 50):  # per batch, refitted after each, as the sort thread does
        cm.add_many(cam2[k:k + 50], host[k:k + 50])
        cm.refit()
    assert cm.resets == 1 and cm.forward_steps == 1
    assert "frames arrive 40.0 ms earlier than the clock map predicts" in caplog.text
    later = int(cam2[-1]) + 10 * MS
    expected = round((later - step) * (1 + 80e-6)) - 3_210_987_654 + 150_000
    assert abs(cm.to_host_ns(later) - expected) / 1000 < 50
    # without the step the same jittery frames (stalls of up to 6 ms) restart nothing
    clean = ClockMap(window=512)
    for k in range(0, 2000, 50):
        clean.add_many(cam[k:k + 50], host[k:k + 50])
        clean.refit()
    assert clean.resets == 0


def test_clock_map_sees_no_step_in_a_young_fit_of_bursty_frames():
    """A fit of the first few frames can have any slope (at 10 kHz, a second frame held up 5 ms
    tilts a two-frame fit 50-fold, and the frames queued behind it would arrive 'early'): no step
    is looked for until the fit holds enough samples and a sane slope."""
    cam = 10**12 + np.arange(400, dtype=np.int64) * 100_000  # 10 kHz
    host = cam + 200_000
    host[1] += 5_000_000
    host[2:30] = np.maximum(host[2:30], host[1] + 10_000 * np.arange(1, 29))  # queued behind it
    cm = ClockMap(window=512)
    for k in range(400):
        cm.add_many(cam[k:k + 1], host[k:k + 1])
        cm.refit()
    assert cm.resets == 0


@pytest.mark.parametrize("burst_ms", [5, 20])
def test_clock_map_sees_no_step_in_frames_delivered_in_bursts(burst_ms):
    """10 kHz frames handed over in bursts (a large transfer size): each burst's first frame comes
    a burst late, its last on time. The fit's window sees that spread, and a frame of a burst is
    no step (37 false restarts in 6 s at 20 ms bursts when only a fixed 2 ms was allowed)."""
    period = burst_ms * MS
    cam = 10**12 + np.arange(60_000, dtype=np.int64) * 100_000
    host = (cam // period + 1) * period + 150_000  # delivered when its burst is complete
    cm = ClockMap(window=512)
    for k in range(0, 60_000, 64):  # as the sort thread adds them: a tracking call's frames, then a refit
        cm.add_many(cam[k:k + 64], host[k:k + 64])
        cm.refit()
    assert cm.resets == 0
    if burst_ms == 5:  # a step well beyond the bursts' spread is still seen
        cm.add_many(cam[-1:] + 100_000 + 60 * MS, host[-1:] + 100_000)
        assert cm.forward_steps == 1


def test_clock_map_maps_with_the_last_fit_until_refit_on_a_deadline():
    from hardware.timing import ClockMap

    cm = ClockMap(window=64)
    cam = np.arange(64, dtype=np.int64) * 100_000
    cm.add_many(cam, cam + 50_000)
    assert cm.to_host_ns(10_000_000) == 10_050_000  # the first mapping fits
    cm.add_many(cam + 6_400_000, cam + 6_400_000 + 80_000)  # the transfer latency rose by 30 µs
    assert cm.to_host_ns(10_000_000, refit=False) == 10_050_000  # the fit it had, no numpy on the deadline
    cm.refit()
    assert cm.to_host_ns(10_000_000, refit=False) == 10_080_000
    fresh = ClockMap(window=64)
    fresh.add_many(cam, cam + 50_000)
    assert fresh.to_host_ns(0, refit=False) == 50_000  # never fitted: fits anyway


def test_clock_map_without_samples_is_a_state_error():
    with pytest.raises(StateError, match="no samples"):
        ClockMap().to_host_ns(0)


# -- the trigger contract on the outputs that need no hardware --------------------------------------
@pytest.fixture(params=["null", "log"])
def dry_trigger(request, tmp_path):
    settings = {"path": str(tmp_path / "pulses.tsv")} if request.param == "log" else None
    return make_trigger(request.param, settings, TimingSettings(min_lead_us=500.0))


def test_contract_fire_late_refused_and_counters(dry_trigger):
    t = dry_trigger
    with t:
        now = time.monotonic_ns()
        ok = t.fire(FireRequest(1, now + AHEAD, 800.0))
        late = t.fire(FireRequest(2, now + 100_000, 800.0))  # 100 µs ahead < 500 µs min lead
        past = t.fire(FireRequest(3, now - 5 * MS, 800.0))
        bad = t.fire(FireRequest(4, now + AHEAD, 0.0))
        far = t.fire(FireRequest(5, now + 60_000 * MS, 800.0))  # a minute ahead: a clock error
        assert isinstance(ok, FireRecord) and ok.ok and not ok.late and ok.error == ""
        assert ok.sent_ns >= now and 0 < ok.delay_us <= AHEAD / 1000
        assert late.late and not late.ok and late.sent_ns == 0 and "late" in late.error
        assert past.late and past.delay_us < 0
        assert not bad.ok and not bad.late and "width" in bad.error
        assert not far.ok and "max_delay_us" in far.error
        # a request out of range is refused; the device is not at fault
        assert bad.refused and far.refused and not any(r.refused or r.unavailable for r in (ok, late, past))
        st = t.status()
        assert (st.fired, st.late, st.failed) == (1, 2, 2)
        assert st.available and st.open and t.drain_acks() == []
        assert t.test_fire(delay_us=AHEAD / 1000).ok
    assert not t.is_open and not t.available
    after = t.fire(FireRequest(6, time.monotonic_ns() + AHEAD, 800.0))  # closed: no exception
    assert not after.ok and "not open" in after.error


def test_log_trigger_writes_every_pulse(tmp_path):
    path = tmp_path / "pulses.tsv"
    now = time.monotonic_ns()
    with LogTrigger({"path": str(path)}) as t:
        recs = [t.fire(FireRequest(i, now + AHEAD + i * MS, 100.0 + i)) for i in range(5)]
        t.fire(FireRequest(99, now, 100.0))  # late: not a pulse, not logged
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["event_index", "scheduled_ns", "sent_ns", "delay_us", "width_us", "run",
                                     "run_identifier"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4]
    for r, rec in zip(rows, recs):
        assert int(r[1]) == rec.scheduled_ns and int(r[2]) == rec.sent_ns
        assert float(r[4]) == rec.width_us
    # the next run (or a test pulse between runs) adds to the log; it replaced it
    with LogTrigger({"path": str(path)}) as t:
        t.fire(FireRequest(7, time.monotonic_ns() + AHEAD, 100.0))
    lines = path.read_text().splitlines()
    assert lines.count(LogTrigger.HEADER.strip()) == 1 and len(lines) == 7 and lines[-1].startswith("7\t")


def test_the_pulse_log_says_each_pulses_run_and_moves_a_file_of_the_older_layout_aside(tmp_path, caplog):
    # the log is appended run after run, and nothing in a row said which run it was from
    import logging

    from hardware.dryrun import RunLabel

    path = tmp_path / "pulses.csv"
    for name in ("a_20260101-101010", "a_20260101-101010_2"):
        with LogTrigger({"path": str(path)}, run=RunLabel(name, f"id-{name}")) as t:
            t.fire(FireRequest(0, time.monotonic_ns() + AHEAD, 100.0))
    with LogTrigger({"path": str(path)}) as t:  # a test pulse between runs belongs to none
        t.fire(FireRequest(-1, time.monotonic_ns() + AHEAD, 100.0))
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    assert [r[5:] for r in rows] == [["a_20260101-101010", "id-a_20260101-101010"],
                                      ["a_20260101-101010_2", "id-a_20260101-101010_2"], ["", ""]]
    # rows of seven columns under a header of five would be a table no reader parses
    # (they move aside, kept whole, and a new log begins: refusing the file stopped `make demo`
    # on every machine that had run it before)
    old = tmp_path / "old.csv"
    rows = "event_index\tscheduled_ns\tsent_ns\tdelay_us\twidth_us\n3\t1\t2\t0.5\t100\n"
    for n in (1, 2):
        old.write_text(rows)
        with caplog.at_level(logging.WARNING, logger="hardware.dryrun"), LogTrigger({"path": str(old)}):
            pass
        aside = tmp_path / ("old.older-layout.csv" if n == 1 else "old.older-layout-2.csv")
        assert aside.read_text() == rows and old.read_text() == LogTrigger.HEADER
        assert f"{old} held pulses in another layout (written by an older mimlsort): moved to {aside}" in caplog.text


def test_log_trigger_unwritable_path_is_a_device_error(tmp_path):
    from mimlsort.errors import DeviceError

    (tmp_path / "afile").write_text("")
    with pytest.raises(DeviceError, match="trigger.log.path"):
        LogTrigger({"path": str(tmp_path / "afile" / "x.tsv")}).open()
    # a folder that does not exist yet (a run's, before its first start) is made
    with LogTrigger({"path": str(tmp_path / "runs" / "pulses.csv")}):
        pass
    assert (tmp_path / "runs" / "pulses.csv").read_text().startswith(LogTrigger.HEADER)


def test_pulses_fired_from_two_threads_each_make_one_whole_line(tmp_path):
    # the GUI's Test fire during a run fires from its own thread beside the sort thread: lines of
    # the text file's shared buffer were lost and ran into each other (39,997 lines for 40,000
    # pulses, 12 of them garbled)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes, as on a busy host
    path = tmp_path / "pulses.tsv"
    n = 20_000
    try:
        with LogTrigger({"path": str(path), "flush_s": 1e9}) as t:
            def fire(base):
                for i in range(n):
                    t.fire(FireRequest(base + i, time.monotonic_ns() + AHEAD, 100.0))

            threads = [threading.Thread(target=fire, args=(k * 10**6,)) for k in range(2)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
    finally:
        sys.setswitchinterval(old)
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    assert all(len(r) == 7 for r in rows)
    assert sorted(int(r[0]) for r in rows) == sorted(k * 10**6 + i for k in range(2) for i in range(n))


def test_a_pulse_log_path_naming_a_binary_file_is_refused_and_the_file_left_alone(tmp_path):
    # an event file named as the pulse log by mistake: a UnicodeDecodeError traceback, with the
    # file held open
    from app.cli import main

    path = tmp_path / "run.rtdc"
    data = b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4
    path.write_bytes(data)
    with pytest.raises(DeviceError, match=rf"^trigger\.log\.path: {path} is not a pulse log \(not UTF-8 text"):
        LogTrigger({"path": str(path)}).open()
    assert main(["trigger", "test", "--device", "log", "--set", f"path={path}"]) == 2
    assert path.read_bytes() == data and sorted(tmp_path.iterdir()) == [path]


def test_a_pulse_log_that_cannot_be_written_names_its_file_and_closes_without_a_second_error(tmp_path):
    """A full disk (``/dev/full`` takes the open and refuses every write): the record said only
    "OSError: [Errno 28] No space left on device", naming no file, and closing the trigger raised
    the same error again, so a run whose trigger failed ended as "closing failed" (exit code 1)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    t = LogTrigger({"path": "/dev/full", "flush_s": 0.0})
    with t:
        rec = t.fire(FireRequest(0, time.monotonic_ns() + AHEAD, 100.0))
        assert rec.unavailable and "trigger.log.path: cannot write /dev/full: No space left on device" in rec.error
        assert not t.available and t.status().failed == 1
    assert not t.is_open  # closed without raising: the failure was already said
    # the disk filled after the last flush of a trigger still in service: its close loses the
    # lines not yet written, and says where
    t = LogTrigger({"path": "/dev/full", "flush_s": 1e12})
    t.open()
    assert t.fire(FireRequest(0, time.monotonic_ns() + AHEAD, 100.0)).ok  # buffered
    with pytest.raises(DeviceError, match="^trigger.log.path: cannot write /dev/full: No space left on device"):
        t.close()
    assert not t.is_open


class _Flaky(Trigger):
    """A backend whose device fails after two pulses (the contract's failure path)."""

    backend = "flaky"
    Settings = NullTrigger.Settings

    def __init__(self, settings=None, timing=None):
        super().__init__(settings, timing)
        self.opens = 0

    def _do_open(self):
        self.opens += 1
        return f"flaky#{self.opens}"

    def _do_fire(self, event_index, fire_at_ns, width_us):
        if self.fired >= 2 and self.opens == 1:
            raise OSError(5, "Input/output error")
        return time.monotonic_ns(), 0.0


def test_device_failure_mid_run_never_raises_and_reconnect_restores(caplog):
    t = _Flaky()
    with t:
        at = time.monotonic_ns() + AHEAD
        recs = [t.fire(FireRequest(i, at, 100.0)) for i in range(5)]
        assert [r.ok for r in recs] == [True, True, False, False, False]
        assert "Input/output error" in recs[2].error and all(r.unavailable for r in recs[2:])
        assert not any(r.unavailable for r in recs[:2])
        st = t.status()
        assert not st.available and "Input/output error" in st.error and st.failed == 3
        assert sum("unavailable" in r.message for r in caplog.records) == 1  # told once, not per cell
        assert t.reconnect() and t.available and t.device == "flaky#2"
        assert t.fire(FireRequest(9, time.monotonic_ns() + AHEAD, 100.0)).ok


def test_request_for_cell_uses_the_timing():
    s = TimingSettings(distance_to_junction_um=250.0, pulse_width_us=300.0)
    r = FireRequest.for_cell(7, 10 * MS, 10.0, s)
    assert (r.event_index, r.fire_at_ns, r.width_us) == (7, 35 * MS, 300.0)


# -- host-timed scheduler --------------------------------------------------------------------------
def test_scheduler_orders_and_merges_pulses():
    levels, edges, errors = [], [], []
    done = threading.Event()

    def output(level):
        levels.append((level, time.monotonic_ns()))
        if len(levels) == 4:
            done.set()

    sched = PulseScheduler(output, lambda i, t: edges.append((i, t)), errors.append)
    sched.start()
    t0 = time.monotonic_ns() + 20 * MS
    sched.schedule(2, t0 + 40 * MS, 2000)  # queued out of order
    sched.schedule(0, t0, 5000)
    sched.schedule(1, t0 + 2 * MS, 5000)  # overlaps pulse 0: merged into one longer pulse
    assert done.wait(5.0)
    sched.stop()
    assert errors == []
    assert [e[0] for e in edges] == [0, 1, 2]
    assert [lv for lv, _ in levels] == [True, False, True, False]
    assert levels[0][1] >= t0 and levels[1][1] >= t0 + 7 * MS  # the merged pulse ends after the later one
    assert levels[2][1] >= t0 + 40 * MS


def test_scheduler_output_failure_is_reported_not_raised():
    errors = []

    def output(level):
        raise RuntimeError("camera gone")

    sched = PulseScheduler(output, lambda i, t: None, errors.append)
    sched.start()
    sched.schedule(0, time.monotonic_ns() + MS, 100)
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.005)
    sched.stop()
    assert len(errors) == 1 and "camera gone" in str(errors[0])


# -- registry --------------------------------------------------------------------------------------
def test_registry_names_every_backend():
    assert set(TRIGGERS) == {"null", "log", "serial", "visa", "camera-line", "nidaqmx"}
    assert trigger_class("null") is NullTrigger
    with pytest.raises(ConfigError, match=r"^trigger\.backend: unknown backend 'gpio'"):
        make_trigger("gpio")


def test_settings_from_a_table_are_checked_with_their_path():
    with pytest.raises(ConfigError, match=r"^trigger\.serial\.baudrate: must be > 0"):
        make_trigger("serial", {"port": "/dev/null", "baudrate": 0})
    with pytest.raises(ConfigError, match=r"^trigger\.visa\.waveform"):
        make_trigger("visa", {"waveform": "ramp"})


def test_nidaqmx_without_the_driver_says_what_to_install():
    try:
        import nidaqmx  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="NI-DAQmx"):
            make_trigger("nidaqmx").open()
    else:
        pytest.skip("nidaqmx is installed here; its missing-driver path is not reachable")


def _fake_nidaqmx(monkeypatch, driver: bool = True):
    """A stand-in for NI's ``nidaqmx`` package (NI's driver cannot be installed here): a counter
    task that makes one pulse per start, after its initial delay, and whose
    ``wait_until_done(timeout)`` raises when the timeout passes first, as NI documents."""
    import enum
    import types

    class DaqError(Exception):
        pass

    class Chan:
        co_pulse_term = ""
        co_pulse_time_initial_delay = 0.0
        co_pulse_high_time = 0.001

    class Channels:
        def add_co_pulse_chan_time(self, counter, *a, **k):
            if counter.rsplit("/", 1)[-1] not in ("ctr0", "ctr1", "ctr2", "ctr3"):
                raise DaqError(f"Physical channel specified does not exist on this device. Physical Channel Name: "
                               f"{counter} Status Code: -200170")
            self.chan = Chan()
            return self.chan

    class Task:
        #: names of the tasks open in the process: the driver refuses a second task of the same name
        names: set = set()

        def __init__(self, name=""):
            if name in Task.names:
                raise DaqError(f"Task name specified conflicts with an existing task name. Task Name: {name} "
                               "Status Code: -200089")
            Task.names.add(name)
            self.name = name
            self.co_channels = Channels()
            self.timing = types.SimpleNamespace(cfg_implicit_timing=lambda **k: None)
            self.done_at = 0.0
            self.starts = []

        removed = False  # the device unplugged: every call on the task fails, as NI's do

        def _check(self):
            if Task.removed:
                raise DaqError("The specified device is not present or is not active in the system. "
                               "Status Code: -200324")

        def is_task_done(self):
            self._check()
            return time.monotonic() >= self.done_at

        def wait_until_done(self, timeout=10.0):
            if time.monotonic() + timeout < self.done_at:
                time.sleep(timeout)
                raise DaqError("Wait Until Done did not indicate that the task was done within the specified "
                               "timeout. Status Code: -200560")
            time.sleep(max(0.0, self.done_at - time.monotonic()))

        def start(self):
            c = self.co_channels.chan
            self.starts.append(time.monotonic_ns())
            self.done_at = time.monotonic() + c.co_pulse_time_initial_delay + c.co_pulse_high_time

        def stop(self):
            self._check()

        def close(self):
            Task.names.discard(self.name)

    def local():
        if not driver:
            raise DaqError("Could not find an installation of NI-DAQmx")
        return types.SimpleNamespace(devices=types.SimpleNamespace(device_names=["Dev1"]))

    mod = types.ModuleType("nidaqmx")
    mod.Task = Task
    mod.constants = types.ModuleType("nidaqmx.constants")
    mod.constants.Level = enum.Enum("Level", "LOW HIGH")
    mod.constants.AcquisitionType = enum.Enum("AcquisitionType", "FINITE CONTINUOUS")
    mod.system = types.ModuleType("nidaqmx.system")
    mod.system.System = types.SimpleNamespace(local=local)
    for name, m in (("nidaqmx", mod), ("nidaqmx.constants", mod.constants), ("nidaqmx.system", mod.system)):
        monkeypatch.setitem(sys.modules, name, m)


def test_nidaqmx_with_the_package_but_no_driver_says_what_to_install(monkeypatch):
    _fake_nidaqmx(monkeypatch, driver=False)
    with pytest.raises(BackendUnavailable, match="NI-DAQmx driver not found.*ni.com"):
        make_trigger("nidaqmx").open()


def test_nidaqmx_a_counter_that_cannot_be_set_up_leaves_no_task_behind(monkeypatch):
    """A counter the device lacks: the task made before the channel was left open, and the driver
    then refused every later open in the process (the corrected setting, the GUI's next Test fire)
    with "task name already in use"."""
    _fake_nidaqmx(monkeypatch)
    import nidaqmx

    with pytest.raises(DeviceError, match=r"^trigger\.nidaqmx: cannot set up Dev1/ctr9: Physical channel"):
        make_trigger("nidaqmx", {"counter": "ctr9"}).open()
    assert nidaqmx.Task.names == set()
    with make_trigger("nidaqmx", {"counter": "ctr1"}) as t:
        assert t.available and t.device == "nidaqmx:Dev1/ctr1"
    assert nidaqmx.Task.names == set()


def test_nidaqmx_a_device_removed_mid_run_closes_without_raising_again(monkeypatch, caplog):
    """The DAQ unplugged mid-run: the pulse thread's driver error made the trigger unavailable, and
    closing raised the driver's error again (the task's stop), which ended the run "closing failed"
    with exit code 1 instead of the trigger's 3."""
    _fake_nidaqmx(monkeypatch)
    import nidaqmx

    t = make_trigger("nidaqmx", None, TimingSettings(pulse_width_us=100.0))
    t.open()
    nidaqmx.Task.removed = True
    assert t.fire(FireRequest(0, time.monotonic_ns() + 50 * MS, 100.0)).ok
    deadline = time.monotonic() + 5
    while t.available and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not t.available and "-200324" in t.error
    t.settle(timeout_s=1.0)
    assert t.status().unacked == 1  # handed over, never armed
    t.close()
    assert not t.is_open and nidaqmx.Task.names == set()  # the task closed all the same
    assert "closing after its failure" in caplog.text


def test_nidaqmx_drops_a_pulse_the_busy_counter_cannot_make_and_goes_on(monkeypatch):
    """Two cells 0.5 ms apart with 1 ms pulses: the counter is still busy at the second fire
    time. That pulse is dropped and reported; the trigger stays up for the next cell (waiting
    with the driver's timeout took it down for the rest of the run)."""
    _fake_nidaqmx(monkeypatch)
    # armed 100 ms ahead: with the default 2 ms, a loaded host (2 cores, other suites) held the
    # arming thread up past the first fire time now and then, which dropped that pulse as armed
    # late and armed the second one instead (acks [1, 2]); the busy counter is what is tested here
    with make_trigger("nidaqmx", {"arm_ahead_us": 100_000.0}, TimingSettings(pulse_width_us=1000.0)) as t:
        # far enough ahead that a host holding the arming thread up (CI, 2 cores) drops nothing else
        t0 = time.monotonic_ns() + 500 * MS
        for i, at in enumerate((t0, t0 + MS // 2, t0 + 300 * MS)):
            assert t.fire(FireRequest(i, at, 1000.0)).ok
        deadline = time.monotonic() + 5
        acks = []
        while len(acks) < 2 and time.monotonic() < deadline:
            acks += t.drain_acks()
            time.sleep(0.01)
        assert t.available, t.error
        assert [a.event_index for a in acks] == [0, 2]
        reports = t.drain_reports()
        assert [(r.event_index, r.kind) for r in reports] == [(1, "refused")] and "busy" in reports[0].message
        assert t.device_refused == 1 and t.fired == 3
        assert t.fire(FireRequest(3, time.monotonic_ns() + 100 * MS, 1000.0)).ok


def test_nidaqmx_says_when_the_host_armed_a_pulse_too_late(monkeypatch):
    """A pulse whose arming thread the host held up past its fire time is dropped and reported as
    such, not as a busy counter (the counter was idle)."""
    _fake_nidaqmx(monkeypatch)
    with make_trigger("nidaqmx", None, TimingSettings(pulse_width_us=100.0)) as t:
        assert t.fire(FireRequest(0, time.monotonic_ns() + 200 * MS, 100.0)).ok
        with t._cond:  # the arming thread cannot take its next pulse while this is held
            time.sleep(0.35)
        deadline = time.monotonic() + 5
        reports = []
        while not reports and time.monotonic() < deadline:
            reports += t.drain_reports()
            time.sleep(0.01)
        assert [(r.event_index, r.kind) for r in reports] == [(0, "refused")]
        assert "after its fire time (the host held this thread up)" in reports[0].message
        assert t.device_errors == 0  # the host held the pulse up, not the device
        assert "busy" not in reports[0].message and t.available


# -- device clock (serial clock mode) --------------------------------------------------------------
def test_device_clock_maps_within_half_the_best_round_trip_and_unwraps():
    from hardware.timing import DeviceClock

    rng = np.random.default_rng(3)
    boot = 7_000_000_000_000
    start_us = (1 << 32) - 300_000  # the device counter wraps during the samples
    dc = DeviceClock(min_span_s=2.0)
    for k in range(40):
        t_dev = boot + k * 20 * MS  # when the device read its clock (host ns)
        d = (start_us + (t_dev - boot) // 1000) % (1 << 32)
        up, down = rng.integers(30_000, 900_000, 2)  # USB-like one-way latencies
        dc.add(int(t_dev - up), int(d), int(t_dev + down))
    target = boot + 39 * 20 * MS + 50 * MS
    want = (start_us + (target - boot) // 1000) % (1 << 32)
    got = dc.to_device_us(target)
    diff = (got - want + (1 << 31)) % (1 << 32) - (1 << 31)
    assert abs(diff) * 1000 <= dc.error_bound_ns + 1000
    assert dc.error_bound_ns < 900_000  # the best round trip, not a typical one
    assert abs(dc.to_host_ns(got) - target) <= 1000
    with pytest.raises(StateError):
        DeviceClock().to_device_us(0)


def test_device_clock_fits_a_fast_device_clock_over_a_long_baseline():
    from hardware.timing import DeviceClock

    dc = DeviceClock(min_span_s=2.0)
    for k in range(64):  # 6.3 s of samples, device 0.4 % fast (a ceramic resonator), 50 µs round trips
        t = 10 * 10**9 + k * 100 * MS
        dc.add(t - 25_000, round((t - 10 * 10**9) / 1000 * 1.004), t + 25_000)
    t = 10 * 10**9 + 64 * 100 * MS + 20 * MS
    assert abs(dc.to_device_us(t) - (t - 10 * 10**9) / 1000 * 1.004) < 5  # µs; a nominal rate would be ~26 ms off here


@pytest.mark.parametrize("fast, stretched, within_us", [(1.0, 0.7, 100), (1.001, 0.7, 150), (1.004, 0.3, 100)])
def test_device_clock_rests_on_its_best_round_trips_over_time_on_a_loaded_host(fast, stretched, within_us):
    """A loaded host stretches most TIME round trips by milliseconds. The fit took the best sample
    of each run of samples (the start-up's 16 filled 6 of 8 runs) and went through each equally:
    a nominal board's pulses mapped ~0.2 ms off at p95 (a run's test failed 1 in 2 on this host),
    and, the rate held nominal for 2 s from the start-up's sample, a board 0.1 % fast ~1.7 ms."""
    from hardware.timing import DeviceClock

    p95, over = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        dc = DeviceClock()
        boot, t, errs = 5 * 10**9, 5 * 10**9, []
        for k in range(76):  # the start-up sync's 16 round trips, then one every 100 ms
            t += 300_000 if k < 16 else 100 * MS
            slow = k >= 16 and rng.random() < stretched
            up, down = rng.integers(40_000, 120_000, 2) + (rng.integers(0, 4_000_000, 2) if slow else 0)
            dc.add(int(t - up), int((t - boot) / 1000 * fast), int(t + down))
            if k > 18:  # a pulse 50 ms after the sample
                q = t + 50 * MS
                dev = int((q - boot) / 1000 * fast)
                errs.append(abs(dc.to_host_ns(dev) - q))
                over.append(errs[-1] / dc.doubt_ns(dev))
        p95.append(np.percentile(errs, 95) / 1000)
    assert np.median(p95) < within_us, p95
    # each mapped time says how far off it may be (an ack's pulse_host_err_ns): honest, not vacuous
    assert np.percentile(over, 95) <= 1.0 and np.percentile(over, 50) > 0.05, np.percentile(over, [50, 95, 100])


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_clock_map_follows_a_replays_rate(speed):
    """A real-time replay at ``replay.speed`` paces frames at recorded time / speed: the host clock
    runs at 1/speed of the camera's (its ``CameraInfo.clock_rate``), and the map must follow it (a
    fit held near slope 1 was milliseconds off, and at speed 0.5 called every pulse late)."""
    rng = np.random.default_rng(1)
    cam = 10**12 + np.arange(20_000, dtype=np.int64) * 100_000
    true = ((cam - 10**12) / speed).astype(np.int64) + 5 * 10**9
    host = true + rng.exponential(20_000, cam.size).astype(np.int64)
    cm = ClockMap(nominal_rate=1 / speed)
    errs = []
    for k in range(0, cam.size, 4):  # the live kernel's small batches
        if k >= 4_000:
            errs.append(cm.to_host_ns(int(cam[k + 3]), refit=False) - int(true[k + 3]))
        cm.add_many(cam[k:k + 4], host[k:k + 4])
        cm.refit()
    assert cm.slope == pytest.approx(1 / speed, rel=1e-6) and cm.resets == 0
    assert np.percentile(np.abs(errs), 99) < 20_000  # ns


def test_a_young_clock_map_keeps_a_sane_rate_through_a_burst():
    """The camera thread held up 5 ms as tracking starts: 50 frames of 10 kHz arrive 3 µs apart,
    then steady. A map of the first 16 frames fitted a rate of 0.03, which timed exits 9 ms off
    and shrank every pulse's 20 ms travel to 0.5 ms; a rate so far from the nominal one is no
    clock's, and the offset is fitted at the nominal rate until a sane fit exists."""
    cam = 10**12 + np.arange(2000, dtype=np.int64) * 100_000
    true = cam - 10**12 + 5 * 10**9 + 50_000
    host = true.copy()
    host[:50] = true[49] + np.arange(50) * 3_000  # delivered in one burst when the thread woke up
    cm = ClockMap()
    errs = []
    for k in range(0, 2000, 16):
        if cm.n >= 16:
            errs.append(abs(cm.to_host_ns(int(cam[k + 15]), refit=False) - int(true[k + 15])))
            assert abs(cm.rate - 1.0) <= 1e-3, (k, cm.rate)
        cm.add_many(cam[k:k + 16], host[k:k + 16])
        cm.refit()
    assert max(errs) < 5_000_000 and max(errs[4:]) < 100_000, errs[:8]


def test_the_wiring_check_of_a_dry_run_trigger_speaks_of_no_device(tmp_path, capsys):
    # the log trigger has no device, yet `trigger test` said "the device counts ... from the
    # command's arrival" (its delay is the host's, measured when the line was written)
    from app.cli import main

    assert main(["trigger", "test", "--device", "log", "--set", f"path={tmp_path / 'p.csv'}", "--count", "2",
                 "--interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert out.count(": sent ") == 2 and "the device counts" not in out, out


@pytest.mark.parametrize("bad", [["--delay", "inf"], ["--delay", "1e300"], ["--interval", "inf"],
                                 ["--interval", "1e300"], ["--width", "2e6"]])
def test_the_wiring_check_names_an_option_out_of_range(bad, capsys):
    # an endless --delay or --interval went on to the fire time and time.sleep() and ended in an
    # OverflowError traceback; a --width past the trigger's range was told as "pulse_width_us"
    from app.cli import main

    assert main(["trigger", "test", "--device", "null", "--count", "2", *bad]) == 2
    err = capsys.readouterr().err
    assert f"{bad[0]}: must be in" in err and "Traceback" not in err, err


def test_the_wiring_check_fires_a_delay_past_the_runs_longest(tmp_path, capsys):
    # --delay past trigger.timing.max_delay_us (the run's guard against a clock error, 5 s by
    # default) was refused as "fire time … ahead > max_delay_us", a key the user never typed
    from app.cli import main

    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[trigger]\nbackend = "log"\n[trigger.log]\npath = "{tmp_path / "p.csv"}"\n'
                   '[trigger.timing]\nmin_lead_us = 300.0\nmax_delay_us = 100000.0\n')
    assert main(["trigger", "test", "--config", str(cfg), "--delay", "300000", "--count", "1"]) == 0, \
        capsys.readouterr()
    out = capsys.readouterr().out
    assert "in 300000 µs" in out and "max_delay_us" not in out, out


@pytest.mark.parametrize("backend", ["null", "log"])
def test_counters_lose_no_pulse_to_two_threads_firing_at_once(backend, tmp_path):
    # the sort thread and a GUI Test fire (or two test fires) fire at once: ``self.fired += 1``
    # unlocked lost increments, and two test pulses took one index. The GIL hides it on this
    # interpreter; switch_before_stores makes every thread switch where it would matter
    from tests.sim.preempt import switch_before_stores

    n = 300
    settings = {"path": str(tmp_path / "pulses.tsv")} if backend == "log" else None
    trig = make_trigger(backend, settings, TimingSettings(min_lead_us=0.0, max_delay_us=60e6))
    records: list[list[FireRecord]] = [[], []]

    def cells(k: int) -> None:
        for i in range(n):
            records[k].append(trig.fire(FireRequest(k * n + i, time.monotonic_ns() + 30_000 * MS, 10.0)))

    def tests(k: int) -> None:
        for _ in range(n):
            records[k].append(trig.test_fire(delay_us=30e6))

    with trig, switch_before_stores("hardware/trigger.py"):
        for work in (cells, tests):
            threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    recs = records[0] + records[1]
    assert all(r.ok for r in recs)
    st = trig.status()
    assert (st.fired, st.test_fired, st.late, st.failed) == (2 * n, 2 * n, 0, 0), st
    assert len({r.event_index for r in recs}) == 4 * n  # each test pulse its own index
