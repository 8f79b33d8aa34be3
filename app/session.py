"""Build a run from a configuration: camera, tracker settings, model, policy, trigger, files.

The GUI, the daemon and replay all come through :func:`build_run`, so they run the same pipeline.
A :class:`Run` owns the resources it opened (event file, raw recording, trigger) and closes them
when the pipeline finishes, whatever the reason, so files are always left readable.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from app.config import RunConfig, bundled_model_path, config_to_toml
from app.pipeline import FinishReason, Pipeline, Status
from mimlsort.errors import ConfigError, MimlsortError, StateError
from mimlsort.outputs import empty_file, make_output_folder

log = logging.getLogger(__name__)


def resolve_model_path(path: str) -> Path | None:
    """``"demo"`` → the bundled model, ``"none"``/``""`` → no model, else the file (must exist)."""
    if path in ("", "none"):
        return None
    p = bundled_model_path() if path == "demo" else Path(path).expanduser()
    if p.exists():
        from mimlsort.inputs import check_input

        try:
            check_input(p, what="a model file")  # a named pipe, a folder, one this user may not read
        except MimlsortError as err:
            raise ConfigError("model.path", str(err)) from None
    if not p.is_file():
        hint = " (run `make model` to rebuild the bundled model)" if path == "demo" else ""
        from mimlsort.inputs import looked_for

        raise ConfigError("model.path", f"no model file at {looked_for(p)}{hint}")
    return p


def open_classifier(cfg: RunConfig):
    """The configured classifier, or None when the configuration asks for tracking only."""
    path = resolve_model_path(cfg.model.path)
    if path is None:
        return None
    from inference.classifier import Classifier

    return Classifier(path, provider=cfg.model.provider, intra_op_threads=cfg.model.intra_op_threads)


#: the setting a trigger backend cannot run without, checked by :func:`preflight`
TRIGGER_ADDRESS = {"serial": "port", "visa": "resource"}


def preflight(cfg: RunConfig) -> list[str]:
    """What a run of ``cfg`` would refuse at its start, found without opening a camera or a
    trigger (``mimlsort config --check``): the model file loads, a replayed recording opens, the
    trigger has its address, the output folder can be made. Returns what was checked; raises the
    run's own error for the first problem."""
    import os

    checked = []
    path = resolve_model_path(cfg.model.path)
    if path is not None:
        from inference.classifier import Classifier

        from app.sorting import SortPolicy

        with Classifier(path, provider="cpu", warmup=False) as clf:
            clf.warmup(runs=1)  # it runs, and gives probabilities
            SortPolicy(cfg.sorting, clf.classes)  # the target classes are among the model's
            # the camera's pixel size may be known only once it is open: the field is checked here
            check_model_scale(clf, cfg.tracking.crop_size_um, cfg.camera.pixel_size_um or clf.spec.image.pixel_size_um or 1.0)
            targets = ", ".join(cfg.sorting.target_classes) if cfg.sorting.enabled else "none: sorting off"
            checked.append(f"model {path.name} ({', '.join(clf.classes)}; targets {targets})")
    if cfg.camera.backend == "replay":
        # opened as the run opens it: also refuses a recording without a frame rate or pixel
        # size, a start_frame past its end and a second turn of turned frames
        from acquisition.replay import refuse_event_file

        refuse_event_file(cfg.camera.replay.path)  # as build_run does
        with cfg.camera.make_camera() as cam:
            info = cam.info
        checked.append(f"recording {cfg.camera.replay.path}")
        _check_geometry_fits(cfg, info.width, info.height, cfg.camera.pixel_size_um or info.pixel_size_um,
                             f"the recording's ({cfg.camera.replay.path})")
    elif cfg.camera.backend == "synthetic":
        s = cfg.camera.synthetic
        _check_geometry_fits(cfg, s.width, s.height, cfg.camera.pixel_size_um or s.pixel_size_um,
                             "the synthetic camera's")
    else:
        checked.append(_check_vendor_camera(cfg))
    backend = cfg.trigger.backend
    key = TRIGGER_ADDRESS.get(backend)
    address = getattr(cfg.trigger.backend_settings(), key) if key else None
    if key and not address:
        raise ConfigError(f"trigger.{backend}.{key}", "not given: the trigger cannot be opened without it")
    if backend == "serial" and os.name == "posix" and address.startswith("/") and not os.path.exists(address):
        raise ConfigError("trigger.serial.port", f"{address}: no such device (is it plugged in? `mimlsort trigger list` "
                          "shows the serial ports)")
    if backend == "camera-line":
        from acquisition.camera import camera_class

        if not hasattr(camera_class(cfg.camera.backend), "set_feature"):
            raise ConfigError("trigger.backend", f"camera-line fires the camera's own output line: the "
                              f"{cfg.camera.backend} camera has none (basler, genicam)")
    if backend not in ("null", "log", "camera-line"):
        from hardware.trigger import make_trigger

        trig = make_trigger(backend, cfg.trigger.backend_settings(), cfg.trigger.timing)  # its own checks; nothing opens
        # its SDK and driver (a VISA library file, NI-DAQmx and the device it names): missing, they
        # passed the check, and the run exited 2 at its start
        trig.check_installed(trig.settings)
    checked.append(f"trigger {backend}" + (f" at {address}" if address else "") + " (not opened)")
    folder = Path(cfg.output.folder).expanduser().absolute()
    _check_writable(folder, "output.folder")
    checked.append(f"output folder {folder}")
    if cfg.daemon.log_file:
        _check_writable(cfg.daemon.log_path(folder).parent, "daemon.log_file")
    log_path = cfg.trigger.backend_settings().path if backend == "log" else None
    if log_path:
        # the log trigger makes its folder when the run opens it: one that cannot be made passed
        # `config --check`, and the run failed at its start
        _check_writable(Path(log_path).expanduser().absolute().parent, "trigger.log.path")
    return checked


