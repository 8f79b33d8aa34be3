"""Malformed RT-DC files given to ``reanalyze`` and ``replay``: one line that names the file and the
key at fault, exit status 2 as for every other input error, no traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from tests.test_bad_inputs_files import write_rtdc
from tests.test_cli_inputs import files  # noqa: F401 (a fixture: a short recording and its event file)

h5py = pytest.importorskip("h5py")
import hdf5plugin  # noqa: E402,F401


def write_events(path, n=6, h=40, w=80, image=None, attrs=None, **columns):
    """A small RT-DC file of ``n`` event images with their frame, time and position columns."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        ev = f.create_group("events")
        ev["image"] = image if image is not None else rng.integers(90, 110, (n, h, w)).astype(np.uint8)
        cols = {"frame": np.arange(n) * 50 + 100, "time": (np.arange(n) * 50 + 100) / 2000.0,
                "pos_x": np.full(n, 20.0), "pos_y": np.full(n, 10.0), **columns}
        for k, v in cols.items():
            ev[k] = v
        for k, v in {"imaging:pixel size": 0.5, "imaging:frame rate": 2000.0, **(attrs or {})}.items():
            f.attrs[k] = v
    return path


def error_of(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("attrs, key, shown", [
    ({"imaging:frame rate": "fast"}, "imaging:frame rate", "'fast'"),
    ({"imaging:pixel size": "0.5um"}, "imaging:pixel size", "'0.5um'"),
    ({"imaging:frame rate": np.nan}, "imaging:frame rate", "'nan'"),
    ({"imaging:pixel size": np.nan}, "imaging:pixel size", "'nan'"),
    ({"imaging:pixel size": -0.5}, "imaging:pixel size", "'-0.5'"),
], ids=["fps-text", "px-text", "fps-nan", "px-nan", "px-negative"])
def test_reanalyze_names_a_metadata_value_that_is_no_number(tmp_path, capsys, attrs, key, shown):
    # text gave a ValueError traceback, a NaN pixel size one from int(), a NaN frame rate
    # "fps: must be > 0, got nan" without the file
    src = write_events(tmp_path / "bad.rtdc", attrs=attrs)
    err = error_of(capsys, "reanalyze", str(src), "--out", str(tmp_path / "out.rtdc"))
    assert f"{src}: '{key}' is {shown}, not a number > 0" in err
    assert not (tmp_path / "out.rtdc").exists()


@pytest.mark.parametrize("image, shape", [
    (np.full((6, 40, 80, 3), 100, np.uint8), "(6, 40, 80, 3)"),  # RGB
    (np.full((6, 80), 100, np.uint8), "(6, 80)"),  # one row per event
], ids=["rgb", "2-d"])
def test_reanalyze_refuses_images_that_are_not_grey_stacks(tmp_path, capsys, image, shape):
    src = write_events(tmp_path / "bad.rtdc", image=image)
    err = error_of(capsys, "reanalyze", str(src), "--out", str(tmp_path / "out.rtdc"))
    assert f"{src}: events/image holds uint8 of shape {shape}; reanalysis takes grey images" in err


@pytest.mark.parametrize("name", ["pos_x", "time", "frame"])
def test_reanalyze_refuses_a_feature_column_shorter_than_the_images(tmp_path, capsys, name):
    src = write_events(tmp_path / "bad.rtdc", **{name: np.arange(3, dtype=float)})
    err = error_of(capsys, "reanalyze", str(src), "--out", str(tmp_path / "out.rtdc"))
    assert f"{src}: events/{name} has shape (3,), expected (6,) like events/image" in err


@pytest.mark.parametrize("key, value", [
    ("user:time offset ns", "soon"), ("user:time offset ns", np.nan),
    ("user:bit depth", "twelve"), ("user:bit depth", np.nan), ("user:bit depth", 12),  # 12 bits in uint8
], ids=["offset-text", "offset-nan", "bits-text", "bits-nan", "bits-too-many"])
def test_replay_names_a_bad_attribute_of_its_own(tmp_path, capsys, key, value):
    # int() on them gave a ValueError traceback
    n = 20
    rec = write_rtdc(tmp_path / "rec.rtdc", n)
    with h5py.File(rec, "a") as f:
        f.attrs[key] = value
    err = error_of(capsys, "replay", str(rec), "--out", str(tmp_path / "ev.rtdc"), "--model", "none")
    assert f"{rec}: attribute '{key}' is " in err and "not a whole number" in err
    assert not (tmp_path / "ev.rtdc").exists()


# -- event files given where a recording of every frame is wanted -----------------------------------
SHARED_RTDC = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "data" / "rtdc",
                                Path("/work/shared/data/rtdc")) if p.is_dir()), None)
