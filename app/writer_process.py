"""The event writer in a child process, so HDF5 never stalls the sort path.

h5py holds the GIL through every HDF5 call, and a flush compresses a second's worth of event
images: tens to hundreds of milliseconds during which no other Python thread of the process runs —
the sort thread included (measured: decision latency p99 130 → 190 ms with the writer on a thread
of the same process at 1,000 cells/s). :class:`EventWriterProcess` has the
:class:`~app.storage.EventWriter` interface and runs the real writer in a spawned process;
records travel through a pipe (pickled, ~100 kB per event with its ROI image, mask and
background). The storage thread of the pipeline pays for pickling only.

Failure semantics are those of the in-process writer, and better on a crash:

* an error in the child (disk full, a bad event) comes back and is raised by the next ``write``,
  ``flush`` or ``close`` in the parent, as the same exception type where it can be pickled;
* when the parent dies (even by SIGKILL) the child sees the pipe close, writes what it was sent
  and closes the file completely;
* when the child dies, the parent's next call raises a :class:`~mimlsort.errors.DeviceError` that
  names the file; the file holds what was flushed before.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mimlsort.child import close_and_report, naming_the_file, portable, reap, serve, spawn
from mimlsort.errors import DeviceError

log = logging.getLogger(__name__)

#: how long the parent waits for the child to open the file, or to close it
OPEN_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 120.0
_IDLE_POLL_S = 0.2  # the child flushes on its interval even when nothing arrives


def _child_main(conn) -> None:
    """The child: an EventWriter driven by messages; replies only with state and errors."""
    from app.storage import EventWriter

    path, meta, options = conn.recv()
    try:
        writer = EventWriter(path, meta=meta, **options)
    except BaseException as err:  # the parent re-raises it from its constructor
        conn.send(("error", portable(err)))
        return
    parent_gone = False

    def reply(*msg) -> None:
        # a parent killed (SIGKILL) with records still in the socket: they are written all the
        # same; a failed reply must not end the loop before recv() has drained them
        nonlocal parent_gone
        if parent_gone:
            return
        try:
            conn.send(msg)
        except (OSError, EOFError):
            parent_gone = True
            log.warning("%s: the run's process is gone; writing what it sent, then closing the file", path)

    reply("opened", writer.run_identifier, writer.bytes_written, writer.events_written)
    failed = False
    last = (writer.bytes_written, writer.events_written)
    try:
        while True:
            try:
                msg = conn.recv() if conn.poll(_IDLE_POLL_S) else ("idle",)
            except (EOFError, OSError):
                log.warning("%s: the run's process is gone; closing the event file", path)
                writer.note_error("the run's process ended without closing the event file (killed?); "
                                  "it holds every event the run sent")
                break
            op = msg[0]
            if op == "close":
                break
            try:
                if op == "write":
                    if not failed:
                        writer.write(msg[1])
                elif op == "idle":
                    if not failed:
                        writer.flush_if_due()
                elif op == "flush":
                    if not failed:
                        writer.flush()
                elif op == "log":
                    writer.log(msg[1])
                elif op == "acks":
                    writer.add_acks(msg[1])
                elif op == "reports":
                    writer.add_device_reports(msg[1])
                elif op == "counters":
                    writer.note_counters(msg[1])
                elif op == "run_error":
                    writer.note_error(msg[1])
            except BaseException as err:
                failed = True
                reply("error", portable(err))
            now = (writer.bytes_written, writer.events_written)
            if now != last:
                last = now
                reply("state", *now)
            if op == "flush":
                reply("flushed", *now)
    finally:
        close_and_report(conn, writer, lambda: (writer.bytes_written, writer.events_written))


class _Ack:
    """A device ack reduced to what the writer stores (the trigger's own objects may not pickle)."""

    __slots__ = ("event_index", "device_time_us", "host_ns", "pulse_host_ns", "pulse_host_err_ns")

    def __init__(self, a):
        self.event_index = getattr(a, "event_index")
        self.device_time_us = getattr(a, "device_time_us", None)
        self.host_ns = getattr(a, "host_ns", -1)
        self.pulse_host_ns = getattr(a, "pulse_host_ns", -1)
        self.pulse_host_err_ns = getattr(a, "pulse_host_err_ns", -1)

    def __getstate__(self):
        return (self.event_index, self.device_time_us, self.host_ns, self.pulse_host_ns, self.pulse_host_err_ns)

    def __setstate__(self, s):
        self.event_index, self.device_time_us, self.host_ns, self.pulse_host_ns, self.pulse_host_err_ns = s


class _Report:
    """A device report reduced to what the writer stores."""

    __slots__ = ("event_index", "host_ns", "kind", "message")

    def __init__(self, r):
        self.event_index = int(getattr(r, "event_index"))
        self.host_ns = int(getattr(r, "host_ns", -1))
        self.kind = str(getattr(r, "kind", ""))
        self.message = str(getattr(r, "message", ""))

    def __getstate__(self):
        return (self.event_index, self.host_ns, self.kind, self.message)

    def __setstate__(self, s):
        self.event_index, self.host_ns, self.kind, self.message = s


class EventWriterProcess:
    """:class:`~app.storage.EventWriter` in a child process; the same methods, a context manager.

    ``write``/``flush``/``close`` belong to one thread (the pipeline's storage thread);
    ``log``, ``add_acks`` and ``note_counters`` may be called from any thread.
    """

    def __init__(self, path: str | Path, *, meta, **options: Any):
        self.path = Path(path)
        self.meta = meta
        # a fresh interpreter (not fork: that would copy the run's threads' locks mid-use; not
        # multiprocessing's spawn: that re-imports the caller's __main__ script)
        self._proc, self._conn = spawn("app.writer_process")
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()  # status readers poll too
        self._bytes = 0
        self._events = 0
        self._failed: BaseException | None = None
        self._raised = False  # the failure has been raised to the caller once
        self._abandoned: BaseException | None = None  # the failure abort() made
        self._closed = False
        try:
            self._conn.send((str(self.path), meta, dict(options)))
            msg = self._receive(OPEN_TIMEOUT_S, until=("opened", "error"))
        except OSError as err:
            self._reap()
            raise DeviceError(f"{self.path}: the event writer process did not start") from err
        except BaseException:  # interrupted while it starts: the child closes its file and is reaped
            self._reap()
            raise
        if msg is None or msg[0] != "opened":
            self._reap()
            if msg is not None and msg[0] == "error":
                # the file's own opening errors name it; one that does not (an option the writer
                # does not take) was raised as it came, naming no file
                raise naming_the_file(self.path, msg[1])
            raise DeviceError(f"{self.path}: the event writer process did not start")
        self.run_identifier = msg[1]

    # -- messages --------------------------------------------------------------------------------
    def _receive(self, timeout: float, until: tuple[str, ...] = ()) -> tuple | None:
        """Read what the child sent; with ``until``, wait (up to ``timeout``) for such a message."""
        if not until:
            if not self._recv_lock.acquire(blocking=False):
                return None  # another thread is reading: it keeps the state current
        else:
            self._recv_lock.acquire()
        try:
            return self._receive_locked(timeout, until)
        finally:
            self._recv_lock.release()

    def _receive_locked(self, timeout: float, until: tuple[str, ...]) -> tuple | None:
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.0, deadline - time.monotonic()) if until else 0.0
            try:
                if not self._conn.poll(wait):
                    if until and self._proc.poll() is None and time.monotonic() < deadline:
                        continue
                    return None
                msg = self._conn.recv()
            except (EOFError, OSError):
                return None
            op = msg[0]
            if op == "state":
                self._bytes, self._events = msg[1], msg[2]
            elif op == "error" and self._failed is None:
                # not logged here: it is raised to the caller (the run's storage thread, whose
                # "run stopping" says it; or close()), and a line here said it once more
                self._failed = naming_the_file(self.path, msg[1])
            elif op in ("flushed", "closed"):
                self._bytes, self._events = msg[-2], msg[-1]
            if op in until:
                return msg

    def _send(self, *msg, note: bool = False) -> None:
        """``note``: a record for the file (a log line, counters, acks) that is dropped, not raised,
        once the child is gone and the caller has heard why (or gave it up): the run's close sends
        them, and the daemon said the writer's failure again as "closing failed"."""
        if self._closed:
            raise DeviceError(f"{self.path}: the event file is closed")
        try:
            with self._send_lock:
                self._conn.send(msg)
        except (OSError, EOFError, BrokenPipeError) as err:
            self._receive(0.0)
            if self._failed is None:
                self._failed = DeviceError(f"{self.path}: the event writer process ended (exit code "
                                           f"{self._proc.poll()}); the file holds what was flushed before")
            if note and (self._raised or self._failed is self._abandoned):
                return
            self._raised = True
            raise self._failed from err

    def _check(self) -> None:
        self._receive(0.0)
        if self._failed is None and self._proc.poll() is not None:
            self._failed = DeviceError(f"{self.path}: the event writer process ended (exit code "
                                       f"{self._proc.returncode}); the file holds what was flushed before")
        self._raise_failed()

    def _raise_failed(self) -> None:
        if self._failed is not None:
            self._raised = True
            raise self._failed

    # -- the EventWriter interface ---------------------------------------------------------------
    def write(self, records: Sequence) -> None:
        self._check()
        if records:
            self._send("write", list(records))

    def flush_if_due(self) -> bool:
        self._check()  # the child flushes on its own interval
        return False

    def flush(self) -> None:
        """Write everything sent so far and make it durable; waits for the child."""
        self._check()
        self._send("flush")
        if self._receive(CLOSE_TIMEOUT_S, until=("flushed", "error")) is None:
            raise DeviceError(f"{self.path}: the event writer process did not answer a flush")
        self._raise_failed()

    def log(self, line: str) -> None:
        if not self._closed:
            self._send("log", str(line), note=True)

    def add_acks(self, acks: Iterable) -> None:
        rows = [_Ack(a) for a in acks]
        if rows and not self._closed:
            self._send("acks", rows, note=True)

    def add_device_reports(self, reports: Iterable) -> None:
        rows = [_Report(r) for r in reports]
        if rows and not self._closed:
            self._send("reports", rows, note=True)

    def note_counters(self, counters: Mapping[str, Any]) -> None:
        if not self._closed:
            self._send("counters", dict(counters), note=True)

    def note_error(self, message: str) -> None:
        if not self._closed:
            self._send("run_error", str(message), note=True)

    @property
    def bytes_written(self) -> int:
        """File size after the child's last flush."""
        if not self._closed:
            self._receive(0.0)
        return self._bytes

    @property
    def events_written(self) -> int:
        if not self._closed:
            self._receive(0.0)
        return self._events

    @property
    def child_pid(self) -> int:
        """The writing child's process id (for its CPU in the run's status)."""
        return self._proc.pid

    def abort(self, why: str) -> None:
        """Give up on the child (it makes no progress: stuck in the kernel on a dead network disk,
        say): kill it. The file keeps what the child flushed, as after a crash; a thread blocked
        sending to it gets an error at once, and so do later calls."""
        if self._failed is None:
            self._failed = self._abandoned = DeviceError(f"{self.path}: the event writer was abandoned ({why}); the file "
                                                         "holds what was flushed before")
        if self._proc.poll() is None:
            self._proc.kill()

    def close(self) -> None:
        """Send the rest, let the child close the file completely, wait for it (idempotent)."""
        if self._closed:
            return
        try:
            with self._send_lock:
                self._conn.send(("close",))
        except (OSError, EOFError):
            pass
        msg = self._receive(CLOSE_TIMEOUT_S, until=("closed",))
        self._closed = True
        self._reap()
        if msg is None:
            if self._failed is not None and self._failed is self._abandoned:
                # the caller gave up on the child itself (abort): raised here, the daemon said
                # "closing failed" beside its own "event writer abandoned" line
                return
            if self._failed is not None:  # abandoned, or failed before: that says why
                self._raise_failed()
            raise DeviceError(f"{self.path}: the event writer process did not close the file (exit code "
                              f"{self._proc.returncode}); the file holds what was flushed before")
        if msg[1] is not None:
            raise msg[1]
        if not self._raised:
            # a failure raised before ended the run already, and its file closed complete: raised
            # again here, the daemon said it a second time as "closing failed" (the in-process
            # writer's close raises nothing of it either). One the caller never heard of is raised
            self._raise_failed()

    def _reap(self) -> None:
        reap(self._proc, self._conn)

    def __enter__(self) -> "EventWriterProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m app.writer_process FD``: serve the parent on the socket FD."""
    return serve(_child_main, "writer", argv)


if __name__ == "__main__":
    sys.exit(main())