def _check_vendor_camera(cfg: RunConfig) -> str:
    """The vendor SDK the camera backend needs and, for genicam, its producer files, without
    opening a device: `config --check` said "valid" for a genicam camera whose .cti did not exist
    and for a ximea camera on a machine without xiAPI, and the run refused both at its start."""
    backend = cfg.camera.backend
    settings = cfg.camera.backend_settings()
    if backend == "basler":
        from acquisition.basler import EMULATOR, _pylon

        _pylon(settings.transport == EMULATOR)
        return "camera basler: pypylon (not opened)"
    if backend == "genicam":
        from acquisition.genicam import _genapi, producers, viky_cti

        _genapi()
        files = producers(settings.cti)
        test = " (the genicam wheel's simulated test camera)" if files == [viky_cti()] else ""
        return f"camera genicam: producer {', '.join(files)}{test} (not opened)"
    if backend == "ximea":
        from acquisition.ximea import _xiapi

        _xiapi()
        return "camera ximea: xiAPI (not opened)"
    return f"camera {backend} (not opened)"


def _check_geometry_fits(cfg: RunConfig, width: int, height: int, pixel_size_um: float, camera: str) -> None:
    """tracking.geometry within the image whose size is known before a run (a vendor camera's
    only once it is open): a constriction placed outside it passed `config --check`, and the run
    then failed on its first frames."""
    if pixel_size_um:
        cfg.tracking.geometry.check_fits(width, height, pixel_size_um, camera)


def _check_writable(folder: Path, key: str) -> None:
    """``folder`` exists as a writable folder or can be made (its nearest existing ancestor is one)."""
    import os

    import tempfile

    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{folder}: cannot be made or written ({existing} is not a writable folder)")
    # access() lets root write anywhere, but sysfs, procfs and the like take no file even from root:
    # `config --check` said "valid" and the run was refused at its start. A file made and removed
    # at once leaves the folder as it was
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(key, f"{folder}: cannot be made or written ({existing} takes no files: "
                               f"{err.strerror or err})") from err


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_stem(cfg: RunConfig, folder: Path | None = None) -> str:
    """``<sample>_<YYYYmmdd-HHMMSS>``: one name for the event file, raw recording and report;
    ``_2``, ``_3`` … appended while ``folder`` already holds a file of that name (an operator who
    stops and starts again within a second chose no name, and must not be refused one)."""
    stem = f"{cfg.output.sample}_{time.strftime('%Y%m%d-%H%M%S')}"
    if folder is None:
        return stem
    n, unique = 1, stem
    while any((folder / f"{unique}{end}").exists() for end in (".rtdc", "_raw.rtdc", "_report")):
        n += 1
        unique = f"{stem}_{n}"
    return unique


#: an empty run file older than this was reserved by a run that never wrote it: its process ended
#: (killed, power lost) while its camera or trigger opened. A live run's writer fills its file
#: within seconds of taking the name.
STALE_RESERVATION_S = 600.0
_RUN_FILE = re.compile(r".+_\d{8}-\d{6}(_\d+)?(_raw)?\.rtdc")


