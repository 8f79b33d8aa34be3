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
                        mode: str = "delay") -> dict:
    """Fire ``n`` pulses, one every ``spacing_us``, each ``lead_ms`` ahead; ``backend`` picks the
    device end: ``emulator`` (default) or ``firmware`` (the sketch built with g++); ``mode`` the
    serial trigger's mode (``delay``: FIRE, ``clock``: FIREAT)."""
    from hardware.serial_trigger import SerialTrigger
    from hardware.timing import TimingSettings
    from hardware.trigger import FireRequest

    n = n_frames or n
    device = backend or "emulator"
    if device not in ("emulator", "firmware"):
        raise MimlsortError(f"bench trigger: backend must be emulator or firmware, got {device!r}")
    sim = _emulator_module()
    lead_ns, spacing_ns = round(lead_ms * 1e6), round(spacing_us * 1000)
    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-trigger-") as tmp:
        program = [str(sim.build_firmware(Path(tmp) / "fw"))] if device == "firmware" else None
        calls, recs = [], []
        with sim.emulated_port(Path(tmp) / "device.tsv", device=program) as emu:
            trig = SerialTrigger({"port": emu.port, "compensate_transmission": False, "mode": mode},
                                 TimingSettings(min_lead_us=1000.0))
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
                while len(got) < n and time.monotonic() < deadline:
                    got.update((a.event_index, a.device_time_us) for a in trig.drain_acks() if a.event_index < n)
                    time.sleep(0.005)
                acks = len(got)
                failed, device_late, device_errors = trig.failed, trig.device_late, trig.device_errors
            if device == "emulator":
                rx = {}
                for rx_ns, line in emu.records("cmd"):
                    words = line.split()
                    if len(words) == 4 and words[0] in ("FIRE", "FIREAT") and int(words[1]) < n:
                        rx[int(words[1])] = int(rx_ns)
                edges = {int(p[0]): int(p[5]) for p in emu.records("pulse") if int(p[0]) < n}
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
    out["goal_p99_us"] = 200.0
    return out
