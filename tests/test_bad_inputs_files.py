"""Inputs that are no readable file: a named pipe (which blocked every reader for ever), a folder
where a file is wanted, and a file this user may not read (which read as "not a readable TIFF",
"not an ONNX model" …). Each is named before it is opened, with exit status 2, no traceback."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.cli import main
from app.config import bundled_model_path
from mimlsort.errors import DataFormatError, ModelError

h5py = pytest.importorskip("h5py")
import hdf5plugin  # noqa: E402,F401

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
#: a reader of a pipe can block in C where no signal reaches it (HDF5 did, with Unblock running)
pipe_timeout = pytest.mark.timeout(60, method="thread")


def write_rtdc(path: Path, n=20) -> Path:
    with h5py.File(path, "w") as f:
        f["events/image"] = np.full((n, 40, 80), 100, np.uint8)
        f["events/frame"] = np.arange(n)
        f["events/time"] = np.arange(n) / 2000.0
        f.attrs["imaging:pixel size"] = 0.5
        f.attrs["imaging:frame rate"] = 2000.0
    return path


def error_of(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err


class Unblock:
    """Opens the pipe for writing and closes it again, over and over, once ``after_s`` have
    passed: a reader blocked on it then reads an empty file and fails, so a command that opens
    the pipe ends (with another message) instead of hanging the test."""

    def __init__(self, path: Path, after_s: float = 3.0):
        self.path, self.after_s = path, after_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.done.wait(self.after_s):
            return
        while not self.done.is_set():
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # no reader (yet)
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


@needs_fifo
@pipe_timeout
@pytest.mark.parametrize("name, argv", [
    ("rec.rtdc", ["replay", "{p}", "--out", "{t}/ev.rtdc", "--model", "none"]),
    ("rec.tif", ["replay", "{p}", "--out", "{t}/ev.rtdc", "--model", "none", "--pixel-size", "0.5", "--fps", "1000"]),
    ("rec.avi", ["replay", "{p}", "--out", "{t}/ev.rtdc", "--model", "none", "--pixel-size", "0.5"]),
    ("rec.rtdc", ["track", "{p}", "--out", "{t}/cells.csv"]),
    ("rec.rtdc", ["reanalyze", "{p}", "--out", "{t}/ev.rtdc"]),
    ("run.toml", ["config", "--check", "{p}"]),
    ("run.toml", ["run", "--config", "{p}", "--out-dir", "{t}"]),
    ("ev.rtdc", ["report", "{p}", "--out", "{t}/rep"]),
    ("ev.rtdc", ["export", "{p}", "--csv", "{t}/ev.csv"]),
], ids=["replay-rtdc", "replay-tiff", "replay-avi", "track", "reanalyze", "config-check", "run-config", "report",
        "export"])
def test_a_named_pipe_is_refused_before_it_is_opened(tmp_path, capsys, name, argv):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with Unblock(fifo):
        err = error_of(capsys, *(a.format(p=fifo, t=tmp_path) for a in argv))
    what = {"reanalyze": "an RT-DC file", "config": "a configuration file", "run": "a configuration file",
            "report": "an event file", "export": "an event file"}.get(argv[0], "a recording")
    assert f"{fifo}: is a named pipe (FIFO), not {what}" in err


@needs_fifo
@pipe_timeout
def test_config_check_and_a_model_refuse_a_named_pipe(tmp_path, capsys):
    fifo = tmp_path / "rec.rtdc"
    os.mkfifo(fifo)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[camera]\nbackend = "replay"\n[camera.replay]\npath = "{fifo}"\n[model]\npath = "none"\n')
    with Unblock(fifo):
        err = error_of(capsys, "config", "--check", cfg)
    assert f"{fifo}: is a named pipe (FIFO), not a recording" in err
    model = tmp_path / "model.onnx"
    os.mkfifo(model)
    rec = write_rtdc(tmp_path / "real.rtdc")
    with Unblock(model):
        err = error_of(capsys, "replay", rec, "--out", tmp_path / "ev.rtdc", "--model", model)
        assert f"--model: {model}: is a named pipe (FIFO), not a model file" in err  # the option given
        from inference.classifier import Classifier

        with pytest.raises(ModelError, match=f"{model}: is a named pipe"):
            Classifier(model, provider="cpu")


def test_a_folder_where_a_file_is_wanted_is_named(tmp_path, capsys):
    err = error_of(capsys, "reanalyze", tmp_path, "--out", tmp_path / "ev.rtdc")
    assert f"{tmp_path}: is a folder, not an RT-DC file" in err
    err = error_of(capsys, "replay", write_rtdc(tmp_path / "rec.rtdc"), "--out", tmp_path / "ev.rtdc",
                   "--model", tmp_path)
    assert f"--model: {tmp_path}: is a folder, not a model file" in err
    # a folder is a recording replay takes (one image per file); an empty one says so
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "the folder holds no images" in error_of(capsys, "replay", empty, "--out", tmp_path / "ev.rtdc")


# -- permission denied --------------------------------------------------------------------------
@pytest.fixture
def unreadable(monkeypatch):
    """``chmod 000`` on a path, as a user other than root sees it. Root reads such files all the
    same (these tests run as root here), so then ``os.access``, which the checks ask, is made to
    answer from the permission bits as it does for a user without the rights: the code path and
    message are those a user gets; only the kernel's verdict is stood in for."""
    made: list[Path] = []

    def deny(path: Path) -> Path:
        made.append(path)
        os.chmod(path, 0)
        return path

    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, *args, **kwargs):
            try:
                bits = os.stat(path).st_mode
            except OSError:
                return real(path, mode, *args, **kwargs)
            want = ((mode & os.R_OK) and not bits & stat.S_IRUSR) or ((mode & os.X_OK) and not bits & stat.S_IXUSR)
            return not want and real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    yield deny
    for p in made:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def write_avi(path: Path, n=6) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 250.0, (48, 32), isColor=False)
    if not writer.isOpened():
        pytest.skip("OpenCV here cannot write FFV1 AVI")
    for _ in range(n):
        writer.write(np.full((32, 48), 100, np.uint8))
    writer.release()
    return path