def remove_stale_reservations(folder: Path) -> list[Path]:
    """Remove the empty ``<sample>_<date>-<time>[_raw].rtdc`` files a run reserved and never wrote
    (dclab and DCscope cannot open them, and they count as runs of the day); returns them. Empty
    files hold nothing, so nothing recorded is lost."""
    now, gone = time.time(), []
    for p in folder.glob("*.rtdc"):
        try:
            st = p.stat()
            if st.st_size == 0 and now - st.st_mtime > STALE_RESERVATION_S and _RUN_FILE.fullmatch(p.name):
                p.unlink()
                gone.append(p)
        except OSError:  # gone meanwhile, or not ours to remove: it stays
            continue
    if gone:
        log.info("%s: removed %d empty run file(s) left by runs that ended while they started: %s", folder, len(gone),
                 ", ".join(p.name for p in gone))
    return gone


def reserve_run_stem(cfg: RunConfig, folder: Path, suffixes: tuple[str, ...]) -> tuple[str, list[Path]]:
    """:func:`run_stem`, with the files ``<stem><suffix>`` created empty (exclusively) so that no
    other run takes the name; returns the stem and those files. The run's writers replace them."""
    import os

    remove_stale_reservations(folder)
    for _ in range(100):
        stem = run_stem(cfg, folder)
        taken: list[Path] = []
        try:
            for suffix in suffixes:
                path = folder / f"{stem}{suffix}"
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                taken.append(path)
        except FileExistsError:  # taken since run_stem looked: the next one
            remove_files(taken)
            continue
        except OSError as err:
            remove_files(taken)
            raise ConfigError("output.folder", f"{path}: cannot be created: {err.strerror or err}") from err
        return stem, taken
    raise StateError(f"{folder}: no free run name for {cfg.output.sample} after 100 tries")


def run_index_of_day(folder: Path, own: Path | None = None) -> int:
    """The next measurement number of the day in ``folder``: 1 + the event files named with
    today's date that it holds, but ``own`` (the run's own, already reserved) — dclab's
    ``experiment:run index``, "M3" in DCscope's list; every run said 1."""
    day = time.strftime("_%Y%m%d-")
    return 1 + sum(1 for p in folder.glob(f"*{day}*.rtdc") if not p.name.endswith("_raw.rtdc") and p != own)


class StopWatchdog:
    """After a run stops, abandons an event writer child that has made no progress for
    ``timeout_s`` (``output.stop_timeout_s``), so a writer stuck in the kernel (a dead network disk)
    cannot keep the daemon from ending or the GUI from going idle and closing. Its own thread: the
    thread that would notice is the one waiting for the writer (closing the file)."""

    def __init__(self, run: "Run", timeout_s: float, poll_s: float = 0.2):
        self.run = run
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mimlsort-stopwatch", daemon=True)

    def __enter__(self) -> "StopWatchdog":
        if self.timeout_s:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _watch(self) -> None:
        key = None
        since = time.monotonic()
        while not self._done.wait(self.poll_s):
            run = self.run
            if run.pipeline.finish_reason is None:
                since = time.monotonic()
                continue
            if run.closed_all:
                return
            progress = run.pipeline.storage_progress()
            now = time.monotonic()
            if progress != key:
                key, since = progress, now
                continue
            if now - since < self.timeout_s:
                continue
            why = (f"no progress for {self.timeout_s:g} s after the stop (output.stop_timeout_s), "
                   f"{progress[0]} batches of records not written")
            if run.abandon_writer(why):
                log.error("event writer abandoned: %s", why)
            else:
                log.error("the event writer makes no progress (%s) and runs in this process (output.writer = "
                          "\"thread\"): it cannot be abandoned", why)
            return


