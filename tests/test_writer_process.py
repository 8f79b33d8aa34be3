"""The event writer in a child process: same file as in-process, errors come back, crashes lose nothing sent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from app.storage import EventWriter, read_events
from app.writer_process import EventWriterProcess
from mimlsort.errors import DataFormatError, DeviceError
from tests.test_storage import ROOT, _child_env, make_meta, make_records


def _same_features(a, b) -> None:
    fa, ra = read_events(a)
    fb, rb = read_events(b)
    assert ra.n_events == rb.n_events and ra.complete and rb.complete
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert np.array_equal(fa[k], fb[k], equal_nan=fa[k].dtype.kind == "f"), k


def test_child_process_writes_the_same_file_as_the_thread_writer(tmp_path):
    records = make_records(40, seed=3)
    with EventWriter(tmp_path / "thread.rtdc", meta=make_meta()) as w:
        w.write(records[:25])
        w.write(records[25:])
        w.log("a line")
    with EventWriterProcess(tmp_path / "process.rtdc", meta=make_meta()) as p:
        p.write(records[:25])
        p.write(records[25:])
        p.log("a line")
        p.flush()
        assert p.events_written == 40
        assert p.bytes_written == os.path.getsize(tmp_path / "process.rtdc")
        if hasattr(os, "SCHED_BATCH"):  # throughput work: it must not preempt the sort thread
            assert os.sched_getscheduler(p._proc.pid) == os.SCHED_BATCH
    _same_features(tmp_path / "thread.rtdc", tmp_path / "process.rtdc")
    _f, run = read_events(tmp_path / "process.rtdc")
    assert any("a line" in line for line in run.run_log)


def test_open_errors_are_raised_by_the_constructor(tmp_path):
    (tmp_path / "exists.rtdc").write_bytes(b"")
    with pytest.raises(Exception) as thread_err:
        EventWriter(tmp_path / "exists.rtdc", meta=make_meta())
    with pytest.raises(type(thread_err.value), match="exists.rtdc"):
        EventWriterProcess(tmp_path / "exists.rtdc", meta=make_meta())


def test_a_bad_event_in_the_child_is_raised_in_the_parent_and_the_file_stays_readable(tmp_path, caplog):
    path = tmp_path / "bad.rtdc"
    good = make_records(5, seed=1)
    bad = make_records(1, seed=2, start=5)[0]
    object.__setattr__(bad, "probabilities", np.ones(7, np.float32))  # the file has two classes
    p = EventWriterProcess(path, meta=make_meta())
    p.write(good)
    p.flush()
    p.write([bad])
    with pytest.raises(DataFormatError, match="bad.rtdc.*7 probabilities") as raised:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the error arrives with the child's answer
            p.write([])
            time.sleep(0.05)
    # the parent's log line said the path twice ("P: P: event 5: …"); then it said the error
    # beside the raise, whose catcher (the run's "run stopping") says it again: the raise alone now
    logged = [r.getMessage() for r in caplog.records if r.name in ("app.writer_process", "app.storage")]
    assert logged == [] and str(raised.value).startswith(f"{path}: event 5: 7 probabilities"), logged
    # raised once: the close that follows closes the file complete, as the in-process writer's
    # does, and does not raise it again (the daemon said it a second time, as "closing failed")
    p.close()
    assert read_events(path)[1].n_events == 5 and read_events(path)[1].complete


def test_a_child_error_that_names_no_file_is_raised_naming_it(tmp_path):
    # the parent's log line put the path in front; with the line gone, the raise must name it
    path = tmp_path / "odd.rtdc"
    p = EventWriterProcess(path, meta=make_meta())
    p.write([object()])  # no event record: the child's AttributeError names no file
    with pytest.raises(AttributeError) as raised:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            p.write([])
            time.sleep(0.05)
    assert str(raised.value).startswith(f"{path}: ") and str(raised.value).count(str(path)) == 1, raised.value
    p.close()


def test_a_child_that_fails_opening_the_file_is_raised_naming_it(tmp_path):
    """The child's error at the open was raised as it came: most name the file (a path that is a
    folder: "exists"; a missing or read-only folder), one that did not was raised naming none."""
    path = tmp_path / "opt.rtdc"
    with pytest.raises(TypeError) as raised:
        EventWriterProcess(path, meta=make_meta(), no_such_option=1)
    assert str(raised.value).startswith(f"{path}: ") and "no_such_option" in str(raised.value), raised.value
    folder = tmp_path / "folder.rtdc"
    folder.mkdir()
    with pytest.raises(Exception) as raised:
        EventWriterProcess(folder, meta=make_meta())
    assert str(raised.value).count(str(folder)) == 1, raised.value


def test_a_recorder_child_that_fails_opening_the_file_is_raised_naming_it(tmp_path):
    from acquisition.recorder_process import RawRecorderProcess

    path = tmp_path / "opt_raw.rtdc"
    with pytest.raises(TypeError) as raised:
        RawRecorderProcess(path, 64, 32, no_such_option=1)
    assert str(raised.value).startswith(f"{path}: ") and "no_such_option" in str(raised.value), raised.value


def test_a_child_error_the_caller_never_heard_of_is_raised_by_close(tmp_path):
    path = tmp_path / "bad.rtdc"
    bad = make_records(1, seed=2)[0]
    object.__setattr__(bad, "probabilities", np.ones(7, np.float32))
    p = EventWriterProcess(path, meta=make_meta())
    p.write([bad])
    with pytest.raises(DataFormatError, match="bad.rtdc: event 0: 7 probabilities"):
        p.close()


def test_a_dead_writer_process_is_a_device_error_naming_the_file(tmp_path):
    p = EventWriterProcess(tmp_path / "gone.rtdc", meta=make_meta())
    p.write(make_records(3))
    p.flush()
    p._proc.kill()  # the test's one reach inside: there is no public way to crash the child
    p._proc.wait(10)
    with pytest.raises(DeviceError, match="gone.rtdc.*writer process ended"):
        p.write(make_records(1, start=3))
    with pytest.raises(DeviceError):
        p.close()
    assert read_events(tmp_path / "gone.rtdc")[1].n_events == 3


_PARENT = textwrap.dedent("""
    import sys, time
    from tests.test_storage import make_records, make_meta
    from app.writer_process import EventWriterProcess
    w = EventWriterProcess(sys.argv[1], meta=make_meta(), flush_interval_s=1000, max_buffered=10**6)
    w.write(make_records(50, seed=1))
    w.log("sent before the kill")
    print(w._proc.pid, flush=True)
    time.sleep(60)
