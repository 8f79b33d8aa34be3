"""Sample report, CSV export and the MIML authors' format, from event files written by EventWriter."""

from __future__ import annotations

import contextlib
import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from app.export import MIML_COLUMNS, export_csv, export_miml, quality_names
from app.report import summarize, to_markdown, wilson, write_report
from app.storage import EventWriter, read_events
from mimlsort.errors import DataFormatError
from tests.test_storage import CLASSES, CROP, make_meta, make_records
from tracking.events import Quality
from tracking.features import FEATURES

CONFIG = '[sorting]\ntarget_classes = ["hct116"]\nthreshold = 0.5\n'


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "sample.rtdc"
    records = with_touching(make_records(120, seed=5))
    with EventWriter(path, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(records)
        w.note_counters({"camera_dropped": 1})
    return path, records


def with_touching(records, every: int = 7):
    """Every ``every``-th cell also cut from a neighbour (flag TOUCHING), as in dense flow."""
    from dataclasses import replace

    return [replace(r, event=replace(r.event, quality=r.event.quality | Quality.TOUCHING)) if i % every == 3 else r
            for i, r in enumerate(records)]


def test_wilson_matches_scipy_and_behaves_at_the_edges():
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 10), (3, 10), (10, 10), (57, 300), (1, 1)):
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    lo, hi = wilson(0, 50)
    assert lo == 0.0 and 0 < hi < 0.1
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_summary_counts_match_the_records(run_file):
    path, records = run_file
    s = summarize(path)
    assert s.cells == len(records) and s.complete
    pred = [int(np.argmax(r.probabilities)) for r in records]
    assert [c.count for c in s.classes] == [pred.count(i) for i in range(len(CLASSES))]
    assert s.unflagged == sum(r.event.quality == Quality.OK for r in records)
    # classes and medians are over the cells the default policy would sort: TOUCHING ones count
    ok = [not r.event.quality & Quality.DOUBLET for r in records]
    assert any(r.event.quality == Quality.TOUCHING for r in records)
    assert s.sortable == sum(ok) > s.unflagged and s.rejected_flags == ("DOUBLET", "BORDER", "INCOMPLETE", "STUCK", "SMALL")
    assert [c.count for c in s.classes_sortable] == [sum(1 for p, o in zip(pred, ok) if o and p == i)
                                                     for i in range(len(CLASSES))]
    doublets = next(q for q in s.quality if q.name == "DOUBLET")
    assert doublets.count == sum(1 for r in records if r.event.quality & Quality.DOUBLET)
    fired = [r for r in records if r.decision.fire]
    assert s.fired.count == len(fired) and s.target_classes == ("hct116",) and s.targets_from == "configuration"
    reasons = {r.name: r.count for r in s.reasons}
    for reason in {r.decision.reason.value for r in records}:
        assert reasons[reason] == sum(1 for r in records if r.decision.reason.value == reason)
    p_t = np.array([r.probabilities[0] for r in records], np.float64)
    f_mask = np.array([r.decision.fire for r in records])
    assert s.purity_estimate == pytest.approx(p_t[f_mask].mean(), rel=1e-6)
    assert s.recovery_estimate == pytest.approx(p_t[f_mask].sum() / p_t.sum(), rel=1e-6)
    # the outlet: fired cells and their neighbours within the window each target was judged with
    exits = np.array([r.event.features["exit_time_ms"] for r in records])
    outlet = f_mask.copy()
    for r in records:
        if r.decision.fire:
            outlet |= np.abs(exits - r.event.features["exit_time_ms"]) <= r.decision.window_ms
    assert s.swept == int((outlet & ~f_mask).sum()) > 0
    assert s.sorted_purity_estimate == pytest.approx(p_t[outlet].mean(), rel=1e-6)
    assert s.sorted_recovery_estimate == pytest.approx(p_t[outlet].sum() / p_t.sum(), rel=1e-6)
    assert s.sorted_purity_estimate < s.purity_estimate  # soft neighbours swept along
    di_h = [r.event.features["di"] for r, p, o in zip(records, pred, ok) if p == 0 and o]
    assert s.medians["hct116"]["di"][1] == pytest.approx(np.median(di_h))
    assert s.counters == {"camera_dropped": 1}


def test_sortable_follows_the_runs_reject_flags(tmp_path):
    path = tmp_path / "strict.rtdc"
    records = with_touching(make_records(40, seed=2), every=4)
    strict = CONFIG + 'reject_flags = ["DOUBLET", "TOUCHING"]\n'
    with EventWriter(path, meta=make_meta(config_toml=strict)) as w:
        w.write(records)
    s = summarize(path)
    assert s.rejected_flags == ("DOUBLET", "TOUCHING")
    assert s.sortable == s.unflagged == sum(r.event.quality == Quality.OK for r in records) < len(records)
    assert "none of DOUBLET, TOUCHING" in to_markdown(s, {})