@dataclass
class Run:
    """A pipeline with the resources it owns. From its start until its files are closed, a
    :class:`StopWatchdog` makes sure a stuck event writer child cannot hold up the end of the run."""

    config: RunConfig
    pipeline: Pipeline
    folder: Path
    events_path: Path | None
    raw_path: Path | None
    classifier: Any = None
    writer: Any = None
    recorder: Any = None
    trigger: Any = None
    closed: bool = False
    closed_all: bool = False  # close() has returned (``closed`` is set as it begins)
    close_errors: list[str] = field(default_factory=list)
    abandoned: str = ""  # why the event writer was given up (``output.stop_timeout_s``), once it was
    created: tuple[Path, ...] = ()  # the files this run made (not a user's empty file it may replace)
    emptied: tuple[Path, ...] = ()  # a user's empty files it writes into: emptied again, not removed
    _watchdog: StopWatchdog | None = field(default=None, repr=False)
    # set once close() has returned: a second caller waits for it (it returned at once, and a
    # window closed during a Stop's close reported on files still open)
    _close_done: threading.Event = field(default_factory=threading.Event, repr=False)
    _closing_thread: int = field(default=0, repr=False)

    def start(self) -> None:
        try:
            self.pipeline.start()
        except BaseException:
            self.close()
            self.discard_if_empty()  # the error is raised; a file with no frame would only be clutter
            raise
        self._watchdog = StopWatchdog(self, self.config.output.stop_timeout_s).__enter__()

    def stop(self) -> None:
        self.pipeline.stop()

    def wait(self, timeout: float | None = None) -> bool:
        return self.pipeline.wait(timeout)

    def status(self) -> Status:
        return self.pipeline.status()

    def abandon_writer(self, why: str) -> bool:
        """Give up on an event writer that makes no progress (see ``output.stop_timeout_s``): True
        if it could be (a writer in a child process; one in this process cannot be stopped)."""
        abort = getattr(self.writer, "abort", None)
        if abort is None:
            return False
        self.abandoned = why
        abort(why)
        return True

    def close(self) -> None:
        """Close files and devices (idempotent); called when the pipeline finishes. A call while
        another thread closes the run returns once that close has (a call from within the close,
        at once)."""
        if self.closed:
            if self._closing_thread != threading.get_ident():
                self._close_done.wait()
            return
        self.closed = True
        self._closing_thread = threading.get_ident()
        try:
            self._close()
        finally:
            self._close_done.set()

    def _close(self) -> None:
        trig, writer = self.trigger, self.writer
        if trig is not None and hasattr(trig, "settle"):
            # the pulses of the last cells decided go out, and their acks reach the file, before
            # the device is disarmed and the file closed
            try:
                acks = trig.settle()
                if acks and writer is not None and hasattr(writer, "add_acks"):
                    writer.add_acks(acks)
                reports = trig.drain_reports() if hasattr(trig, "drain_reports") else []
                if reports and writer is not None and hasattr(writer, "add_device_reports"):
                    writer.add_device_reports(reports)
                # a test pulse fired since the storage thread's last look is in the file's log too
                self.pipeline.log_test_pulses(writer)
                errors, available = getattr(trig, "device_errors", 0), not getattr(trig, "faulted", False)
                if writer is not None and hasattr(writer, "log") and (errors or not available):
                    writer.log(f"trigger {'available' if available else 'UNAVAILABLE'} at the end of the run; during it "
                               f"{errors} device error(s), {getattr(trig, 'device_refused', 0)} pulse(s) refused; last error: "
                               f"{getattr(trig, 'error', '')} ({getattr(trig, 'device', '?')})")
            except Exception as e:
                log.error("waiting for the trigger's last pulses failed: %s", e)
        # after the trigger settled: its late acks and refusals are in the counters
        st = self.pipeline.status() if self.pipeline.ring is not None else None
        for name, res in (("event file", self.writer), ("raw recording", self.recorder), ("trigger", self.trigger)):
            if res is None:
                continue
            try:
                try:
                    if name == "event file" and st is not None:
                        if hasattr(res, "note_counters"):
                            res.note_counters(_counters(st))
                        if st.finish_reason is FinishReason.ERRORED and hasattr(res, "note_error"):
                            res.note_error(st.message or "errored")
                        if hasattr(res, "log"):
                            res.log(f"run finished: {st.finish_reason.value if st.finish_reason else '?'} "
                                    f"{st.message}".rstrip())
                            res.log(st.line())
                    if name == "raw recording" and st is not None and hasattr(res, "note_missed"):
                        res.note_missed(st.missed.get("recorder", 0) + st.overrun.get("recorder", 0))
                finally:  # a writer that failed still closes: its child is reaped, its file ends readable
                    res.close()
            except Exception as e:  # every resource gets its chance to close
                log.error("closing the %s failed: %s", name, e)
                self.close_errors.append(f"{name}: {e}")
        self.closed_all = True
        if self._watchdog is not None:
            self._watchdog.__exit__(None, None, None)

    def discard_if_empty(self) -> list[Path]:
        """Remove, once closed, the files of a run that tracked no frame and found no cell (a start
        stopped or refused before the camera ran): they hold nothing measured, and they would be
        the folder's clutter and take a run index of the day. A user's empty file given for the
        output is emptied again, as it was. Returns the paths removed or emptied."""
        if not self.closed_all:
            raise StateError("discard_if_empty: close the run first")
        if self.pipeline.ring is not None:
            st = self.pipeline.status()
            if st.frames_processed or st.cells or st.frames_recorded:
                return []
        return remove_files(self.created) + empty_files(self.emptied)

    def __enter__(self) -> "Run":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.pipeline.stop(FinishReason.ERRORED, f"{exc_type.__name__}: {exc}")
        else:
            self.pipeline.stop()
        self.pipeline.wait()
        self.close()


