"""The VISA trigger against a pyvisa-sim function generator (tests/sim/function_generator.yaml):
burst configuration read back from the instrument, one trigger delay + *TRG per cell, the SCPI
error queue, and the instrument's out-of-range rejection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("pyvisa", reason="pyvisa not installed (mimlsort[visa])")
pytest.importorskip("pyvisa_sim", reason="pyvisa-sim not installed (mimlsort[visa])")

from hardware.timing import TimingSettings  # noqa: E402
from hardware.trigger import FireRequest, make_trigger  # noqa: E402
from mimlsort.errors import DeviceError  # noqa: E402

YAML = Path(__file__).parent / "sim" / "function_generator.yaml"
RESOURCE = "USB0::0x0957::0x2C07::MY00000000::INSTR"
MS = 1_000_000
AHEAD = 300 * MS  # far enough ahead that even a heavily loaded host is never late


def _trigger(**kw):
    settings = {"resource": RESOURCE, "library": f"{YAML}@sim", "high_v": 3.3, "low_v": 0.0, **kw}
    return make_trigger("visa", settings, TimingSettings(pulse_width_us=500.0, min_lead_us=1000.0))


def _q(trig, cmd):
    return trig._inst.query(cmd).strip()  # read the simulated instrument's state back


def test_open_configures_a_bus_triggered_burst():
    with _trigger() as trig:
        assert "33522B" in trig.device
        assert _q(trig, ":SOUR1:FUNC?") == "PULS"
        assert float(_q(trig, ":SOUR1:FUNC:PULS:WIDT?")) == pytest.approx(500e-6)
        assert float(_q(trig, ":SOUR1:FUNC:PULS:PER?")) > 500e-6
        assert _q(trig, ":SOUR1:BURS:MODE?") == "TRIG"
        assert _q(trig, ":SOUR1:BURS:STAT?") == "1"
        assert _q(trig, ":SOUR1:BURS:NCYC?") == "1"
        assert _q(trig, ":TRIG1:SOUR?") == "BUS"
        assert float(_q(trig, ":SOUR1:VOLT:HIGH?")) == pytest.approx(3.3)
        assert _q(trig, ":OUTP1?") == "1"
        assert trig.check_errors() == []
    assert not trig.is_open and trig._inst is None


def test_each_fire_sets_the_trigger_delay_and_triggers():
    with _trigger() as trig:
        for i in range(5):
            now = time.monotonic_ns()
            rec = trig.fire(FireRequest(i, now + AHEAD + i * MS, 500.0))
            assert rec.ok and not rec.late
            delay_s = float(_q(trig, ":TRIG1:DEL?"))
            assert delay_s == pytest.approx(rec.delay_us * 1e-6, abs=1e-9)
            assert 0 < rec.delay_us * 1000 <= rec.scheduled_ns - now
        # a different width reconfigures the pulse in the same write
        rec = trig.fire(FireRequest(9, time.monotonic_ns() + AHEAD, 250.0))
        assert rec.ok and float(_q(trig, ":SOUR1:FUNC:PULS:WIDT?")) == pytest.approx(250e-6)
        st = trig.status()
        assert st.available and st.fired == 6 and st.device_errors == 0


def test_out_of_range_width_is_rejected_by_the_instrument_and_reported():
    with _trigger(poll_interval_s=0.0) as trig:
        rec = trig.fire(FireRequest(1, time.monotonic_ns() + AHEAD, 200_000.0))  # 0.2 s > the 0.1 s maximum
        assert rec.ok  # the host cannot know; the instrument's error queue tells
        st = trig.status()
        assert st.device_errors == 1 and "-100" in st.error and st.available
        assert float(_q(trig, ":SOUR1:FUNC:PULS:WIDT?")) == pytest.approx(500e-6)  # unchanged
        assert trig.check_errors() == []  # the queue was emptied


def test_a_run_reads_the_error_queue_once_its_last_pulse_is_out():
    """A run does not poll the instrument while it sorts (a query holds the bus a pulse needs),
    so what it objected to meanwhile is read when the run settles after its last pulse."""
    with _trigger(poll_interval_s=3600.0) as trig:
        assert trig.fire(FireRequest(1, time.monotonic_ns() + 50 * MS, 200_000.0)).ok  # out of range
        assert trig.device_errors == 0  # nobody asked yet
        trig.settle(timeout_s=2.0)
        assert trig.device_errors == 1 and "-100" in trig.error and trig.available


def test_every_error_in_the_queue_is_counted_and_a_run_may_read_them_as_it_sorts():
    # 25 rejected commands: a read that stopped at 20 left the rest for the next read, and a run
    # ended saying "20 device errors" where the instrument had ignored 292 triggers
    with _trigger(poll_interval_s=3600.0) as trig:
        assert not trig.poll_during_run  # the default: the bus stays free while cells are sorted
        for i in range(25):  # two widths out of range in turn: each fire sends its width again
            assert trig.fire(FireRequest(i, time.monotonic_ns() + 50 * MS + i * MS, 200_000.0 + i % 2)).ok
        trig.settle(timeout_s=2.0)
        assert trig.device_errors >= 25 and trig.check_errors() == []
    with _trigger(poll_interval_s=0.0, check_errors_during_run=True) as trig:
        assert trig.poll_during_run  # what the pipeline asks before polling a trigger mid-run
        assert trig.fire(FireRequest(1, time.monotonic_ns() + AHEAD, 200_000.0)).ok
        trig.poll()
        assert trig.device_errors == 1 and "-100" in trig.error


def test_configuration_out_of_range_fails_open_with_the_instruments_errors():
    with pytest.raises(DeviceError, match="rejected the burst configuration.*-100"):
        _trigger(high_v=8.0).open()


@pytest.mark.parametrize("settings, width_us, named", [
    ({"high_v": 8.0}, 500.0, "':SOUR1:VOLT:HIGH 8.0000' (trigger.visa.high_v): -100"),
    ({}, 200_000.0, "':SOUR1:FUNC:PULS:WIDT 0.200000000' (trigger.timing.pulse_width_us): -100"),
    ({"waveform": "sine", "frequency_hz": 5e7}, 500.0, "(trigger.visa.frequency_hz): -100"),
])
def test_a_rejected_configuration_names_the_value_and_its_setting(settings, width_us, named):
    # the error queue says only "-100 Command error (undefined header or data out of range)": which
    # of the ~15 commands (a high_v, a width, a carrier frequency out of range) was left to guess
    trig = make_trigger("visa", {"resource": RESOURCE, "library": f"{YAML}@sim", **settings},
                        TimingSettings(pulse_width_us=width_us, min_lead_us=1000.0))
    with pytest.raises(DeviceError) as err:
        trig.open()
    assert named in str(err.value) and str(err.value).count("-100") == 1, str(err.value)
    assert not trig.is_open and trig._inst is None


def test_sine_burst_cycles_follow_the_width():
    with _trigger(waveform="sine", frequency_hz=20_000_000.0, high_v=1.0, low_v=-1.0) as trig:
        assert _q(trig, ":SOUR1:FUNC?") == "SIN"
        assert int(_q(trig, ":SOUR1:BURS:NCYC?")) == 10_000  # 500 µs at 20 MHz
        assert trig.fire(FireRequest(0, time.monotonic_ns() + AHEAD, 100.0)).ok
        assert int(_q(trig, ":SOUR1:BURS:NCYC?")) == 2_000


def test_host_timed_mode_acks_each_trigger():
    with _trigger(timed_by="host") as trig:
        t0 = time.monotonic_ns() + AHEAD
        recs = [trig.fire(FireRequest(i, t0 + i * 3 * MS, 500.0)) for i in range(3)]
        assert all(r.ok for r in recs)
        acks = []
        deadline = time.monotonic() + 5
        while len(acks) < 3 and time.monotonic() < deadline:
            acks += trig.drain_acks()
            time.sleep(0.005)
    assert [a.event_index for a in acks] == [0, 1, 2]
    assert all(a.host_ns >= r.scheduled_ns for a, r in zip(acks, recs))


def test_unknown_resource_is_a_device_error():
    with pytest.raises(DeviceError, match=r"trigger\.visa\.resource"):
        _trigger(resource="USB0::0x1234::0x5678::NOPE::INSTR").open()


@pytest.mark.parametrize("resource", ["garbage", "USB0::0x0957::0x2C07::INSTR"])
def test_a_malformed_resource_name_is_said_to_be_one(resource):
    # it read "'write_termination' is not a valid attribute for type Resource" (pyvisa opened an
    # unknown interface type as a bare Resource), or nothing that named the name's syntax
    with pytest.raises(DeviceError, match=r"trigger\.visa\.resource: .* is neither a VISA resource name") as err:
        _trigger(resource=resource).open()
    assert "write_termination" not in str(err.value)


def test_session_lost_mid_run_gives_failed_records_not_exceptions():
    with _trigger() as trig:
        assert trig.fire(FireRequest(0, time.monotonic_ns() + AHEAD, 500.0)).ok
        trig._inst.close()  # the instrument's session is gone (cable pulled, instrument rebooted)
        rec = trig.fire(FireRequest(1, time.monotonic_ns() + AHEAD, 500.0))
        assert not rec.ok and not rec.late and rec.error
        after = trig.fire(FireRequest(2, time.monotonic_ns() + AHEAD, 500.0))
        assert after.unavailable
        st = trig.status()
        assert not st.available and st.failed == 2 and st.fired == 1
        assert trig.reconnect() and trig.fire(FireRequest(3, time.monotonic_ns() + AHEAD, 500.0)).ok


def test_a_run_s_event_file_names_the_instrument_that_fired_in_full(tmp_path):
    """Each cell's fire_device holds 32 bytes: the resource and the instrument's *IDN? (model,
    serial number) were cut to "visa:USB0::0x0957::0x2C07::MY000" and said nowhere else."""
    import dclab

    from app.config import config_from_mapping
    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.3, "cells_per_second": 20.0, "realtime": True}},
        "model": {"path": "demo"}, "output": {"folder": str(tmp_path), "report": False},
        "trigger": {"backend": "visa", "visa": {"resource": RESOURCE, "library": f"{YAML}@sim", "high_v": 3.3}},
    })
    with build_run(cfg) as run:
        assert run.trigger is not None  # a camera paced in real time: the trigger fires
        assert run.wait(120)
    with dclab.new_dataset(run.events_path) as ds:
        text = "".join(ds.logs["mimlsort-run"])
    assert f"trigger visa: visa:{RESOURCE} (Keysight Technologies,33522B,MY00000000,sim-1.0)" in text, text


def _error_queue_gone_after_open(monkeypatch):
    """The instrument answers SYST:ERR? while the trigger opens, then no more (a VISA timeout): the
    pyvisa-sim session raises what a real one raises."""
    import pyvisa
    from hardware.visa_trigger import VisaTrigger

    real = VisaTrigger._read_errors

    def read_errors(self, limit=1000):
        if self.is_open:
            raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_timeout)
        return real(self, limit)

    monkeypatch.setattr(VisaTrigger, "_read_errors", read_errors)


def test_a_test_pulse_whose_error_queue_does_not_answer_makes_the_trigger_unavailable(monkeypatch, capsys):
    # the VisaIOError went out of test_fire: `trigger test` ended with a traceback, and the GUI's
    # Test fire during a run left the run's trigger "available" with its instrument gone
    from app.cli import main

    _error_queue_gone_after_open(monkeypatch)
    with _trigger() as trig:
        rec = trig.test_fire(delay_us=AHEAD / 1000)
        assert rec.ok  # the trigger was handed over
        st = trig.status()
        assert not st.available and "reading the error queue after the test pulse" in st.error
        assert "VI_ERROR_TMO" in st.error
        assert trig.fire(FireRequest(1, time.monotonic_ns() + AHEAD, 500.0)).unavailable
    code = main(["trigger", "test", "--device", "visa", "--set", f"resource={RESOURCE}",
                 "--set", f"library={YAML}@sim", "--interval", "0"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "pulse 1/1: sent" in out and "last error: VisaIOError: reading the error queue" in out, out


def test_resources_are_listed_through_the_backend():
    from hardware.visa_trigger import list_resources
    from mimlsort.errors import BackendUnavailable

    assert "TCPIP0::192.168.1.50::inst0::INSTR" in list_resources(f"{YAML}@sim")  # as pyvisa-sim names them
    with pytest.raises(BackendUnavailable, match="no VISA library"):
        list_resources("/nonexistent/libvisa.so")