def test_a_recording_this_user_may_not_read_says_permission_denied(tmp_path, capsys, unreadable):
    from acquisition.replay import ReplayCamera, ReplaySettings

    tif = tmp_path / "rec.tif"
    assert cv2.imwritemulti(str(tif), [np.full((32, 48), 100, np.uint8)] * 4)
    avi = write_avi(tmp_path / "rec.avi")
    rtdc = write_rtdc(tmp_path / "rec.rtdc")
    for path in (tif, avi, rtdc):
        unreadable(path)
        err = error_of(capsys, "replay", path, "--out", tmp_path / "ev.rtdc", "--model", "none",
                       "--pixel-size", "0.5", "--fps", "1000")
        assert f"permission denied: {path}" in err, err  # not "not a readable TIFF", "not an AVI" …
    assert f"permission denied: {rtdc}" in error_of(capsys, "reanalyze", rtdc, "--out", tmp_path / "ev.rtdc")
    # one image of a folder: named with its frame, where it was "cannot be decoded (corrupt or truncated)"
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"f{i}.png"), np.full((32, 48), 100, np.uint8))
    unreadable(folder / "f2.png")
    with ReplayCamera(ReplaySettings(path=str(folder), pixel_size_um=0.5, fps=1000.0)) as cam:
        cam.start()
        with pytest.raises(DataFormatError, match=rf"frame 2 \(f2\.png\): permission denied: .*f2\.png"):
            while cam.read(0.1) is not None:
                pass
    unreadable(folder)
    err = error_of(capsys, "replay", folder, "--out", tmp_path / "ev.rtdc", "--model", "none")
    assert f"permission denied: {folder}" in err