def _each_file(paths, act: Callable[[Path], object], what: str) -> list[Path]:
    """``act`` on each of ``paths`` that exists (a failure is logged, not raised); returns those done."""
    done = []
    for p in paths:
        try:
            act(Path(p))
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("could not %s %s: %s", what, p, e)
            continue
        done.append(p)
    return done


def remove_files(paths) -> list[Path]:
    """Remove ``paths`` that exist (a failed removal is logged, not raised); returns those removed."""
    return _each_file(paths, Path.unlink, "remove")


def empty_files(paths) -> list[Path]:
    """Empty ``paths`` again (a user's empty file a run wrote its header into: it was left holding
    one, and the rerun was refused as "a measurement"); returns those emptied."""
    return _each_file(paths, lambda p: os.truncate(p, 0), "empty")


def _counters(st: Status) -> dict[str, int]:
    out = {"frames_in": st.frames_in, "frames_processed": st.frames_processed, "camera_dropped": st.camera_dropped,
           "camera_reconnects": st.camera_reconnects,
           "failed_buffers": st.failed_buffers, "cells": st.cells, "fired": st.fired, "late": st.late,
           "trigger_failed": st.trigger_failed, "frames_recorded": st.frames_recorded,
           "startup_frames": st.startup_frames, "images_shed": st.images_shed, "tracks_lost": st.tracks_lost,
           "tracks_overflow": st.tracks_overflow, "snapshots_lost": st.snapshots_lost,
           "paces_unlearned": st.paces_unlearned, "clock_resets": st.clock_resets,
           "device_refused": st.device_refused, "device_late": st.device_late, "unacked": st.unacked,
           "late_acks": st.late_acks, "test_pulses": st.test_pulses, "test_acked": st.test_acked,
           "test_unacked": st.test_unacked, "test_refused": st.test_refused,
           "device_errors": st.device_errors, "swept": st.swept, "run_s": round(st.elapsed_s, 3)}
    if math.isfinite(st.measured_s):  # the frames' own time: a replay's recorded duration at any speed
        out["measured_s"] = round(st.measured_s, 6)
    for k, v in st.missed.items():
        out[f"missed_{k}"] = v
    for k, v in st.overrun.items():
        out[f"overrun_{k}"] = v
    return out


#: what dclab requires and mimlsort writes when nobody gave the experiment's value
_SETUP_PLACEHOLDERS = {"channel_width_um": 20.0, "flow_rate_ul_s": 0.04, "medium": "other",
                       "flash_duration_us": 2.0}


