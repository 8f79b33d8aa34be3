"""``mimlsort bench`` figures for the trigger path.

:func:`bench_serial_jitter` drives the serial trigger over a real pseudo-terminal against the
device emulator (tests/sim/trigger_emulator.py) or the firmware built for this PC, and reports
where the time goes between "the sort thread decides to fire" and "the pulse":

* ``write_us``: ``sent_ns`` − the moment ``fire()`` was called (host cost of one fire command);
* ``arrive_us``: the device's receipt of the line − the moment ``fire()`` was called (host +
  transport: what the device-side delay cannot hide);
* ``pulse_error_us``: the pulse's rising edge − the requested fire time: the sum of everything,
  including the device end's own wake-up latency as a process on this PC (the Python emulator, or
  the sketch built for the PC, which naps 50 µs between loop passes; its edges are taken from
  its ACKs, whose ``micros()`` starts at the program's first pin write).

With ``backend="avr"`` the device end is the sketch built for an Uno and run in simavr. Its edges
carry the simulated AVR's exact clock, so it also reports ``device_error_us`` (the rising edge −
the end of its own command − the delay it carried: what the firmware adds) and
``width_error_us`` (how much longer than asked the pulse was). Its ``pulse_error_us`` holds the
simulation's own lag behind the wall clock (up to a millisecond or two here, more when the host
is busy), so it says little about a real board.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mimlsort.errors import MimlsortError

_SIM = Path(__file__).resolve().parents[1] / "tests" / "sim" / "trigger_emulator.py"


def _emulator_module():
    if not _SIM.exists():
        raise MimlsortError(f"bench trigger needs the device emulator {_SIM} (a source checkout of mimlsort)")
    spec = importlib.util.spec_from_file_location("mimlsort_trigger_emulator", _SIM)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def serial_emulator(folder: str | Path):
    """The device emulator on a pseudo-terminal for a run: yields the port to configure
    (``trigger.serial.port``); the emulator records commands and pulses in ``folder``."""
    with _emulator_module().emulated_port(Path(folder) / "trigger-device.tsv") as emu:
        yield emu.port


def _pct(values_ns: list[int] | np.ndarray) -> tuple[float, float, float]:
    a = np.asarray(values_ns, np.float64) / 1000.0
    if a.size == 0:
        return float("nan"), float("nan"), float("nan")
    return (round(float(np.percentile(a, 50)), 1), round(float(np.percentile(a, 99)), 1),
            round(float(a.max()), 1))


def bench_serial_jitter(n: int = 2000, n_frames: int | None = None, backend: str | None = None,
                        spacing_us: float = 1000.0, lead_ms: float = 20.0, width_us: float = 100.0,
                        mode: str = "delay", rate: float | None = None, baud: int | None = None) -> dict:
    """Fire ``n`` pulses, one every ``spacing_us`` (or ``rate`` per second), each ``lead_ms`` ahead;
    ``backend`` picks the device end: ``emulator`` (default), ``firmware`` (the sketch built with
    g++) or ``avr`` (the sketch built with avr-gcc for an Uno, run cycle-accurately in simavr with
    its UART at ``baud``); ``mode`` the serial trigger's mode (``delay``: FIRE, ``clock``: FIREAT)."""
    from hardware.serial_trigger import SerialTrigger
    from hardware.timing import TimingSettings
    from hardware.trigger import FireRequest

    n = n_frames or n
    device = backend or "emulator"
    if device not in ("emulator", "firmware", "avr"):
        raise MimlsortError(f"bench trigger: backend must be emulator, firmware or avr, got {device!r}")
    if rate:
        spacing_us = 1e6 / rate
    sim = _emulator_module()
    if device == "avr" and (why := sim.avr_toolchain_missing()):
        raise MimlsortError(f"bench trigger --backend avr: {why}")
    baud = baud or 115200
    lead_ns, spacing_ns = round(lead_ms * 1e6), round(spacing_us * 1000)
    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-trigger-") as tmp:
        program, firmware = None, None
        if device == "firmware":
            program = [str(sim.build_firmware(Path(tmp) / "fw"))]
        elif device == "avr":
            program, firmware = sim.simulated_uno(tmp, f"BAUD={baud}UL")
        calls, recs = [], []
        with sim.emulated_port(Path(tmp) / "device.tsv", device=program) as emu:
            # only the simulated Uno has a wire with a baud rate; a pty delivers at once
            trig = SerialTrigger({"port": emu.port, "compensate_transmission": device == "avr", "baudrate": baud,
                                  "mode": mode}, TimingSettings(min_lead_us=1000.0))
            quiet = logging.getLogger("hardware")
            level = quiet.level
            quiet.setLevel(logging.CRITICAL)  # late and refused pulses are counted below, not logged one by one
            restore = contextlib.ExitStack()
            restore.callback(quiet.setLevel, level)
            with restore, trig:
                for i in range(20):  # warm up the write path and the device's first wake-ups
                    trig.fire(FireRequest(1_000_000 + i, time.monotonic_ns() + lead_ns, width_us))
                time.sleep(lead_ms / 1000 + 0.05)
                trig.drain_acks()
                lost_before = trig.acks_lost  # the warm-up's
                start = time.monotonic_ns() + 10 * 1_000_000
                for i in range(n):
                    target = start + i * spacing_ns
                    while (left := target - time.monotonic_ns()) > 300_000:
                        time.sleep((left - 200_000) / 1e9)
                    while time.monotonic_ns() < target:  # the last ≤ 300 µs: on time, like a decision
                        pass
                    t = time.monotonic_ns()
                    calls.append(t)
                    recs.append(trig.fire(FireRequest(i, t + lead_ns, width_us)))
                got: dict[int, int] = {}  # event index -> device time of its edge (µs)
                deadline = time.monotonic() + lead_ms / 1000 + 5.0
                # a device kept from its loop (a loaded host, for the emulator) outputs the pulses
                # that fell due meanwhile at once and reports the ACKs beyond its 16 as lost
                while len(got) + trig.acks_lost - lost_before < n and time.monotonic() < deadline:
                    got.update((a.event_index, a.device_time_us) for a in trig.drain_acks() if a.event_index < n)
                    time.sleep(0.005)
                acks = len(got)
                failed, device_late, device_errors = trig.failed, trig.device_late, trig.device_errors
                acks_lost = trig.acks_lost - lost_before
            if device == "emulator":
                rx = {}
                for rx_ns, line in emu.records("cmd"):
                    words = line.split()
                    if len(words) == 4 and words[0] in ("FIRE", "FIREAT") and int(words[1]) < n:
                        rx[int(words[1])] = int(rx_ns)
                edges = {int(p[0]): int(p[5]) for p in emu.records("pulse") if int(p[0]) < n}
            elif device == "avr":
                # the harness records each edge with the host time the simulation reached it (held
                # to the wall clock) and the exact device time; rising edges pair with the ACKs in order
                level, rises, widths = 0, [], []
                for _, lv, host_ns, dev_ns in emu.records("pin"):
                    if int(lv) != level:
                        level = int(lv)
                        if level:
                            rises.append((int(host_ns), int(dev_ns)))
                        else:
                            widths.append((int(dev_ns) - rises[-1][1]) / 1000 - width_us)
                rx = {}
                order = sorted(got, key=got.get)  # the measured pulses, in the order their edges went out
                matched = list(zip(order, rises[-len(order):])) if len(rises) >= len(order) else []
                edges = {k: host for k, (host, _) in matched}
                # on the device's clock: the edge against the end of its own command plus the delay it carried
                fires = {}
                for _, dev_ns, line in emu.records("rx"):
                    words = line.split()
                    if len(words) == 4 and words[0] == "FIRE" and int(words[1]) < n:
                        fires[int(words[1])] = int(dev_ns) + int(words[2]) * 1000
                device_err = [dev - fires[k] for k, (_, dev) in matched if k in fires]
            else:
                # each ACK carries its edge on the sketch's micros(), which the PC build starts at its
                # first pin write (setup()): that puts every edge, merged or not, on the host clock
                pins = emu.records("pin")
                boot_ns = int(pins[0][2]) if pins else 0
                rx = {}
                edges = {k: boot_ns + us * 1000 for k, us in got.items()} if boot_ns else {}
    ok = [r for r in recs if r.ok]
    write = [r.sent_ns - c for r, c in zip(recs, calls) if r.ok]
    arrive = [rx[r.event_index] - c for r, c in zip(recs, calls) if r.event_index in rx]
    pulse = [edges[r.event_index] - r.scheduled_ns for r in recs if r.event_index in edges]
    w50, w99, wmax = _pct(write)
    out = {
        "device": device,
        "mode": mode,
        "pulses": n,
        "sent_ok": len(ok),
        "acked": acks,
        "acks_lost": acks_lost,
        "failed": failed,
        "device_late": device_late,
        "device_errors": device_errors,
        "spacing_us": spacing_us,
        "write_p50_us": w50,
        "write_p99_us": w99,
        "write_max_us": wmax,
    }
    if device == "emulator":
        a50, a99, amax = _pct(arrive)
        out.update({"arrive_p50_us": a50, "arrive_p99_us": a99, "arrive_max_us": amax})
    p50, p99, pmax = _pct(pulse)
    out.update({"pulse_error_p50_us": p50, "pulse_error_p99_us": p99, "pulse_error_max_us": pmax})
    if device == "avr":
        ws = np.asarray(widths[-n:], np.float64)
        d50, d99, dmax = _pct(device_err)
        out.update({"device_error_p50_us": d50, "device_error_p99_us": d99, "device_error_max_us": dmax})
        out.update({"baud": baud, "flash_bytes": firmware.flash_bytes, "ram_bytes": firmware.ram_bytes,
                    "width_error_p50_us": round(float(np.percentile(ws, 50)), 1) if ws.size else float("nan"),
                    "width_error_max_us": round(float(ws.max()), 1) if ws.size else float("nan")})
    out["goal_p99_us"] = 200.0
    return out
