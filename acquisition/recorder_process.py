"""The raw-frame recorder in a child process that reads the frame ring through shared memory.

h5py holds the GIL through every HDF5 call; a recorder thread writing a few hundred MB/s in the
run's process cost decisions 2–3× their latency (measured: p50 1.5–2.0 → 4.2 ms at 4 kHz and 100
cells/s). Here the parent's recorder thread only says which ring slots to take: the child copies
them out of the shared ring (a tmpfs file both map), says so, and writes them while the parent
goes on. Frames the camera overwrote during the copy are found by the parent (the ring's own
check, ``RingReader.release``) and the child drops them before writing, as the in-process
recorder does; they are counted in ``dropped``.

When the parent dies, even by SIGKILL, the child closes the file with what it has; its errors
come back as the same exception on the parent's next call.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from mimlsort.child import close_and_report, naming_the_file, portable, reap, serve, spawn
from mimlsort.errors import DeviceError

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 60.0


def _child_main(conn) -> None:
    from acquisition.recording import RawRecorder, _gather

    path, width, height, dtype, kwargs = conn.recv()
    try:
        rec = RawRecorder(path, width, height, dtype, **kwargs)
        rec.__enter__()
    except BaseException as err:
        conn.send(("error", portable(err)))
        return
    images = None
    staging = np.empty((0, height, width), np.dtype(dtype))
    pending = None  # (n, frame_ids, timestamps) copied, waiting for the parent's verdict
    failed = False
    try:
        try:
            conn.send(("opened",))
        except OSError:  # the run was killed while this process started: close the file, no traceback
            log.warning("%s: the run's process is gone; closing the recording", path)
            return
        while True:
            try:
                msg = conn.recv() if conn.poll(0.2) else ("idle",)
            except (EOFError, OSError):
                log.warning("%s: the run's process is gone; closing the recording", path)
                break
            op = msg[0]
            if op == "close":
                break
            try:
                if op == "attach":
                    images = np.memmap(msg[1], dtype=np.dtype(msg[3]), mode="r", shape=tuple(msg[2]))
                    conn.send(("attached",))
                elif op == "copy":
                    slot0, n, ids, ts = msg[1], msg[2], msg[3], msg[4]
                    if staging.shape[0] < n:
                        staging = np.empty((max(n, 2 * staging.shape[0]), height, width), staging.dtype)
                    _gather(images, slot0, staging[:n])
                    pending = (n, ids, ts)
                    conn.send(("copied",))
                elif op == "commit":
                    damaged, lost, camera_dropped = msg[1], msg[2], msg[3]
                    if pending is not None and not failed:
                        n, ids, ts = pending
                        if damaged < n:
                            rec.write(staging[damaged:n], ids[damaged:], ts[damaged:])
                    pending = None
                    if not failed:
                        rec.dropped += lost
                        rec.camera_dropped = camera_dropped + rec._noted_camera_drops
                elif op == "drops":
                    rec.note_camera_drops(msg[1])
                elif op == "idle":
                    if not failed:
                        rec.maybe_flush()
            except BaseException as err:
                failed = True
                conn.send(("error", portable(err)))
                if op == "copy":
                    conn.send(("copied",))  # the parent is waiting for it
            conn.send(("state", rec.frames_written, rec.dropped))
    finally:
        close_and_report(conn, rec, lambda: (rec.frames_written, rec.dropped))


class RawRecorderProcess:
    """:class:`~acquisition.recording.RawRecorder` in a child process; reads a shared ring.

    The ring must be made with ``shared=True`` (``needs_shared_ring`` tells the pipeline).
    ``write_from_ring``/``maybe_flush``/``close`` belong to the one recorder thread.
    """

    needs_shared_ring = True

    def __init__(self, path: str | os.PathLike, width: int, height: int, dtype: Any = "uint8", **kwargs: Any):
        self.path = Path(path)
        self.frames_written = 0
        self.dropped = 0
        self._failed: BaseException | None = None
        self._raised = False  # the failure has been raised to the caller once
        self._closed = False
        self._ring = None
        self._lock = threading.Lock()
        self._proc, self._conn = spawn("acquisition.recorder_process")
        self._conn.send((str(self.path), int(width), int(height), np.dtype(dtype).str, dict(kwargs)))
        msg = self._wait(("opened", "error"))
        if msg is None or msg[0] != "opened":
            self._reap()
            if msg is not None:
                raise naming_the_file(self.path, msg[1])  # as the event writer's child's
            raise DeviceError(f"{self.path}: the recorder process did not start")

    # -- messages --------------------------------------------------------------------------------
    def _take(self, msg: tuple) -> None:
        op = msg[0]
        if op == "state":
            self.frames_written, self.dropped = msg[1], msg[2]
        elif op == "closed":
            self.frames_written, self.dropped = msg[2], msg[3]
        elif op == "error" and self._failed is None:
            # not logged here: it is raised to the caller (the run's recorder thread, whose "run
            # stopping" says it), and a line here said it once more, as "P: P: disk nearly full"
            self._failed = naming_the_file(self.path, msg[1])

    def _wait(self, until: tuple[str, ...], timeout: float = REPLY_TIMEOUT_S) -> tuple | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self._conn.poll(0.05):
                    if self._proc.poll() is not None:
                        return None
                    continue
                msg = self._conn.recv()
            except (EOFError, OSError):
                return None
            self._take(msg)
            if msg[0] in until:
                return msg
        return None

    def _drain(self) -> None:
        try:
            while self._conn.poll(0):
                self._take(self._conn.recv())
        except (EOFError, OSError):
            pass

    def _send(self, *msg) -> None:
        try:
            self._conn.send(msg)
        except (OSError, EOFError) as err:
            self._raised = True
            raise self._gone() from err

    def _gone(self) -> BaseException:
        if self._failed is None:
            self._failed = DeviceError(f"{self.path}: the recorder process ended (exit code {self._proc.poll()}); "
                                       f"the file holds what was flushed before")
        return self._failed

    def _raise_failed(self) -> None:
        self._raised = True
        raise self._failed

    def _check(self) -> None:
        self._drain()
        if self._failed is not None:
            self._raise_failed()
        if self._proc.poll() is not None:
            self._gone()
            self._raise_failed()

    # -- the recorder interface ------------------------------------------------------------------
    def open(self) -> "RawRecorderProcess":
        return self

    def __enter__(self) -> "RawRecorderProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_from_ring(self, reader, max_frames: int | None = None) -> int:
        """Have the child copy up to ``max_frames`` pending frames of ``reader`` and write them."""
        self._check()
        ring = reader.ring
        if self._ring is not ring:
            if ring.shared_path is None:
                raise DeviceError(f"{self.path}: the recorder process needs a shared frame ring (shared=True)")
            self._send("attach", ring.shared_path, ring.images.shape, ring.images.dtype.str)
            if self._wait(("attached",)) is None:
                self._gone()
                self._raise_failed()
            self._ring = ring
            ring.unlink_shared()  # both processes have it mapped: nothing is left behind after a crash
        missed0 = reader.missed
        batch = reader.read(ring.capacity if max_frames is None else max_frames)
        lost = reader.missed - missed0
        n = len(batch)
        damaged = 0
        if n:
            self._send("copy", int(batch.slots[0]), n, batch.frame_ids.copy(), batch.timestamps_ns.copy())
            if self._wait(("copied",)) is None:
                self._gone()
                self._raise_failed()
            # frames the camera overwrote while the child copied are torn: the child drops them
            damaged = reader.release(batch)
        if n or lost:
            self._send("commit", damaged, lost + damaged, int(ring.camera_dropped))
        return n - damaged

    def maybe_flush(self) -> bool:
        self._check()  # the child flushes on its own interval
        return False

    def note_camera_drops(self, n: int) -> None:
        self._send("drops", int(n))

    @property
    def child_pid(self) -> int:
        """The writing child's process id (for its CPU in the run's status)."""
        return self._proc.pid

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.send(("close",))
        except (OSError, EOFError):
            pass
        msg = self._wait(("closed",), timeout=120.0)
        self._reap()
        if msg is None:
            raise DeviceError(f"{self.path}: the recorder process did not close the file; it holds what was "
                              f"flushed before")
        if msg[1] is not None:
            raise naming_the_file(self.path, msg[1])
        if self._failed is not None and not self._raised:
            # a failure raised before ended the run already, and the child closed its file
            # complete: raised again here, the run's end said it twice more ("closing the raw
            # recording failed", "closing failed: raw recording"), as the event writer's did
            self._raise_failed()

    def _reap(self) -> None:
        reap(self._proc, self._conn)


def main(argv: list[str] | None = None) -> int:
    """``python -m acquisition.recorder_process FD``: serve the parent on the socket FD."""
    return serve(_child_main, "recorder", argv)


if __name__ == "__main__":
    sys.exit(main())
