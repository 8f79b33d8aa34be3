"""The serial trigger against the device emulator process over a real pseudo-terminal pair.

The emulator (tests/sim/trigger_emulator.py) speaks the firmware's protocol and records every
command and pulse with the shared monotonic clock, so the tests check what arrived at the device,
not what the host believes it sent.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass

import pytest

pytest.importorskip("serial", reason="pyserial not installed (mimlsort[serial])")
if not hasattr(os, "openpty"):
    pytest.skip("pseudo-terminals need a POSIX system", allow_module_level=True)

from hardware.serial_trigger import SerialTrigger  # noqa: E402
from hardware.timing import TimingSettings  # noqa: E402
from hardware.trigger import FireRequest, make_trigger  # noqa: E402
from mimlsort.errors import DeviceError  # noqa: E402
from tests.sim.trigger_emulator import emulated_port  # noqa: E402

MS = 1_000_000
AHEAD = 300 * MS  # far enough ahead that even a heavily loaded host is never late
TIMING = TimingSettings(min_lead_us=1000.0)


def _open(port: str, **kw) -> SerialTrigger:
    # a pty has no baud rate: nothing to subtract for transmission
    return make_trigger("serial", {"port": port, "compensate_transmission": False, **kw}, TIMING)


def _wait_acks(trig, n, timeout_s=10.0):
    acks = []
    deadline = time.monotonic() + timeout_s
    while len(acks) < n and time.monotonic() < deadline:
        acks += trig.drain_acks()
        time.sleep(0.005)
    return acks


@pytest.fixture
def emu(tmp_path):
    with emulated_port(tmp_path / "device.tsv") as e:
        yield e


def test_every_fire_arrives_in_order_with_its_delay_and_width(emu):
    n = 60
    with _open(emu.port) as trig:
        assert "mimlsort-trigger 1" in trig.device
        t0 = time.monotonic_ns() + AHEAD
        recs, called = [], []
        for i in range(n):  # all pending at once: still inside the device's queue of 64
            called.append(time.monotonic_ns())
            recs.append(trig.fire(FireRequest(1000 + i, t0 + i * MS, 50.0 + 10 * (i % 7))))
        assert all(r.ok and not r.late for r in recs)
        acks = _wait_acks(trig, n)
        status = trig.device_status()
    fires = [c[1].split() for c in emu.records("cmd") if c[1].startswith("FIRE")]
    assert len(fires) == n
    for words, rec, t_call in zip(fires, recs, called):
        assert words[0] == "FIRE"
        assert int(words[1]) == rec.event_index  # in order, none lost or duplicated
        assert int(words[2]) == rec.delay_us
        assert int(words[3]) == round(rec.width_us)
        # the delay sent never exceeds what was left when fire() was called
        assert rec.delay_us * 1000 <= rec.scheduled_ns - t_call
    # pulses may fire in another order than sent when a host stall longer than their spacing
    # delays a command (the device counts from arrival): compare them by id
    pulses = {int(p[0]): p for p in emu.records("pulse")}
    assert sorted(pulses) == [r.event_index for r in recs]
    for rec in recs:
        ident, delay, width, rx_ns, due_ns = (int(x) for x in pulses[rec.event_index][:5])
        assert (delay, width) == (rec.delay_us, round(rec.width_us))
        assert due_ns == rx_ns + delay * 1000  # the device counts from the line's arrival
        assert int(pulses[rec.event_index][5]) >= rec.scheduled_ns - 1000  # never early
    assert sorted(a.event_index for a in acks) == [r.event_index for r in recs]
    edge_order = sorted(pulses, key=lambda k: int(pulses[k][5]))  # the order the edges went out
    by_id = {a.event_index: a.device_time_us for a in acks}
    dev_times = [by_id[k] for k in edge_order]
    assert dev_times == sorted(dev_times)  # the device clock timestamps each edge as it goes out
    assert status["armed"] == 1 and status["fired"] == n and status["queued"] == 0
    assert trig.unacked == 0 and trig.acked == n


def test_clock_mode_fires_at_the_device_time_it_computed(emu):
    n = 30
    with _open(emu.port, mode="clock", sync_interval_s=0.1) as trig:
        assert trig.clock.n == 16  # the initial TIME round trips
        t0 = time.monotonic_ns() + AHEAD
        recs, bounds = [], []
        for i in range(n):
            recs.append(trig.fire(FireRequest(i, t0 + i * 10 * MS, 100.0)))
            bounds.append(trig.clock.error_bound_ns)  # the map this command was computed with
            time.sleep(0.008)
        assert all(r.ok for r in recs)
        acks = _wait_acks(trig, n)
        assert trig.clock.n > 16  # TIMEs piggybacked on the fire commands were answered and used
    fires = [c[1].split() for c in emu.records("cmd") if c[1].startswith("FIRE")]
    assert [w[0] for w in fires] == ["FIREAT"] * n and [int(w[1]) for w in fires] == list(range(n))
    pulses = {int(p[0]): p for p in emu.records("pulse")}
    assert sorted(pulses) == list(range(n)) and sorted(a.event_index for a in acks) == list(range(n))
    for rec, bound in zip(recs, bounds):
        due_ns = int(pulses[rec.event_index][4])
        # the device's due time is the fire time, off by at most the clock map's error and its µs
        assert abs(due_ns - rec.scheduled_ns) <= bound + 2000, (due_ns - rec.scheduled_ns, bound)


def test_clock_mode_survives_a_lost_time_reply(tmp_path):
    """TIME replies pair with their requests in order; one lost on the link must not pair every
    later reply with the request before it (the map would be half a sync interval off for good,
    and every pulse that late with nothing counted)."""
    with emulated_port(tmp_path / "device.tsv", "--drop-time-reply", "20") as emu:
        with _open(emu.port, mode="clock", sync_interval_s=0.1) as trig:
            for _ in range(60):  # 3 s of clock syncs while nothing is fired, as a run polls
                trig.poll()
                time.sleep(0.05)
            assert trig.time_replies_lost == 1
            t0 = time.monotonic_ns() + AHEAD
            recs = []
            for i in range(10):
                recs.append(trig.fire(FireRequest(i, t0 + i * MS, 100.0)))
                time.sleep(0.002)
            bound = trig.clock.error_bound_ns
            assert bound < 20 * MS
            _wait_acks(trig, 10)
        assert [r[1] for r in emu.records("dropped")] == ["TIME reply"]
        pulses = {int(p[0]): p for p in emu.records("pulse")}
    for rec in recs:
        assert abs(int(pulses[rec.event_index][4]) - rec.scheduled_ns) <= bound + 2000


def test_late_and_refused_requests_are_not_sent(emu):
    with _open(emu.port) as trig:
        now = time.monotonic_ns()
        late = trig.fire(FireRequest(1, now + 200_000, 100.0))  # 0.2 ms ahead < 1 ms min lead
        wide = trig.fire(FireRequest(2, now + AHEAD, 2_000_000.0))
        ok = trig.fire(FireRequest(3, now + AHEAD, 100.0))
        assert late.late and not late.ok and not wide.ok and ok.ok
        assert len(_wait_acks(trig, 1)) == 1
    sent = [c[1].split()[1] for c in emu.records("cmd") if c[1].startswith("FIRE")]
    assert sent == ["3"]


def test_device_errors_are_counted_and_the_pulse_is_not_expected(tmp_path):
    with emulated_port(tmp_path / "device.tsv", "--queue", "2") as emu, _open(emu.port) as trig:
        at = time.monotonic_ns() + 300 * MS
        recs = [trig.fire(FireRequest(i, at + i * MS, 100.0)) for i in range(5)]
        assert all(r.ok for r in recs)  # handed over; the device refuses three of them asynchronously
        deadline = time.monotonic() + 5
        while trig.device_errors < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        st = trig.status()
        assert st.device_errors == 3 and "queue full" in st.error and st.available
        acks = _wait_acks(trig, 2)
        assert sorted(a.event_index for a in acks) == [0, 1]
        assert trig.failed == 3
    # (code 6 = fired late: the emulator's own wake-up on a loaded host, not part of this test)
    assert [e[1] for e in emu.records("err") if e[1] != "6"] == ["3", "3", "3"]


def test_disconnect_mid_run_gives_failed_records_not_exceptions(emu):
    trig = _open(emu.port)
    with trig:
        at = time.monotonic_ns() + 500 * MS
        assert trig.fire(FireRequest(0, at, 100.0)).ok
        os.kill(emu.process.pid, signal.SIGKILL)  # the USB cable is pulled
        emu.process.wait(5)
        records = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r = trig.fire(FireRequest(len(records) + 1, time.monotonic_ns() + AHEAD, 100.0))
            records.append(r)
            if not r.ok:
                break
            time.sleep(0.01)
        assert not records[-1].ok and records[-1].error
        more = trig.fire(FireRequest(99, time.monotonic_ns() + AHEAD, 100.0))
        assert not more.ok and more.error.startswith("unavailable")
        st = trig.status()
        assert not st.available and st.error and st.failed >= 2
        t = time.monotonic()
        assert not trig.reconnect()  # the device is gone: reconnecting fails cleanly
        assert time.monotonic() - t < 10
    assert not trig.is_open


def test_a_device_that_stops_reading_fails_the_write_instead_of_hanging(emu):
    with _open(emu.port, write_timeout_s=0.05) as trig:
        os.kill(emu.process.pid, signal.SIGSTOP)  # firmware hung: the port is open but nobody reads
        try:
            at = time.monotonic_ns() + 4_000 * MS
            t = time.monotonic()
            recs = []
            while time.monotonic() - t < 20 and (not recs or recs[-1].ok):
                recs.append(trig.fire(FireRequest(len(recs), at, 100.0)))  # until the kernel buffer is full
            assert not recs[-1].ok and "timeout" in recs[-1].error.lower()
            assert not trig.available and trig.fire(FireRequest(-5, at, 100.0)).unavailable
        finally:
            os.kill(emu.process.pid, signal.SIGCONT)


def test_a_write_the_device_took_whole_is_no_timeout_however_late_the_thread_looks(emu):
    # pyserial's write raised "Write timeout" once its timeout had passed, even after a write that
    # took every byte: a thread held up for the default 50 ms on a loaded host failed the handshake
    # ("failed during the handshake: Write timeout") or, mid-run, a TIME or a FIRE the device had,
    # and the trigger went unavailable. A 1 µs timeout has always passed by the check.
    with _open(emu.port, write_timeout_s=1e-6, mode="clock") as trig:
        at = time.monotonic_ns() + 30 * MS
        recs = [trig.fire(FireRequest(i, at + i * MS, 100.0)) for i in range(5)]
        assert all(r.ok for r in recs), [r.error for r in recs]
        assert [a.event_index for a in _wait_acks(trig, 5)] == list(range(5))
        assert trig.query("STATUS", "STATUS").startswith("STATUS")
        assert trig.available


def test_a_delay_is_counted_from_when_its_command_goes_out_not_from_before_a_wait(emu):
    # delay mode: the device counts the delay from the command's arrival. It was worked out before
    # the write lock, so a wait for it (the storage thread's TIME write, or a thread switch on a
    # loaded host, held the lock) sent the delay of an earlier moment: the pulse came that much
    # late (up to 14 ms beside three busy processes) and its record said on time
    with _open(emu.port) as trig:
        at = time.monotonic_ns() + 150 * MS
        recs = []
        trig._write_lock.acquire()  # another writer holds the link for 60 ms
        fire = threading.Thread(target=lambda: recs.append(trig.fire(FireRequest(7, at, 100.0))))
        fire.start()
        time.sleep(0.06)
        released = time.monotonic_ns()
        trig._write_lock.release()
        fire.join(10)
        [rec] = recs
        assert rec.ok and not rec.late
        assert rec.delay_us * 1000 <= at - released, (rec.delay_us, (at - released) / 1000)
        assert [a.event_index for a in _wait_acks(trig, 1)] == [7]


def test_a_device_that_stops_acknowledging_is_taken_as_hung(emu):
    # a crashed sketch behind a USB bridge: the port stays open and takes the bytes, but no pulse
    # is acknowledged. The run went on "firing" into it, reported the trigger ok and exited 0
    with _open(emu.port) as trig:
        at = time.monotonic_ns() + 20 * MS
        assert trig.fire(FireRequest(0, at, 100.0)).ok
        assert len(_wait_acks(trig, 1)) == 1  # a working device first
        os.kill(emu.process.pid, signal.SIGSTOP)
        try:
            n = trig.unacked_fault_after
            at = time.monotonic_ns() + 20 * MS
            assert all(trig.fire(FireRequest(i, at + i * MS, 100.0)).ok for i in range(1, n))
            time.sleep(trig.ack_timeout_s + 0.2)
            trig.drain_acks()
            assert trig.unacked == n - 1 and trig.available  # one short of the limit: a lost ack or two is not a fault
            assert trig.fire(FireRequest(n, time.monotonic_ns() + 20 * MS, 100.0)).ok
            time.sleep(trig.ack_timeout_s + 0.2)
            trig.drain_acks()
            st = trig.status()
            assert st.unacked == n and not st.available and trig.faulted
            assert f"none of the last {n} pulses" in st.error
            assert trig.fire(FireRequest(99, time.monotonic_ns() + AHEAD, 100.0)).unavailable
        finally:
            os.kill(emu.process.pid, signal.SIGCONT)


def test_an_ack_after_its_pulse_was_counted_unacked_is_counted_once(emu):
    # the device held up past the ack deadline (a stalled USB link, a busy host): the pulse was
    # counted unacked, and its ack, when it came, acked as well: fired 1 = acked 1 + unacked 1
    with _open(emu.port) as trig:
        trig.ack_timeout_s = 0.2
        idx = (1 << 32) + 7  # its protocol id is 7: the late ack must still name the cell
        os.kill(emu.process.pid, signal.SIGSTOP)
        try:
            assert trig.fire(FireRequest(idx, time.monotonic_ns() + 20 * MS, 100.0)).ok
            time.sleep(0.4)
            assert trig.drain_acks() == [] and trig.unacked == 1 and trig.acked == 0
        finally:
            os.kill(emu.process.pid, signal.SIGCONT)
        acks = _wait_acks(trig, 1, timeout_s=5.0)
        st = trig.status()
    assert [a.event_index for a in acks] == [idx]  # kept for the record: the pulse did come
    assert (st.fired, st.acked, st.unacked, st.late_acks) == (1, 1, 0, 1)
    assert st.fired == st.acked + st.device_refused + st.unacked


def test_a_refusal_after_its_pulse_was_counted_unacked_is_counted_once(tmp_path):
    # as a late ack: the device held up past the ack deadline, then said "queue full" for the
    # second pulse. It was counted refused on top of unacked (fired 2 = acked 1 + refused 1 +
    # unacked 1), and its report named the protocol's 32-bit id instead of the cell
    with emulated_port(tmp_path / "device.tsv", "--queue", "1") as emu, _open(emu.port) as trig:
        trig.ack_timeout_s = 0.2
        idx = (1 << 32) + 7
        os.kill(emu.process.pid, signal.SIGSTOP)
        try:
            now = time.monotonic_ns()
            assert trig.fire(FireRequest(1, now + 20 * MS, 100.0)).ok
            assert trig.fire(FireRequest(idx, now + 30 * MS, 100.0)).ok
            time.sleep(0.4)
            assert trig.drain_acks() == [] and trig.unacked == 2
        finally:
            os.kill(emu.process.pid, signal.SIGCONT)
        assert [a.event_index for a in _wait_acks(trig, 1, timeout_s=5.0)] == [1]
        deadline = time.monotonic() + 5.0
        refused = []  # a loaded host makes the first pulse late too (a "late" report)
        while not refused and time.monotonic() < deadline:
            refused += [r.event_index for r in trig.drain_reports() if r.kind == "refused"]
            time.sleep(0.005)
        st = trig.status()
    assert refused == [idx]
    assert (st.fired, st.acked, st.device_refused, st.unacked) == (2, 1, 1, 0), st
    assert st.fired == st.acked + st.device_refused + st.unacked


@pytest.mark.parametrize("quiet", [False, True], ids=["ready-after-a-cut-line", "ready-lost"])
def test_a_device_that_reset_mid_run_is_unavailable_not_refusing(tmp_path, quiet):
    # a board reset mid-run (brown-out, watchdog) cuts the ACK it was writing; the READY it sends
    # once up ran into those bytes ("ACK 1READY mimlsort-trigger 1") and went unnoticed, or is lost
    # in the noise of the reset. The device, disarmed now, answered every FIRE "ERR 4 not armed":
    # each cell was recorded as fired, the trigger stayed "available" and the run sorted nothing
    options = ("--reset-after", "3", *(["--reset-quiet"] if quiet else []))
    with emulated_port(tmp_path / "device.tsv", *options) as emu, _open(emu.port) as trig:
        recs = []
        for i in range(2):
            recs.append(trig.fire(FireRequest(i, time.monotonic_ns() + 20 * MS, 100.0)))
            assert len(_wait_acks(trig, 1)) == 1
        deadline = time.monotonic() + 5
        while trig.available and time.monotonic() < deadline:  # the reset comes with the third
            recs.append(trig.fire(FireRequest(len(recs), time.monotonic_ns() + 20 * MS, 100.0)))
            time.sleep(0.05)
        st = trig.status()
        assert not st.available and trig.faulted and len(recs) <= 4, (st, len(recs))
        assert ("restarted" if not quiet else "not armed") in st.error, st.error
        assert trig.fire(FireRequest(99, time.monotonic_ns() + AHEAD, 100.0)).unavailable
    assert len(emu.records("reset")) == 1


def test_garbled_lines_are_told_and_not_kept(tmp_path, caplog):
    # a line noise corrupted (here every other ACK) was put on the queue of replies to STATUS/ID,
    # which only a query empties: kept for the whole run, and nobody was told of it
    import logging

    caplog.set_level(logging.WARNING, logger="hardware")
    with emulated_port(tmp_path / "device.tsv", "--garble-every", "2") as emu, _open(emu.port) as trig:
        at = time.monotonic_ns() + 20 * MS
        assert all(trig.fire(FireRequest(i, at + i * MS, 100.0)).ok for i in range(10))
        acks = _wait_acks(trig, 5)
        deadline = time.monotonic() + 5
        while trig.garbled_lines < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acks) == 5 and trig.garbled_lines == 5 and trig.available
        assert trig._replies.empty()
        assert trig.device_status()["fired"] == 10  # replies to queries still come through
    assert len(emu.records("garbled")) == 5
    assert "garbled line from the device" in caplog.text and "\\ufffd" in caplog.text, caplog.text


def test_a_port_without_the_firmware_fails_the_handshake_in_time():
    master, slave = os.openpty()  # nothing answers on the other end
    try:
        t = time.monotonic()
        with pytest.raises(DeviceError, match="no answer to ID"):
            _open(os.ttyname(slave), handshake_timeout_s=0.3).open()
        assert time.monotonic() - t < 5
    finally:
        os.close(master)
        os.close(slave)


def test_a_port_in_use_by_another_trigger_is_refused_and_the_first_keeps_its_acks(emu):
    # a `trigger test` opened beside a run: both read the one port, the second took the acks the
    # first waited for (none of its 10 came, now and then), or failed its handshake on "ARM"
    with _open(emu.port) as first:
        with pytest.raises(DeviceError, match="in use by another mimlsort"):
            _open(emu.port, handshake_timeout_s=1.0).open()
        at = time.monotonic_ns() + 20 * MS
        assert all(first.fire(FireRequest(i, at + i * MS, 100.0)).ok for i in range(10))
        assert len(_wait_acks(first, 10)) == 10
    with _open(emu.port) as again:  # closing let go of the port
        assert again.available


def test_missing_port_names_it(tmp_path):
    with pytest.raises(DeviceError, match=r"trigger\.serial\.port: cannot open .*nope"):
        _open(str(tmp_path / "nope")).open()


def test_ids_wrap_at_32_bits(emu):
    with _open(emu.port) as trig:
        big = (1 << 32) + 5
        assert trig.fire(FireRequest(big, time.monotonic_ns() + AHEAD, 100.0)).ok
        acks = _wait_acks(trig, 1)
    assert [a.event_index for a in acks] == [big]  # mapped back from the protocol's 32-bit id
    assert emu.records("pulse")[0][0] == "5"


def test_commands_the_link_cannot_deliver_in_time_are_late_not_sent(emu):
    # 9600 baud: a FIRE line takes ~20 ms on the wire; the device would count its delay from an
    # arrival after the fire time. The host models the wire and refuses such commands as late.
    with _open(emu.port, baudrate=9600, compensate_transmission=True) as trig:
        now = time.monotonic_ns()
        recs = [trig.fire(FireRequest(i, now + 45 * MS, 100.0)) for i in range(5)]
        assert len(_wait_acks(trig, 2, timeout_s=2.0)) == 2  # both sent: both come (a loaded host drains them at once)
        late = trig.late
    assert [r.ok for r in recs] == [True, True, False, False, False]  # ~21 and ~42 ms on the wire
    # the figure said is the wire's backlog, then this command's own time on it (no latency configured)
    assert all(r.late and re.search(r"the command would reach the device in \d+ µs \(the link is busy for "
                                    r"\d+ µs \+ \d+ µs to send it\)", r.error) for r in recs[2:]), recs[2].error
    assert late == 3
    fires = [c[1].split() for c in emu.records("cmd") if c[1].startswith("FIRE")]
    assert [int(w[1]) for w in fires] == [0, 1]
    # the second command's delay allows for the first one still on the wire
    assert int(fires[0][2]) - int(fires[1][2]) >= 15_000


def test_a_fire_time_nearer_than_the_link_latency_is_late_not_sent(emu):
    # link_latency_us is subtracted from every delay: with less time left than that, the command
    # went out with delay 0 and was recorded as on time, its pulse ~2 ms late
    with _open(emu.port, link_latency_us=5000.0) as trig:
        rec = trig.fire(FireRequest(1, time.monotonic_ns() + 3 * MS, 100.0))
        # nothing is queued on the link: the figure is the configured latency, and said as such
        # (it read "the link to the device is busy for 5000 µs")
        assert rec.late and not rec.ok and "busy" not in rec.error, rec.error
        assert "would reach the device in 5000 µs (link_latency_us 5000)" in rec.error, rec.error
        ok = trig.fire(FireRequest(2, time.monotonic_ns() + 20 * MS, 100.0))
        assert ok.ok and 10_000 < ok.delay_us < 15_000  # the latency taken off the delay
        assert len(_wait_acks(trig, 1)) == 1


# -- the firmware itself: built for this PC against tests/sim/arduino_shim, and for an Uno --------
# (avr-gcc, the Arduino AVR core) run cycle by cycle in simavr, where the toolchain is installed
# (`make test` installs it on Debian/Ubuntu when it can).
@pytest.fixture(scope="module", params=["pc", "avr"])
def firmware(request, tmp_path_factory):
    import shutil

    from tests.sim import trigger_emulator as sim

    if request.param == "pc":
        if shutil.which("g++") is None:
            pytest.skip("no C++ compiler (g++) to build the firmware for this PC")
        return Firmware("pc", [str(sim.build_firmware(tmp_path_factory.mktemp("fw") / "mimlsort_trigger"))], {})
    if why := sim.avr_toolchain_missing():
        pytest.skip(f"cannot run the firmware on a simulated Uno: {why}")
    program, _ = sim.simulated_uno(tmp_path_factory.mktemp("avr"))
    # a real UART at 115200: the host subtracts each line's time on the wire
    return Firmware("avr", program, {"compensate_transmission": True, "baudrate": 115200})


@dataclass(frozen=True)
class Firmware:
    target: str
    program: list[str]
    options: dict


def _edges(dev):
    """(level, host ns) of every change of the output pin (setup() and DISARM write LOW when it is low)."""
    out, level = [], 0
    for pin, lv, ns, *_ in dev.records("pin"):
        if pin == "7" and int(lv) != level:
            level = int(lv)
            out.append((level, int(ns)))
    return out


def test_firmware_times_every_pulse_from_the_command(firmware, tmp_path):
    n = 30
    with emulated_port(tmp_path / "fw.tsv", device=firmware.program) as dev:
        with _open(dev.port, **firmware.options) as trig:
            assert trig.firmware == "mimlsort-trigger 1 1.1.0"
            t0 = time.monotonic_ns() + AHEAD
            recs = [trig.fire(FireRequest(i, t0 + i * 10 * MS, 300.0 + 20 * (i % 5))) for i in range(n)]
            acks = _wait_acks(trig, n)
            time.sleep(0.01)  # the last falling edge
            status = trig.device_status()
        edges = _edges(dev)
    assert all(r.ok for r in recs)
    assert sorted(a.event_index for a in acks) == list(range(n))
    assert status["fired"] == n and status["queued"] == 0 and status["errors"] >= 0
    assert len(edges) % 2 == 0 and edges[0][0] == 1  # every pulse ended
    highs = [(edges[i][1], edges[i + 1][1]) for i in range(0, len(edges), 2)]
    if firmware.target == "avr":  # widths on the simulated AVR's own clock, exact to a cycle
        dev = _device_edges(dev)
        widths = [dev[i + 1][1] - dev[i][1] for i in range(0, len(dev), 2)]
    else:
        widths = [down - up for up, down in highs]
    assert 1 <= len(highs) <= n  # pulses only merge when a host stall moved one onto the next
    assert all(w >= min(r.width_us for r in recs) * 1000 - 2000 for w in widths)
    # never early: the device counts the delay from the line's arrival, which is after the host
    # computed the delay (whole µs, truncated) — so an edge precedes its fire time by < 2 µs at most.
    # An Uno's 115200 is really 117,647 baud (16 MHz / 136): its lines arrive ~2% sooner than the
    # host reckons, up to ~40 µs for a FIRE line.
    early = 2000 if firmware.target == "pc" else 50_000
    assert highs[0][0] >= recs[0].scheduled_ns - early
    if len(highs) == n:  # the usual case: one pulse per command, each checked
        for (up, _), w, rec in zip(highs, widths, recs):
            assert up >= rec.scheduled_ns - early
            assert w >= rec.width_us * 1000 - 2000


def test_firmware_clock_mode_never_fires_before_its_time(firmware, tmp_path):
    n = 10
    with emulated_port(tmp_path / "fw.tsv", device=firmware.program) as dev:
        with _open(dev.port, mode="clock", **firmware.options) as trig:
            t0 = time.monotonic_ns() + AHEAD
            recs = [trig.fire(FireRequest(i, t0 + i * 10 * MS, 300.0)) for i in range(n)]
            bound = trig.clock.error_bound_ns
            acks = _wait_acks(trig, n)
            time.sleep(0.01)
        edges = _edges(dev)
    assert all(r.ok for r in recs) and sorted(a.event_index for a in acks) == list(range(n))
    ups = [t for lv, t in edges if lv == 1]
    assert 1 <= len(ups) <= n
    assert ups[0] >= recs[0].scheduled_ns - bound - 2000


def _acks_lost_are_no_hang(tmp_path, program=None, options=None):
    # 24 pulses due at once: the firmware outputs them all, holds 16 ACKs and reports the rest as
    # "ERR 7 acks lost 8". The host took the 8 unacknowledged pulses for a hung device and stopped
    # sorting for the rest of the run (and ERR 7 counted as a device error). FIREAT gives the 24
    # one due time on the device's clock: as delays, each counted from its line's arrival, a loaded
    # host spread them over milliseconds, the device wrote ACKs in between and lost only 2
    with emulated_port(tmp_path / "fw.tsv", device=program) as dev:
        settings = {"port": dev.port, "mode": "clock", **({"compensate_transmission": False} | (options or {}))}
        with make_trigger("serial", settings, TimingSettings(min_lead_us=1000.0)) as trig:
            at = time.monotonic_ns() + 300 * MS
            assert all(trig.fire(FireRequest(i, at, 50.0)).ok for i in range(24))
            acks = _wait_acks(trig, 16, timeout_s=10.0)
            deadline = time.monotonic() + 10
            while len(acks) + trig.unacked < 24 and time.monotonic() < deadline:
                acks += trig.drain_acks()
                time.sleep(0.02)
            assert len(acks) == 16 and trig.unacked == 8 and trig.acks_lost == 8
            assert trig.available and trig.device_errors == 0, trig.error
            assert trig.fire(FireRequest(100, time.monotonic_ns() + 50 * MS, 50.0)).ok  # still sorting
    return dev


def test_acks_the_firmware_could_not_send_are_no_hang(firmware, tmp_path):
    _acks_lost_are_no_hang(tmp_path, firmware.program, firmware.options)


def test_the_emulator_loses_acks_as_the_firmware_does(tmp_path):
    # the emulator sent an ACK at every edge and never ERR 7: the host's handling of it (the device
    # is alive, no device error) was tested only where the firmware could be built
    dev = _acks_lost_are_no_hang(tmp_path)
    # besides it, a loaded host makes the emulator's edges late (ERR 6 past its 2 ms; 3 runs in 8
    # beside two busy processes): reported after their ACKs, as the sketch does
    assert [e[1:] for e in dev.records("err") if e[1] != "6"] == [["7", "acks lost 8"]]


def test_firmware_reports_protocol_errors(firmware, tmp_path):
    import serial

    with emulated_port(tmp_path / "fw.tsv", device=firmware.program) as dev:
        with serial.Serial(dev.port, 115200, timeout=0.05) as port:
            def ask(line, lines=1):
                port.write(line.encode() + b"\n")
                got, deadline = [], time.monotonic() + 5
                while len(got) < lines and time.monotonic() < deadline:
                    raw = port.readline()
                    # READY at boot; ERR 6 = an edge late by > 2 ms (this PC, loaded), not the point here
                    if raw.strip() and not raw.startswith((b"READY", b"ERR 6 ")):
                        got.append(raw.decode().strip())
                return got

            assert ask("ID") == ["ID mimlsort-trigger 1 1.1.0"]
            assert ask("FIRE 1 100 100") == ["ERR 4 id=1 not armed"]
            assert ask("ARM") == ["OK ARM"]
            assert ask("FIRE 1 100") == ["ERR 2 bad arguments"]
            assert ask("FIRE 1 10000001 100") == ["ERR 2 bad arguments"]  # > 10 s
            assert ask("FIRE 1 100 0") == ["ERR 2 bad arguments"]
            assert ask("FIRE 4294967296 100 100") == ["ERR 2 bad arguments"]  # > 32 bits
            assert ask("BLINK") == ["ERR 1 unknown command"]
            assert ask("X" * 80) == ["ERR 5 line too long"]
            ack = ask("FIRE 4294967295 0 10")
            assert ack and ack[0].startswith("ACK 4294967295 ")
            st = ask("STATUS")[0].split()
            assert st[:4] == ["STATUS", "1", "0", "1"] and int(st[4]) >= 7  # 7 errors (+ a late report)
            t = ask("TIME")[0].split()
            assert t[0] == "TIME" and t[1].isdigit()
            due = (int(t[1]) + 2_000) % (1 << 32)
            ack = ask(f"FIREAT 7 {due} 10")
            assert ack and ack[0].startswith("ACK 7 ")
            assert int(ack[0].split()[2]) - due >= 0  # not before its due time on the device clock
            assert ask(f"FIREAT 8 {(int(t[1]) + 20_000_000) % (1 << 32)} 10") == ["ERR 2 bad arguments"]
            assert ask("DISARM") == ["OK DISARM"]


def test_the_emulator_answers_every_line_as_the_firmware_does(firmware, tmp_path):
    # the emulator stands in for the sketch in most tests: a line the two answer differently is a
    # test passing against a device that does not exist. It split words at tabs too, and fired
    # "FIRE\t1 0 10", which the sketch answers "ERR 1 unknown command"; the sketch took a command
    # word up to a NUL byte (a break on the line reads as one): "ID\0X" was ID, "FIRE\0" FIRE
    import serial

    lines = ["FIRE 1 0 10", "ARM", "ARM 1", "FIRE\t2 0 10", "ID\t", "FIRE 3 0 10 5", "FIRE 4 0x10 10", "FIRE +5 0 10",
             "FIRE 6 10000001 10", "FIRE 7 0 1000001", "FIRE 8 0 0", "FIRE 4294967296 0 10", "FIREAT 9 1", "FIREATX 1 2 3",
             "id", "TIME 5", "X" * 63, "X" * 64, "FIRE  10   0  10 ", "FIRE 11 0 10\r", "ID\x00X", "FIRE\x00 12 0 10",
             "\x00ID", "DISARM x", "DISARM"]

    def answers(program):
        out = []
        with emulated_port(tmp_path / "answers.tsv", device=program) as dev:
            with serial.Serial(dev.port, 115200, timeout=0.05) as port:
                for line in lines:
                    port.write(line.encode() + b"\n")
                    got, deadline = [], time.monotonic() + 5
                    while not got and time.monotonic() < deadline:
                        raw = port.readline().decode("ascii", "replace").strip()
                        if raw and not raw.startswith(("READY", "ERR 6 ")):  # ERR 6: a late edge on a loaded PC
                            got.append(" ".join(raw.split()[:2]) if raw.startswith("ACK") else raw)  # not its time
                    out.append(got)
        return out

    device, emulator = answers(firmware.program), answers(None)
    assert device == emulator, [(line, d, e) for line, d, e in zip(lines, device, emulator) if d != e]
    for line in ("FIRE\t2 0 10", "ID\x00X", "FIRE\x00 12 0 10", "\x00ID"):
        assert device[lines.index(line)] == ["ERR 1 unknown command"], line


# -- the firmware on a simulated Uno only: what a PC build cannot show -----------------------------
@pytest.fixture(scope="module")
def uno(tmp_path_factory):
    from tests.sim import trigger_emulator as sim

    if why := sim.avr_toolchain_missing():
        pytest.skip(f"cannot run the firmware on a simulated Uno: {why}")
    return sim.simulated_uno(tmp_path_factory.mktemp("uno"))


def test_firmware_fits_an_uno(uno):
    from tests.sim.trigger_emulator import UNO_FLASH, UNO_RAM

    _, fw = uno
    assert fw.flash_bytes <= UNO_FLASH
    assert fw.ram_bytes <= UNO_RAM - 384, fw.ram_bytes  # the rest is the stack's


def _device_edges(dev):
    """(level, device ns) of the output pin's changes, exact to a cycle of the simulated AVR."""
    out, level = [], 0
    for pin, lv, _, dev_ns in dev.records("pin"):
        if pin == "7" and int(lv) != level:
            level = int(lv)
            out.append((level, int(dev_ns)))
    return out


