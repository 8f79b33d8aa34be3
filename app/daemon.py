"""The headless capture daemon: run a configuration until it ends, is stopped, or fails.

* logs to stderr and to a log file in the output folder; one status line per interval;
* SIGINT/SIGTERM stop the run gracefully (files closed complete), also while it starts; a second
  signal is ignored while the files close, so a double Ctrl-C cannot leave a half-written file;
* the run's threads never wait for the terminal: log records and status lines are written by a
  console thread of their own;
* optional status as JSON over HTTP, bound to 127.0.0.1 only (``GET /status``);
* the exit code says how the run ended (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable, Protocol

from app.config import RunConfig, located
from app.console import Console
from app.pipeline import FinishReason, Status
from app.session import Run, build_run
from app.sorting import Reason
from mimlsort.errors import ConfigError, DeviceSettingError
from mimlsort.outputs import probe_writable_folder

log = logging.getLogger(__name__)

#: how a run ended -> process exit status
EXIT_CODES = {
    FinishReason.COMPLETED: 0,  # the source ended or an auto-stop limit was reached
    FinishReason.ERRORED: 1,  # a worker failed (camera gone, disk full, …); see the log
    FinishReason.CANCELED: 0,  # stopped by a signal: a normal way to end a capture
}
EXIT_BAD_CONFIG = 2  # the configuration or the command line is wrong, or a device it names is not there (cli)
#: the run went to its end, but its trigger failed on the way: cells after that were not sorted
EXIT_TRIGGER_FAULT = 3
#: device errors or refused pulses above this share of the pulses handed over end a run with
#: EXIT_TRIGGER_FAULT even though the device stayed available
DEVICE_FAULT_SHARE = 0.1


class Progress(Protocol):
    """Shows a run's progress from its status snapshots (``mimlsort replay``'s bar)."""

    def __call__(self, status: Status) -> None: ...

    def close(self) -> None: ...


class StatusServer:
    """Serves the latest status snapshot as JSON on 127.0.0.1 (never another interface)."""

    def __init__(self, port: int, snapshot: Callable[[], dict]):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path.rstrip("/") not in ("", "/status"):
                    self.send_error(404, "try /status")
                    return
                body = json.dumps(outer._snapshot()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # keep the console for status lines
                log.debug("http: " + fmt, *args)

        self._snapshot = snapshot
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mimlsort-http", daemon=True)

    def __enter__(self) -> "StatusServer":
        self._thread.start()
        log.info("status at http://127.0.0.1:%d/status", self.port)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve_forever that was never started
            self._server.shutdown()
        self._server.server_close()


#: said where an event file's path would be: "events -> None" named a file that does not exist
NO_EVENT_FILE = "no event file written (output.write_events = false)"


def outputs_line(run: Run) -> str:
    """Where the run's cells (and raw frames) go, as the log says it when the run starts."""
    parts = [f"events -> {run.events_path}" if run.events_path is not None else NO_EVENT_FILE]
    if run.raw_path is not None:
        parts.append(f"raw frames -> {run.raw_path}")
    return "; ".join(parts)


