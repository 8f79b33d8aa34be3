"""``mimlsort trigger``: list sort-trigger outputs and test-fire one (wiring checks at the setup).

    mimlsort trigger list
    mimlsort trigger test --device serial --set port=/dev/ttyACM0 --count 5 --width 1000
    mimlsort trigger test --device serial --emulate          # against the device emulator
    mimlsort trigger test --device visa --set resource=USB0::0x0957::0x2C07::MY123::INSTR
    mimlsort trigger test --device camera-line --camera basler --set line=Line2

Only argparse/stdlib at import time; everything else is imported when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _value(text: str):
    """A --set value as TOML would read it: true/false, integer, float, else a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _settings(pairs: list[str]) -> dict:
    from mimlsort.errors import ConfigError

    out = {}
    for p in pairs or []:
        key, sep, val = p.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"expected KEY=VALUE, got {p!r}")
        out[key.strip()] = _value(val.strip())
    return out


def cmd_trigger_list(args: argparse.Namespace) -> int:
    import importlib

    from hardware.trigger import TRIGGERS

    sdk = {"serial": ("serial", "install mimlsort[serial]"), "visa": ("pyvisa", "install mimlsort[visa]"),
           "nidaqmx": ("nidaqmx", "install NI-DAQmx and `pip install nidaqmx`")}
    print("backends:")
    for name, target in TRIGGERS.items():
        state = "ready"
        if name in sdk:
            module, hint = sdk[name]
            try:
                importlib.import_module(module)
            except ImportError:
                state = f"needs {module}: {hint}"
        print(f"  {name:<12} {target:<44} {state}")
    from hardware.serial_trigger import list_ports
    from hardware.visa_trigger import list_resources
    from mimlsort.errors import BackendUnavailable

    try:
        ports = list_ports()
        print("serial ports:" if ports else "serial ports: none found")
        for dev, desc in ports:
            print(f"  {dev:<20} {desc}")
    except BackendUnavailable:
        pass
    try:
        res = list_resources()
        print("VISA resources:" if res else "VISA resources: none found")
        for r in res:
            print(f"  {r}")
    except BackendUnavailable as err:  # no VISA library is a normal state on many machines
        print(f"VISA resources: not available ({err})")
    return 0


#: the longest --interval, --delay and --width a wiring check takes (the delay: trigger.timing.max_delay_us's upper end)
_MAX_INTERVAL_S = 3600.0
_MAX_DELAY_US = 2e9
_MAX_WIDTH_US = 1e6