""")


def test_sigkill_of_the_run_lets_the_child_close_the_file_with_everything_sent(tmp_path):
    path = tmp_path / "killed.rtdc"
    proc = subprocess.Popen([sys.executable, "-c", _PARENT, str(path)], cwd=ROOT, env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        time.sleep(0.5)  # the writes are in the pipe; nothing has been flushed (interval 1000 s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{child}"), "the writer process outlived its parent"
    feats, run = read_events(path)
    assert run.complete and run.n_events == 50
    assert np.array_equal(feats["event_index"], np.arange(50))
    assert any("sent before the kill" in line for line in run.run_log)


_FLOODING_PARENT = textwrap.dedent("""
    import os, signal, sys
    from tests.test_storage import make_records, make_meta
    from app.writer_process import EventWriterProcess
    w = EventWriterProcess(sys.argv[1], meta=make_meta(), max_buffered=1)
    recs = make_records(200, seed=1, snapshot=False)
    for r in recs:  # one record a message: the child replies to each, and is still replying at the kill
        w.write([r])
    print(w._proc.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_child_whose_parent_died_mid_reply_still_writes_everything_it_was_sent(tmp_path):
    """A reply to a killed parent fails (EPIPE): the child went on to close the file then,
    dropping the records still in the socket (167 of 200), and called the file clean."""
    path = tmp_path / "flood.rtdc"
    proc = subprocess.run([sys.executable, "-c", _FLOODING_PARENT, str(path)], cwd=ROOT, env=_child_env(),
                          capture_output=True, text=True, timeout=120)
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.02)
    feats, run = read_events(path)
    assert run.n_events == 200 and run.complete
    assert "killed" in run.error  # the file says that its run did not close it
