"""Helper processes of a run (event writer, raw recorder): start, serve, reap.

A child is a fresh interpreter running ``python -m MODULE FD`` on one end of a socket pair — not
fork (the run's threads hold locks mid-use) and not multiprocessing's spawn (it re-imports the
caller's ``__main__`` script). The child ignores SIGINT/SIGTERM: they reach the whole process
group, and the parent, which handles them, tells it to close; a parent that dies anyway closes
the socket, which the child takes as the signal to close its file.

A child runs under SCHED_BATCH (Linux): it does throughput work, and waking up it must not
preempt the run's sort thread, which waits for frames in short sleeps. It keeps its fair share of
the CPU (a lower nice value would let it starve under overload, and records queue without end).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection

from mimlsort.errors import DeviceError


def portable(err: BaseException) -> BaseException:
    """The exception itself if it survives pickling (to travel to the parent), else a DeviceError."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return DeviceError(f"{type(err).__name__}: {err}")


def naming_the_file(path, err: BaseException) -> BaseException:
    """``err`` as a child sent it where it names ``path`` (most do: "P: disk nearly full"), else
    the same type with the file put in front (a DeviceError where the type will not take a
    message): a parent that put the path in front of every error said "P: P: …"."""
    text = str(err)
    if str(path) in text:
        return err
    try:
        named = type(err)(f"{path}: {text}")
    except Exception:  # noqa: BLE001 - an exception type with other constructor arguments
        named = DeviceError(f"{path}: {type(err).__name__}: {text}")
    named.__cause__ = err
    return named


def close_and_report(conn: Connection, resource, counters: Callable[[], tuple]) -> None:
    """Close the child's file and tell the parent how that went: ("closed", error or None, *counters)."""
    err = None
    try:
        resource.close()
    except BaseException as e:
        err = portable(e)
    try:
        conn.send(("closed", err, *counters()))
    except (OSError, EOFError):
        pass  # the parent is gone: the file is closed, nobody is left to tell


def spawn(module: str) -> tuple[subprocess.Popen, Connection]:
    """Start ``python -m module FD``; returns the process and the parent's end of the socket."""
    ours, theirs = socket.socketpair()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-m", module, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                            env=env, stdin=subprocess.DEVNULL)
    theirs.close()
    return proc, Connection(ours.detach())


def reap(proc: subprocess.Popen, conn: Connection, timeout_s: float = 10.0) -> None:
    """Wait for the child to end (kill it if it does not) and close the socket."""
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5.0)
    conn.close()


def batch_scheduling() -> bool:
    """Put this process under SCHED_BATCH: it does not preempt others when it wakes, and keeps
    the same share of the CPU (figures in NOTES.md). Any process may choose it; False where the
    OS has no such policy."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


def serve(serve_fn: Callable[[Connection], None], label: str, argv: list[str] | None = None) -> int:
    """The child's ``main``: serve the parent on the socket named by ``argv[0]``."""
    argv = sys.argv[1:] if argv is None else argv
    batch_scheduling()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s %(levelname)s %(name)s ({label}): %(message)s")
    conn = Connection(int(argv[0]))
    try:
        serve_fn(conn)
    except (BrokenPipeError, ConnectionResetError):
        # the parent died before it heard from us (killed while starting): a line, not a traceback
        logging.getLogger(label).warning("the run's process is gone")
        return 1
    finally:
        conn.close()
    return 0