def cmd_trigger_test(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from hardware.timing import TimingSettings
    from hardware.trigger import make_trigger
    from mimlsort.errors import ConfigError, DeviceError

    if args.count < 1:
        raise ConfigError("--count", f"must be >= 1, got {args.count}")
    # bounded: inf or 1e300 went on to time.sleep() and to the fire time as a traceback (OverflowError)
    if not (0 <= args.interval <= _MAX_INTERVAL_S):
        raise ConfigError("--interval", f"must be in [0, {_MAX_INTERVAL_S:g}] s, got {args.interval}")
    if args.delay is not None and not (0 < args.delay <= _MAX_DELAY_US):
        raise ConfigError("--delay", f"must be in (0, {_MAX_DELAY_US:g}] µs, got {args.delay}")
    if not (0 < args.width <= _MAX_WIDTH_US):  # said as pulse_width_us, a key the user never typed
        raise ConfigError("--width", f"must be in (0, {_MAX_WIDTH_US:g}] µs, got {args.width}")
    settings = _settings(args.set)
    lead = 300.0 if args.delay is None else min(300.0, args.delay / 2)
    # a --delay past max_delay_us is the user's own ask: the run's guard against a clock error
    # refused it as "max_delay_us 5e+06", a key they never typed
    longest = {} if args.delay is None else {"max_delay_us": max(TimingSettings().max_delay_us, args.delay)}
    timing = TimingSettings(pulse_width_us=args.width, min_lead_us=lead, **longest)
    run_cfg = None
    if args.config is not None:  # the trigger a run configuration would use, --set on top
        from dataclasses import replace

        from app.config import load_config

        run_cfg = load_config(args.config)
        cfg = run_cfg.trigger
        args.device = args.device or cfg.backend
        if args.device == cfg.backend:
            settings = {**cfg.table, **settings}
        # the run's own min lead, lowered only as far as a --delay given needs
        timing = replace(cfg.timing, pulse_width_us=args.width,
                         min_lead_us=cfg.timing.min_lead_us if args.delay is None
                         else min(cfg.timing.min_lead_us, args.delay / 2),
                         max_delay_us=cfg.timing.max_delay_us if args.delay is None
                         else max(cfg.timing.max_delay_us, args.delay))
    if not args.device:
        raise ConfigError("--device", "name a trigger backend (or give --config RUN.toml)")
    resources = {}
    with contextlib.ExitStack() as stack:
        if args.emulate:
            if args.device != "serial":
                raise ConfigError("--emulate", "only the serial trigger has an emulator")
            import tempfile

            from hardware.bench import _emulator_module

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mimlsort-trigger-"))
            emu = stack.enter_context(_emulator_module().emulated_port(Path(tmp) / "device.tsv"))
            settings = {"compensate_transmission": False, **settings, "port": emu.port}
            print(f"device emulator on {emu.port}")
        if args.device == "camera-line":
            from acquisition.camera import make_camera

            # the run's camera as configured (serial number, transport): opened with defaults, the
            # first camera found fired its line, whichever camera the run would sort with
            if run_cfg is not None and args.camera in (None, run_cfg.camera.backend):
                camera = run_cfg.camera.make_camera()
            else:
                camera = make_camera(args.camera or "basler")
            resources = {"camera": stack.enter_context(camera)}
        trig = stack.enter_context(make_trigger(args.device, settings or None, timing, **resources))
        print(f"opened {trig.device}")
        records = []
        for i in range(args.count):
            if i:
                time.sleep(args.interval)
            delay = args.delay if args.delay is not None else trig.default_test_delay_us()
            rec = trig.test_fire(args.width, delay)
            records.append(rec)
            state = "sent" if rec.ok else ("LATE" if rec.late else "FAILED")
            # the device's own delay counts from the command's arrival: shorter than asked by the
            # time on the link (it read as if the pulse came early). Only where it does: a pulse
            # due at a time (serial clock mode, a host scheduler) was said to be counted so too
            device = f" (the device counts {rec.delay_us:.0f} µs from the command's arrival)" \
                if rec.ok and trig.delay_from_arrival and abs(rec.delay_us - delay) > 1 else ""
            print(f"pulse {i + 1}/{args.count}: {state}  in {delay:.0f} µs{device}  width {rec.width_us:g} µs"
                  + (f"  ({rec.error})" if rec.error else ""))
        acks = []
        sent = sum(r.ok for r in records)
        if trig.acks:
            wait_s = delay / 1e6 + args.width / 1e6 + 1.0
            deadline = time.monotonic() + wait_s
            while len(acks) < sent and time.monotonic() < deadline:
                acks += trig.drain_acks()
                time.sleep(0.01)
            clock = getattr(trig, "clock", None) if getattr(trig.settings, "mode", "") == "clock" else None
            for a, rec in zip(acks, [r for r in records if r.ok]):
                line = f"ack: device time {a.device_time_us} µs"
                if clock is not None:  # the edge on the host clock, against the requested time
                    line += f" (edge {(clock.to_host_ns(a.device_time_us) - rec.scheduled_ns) / 1000:+.0f} µs from requested)"
                print(line)
        answered = True
        if hasattr(trig, "device_status") and trig.available:
            # a device gone silent answers no STATUS either: said here, and the status line still
            # follows (the DeviceError ended the command before it, saying nothing of the acks)
            try:
                print(f"device status: {trig.device_status()}")
            except DeviceError as err:
                answered = False
                print(f"device status: no answer ({err})")
        st = trig.status()
        # this trigger fires nothing but test pulses, which it counts apart from a run's cells'
        print(f"status: fired {st.fired + st.test_fired}, late {st.late + st.test_late}, "
              f"failed {st.failed + st.test_failed}, acked {st.acked + st.test_acked}, "
              f"device errors {st.device_errors}, late on the device {st.device_late}"
              + (f", last error: {st.error}" if st.error else ""))
        if trig.acks and len(acks) < sent:
            missing = f"{sent - len(acks)} of {sent} pulses got no ack within {wait_s:.1f} s"
            if answered and trig.available:
                print(f"acked {len(acks)} of {sent} pulses: {missing}; the device still answers")
            else:
                print(f"acked {len(acks)} of {sent} pulses: the device stopped answering; {missing} "
                      "(whether they came out is not known)")
    # a device that stopped answering fails the test, even with every pulse acked before
    # a device that failed during the test (an error queue that no longer answers) fails it too
    ok = (all(r.ok for r in records) and st.device_errors == 0 and answered and st.available
          and (not trig.acks or len(acks) == len(records)))
    return 0 if ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("trigger", help="sort-trigger outputs: list them, test-fire one")
    sub = p.add_subparsers(dest="trigger_command", required=True)
    sp = sub.add_parser("list", help="trigger backends, serial ports and VISA resources on this machine")
    sp.set_defaults(func=cmd_trigger_list)
    sp = sub.add_parser("test", help="open a trigger and fire test pulses")
    sp.add_argument("--device", help="backend: null, log, serial, visa, camera-line, nidaqmx (default: --config's)")
    sp.add_argument("--config", type=Path, metavar="RUN.toml", help="take the trigger and its settings from a run config")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="backend setting, repeatable (e.g. port=/dev/ttyACM0, resource=USB0::…::INSTR)")
    sp.add_argument("--count", type=int, default=1, help="pulses to fire")
    sp.add_argument("--interval", type=float, default=0.5, help="seconds between pulses")
    sp.add_argument("--width", type=float, default=1000.0, help="pulse width (µs)")
    sp.add_argument("--delay", type=float, help="from now to the pulse (µs; default: 2 × the min lead, at least "
                    "1 ms, after the command can have reached the device)")
    sp.add_argument("--camera", help="camera backend whose output line fires (camera-line; default: --config's "
                    "camera as configured, else basler)")
    sp.add_argument("--emulate", action="store_true", help="serial: talk to the device emulator on a pseudo-terminal")
    sp.set_defaults(func=cmd_trigger_test)