def test_target_classes_can_be_given_and_are_checked(run_file):
    path, _ = run_file
    s = summarize(path, target_classes=("wbc",))
    assert s.target_classes == ("wbc",) and s.targets_from == "given"
    with pytest.raises(DataFormatError, match="not among"):
        summarize(path, target_classes=("neutrophil",))


def test_report_inputs_that_cannot_be_reported_leave_nothing(run_file, tmp_path):
    path, _ = run_file
    with pytest.raises(DataFormatError, match="not among"):
        write_report(path, tmp_path / "rep", target_classes=("neutrophil",))
    assert not (tmp_path / "rep").exists()  # an empty folder was left behind
    with pytest.raises(DataFormatError, match="is a folder, not an event file"):  # was "no such file"
        write_report(tmp_path, tmp_path / "rep2")


def test_write_report_makes_figures_markdown_and_html(run_file, tmp_path):
    path, records = run_file
    res = write_report(path, tmp_path / "rep")
    assert set(res.figures) == {"scatter_di_transit", "scatter_di_vmax", "histograms"}
    for p in res.figures.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    md = res.markdown.read_text(encoding="utf-8")
    assert "hct116 vs wbc" in md and "95 % CI" in md and "scatter_di_transit.png" in md
    assert f"| cells | {len(records)} |" in md
    page = res.html.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3 and "purity estimate" in page
    # the figures draw flagged cells too, the medians do not: both pages say which is which
    from app.report import FIGURES_NOTE
    assert FIGURES_NOTE in md and FIGURES_NOTE in page
    with pytest.raises(DataFormatError, match="formats"):
        write_report(path, tmp_path / "x", formats=("pdf",))


