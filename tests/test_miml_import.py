"""Training data as `train`/`evaluate` read it: the MIML authors' format (their public sample, and the
defects a lab's own folder in that format can have, each reported naming the file and the line or
cell) and event files put together. Needs no torch: the importer is the training extra's data
module, which numpy and cv2 run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from inference.training.data import dataset_from_miml_dir, dataset_from_path, dataset_from_paths
from mimlsort.errors import DataFormatError

ROOT = Path(__file__).resolve().parents[1]
MIML_SAMPLE = ROOT.parent / "shared" / "data" / "miml_t4t8"
if not MIML_SAMPLE.is_dir():
    MIML_SAMPLE = Path("/work/shared/data/miml_t4t8")
pytestmark = pytest.mark.skipif(not MIML_SAMPLE.is_dir(), reason="the MIML authors' sample is not at hand")

CELL185 = "T4_Notch_Day1_B1_Cell185_Processed"


@pytest.fixture
def sample(tmp_path) -> Path:
    """A copy of the authors' sample to damage."""
    return Path(shutil.copytree(MIML_SAMPLE, tmp_path / "miml_t4t8"))


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) >= count, old
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


def test_an_error_names_the_files_own_line_after_blank_lines(sample):
    # the lines were counted as rows from line 2: after the blank lines a spreadsheet leaves, the
    # error pointed at a line two rows above the bad value
    csv_path = sample / "train_data.csv"
    edit(csv_path, f"{CELL185}_Firstcrop.png,T4,1.0", f"\n\n{CELL185}_Firstcrop.png,T4,fast")
    line = line_of(csv_path, ",T4,fast")
    with pytest.raises(DataFormatError, match=re.escape(f"{csv_path}:{line}: column 'Max Velocity': not a number: 'fast'")):
        dataset_from_miml_dir(sample)
    # the same for an unlabelled row and for our own event table
    edit(csv_path, ",T4,fast", ",,1.0")
    with pytest.raises(DataFormatError, match=rf"1 row\(s\) have no 'Cell Type' \(line\(s\) {line}\)"):
        dataset_from_path(csv_path)
    table = sample / "events.csv"
    crops = f"Train/{CELL185}_Firstcrop.png,Train/{CELL185}_Lastcrop.png"
    table.write_text(f"first_crop,last_crop,label,di,transit_time_ms,v_max_mm_s\n{crops},T4,0.1,2,10\n\n"
                     f"{crops},T4,0.1,,10\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=re.escape(f"{table}:4: column 'transit_time_ms': not a number: ''")):
        dataset_from_path(table)


def test_a_row_with_more_values_than_the_header_is_refused(sample):
    # an unquoted decimal comma (1,0) made six values of five: the rest moved one column on, a
    # transit time was read as the deformability and the last value dropped, unsaid
    csv_path = sample / "train_data.csv"
    edit(csv_path, f"{CELL185}_Lastcrop.png,T4,1.0,0.0,", f"{CELL185}_Lastcrop.png,T4,1,0,0.0,")
    line = line_of(csv_path, ",T4,1,0,0.0,")
    with pytest.raises(DataFormatError, match=re.escape(
            f"{csv_path}:{line}: 6 values where the header has 5 columns (row '{CELL185}_Lastcrop.png'; left over: "
            f"0.0588235294117647)")):
        dataset_from_miml_dir(sample)
    # empty values past the header's end (a spreadsheet's padding) hold nothing to misplace
    edit(csv_path, ",T4,1,0,0.0,", ",T4,1.0,0.0,")
    edit(csv_path, "0.0588235294117647\n", "0.0588235294117647,,\n")
    assert len(dataset_from_miml_dir(sample)) == 15


def test_a_class_spelled_two_ways_is_reported_naming_its_cells(sample):
    # one T8 cell labelled 't8' trained as a third class of one cell, unsaid
    csv_path = sample / "val_data.csv"
    cell = "T8_Notch_Day2_B3_Cell110_Processed"
    edit(csv_path, ",T8,", ",t8,")  # the first T8 cell's first row: its two rows disagree
    edit(csv_path, f"{cell}_Firstcrop.png,T8", f"{cell}_Firstcrop.png,t8")
    edit(csv_path, f"{cell}_Lastcrop.png,T8", f"{cell}_Lastcrop.png,t8")
    ds = dataset_from_miml_dir(sample)
    assert ds.class_counts() == {"T4": 12, "T8": 1, "t8": 2}  # reported, not merged: the user's decision
    [spelled] = [p for p in ds.report.problems() if "spelled two ways" in p]
    assert (f"class names 'T8' (1 cell: T8_Notch_Day2_B3_Cell100_Processed in val_data.csv) and 't8' (2 cells: "
            f"T8_Notch_Day2_B2_Cell151_Processed in val_data.csv; {cell} in val_data.csv) differ only in case") in spelled
    assert f"{csv_path}:{line_of(csv_path, 'Cell151_Processed_Lastcrop')}: the rows of cell " \
           f"T8_Notch_Day2_B2_Cell151_Processed disagree (Cell Type 'T8' here, 't8' on line " \
           f"{line_of(csv_path, 'Cell151_Processed_Firstcrop')}); using line" in ds.report.problems()[-1]
    assert "spelled two ways" in ds.report.to_markdown()  # the training and evaluation reports' Data section
    # across the folder's CSVs too: each is one class's only spelling in its own file
    edit(sample / "train_data.csv", ",T4,", ",t-4,", count=20)
    problems = dataset_from_miml_dir(sample).report.problems()
    assert any("'T4' (2 cells: T4_Notch_Day1_B3_Cell167_Processed in val_data.csv; " in p and
               "'t-4' (10 cells: T4_Notch_Day1_B1_Cell157_Processed in train_data.csv; " in p for p in problems), problems


def test_values_outside_0_1_in_the_authors_format_are_reported(sample):
    # the format's values are scaled 0-1 per batch and the model's spec says so: a lab's table in
    # mm/s was taken as scaled, unsaid
    csv_path = sample / "train_data.csv"
    assert not [p for p in dataset_from_miml_dir(sample).report.problems() if "outside 0-1" in p]
    edit(csv_path, ",T4,1.0,", ",T4,12.5,", count=2)
    [p] = [p for p in dataset_from_miml_dir(sample).report.problems() if "outside 0-1" in p]
    assert p.startswith(f"{csv_path}: Max Velocity is outside 0-1 in 1 cell(s) (e.g. 12.5, cell {CELL185} on line "
                        f"{line_of(csv_path, CELL185 + '_Firstcrop')}): ")
    # an export of ours in physical units says so beside it (export --miml --no-scale)
    (sample / "miml_export.json").write_text('{"scaled_to_0_1": false, "crop_pixel_size_um": null}', encoding="utf-8")
    assert not [p for p in dataset_from_miml_dir(sample).report.problems() if "outside 0-1" in p]


def test_one_pixel_size_stored_as_float32_and_as_float64_is_one(tmp_path):
    # ShapeIn stores the pixel size as float32 (mask_contour_reference.rtdc: 0.3400000035762787), and a
    # reanalysis keeps it; beside a file that says 0.34, training refused them as "different pixel
    # sizes (a.rtdc: 0.34 µm/px; b.rtdc: 0.34 µm/px)"
    import numpy as np

    from app.storage import EventWriter
    from tests.test_storage import make_meta, make_records

    PX = 0.34

    paths = []
    for name, px, seed in (("a", PX, 1), ("b", float(np.float32(PX)), 2)):
        paths.append(tmp_path / f"{name}.rtdc")
        with EventWriter(paths[-1], meta=make_meta(pixel_size_um=px)) as w:
            w.write(make_records(6, seed=seed))
    assert float(np.float32(PX)) != PX
    ds = dataset_from_paths([f"{paths[0]}=x", f"{paths[1]}=y"], only_ok=False)
    assert ds.class_counts() == {"x": 6, "y": 6} and ds.crop_pixel_size_um == PX
    # pixel sizes that differ are still refused
    with EventWriter(tmp_path / "c.rtdc", meta=make_meta(pixel_size_um=PX * 1.001)) as w:
        w.write(make_records(6, seed=3))
    with pytest.raises(DataFormatError, match="the crops have different pixel sizes"):
        dataset_from_paths([f"{paths[0]}=x", f"{tmp_path / 'c.rtdc'}=y"], only_ok=False)


def test_a_crop_of_another_size_is_named_with_its_image_and_line(sample):
    # the refusal named the cell, not which of its two PNGs was odd nor its line; a CSV whose last
    # crops were all of another size than its first crops was refused naming neither file nor cell
    import cv2

    png = sample / "Train" / f"{CELL185}_Lastcrop.png"
    cv2.imwrite(str(png), cv2.resize(cv2.imread(str(png)), (90, 90)))
    csv_path = sample / "train_data.csv"
    with pytest.raises(DataFormatError, match=re.escape(
            f"{csv_path}: crops differ in size (19 of 100×100 px, 1 of 90×90 px): {png} (line "
            f"{line_of(csv_path, CELL185 + '_Lastcrop')}, cell {CELL185}) is 90×90, not 100×100")):
        dataset_from_miml_dir(sample)
    for p in (sample / "Train").glob("*_Lastcrop.png"):
        cv2.imwrite(str(p), cv2.resize(cv2.imread(str(p)), (90, 90)))
    with pytest.raises(DataFormatError, match=re.escape(f"{csv_path}: crops differ in size (10 of 100×100 px, 10 of "
                                                        f"90×90 px): ")):
        dataset_from_miml_dir(sample)


def test_an_image_named_as_neither_crop_is_noted_as_both(sample):
    # a cell's one image stood for both crops, noted when the other crop was missing but not when
    # the name said neither (the importer's docstring promised a note)
    csv_path = sample / "train_data.csv"
    edit(csv_path, f"{CELL185}_Lastcrop.png,T4,1.0,0.0,0.0588235294117647\n", "")
    edit(csv_path, f"{CELL185}_Firstcrop.png,", f"{CELL185}.png,")
    (sample / "Train" / f"{CELL185}_Firstcrop.png").rename(sample / "Train" / f"{CELL185}.png")
    ds = dataset_from_miml_dir(sample)
    assert len(ds) == 15
    assert (f"{csv_path}: 1 image(s) named without _Firstcrop/_Lastcrop (e.g. {CELL185}.png on line "
            f"{line_of(csv_path, CELL185)}): each is its cell's first and last crop") in ds.report.problems()


@pytest.mark.parametrize("sep, said", [(";", "';'"), ("\t", "a tab")])
def test_a_table_separated_by_semicolons_or_tabs_says_so(sample, sep, said):
    # Excel set to a decimal comma saves its "CSV" with semicolons: refused as missing every column
    csv_path = sample / "train_data.csv"
    csv_path.write_text(csv_path.read_text(encoding="utf-8").replace(",", sep), encoding="utf-8")
    with pytest.raises(DataFormatError, match=re.escape(f"{csv_path}:1: the columns are separated by {said}, not "
                                                        f"commas: save the table comma-separated")):
        dataset_from_miml_dir(sample)


def test_the_authors_columns_are_read_whatever_their_case(sample):
    # "Cell ID" for "cell ID": the folder was refused as lacking the column it held, and the CSV
    # named alone was taken for our event table ("missing column 'first_crop'")
    csv_path = sample / "train_data.csv"
    edit(csv_path, "cell ID,Cell Type,Max Velocity,Transition Time,Deformability",
         "Cell ID,cell type,Max velocity,Transition Time,DEFORMABILITY")
    assert len(dataset_from_miml_dir(sample)) == 15
    ds = dataset_from_path(csv_path)
    assert len(ds) == 10 and ds.class_names == ("T4",) and ds.feature_names == ("di", "transit_time_ms", "v_max_mm_s")
    assert ds.features[list(ds.ids).index(CELL185)].tolist() == pytest.approx([0.0588235294117647, 0.0, 1.0])


def test_a_row_of_empty_values_is_skipped_as_a_blank_line_is(sample):
    # a spreadsheet's emptied rows save as ",,,,": refused as a row without a class
    csv_path = sample / "train_data.csv"
    csv_path.write_text(csv_path.read_text(encoding="utf-8") + "\n,,,,\n , , ,,\n", encoding="utf-8")
    ds = dataset_from_miml_dir(sample)
    assert len(ds) == 15 and ds.report.n_rows == 30


def test_a_missing_or_unreadable_png_is_named_with_its_line(sample, capfd):
    # "missing: …/X_Lastcrop.png" named no line, a damaged PNG was "missing" too, and OpenCV wrote its
    # own "can't open/read file" warning to stderr
    csv_path = sample / "train_data.csv"
    gone = sample / "Train" / f"{CELL185}_Lastcrop.png"
    gone.unlink()
    bad = sample / "Train" / "T4_Notch_Day1_B1_Cell187_Processed_Lastcrop.png"
    bad.write_bytes(b"\x89PNG damaged")
    problems = dataset_from_miml_dir(sample).report.problems()
    assert f"missing: {csv_path}:{line_of(csv_path, gone.name)}: {gone}" in problems
    assert (f"missing: {csv_path}:{line_of(csv_path, bad.name)}: {bad} (there, but not a readable image)"
            in problems)
    assert f"train_data.csv: cell {CELL185} has only its first crop; used for both channels" in problems
    assert "can't open/read file" not in capfd.readouterr().err


def test_an_event_tables_ids_count_an_emptied_row(sample):
    # an event table's cells without an id are named by their row's index (test_cells.csv lists
    # them so): skipping an emptied row must not rename the cells after it
    table = sample / "events.csv"
    crops = f"Train/{CELL185}_Firstcrop.png,Train/{CELL185}_Lastcrop.png"
    table.write_text(f"first_crop,last_crop,di,transit_time_ms,v_max_mm_s\n{crops},0.1,2,10\n,,,,\n"
                     f"{crops},0.2,3,11\n", encoding="utf-8")
    ds = dataset_from_path(f"{table}=T4")
    assert list(ds.ids) == ["events#0", "events#2"] and ds.report.missing == ()


def test_a_quoted_decimal_comma_is_named_as_such(sample):
    csv_path = sample / "train_data.csv"
    edit(csv_path, f"{CELL185}_Firstcrop.png,T4,1.0,", f'{CELL185}_Firstcrop.png,T4,"1,0",')
    with pytest.raises(DataFormatError, match=re.escape(
            f"{csv_path}:{line_of(csv_path, CELL185 + '_Firstcrop')}: column 'Max Velocity': not a number: '1,0': a "
            f"decimal comma? write a decimal point")):
        dataset_from_miml_dir(sample)
