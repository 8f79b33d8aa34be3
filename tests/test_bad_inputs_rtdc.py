"""Malformed RT-DC files given to ``reanalyze`` and ``replay``: one line that names the file and the
key at fault, exit status 2 as for every other input error, no traceback."""

from __future__ import annotations

import numpy as np
import pytest

from app.cli import main

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
    rec = tmp_path / "rec.rtdc"
    with h5py.File(rec, "w") as f:
        f["events/image"] = np.full((n, 40, 80), 100, np.uint8)
        f["events/frame"] = np.arange(n)
        f["events/time"] = np.arange(n) / 2000.0
        f.attrs["imaging:pixel size"] = 0.5
        f.attrs["imaging:frame rate"] = 2000.0
        f.attrs[key] = value
    err = error_of(capsys, "replay", str(rec), "--out", str(tmp_path / "ev.rtdc"), "--model", "none")
    assert f"{rec}: attribute '{key}' is " in err and "not a whole number" in err
    assert not (tmp_path / "ev.rtdc").exists()