def _commanded_pulses(dev, join_ns=100_000):
    """(start, end, commands, crowded) on the simulated AVR's clock, from each FIRE line's arrival
    there plus its delay. Overlapping pulses are joined, as the pin shows them as one; a pulse
    within ``join_ns`` (the firmware's lateness limit) of another is crowded: its edges may wait
    for the other's. A host stall that delays one command onto the next does both."""
    want = []
    for _, dev_ns, line in dev.records("rx"):
        if line.startswith("FIRE "):
            _, _, delay_us, width_us = line.split()
            start = int(dev_ns) + int(delay_us) * 1000
            want.append((start, start + int(width_us) * 1000))
    out = []
    for start, end in sorted(want):
        if out and start < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end), out[-1][2] + 1, True)
        else:
            near = bool(out) and start < out[-1][1] + join_ns
            if near:
                out[-1] = (*out[-1][:3], True)
            out.append((start, end, 1, near))
    return out


def test_uno_pulses_have_their_width_while_commands_and_acks_flow(uno, tmp_path):
    # 200 pulses/s of 300 µs with their commands arriving and ACKs leaving meanwhile: printing a
    # reply with Arduino's Print (32-bit division per digit) used to hold the falling edge ~0.5 ms
    program, _ = uno
    n = 60
    with emulated_port(tmp_path / "uno.tsv", device=program) as dev:
        with _open(dev.port, compensate_transmission=True, baudrate=115200) as trig:
            t0 = time.monotonic_ns() + 30 * MS
            recs = []
            for i in range(n):
                while time.monotonic_ns() < t0 + (i - 4) * 5 * MS:  # each sent 20 ms ahead
                    time.sleep(0.0005)
                recs.append(trig.fire(FireRequest(i, t0 + i * 5 * MS, 300.0)))
            acks = _wait_acks(trig, n)
            time.sleep(0.01)
            errors, late = trig.device_errors, trig.device_late
        edges = _device_edges(dev)
        commanded = _commanded_pulses(dev)
    assert all(r.ok for r in recs) and sorted(a.event_index for a in acks) == list(range(n))
    assert errors == 0 and late == 0  # no garbled line, no edge > 100 µs late on the device
    highs = [(edges[i][1], edges[i + 1][1]) for i in range(0, len(edges) - 1, 2)]
    assert len(highs) == len(commanded) and sum(c[2] for c in commanded) == n
    alone = [(up, down, start) for (up, down), (start, _, _, crowded) in zip(highs, commanded) if not crowded]
    assert len(alone) >= n // 2  # merges come only from host stalls, rare even on a loaded CI host
    for up, down, start in alone:
        assert start - 4_000 <= up <= start + 200_000  # micros() ticks by 4 µs; ERR 6 beyond 100 µs late
        assert 300_000 <= down - up <= 300_000 + 80_000, (start, down - up)