def test_a_model_this_user_may_not_read_says_permission_denied(tmp_path, capsys, unreadable):
    from inference.classifier import Classifier

    model = tmp_path / "model.onnx"
    shutil.copy(bundled_model_path(), model)
    unreadable(model)
    with pytest.raises(ModelError, match=f"permission denied: {model}"):  # was "not an ONNX model"
        Classifier(model, provider="cpu")
    err = error_of(capsys, "replay", write_rtdc(tmp_path / "rec.rtdc"), "--out", tmp_path / "ev.rtdc",
                   "--model", model)
    assert f"--model: permission denied: {model}" in err


@needs_fifo
@pipe_timeout
def test_a_named_pipe_as_the_output_does_not_block_the_check(tmp_path, capsys):
    # looking whether an existing output holds a measurement opened it, and waited for a writer
    fifo = tmp_path / "ev.rtdc"
    os.mkfifo(fifo)
    with Unblock(fifo, after_s=20.0):
        t0 = time.monotonic()
        code = main(["replay", str(write_rtdc(tmp_path / "real.rtdc")), "--out", str(fifo), "--model", "none"])
        assert time.monotonic() - t0 < 15.0
    assert code != 0 and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("section, text", [("camera", '[camera]\nbackend = "replay"\n[camera.replay]\npath = "rec.rtdc"\n'),
                                           ("model", '[model]\npath = "models/mine.onnx"\n')])
def test_a_relative_path_not_found_says_which_folder_it_was_taken_from(tmp_path, monkeypatch, capsys, section, text):
    """Relative paths in a configuration are taken from the current folder: "rec.rtdc does not
    exist", while it lay beside RUN.toml, did not say where it had been looked for."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "elsewhere").mkdir()
    cfg = tmp_path / "cfg" / "run.toml"
    cfg.write_text(text)
    monkeypatch.chdir(tmp_path / "elsewhere")
    err = error_of(capsys, "config", "--check", cfg)
    assert f"relative to the current folder {tmp_path / 'elsewhere'}" in err, err


WRITER = """
import sys
import numpy as np
from acquisition.recording import RawRecorder
with RawRecorder(sys.argv[1], 80, 40, np.uint8, pixel_size_um=0.5, fps=2000.0) as rec:
    rec.write(np.full((100, 40, 80), 100, np.uint8), np.arange(100), np.arange(100) * 500_000)
    rec.flush()
    rec.write(np.full((50, 40, 80), 100, np.uint8), np.arange(100, 150), np.arange(100, 150) * 500_000)
    print("recording", flush=True)
    sys.stdin.read()  # recording on until the test closes our stdin
"""


@pytest.mark.timeout(120, method="thread")
def test_a_recording_still_being_written_is_refused_naming_the_file(tmp_path, capsys):
    # a replay of a recording its recorder still writes saw the last flush only and replayed it
    # as a complete, shorter recording ("completed: the source ended", exit 0)
    import subprocess
    import sys

    path = tmp_path / "live.rtdc"
    repo = Path(__file__).resolve().parents[1]
    with subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=repo, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as writer:
        try:
            assert writer.stdout.readline() == "recording\n"
            for argv in (["track", path, "--out", tmp_path / "cells.csv"],
                         ["replay", path, "--out", tmp_path / "ev.rtdc", "--model", "none"]):
                err = error_of(capsys, *argv)
                assert f"{path}: still open for writing by another program" in err, err
            assert not (tmp_path / "cells.csv").exists() and not (tmp_path / "ev.rtdc").exists()
        finally:
            writer.stdin.close()
            assert writer.wait(60) == 0
    # closed, it plays whole
    from acquisition.replay import ReplayCamera, ReplaySettings

    with ReplayCamera(ReplaySettings(path=str(path))) as cam:
        assert cam.info.frame_count == 150
