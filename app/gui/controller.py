"""Run control for the GUI: builds, starts and stops runs off the UI thread and polls their state.

The pipeline's worker threads never call into Qt. A QTimer on the UI thread polls immutable
snapshots (``status()``, ``recent()``, ``ring.newest()``, ``live_tracks()``) at a fixed rate and
re-emits them as Qt signals, so the GUI's cost is bounded by the refresh rate, not the cell rate,
and a busy UI can only delay its own refresh, never the sort path. Anything slow (opening a camera,
compiling kernels, loading a model, waiting for a run to end, test-firing a trigger) runs on a
small thread pool; its outcome is picked up by the same timer.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.gui.models import reason_words
from app.gui.qt import QtCore, Signal
from mimlsort.errors import MimlsortError, StateError

log = logging.getLogger(__name__)

#: how long ``stop`` waits for the workers to finish their batch and close the files (generous: on a
#: loaded 2-core machine the tracker's first batch after start can take seconds)
STOP_TIMEOUT_S = 60.0


def default_factory(cfg: Any, folder: Path | None = None):
    """The daemon's own way of building a run (``app.session.build_run``)."""
    from app.session import build_run

    return build_run(cfg, folder=folder)


def _discard_empty(run: Any) -> None:
    """A start the operator stopped (or that failed) before a frame was tracked leaves no empty
    event file behind (it held only the settings, and took a run index of the day)."""
    discard = getattr(run, "discard_if_empty", None)
    if discard is None:
        return
    try:
        for path in discard():
            log.info("no frame was tracked: %s removed (it held no event)", path)
    except Exception as e:  # noqa: BLE001 - the run is over; its files are the user's to look at
        log.warning("could not check the stopped run's files: %s", e)


def _writer_timeout_s(run: Any) -> float:
    """How long after a stop the run's watchdog may wait before it abandons a stuck event writer
    (``output.stop_timeout_s``): a stop must wait longer than that, or it gives up first."""
    cfg = getattr(run, "config", None)
    return float(getattr(getattr(cfg, "output", None), "stop_timeout_s", 0.0) or 0.0)


#: the packages whose warnings a run's operator must see (the GUI's own go to its error dialog)
_RUN_LOGGERS = ("acquisition", "app", "hardware", "inference", "mimlsort", "tracking")