def test_uno_takes_a_burst_of_commands_whole(uno, tmp_path):
    import serial

    program, _ = uno
    with emulated_port(tmp_path / "uno.tsv", device=program) as dev:
        with serial.Serial(dev.port, 115200, timeout=0.05) as port:
            port.write(b"ARM\n")
            port.write(b"".join(b"FIRE %d %d 50\n" % (i, 200_000 + 1000 * i) for i in range(40)))  # 0.8 KB at once
            lines, deadline = [], time.monotonic() + 5
            while sum(x.startswith(b"ACK") for x in lines) < 40 and time.monotonic() < deadline:
                lines += [x for x in port.readlines() if x.strip()]
    assert not [x for x in lines if x.startswith(b"ERR")]
    assert sorted(int(x.split()[1]) for x in lines if x.startswith(b"ACK")) == list(range(40))


# -- command line and benchmark ------------------------------------------------------------------
def test_cli_test_fires_against_the_emulator_and_lists_backends(capsys):
    from app.cli import main

    assert main(["trigger", "test", "--device", "serial", "--emulate", "--count", "2", "--interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert out.count(": sent ") == 2 and out.count("ack: device time") == 2 and "fired 2" in out
    assert main(["trigger", "list"]) == 0
    assert "serial_trigger:SerialTrigger" in capsys.readouterr().out
    # clock mode sends the due time on the device's clock: nothing is counted from the arrival
    # (it was said to be, as in delay mode)
    assert main(["trigger", "test", "--device", "serial", "--emulate", "--set", "mode=clock"]) == 0
    out = capsys.readouterr().out
    assert ": sent " in out and "from the command's arrival" not in out, out
    assert main(["trigger", "test", "--device", "serial", "--set", "port=/dev/mimlsort-none"]) == 2
    assert "cannot open /dev/mimlsort-none" in capsys.readouterr().err


def test_test_pulses_at_the_default_settings_come_out(tmp_path, capsys):
    # the wiring check the protocol doc prescribes, at the default settings (a real UART's wire
    # time subtracted): the fixed 2 ms default left ~0.1 ms after the ~1.9 ms a command takes at
    # 115200 baud, under the 300 µs min lead, and every pulse was "LATE", exit code 1
    from app.cli import main

    with emulated_port(tmp_path / "device.tsv") as emu:
        assert main(["trigger", "test", "--device", "serial", "--set", f"port={emu.port}", "--count", "3",
                     "--interval", "0.05"]) == 0
        out = capsys.readouterr().out
        assert out.count(": sent ") == 3 and "LATE" not in out and out.count("ack: device time") == 3, out
        assert "the device counts" in out  # the device's delay is told apart from the one asked for
        for bad in (["--count", "-3"], ["--interval", "-1"], ["--delay", "-5"]):
            assert main(["trigger", "test", "--device", "serial", "--set", f"port={emu.port}", *bad]) == 2
            assert bad[0] in capsys.readouterr().err
    assert len(emu.records("pulse")) == 3


def test_cli_test_says_how_many_pulses_a_device_that_went_silent_acknowledged(tmp_path, capsys):
    # a sketch that hangs after its first pulse: the acks stop, and so does the answer to STATUS.
    # The command ended with "error: no STATUS reply" and no status line: nothing said that two
    # of the three pulses got no ack
    from app.cli import main

    with emulated_port(tmp_path / "device.tsv", "--hang-after", "1") as emu:
        code = main(["trigger", "test", "--device", "serial", "--set", f"port={emu.port}", "--set",
                     "compensate_transmission=false", "--count", "3", "--interval", "0.01"])
        out = capsys.readouterr().out
    assert code == 1 and out.count(": sent ") == 3 and out.count("ack: device time") == 1, out
    assert "status: fired 3, late 0, failed 0, acked 1" in out, out
    assert "acked 1 of 3 pulses: the device stopped answering; 2 of 3 pulses got no ack" in out, out
    assert len(emu.records("pulse")) == 1 and len(emu.records("hung")) == 1


def test_cli_test_fails_for_a_device_that_acked_every_pulse_then_went_silent(tmp_path, capsys):
    # every pulse acked, then no answer to STATUS: it ended with exit 0, as for a healthy device
    # (before the silent-device handling, the DeviceError made it exit 2)
    from app.cli import main

    with emulated_port(tmp_path / "device.tsv", "--hang-after", "2") as emu:
        code = main(["trigger", "test", "--device", "serial", "--set", f"port={emu.port}", "--set",
                     "compensate_transmission=false", "--count", "2", "--interval", "0.01"])
        out = capsys.readouterr().out
    assert out.count("ack: device time") == 2 and "device status: no answer" in out, out
    assert code == 1


def test_bench_serial_jitter_reports_every_pulse():
    from hardware.bench import bench_serial_jitter

    res = bench_serial_jitter(n=40)
    # every pulse acked, or its ACK reported lost by the device (ERR 7): the emulator, kept from
    # its loop by a loaded host, outputs the pulses due meanwhile at once and holds 16 ACKs (24
    # of 40 acked, beside two test workers and a helper)
    assert res["pulses"] == res["sent_ok"] == 40 and res["acked"] + res["acks_lost"] == 40 and res["failed"] == 0
    assert res["acked"] >= 16
    for key in ("write", "arrive", "pulse_error"):
        assert res[f"{key}_p50_us"] <= res[f"{key}_p99_us"] <= res[f"{key}_max_us"]
    assert res["write_p50_us"] > 0 and res["arrive_p50_us"] > 0
    assert res["pulse_error_p50_us"] > -2  # never early: the delay is truncated to whole µs at most


def test_bench_trigger_on_a_simulated_uno_measures_on_the_device_clock():
    from hardware.bench import bench_serial_jitter
    from tests.sim.trigger_emulator import avr_toolchain_missing

    if why := avr_toolchain_missing():
        pytest.skip(f"cannot run the firmware on a simulated Uno: {why}")
    res = bench_serial_jitter(n=40, backend="avr", rate=200)
    assert res["pulses"] == res["sent_ok"] == res["acked"] == 40 and res["device_errors"] == 0
    # the edge follows its command's end + delay, never precedes it, by the firmware's loop latency
    assert 0 < res["device_error_p50_us"] <= res["device_error_max_us"] < 300
    assert -5 < res["width_error_p50_us"] <= res["width_error_max_us"] < 100
    assert res["ram_bytes"] < 2048 and res["baud"] == 115200


@pytest.mark.parametrize("sorting", [{"enabled": False}, {"mode": "yield", "threshold": 0.0}],
                         ids=["nothing-fired", "every-target-fired"])
def test_a_run_polls_the_trigger_and_drains_its_acks_without_an_event_file(tmp_path, sorting):
    """Off the sort path the run keeps a clock-mode device's clock synced while nothing is fired,
    collects acks even when no event file takes them (they piled up for the whole run), and lets
    the last pulses out before it disarms the device."""
    from app.config import bundled_model_path, config_from_mapping
    from app.session import build_run

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    with emulated_port(tmp_path / "device.tsv") as emu:
        cfg = config_from_mapping({
            "camera": {"backend": "synthetic", "synthetic": {"duration_s": 2.5, "realtime": True, "seed": 3,
                                                              "cells_per_second": 60.0}},
            "sorting": sorting,
            "trigger": {"backend": "serial", "serial": {"port": emu.port, "compensate_transmission": False,
                                                        "mode": "clock", "sync_interval_s": 0.1}},
            "output": {"folder": str(tmp_path / "out"), "write_events": False, "report": False},
        })
        with build_run(cfg) as run:
            trig = run.pipeline.trigger
            synced_at_start = trig.clock.n
            assert run.wait(60)
            fired = trig.fired
        # closing the run waited for the last pulses (closing disarms the device, which drops
        # what is still queued) and collected every ack
        assert not trig.is_open
        assert trig.acked == fired and trig.unacked == 0 and len(trig._acks) == 0 and len(trig._pending) == 0
        pulses = emu.records("pulse")
    times = [c for c in emu.records("cmd") if c[1] == "TIME"]
    if not sorting.get("enabled", True):
        assert fired == 0
        assert trig.clock.n > synced_at_start and len(times) >= 16 + 6  # ~2 s of polls at 0.25 s
    else:
        assert fired > 20 and len(pulses) == fired


def _serial_run_config(tmp_path, port, seconds, serial=None, **timing):
    from app.config import config_from_mapping

    return config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": seconds, "realtime": True, "seed": 3,
                                                          "cells_per_second": 100.0}},
        "sorting": {"mode": "yield", "threshold": 0.0},  # every cell a target: a pulse per cell
        "trigger": {"backend": "serial", "serial": {"port": port, "compensate_transmission": False, **(serial or {})},
                    "timing": timing},
        "output": {"folder": str(tmp_path / "out"), "report": False},
    })