#: the shared real files hold one image per event (ShapeIn, dcnum, CytoShot; README there); the
#: empty one is left to say that it holds no frames
REAL_EVENTS = sorted(p for p in SHARED_RTDC.glob("*.rtdc") if p.name != "M001_data.rtdc") if SHARED_RTDC else []


def test_an_event_file_is_not_replayed_or_tracked_as_frames(files, tmp_path, capsys):
    # its images went to the tracker as consecutive frames, and cells of different events were
    # linked into tracks that never were
    _, ev = files
    hint = f"measure its events with `mimlsort reanalyze {ev} --out EVENTS.rtdc`"
    err = error_of(capsys, "replay", str(ev), "--out", str(tmp_path / "again.rtdc"), "--model", "none")
    assert f"{ev}: an event file (mimlsort's event writer wrote it), not a recording of every frame" in err
    assert hint in err and not (tmp_path / "again.rtdc").exists()
    assert hint in error_of(capsys, "track", str(ev), "--out", str(tmp_path / "cells.csv"))
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[camera]\nbackend = "replay"\n[camera.replay]\npath = "{ev}"\n[model]\npath = "none"\n'
                   f'[output]\nfolder = "{tmp_path / "runs"}"\n')
    assert hint in error_of(capsys, "config", "--check", str(cfg))
    assert main(["run", "--config", str(cfg)]) == 2
    assert hint in capsys.readouterr().err
    assert not list((tmp_path / "runs").glob("*.rtdc"))  # the names it reserved are gone again


@pytest.mark.skipif(not REAL_EVENTS, reason="../shared/data/rtdc not beside the repository")
@pytest.mark.parametrize("path", REAL_EVENTS, ids=lambda p: p.name)
def test_real_event_files_are_refused_with_their_sign(tmp_path, capsys, path):
    err = error_of(capsys, "track", str(path), "--out", str(tmp_path / "cells.csv"))
    sign = "its frame numbers step by" if path.name == "file_with_variable_length_logs.rtdc" else "events/mask"
    assert f"{path}: an event file (" in err and sign in err and "mimlsort reanalyze" in err


def raw(path, frames, **attrs):
    with h5py.File(path, "w") as f:
        f["events/image"] = np.full((len(frames), 40, 80), 100, np.uint8)
        f["events/frame"] = frames
        f["events/time"] = np.asarray(frames) / 2000.0
        f.attrs.update({"imaging:pixel size": 0.5, "imaging:frame rate": 2000.0, **attrs})
    return path


def test_recordings_of_every_frame_are_not_taken_for_event_files(files, tmp_path):
    from acquisition.replay import ReplayCamera, ReplaySettings, event_file_sign, refuse_event_file

    dclab = pytest.importorskip("dclab")
    from dclab.rtdc_dataset.writer import RTDCWriter

    dropped = np.arange(60)
    dropped[20:] += 5  # frames the camera dropped
    written = tmp_path / "dclab.rtdc"
    with RTDCWriter(written, mode="reset") as hw:  # a raw recording as dclab writes one
        hw.store_metadata({"imaging": {"pixel size": 0.5, "frame rate": 2000.0, "roi size x": 80, "roi size y": 40},
                           "experiment": {"sample": "raw", "run index": 1, "date": "2024-01-01", "time": "10:00:00"},
                           "setup": {"channel width": 20.0, "flow rate": 0.04, "medium": "other"}})
        hw.store_feature("image", np.full((60, 40, 80), 100, np.uint8))
        hw.store_feature("frame", dropped + 100)
        hw.store_feature("time", (dropped + 100) / 2000.0)
    with dclab.new_dataset(written) as ds:
        assert len(ds) == 60
    noframes = raw(tmp_path / "noframes.rtdc", np.arange(60))
    with h5py.File(noframes, "a") as f:
        del f["events/frame"]
    # mimlsort's recorder keeping every third frame (or a camera whose ids count frames lost
    # before the host) was refused here and by reanalyze, each pointing to the other
    every3 = raw(tmp_path / "every3.rtdc", np.arange(0, 180, 3), **{"user:recorder dropped frames": 0})
    # float32 ids past 2**24 collapse into repeats ("several images share frame 16777216")
    high = raw(tmp_path / "high.rtdc", (2 ** 24 + np.arange(60)).astype(np.float32))
    for path in (files[0], raw(tmp_path / "drops.rtdc", dropped), raw(tmp_path / "every2.rtdc", np.arange(0, 120, 2)),
                 noframes, written, every3, high):
        assert event_file_sign(path) == "", path
        refuse_event_file(path)
        with ReplayCamera(ReplaySettings(path=str(path))):
            pass
    assert event_file_sign(raw(tmp_path / "shared.rtdc", [1, 2, 2, 3])) == "several images share frame 2"
    assert event_file_sign(raw(tmp_path / "every3.rtdc", np.arange(0, 180, 3))) == "its frame numbers step by 3 (median)"