class _WarningTap(logging.Handler):
    """Keeps the run's warnings for the UI thread: workers log from their threads, and only the
    UI thread may touch Qt, so they wait in a bounded deque (appending is thread-safe) for the poll."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.pending: deque[str] = deque(maxlen=200)

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name
        if name.startswith("app.gui") or name.split(".")[0] not in _RUN_LOGGERS:
            return
        try:
            self.pending.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a bad log call must not break the worker that made it
            pass


def describe_error(err: BaseException) -> str:
    """One line for the operator: our own errors speak for themselves, others keep their type."""
    if isinstance(err, MimlsortError):
        return str(err)
    return f"{type(err).__name__}: {err}"


class RunController(QtCore.QObject):
    """Owns at most one run at a time; see the module docstring.

    ``factory(config, folder)`` builds a run object with ``start()``, ``stop()``, ``wait(timeout)``,
    ``status()``, ``close()`` and a ``pipeline`` attribute (``app.session.Run``).
    """

    statusChanged = Signal(object)  # app.pipeline.Status
    recordsAdded = Signal(object)  # list[CellRecord], new since the last poll, oldest first
    frameReady = Signal(object)  # np.ndarray, a copy of the newest frame
    tracksChanged = Signal(object)  # list of (track_id, x, y, a, b, angle) in px
    geometryReady = Signal(object)  # tracking.geometry.ChannelGeometry of the running tracker
    runStarted = Signal(object)  # the run object
    runFinished = Signal(object)  # the final Status (or None when the run never started)
    runClosed = Signal(object, object)  # a run whose files are closed, and its final Status (before runFinished)
    busyChanged = Signal(bool)
    errorOccurred = Signal(str)
    warningLogged = Signal(str)  # a warning of the run's (or of building it), on the UI thread
    startFailed = Signal(str)
    message = Signal(str)

    def __init__(self, factory: Callable[..., Any] | None = None, refresh_hz: float = 30.0,
                 frame_hz: float = 30.0, status_hz: float = 10.0, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.factory = factory or default_factory
        self.run: Any = None
        self._pool = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="mimlsort-gui")
        self._tasks: list[tuple[cf.Future, Callable[[Any], None] | None, Callable[[BaseException], None] | None]] = []
        self._starting = False
        self._cancel_start = False  # Stop pressed while the run was starting
        self._discard_after_stop = False  # ... and it had started: its files go if it tracked nothing
        self._stopping = False
        self._last_index = -1
        self._last_frame_id = None
        self._frame_period = 1.0 / min(max(frame_hz, 1.0), 60.0)  # the preview never exceeds 60 Hz
        self._last_frame_t = 0.0
        self._status_period = 1.0 / max(status_hz, 0.5)  # counters are read by people: 10 Hz is plenty
        self._last_status_t = 0.0
        self._geometry_sent = None  # the tracker's geometry last drawn (it follows a channel that moves)
        self.frames: deque = deque(maxlen=32)  # recent preview frames, for geometry auto-detection
        self.last_status = None
        self.ticks = 0
        self.tick_seconds = 0.0  # UI-thread time spent in polls (for the GUI benchmark)
        self.tick_max_s = 0.0
        self._warnings = _WarningTap()
        logging.getLogger().addHandler(self._warnings)
        self._timer = QtCore.QTimer(self)
        self._timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self._timer.setInterval(max(1, int(round(1000.0 / refresh_hz))))
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    # -- state ------------------------------------------------------------------------------------
    @property
    def pipeline(self):
        return getattr(self.run, "pipeline", None) if self.run is not None else None

    @property
    def busy(self) -> bool:
        return self._starting or self._stopping

    @property
    def starting(self) -> bool:
        """A run is being built and started, and no Stop has been asked for it yet."""
        return self._starting and not self._cancel_start

    @property
    def running(self) -> bool:
        return self.run is not None and not self._stopping

    # -- background work --------------------------------------------------------------------------
    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> cf.Future:
        """Run ``fn`` on a worker thread; its callbacks run later on the UI thread."""
        fut = self._pool.submit(fn)
        self._tasks.append((fut, on_done, on_error))
        return fut

    def _collect_tasks(self) -> None:
        still = []
        for fut, on_done, on_error in self._tasks:
            if not fut.done():
                still.append((fut, on_done, on_error))
                continue
            err = fut.exception()
            try:
                if err is None:
                    if on_done is not None:
                        on_done(fut.result())
                elif on_error is not None:
                    on_error(err)
                else:
                    self._report(err)
            except Exception as e:  # a failing callback must not kill the poll timer
                self._report(e)
        self._tasks = still

    def _report(self, err: BaseException) -> None:
        if not isinstance(err, MimlsortError):
            log.error("GUI task failed:\n%s", "".join(traceback.format_exception(err)))
        self.errorOccurred.emit(describe_error(err))

    # -- run lifecycle ----------------------------------------------------------------------------
    def start(self, config: Any, folder: str | Path | None = None) -> None:
        """Build and start a run from ``config`` in the background; ``runStarted`` says when it runs."""
        if self.run is not None or self.busy:
            raise StateError("a run is already active; stop it first")
        self._starting = True
        self._cancel_start = False
        self.busyChanged.emit(True)
        self.message.emit("starting: opening the camera and compiling the tracker …")
        factory = self.factory

        def build():
            run = factory(config, Path(folder) if folder is not None else None)
            try:
                if self._cancel_start:  # stopped while the camera and files opened: no need to start
                    run.close()
                    _discard_empty(run)
                    return None
                run.start()  # a start that fails removes its empty files itself
            except BaseException:
                run.close()
                raise
            return run

        self._build_future = self.submit(build, self._started, self._start_failed)

    def _started(self, run: Any) -> None:
        self._starting = False
        self._build_future = None  # it holds the run: an idle window must not keep its ring and model
        cancel, self._cancel_start = self._cancel_start, False
        if run is None:  # stopped before it started
            self.busyChanged.emit(False)
            self.message.emit("start canceled")
            self.runFinished.emit(None)
            return
        self.run = run
        self._last_index = -1
        self._last_frame_id = None
        self._geometry_sent = None
        self.frames.clear()
        self.busyChanged.emit(False)
        self.message.emit("running")
        self.runStarted.emit(run)
        if cancel:  # Stop was pressed while it started (the tracker's kernels load only in start)
            self._discard_after_stop = True
            self.stop()

    def _start_failed(self, err: BaseException) -> None:
        self._starting = False
        self._build_future = None
        self._cancel_start = False
        self.busyChanged.emit(False)
        self._report(err)
        self.startFailed.emit(describe_error(err))
        self.runFinished.emit(None)

    def stop(self) -> None:
        """Ask the run to stop; the workers finish their batch, files are closed in the background.
        While a run is starting, it is stopped as soon as it has started (or not started at all)."""
        if self._starting and not self._cancel_start:
            self._cancel_start = True
            self.busyChanged.emit(True)
            self.message.emit("stopping: the run stops as soon as it has started")
            return
        if self.run is None or self._stopping:
            return
        self.run.stop()  # only sets an event: safe and instant on the UI thread
        self._finish()

    def _finish(self) -> None:
        self._stopping = True
        self.busyChanged.emit(True)
        self.message.emit("stopping: the workers finish their batch, the files are closed …")
        run = self.run
        discard, self._discard_after_stop = self._discard_after_stop, False

        def wait():
            limit = STOP_TIMEOUT_S + _writer_timeout_s(run)
            if not run.wait(limit):
                raise StateError(f"the run did not stop within {limit:g} s; its files may be incomplete")
            run.close()
            if discard:
                _discard_empty(run)
            abandoned = getattr(run, "abandoned", "")
            if abandoned:
                raise StateError(f"the event writer was abandoned ({abandoned}); "
                                 f"{getattr(run, 'events_path', None) or 'the event file'} holds what it flushed before")
            errors = getattr(run, "close_errors", None)
            if errors:
                raise StateError("closing the run failed: " + "; ".join(errors))
            return run.status()

        self.submit(wait, self._finished, self._finish_failed)

    def _finished(self, status: Any) -> None:
        self._poll_once(final=True)
        run, self.run = self.run, None
        self._stopping = False
        self.last_status = status
        self.busyChanged.emit(False)
        self.statusChanged.emit(status)
        reason = status.finish_reason.value if status.finish_reason else "finished"
        reason = reason_words(reason)
        self.message.emit(f"run {reason}" + (f": {status.message}" if status.message else ""))
        if status.finish_reason is not None and status.finish_reason.value == "errored":
            self.errorOccurred.emit(status.message or "the run ended with an error")
        self.runClosed.emit(run, status)
        self.runFinished.emit(status)

    def _finish_failed(self, err: BaseException) -> None:
        run = self.run
        try:  # the last state the run reached, so the status panel does not stay at "stopping"
            status = run.status() if run is not None else None
        except Exception:  # noqa: BLE001 - a run that failed to close may not report either
            status = None
        if status is not None:
            self.last_status = status
            self.statusChanged.emit(status)
        self.run = None
        self._stopping = False
        self.busyChanged.emit(False)
        self._report(err)
        if getattr(run, "closed_all", False) and self.last_status is not None:
            # closed, with an abandoned writer or a resource that failed to close: the event file
            # holds what was flushed (a run that did not stop still writes its files: not this)
            self.runClosed.emit(run, self.last_status)
        self.runFinished.emit(self.last_status)

    def set_policy(self, policy: Any) -> bool:
        """Hand a new sort policy to the running pipeline (takes effect at its next batch)."""
        p = self.pipeline
        if p is None or not hasattr(p, "set_policy"):
            return False
        p.set_policy(policy)
        return True

    def class_names(self) -> tuple[str, ...]:
        clf = getattr(self.run, "classifier", None) or getattr(self.pipeline, "classifier", None)
        return tuple(clf.classes) if clf is not None else ()

    # -- polling ----------------------------------------------------------------------------------
    def _tick(self) -> None:
        t0 = time.perf_counter()
        try:
            while self._warnings.pending:
                self.warningLogged.emit(self._warnings.pending.popleft())
            self._collect_tasks()
            if self.run is not None:
                self._poll_once()
        except Exception as e:  # keep polling: one bad snapshot must not freeze the display
            self._report(e)
        dt = time.perf_counter() - t0
        self.ticks += 1
        self.tick_seconds += dt
        self.tick_max_s = max(self.tick_max_s, dt)

    def _poll_once(self, final: bool = False) -> None:
        run, p = self.run, self.pipeline
        if run is None:
            return
        now = time.monotonic()
        st = None
        if final or now - self._last_status_t >= self._status_period:  # a snapshot costs ~1 ms
            self._last_status_t = now
            st = run.status()
            self.last_status = st
            self.statusChanged.emit(st)
        if p is not None and hasattr(p, "recent"):
            recs = p.recent(1024)
            new = [r for r in recs if r.event.index > self._last_index]
            if new:
                self._last_index = new[-1].event.index
                self.recordsAdded.emit(new)
        if p is None or final:
            return
        tracker = getattr(p, "tracker", None)
        geometry = getattr(tracker, "geometry", None) if tracker is not None else None
        if geometry is not None and geometry is not self._geometry_sent:
            self._geometry_sent = geometry
            self.geometryReady.emit(geometry)
        ring = getattr(p, "ring", None)
        if ring is not None and now - self._last_frame_t >= self._frame_period:
            frame = ring.newest()
            if frame is not None and frame.frame_id != self._last_frame_id:
                self._last_frame_id = frame.frame_id
                self._last_frame_t = now
                img = np.array(frame.image, copy=True)  # the slot is reused by the producer
                self.frames.append(img)
                self.frameReady.emit(img)
                if hasattr(p, "live_tracks"):
                    self.tracksChanged.emit(list(p.live_tracks()))
        if st is not None and not self._stopping and st.state.value in ("stopping", "finished"):
            self._finish()  # ended by itself: auto-stop, end of a recording, or an error

    def shutdown(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop any run and wait for it (window closing); its files are closed once it has stopped."""
        self._timer.stop()
        logging.getLogger().removeHandler(self._warnings)
        if self._starting:  # as Stop while starting: a run whose camera and files still open is not started
            self._cancel_start = True
        run = self.run
        stopped = False
        if run is not None:
            run.stop()
            limit = timeout_s + _writer_timeout_s(run)
            stopped = run.wait(limit)
            if stopped:
                run.close()
            else:  # closing under a live writer would lose data; the run closes itself when it ends
                log.error("the run did not stop within %g s; it closes its files when it ends", limit)
            self.run = None
        # a Stop's worker may be closing the run's files: the close above then returns at once (the
        # run's close is under way), and the report of runClosed would read a file still open
        self._pool.shutdown(wait=True, cancel_futures=True)
        if stopped and getattr(run, "closed_all", True):  # (a run without it is closed when close returns)
            try:
                self.runClosed.emit(run, run.status())  # its report, as after a Stop
            except Exception as e:  # noqa: BLE001 - the window closes whatever a report does
                log.error("after closing the run: %s", e)
        fut = getattr(self, "_build_future", None)
        if fut is not None and self._starting and fut.done() and fut.exception() is None:
            late = fut.result()  # a run that finished starting while the window closed (None: not started)
            if late is not None:
                late.stop()
                if late.wait(timeout_s):
                    late.close()
                    _discard_empty(late)