def test_a_run_records_every_pulse_the_device_refused_and_when_it_fired(tmp_path):
    """The audit trail of a run against the emulator, with a device whose pulse queue holds one
    pulse (a long way to the junction: most commands find it full and are answered ERR 3). Every
    fired cell in the event file has either the device's ack or its refusal — before, the refused
    ones read as fired, with nothing to tell them from the pulses that came. And each pulse was
    scheduled at the cell's exit + the way to the junction at its speed + the offset."""
    import numpy as np

    from app.config import bundled_model_path
    from app.report import summarize, to_markdown
    from app.session import build_run
    from app.storage import REPORT_KINDS, read_events
    from hardware.timing import TimingSettings, travel_ns

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    timing = {"distance_to_junction_um": 400.0, "offset_us": 7000.0}
    with emulated_port(tmp_path / "device.tsv", "--queue", "1") as emu:
        with build_run(_serial_run_config(tmp_path, emu.port, 2.0, **timing)) as run:
            assert run.wait(60)
        st = run.status()
        refused_by_device = [e for e in emu.records("err") if e[1] == "3"]
        pulses = emu.records("pulse")
    f, stored = read_events(run.events_path)
    fired = f["event_index"][f["fired"] == 1]
    acked = set(stored.acks["event_index"].tolist())
    reports = stored.device_reports
    refused = set(reports["event_index"][reports["kind"] == REPORT_KINDS["refused"]].tolist())
    assert len(refused_by_device) > 5 and len(pulses) > 5  # both happened
    assert len(refused) == len(refused_by_device) == st.device_refused == stored.counters["device_refused"]
    assert not (acked & refused)
    assert set(fired.tolist()) == acked | refused  # every fired cell is accounted for, one way or the other
    # and counted once: a refusal that came back before fire() returned was counted as unacked too
    assert st.unacked == stored.counters["unacked"] == 0 and st.fired == len(acked) + len(refused)
    assert len(acked) == len(pulses)
    assert all(b"queue" in m.lower() for m in reports["message"][reports["kind"] == REPORT_KINDS["refused"]])
    assert "device refused" in st.line() and f"device errors {st.device_errors}" in st.line()
    summary = summarize(run.events_path)
    assert summary.device_refused == len(refused)
    assert f"| pulses the device refused (not output) | {len(refused)} |" in to_markdown(summary, {})
    # the fire time: the exit on the host clock + distance / speed after the exit + offset. What
    # is left is how long after the exit its frame reached the host (and the few % of the travel
    # the cell's slowing down past the exit adds); the offset or the travel missing would be 7 ms
    # or ~40 ms here
    s = TimingSettings(**timing)
    m = f["fired"] == 1
    travel = np.array([travel_ns(v, s) for v in f["v_after_mm_s"][m]])
    lag = f["exit_host_ns"][m] - (f["fire_scheduled_ns"][m] - travel - round(s.offset_us * 1000))
    assert -1.5e6 < np.median(lag) < 3e6, np.percentile(lag, [5, 50, 95])
    assert np.mean(np.abs(lag) < 10e6) > 0.9, np.percentile(lag, [5, 50, 95])


