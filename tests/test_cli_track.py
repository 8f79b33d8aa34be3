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
