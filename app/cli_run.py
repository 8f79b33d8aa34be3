"""Subcommands that run the pipeline: ``run`` (the daemon), ``replay``, ``reanalyze``, ``demo``."""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import sys
from pathlib import Path


def _load(args: argparse.Namespace):
    from app.config import RunConfig, load_config

    return load_config(args.config) if getattr(args, "config", None) else RunConfig()


def replay_source(args: argparse.Namespace, *, realtime: bool, looped: bool = False) -> dict:
    """The ``camera`` changes that make a configuration replay ``args.recording`` once, with the
    recording's facts given on the command line winning over the configuration's. ``looped``: the
    configuration's ``camera.replay.loop``, said to be ignored."""
    if looped:
        # the loop makes a recording a live camera (the GUI, `mimlsort run`): `replay` ran until
        # Ctrl-C with it, writing every cell again at each pass
        print(f"camera.replay.loop = true in {args.config} is ignored: `mimlsort {args.command}` plays the "
              f"recording once (`mimlsort run` loops it)", file=sys.stderr)
    camera = {"backend": "replay", "replay.path": str(args.recording), "replay.realtime": realtime,
              "replay.loop": False}
    for option, value in (("--pixel-size", args.pixel_size), ("--fps", args.fps)):
        # 0 was taken for "not given", and the recording's own value (or none) used without a word
        if value is not None and not (math.isfinite(value) and value > 0):
            from mimlsort.errors import ConfigError

            raise ConfigError(option, f"must be a finite number > 0, got {value:g}")
    if args.pixel_size:  # the replay source's own setting: opening it needs one already
        camera["pixel_size_um"] = args.pixel_size
        camera["replay.pixel_size_um"] = args.pixel_size
    if args.fps:
        camera["replay.fps"] = args.fps
    if args.bit_depth:
        camera["replay.bit_depth"] = args.bit_depth
    if args.flow_direction:
        camera["flow_direction"] = args.flow_direction
    return camera


def cmd_run(args: argparse.Namespace) -> int:
    from app.config import located
    from app.daemon import run_daemon
    from app.session import with_changes
    from mimlsort.errors import ConfigError

    cfg = _load(args)
    changes = {}
    # the keys the command line sets: an error in one names the option, not the configuration file
    options = {}
    if args.seconds is not None:
        changes["seconds"] = args.seconds
        options["autostop.seconds"] = "--seconds"
    if args.events is not None:
        changes["events"] = args.events
        options["autostop.events"] = "--events"
    if args.out_dir is not None:
        options["output.folder"] = "--out-dir"
    if args.http_port is not None:
        options["daemon.http_port"] = "--http-port"
    try:
        if changes:
            cfg = with_changes(cfg, autostop=changes)
        if args.http_port is not None:
            cfg = with_changes(cfg, daemon={"http_port": args.http_port})
    except ConfigError as err:  # "autostop.seconds: … got -1" for a --seconds -1 typed a moment before
        raise located(err, None, options) from err
    # the report is written by the daemon, while its status server answers and its log file is open
    code, _ = run_daemon(cfg, folder=args.out_dir, ignore_signals_after=True,
                         report=_report if cfg.output.report else None, config_file=args.config, options=options)
    return code


def _report(path: Path) -> tuple[bool, str]:
    """The run's sample report: whether it was written, and the line that says so. The run's own
    outcome decides the exit code, whatever happens here: its file is closed. SIGINT and SIGTERM
    end the report alike (SIGTERM was ignored, and Ctrl-C turned a completed run into exit code
    130); a report that fails keeps nothing (:func:`app.report.write_report`)."""
    import threading

    from app.cli import _terminate
    from app.report import report_dir, write_report

    folder = report_dir(path)
    existed = folder.exists()
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in stops} if threading.current_thread() is threading.main_thread() else {}
    if previous:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _terminate)
    again = f"; the event file {path} is complete: `mimlsort report {path}` writes it"
    try:
        files = write_report(path)
        return True, f"report: {files.markdown}"
    except KeyboardInterrupt as e:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # a second one must not cut the cleanup short
        if not existed:  # write_report's own cleanup may have been cut short by a second signal
            shutil.rmtree(folder, ignore_errors=True)
        return False, f"the report was interrupted ({e.args[0] if e.args else 'SIGINT'}){again}"
    except Exception as err:
        return False, f"the report could not be written: {err}{again}"
    finally:
        for s, h in previous.items():
            if h is not None:  # the daemon's ignored signals: a Ctrl-C now changes nothing
                signal.signal(s, h)