def test_a_device_lost_mid_run_leaves_the_run_going_and_says_so(tmp_path):
    """The emulator process killed mid-run (a USB cable pulled): the cells after it are decided
    and recorded as "trigger unavailable", the status line says so, the event file's log names
    it, and the run ends normally."""
    from app.config import bundled_model_path
    from app.pipeline import FinishReason
    from app.session import build_run
    from app.storage import read_events

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    with emulated_port(tmp_path / "device.tsv") as emu:
        with build_run(_serial_run_config(tmp_path, emu.port, 3.0)) as run:
            deadline = time.monotonic() + 60
            while run.status().fired < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert run.status().trigger_ok
            os.kill(emu.process.pid, signal.SIGKILL)
            assert run.wait(60)
            st = run.status()
    assert st.finish_reason is FinishReason.COMPLETED
    assert not st.trigger_ok and "TRIGGER FAULT" in st.line()
    assert st.not_fired.get("trigger unavailable", 0) > 5 and st.fired >= 5
    f, stored = read_events(run.events_path)
    reasons = [stored.reasons[r] for r in f["reason"]]
    assert reasons.count("trigger unavailable") == st.not_fired["trigger unavailable"]
    log_text = "".join(stored.run_log)  # long lines are wrapped
    assert "trigger UNAVAILABLE at the end of the run" in log_text and "lost" in log_text, log_text