def setup_meta(setup, recorded: dict[str, Any] | None = None, synthetic=None,
               camera_exposure_us: float = 0.0) -> dict[str, Any]:
    """``RunMeta`` keyword arguments for the experiment: what ``[setup]`` gives, else what a
    replayed recording's metadata say (``recorded``: RunMeta names, from ``setup_from_attrs``),
    else the synthetic camera's geometry or the camera's exposure (the flash duration of a
    continuously lit sample), else mimlsort's placeholders, which are named in ``placeholders``
    so the file says which values nobody measured."""
    out: dict[str, Any] = {}
    if camera_exposure_us > 0 and not setup.flash_device:  # a pulsed flash's duration is not the exposure
        out["flash_duration_us"] = float(camera_exposure_us)
    if synthetic is not None:
        out.update(channel_width_um=synthetic.channel_width_um, constriction_width_um=synthetic.constriction_gap_um,
                   constriction_length_um=synthetic.constriction_length_um, flash_device="simulated")
        if synthetic.exposure_us > 0:
            out["flash_duration_us"] = synthetic.exposure_us
    out.update(recorded or {})
    sample, sheath = setup.flow_rate_sample_ul_s, setup.flow_rate_sheath_ul_s
    if sample or sheath:  # the configured flow replaces the recorded one whole
        for k in ("flow_rate_sample_ul_s", "flow_rate_sheath_ul_s"):
            out.pop(k, None)
        if sample and sheath:
            out.update(flow_rate_sample_ul_s=sample, flow_rate_sheath_ul_s=sheath)
        out["flow_rate_ul_s"] = setup.flow_rate_ul_s or sample + sheath
    elif setup.flow_rate_ul_s:
        if not math.isclose(out.get("flow_rate_ul_s", 0.0), setup.flow_rate_ul_s, rel_tol=1e-6):
            out.pop("flow_rate_sample_ul_s", None)
            out.pop("flow_rate_sheath_ul_s", None)
        out["flow_rate_ul_s"] = setup.flow_rate_ul_s
    for name in ("channel_width_um", "medium", "chip_identifier", "flash_device", "flash_duration_us", "operator"):
        v = getattr(setup, name)
        if v:
            out[name] = v
    if setup.temperature_c:
        out["temperature_c"] = setup.temperature_c
    missing = tuple(k for k in _SETUP_PLACEHOLDERS if k not in out)
    for k in missing:
        out[k] = _SETUP_PLACEHOLDERS[k]
    names = {"channel_width_um": "channel width", "flow_rate_ul_s": "flow rate", "medium": "medium",
             "flash_duration_us": "flash duration"}
    out["placeholders"] = tuple(names[k] for k in missing)
    return out


def check_model_scale(classifier, crop_size_um: float, pixel_size_um: float) -> None:
    """The model must see at least the field it was trained on (a smaller tracker crop is padded
    with background where the model saw a cell's surroundings: 13 of 317 decisions flipped at 30
    against 40 µm); a pixel size far from its training's is resampled, but optics and blur differ."""
    img = classifier.spec.image
    if img.crop_size_um and crop_size_um < img.crop_size_um - 1e-6:
        raise ConfigError("tracking.crop_size_um",
                          f"is {crop_size_um:g} µm, smaller than the {img.crop_size_um:g} µm field the model "
                          f"{classifier.path} was trained on: set it to at least {img.crop_size_um:g}")
    if img.pixel_size_um and not 2 / 3 <= pixel_size_um / img.pixel_size_um <= 1.5:
        log.warning("the camera's %.3g µm/px is far from the %.3g µm/px the model %s was trained at: crops are "
                    "resampled to its scale, but blur and optics differ; train on this setup's cells",
                    pixel_size_um, img.pixel_size_um, classifier.path)


def source_pacing(cfg: RunConfig) -> tuple[bool, bool]:
    """(paced, finite) of the configured camera. A vendor camera delivers in real time, endlessly;
    a recording or simulation is paced only when asked to be (``realtime``), and ends unless it
    loops or has no duration."""
    cam = cfg.camera
    if cam.backend == "replay":
        s = cam.backend_settings()
        return bool(s.realtime), not s.loop
    if cam.backend == "synthetic":
        s = cam.backend_settings()
        return bool(s.realtime), s.duration_s > 0
    return True, False


