"""Malformed training data and run configurations are refused with a message that names the file
or the key and says what to do (an audit's findings: tracebacks, silent garbage, unclear words)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from tests.test_cli_train import _event_table, _events


def _labelled_table(folder: Path, encoding: str) -> Path:
    """An event table whose class names hold letters outside ASCII, saved in ``encoding``."""
    src = _event_table(folder, _events(4, 0, 1))
    rows = list(csv.reader(src.read_text(encoding="utf-8").splitlines()))
    rows[0].append("label")
    for i, r in enumerate(rows[1:]):
        r.append("µcell" if i % 2 else "cellule_é")
    path = folder / f"{encoding}.csv"
    with path.open("w", newline="", encoding=encoding) as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_a_csv_not_in_utf8_is_named_and_not_guessed(tmp_path, capsys):
    path = _labelled_table(tmp_path / "run", "latin-1")
    assert main(["train", str(path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: not UTF-8 text (byte 0xe9" in err and "save the file as UTF-8" in err
    assert not (tmp_path / "m").exists()


def test_a_csv_with_a_byte_order_mark_and_then_latin_1_names_the_right_byte(tmp_path):
    # the offset counted from the end of the mark: "t2.csv:1: ... byte 0x70"
    from inference.training.data import _open_csv
    from mimlsort.errors import DataFormatError

    path = tmp_path / "t2.csv"
    path.write_bytes(b"\xef\xbb\xbfcell ID,Cell Type\n\xe9,T4\n")
    with pytest.raises(DataFormatError, match=r"t2\.csv:2: not UTF-8 text \(byte 0xe9"):
        _open_csv(path)


def test_a_csv_with_a_byte_order_mark_reads(tmp_path):
    from inference.training.data import dataset_from_path

    ds = dataset_from_path(_labelled_table(tmp_path / "run", "utf-8-sig"))
    assert ds.class_names == ("cellule_é", "µcell") and len(ds) == 4


def test_a_16_bit_crop_among_8_bit_ones_is_named(tmp_path, capsys):
    """One 16-bit PNG set the fixed pixel normalisation of every crop (mean 1218, sd 6719), and the
    model trained without a word."""
    import cv2

    a = _event_table(tmp_path / "runA", _events(6, 0, 1))
    b = _event_table(tmp_path / "runB", _events(6, 1, 2))
    odd = tmp_path / "runA" / "3_first.png"
    cv2.imwrite(str(odd), cv2.imread(str(odd), cv2.IMREAD_UNCHANGED).astype(np.uint16) * 257)
    assert main(["train", f"{a}=x", f"{b}=y", "--out", str(tmp_path / "m"), "--epochs", "1", "--folds", "0",
                 "--no-progress", "--pixel-size", "0.5"]) == 2
    err = capsys.readouterr().err
    assert f"{odd}: uint16 image; training crops must be 8-bit grey" in err and "convert it to 8 bits" in err


def test_cells_without_a_class_name_are_named_by_line(tmp_path, capsys):
    """An empty label was read as a class named '': it trained and was cross-validated ("class ''
    has 1 cells"), and the spec then refused it as "class_names: must not be empty strings",
    naming neither the file nor the row."""
    import shutil

    from tests.test_cli_train import MIML_SAMPLE

    folder = tmp_path / "miml"
    shutil.copytree(MIML_SAMPLE, folder)
    rows = (folder / "val_data.csv").read_text().splitlines(keepends=True)
    cells = rows[3].split(",")
    rows[3] = ",".join([cells[0], " ", *cells[2:]])
    (folder / "val_data.csv").write_text("".join(rows))
    assert main(["train", str(folder), "--out", str(tmp_path / "m"), "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'val_data.csv'}: 1 row(s) have no 'Cell Type' (line(s) 4)" in err
    assert not (tmp_path / "m").exists()

    table = _labelled_table(tmp_path / "run", "utf-8")
    rows = table.read_text().splitlines(keepends=True)
    rows[2] = rows[2].rstrip("\r\n").rsplit(",", 1)[0] + ",\n"
    table.write_text("".join(rows))
    assert main(["train", str(table), "--out", str(tmp_path / "m"), "--epochs", "1", "--no-progress"]) == 2
    assert f"{table}: 1 row(s) have no 'label' (line(s) 3)" in capsys.readouterr().err
    # one class for the whole file (=CLASS) needs no label column
    from inference.training.data import dataset_from_path

    assert dataset_from_path(f"{table}=x").class_counts() == {"x": 4}


@pytest.mark.parametrize("value, message", [("nan", "'nan' is not a finite number"),
                                            ("inf", "'inf' is not a finite number"),
                                            ("n/a", "not a number: 'n/a'"), ("", "not a number: ''")])
def test_a_feature_value_that_is_no_number_names_file_line_and_column(tmp_path, value, message):
    """'nan' passed the CSV import, and the data set then said only "non-finite feature values in
    samples ['e2']"; a text named no column ("could not convert string to float: ''")."""
    import shutil

    from inference.training.data import dataset_from_path
    from mimlsort.errors import DataFormatError
    from tests.test_cli_train import MIML_SAMPLE

    table = _event_table(tmp_path / "run", _events(3, 0, 1))
    rows = table.read_text().splitlines(keepends=True)
    cells = rows[2].split(",")
    cells[2] = value  # transit_time_ms
    rows[2] = ",".join(cells)
    table.write_text("".join(rows))
    with pytest.raises(DataFormatError) as e:
        dataset_from_path(f"{table}=x")
    assert str(e.value).startswith(f"{table}:3: column 'transit_time_ms': {message}")

    folder = tmp_path / "miml"
    shutil.copytree(MIML_SAMPLE, folder)
    rows = (folder / "val_data.csv").read_text().splitlines(keepends=True)
    cells = rows[2].split(",")
    cells[3] = value  # Transition Time
    rows[2] = ",".join(cells)
    (folder / "val_data.csv").write_text("".join(rows))
    with pytest.raises(DataFormatError) as e:
        dataset_from_path(folder)
    assert str(e.value).startswith(f"{folder / 'val_data.csv'}:3: column 'Transition Time': {message}")


def test_a_configuration_with_a_byte_order_mark_loads(tmp_path, capsys):
    """Windows Notepad begins UTF-8 with a byte order mark: it read "not valid TOML: Invalid
    statement (at line 1, column 1)"."""
    from app.config import load_config

    path = tmp_path / "run.toml"
    path.write_text(f'[sorting]\nthreshold = 0.7\n[output]\nfolder = "{tmp_path / "runs"}"\n', encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_config(path).sorting.threshold == 0.7
    assert main(["config", "--check", str(path)]) == 0
    assert f"{path}: valid" in capsys.readouterr().out


def test_a_configuration_not_in_utf8_is_named(tmp_path):
    from app.config import load_config
    from mimlsort.errors import ConfigError

    path = tmp_path / "run.toml"
    path.write_bytes('[output]\nsample = "échantillon"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: not UTF-8 text (byte 0xe9 at line 2): save it as UTF-8, as TOML requires"


def test_no_target_classes_is_refused_while_sorting_is_on(tmp_path, capsys):
    """`target_classes = []` was valid, and the run sorted nothing without a word."""
    from app.config import config_from_mapping

    path = tmp_path / "run.toml"
    path.write_text("[sorting]\ntarget_classes = []\n")
    assert main(["config", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert (f"sorting.target_classes: is empty: no cell would ever be sorted; name the model's classes to sort out, "
            f"or set enabled = false") in err and str(path) in err
    # sorting off: cells are classified and recorded, no target is needed
    assert config_from_mapping({"sorting": {"enabled": False, "target_classes": []}}).sorting.target_classes == ()


@pytest.mark.parametrize("backend, side", [("basler", "width"), ("genicam", "height"), ("ximea", "width")])
def test_a_camera_roi_a_pixel_across_names_its_key(backend, side):
    """Valid before: the run failed with "detect_geometry: background must be a 2-D image, got
    shape (1040, 1)", naming no key."""
    from app.config import config_from_mapping
    from mimlsort.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        config_from_mapping({"camera": {"backend": backend, backend: {side: 1}}}, source="run.toml")
    assert str(e.value).startswith(f"camera.{backend}.{side}: must be 0 (keep the camera's) or at least 16 px, got 1")
    assert "(in run.toml)" in str(e.value)
    assert config_from_mapping({"camera": {"backend": backend, backend: {side: 16}}})  # the smallest taken


@pytest.mark.parametrize("data, message", [
    # the run's decide worker stopped: "the crops' pixel size must be known, got inf"
    ({"camera": {"pixel_size_um": float("inf")}}, "camera.pixel_size_um: must be finite and >= 0"),
    # an OverflowError traceback at the run's start
    ({"output": {"max_backlog_mb": float("inf")}}, "output.max_backlog_mb: must be finite and >= 0 (0: unbounded)"),
    # ONNX Runtime started threads until memory ran out
    ({"model": {"intra_op_threads": 100_000}}, "model.intra_op_threads: must be in [1, 256], got 100000"),
])
def test_values_a_run_cannot_use_are_refused_naming_the_key(data, message):
    from app.config import config_from_mapping
    from mimlsort.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        config_from_mapping(data)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("section, key", [("tracking", "crop_size_um"), ("tracking", "min_area_um"),
                                          ("tracking", "stuck_ms"), ("tracking.geometry", "constriction_end_um"),
                                          ("camera.synthetic", "cells_per_second"),
                                          ("camera.synthetic", "exposure_us")])
def test_an_infinite_tracking_or_simulator_value_is_refused_naming_the_key(tmp_path, section, key):
    # inf passes every "> 0" check: an inf crop size overflowed, inf cells a second hung the run
    from app.config import load_config
    from mimlsort.errors import ConfigError

    path = tmp_path / "run.toml"
    path.write_text(f"[{section}]\n{key} = inf\n")
    with pytest.raises(ConfigError, match=rf"{key}.*must be (>= 0 and )?finite"):
        load_config(path)