@pytest.mark.parametrize("mode", ["clock", "delay"])
def test_a_run_records_when_each_pulse_went_out_on_the_host_clock(tmp_path, mode):
    """The device's clock is related to the host's through TIME round trips (in delay mode too,
    where the pulses do not need it; before session 16 only clock mode had it): each ack's device
    time is mapped to when its pulse went out (``pulse_host_ns``), so the file says how well every
    pulse was timed against its scheduled fire time, and the report sums it up. Checked against
    the emulator's own record of its output edges on the shared monotonic clock."""
    import numpy as np

    from app.config import bundled_model_path
    from app.report import summarize, to_markdown
    from app.session import build_run
    from app.storage import read_events

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    with emulated_port(tmp_path / "device.tsv") as emu:
        cfg = _serial_run_config(tmp_path, emu.port, 2.0, serial={"mode": mode, "sync_interval_s": 0.1})
        with build_run(cfg) as run:
            assert run.wait(60)
        pulses = {int(r[0]): (int(r[4]), int(r[5])) for r in emu.records("pulse")}  # id: (due, edge)
    f, stored = read_events(run.events_path)
    acks = stored.acks
    ids = acks["event_index"].tolist()
    assert len(acks) > 20 and sorted(ids) == sorted(pulses), (len(acks), len(pulses))
    assert np.all(acks["pulse_host_ns"] > 0)
    # the mapped time of each pulse is the emulator's edge of that pulse, to the clock map's error
    edges = np.array([pulses[i][1] for i in ids])
    map_err = np.abs(acks["pulse_host_ns"] - edges)
    # how far off the map is depends on this host's load (the round trips it rests on: p95 0.5-1.2
    # ms when other work shares the 2 cores, 0.1 ms alone), so each ack says how far off it may
    # be, and that is what is held to: honest (the error within it; measured at most 0.83 of it in
    # 6 runs beside other tests) and not vacuous
    doubt = acks["pulse_host_err_ns"]
    assert np.all(doubt > 0) and np.median(doubt) < 5_000_000, np.percentile(doubt, [0, 50, 100])
    assert np.percentile(map_err - doubt, 95) <= 100_000 and np.all(map_err <= 2 * doubt + 200_000), \
        (np.percentile(map_err, [50, 95, 100]), np.percentile(map_err / doubt, [50, 95, 100]))
    scheduled = dict(zip(f["event_index"].tolist(), f["fire_scheduled_ns"].tolist()))
    if mode == "delay":  # the device counts from the command's arrival: a loaded host makes it later, never earlier
        assert all(pulses[i][0] >= scheduled[i] - 1000 for i in ids)
    # the report says when the pulses went out against their fire times as the emulator saw them.
    # How late its edges came is this host's doing, not the sorter's: a Python process on a
    # loaded machine woke up to 35 ms late for some of them (the percentiles of the timing itself
    # were asserted before, and failed there); each percentile is off by at most the map's error
    truth = (edges - np.array([scheduled[i] for i in ids])) / 1000.0
    s = summarize(run.events_path)
    n, *report = s.pulse_timing_us
    assert n == len(acks)
    assert np.allclose(report, np.percentile(truth, [5, 50, 95]), rtol=0, atol=map_err.max() / 1000.0 + 1), \
        (report, np.percentile(truth, [5, 50, 95]))
    assert s.pulse_time_doubt_us == pytest.approx(np.median(doubt) / 1000.0)
    assert f"(each known to ±{s.pulse_time_doubt_us:.0f} µs, median)" in to_markdown(s, {})