def _recorded_measurement(recorded: dict[str, Any] | None) -> tuple[Any, int]:
    """The date and time (naive local) and run index a replayed recording says, else (None, 0)."""
    from datetime import datetime

    attrs = recorded or {}
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in
            (attrs.get("experiment:date", ""), attrs.get("experiment:time", ""))]
    try:
        started = datetime.strptime(" ".join(text), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None, 0
    try:
        index = max(0, int(attrs.get("experiment:run index", 0)))
    except (TypeError, ValueError):
        index = 0
    return started, index


def build_run(cfg: RunConfig, *, folder: str | Path | None = None, events_path: str | Path | None = None,
              camera=None, trigger: bool | None = None, lossless: bool | None = None,
              kernels: str = "numba") -> Run:
    """Everything a run needs, opened and ready to start.

    ``lossless`` makes the camera wait for the tracker (finite sources only: replay, a synthetic
    run with a duration), so a replay gives the same events every time. ``trigger`` False: no
    trigger (cells the policy wants are recorded as fired, nothing is sent). Unset, both follow
    the configured source (:func:`source_pacing`): a recording or simulation read as fast as it
    goes is lossless when it ends, and fires nothing — its frames reach the host at no time a
    cell could be sorted at (the GUI and ``mimlsort run`` lost frames and fired "late" pulses).
    """
    from app.sorting import SortPolicy

    paced, finite = source_pacing(cfg) if camera is None else (True, False)
    if lossless is None:
        lossless = not paced and finite
    if trigger is None:
        trigger = paced
        if not paced and cfg.model.path != "none":
            log.info("the %s source is read as fast as it goes: cells are decided, the %s trigger is not fired",
                     cfg.camera.backend, cfg.trigger.backend)
        elif cfg.camera.backend == "replay" and cfg.trigger.backend not in ("null", "log"):
            # a recording's cells are not in the channel: a sorter must not be driven by them unasked
            log.warning("a replay sorts no cells: the %s trigger is not fired (the null trigger counts the pulses "
                        "that would have come late; `mimlsort replay --trigger` fires it)", cfg.trigger.backend)
            cfg = with_changes(cfg, trigger={"backend": "null"})

    folder = Path(folder or cfg.output.folder).expanduser()
    make_output_folder(folder, option="output.folder")
    classifier = open_classifier(cfg)
    policy = SortPolicy(cfg.sorting, classifier.classes) if classifier is not None else None
    created: list[Path] = []
    emptied: list[Path] = []
    # the name is taken by creating its file: two runs started in the same second on one folder
    # both found the same name free (the second then failed, or both could have written one file)
    stem, reserved = reserve_run_stem(cfg, folder, (".rtdc",) * (events_path is None and cfg.output.write_events)
                                      + ("_raw.rtdc",) * cfg.output.record_raw)
    created += reserved
    try:
        cam = camera or cfg.camera.make_camera()
    except BaseException:
        remove_files(created)
        raise
    opened: list[Any] = []
    try:
        if getattr(cam, "backend", "") == "replay":
            from acquisition.replay import refuse_event_file

            refuse_event_file(cam.settings.path)  # one image per event is no recording to track (`mimlsort reanalyze`)
        if cam.state.value == "closed":
            cam.open()
        info = cam.info
        from app.offline import pixel_size_in_use

        px = pixel_size_in_use(cam, cfg.camera.pixel_size_um)
        if not px:
            raise ConfigError("camera.pixel_size_um", f"the {info.backend} camera does not say its pixel size: set it")
        if classifier is not None:
            check_model_scale(classifier, cfg.tracking.crop_size_um, px)
        trig = None
        # one identity for the event file and the pulse log (appended run after run)
        run_identifier = str(uuid.uuid4())
        if trigger and classifier is not None:
            from hardware.dryrun import RunLabel
            from hardware.trigger import make_trigger

            label = RunLabel(Path(events_path).stem if events_path is not None else stem, run_identifier)
            trig = make_trigger(cfg.trigger.backend, cfg.trigger.backend_settings(), cfg.trigger.timing, camera=cam,
                                run=label)
            trig.open()
            opened.append(trig)
        writer = None
        ev_path = None
        from app.storage import RunMeta, setup_from_attrs

        recorded = getattr(cam, "recorded_metadata", None)
        setup = setup_meta(cfg.setup, setup_from_attrs(recorded) if recorded else None,
                           cfg.camera.synthetic if cfg.camera.backend == "synthetic" else None,
                           camera_exposure_us=info.exposure_us)
        if cam.turns:
            setup["flow_direction"] = cam.flow_direction
        # a replayed RT-DC recording is the measurement it recorded: its date, time and run index
        # (they were the replay's, so DCscope showed yesterday's measurement as today's "M1")
        measured_at, measured_index = _recorded_measurement(recorded)
        if cfg.output.write_events or events_path is not None:
            from app.storage import EventWriter

            ev_path = Path(events_path) if events_path is not None else folder / f"{stem}.rtdc"
            if ev_path not in created and not ev_path.exists():
                created.append(ev_path)
            spec_json = classifier.spec.to_json() if classifier is not None else ""
            model_path = resolve_model_path(cfg.model.path)
            meta = RunMeta(
                pixel_size_um=px, fps=info.fps or 1.0, roi=(info.width, info.height), sample=cfg.output.sample,
                roi_position=info.offset, camera_clock=info.camera_clock,
                run_index=measured_index or run_index_of_day(ev_path.parent, own=ev_path), started=measured_at,
                class_names=tuple(classifier.classes) if classifier is not None else (),
                model_spec_json=spec_json, model_sha256=file_sha256(model_path) if model_path else "",
                model_name=model_path.name if model_path else "", config_toml=config_to_toml(cfg),
                camera=f"{info.backend} {info.model} {info.serial}".strip(), bit_depth=info.bit_depth,
                target_event_count=cfg.autostop.events, target_duration_s=cfg.autostop.seconds,
                # from the configuration, not from whether the first cells kept their ROI frame: a
                # run that fell behind at its start wrote crops for the whole run
                event_images="roi" if cfg.tracking.snapshots else "crop",
                segmentation_threshold=cfg.tracking.threshold, run_identifier=run_identifier, **setup,
            )
            comp = cfg.output.compression
            options = {"compression": None if comp == "none" else "zstd", "compress_images": comp == "all"}
            # an empty file given for it (`mktemp --suffix .rtdc`) holds nothing to lose: the output
            # check let it through, and the writer then refused it as "a measurement"
            overwrite = ev_path in reserved or (events_path is not None and empty_file(ev_path))
            if overwrite and ev_path not in reserved:
                emptied.append(ev_path)
            if cfg.output.writer == "process":
                from app.writer_process import EventWriterProcess

                writer = EventWriterProcess(ev_path, meta=meta, overwrite=overwrite, **options)
            else:
                writer = EventWriter(ev_path, meta=meta, overwrite=overwrite, **options)
            opened.append(writer)
            for line in getattr(cam, "open_notes", ()):
                writer.log(line)
            if not info.camera_clock:
                writer.log(f"{info.backend} camera has no clock of its own: frame times are host arrival times")
            if trig is not None:
                # each cell's fire_device keeps 32 bytes of it: a VISA resource and the instrument's
                # *IDN? (its serial number) were cut to "visa:USB0::0x0957::0x2C07::MY000" and said
                # nowhere else in the file
                writer.log(f"trigger {cfg.trigger.backend}: {trig.device}")
        recorder = None
        raw_path = None
        if cfg.output.record_raw:
            from acquisition.recording import RawRecorder, RecorderSettings

            raw_path = folder / f"{stem}_raw.rtdc"
            if raw_path not in created and not raw_path.exists():
                created.append(raw_path)
            rec_cls = RawRecorder
            if cfg.output.recorder == "process":
                from acquisition.recorder_process import RawRecorderProcess as rec_cls
            # the raw recording describes the same experiment as the event file (dclab requires it)
            raw_meta = RunMeta(pixel_size_um=px, fps=info.fps or 1.0, roi=(info.width, info.height),
                               sample=cfg.output.sample, **setup).setup_attrs()
            raw_meta.update({"imaging:roi position x": int(info.offset[0]), "imaging:roi position y": int(info.offset[1])})
            # the clock is said here: the recorder child never sees the ring's flag (its file said False)
            # and the bit depth: without it the recording said its dtype's (16 for a 12-bit camera),
            # and a replay of it scaled its thresholds for 16 bits and found no cell
            recorder = rec_cls(raw_path, info.width, info.height, info.dtype, pixel_size_um=px, fps=info.fps,
                               bit_depth=info.bit_depth, camera_clock=info.camera_clock, overwrite=raw_path in reserved,
                               settings=RecorderSettings(compression=cfg.output.raw_compression),
                               metadata={"experiment:sample": cfg.output.sample, **raw_meta})
            recorder.__enter__()
            opened.append(recorder)
    except BaseException:
        for res in reversed(opened):
            try:
                res.close()
            except Exception:
                pass
        cam.close()
        remove_files(created)  # no frame reached them
        empty_files(emptied)
        raise
    pipeline = Pipeline(cam, cfg.tracking, classifier=classifier, policy=policy, trigger=trig,
                        timing=cfg.trigger.timing, sink=writer, recorder=recorder, autostop=cfg.autostop,
                        ring_capacity=cfg.camera.ring_capacity, pixel_size_um=px, kernels=kernels, lossless=lossless,
                        max_backlog_mb=cfg.output.max_backlog_mb)
    run = Run(cfg, pipeline, folder, ev_path, raw_path, classifier, writer, recorder, trig, created=tuple(created),
              emptied=tuple(emptied))
    pipeline.on_finish = lambda _p: run.close()
    return run


def with_changes(cfg: RunConfig, **sections: dict) -> RunConfig:
    """A copy of ``cfg`` with some keys of some sections replaced (validated again)."""
    from mimlsort.settings import to_mapping

    from app.config import config_from_mapping

    data = to_mapping(cfg)
    for sec, changes in sections.items():
        node = data.setdefault(sec, {})
        for k, v in changes.items():
            parts = k.split(".")
            cur = node
            for p in parts[:-1]:
                cur = cur.setdefault(p, {})
            cur[parts[-1]] = v
    return config_from_mapping(data)

