"""The ``mimlsort`` command line.

Each subcommand imports what it needs when it runs, so ``mimlsort --help`` is instant and a
missing optional extra affects only the commands that use it. Errors of the MimlsortError family
are printed as one clear line and exit with status 2; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from mimlsort.errors import ConfigError, DataFormatError, MimlsortError


class _VersionAction(argparse.Action):
    """``--version``: asks git only when given (argparse's own action wants the text up front)."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from mimlsort.provenance import software_version

        print(software_version())
        parser.exit()


def _roi(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ROI must look like 256x96, got {text!r}") from None


def _synthetic_settings(args: argparse.Namespace):
    from dataclasses import replace

    from acquisition.synthetic import SyntheticSettings

    s = SyntheticSettings()
    changes = {}
    options = {"width": "--roi", "height": "--roi"}
    for arg, key in (("seconds", "duration_s"), ("fps", "fps"), ("pixel_size", "pixel_size_um"),
                     ("cells_per_second", "cells_per_second"), ("seed", "seed")):
        v = getattr(args, arg, None)
        options[key] = "--" + arg.replace("_", "-")
        if v is not None:
            changes[key] = v
    if getattr(args, "roi", None):
        changes["width"], changes["height"] = args.roi
    try:
        return replace(s, **changes)
    except ConfigError as err:  # "duration_s: … got 0.0001" for a --seconds 0.0001 typed a moment before
        raise ConfigError(options.get(err.key, err.key), err.problem) from err


def cmd_simulate(args: argparse.Namespace) -> int:
    from acquisition.synthetic import TRUTH_HEADER, write_truth_csv
    from app.simdata import record_simulation

    from mimlsort.outputs import check_output_file

    settings = _synthetic_settings(args)
    check_output_file(args.out)
    if args.truth:
        check_output_file(args.truth, inputs=(args.out,), option="--truth", header=TRUTH_HEADER)
        if Path(args.truth).resolve() == Path(args.out).resolve():
            raise DataFormatError(f"{args.truth}: --truth and --out name the same file")
    truth = record_simulation(settings, args.out)
    if args.truth:
        write_truth_csv(truth, args.truth)
    print(f"wrote {round(settings.duration_s * settings.fps)} frames ({settings.width}x{settings.height}) to {args.out}; "
          f"{len(truth)} objects" + (f", truth in {args.truth}" if args.truth else ""))
    return 0


BIT_DEPTH_HELP = ("bits the grey levels use, if the recording does not say (a 12-bit camera's uint16 TIFFs: 12; "
                  "tracking thresholds are 8-bit grey levels scaled by it)")


FLOW_HELP = ("the way cells move in the recording's images: left-to-right (the default), right-to-left, "
             "top-to-bottom or bottom-to-top; frames are turned so that they move left to right")


def cmd_track(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from acquisition.replay import refuse_event_file
    from app.cli_run import _load, replay_source
    from app.offline import TABLE_START, track_camera, write_events_csv
    from app.session import with_changes
    from mimlsort.outputs import check_output_file

    # a configuration's tracking section (geometry, thresholds) and replay facts, as `replay` reads them
    cfg = _load(args)
    cfg = with_changes(cfg, camera=replay_source(args, realtime=False, looped=cfg.camera.replay.loop))
    settings = cfg.tracking if args.threshold is None else replace(cfg.tracking, threshold=args.threshold)
    refuse_event_file(args.recording)
    from tqdm.auto import tqdm

    # Ctrl-C or SIGTERM ends the tracking at the next frame and keeps the cells tracked so far, as
    # `replay` keeps its events (they were lost with the KeyboardInterrupt); a second signal ends
    # the command at once, for a stall no frame check reaches (the kernels compiling)
    stopped: list[str] = []
    previous: dict[int, object] = {}

    def on_signal(signum, _frame) -> None:
        stopped.append(signal.Signals(signum).name)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        with cfg.camera.make_camera() as cam:
            # before the tracking, not after it; after the recording opened, as `replay` does: a
            # recording not found or refused left the folder this had made for --out behind
            check_output_file(args.out, inputs=(args.recording,), header=",".join(TABLE_START))
            # rate and ETA as `replay` shows them: a long recording was tracked with nothing said for minutes
            total = cam.info.frame_count
            with tqdm(total=total if total > 0 else None, unit="frame", unit_scale=True, file=sys.stderr,
                      dynamic_ncols=True, mininterval=0.5) as bar:
                # a recording damaged part way keeps the cells of its frames before the damage (as
                # `replay` keeps its events): they were all lost with the error
                res = track_camera(cam, settings, pixel_size_um=cfg.camera.pixel_size_um, keep_partial=True,
                                   progress=lambda n: bar.update(n - bar.n),
                                   stop=lambda: stopped[0] if stopped else "")
        write_events_csv(res.events, args.out)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    complete = sum(1 for e in res.events if e.ok)
    if res.error is not None:
        print(f"mimlsort track: error: {res.error}", file=sys.stderr)
    elif res.stopped:
        print(f"mimlsort track: interrupted ({res.stopped})", file=sys.stderr)
    print(f"{res.frames} frames -> {len(res.events)} cells ({complete} complete, unflagged) -> {args.out}"
          + (" (exit code 1: the frames after the error were not tracked)" if res.error is not None else
             " (the frames after the interruption were not tracked)" if res.stopped else ""))
    if res.error is not None:
        return 1
    return {"SIGINT": 130, "SIGTERM": 143}.get(res.stopped, 0)


#: ``mimlsort bench WHAT`` -> "module:function"; the function takes keyword options (only those it
#: declares are passed) and returns a flat dict of figures.
BENCHES: dict[str, str] = {
    "tracking": "tracking.bench:bench_tracking",
    "tracking-accuracy": "app.bench:bench_tracking_accuracy",
    "pulse-timing": "app.bench:bench_pulse_timing",
    "clock-map": "app.bench:bench_clock_map",
    "recording": "acquisition.recording:bench_recording",
    "inference": "inference.bench:bench_inference",
    "sorting": "app.bench:bench_sorting",
    "trigger": "hardware.bench:bench_serial_jitter",
    "storage": "app.storage:bench_storage",
    "synthetic": "acquisition.synthetic:bench_synthetic",
    "sort-modes": "app.sortsim:bench_sort_modes",
    "pipeline": "app.bench:bench_pipeline",
    "camera": "app.bench_camera:bench_camera",
    "gui": "app.gui.bench:bench_gui",
}


#: the command-line option of each benchmark parameter
_BENCH_FLAGS = {"n_frames": "--frames", "backend": "--backend", "seconds": "--seconds", "model": "--model",
                "provider": "--provider", "compression": "--compression", "rate": "--rate", "baud": "--baud",
                "mode": "--mode", "stages": "--stages"}


def cmd_bench(args: argparse.Namespace) -> int:
    import inspect

    module, _, name = BENCHES[args.what].partition(":")
    fn = getattr(importlib.import_module(module), name)
    params = inspect.signature(fn).parameters
    options = {"n_frames": args.frames, "backend": args.backend, "seconds": args.seconds, "model": args.model,
               "provider": args.provider, "compression": args.compression, "rate": args.rate, "baud": args.baud,
               "mode": args.mode, "stages": args.stages or None}
    # an option the benchmark does not take was dropped without a word: `bench tracking --seconds 5`
    # measured its default 20,000 frames, and the figure was read as 5 seconds'
    ignored = [_BENCH_FLAGS[k] for k, v in options.items() if v is not None and k not in params]
    if ignored:
        takes = [_BENCH_FLAGS[k] for k in options if k in params]
        raise MimlsortError(f"bench {args.what} takes no {', '.join(ignored)} "
                            f"({'it takes ' + ', '.join(takes) if takes else 'it takes no options'} and --json)")
    kwargs = {k: v for k, v in options.items() if v is not None and k in params}
    res = fn(**kwargs)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        width = max(len(k) for k in res)
        for k, v in res.items():
            print(f"{k:>{width}}  {v}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from app.config import default_config_text, load_config

    if args.check:
        from app.config import located
        from app.session import preflight

        cfg = load_config(args.check)
        try:
            checked = preflight(cfg)
        except ConfigError as err:  # said as the run says it: the key and the file
            raise located(err, args.check) from err
        print(f"{args.check}: valid; " + "; ".join(checked) + " (camera and trigger are opened only by a run)")
    else:
        print(default_config_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimlsort", description="Real-time MIML cell tracking, classification and sorting")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.add_argument("--version", action=_VersionAction,
                   help="the version, with the commit in a git checkout (event files say the same)")
    sub = p.add_subparsers(dest="command", required=True)

    def sim_args(sp: argparse.ArgumentParser, seconds: float) -> None:
        sp.add_argument("--seconds", type=float, default=seconds, help="simulated duration")
        sp.add_argument("--fps", type=float, help="frame rate")
        sp.add_argument("--roi", type=_roi, help="ROI as WxH pixels, e.g. 256x96")
        sp.add_argument("--pixel-size", type=float, help="µm per pixel")
        sp.add_argument("--cells-per-second", type=float)
        sp.add_argument("--seed", type=int)

    sp = sub.add_parser("simulate", help="record a simulated channel to .rtdc with its ground truth")
    sp.add_argument("--out", required=True, help="raw recording (.rtdc)")
    sp.add_argument("--truth", help="CSV of the true values of every simulated object")
    sim_args(sp, 2.0)
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("track", help="track a recording: one CSV row per cell")
    sp.add_argument("recording", type=Path)
    sp.add_argument("--out", required=True, type=Path)
    sp.add_argument("--pixel-size", type=float, help="µm per pixel, if the recording does not say (one it says is overridden, with a warning)")
    sp.add_argument("--fps", type=float, help="frame rate, if the recording does not say (a video container's rate is a playback rate: this wins over it)")
    sp.add_argument("--bit-depth", type=int, help=BIT_DEPTH_HELP)
    sp.add_argument("--flow-direction", help=FLOW_HELP)
    sp.add_argument("--config", type=Path, metavar="RUN.toml",
                    help="tracking settings (tracking.*: geometry, thresholds) and the recording's facts "
                         "(camera.*); the other options win over it")
    sp.add_argument("--threshold", type=float, help="segmentation threshold, 8-bit grey levels (< 0: darker than "
                                                     "the background, RT-DC's rule; default: --config's "
                                                     "tracking.threshold, else -6)")
    sp.set_defaults(func=cmd_track)

    sp = sub.add_parser("config", help="print the commented default configuration, or check a file")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--default", action="store_true", help="print the default configuration (the default action)")
    g.add_argument("--check", type=Path, metavar="RUN.toml", help="validate a configuration file")
    sp.set_defaults(func=cmd_config)

    sp = sub.add_parser("bench", help="measure speed (see BENCHMARKS.md)")
    sp.add_argument("what", choices=sorted(BENCHES))
    sp.add_argument("--frames", type=int, help="frames to process (where the benchmark takes frames)")
    sp.add_argument("--seconds", type=float, help="duration (where the benchmark runs for a time)")
    sp.add_argument("--backend", help="camera backend (bench camera); device end (bench trigger: emulator, "
                    "firmware, avr)")
    sp.add_argument("--rate", type=float, help="pulses per second (bench trigger)")
    sp.add_argument("--baud", type=int, help="UART baud rate of the simulated Uno (bench trigger --backend avr)")
    sp.add_argument("--mode", choices=("delay", "clock"), help="serial trigger mode (bench trigger)")
    sp.add_argument("--model", help="model file(s), comma-separated (bench inference/sorting/pipeline)")
    sp.add_argument("--provider", help="ONNX Runtime provider: auto, cpu, cuda, tensorrt (bench inference)")
    sp.add_argument("--compression", choices=("all", "masks", "none"),
                    help="event file images compressed (output.compression; bench pipeline/sorting/storage)")
    sp.add_argument("--stages", action="store_true",
                    help="time each decision stage by stage, cell by cell (bench sorting/pipeline; app/stages.py)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_bench)

    for name in _EXTENSIONS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # that part of the CLI is not there (yet)
                continue
            raise
        mod.register(sub)
    return p


#: modules that add subcommands with ``register(subparsers)``; they import heavy things only when
#: their command runs, so ``mimlsort --help`` stays instant.
_EXTENSIONS = ("app.cli_train", "app.cli_run", "app.cli_report", "app.cli_cameras", "app.cli_hardware", "app.cli_gui")


def _terminate(signum, _frame) -> None:
    # SIGTERM ends a command as Ctrl-C does (its `finally` blocks close and clean up; the
    # default action killed it on the spot); run and replay stop their run gracefully instead
    raise KeyboardInterrupt("SIGTERM")


class _ExitWith:
    """A signal handler for a process whose command has finished: exit at once with its code."""

    def __init__(self, code: int):
        self.code = code

    def __call__(self, signum, _frame) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(self.code)


def _ignore_stop_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    """The command line. Called with ``argv`` (tests, notebooks), it gives the signal handlers back
    as it found them. Called without (the ``mimlsort`` process itself), a SIGINT/SIGTERM after the
    command has finished ends the process with the command's exit code: the handlers given back
    were Python's own, and a second Ctrl-C while the process wound down (half a second after a
    replay) ended it "killed by SIGINT" instead of the run's exit code 0."""
    previous = {}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)  # run/replay leave it ignored
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _terminate)
    code = 1
    try:
        code = _main(argv)
        return code
    finally:
        if in_main and argv is None:
            for sig in previous:
                signal.signal(sig, _ExitWith(code))
            # the interpreter's teardown puts Python handlers back to the default action (a signal
            # then kills the process) but leaves "ignored" as it is: the last atexit step ignores
            atexit.register(_ignore_stop_signals)
        else:
            for sig, handler in previous.items():
                if handler is not None:  # None: set outside Python, nothing of ours to undo
                    signal.signal(sig, handler)


def _interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM an error was raised while handling, if any. The handlers raise
    KeyboardInterrupt wherever Python is, and code that calls back into Python from C turns it
    into its own error: a SIGTERM in h5py's attribute write (its logging of a type conversion)
    came out as "TypeError: Operation not defined for data type class", a traceback and exit 1
    instead of "interrupted" and 143."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        try:
            return args.func(args)
        except Exception as e:
            interrupt = _interrupt_behind(e)
            if interrupt is None:
                raise
            raise interrupt from None
    except MimlsortError as e:
        print(f"mimlsort {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the system's refusal (permissions, a full disk …) names the file: no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"mimlsort {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"mimlsort {args.command}: interrupted" + (" (SIGTERM)" if e.args == ("SIGTERM",) else ""),
              file=sys.stderr)
        return 143 if e.args == ("SIGTERM",) else 130


if __name__ == "__main__":
    sys.exit(main())