def test_clock_samples_on_a_real_uart_are_dated_by_the_bytes_on_the_wire():
    """At 115200 baud a byte takes 87 µs. A TIME written after a FIRE reaches the device only once
    the FIRE's bytes and its own have left: dated at the write, the sample put the device's clock
    reading ~2 ms early, and every mapped ack (and clock-mode pulse) with it. A TIME polled while
    idle is clock mode's only: in delay mode it would hold up the next FIRE outside the wire model."""
    from hardware.serial_trigger import SerialSettings, SerialTrigger
    from hardware.timing import TimingSettings

    class Port:
        data = b""

        def write(self, data):
            self.data += data
            return len(data)

    t = SerialTrigger(SerialSettings(port="/dev/null", baudrate=115200), TimingSettings())
    t._port, t._fd, t._next_sync_ns = Port(), None, 0
    before = time.monotonic_ns()
    t._do_fire(1, before + 20_000_000, 100.0)
    fire, time_line = t._port.data.decode().splitlines()
    assert fire.startswith("FIRE 1 ") and time_line == "TIME"
    byte_ns = 10e9 / 115200
    assert abs(t._time_sent[0] - before - (len(fire) + 1 + 5) * byte_ns) < 300_000
    t._next_sync_ns = 0
    t._do_poll()  # delay mode: no TIME while idle
    assert t._port.data.decode().count("TIME") == 1


def test_a_clock_sample_is_dated_when_its_request_is_written():
    """The TIME after a FIRE was dated when fire() began: a wait for the write lock (a STATUS query
    or clock mode's idle TIME from another thread) or a thread switch before the write put the
    request early by as much, and the sample's midpoint early by half of it."""
    import threading

    from hardware.serial_trigger import SerialSettings

    class Port:
        data = b""

        def write(self, data):
            self.data += data
            return len(data)

    t = SerialTrigger(SerialSettings(port="/dev/null", compensate_transmission=False), TimingSettings())
    t._port, t._fd, t._next_sync_ns = Port(), None, 0
    released = []

    def hold():
        with t._write_lock:
            time.sleep(0.03)
            released.append(time.monotonic_ns())

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.005)
    t._do_fire(1, time.monotonic_ns() + 200 * MS, 100.0)
    holder.join()
    assert t._port.data.decode().splitlines()[1] == "TIME"
    assert t._time_sent[0] >= released[0]


@pytest.mark.parametrize("mode", ["delay", "clock"])
def test_two_time_replies_read_at_once_are_each_paired_with_their_own_request(mode):
    """A reader thread held up past the next TIME request (a loaded host) reads both replies at
    once. Taken in order after the stale first request was written off, the first reply was
    paired with the second request: a clock sample ~100 ms off with a 20 ms round trip, the
    shortest the map had, so the map rested on it and the acks' host times were that far off.
    Under two busy loops the host_clock runs mapped pulses 0.5-4 s from the emulator's edges so
    (6 of 18 runs failed on it); with each reply paired by its clock reading, at most 3 ms (12 runs)."""
    from collections import deque

    from hardware.serial_trigger import SerialSettings
    from hardware.timing import TimingSettings

    t = SerialTrigger(SerialSettings(port="/dev/null", mode=mode, sync_interval_s=0.1,
                                     compensate_transmission=False), TimingSettings())
    h0 = 5_000_000_000

    def device_us(host_ns):  # the device's micros() at that host time
        return (host_ns - h0) // 1000

    base = h0 + 10_000 * MS
    for k in range(16):  # the opening round trips of a loaded host: 30 ms each, read mid-way
        sent = base + k * 40 * MS
        t.clock.add(sent, device_us(sent + 15 * MS), sent + 30 * MS)
    first = base + 1000 * MS
    t._time_sent = deque([first, first + 100 * MS])
    read = first + 120 * MS  # both replies waited in the port until then
    t._handle(f"TIME {device_us(first + MS)}", read)
    t._handle(f"TIME {device_us(first + 101 * MS)}", read)
    assert not t._time_sent
    later = first + 150 * MS
    assert abs(t.clock.to_host_ns(device_us(later)) - later) <= t.clock.error_bound_ns, \
        (t.clock.to_host_ns(device_us(later)) - later, t.clock.error_bound_ns)
    assert t.time_replies_lost == 1  # the first: read 120 ms after it was sent, too late to date


