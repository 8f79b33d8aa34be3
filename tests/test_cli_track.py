"""``mimlsort track --config``: a recording tracked with a configuration's tracking settings and
geometry, the command line's options winning over it."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from app.cli import main


def _column(path, name) -> np.ndarray:
    with open(path, newline="") as fh:
        return np.array([float(r[name]) for r in csv.DictReader(fh)])


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    path = tmp_path_factory.mktemp("track") / "rec.rtdc"
    assert main(["simulate", "--out", str(path), "--seconds", "0.5", "--seed", "3"]) == 0
    return path


def test_track_takes_a_configurations_geometry(rec, tmp_path):
    auto, given = tmp_path / "auto.csv", tmp_path / "given.csv"
    assert main(["track", str(rec), "--out", str(auto)]) == 0
    cfg = tmp_path / "run.toml"
    # half the simulated 40 µm constriction (44-84 µm): the cells take half the time through it
    cfg.write_text("[tracking.geometry]\nconstriction_start_um = 54.0\nconstriction_end_um = 74.0\n")
    assert main(["track", str(rec), "--out", str(given), "--config", str(cfg)]) == 0
    t_auto, t_given = _column(auto, "transit_time_ms"), _column(given, "transit_time_ms")
    assert len(t_auto) >= 10 and len(t_given) >= 10
    assert np.nanmedian(t_given) / np.nanmedian(t_auto) == pytest.approx(0.5, abs=0.08)


def test_the_command_lines_threshold_wins_over_the_configurations(rec, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[tracking]\nthreshold = -120.0\n")  # darker than any cell: nothing is found
    none, found = tmp_path / "none.csv", tmp_path / "found.csv"
    assert main(["track", str(rec), "--out", str(none), "--config", str(cfg)]) == 0
    assert len(_column(none, "transit_time_ms")) == 0
    assert main(["track", str(rec), "--out", str(found), "--config", str(cfg), "--threshold", "-6"]) == 0
    assert len(_column(found, "transit_time_ms")) >= 10


def test_a_bad_configuration_is_named(rec, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text("[tracking]\nthreshhold = -6.0\n")
    assert main(["track", str(rec), "--out", str(tmp_path / "x.csv"), "--config", str(cfg)]) != 0
    assert "threshhold" in capsys.readouterr().err


def test_a_looping_configuration_is_tracked_once_and_said_so(rec, tmp_path, capsys):
    # track played the recording once with camera.replay.loop = true and said nothing of the key
    # (replay ran until Ctrl-C with it); both now say it is ignored
    cfg = tmp_path / "run.toml"
    cfg.write_text("[camera.replay]\nloop = true\n")
    out = tmp_path / "once.csv"
    assert main(["track", str(rec), "--out", str(out), "--config", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "camera.replay.loop = true" in err and "`mimlsort track` plays the recording once" in err, err
    assert len(_column(out, "transit_time_ms")) >= 10


def test_a_recording_cut_short_keeps_the_cells_of_its_frames_before_the_cut(rec, tmp_path, capsys):
    # a TIFF copy cut part way: track named the page and exited 2 without writing a CSV, so the
    # cells of every page before it were lost (replay keeps its events: exit 1, the file written)
    import cv2
    import h5py

    with h5py.File(rec) as f:
        frames = f["events/image"][:1200]
        px, fps = str(f.attrs["imaging:pixel size"]), str(f.attrs["imaging:frame rate"])
    whole, cut = tmp_path / "first.tif", tmp_path / "cut.tif"
    assert cv2.imwritemulti(str(tmp_path / "all.tif"), list(frames), [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    data = (tmp_path / "all.tif").read_bytes()
    cut.write_bytes(data[:len(data) * 2 // 3])
    opts = ["--pixel-size", px, "--fps", fps]
    assert main(["track", str(cut), "--out", str(tmp_path / "cut.csv"), *opts]) == 1
    err = capsys.readouterr().err
    page = int(err.split(f"{cut}: frame ")[1].split(":")[0])
    assert 600 < page < 800, err
    assert cv2.imwritemulti(str(whole), list(frames[:page]), [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    assert main(["track", str(whole), "--out", str(tmp_path / "first.csv"), *opts]) == 0
    kept = (tmp_path / "cut.csv").read_text()
    assert kept == (tmp_path / "first.csv").read_text() and len(kept.splitlines()) > 5


def test_track_shows_its_progress_with_rate_and_eta(rec, tmp_path, capsys):
    # replay draws a bar; track said nothing until it had tracked the whole recording
    import h5py

    with h5py.File(rec) as f:
        n = len(f["events/image"])
    assert main(["track", str(rec), "--out", str(tmp_path / "cells.csv")]) == 0
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "100%" in last and "frame/s" in last and "<00:00" in last, err
    assert f"{n / 1000:.2f}k/{n / 1000:.2f}k" in last, last


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_keeps_the_cells_tracked_so_far(rec, tmp_path, capsys, monkeypatch, sig, code):
    # Ctrl-C (or SIGTERM) during a track lost every cell tracked so far with the KeyboardInterrupt
    import os
    import signal

    from tqdm.auto import tqdm

    update = tqdm.update

    def signal_at_frame_1024(self, k=1):
        update(self, k)
        if self.n >= 1024 and not getattr(self, "signalled", False):
            self.signalled = True
            os.kill(os.getpid(), getattr(signal, sig))  # the real signal, at a known frame

    monkeypatch.setattr(tqdm, "update", signal_at_frame_1024)
    out = tmp_path / "cells.csv"
    assert main(["track", str(rec), "--out", str(out)]) == code
    captured = capsys.readouterr()
    assert f"interrupted ({sig})" in captured.err
    assert captured.out.startswith("1024 frames -> ") and "not tracked" in captured.out, captured.out
    rows = out.read_text().splitlines()
    assert rows[0].startswith("index,track_id") and len(rows) > 3
    # the same cells as the first 1024 frames give on their own
    cfg = tmp_path / "first.toml"
    cfg.write_text("[camera.replay]\nstop_frame = 1024\n")
    monkeypatch.setattr(tqdm, "update", update)
    assert main(["track", str(rec), "--out", str(tmp_path / "first.csv"), "--config", str(cfg)]) == 0
    assert out.read_text() == (tmp_path / "first.csv").read_text()


def test_a_recording_refused_leaves_no_folder_for_the_output(tmp_path, capsys):
    # the folder --out names was made before the recording was opened, and stayed behind empty
    out = tmp_path / "results" / "cells.csv"
    assert main(["track", str(tmp_path / "missing.rtdc"), "--out", str(out)]) == 2
    assert "missing.rtdc does not exist" in capsys.readouterr().err
    assert not out.parent.exists()
