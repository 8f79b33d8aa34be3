"""``mimlsort train`` / ``mimlsort evaluate`` on tiny data, event-file import, simulated data."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli import main

ROOT = Path(__file__).resolve().parents[1]
MIML_SAMPLE = ROOT.parent / "shared" / "data" / "miml_t4t8"
if not MIML_SAMPLE.is_dir():
    MIML_SAMPLE = Path("/work/shared/data/miml_t4t8")


@pytest.fixture()
def torch():
    torch = pytest.importorskip("torch", reason="the training extra (torch) is not installed")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(n)


def _events(n: int, label: int, seed: int):
    from tests.test_training import synthetic_events

    return synthetic_events(n, label, seed)


def _event_table(folder: Path, events, label_column: str | None = None) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "di", "transit_time_ms", "v_max_mm_s", "first_crop", "last_crop"]
                   + ([label_column] if label_column else []))
        for e in events:
            for which, img in (("first", e.first_crop), ("last", e.last_crop)):
                cv2.imwrite(str(folder / f"{e.index}_{which}.png"), img)
            w.writerow([f"e{e.index}", e.features["di"], e.features["transit_time_ms"], e.features["v_max_mm_s"],
                        f"{e.index}_first.png", f"{e.index}_last.png"] + ([label_column] if label_column else []))
    return path


def test_train_and_evaluate_event_tables(tmp_path, torch, capsys):
    a = _event_table(tmp_path / "runA", _events(12, 0, 1))
    b = _event_table(tmp_path / "runB", _events(12, 1, 2))
    out = tmp_path / "model"
    code = main(["train", f"{a}=healthy", f"{b}=stiff", "--out", str(out), "--arch", "miml-mini", "--epochs", "2",
                 "--folds", "2", "--batch-size", "8", "--test-fraction", "0.25", "--no-progress", "--seed", "3",
                 "--pixel-size", "0.5"])
    assert code == 0
    text = capsys.readouterr().out
    assert "cross-validation (2 folds)" in text and "held-out test (6 cells)" in text
    for name in ("model.onnx", "model.pt", "report.md", "roc.png", "confusion.png", "metrics.json",
                 "test/report.md", "test/roc.png", "test/confusion.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## Held-out test" in report and "## Cross-validation (per fold)" in report

    from inference.classifier import Classifier

    with Classifier(out / "model.onnx") as clf:
        assert clf.classes == ("healthy", "stiff")
        prov = clf.spec.provenance
        assert prov.metrics["test_n"] == 6 and 0 <= prov.metrics["test_accuracy"] <= 1
        assert prov.metrics["cv_folds"] == 2
        assert prov.seed == 3 and prov.training["epochs"] == 2
        assert any("runA" in d or "events.csv" in d for d in prov.data)
        assert clf.spec.image.crop_size_um == pytest.approx(20.0) and clf.spec.image.pixel_size_um == 0.5

    # fine-tune the exported model (its .pt is beside it) with the image branch frozen
    code = main(["train", f"{a}=healthy", f"{b}=stiff", "--init-from", str(out / "model.onnx"), "--freeze-image-branch",
                 "--out", str(tmp_path / "tuned"), "--epochs", "1", "--folds", "0", "--val-fraction", "0",
                 "--no-progress", "--pixel-size", "0.5"])
    assert code == 0
    with Classifier(tmp_path / "tuned" / "model.onnx") as tuned:
        assert tuned.spec.provenance.parent == str(out / "model.onnx")
        assert tuned.spec.provenance.training["freeze_image_branch"] is True
        assert tuned.spec.features == clf.spec.features  # the parent's normalisation is kept

    code = main(["evaluate", str(out / "model.onnx"), f"{a}=healthy", f"{b}=stiff", "--out", str(tmp_path / "eval"),
                 "--folds", "3", "--pixel-size", "0.5"])
    assert code == 0
    ev = (tmp_path / "eval" / "report.md").read_text()
    assert "| 3 |" in ev and "ROC-AUC" in ev
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 24 and len(metrics["folds"]) == 3


def test_train_on_the_authors_sample_and_evaluate(tmp_path, torch, capsys):
    out = tmp_path / "authors"
    assert main(["train", str(MIML_SAMPLE), "--out", str(out), "--epochs", "1", "--folds", "3", "--batch-size", "8",
                 "--no-progress"]) == 0
    assert (out / "model.onnx").is_file()
    assert "identical image with DIFFERENT labels" in (out / "report.md").read_text()
    assert main(["evaluate", str(out / "model.onnx"), str(MIML_SAMPLE / "val_data.csv"), "--out",
                 str(tmp_path / "ev"), "--folds", "0"]) == 0
    assert "5 cells: accuracy" in capsys.readouterr().out


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x")]) == 2
    assert "give data" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.csv") + "=a", "--out", str(tmp_path / "x")]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    (tmp_path / "run.rtdc").write_bytes(b"")
    assert main(["evaluate", str(tmp_path / "nomodel.onnx"), str(tmp_path / "run.rtdc"), "--out", str(tmp_path / "e")]) == 2
    assert "run.rtdc=CLASS" in capsys.readouterr().err


def test_train_without_torch_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from app.cli import main\n"
            f"sys.exit(main(['train', {str(MIML_SAMPLE)!r}, '--out', {str(tmp_path / 'o')!r}]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "mimlsort[train]" in out.stderr


def test_event_file_imports_as_training_data(tmp_path):
    storage = pytest.importorskip("app.storage", reason="the event file writer (issue 5) is not there yet")
    from app.records import CellRecord
    from inference.training.data import dataset_from_path
    from tracking.events import Quality

    events = _events(6, 0, 5)
    events[2] = dataclasses.replace(events[2], quality=Quality.BORDER)
    events[4] = dataclasses.replace(events[4], quality=Quality.TOUCHING)  # measured whole where not cut: kept
    meta = storage.RunMeta(pixel_size_um=0.5, fps=4000.0, roi=(256, 96))
    path = tmp_path / "run.rtdc"
    with storage.EventWriter(path, meta=meta, min_free_bytes=0) as w:
        w.write([CellRecord(e, np.zeros(0, np.float32), None) for e in events])
    ds = dataset_from_path(f"{path}=healthy")
    assert len(ds) == 5 and ds.class_names == ("healthy",)  # the BORDER event is left out
    assert ds.feature_names == ("di", "transit_time_ms", "v_max_mm_s")
    assert ds.crop_pixel_size_um == 0.5
    ok = [e for e in events if e.trainable]
    assert events[4] in ok and events[2] not in ok
    np.testing.assert_array_equal(ds.first, np.stack([e.first_crop for e in ok]))
    np.testing.assert_allclose(ds.features[:, 0], [e.features["di"] for e in ok])
    assert any("quality flags left out" in n for n in ds.report.notes)


def test_simulated_data_is_labelled_with_the_truth():
    pytest.importorskip("acquisition.synthetic", reason="the synthetic camera (issue 2) is not there yet")
    from app.simdata import SimulatedData, simulated_dataset

    ds = simulated_dataset(SimulatedData(seconds=0.5, seed=4))
    assert len(ds) >= 4
    assert len(ds.class_names) >= 2
    assert set(ds.feature_names) >= {"di", "transit_time_ms", "v_max_mm_s"}
    assert len(set(ds.groups)) == len(ds)  # one group per cell
    assert ds.crop_pixel_size_um and ds.crop_pixel_size_um > 0
    again = simulated_dataset(SimulatedData(seconds=0.5, seed=4))
    np.testing.assert_array_equal(again.features, ds.features)  # deterministic for a seed
    np.testing.assert_array_equal(again.labels, ds.labels)