def test_pulses_pending_at_a_reconnect_are_counted_unacked(emu):
    # a pulse handed over before the device was closed and opened again may or may not have come
    # out: it was dropped from the books (fired 1, acked 0, unacked 0)
    with _open(emu.port) as trig:
        assert trig.fire(FireRequest(0, time.monotonic_ns() + 2000 * MS, 100.0)).ok
        assert trig.reconnect()
        trig.drain_acks()
        st = trig.status()
        assert (st.fired, st.acked + st.unacked) == (1, 1), st


def test_test_pulses_a_silent_device_did_not_ack_are_each_counted(tmp_path):
    # test pulses shared the index -1, so the books held one of them: of 3 sent to a device that
    # went silent after the first, 1 was counted unacked, not 2
    with emulated_port(tmp_path / "device.tsv", "--hang-after", "1") as emu, _open(emu.port) as trig:
        trig.ack_timeout_s = 0.2
        for _ in range(3):
            assert trig.test_fire().ok
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while trig.test_acked + trig.test_unacked < 3 and time.monotonic() < deadline:
            trig.drain_acks()
            time.sleep(0.05)
        # counted as test pulses, apart from the cells' (which a run's file checks add up)
        assert (trig.test_fired, trig.test_acked, trig.test_unacked) == (3, 1, 2)
        assert (trig.fired, trig.acked, trig.unacked) == (0, 0, 0)


def _fire_late(emu, trig, idx: int, stall_s: float = 0.02) -> None:
    """Fire ``idx`` and hold the emulator up past its edge once the command is in, so that it
    goes out late by more than ``stall_s`` (the device answers ACK, then ERR 6 for it)."""
    n_cmds = sum(c[1].startswith("FIRE") for c in emu.records("cmd"))
    due = time.monotonic_ns() + 200 * MS  # the command must reach the device before it is stopped
    assert trig.fire(FireRequest(idx, due, 100.0)).ok
    deadline = time.monotonic() + 5.0
    while sum(c[1].startswith("FIRE") for c in emu.records("cmd")) == n_cmds and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(emu.process.pid, signal.SIGSTOP)
    try:
        assert time.monotonic_ns() < due, "the device took the command only after its fire time"
        time.sleep(max(0.0, (due - time.monotonic_ns()) / 1e9) + stall_s)
    finally:
        os.kill(emu.process.pid, signal.SIGCONT)


def _wait_reports(trig, kind: str, n: int = 1, timeout_s: float = 5.0) -> list:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += [r for r in trig.drain_reports() if r.kind == kind]
        time.sleep(0.005)
    return out


def test_a_reopened_trigger_does_not_name_a_pulse_after_one_of_the_last_session(emu):
    # cell 2**32 + 7 (protocol id 7) was counted unacked and the trigger closed; its id -> cell
    # entry outlived the session, and the next session's cell 7, output late, was reported
    # (ACK, then ERR 6, which looks past the acked id) as cell 2**32 + 7
    trig = _open(emu.port)
    trig.ack_timeout_s = 0.2
    with trig:
        os.kill(emu.process.pid, signal.SIGSTOP)
        try:
            assert trig.fire(FireRequest((1 << 32) + 7, time.monotonic_ns() + 20 * MS, 100.0)).ok
            time.sleep(0.4)
            assert trig.drain_acks() == [] and trig.unacked == 1
            trig.close()  # DISARM waits on the link with the FIRE: the device drops the pulse unsent
        finally:
            os.kill(emu.process.pid, signal.SIGCONT)
    trig.ack_timeout_s = 5.0  # cell 7's own ack, however late, is not written off
    with trig:
        _fire_late(emu, trig, 7)
        assert [a.event_index for a in _wait_acks(trig, 1)] == [7]
        late = _wait_reports(trig, "late")
    assert [r.event_index for r in late] == [7]


def test_a_late_report_names_a_cell_past_32_bits(emu, caplog):
    # the device answers ACK, then ERR 6 for a pulse it output late: the ACK had taken the id
    # -> cell entry off, and the report named the protocol's 32-bit id (7), not the cell
    idx = (1 << 32) + 7
    with caplog.at_level("WARNING", logger="hardware.trigger"), _open(emu.port) as trig:
        _fire_late(emu, trig, idx)
        assert [a.event_index for a in _wait_acks(trig, 1)] == [idx]
        late = _wait_reports(trig, "late")
        st = trig.status()
    assert [r.event_index for r in late] == [idx]
    assert "id=7 late" in late[0].message  # the device's own words
    assert (st.fired, st.acked, st.device_late) == (1, 1, 1)
    assert f"id=7 late {late[0].message.split()[-1]} (cell {idx})" in caplog.text


def test_a_test_pulse_the_device_did_not_ack_stays_out_of_the_cells_books(tmp_path, caplog):
    # a GUI Test fire during a run whose ack did not come was counted unacked among the cells'
    # pulses, which it was not counted fired among: fired 2 != acked 2 + refused 0 + unacked 1
    caplog.set_level(logging.WARNING, logger="hardware.trigger")
    with emulated_port(tmp_path / "device.tsv", "--hang-after", "2") as emu, _open(emu.port) as trig:
        trig.ack_timeout_s = 0.2
        for i in range(2):
            assert trig.fire(FireRequest(i, time.monotonic_ns() + 20 * MS, 50.0)).ok
        assert len(_wait_acks(trig, 2)) == 2
        assert trig.test_fire().ok
        deadline = time.monotonic() + 10
        while trig.test_unacked < 1 and time.monotonic() < deadline:
            trig.drain_acks()
            time.sleep(0.05)
        st = trig.status()
    assert (st.fired, st.acked, st.device_refused, st.unacked) == (2, 2, 0, 0), st
    assert (st.test_fired, st.test_acked, st.test_refused, st.test_unacked) == (1, 0, 0, 1), st
    # and the warning does not call it a cell ("e.g. cell -1")
    said = [r.getMessage() for r in caplog.records if "no ack for" in r.getMessage()]
    assert said and all("e.g. test pulse -1" in m for m in said), said


def test_two_threads_firing_at_the_device_lose_no_count(tmp_path):
    # the sort thread and a Test fire hand pulses over while the reader thread counts the device's
    # acks and refusals: unlocked ``+= 1`` from those threads lost counts (see tests/sim/preempt.py)
    from tests.sim.preempt import switch_before_stores

    n = 60
    records: list[list] = [[], []]

    def cells() -> None:
        for i in range(n):
            records[0].append(trig.fire(FireRequest(i, time.monotonic_ns() + 50 * MS, 10.0)))

    def tests() -> None:
        for _ in range(n):
            records[1].append(trig.test_fire(delay_us=50_000.0))

    with emulated_port(tmp_path / "device.tsv") as emu, switch_before_stores("hardware/trigger.py"):
        trig = _open(emu.port)
        with trig:
            threads = [threading.Thread(target=cells), threading.Thread(target=tests)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            trig.settle(timeout_s=10.0)
            st = trig.status()
    for recs, fired, late, failed, refused in ((records[0], st.fired, st.late, st.failed, st.device_refused),
                                               (records[1], st.test_fired, st.test_late, st.test_failed,
                                                st.test_refused)):
        assert fired == sum(r.ok for r in recs) and late == sum(r.late for r in recs), st
        assert failed == sum(not r.ok and not r.late for r in recs) + refused, st
    assert st.fired == st.acked + st.device_refused + st.unacked and st.fired > 0, st
    assert st.test_fired == st.test_acked + st.test_refused + st.test_unacked and st.test_fired > 0, st
    assert len({r.event_index for r in records[1]}) == n