class RunLogHandler(logging.FileHandler):
    """The run's log file. One that fails while the run goes on (its disk filled, ``/dev/full``)
    is said once on stderr and written no more: logging printed a "--- Logging error ---"
    traceback for every record, and its close raised, so a completed run ended with exit code 1 and
    "error: No space left on device", a file name nowhere. The line names the key that chose the
    file as well as its path: a path alone left the operator to find which setting wrote there."""

    KEY = "daemon.log_file"

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8")
        self.failed = ""

    def _said(self) -> str:
        return f"mimlsort: the log file {self.baseFilename} ({self.KEY}) cannot be written ({self.failed})"

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's naming)
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            super().handleError(record)
            return
        if not self.failed:
            self.failed = err.strerror or str(err)
            try:
                sys.stderr.write(f"{self._said()}: nothing more goes to it; stderr and the event file's log have "
                                 "the run's lines\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        try:
            super().close()
        except OSError as err:  # the last flush: said like any other failed write
            if not self.failed:
                self.failed = err.strerror or str(err)
                print(self._said(), file=sys.stderr)


def _file_handler(path: Path) -> logging.Handler:
    """The run's log file ``daemon.log_file`` (:meth:`app.config.DaemonConfig.log_path`: relative
    to the output folder, which it may name subfolders of, or absolute); one that cannot be written
    is a configuration error naming the key."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        h = RunLogHandler(path)
    except OSError as err:
        raise ConfigError(RunLogHandler.KEY, f"{path}: cannot be written: {err.strerror or err}") from err
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h.setLevel(logging.INFO)
    return h


def _missing_folders(folder: Path, *files: Path) -> list[Path]:
    """The folders that do not exist yet and that making ``folder`` and the folders of ``files``
    would make, deepest first."""
    out: set[Path] = set()
    for p in (folder, *(f.parent for f in files)):
        p = p.absolute()
        for q in (p, *p.parents):
            if q.exists() or q.is_symlink():
                break
            out.add(q)
    return sorted(out, key=lambda q: len(q.parts), reverse=True)


def run_daemon(cfg: RunConfig, *, folder: str | Path | None = None, events_path: str | Path | None = None,
               out=None, lossless: bool | None = None, progress: Callable[[Any], "Progress"] | None = None,
               ignore_signals_after: bool = False, trigger: bool | None = None,
               report: Callable[[Path], tuple[bool, str]] | None = None, config_file: str | Path | None = None,
               options: Mapping[str, str | None] | None = None) -> tuple[int, Run]:
    """Run ``cfg`` to its end; returns (exit code, the finished run). Status lines go to ``out``
    (default: the ``sys.stderr`` of the moment).

    SIGINT/SIGTERM only note the request (no I/O, no lock in a signal handler); the run is
    stopped by this thread, also when the signal came while the run was being built or started
    (it then starts and stops at once, its file complete and empty). ``ignore_signals_after``
    (the command line) keeps both signals ignored once the files are closed, so that a second
    Ctrl-C cannot kill the process with a signal status instead of its exit code. ``trigger``
    and ``lossless``: as :func:`app.session.build_run` (unset: from the configured source).
    ``progress``: given a stream for ``out`` (written by the console's thread), returns what shows
    the status instead of the status lines. ``report``: writes the sample report of a run that
    recorded cells, once the run has said how it ended; returns whether it was written and the
    line that says so. Until it returns the status server answers (state "reporting") and the
    log file takes its line: they closed before the report, and a client polling the status saw
    the connection refused while the daemon was still at work. The server closes last, once the
    daemon's lines are out; its final answer is "finished", with the report's outcome.

    ``config_file``: the file ``cfg`` was read from, and ``options``: the keys the command line set
    (key → its option, as :func:`app.config.located` takes them). A configuration error found here
    (a port in use, an output folder or log file that takes no file, a model not there) names
    where its key was set, as the validation's errors do; until then they named the key alone."""
    out = out if out is not None else sys.stderr
    folder = Path(folder or cfg.output.folder).expanduser()
    latest: dict = {"state": "starting"}
    server = None

    def where(err: ConfigError | DeviceSettingError) -> ConfigError | DeviceSettingError:
        return located(err, config_file, options)

    try:
        if cfg.daemon.http_port:
            # before the camera, model and files are opened (the output folder and log too): a port
            # in use is a configuration error (exit 2), not a run that starts and then fails; and
            # "starting" is served
            try:
                server = StatusServer(cfg.daemon.http_port, lambda: latest)
            except OSError as err:
                raise ConfigError("daemon.http_port", f"cannot serve the status on 127.0.0.1:{cfg.daemon.http_port}: "
                                  f"{err.strerror or err}") from err
        # a start refused here leaves no folder behind: the output folder (or a log file's) made
        # before the log file was refused was an empty folder the configuration's next run went to
        log_path = cfg.daemon.log_path(folder)
        made = _missing_folders(folder, *([log_path] if log_path is not None else []))
        try:
            if folder.exists() and not folder.is_dir():
                raise ConfigError("output.folder", f"{folder}: exists and is not a folder")
            probe_writable_folder(folder, option="output.folder")  # made if need be
            handler = _file_handler(log_path) if log_path is not None else None
        except BaseException:
            for p in made:
                try:
                    p.rmdir()
                except OSError:
                    pass
            if server is not None:
                server.close()
            raise
    except ConfigError as err:
        raise where(err) from err
    root = logging.getLogger()
    if handler is not None:
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    signals = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
    previous = {}
    requested: list[str] = []

    started: list[bool] = []

    def on_signal(signum, _frame):
        requested.append(signals.get(signum, str(signum)))
        if len(requested) >= 2 and not started:
            # a second signal while the run is built or started (a camera or model open that
            # hangs): give up on it, as Ctrl-C does; the first one waits for the start to finish
            raise KeyboardInterrupt(requested[-1])

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for s in signals:
            previous[s] = signal.signal(s, on_signal)

    def restore_signals() -> None:
        while previous:
            s, h = previous.popitem()
            signal.signal(s, signal.SIG_IGN if ignore_signals_after else h)

    console = Console().__enter__()
    last_words: list[str] = []  # how the run ended: for the log file as well as the terminal
    failure: list[str] = []  # why it ended with an exception: for the log file (the command line says it)

    def say(text: str, file) -> None:
        console.print(text, file)
        last_words.append(text)

    show = None
    run = None
    try:
        if server is not None:
            server.__enter__()
        run = build_run(cfg, folder=folder, events_path=events_path, lossless=lossless, trigger=trigger)
        try:
            run.start()
            started.append(True)
            # the bar once the run goes: a configuration refused while the run is built (or a
            # model that loads for seconds) is said on its own, not under an empty "0%" bar
            show = progress(console.stream(out)) if progress is not None else None
            log.info("run started; %s", outputs_line(run))
            next_line = time.monotonic() + cfg.daemon.status_interval_s
            while True:
                if requested and run.pipeline.finish_reason is None:
                    log.info("%s: stopping the run", requested[0])
                    run.pipeline.stop(FinishReason.CANCELED, f"stopped by {requested[0]}")
                if run.pipeline.wait(timeout=0.05):
                    break
                now = time.monotonic()
                st = run.status()
                latest = st.to_dict()
                if show is not None:
                    show(st)
                elif now >= next_line:
                    console.print(st.line(), out)
                    next_line = now + cfg.daemon.status_interval_s
            st = run.status()
            latest = st.to_dict()
        finally:
            run.pipeline.stop()
            run.pipeline.wait()
            run.close()
            restore_signals()  # before the last words: a second Ctrl-C now changes nothing
        st = run.status()
        reporting = (report is not None and run.events_path is not None and run.events_path.exists()
                     and st.cells > 0)
        # the end as served while the last words are written (it said "stopping"); "finished" once
        # nothing is left to do
        latest = {**st.to_dict(), **({"state": "reporting"} if reporting else {})}
        if show is None:
            say(st.line(), out)
        else:
            show(st)
            show.close()  # the finished bar above the lines that say how the run ended
            show = None
            last_words.append(st.line())
        reason = st.finish_reason or FinishReason.COMPLETED
        say(f"run {reason.value}" + (f": {st.message}" if st.message else "") +
            (f"; events in {run.events_path}" if run.events_path else f"; {NO_EVENT_FILE}"), out)
        code = EXIT_CODES[reason]
        if (run.close_errors or run.abandoned) and code == 0:
            code = 1
        for err in run.close_errors:  # the run itself went to its end; its files did not close cleanly
            say(f"closing failed: {err}", out)
        unsorted = st.not_fired.get(Reason.TRIGGER_UNAVAILABLE.value, 0)
        if not st.trigger_ok or unsorted:
            why = f" ({st.errors[-1]})" if st.errors else ""
            say(f"the trigger failed during the run: {unsorted} cell(s) decided as 'trigger unavailable' were not "
                f"sorted{why}" if unsorted else f"the trigger failed as the run ended{why}: the cells before were "
                f"handed to it", out)
            if code == 0:
                code = EXIT_TRIGGER_FAULT
        if st.device_errors or st.device_refused or st.unacked:
            parts = [f"reported {st.device_errors} error(s)"] if st.device_errors else []
            if st.device_refused:
                parts.append(f"did not output {st.device_refused} pulse(s) it was handed (refused)")
            if st.unacked:
                parts.append(f"did not confirm {st.unacked} pulse(s)")
            last = getattr(run.trigger, "error", "") if st.device_errors else ""
            say("the trigger device " + ", ".join(parts) + (f" (last: {last})" if last else "")
                + ": see the log, /mimlsort/device_reports and the acks in the event file", out)
            # an instrument that ignored its triggers, a device that refused its pulses: cells decided
            # as fired were not sorted (a run like that ended "completed", exit code 0). A device
            # refuses the odd pulse in routine use (a close pair while its counter is busy): only a
            # share over DEVICE_FAULT_SHARE of the pulses handed over makes the run's trigger failed
            if max(st.device_errors, st.device_refused) > DEVICE_FAULT_SHARE * max(st.fired, 1) and code == 0:
                code = EXIT_TRIGGER_FAULT
        if run.abandoned:
            say(f"event writer abandoned: {run.abandoned}; {run.events_path} holds what it flushed "
                f"before", out)
        if reporting:
            written, line = report(run.events_path)
            # the run's exit code stands (its file is closed complete); the status says the report's fate
            latest = {**st.to_dict(), "report": "written" if written else "failed", "report_message": line}
            say(line, out)
    except BaseException as exc:
        # the command line says it on stderr; the log file ended without a word of it, and an
        # unattended run refused at its start (a model not found, a camera not there) left a log
        # whose last line was the one before
        # a camera refused by one setting (no camera of the backend attached, a serial none has)
        # names its key as a configuration error does, and so where it was set
        named = where(exc) if isinstance(exc, (ConfigError, DeviceSettingError)) else exc
        why = f"interrupted ({exc.args[0] if exc.args else 'SIGINT'})" if isinstance(exc, KeyboardInterrupt) else str(named)
        failure.append(f"{'run failed' if started else 'run not started'}: {why or type(exc).__name__}")
        if named is not exc:
            raise named from exc
        raise
    finally:
        try:
            restore_signals()
            if show is not None:
                show.close()  # its last words queue before the console drains
            console.__exit__(None, None, None)
            if handler is not None:
                for text, level in [(t, logging.INFO) for t in last_words] + [(t, logging.ERROR) for t in failure]:
                    # after what the console queued: the file ends with them
                    handler.handle(logging.makeLogRecord({"name": __name__, "levelno": level,
                                                          "levelname": logging.getLevelName(level), "msg": text}))
                root.removeHandler(handler)
                handler.close()
        finally:
            if server is not None:  # last: the daemon is done once its lines are out
                server.close()
    return code, run