def test_a_long_event_file_is_refused_before_its_times_are_judged(tmp_path, capsys):
    # events are written as cells leave, so once cells overlap their times run back: replay
    # said "its times must increase" and never pointed to reanalyze
    rec, ev = tmp_path / "rec.rtdc", tmp_path / "ev.rtdc"
    assert main(["simulate", "--out", str(rec), "--seconds", "2", "--seed", "3"]) == 0
    assert main(["replay", str(rec), "--out", str(ev), "--model", "none"]) == 0
    with h5py.File(ev, "r") as f:
        assert (np.diff(f["events/time"][:]) < 0).any()  # the case: times that run back
    for argv in (["replay", ev, "--out", tmp_path / "again.rtdc", "--model", "none"],
                 ["track", ev, "--out", tmp_path / "cells.csv"]):
        err = error_of(capsys, *map(str, argv))
        assert "an event file (mimlsort's event writer wrote it)" in err and "times must increase" not in err


def test_a_replayed_frame_rate_that_is_text_is_named_and_the_settings_stand_in(files, tmp_path, capsys, caplog):
    # it was taken for a missing one without a word ("does not say its frame rate")
    import shutil

    rec = tmp_path / "rec.rtdc"
    shutil.copy(files[0], rec)
    with h5py.File(rec, "a") as f:
        f.attrs["imaging:frame rate"] = "fast"
        del f["events/time"]  # else the frame rate is worked out from frame numbers and times
    with caplog.at_level("WARNING", logger="acquisition.replay"):
        err = error_of(capsys, "replay", str(rec), "--out", str(tmp_path / "a.rtdc"), "--model", "none")
    assert "does not say its frame rate" in err
    assert f"{rec}: 'imaging:frame rate' is 'fast', not a number > 0: passed over" in caplog.text
    assert main(["replay", str(rec), "--out", str(tmp_path / "b.rtdc"), "--model", "none", "--fps", "4000"]) == 0


def test_an_event_file_with_compressed_columns_is_refused_in_a_fresh_process(tmp_path):
    # CytoShot and dcnum compress their columns with Zstd: read before anything had imported
    # hdf5plugin (a command's own process, unlike this one), the mask's column failed to read,
    # the file was taken for a recording and `mimlsort track` tracked its event images
    import subprocess
    import sys

    path = tmp_path / "zstd.rtdc"
    with h5py.File(path, "w") as f:
        zstd = hdf5plugin.Zstd()
        f.create_dataset("events/image", data=np.full((6, 40, 80), 100, np.uint8), chunks=(1, 40, 80), **zstd)
        f.create_dataset("events/mask", data=np.zeros((6, 40, 80), bool), chunks=(1, 40, 80), **zstd)
        f.create_dataset("events/frame", data=np.arange(6) * 50 + 100, chunks=(6,), **zstd)
        f.attrs.update({"imaging:pixel size": 0.5, "imaging:frame rate": 2000.0})
    code = ("import sys; from acquisition.replay import event_file_sign; "
            "assert 'hdf5plugin' not in sys.modules; print(event_file_sign(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout
    assert out.strip() == "it holds events/mask of segmented events"