@contextlib.contextmanager
def largest_file(size: int):
    """Files may grow to ``size`` bytes (RLIMIT_FSIZE): the kernel refuses a write past it (EFBIG),
    as a full disk refuses one (Python ignores SIGXFSZ)."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_report_that_fails_part_way_leaves_none_or_the_earlier_one(run_file, tmp_path):
    """report.html could not be written (the disk filled): the folder was left with the figures,
    report.md and a half report.html.part, as if the report were complete."""
    path, _ = run_file
    res = write_report(path, tmp_path / "earlier")
    kept = {p.name: p.read_bytes() for p in (tmp_path / "earlier").iterdir()}
    html_size = res.html.stat().st_size
    limit = max(p.stat().st_size for p in (*res.figures.values(), res.markdown)) + 1
    assert limit < html_size  # the figures and report.md can be written, report.html cannot
    with largest_file(limit):
        with pytest.raises(OSError, match=r"File too large: the report was not written .*new/fresh"):
            write_report(path, tmp_path / "new" / "fresh")
        with pytest.raises(OSError, match="the report was not written"):
            write_report(path, tmp_path / "earlier")
    assert not (tmp_path / "new").exists()  # the folders it made are gone
    assert {p.name: p.read_bytes() for p in (tmp_path / "earlier").iterdir()} == kept  # no .part, no new figure
    assert write_report(path, tmp_path / "earlier").html.stat().st_size == html_size


def test_report_of_an_empty_run_and_of_a_run_without_model(tmp_path):
    empty = tmp_path / "empty.rtdc"
    with EventWriter(empty, meta=make_meta()):
        pass
    res = write_report(empty)
    assert res.summary.cells == 0 and math.isnan(res.summary.purity_estimate)
    assert res.out_dir == tmp_path / "empty_report" and res.markdown.exists()
    nomodel = tmp_path / "nomodel.rtdc"
    from app.records import CellRecord

    recs = [CellRecord(r.event, np.zeros(0, np.float32), None, None) for r in make_records(10)]
    with EventWriter(nomodel, meta=make_meta(class_names=())) as w:
        w.write(recs)
    s = summarize(nomodel)
    assert s.cells == 10 and s.classes == () and s.fired.count == 0 and "all" in s.medians
    assert "| cells | 10 |" in to_markdown(s, {})


def test_the_report_of_a_run_without_cells_says_so_instead_of_tables_of_zeros(tmp_path, capsys):
    """An empty run's report gave a row of "0 | – | –" for each class of the model, each quality
    flag and each feature, and "fired 0 of 0", and `report` printed "hct116: 0" per class: figures
    of a sample that had none."""
    from app.cli import main

    empty = tmp_path / "empty.rtdc"
    with EventWriter(empty, meta=make_meta(config_toml=CONFIG)) as w:
        w.note_counters({"frames_in": 2000})
    assert main(["report", str(empty)]) == 0
    out = capsys.readouterr().out
    assert "0 cells" in out and "  no cells in the file\n" in out and "hct116: 0" not in out
    md = (tmp_path / "empty_report" / "report.md").read_text(encoding="utf-8")
    assert "| summary | none: the file holds no cell, so it has no class shares, quality flags, sorting" in md
    for gone in ("## Cells per class", "## Quality flags", "## Sorting", "## Feature medians", "hct116 |", "95 % CI"):
        assert gone not in md, gone
    assert "| cells | 0 |" in md and "| frames_in | 2000 |" in md  # what the run did, to find out why


SHARED_RTDC = Path("/work/shared/data/rtdc")


@pytest.mark.parametrize("name, advice", [
    ("mask_contour_reference.rtdc", "its 8 event images can be measured by mimlsort reanalyze {path} --out OUT.rtdc"),
    ("file_with_variable_length_logs.rtdc", "its 20 event images can be measured by mimlsort reanalyze {path}"),
    ("M001_data.rtdc", "it holds no events for mimlsort to measure (mimlsort reanalyze needs them); open it with dclab"),
    ("recording", "it is a recording of 6 frames: mimlsort replay {path} --out EVENTS.rtdc tracks its cells"),
])
def test_report_and_export_of_another_programs_file_say_what_to_do_with_it(tmp_path, capsys, name, advice):
    """ShapeIn's, CytoShot's and dcnum's files, and a raw recording of ours, were refused with "open
    other RT-DC files with dclab": not that reanalyze measures their event images (and report then
    reports them), that a recording goes through replay, nor, for an empty file, that it holds none."""
    from app.cli import main

    if name == "recording":
        from acquisition.recording import RawRecorder

        path = tmp_path / "rec.rtdc"
        with RawRecorder(path, 40, 20, pixel_size_um=0.5, fps=4000.0) as rec:
            rec.write(np.full((6, 20, 40), 100, np.uint8), np.arange(6), np.arange(6) * 250_000)
    else:
        path = SHARED_RTDC / name
        if not path.is_file():
            pytest.skip("shared RT-DC data not present")
    for argv in (["report", str(path), "--out", str(tmp_path / "rep")], ["export", str(path), "--csv", str(tmp_path / "e.csv")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{path}: not a mimlsort event file (no /mimlsort group); {advice.format(path=path)}" in err, err
    assert not (tmp_path / "rep").exists() and not (tmp_path / "e.csv").exists()


def test_csv_export_has_one_row_per_cell_with_everything(run_file, tmp_path):
    path, records = run_file
    out = tmp_path / "cells.csv"
    assert export_csv(path, out) == len(records)
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records)
    for name in (*FEATURES, "p_hct116", "p_wbc", "predicted", "fired", "reason", "quality_flags", "fire_sent_ns"):
        assert name in rows[0], name
    for row, r in zip(rows, records):
        assert int(row["event_index"]) == r.event.index
        assert float(row["di"]) == pytest.approx(r.event.features["di"], rel=1e-6)
        assert float(row["p_hct116"]) == pytest.approx(float(r.probabilities[0]), rel=1e-6)
        assert row["reason"] == r.decision.reason.value and int(row["fired"]) == int(r.decision.fire)
        assert row["quality_flags"] == quality_names(int(r.event.quality))
        if r.decision.is_target:
            assert float(row["sort_window_ms"]) == pytest.approx(r.decision.window_ms)
        else:
            assert row["sort_window_ms"] == ""
    # a cell is in the outlet when fired or within a fired neighbour's window (cells exit 2 ms apart)
    fired_at = {r.event.index for r in records if r.decision.fire}
    for row, r in zip(rows, records):
        near = {r.event.index - 1, r.event.index, r.event.index + 1} & fired_at
        assert int(row["in_outlet"]) == int(bool(near))
    assert quality_names(int(Quality.DOUBLET | Quality.STUCK)) == "DOUBLET|STUCK"
    # each row names its run, last (exports of several runs put together could not be told apart)
    with h5py.File(path) as h5:
        ident = h5.attrs["experiment:run identifier"]
    assert list(rows[0])[-2:] == ["run", "run_identifier"] and ident
    assert {(row["run"], row["run_identifier"]) for row in rows} == {(path.stem, ident)}
    from app.export import _fmt

    assert float(_fmt(3_600_123.4567)) == pytest.approx(3_600_123.4567, abs=1e-3)  # ms after an hour: µs kept


def test_miml_export_round_trips_through_the_training_importer(run_file, tmp_path):
    data = pytest.importorskip("inference.training.data")
    path, records = run_file
    res = export_miml(path, tmp_path / "miml", label=None)
    # training data: doublets left out, cells cut from a touching neighbour kept
    ok = [r for r in records if not r.event.quality & Quality.DOUBLET]
    assert any(r.event.quality & Quality.TOUCHING for r in ok)
    assert res.cells == len(ok) and res.skipped == len(records) - len(ok)
    header = res.csv_path.read_text(encoding="utf-8").splitlines()[0]
    assert header == "cell ID,Cell Type,Max Velocity,Transition Time,Deformability"
    ds = data.dataset_from_miml_dir(tmp_path / "miml")
    assert len(ds) == len(ok) and ds.report.missing == ()
    assert data.MIML_PROVENANCE in ds.provenance  # min-max scaled per run, as the authors' values
    by_id = {str(i): k for k, i in enumerate(ds.ids)}
    scaling = json.loads((tmp_path / "miml" / "miml_export.json").read_text())["scaling"]
    row_of = {id(r): n for n, r in enumerate(records, 1)}  # CellN is the CSV's `cell`, dclab's `index`
    run = read_events(path)[1]
    prefix = f"hct116_vs_wbc_{run.attrs['experiment:date'].replace('-', '')}-{run.attrs['experiment:time'].replace(':', '')}_M3_"
    for r in ok:
        [k] = [k for name, k in by_id.items() if name.startswith(prefix) and name.endswith(f"_Cell{row_of[id(r)]}")]
        assert np.array_equal(ds.first[k], r.event.first_crop)
        assert np.array_equal(ds.last[k], r.event.last_crop)
        assert ds.class_names[ds.labels[k]] == CLASSES[int(np.argmax(r.probabilities))]
        for col, feat in MIML_COLUMNS:
            lo, hi = scaling[col]["min"], scaling[col]["max"]
            j = list(ds.feature_names).index(feat)
            assert ds.features[k, j] * (hi - lo) + lo == pytest.approx(r.event.features[feat], rel=1e-9)


def test_miml_export_options(run_file, tmp_path):
    import cv2

    path, records = run_file
    res = export_miml(path, tmp_path / "m", name="train", label="T4", scale=False, include_flagged=True, size=100)
    assert res.cells == len(records) and res.csv_path.name == "train_data.csv"
    with res.csv_path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["Cell Type"] for r in rows} == {"T4"} and len(rows) == 2 * len(records)
    assert float(rows[0]["Deformability"]) == pytest.approx(records[0].event.features["di"])
    img = cv2.imread(str(res.image_dir / rows[0]["cell ID"]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (100, 100, 3) and np.array_equal(img[..., 0], img[..., 2])
    meta = json.loads((tmp_path / "m" / "miml_export.json").read_text())
    assert meta["crop_pixel_size_um"] == pytest.approx(records[0].event.crop_pixel_size_um * CROP / 100)
    # training on it takes physical units and the crops' scale (it was taken as the authors' 0-1
    # values: replay and reanalyze then refused the model)
    data = pytest.importorskip("inference.training.data")
    ds = data.dataset_from_miml_dir(tmp_path / "m")
    assert data.MIML_PROVENANCE not in ds.provenance and ds.crop_pixel_size_um == pytest.approx(meta["crop_pixel_size_um"])
    assert ds.features[0, list(ds.feature_names).index("di")] == pytest.approx(records[0].event.features["di"])
    one = data.dataset_from_path(str(res.csv_path))  # its table named alone (a reviewer: taken as 0-1 values)
    assert data.MIML_PROVENANCE not in one.provenance and one.crop_pixel_size_um == ds.crop_pixel_size_um
    # a second export into the folder would replace part of this one
    before = res.csv_path.read_bytes()
    for name in ("train", "other"):
        with pytest.raises(DataFormatError, match="holds an earlier export"):
            export_miml(path, tmp_path / "m", name=name, scale=True)
    assert res.csv_path.read_bytes() == before and not (tmp_path / "m" / "other").exists()
    with pytest.raises(DataFormatError, match="must be a plain name"):
        export_miml(path, tmp_path / "m3", name="../x")


def test_miml_exports_of_two_runs_of_one_sample_and_run_index_name_their_cells_apart(run_file, tmp_path):
    # both named their cells hct116_vs_wbc_M3_CellN: put in one folder, one run's PNGs replaced the
    # other's; trained on together, each pair of namesakes was one group (held out together)
    data = pytest.importorskip("inference.training.data")
    path, records = run_file
    again = tmp_path / "again.rtdc"
    with EventWriter(again, meta=make_meta(config_toml=CONFIG)) as w:  # the same sample and run index
        w.write(records)
    a = export_miml(path, tmp_path / "a", name="a")
    b = export_miml(again, tmp_path / "b", name="b")
    names_a, names_b = ({p.name for p in res.image_dir.iterdir()} for res in (a, b))
    assert len(names_a) == 2 * a.cells and len(names_b) == 2 * b.cells
    assert not names_a & names_b
    ds = data.dataset_from_paths([tmp_path / "a", tmp_path / "b"])
    assert len(ds) == a.cells + b.cells and len(set(ds.groups)) == len(ds) and len(set(ds.ids)) == len(ds)


def test_cli_report_and_export(run_file, tmp_path, capsys):
    from app.cli import main

    path, records = run_file
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--format", "html"]) == 0
    assert (tmp_path / "r" / "report.html").exists() and not (tmp_path / "r" / "report.md").exists()
    assert main(["report", str(path), "--out", str(tmp_path / "r")]) == 0  # its own report is replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes on the sample\n")
    capsys.readouterr()
    assert main(["report", str(path), "--out", str(mine)]) == 2  # a user's report.md is not
    assert "report.md: exists" in capsys.readouterr().err
    assert (mine / "report.md").read_text() == "my notes on the sample\n"
    assert main(["export", str(path), "--csv", str(tmp_path / "c.csv"), "--miml", str(tmp_path / "mm")]) == 0
    out = capsys.readouterr().out
    assert f"{len(records)} cells -> " in out and (tmp_path / "mm" / "cells_data.csv").exists()
    # a second export into the same folder is refused before the CSV is written (it was written first)
    assert main(["export", str(path), "--csv", str(tmp_path / "c2.csv"), "--miml", str(tmp_path / "mm")]) == 2
    assert "holds an earlier export" in capsys.readouterr().err and not (tmp_path / "c2.csv").exists()
    assert main(["export", str(path)]) == 2
    assert "--csv" in capsys.readouterr().err
    assert main(["export", str(path), "--csv", str(tmp_path / "c.csv"), "--size", "100"]) == 2  # was ignored
    assert "--size: applies to the MIML export" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.rtdc")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_help_renders():
    import argparse

    from app import cli_report

    parser = argparse.ArgumentParser(prog="mimlsort")
    cli_report.register(parser.add_subparsers())
    text = parser.format_help()  # argparse %-formats every help string: a bare % breaks all of --help
    assert "report" in text and "export" in text


def test_read_events_sees_what_export_needs(run_file):
    path, records = run_file
    f, run = read_events(path, crops=True)
    assert f["first_crop"].shape == (len(records), CROP, CROP)
    assert run.crop_pixel_size_um == pytest.approx(records[0].event.crop_pixel_size_um)


def test_a_policy_change_during_the_run_is_named_beside_the_estimates(tmp_path):
    path = tmp_path / "changed.rtdc"
    with EventWriter(path, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(make_records(30, seed=4))
        w.log("INFO app.pipeline: sort policy changed after 30 cells: targets wbc")
    s = summarize(path)
    assert len(s.policy_changes) == 1 and "after 30 cells" in s.policy_changes[0]
    md = to_markdown(s, {})
    assert "The sort policy changed during the run" in md and "after 30 cells" in md
    plain = tmp_path / "plain.rtdc"
    with EventWriter(plain, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(make_records(30, seed=4))
    assert summarize(plain).policy_changes == () and "policy changed" not in to_markdown(summarize(plain), {})


def test_an_incomplete_event_does_not_make_the_file_untrainable(tmp_path):
    # one INCOMPLETE cell without a transit time: training leaves it out, so its NaN must not
    # take transit_time_ms out of the file's default features
    data = pytest.importorskip("inference.training.data")
    from dataclasses import replace

    records = make_records(20, seed=6)
    bad = records[3]
    feats = dict(bad.event.features, transit_time_ms=math.nan, entry_time_ms=math.nan)
    records[3] = replace(bad, event=replace(bad.event, features=feats, quality=Quality.INCOMPLETE))
    path = tmp_path / "one_incomplete.rtdc"
    with EventWriter(path, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(records)
    ds = data.dataset_from_rtdc(path, "wbc")
    assert "transit_time_ms" in ds.feature_names and len(ds) < len(records)
    assert np.isfinite(ds.features).all()


def test_the_report_of_a_failed_run_names_its_error(tmp_path):
    path = tmp_path / "failed.rtdc"
    with EventWriter(path, meta=make_meta()) as w:
        w.write(make_records(5))
        w.note_error("camera: the basler camera stopped delivering frames")
    s = summarize(path)
    assert s.error == "camera: the basler camera stopped delivering frames"
    assert "| run error | camera: the basler camera stopped delivering frames |" in to_markdown(s, {})
    assert s.complete  # closed properly: the error is the run's, not a broken file


def test_outlet_of_a_file_without_sort_windows_is_not_known(tmp_path):
    """Files from before each decision's window was recorded: which cells a pulse swept along is
    unknown, and the report and CSV say so rather than show the fired cells as the outlet."""
    from dataclasses import replace

    records = [replace(r, decision=replace(r.decision, window_ms=math.nan)) for r in make_records(40, seed=9)]
    path = tmp_path / "old.rtdc"
    with EventWriter(path, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(records)
    s = summarize(path)
    assert s.fired.count > 0 and s.swept == -1 and math.isnan(s.sorted_purity_estimate)
    assert "not known: the file does not record the coincidence window" in to_markdown(s, {})
    export_csv(path, tmp_path / "old.csv")
    with (tmp_path / "old.csv").open(newline="", encoding="utf-8") as fh:
        assert {row["in_outlet"] for row in csv.DictReader(fh)} == {""}


def test_pulses_the_device_refused_are_not_in_the_outlet(tmp_path):
    """A fired cell whose pulse the device refused (its queue full) was not sorted: it counted in
    the outlet's purity/recovery estimates and the CSV's in_outlet (a run whose device refused 68
    of 86 pulses read an outlet recovery estimate of 94 %)."""
    from hardware.trigger import DeviceReport

    records = make_records(60, seed=4)
    fired = [r.event.index for r in records if r.decision.fire]
    refused = fired[::2]
    path = tmp_path / "refused.rtdc"
    with EventWriter(path, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(records)
        w.add_device_reports([DeviceReport(i, 1, "refused", "3 queue full") for i in refused])
    s = summarize(path)
    assert len(refused) >= 3 and s.device_refused == len(refused)
    export_csv(path, tmp_path / "refused.csv")
    with (tmp_path / "refused.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    p_t = np.array([float(r["p_hct116"]) for r in rows])
    out = np.array([r["in_outlet"] == "1" for r in rows])
    index = np.array([int(r["event_index"]) for r in rows])
    # by hand: the pulses that went out, and every cell within one's window
    pulses = [(r.event.features["exit_time_ms"], r.decision.window_ms) for r in records
              if r.decision.fire and r.event.index not in refused]
    expected = [r.event.index not in refused and r.decision.fire
                or any(abs(r.event.features["exit_time_ms"] - e) <= w for e, w in pulses) for r in records]
    assert out.tolist() == expected and not all(out[np.isin(index, refused)])
    assert s.sorted_recovery_estimate == pytest.approx(p_t[out].sum() / p_t.sum())
    assert "Cells whose pulse the device refused are not in the outlet" in to_markdown(s, {})


def test_figures_count_the_cells_they_draw_and_say_when_they_draw_none(tmp_path, monkeypatch):
    """A reanalysis has no transit time or v_max: its DI scatter plots were empty, with a legend
    that said "unclassified (32)", and its histograms of them empty axes without a word."""
    import re
    from dataclasses import replace

    from matplotlib.figure import Figure

    from app.report import make_figures

    # no cell has v_max; the first half have no transit time either
    records = [replace(r, event=replace(r.event, features={**r.event.features, "v_max_mm_s": math.nan,
                                                           **({"transit_time_ms": math.nan} if i < 6 else {})}))
               for i, r in enumerate(make_records(12, seed=2))]
    path = tmp_path / "single_images.rtdc"
    with EventWriter(path, meta=make_meta()) as w:
        w.write(records)
    saved = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, p, *a, **k: saved.__setitem__(p.stem, fig))
    make_figures(*read_events(path), tmp_path)

    def words(ax):
        return " ".join(t.get_text() for t in ax.texts).replace("\n", " ")

    ax = saved["scatter_di_transit"].axes[0]
    counts = [int(re.search(r"\((\d+)\)", t.get_text())[1]) for t in ax.get_legend().get_texts()
              if not t.get_text().startswith("fired")]
    assert sum(counts) == 6 and words(ax) == ""
    ax = saved["scatter_di_vmax"].axes[0]
    assert ax.get_legend() is None and "no cell of this file has both v_max_mm_s and di" in words(ax)
    hist = {ax.get_xlabel().split(" [")[0]: ax for ax in saved["histograms"].axes}
    assert "no cell of this file has v_max_mm_s" in words(hist["v_max_mm_s"])
    assert words(hist["transit_time_ms"]) == ""


def test_the_report_of_a_reanalysis_gives_the_medians_of_its_cells(tmp_path):
    """A reanalysis flags every cell INCOMPLETE (one image per cell, no passage seen): the report
    left them all out, and every class share and feature median of a reanalysed ShapeIn file
    read "–"."""
    from dataclasses import replace

    records = [replace(r, event=replace(r.event, quality=Quality.INCOMPLETE | (Quality.DOUBLET if i == 0 else 0)))
               for i, r in enumerate(make_records(20, seed=6))]
    path = tmp_path / "reanalysed.rtdc"
    with EventWriter(path, meta=make_meta(measured="single image")) as w:
        w.write(records)
    s = summarize(path)
    whole = records[1:]  # the doublet is still left out
    assert s.sortable == len(whole)
    di = [r.event.features["di"] for r in whole if int(np.argmax(r.probabilities)) == 0]
    assert s.medians[CLASSES[0]]["di"] == pytest.approx(tuple(np.percentile(di, [25, 50, 75])))
    assert "| measured | one image per cell (a reanalysis)" in to_markdown(s, {})


def test_the_report_of_a_reanalysis_says_it_sorted_nothing(tmp_path, capsys):
    """A reanalysis fires nothing: its report said "fired 0 of 20 (0.0 %, 95 % CI 0.0–16.1 %)",
    swept cells and device acknowledgements, a sorter that ran and fired at none of its cells."""
    from dataclasses import replace

    from app.cli import main

    records = [replace(r, event=replace(r.event, quality=Quality.INCOMPLETE)) for r in make_records(20, seed=6)]
    path = tmp_path / "reanalysed.rtdc"
    with EventWriter(path, meta=make_meta(measured="single image")) as w:
        w.write(records)
    assert main(["report", str(path)]) == 0
    assert "20 cells, 20 sortable, 0 unflagged, not sorted (a reanalysis)" in capsys.readouterr().out
    md = (tmp_path / "reanalysed_report" / "report.md").read_text(encoding="utf-8")
    sorting = md.split("## Sorting", 1)[1].split("## ", 1)[0]
    assert "| sorted | no: a reanalysis of recorded event images decides and fires nothing" in sorting
    assert "fired" not in sorting.replace("fires nothing", "") and "CI" not in sorting and "acknowledgements" not in sorting
    # a run that sorted keeps its table
    run = tmp_path / "run.rtdc"
    with EventWriter(run, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(records)
    assert "| fired | " in to_markdown(summarize(run), {})


@pytest.mark.parametrize("camera, counters, rate, over", [
    # no run duration: 11 cells exit 2 ms apart (20 ms from first to last) make 10 gaps: 500/s, not 550
    ("synthetic", {}, 500.0, "first to last cell"),
    # a replay's run_s is the time it took to process, not what it recorded
    ("replay mimlsort rec.rtdc", {"run_s": 0.005}, 500.0, "first to last cell"),
    # the frames' own time, where the run counted it
    ("replay mimlsort rec.rtdc", {"run_s": 0.005, "measured_s": 0.044}, 250.0, "over the run"),
    # a live camera runs on the host's time
    ("basler acA720 123", {"run_s": 0.055}, 200.0, "over the run"),
])
def test_cells_per_second_counts_the_gaps_or_the_runs_duration(tmp_path, camera, counters, rate, over):
    path = tmp_path / "rate.rtdc"
    records = make_records(11, seed=2)
    assert [r.event.features["exit_time_ms"] for r in records] == [2.0 * i + 1.0 for i in range(11)]
    with EventWriter(path, meta=make_meta(camera=camera)) as w:
        w.write(records)
        w.note_counters(counters)
    s = summarize(path)
    assert s.duration_s == pytest.approx(0.020)
    assert s.cells_per_s == pytest.approx(rate)
    assert f"| cells per second ({over}) | {rate:.1f} |" in to_markdown(s, {})


def test_an_export_of_no_cells_writes_the_header_and_says_so(tmp_path, capsys):
    """0 cells: the CSV was written with its header only and "0 cells ->" on stdout, and an MIML
    export of an empty run failed with "holds no crops". Now both write the header (a script
    reading the table still works), exit 0 as a replay or track that finds no cell does, and say
    on stderr why nothing is in it."""
    from dataclasses import replace

    from app.cli import main

    empty = tmp_path / "empty.rtdc"
    with EventWriter(empty, meta=make_meta()):
        pass
    flagged = tmp_path / "flagged.rtdc"
    with EventWriter(flagged, meta=make_meta()) as w:
        w.write([replace(r, event=replace(r.event, quality=Quality.DOUBLET)) for r in make_records(6)])
    capsys.readouterr()
    assert main(["export", str(empty), "--csv", str(tmp_path / "e.csv"), "--miml", str(tmp_path / "em")]) == 0
    out, err = capsys.readouterr()
    assert "0 cells -> " in out
    for table in (tmp_path / "e.csv", tmp_path / "em" / "cells_data.csv"):
        assert len(table.read_text().splitlines()) == 1  # the header
        assert f"mimlsort export: warning: {empty} holds no cells: {table} holds only the header" in err, err
    assert json.loads((tmp_path / "em" / "miml_export.json").read_text())["cells"] == 0
    # a filter that leaves nothing: the flags
    assert main(["export", str(flagged), "--miml", str(tmp_path / "fm")]) == 0
    err = capsys.readouterr().err
    table = tmp_path / "fm" / "cells_data.csv"
    assert len(table.read_text().splitlines()) == 1
    assert (f"mimlsort export: warning: none of the 6 cells of {flagged} is exported: each is flagged (DOUBLET, "
            f"BORDER, INCOMPLETE, LOW_CONTRAST, STUCK or SMALL; --include-flagged takes them in) or lacks a MIML "
            f"feature: {table} holds only the header") in err, err
    assert main(["export", str(flagged), "--miml", str(tmp_path / "fm2"), "--include-flagged"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_target_class_named_twice_is_one_target(run_file, tmp_path, capsys):
    """The live policy takes the target classes as a set; the report summed a class named twice
    twice: `--target hct116 --target hct116` read a purity estimate of 197.9 %, and so did a run
    whose configuration named it twice."""
    from app.cli import main

    path, records = run_file
    once = summarize(path)
    assert main(["report", str(path), "--out", str(tmp_path / "r"), "--target", "hct116", "--target", "hct116"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| target classes | hct116 (given to the report) |" in md
    assert f"| purity estimate | {100 * once.purity_estimate:.1f} % |" in md
    twice = tmp_path / "twice.rtdc"
    with EventWriter(twice, meta=make_meta(config_toml=CONFIG.replace('["hct116"]', '["hct116", "hct116"]'))) as w:
        w.write(records)
    s = summarize(twice)
    assert s.target_classes == ("hct116",) and 0 < s.purity_estimate <= 1 and 0 < s.sorted_purity_estimate <= 1
    assert (s.purity_estimate, s.recovery_estimate, s.sorted_purity_estimate, s.sorted_recovery_estimate) == \
        pytest.approx((once.purity_estimate, once.recovery_estimate, once.sorted_purity_estimate,
                       once.sorted_recovery_estimate))


def test_a_multi_line_run_error_stays_in_its_table_row(tmp_path):
    """A run error of several lines (ONNX Runtime's are) ended the Markdown table at its first line:
    the rest came out as paragraphs after it, and the HTML ran its lines together."""
    import html as html_module

    path = tmp_path / "failed.rtdc"
    error = ("decide: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x\n"
             " index: 1 Got: 3 Expected: 4\n Please fix either the inputs or the model.")
    with EventWriter(path, meta=make_meta()) as w:
        w.write(make_records(5))
        w.note_error(error)
    res = write_report(path, tmp_path / "r")
    md = res.markdown.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| run error |"))
    assert row == "| run error | " + error.replace("\n", "<br>") + " |"
    assert "Please fix" not in md.replace(row, "")  # no line of it outside the row
    page = res.html.read_text()
    assert "<td>run error</td><td>" + "<br>".join(html_module.escape(x) for x in error.split("\n")) + "</td>" in page


def test_the_sorting_table_says_when_no_pulse_went_out(tmp_path):
    """A replay at full speed decides without a trigger, a null or log trigger outputs no pulse: the
    report read "fired 152 of 340" and an outlet purity as if the cells had been sorted."""
    from dataclasses import replace

    records = make_records(40, seed=3)
    assert any(r.fire is not None for r in records)
    runs = {"replay": [replace(r, fire=None) for r in records], "log": records,
            "null": [replace(r, fire=replace(r.fire, device="null")) if r.fire else r for r in records],
            "serial": [replace(r, fire=replace(r.fire, device="serial:/dev/ttyACM0 (mimlsort-trigger 1 1.1.0)"))
                       if r.fire else r for r in records]}
    rows = {}
    for name, recs in runs.items():
        path = tmp_path / f"{name}.rtdc"
        with EventWriter(path, meta=make_meta(config_toml=CONFIG)) as w:
            w.write(recs)
        s = summarize(path)
        assert s.fired.count == sum(r.decision.fire for r in records) > 0  # the decisions, in every case
        md = to_markdown(s, {})
        rows[name] = next(line for line in md.splitlines() if line.startswith("| trigger |"))
    assert "none: the run decided without a trigger" in rows["replay"] and "no pulse was sent" in rows["replay"]
    assert "null: no pulse was output" in rows["null"] and "log: pulses written to the pulse log" in rows["log"]
    for name in ("replay", "null", "log"):
        assert "the fired cells and the outlet are what the run would have sorted" in rows[name]
    assert rows["serial"] == "| trigger | serial |"


def test_pulses_the_device_did_not_confirm_are_in_the_sorting_table(tmp_path):
    # the serial emulator with a noisy link: 156 fired, 51 acknowledged, 97 refused, and the 8 whose
    # ack was lost only in the counters table at the foot of the report
    path = tmp_path / "unacked.rtdc"
    with EventWriter(path, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(make_records(30, seed=4))
        w.note_counters({"unacked": 3, "late_acks": 1})
    md = to_markdown(summarize(path), {})
    sorting = md.split("## Sorting", 1)[1].split("## ", 1)[0]
    assert "| pulses the device did not confirm (no ack: taken as output) | 3 |" in sorting
    plain = tmp_path / "plain.rtdc"
    with EventWriter(plain, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(make_records(30, seed=4))
        w.note_counters({"unacked": 0})
    assert "did not confirm" not in to_markdown(summarize(plain), {})


def test_a_run_with_sorting_off_says_so_beside_its_estimates(tmp_path):
    # its Sorting table read as a sort of hct116 that fired none: "fired 0 of 340", "recovery 0.0 %"
    path = tmp_path / "off.rtdc"
    with EventWriter(path, meta=make_meta(config_toml=CONFIG + "enabled = false\n")) as w:
        w.write([r for r in make_records(30, seed=4) if not r.decision.fire])
    md = to_markdown(summarize(path), {})
    assert '| sorting | off (sorting.enabled = false when the run started)' in md
    assert "| sorting |" not in to_markdown(summarize(_plain(tmp_path)), {})


def _plain(tmp_path):
    path = tmp_path / "on.rtdc"
    with EventWriter(path, meta=make_meta(config_toml=CONFIG)) as w:
        w.write(make_records(30, seed=4))
    return path