class _Progress:
    """A tqdm bar fed from status snapshots (frames of a finite source)."""

    def __init__(self, total: int, stream):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total if total > 0 else None, unit="frame", unit_scale=True, file=stream,
                        dynamic_ncols=True, mininterval=0.5)
        self.n = 0

    def __call__(self, st) -> None:
        # frames read from the recording: tracked, taken for the background estimate, or missed
        done = st.frames_processed + st.startup_frames + st.frames_missed
        if self.bar.total:
            done = min(done, int(self.bar.total))
        if done > self.n:
            self.bar.update(done - self.n)
            self.n = done
        self.bar.set_postfix(cells=st.cells, missed=st.frames_missed, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _sample_name(v) -> str:
    """A recording's ``experiment:sample`` as an ``output.sample`` (a plain name of at most 200 bytes)."""
    if v is None:
        return ""
    text = (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).replace("/", "_").strip().lstrip(".")
    return text.encode()[:200].decode("utf-8", "ignore")


def cmd_replay(args: argparse.Namespace) -> int:
    from app.config import OutputConfig
    from app.daemon import run_daemon
    from app.session import with_changes

    cfg = _load(args)
    # --realtime / --max-speed decide; with neither, the configuration's replay.realtime does
    realtime = bool(args.realtime) or (not args.max_speed and cfg.camera.replay.realtime)
    cfg = with_changes(cfg, camera=replay_source(args, realtime=realtime, looped=cfg.camera.replay.loop),
                       output={"record_raw": False})
    from acquisition.replay import refuse_event_file

    refuse_event_file(args.recording)  # before it is opened, the output checked and the run built
    with cfg.camera.make_camera() as probe:
        total = probe.info.frame_count
        recorded_sample = probe.recorded_metadata.get("experiment:sample")
    if cfg.output.sample == OutputConfig().sample:  # not set in --config: the recording's sample name
        cfg = with_changes(cfg, output={"sample": _sample_name(recorded_sample) or _sample_name(args.recording.stem)
                                        or "replay"})
    if args.model:
        cfg = with_changes(cfg, model={"path": args.model})
    # a replay decides what would have been sorted; it fires nothing unless a trigger is asked for.
    # In real time a null trigger still says which pulses would have come late; as fast as the
    # frames can be read there is no time to be late in (the host clock would decide it, and a
    # cell sorted in one replay came "late" in the next), so there is no trigger at all
    if not args.trigger:
        cfg = with_changes(cfg, trigger={"backend": "null"})
    fire = bool(args.trigger or realtime)
    from mimlsort.outputs import check_output_file, probe_writable_folder

    out = check_output_file(Path(args.out), inputs=(args.recording,))
    probe_writable_folder(out.parent, option="--out")
    # the bar is drawn by the console's thread: a stderr nobody reads must not hold up the stop.
    # The sample report as `mimlsort run` and the GUI's replay write it (output.report): it was
    # never written here
    code, run = run_daemon(cfg, folder=out.parent, events_path=out, lossless=not realtime,
                           progress=lambda stream: _Progress(total, stream), ignore_signals_after=True, trigger=fire,
                           report=_report if cfg.output.report else None, config_file=args.config,
                           options={"output.folder": "--out", "camera": None,
                                    **({"model.path": "--model"} if args.model else {})})
    st = run.status()
    if out in run.discard_if_empty():
        # a replay refused at its start (no constriction found …) or stopped by Ctrl-C before its
        # first tracked frame left a file without a frame in it, which then refused the rerun with
        # the configuration fixed ("holds a measurement"); the recording itself is untouched
        print(f"no frame was tracked: {out} " + ("emptied again, as it was" if out.exists() else "removed")
              + " (it held no event)", file=sys.stderr)
        return code
    print(f"{st.frames_processed} frames -> {st.cells} cells -> {out}"
          + ("" if code == 0 else f" (exit code {code}: see the messages above before trusting the file)"),
          file=sys.stderr)
    return code


def cmd_reanalyze(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from app.console import Console
    from app.reanalyze import MEASURING, WRITING, reanalyze

    bars: dict[str, object] = {}
    units = {MEASURING: "event", WRITING: "cell"}
    labels = {MEASURING: "measure", WRITING: "classify+write" if args.model not in (None, "none") else "write"}

    def show(stage: str, done: int, total: int) -> None:
        # one bar a stage: the measuring bar reached 100% and then stood there while the cells
        # were classified and written. Made once the events are read: a file or model refused is
        # said without an empty bar
        bar = bars.get(stage)
        if bar is None:
            for earlier in bars.values():
                earlier.close()
            bar = bars[stage] = tqdm(total=total, desc=labels[stage], unit=units[stage], unit_scale=True,
                                     file=console.stream(sys.stderr), dynamic_ncols=True, mininterval=0.5)
        bar.update(done - bar.n)

    # ~1 ms an event: a file of 100,000 took minutes without a word. The bar is drawn by the
    # console's thread, as replay's: a stderr nobody reads must not hold up the work or its Ctrl-C
    with Console() as console:
        try:
            res = reanalyze(args.input, args.out, model=args.model, threshold=args.threshold,
                            closing_px=args.closing, bit_depth=args.bit_depth, progress=show)
        finally:
            for bar in bars.values():
                bar.close()
    print(res.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from app.config import located
    from app.demo import run_demo
    from mimlsort.errors import ConfigError

    try:
        return run_demo(seconds=args.seconds, out=Path(args.out), seed=args.seed, realtime=not args.max_speed)
    except ConfigError as err:  # the demo's configuration is its options
        raise located(err, None, {"camera.synthetic.duration_s": "--seconds", "camera.synthetic.seed": "--seed",
                                  "output.folder": "--out", "trigger.log.path": "--out"}) from err


def register(sub: argparse._SubParsersAction) -> None:
    from app.cli import BIT_DEPTH_HELP, FLOW_HELP

    sp = sub.add_parser("run", help="the headless capture daemon: run a configuration until it ends or is stopped",
                        description="Exit codes: 0 completed or stopped by SIGINT/SIGTERM, 1 errored, "
                                    "2 bad configuration or command line, 3 the trigger failed during the run "
                                    "(cells went unsorted) or its device reported errors or refused pulses for "
                                    "more than a tenth of the pulses it was handed.")
    sp.add_argument("--config", type=Path, metavar="RUN.toml", help="run configuration (default: built-in defaults)")
    sp.add_argument("--out-dir", type=Path, help="output folder (default: output.folder of the configuration)")
    sp.add_argument("--seconds", type=float, help="auto-stop after this many seconds of measurement time (the frames' "
                    "own clock: the camera's, a replay's recorded times)")
    sp.add_argument("--events", type=int, help="auto-stop after this many cells")
    sp.add_argument("--http-port", type=int, help="serve status JSON on 127.0.0.1:PORT/status")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("replay", help="run a recorded video through the same pipeline into an event file")
    sp.add_argument("recording", type=Path, help=".rtdc, TIFF, AVI or an image folder")
    sp.add_argument("--out", required=True, type=Path, help="event file (.rtdc)")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--realtime", action="store_true",
                   help="play at the recorded frame rate (frames may be missed; default: the configuration's "
                        "camera.replay.realtime, false unless set)")
    g.add_argument("--max-speed", action="store_true", help="as fast as possible, every frame tracked (the default unless the "
                   "configuration sets camera.replay.realtime)")
    sp.add_argument("--model", help="ONNX model ('demo' = bundled, 'none' = track only)")
    sp.add_argument("--config", type=Path, metavar="RUN.toml", help="tracking/sorting settings")
    sp.add_argument("--pixel-size", type=float, help="µm per pixel, if the recording does not say (one it says is overridden, with a warning)")
    sp.add_argument("--fps", type=float, help="frame rate, if the recording does not say (a video container's rate is a playback rate: this wins over it)")
    sp.add_argument("--bit-depth", type=int, help=BIT_DEPTH_HELP)
    sp.add_argument("--flow-direction", help=FLOW_HELP)
    sp.add_argument("--trigger", action="store_true", help="fire the configured trigger (default: decide only)")
    sp.set_defaults(func=cmd_replay)
    sp.epilog = ("The sample report is written beside the event file (<out>_report/) when cells were found, "
                 "as `mimlsort run` writes it; output.report = false in --config leaves it out.")

    sp = sub.add_parser("reanalyze", help="segment and classify the event images of an existing RT-DC file")
    sp.add_argument("input", type=Path, help="RT-DC file with event images (ShapeIn, CytoShot, dcnum)")
    sp.add_argument("--out", required=True, type=Path, help="new event file (.rtdc)")
    sp.add_argument("--model", help="ONNX model whose features a single image provides")
    sp.add_argument("--threshold", type=float, help="segmentation threshold in grey levels, RT-DC's sign convention "
                    "(negative: dark pixels only); default: the one the input was segmented with, else -6")
    sp.add_argument("--closing", type=int, metavar="PX", help="closing kernel for the mask (px); default: the "
                    "input's (ShapeIn's bin kernel, dcnum's clo), else 5")
    sp.add_argument("--bit-depth", type=int, help="bits the grey levels of uint16 event images use, if the file does "
                    "not say (user:bit depth; else 16); thresholds are 8-bit grey levels scaled by it")
    sp.set_defaults(func=cmd_reanalyze)

    sp = sub.add_parser("demo", help="the quick start: synthetic camera through the full pipeline with the bundled "
                                     "model and the log trigger; event file, report and a check against the truth")
    sp.add_argument("--seconds", type=float, default=3.0, help="simulated duration")
    sp.add_argument("--out", default="out/demo", help="output folder")
    sp.add_argument("--seed", type=int, help="simulation seed")
    sp.add_argument("--max-speed", action="store_true", help="simulate as fast as possible instead of in real time")
    sp.set_defaults(func=cmd_demo)
