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


def _events(n: int, label: int, seed: int, **kw):
    from tests.test_training import synthetic_events

    return synthetic_events(n, label, seed, **kw)


def _event_table(folder: Path, events, label_column: str | None = None,
                 features: tuple[str, ...] = ("di", "transit_time_ms", "v_max_mm_s")) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", *features, "first_crop", "last_crop"] + ([label_column] if label_column else []))
        for e in events:
            for which, img in (("first", e.first_crop), ("last", e.last_crop)):
                cv2.imwrite(str(folder / f"{e.index}_{which}.png"), img)
            w.writerow([f"e{e.index}", *(e.features[f] for f in features),
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
    assert "every recording holds cells of one class only" in text  # runA healthy, runB stiff
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
    from inference.training.train import load_checkpoint

    # the checkpoint (fine-tuning starts from it) carries the same provenance: it lacked the test figures
    assert load_checkpoint(out / "model.pt")[1].provenance == prov

    # fine-tune the exported model (its .pt is beside it) with the image branch frozen
    code = main(["train", f"{a}=healthy", f"{b}=stiff", "--init-from", str(out / "model.onnx"), "--freeze-image-branch",
                 "--out", str(tmp_path / "tuned"), "--epochs", "1", "--folds", "0", "--val-fraction", "0",
                 "--no-progress", "--pixel-size", "0.5"])
    assert code == 0
    # no folds, no validation cells: the command named a report.md it had not written
    bare = (tmp_path / "tuned" / "report.md").read_text()
    assert "measured no accuracy" in bare and "24 cells" in bare
    with Classifier(tmp_path / "tuned" / "model.onnx") as tuned:
        assert tuned.spec.provenance.parent == str(out / "model.onnx")
        assert tuned.spec.provenance.training["freeze_image_branch"] is True
        assert tuned.spec.features == clf.spec.features  # the parent's normalisation is kept

    code = main(["evaluate", str(out / "model.onnx"), f"{a}=healthy", f"{b}=stiff", "--out", str(tmp_path / "eval"),
                 "--folds", "3", "--pixel-size", "0.5"])
    assert code == 0
    ev = (tmp_path / "eval" / "report.md").read_text()
    assert "| 3 |" in ev and "ROC-AUC" in ev
    # one model scored on three parts: its report called that "Cross-validation"
    assert "## Per part of the data (3 grouped, stratified parts; one model" in ev and "Cross-validation" not in ev
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 24 and len(metrics["folds"]) == 3

    # nothing of a training is replaced: not its model (event files name it by its hash), not
    # its report by an evaluation written into its folder; an evaluation's own report is
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", f"{a}=healthy", f"{b}=stiff", "--out", str(out), "--epochs", "1", "--folds", "0",
                 "--no-progress", "--pixel-size", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "model.onnx: exists (an earlier result); refusing to overwrite it" in err and "--replace" in err
    assert main(["evaluate", str(out / "model.onnx"), f"{a}=healthy", f"{b}=stiff", "--out", str(out),
                 "--folds", "0", "--pixel-size", "0.5"]) == 2
    assert "report.md: exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept
    assert main(["evaluate", str(out / "model.onnx"), f"{a}=healthy", f"{b}=stiff", "--out", str(tmp_path / "eval"),
                 "--folds", "0", "--pixel-size", "0.5"]) == 0
    assert main(["train", f"{a}=healthy", f"{b}=stiff", "--out", str(tmp_path / "n"), "--name", "../x"]) == 2
    assert "--name" in capsys.readouterr().err
    # asked for (`make model` retrains the bundled model in its folder)
    assert main(["train", f"{a}=healthy", f"{b}=stiff", "--out", str(out), "--epochs", "1", "--folds", "0",
                 "--val-fraction", "0", "--no-progress", "--pixel-size", "0.5", "--replace"]) == 0
    assert (out / "model.onnx").read_bytes() != kept["model.onnx"]


def test_train_on_the_authors_sample_and_evaluate(tmp_path, torch, capsys):
    out = tmp_path / "authors"
    assert main(["train", str(MIML_SAMPLE), "--out", str(out), "--epochs", "1", "--folds", "3", "--batch-size", "8",
                 "--no-progress"]) == 0
    assert (out / "model.onnx").is_file()
    assert "identical image with DIFFERENT labels" in (out / "report.md").read_text()
    assert main(["evaluate", str(out / "model.onnx"), str(MIML_SAMPLE / "val_data.csv"), "--out",
                 str(tmp_path / "ev"), "--folds", "0"]) == 0
    assert "5 cells: accuracy" in capsys.readouterr().out
    # tracked cells (ms, mm/s) are not what it saw: refused as replay refuses it (it reported an
    # accuracy of 0 or 1)
    a = _event_table(tmp_path / "runA", _events(4, 0, 1))
    assert main(["evaluate", str(out / "model.onnx"), f"{a}=T4", "--out", str(tmp_path / "ev2"),
                 "--folds", "0", "--pixel-size", "0.5"]) == 2
    assert "other units than the data" in capsys.readouterr().err


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x")]) == 2
    assert "give data" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.csv") + "=a", "--out", str(tmp_path / "x")]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    (tmp_path / "run.rtdc").write_bytes(b"")
    assert main(["evaluate", "demo", str(tmp_path / "run.rtdc"), "--out", str(tmp_path / "e")]) == 2
    assert "run.rtdc=CLASS" in capsys.readouterr().err
    # a model that is not there is said before the data are loaded
    assert main(["evaluate", str(tmp_path / "nomodel.onnx"), str(tmp_path / "missing.csv") + "=a", "--out",
                 str(tmp_path / "e")]) == 2
    assert "nomodel.onnx: no such model file" in capsys.readouterr().err


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


def test_event_file_with_unmeasured_kept_events_names_file_and_feature(tmp_path):
    # --all-events keeps an INCOMPLETE cell whose transit time is NaN: the file was said to "lack
    # the MIML features" it holds, naming no file
    storage = pytest.importorskip("app.storage")
    from app.records import CellRecord
    from inference.training.data import dataset_from_path
    from mimlsort.errors import DataFormatError
    from tracking.events import Quality

    events = _events(4, 0, 5)
    events[1] = dataclasses.replace(events[1], quality=Quality.INCOMPLETE,
                                    features={**events[1].features, "transit_time_ms": float("nan")})
    path = tmp_path / "run.rtdc"
    with storage.EventWriter(path, meta=storage.RunMeta(pixel_size_um=0.5, fps=4000.0, roi=(256, 96)),
                             min_free_bytes=0) as w:
        w.write([CellRecord(e, np.zeros(0, np.float32), None) for e in events])
    assert len(dataset_from_path(f"{path}=a")) == 3
    with pytest.raises(DataFormatError) as e:
        dataset_from_path(f"{path}=a", only_ok=False)
    assert str(e.value).startswith(f"{path}: transit_time_ms is not measured (NaN) in 1 of the 4 events read")
    assert "--all-events" in str(e.value) and "give --features they all have" in str(e.value)
    # every cell flagged (a reanalysed file's are INCOMPLETE): "no usable events" said no more
    whole = tmp_path / "reanalysed.rtdc"
    with storage.EventWriter(whole, meta=storage.RunMeta(pixel_size_um=0.5, fps=4000.0, roi=(256, 96)),
                             min_free_bytes=0) as w:
        w.write([CellRecord(dataclasses.replace(e, quality=Quality.INCOMPLETE), np.zeros(0, np.float32), None)
                 for e in events])
    with pytest.raises(DataFormatError) as e:
        dataset_from_path(f"{whole}=a")
    assert str(e.value).startswith(f"{whole}: no usable events: all 4 carry quality flags that leave them out of "
                                   f"training (INCOMPLETE 4). --all-events keeps them")
    # features named explicitly: the cell and the feature are named
    with pytest.raises(DataFormatError, match=r"run#1 in run\.rtdc: transit_time_ms = nan"):
        dataset_from_path(f"{path}=a", only_ok=False, feature_names=("di", "transit_time_ms"))


def test_a_model_of_one_image_features_evaluates_on_the_files_it_trained_on(tmp_path, torch, capsys):
    # evaluate read the default (MIML) features, which reanalysed cells lack: a model trained with
    # --features di,deform,area_um on such files could not be evaluated on them
    storage = pytest.importorskip("app.storage")
    from app.records import CellRecord
    from tracking.events import Quality

    paths = []
    for label, seed in ((0, 1), (1, 2)):
        events = [dataclasses.replace(e, quality=Quality.INCOMPLETE,
                                      features={"di": e.features["di"], "deform": e.features["di"] / 3,
                                                "area_um": 40.0 + 10 * label + e.index % 3})
                  for e in _events(5, label, seed)]
        paths.append(tmp_path / f"re{label}.rtdc")
        with storage.EventWriter(paths[-1], meta=storage.RunMeta(pixel_size_um=0.5, fps=4000.0, roi=(256, 96)),
                                 min_free_bytes=0) as w:
            w.write([CellRecord(e, np.zeros(0, np.float32), None) for e in events])
    data = [f"{paths[0]}=a", f"{paths[1]}=b", "--all-events"]
    assert main(["train", *data, "--features", "di,deform,area_um", "--arch", "feature-only", "--epochs", "1",
                 "--batch-size", "4", "--folds", "0", "--no-progress", "--out", str(tmp_path / "m")]) == 0
    assert main(["evaluate", str(tmp_path / "m" / "model.onnx"), *data, "--folds", "0", "--out",
                 str(tmp_path / "e")]) == 0, capsys.readouterr().err
    assert "10 cells: accuracy" in capsys.readouterr().out


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


# ---------------------------------------------------------------------------------------------
# bad options and inputs: one line naming the option or file, exit code 2, no traceback, no litter


@pytest.mark.parametrize("opts,message", [
    (["--batch-size", "0"], "--batch-size: must be at least 2"),
    (["--batch-size", "1"], "--batch-size: must be at least 2"),  # BatchNorm cannot train on one sample
    (["--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
    (["--lr", "0"], "--lr: must be a finite number > 0"),
    (["--val-fraction", "1.5"], "--val-fraction: must be in [0, 1), got 1.5"),
    (["--test-fraction", "-0.1"], "--test-fraction: must be in [0, 1), got -0.1"),
    (["--val-fraction", "0.5", "--test-fraction", "0.5"], "--val-fraction: plus --test-fraction must be below 1"),
    (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["--patience", "-1"], "--patience: must be 0 (off) or a number of epochs, got -1"),
    (["--folds", "-1"], "--folds: must be 0 or 1 (no cross-validation) or at least 2, got -1"),
    (["--arch", "resnet"], "--arch: unknown architecture 'resnet'"),
    # the simulator's own words named its settings ("runs: must be >= 1"), not the options
    (["--simulated", "--sim-runs", "0"], "--sim-runs: must be >= 1, got 0"),
    (["--simulated", "--sim-seconds", "inf"], "--sim-seconds: must be finite, got inf"),
    (["--simulated", "--sim-classes", "hct116=1,foo=1"], "--sim-classes: unknown classes ['foo']"),
    # after the data were loaded, in the spec's words: "crop_size_um: must be > 0 µm, got -40.0", "height: …"
    (["--pixel-size", "-1"], "--pixel-size: must be a finite number of µm per pixel > 0, got -1.0"),
    (["--pixel-size", "inf"], "--pixel-size: must be a finite number of µm per pixel > 0, got inf"),
    (["--image-size", "4"], "--image-size: must be in [8, 1024] pixels, got 4"),
    (["--image-size", "0"], "--image-size: must be in [8, 1024] pixels, got 0"),  # was the default, silently
    (["--channels", "first,lats"], "--channels: must name first and/or last, each once, got first,lats"),
    (["--channels", "last,last"], "--channels: must name first and/or last, each once, got last,last"),
    # trained a model whose image branch stayed random
    (["--freeze-image-branch"], "--freeze-image-branch: keeps the image branch of the model given with --init-from"),
])
def test_train_options_are_checked_before_the_data(tmp_path, torch, capsys, opts, message):
    out = tmp_path / "out"
    # the data path does not exist: an option checked only after loading would report it instead
    assert main(["train", str(tmp_path / "missing.csv") + "=a", "--out", str(out), "--no-progress", *opts]) == 2
    err = capsys.readouterr().err
    assert message in err and "missing.csv" not in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_experiment_and_evaluate_options_are_checked(tmp_path, torch, capsys):
    assert main(["experiment", "baselines", "--out", str(tmp_path / "x"), "--epochs", "0"]) == 2
    assert "--epochs: must be at least 1" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "missing.csv") + "=a", "--out",
                 str(tmp_path / "e"), "--folds", "-2"]) == 2
    assert "--folds: must be 0 or 1 (no cross-validation) or at least 2, got -2" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "m.onnx"), str(tmp_path / "missing.csv") + "=a", "--out",
                 str(tmp_path / "e"), "--pixel-size", "0"]) == 2
    assert "--pixel-size: must be a finite number of µm per pixel > 0, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize("opts,message", [
    # found after simulating and training the architectures before it, naming no option
    (["baselines", "--archs", "miml-mini,resnet"], "--archs: unknown architecture 'resnet'"),
    (["transfer", "--draws", "0"], "--draws: must be at least 1, got 0"),  # a traceback after the parent's training
    (["transfer", "--few", "1"], "--few: must be at least 2"),  # "the data hold only {'wbc': 0, 'wbc-stiff': 0}"
    (["transfer", "--device", "cuda:99"], "--device: device 'cuda:99'"),  # said after the simulation
    (["baselines", "--sim-runs", "0"], "--sim-runs: must be >= 1, got 0"),
])
def test_experiment_options_are_checked_before_it_starts(tmp_path, torch, capsys, opts, message):
    out = tmp_path / "x"
    assert main(["experiment", *opts, "--out", str(out), "--sim-seconds", "0.3", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_an_experiment_refuses_the_folder_of_an_earlier_one_unless_replace(tmp_path, torch, capsys):
    # a second experiment into the folder replaced the first's models and experiment.md unasked
    out = tmp_path / "x"
    out.mkdir()
    (out / "experiment.md").write_text("# mimlsort experiment baselines\n")
    assert main(["experiment", "baselines", "--out", str(out), "--sim-runs", "0", "--no-progress"]) == 2
    assert "--sim-runs" in capsys.readouterr().err  # the options still come first
    assert main(["experiment", "baselines", "--out", str(out), "--sim-seconds", "0.3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "experiment.md: exists" in err and "--replace" in err, err
    assert (out / "experiment.md").read_text() == "# mimlsort experiment baselines\n"


def test_a_model_to_fine_tune_is_checked_against_the_options_before_the_data(tmp_path, torch, capsys):
    # a report given as --init-from, or an --arch of another kind, was found after the data were
    # loaded (torch's dozen lines advising weights_only=False); --channels was ignored
    from inference.training.models import build_model
    from inference.training.train import save_checkpoint
    from inference.spec import FeatureSpec, ImageSpec, ModelSpec

    spec = ModelSpec(("a", "b"), tuple(FeatureSpec(n, mean=0.0, std=1.0) for n in ("di", "area_um")),
                     ImageSpec(48, 48, ("first", "last"), 20.0, 0.5), "miml-mini")
    parent = save_checkpoint(tmp_path / "parent.pt", build_model("miml-mini", in_channels=2, n_features=2,
                                                                 n_classes=2), spec)
    (tmp_path / "notes.md").write_text("# not a model\n")
    table = _event_table(tmp_path / "run", _events(4, 0, 1))
    for opts, message in (
            (["--init-from", str(tmp_path / "notes.md")],
             f"--init-from: {tmp_path / 'notes.md'}: not a mimlsort checkpoint (torch cannot read it"),
            (["--arch", "image-only"], "--arch: image-only, but the model to fine-tune"),
            (["--channels", "last"], "--channels: last, but the model to fine-tune"),
            (["--image-size", "64"], "--image-size: 64, but the model to fine-tune"),
            (["--features", "di,transit_time_ms"], "takes di,area_um: leave --features out")):
        argv = ["train", str(tmp_path / "missing.csv") + "=a", "--out", str(tmp_path / "o"), "--init-from", str(parent),
                *opts]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "missing.csv" not in err and len(err.strip().splitlines()) == 1, err
    # the data are read with the parent's features; one they lack is said to be the parent's
    assert main(["train", f"{table}=a", "--out", str(tmp_path / "o"), "--init-from", str(parent), "--pixel-size",
                 "0.5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--init-from: the model to fine-tune ({parent}) takes features ['di', 'area_um']" in err
    assert not (tmp_path / "o").exists()


def test_features_named_for_files_and_simulated_cells_together(tmp_path, torch, capsys):
    # simulated cells carry every MIML feature, a file read with --features only those: the parts
    # did not unite ("feature names differ: ('di', 'transit_time_ms') vs (…, 'dir_per_ms')")
    table = _event_table(tmp_path / "run", _events(6, 0, 1, size=80))
    argv = ["train", f"{table}=mine", "--simulated", "--sim-seconds", "0.3", "--features", "di,transit_time_ms",
            "--pixel-size", "0.5", "--epochs", "1", "--folds", "0", "--no-progress", "--out", str(tmp_path / "m")]
    assert main(argv) == 0, capsys.readouterr().err
    from inference.spec import read_spec

    spec = read_spec(tmp_path / "m" / "model.onnx")
    assert spec.feature_names == ("di", "transit_time_ms") and "mine" in spec.class_names


def test_more_folds_than_cells_of_a_class_is_rejected_by_train_and_evaluate(tmp_path, torch, capsys):
    # the bundled model's features: evaluate reads the data with them, and says first when they lack one
    feats = ("di", "transit_time_ms", "v_max_mm_s", "dir_per_ms")
    a = _event_table(tmp_path / "runA", _events(3, 0, 1, dir_feature=True), features=feats)
    b = _event_table(tmp_path / "runB", _events(5, 1, 2, dir_feature=True), features=feats)
    data = [f"{a}=healthy", f"{b}=stiff"]
    for cmd in (["train", *data, "--epochs", "1", "--no-progress"],
                ["evaluate", "demo", *data]):
        assert main([*cmd, "--out", str(tmp_path / "o"), "--folds", "4"]) == 2, cmd
        err = capsys.readouterr().err
        assert "--folds: 4-fold cross-validation needs at least 4 cells of every class, but class 'healthy' has 3" in err
        assert not (tmp_path / "o").exists()
    # train: counted on what is left after --test-fraction (2 of the 3 healthy cells)
    assert main(["train", *data, "--out", str(tmp_path / "o"), "--folds", "3", "--test-fraction", "0.3"]) == 2
    assert "class 'healthy' has 2 (after --test-fraction)" in capsys.readouterr().err
    # folds 0 and 1 still mean "no cross-validation"; the default (5) is lowered to the smallest class
    assert main(["train", *data, "--out", str(tmp_path / "t"), "--arch", "feature-only", "--epochs", "1",
                 "--batch-size", "4", "--val-fraction", "0", "--folds", "1", "--no-progress"]) == 0
    assert "cross-validation" not in capsys.readouterr().out
    assert main(["train", *data, "--out", str(tmp_path / "d"), "--arch", "feature-only", "--epochs", "1",
                 "--batch-size", "4", "--val-fraction", "0", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "class 'healthy' has 3 cells: 3-fold cross-validation" in captured.err
    assert "cross-validation (3 folds)" in captured.out


def test_out_that_is_a_file_is_named(tmp_path, torch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for cmd in (["train", str(tmp_path / "missing.csv") + "=a"],
                ["evaluate", "demo", str(tmp_path / "missing.csv") + "=a"]):
        assert main([*cmd, "--out", str(afile)]) == 2
        err = capsys.readouterr().err
        assert f"--out: {afile}: exists and is not a folder" in err and "Traceback" not in err
        assert main([*cmd, "--out", str(afile / "sub")]) == 2
        assert f"{afile} is not a folder" in capsys.readouterr().err
    assert afile.read_text() == "not a folder"


def test_failed_train_leaves_no_empty_out_folder(tmp_path, torch, capsys):
    a = _event_table(tmp_path / "runA", _events(4, 0, 1))
    out = tmp_path / "new" / "model"
    # one class only: found by the training itself, after the output folder was made
    assert main(["train", f"{a}=healthy", "--out", str(out), "--epochs", "1", "--folds", "0", "--no-progress"]) == 2
    assert "at least two classes" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["train", f"{a}=healthy", "--out", str(existing), "--epochs", "1", "--folds", "0",
                 "--no-progress"]) == 2
    assert existing.is_dir()  # not ours to remove


def test_evaluate_feature_mismatch_names_model_and_data(tmp_path, torch, capsys):
    feats = ("di", "transit_time_ms", "v_max_mm_s", "dir_per_ms")
    a = _event_table(tmp_path / "runA", _events(4, 0, 1, dir_feature=True), features=feats)
    b = _event_table(tmp_path / "runB", _events(4, 1, 2, dir_feature=True), features=feats)
    out = tmp_path / "m"
    assert main(["train", f"{a}=healthy", f"{b}=stiff", "--out", str(out), "--arch", "feature-only", "--epochs", "1",
                 "--batch-size", "4", "--folds", "0", "--val-fraction", "0", "--no-progress"]) == 0
    capsys.readouterr()
    model = out / "model.onnx"
    assert main(["evaluate", str(model), str(MIML_SAMPLE), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    [line] = [ln for ln in err.splitlines() if "error:" in ln]
    assert str(model) in line and str(MIML_SAMPLE) in line and "dir_per_ms" in line
    assert "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_evaluate_on_crops_of_unknown_pixel_size_names_model_data_and_option(tmp_path, torch, capsys):
    # "the crops' pixel size must be known, got None": no model, no data, no way out
    a = _event_table(tmp_path / "runA", _events(4, 0, 1))
    b = _event_table(tmp_path / "runB", _events(4, 1, 2))
    out = tmp_path / "m"
    assert main(["train", f"{a}=healthy", f"{b}=stiff", "--out", str(out), "--arch", "feature-only", "--epochs", "1",
                 "--batch-size", "4", "--folds", "0", "--val-fraction", "0", "--no-progress", "--pixel-size", "0.5"]) == 0
    capsys.readouterr()
    model = out / "model.onnx"
    assert main(["evaluate", str(model), f"{a}=healthy", "--out", str(tmp_path / "e"), "--folds", "0"]) == 2
    err = capsys.readouterr().err
    assert (f"{model}: the model sees a 20 µm field (trained at 0.5 µm/pixel), but the data ({a}=healthy) do not say "
            f"their crops' pixel size: give --pixel-size") in err
    assert not (tmp_path / "e").exists()
    assert main(["evaluate", str(model), f"{a}=healthy", "--out", str(tmp_path / "e"), "--pixel-size", "0.5"]) == 0


def test_replace_leaves_no_report_of_the_replaced_model(tmp_path, torch, capsys):
    # a --replace training that measured nothing kept the earlier report.md (the command named it
    # as its own), its metrics.json and figures, and the held-out test of a model no longer there
    a = _event_table(tmp_path / "runA", _events(6, 0, 1))
    b = _event_table(tmp_path / "runB", _events(6, 1, 2))
    out = tmp_path / "m"
    common = [f"{a}=healthy", f"{b}=stiff", "--out", str(out), "--arch", "feature-only", "--epochs", "1",
              "--batch-size", "4", "--no-progress", "--pixel-size", "0.5"]
    assert main(["train", *common, "--folds", "2", "--test-fraction", "0.3"]) == 0
    assert (out / "test" / "report.md").is_file() and (out / "metrics.json").is_file()
    assert main(["train", *common, "--folds", "0", "--val-fraction", "0", "--replace"]) == 0
    assert "measured no accuracy" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt", "report.md"]
    capsys.readouterr()


def test_a_class_too_small_to_hold_out_is_named_in_the_test_figures(tmp_path, torch, capsys):
    # its one cell stays in training; the held-out figures averaged the other class alone and
    # read "accuracy 1.0000, macro F1 1.0000" without saying a class was never tested
    a = _event_table(tmp_path / "runA", _events(6, 0, 1))
    b = _event_table(tmp_path / "runB", _events(1, 1, 2))
    out = tmp_path / "m"
    assert main(["train", f"{a}=many", f"{b}=rare", "--out", str(out), "--arch", "feature-only", "--epochs", "1",
                 "--batch-size", "4", "--test-fraction", "0.3", "--no-progress", "--pixel-size", "0.5"]) == 0
    note = "(no cell of 'rare' was held out: too few to spare; these figures say nothing about it)"
    assert note in capsys.readouterr().out and note in (out / "report.md").read_text()


def test_the_held_out_cells_are_listed_and_evaluate_scores_exactly_them(tmp_path, torch, capsys):
    # train said how many cells it held out, never which: its test figures could not be checked
    a = _event_table(tmp_path / "runA", _events(8, 0, 1))
    b = _event_table(tmp_path / "runB", _events(8, 1, 2))  # the same file name and cell ids as runA's
    data = [f"{a}=healthy", f"{b}=stiff", "--pixel-size", "0.5"]
    out = tmp_path / "m"
    assert main(["train", *data, "--out", str(out), "--arch", "feature-only", "--epochs", "1", "--batch-size", "4",
                 "--folds", "0", "--test-fraction", "0.3", "--no-progress", "--seed", "2"]) == 0
    from inference.spec import read_spec

    prov = read_spec(out / "model.onnx").provenance
    assert prov.training["test_cells"] == "test_cells.csv" and prov.training["test_fraction"] == 0.3
    with (out / "test_cells.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == prov.metrics["test_n"] > 0
    assert {(r["data"], r["class"]) for r in rows} == {(str(a.resolve()), "healthy"), (str(b.resolve()), "stiff")}
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.onnx"), *data, "--cells", str(out / "test_cells.csv"), "--folds", "0",
                 "--out", str(tmp_path / "e")]) == 0
    assert (f"{prov.metrics['test_n']} cells: accuracy {prov.metrics['test_accuracy']:.4f}, macro F1 "
            f"{prov.metrics['test_macro_f1']:.4f}") in capsys.readouterr().out
    assert "test_cells.csv" in (tmp_path / "e" / "report.md").read_text()
    # other data than the training's, or its files called other classes, are refused by name
    assert main(["evaluate", str(out / "model.onnx"), f"{a}=healthy", "--pixel-size", "0.5", "--cells",
                 str(out / "test_cells.csv"), "--out", str(tmp_path / "e2")]) == 2
    assert "cells listed are not in the data given" in capsys.readouterr().err
    assert main(["evaluate", str(out / "model.onnx"), f"{a}=stiff", f"{b}=healthy", "--pixel-size", "0.5",
                 "--cells", str(out / "test_cells.csv"), "--out", str(tmp_path / "e2")]) == 2
    assert "is listed as class" in capsys.readouterr().err
    assert main(["evaluate", str(out / "model.onnx"), *data, "--cells", str(a), "--out", str(tmp_path / "e2")]) == 2
    assert "--cells: " in capsys.readouterr().err and not (tmp_path / "e2").exists()


def test_cells_of_two_files_with_the_same_ids_are_not_one_group(tmp_path):
    from app.cli import build_parser
    from app.cli_train import _load_data

    a = _event_table(tmp_path / "runA", _events(4, 0, 1))
    b = _event_table(tmp_path / "runB", _events(4, 1, 2))  # ids e0..e3 too
    args = build_parser().parse_args(["evaluate", "demo", f"{a}=healthy", f"{b}=stiff", "--out", str(tmp_path / "e")])
    ds, origins = _load_data(args, role="evaluate")
    assert len(ds) == 8 and len(set(ds.groups)) == 8  # were 4, each a healthy and a stiff cell
    assert sorted(set(origins)) == sorted({str(a.resolve()), str(b.resolve())})


def test_a_file_given_twice_is_refused(tmp_path, torch, capsys):
    # held out by recording, its two copies sat on both sides of the split
    a = _event_table(tmp_path / "runA", _events(4, 0, 1))
    b = _event_table(tmp_path / "runB", _events(4, 1, 2))
    copy = tmp_path / "runA" / ".." / "runA" / "events.csv"
    assert main(["train", f"{a}=x", f"{copy}=x", f"{b}=y", f"{b}=y", "--hold-out", "recording", "--out",
                 str(tmp_path / "m"), "--no-progress"]) == 2
    assert f"{copy}=x: the data {a}=x again: give each file or folder once" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_evaluate_on_an_event_file_without_events_says_so(tmp_path, capsys):
    storage = pytest.importorskip("app.storage", reason="the event file writer (issue 5) is not there yet")

    path = tmp_path / "empty.rtdc"
    with storage.EventWriter(path, meta=storage.RunMeta(pixel_size_um=0.5, fps=4000.0, roi=(256, 96)),
                             min_free_bytes=0):
        pass
    assert main(["evaluate", "demo", f"{path}=a", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: holds no events" in err and "not a mimlsort event file" not in err


def test_whole_recordings_can_be_held_out(tmp_path, torch, capsys):
    runs = [_event_table(tmp_path / f"run{k}", _events(n, label, 10 + k)) for k, (n, label) in
            enumerate(((10, 0), (14, 0), (11, 1), (13, 1)))]
    data = [f"{runs[0]}=healthy", f"{runs[1]}=healthy", f"{runs[2]}=stiff", f"{runs[3]}=stiff"]
    out = tmp_path / "m"
    assert main(["train", *data, "--out", str(out), "--arch", "feature-only", "--epochs", "1", "--batch-size", "4",
                 "--folds", "0", "--test-fraction", "0.5", "--hold-out", "recording", "--no-progress",
                 "--pixel-size", "0.5", "--val-fraction", "0"]) == 0  # two of a class: none left for early stopping
    text = capsys.readouterr().out
    # one whole recording of each class is held out: 10 or 14 healthy plus 11 or 13 stiff cells
    n_test = int(text.split("held-out test (")[1].split(" cells")[0])
    assert n_test in {10 + 11, 10 + 13, 14 + 11, 14 + 13}
    assert "every recording holds cells of one class only" not in text  # held out by recording: no note
    assert "held out as whole recordings" in (out / "report.md").read_text()
    # folds count recordings, and a class from one recording cannot be held out whole
    assert main(["evaluate", str(out / "model.onnx"), *data, "--out", str(tmp_path / "e"), "--folds", "3",
                 "--hold-out", "recording"]) == 2
    assert "needs at least 3 recordings of every class, but class 'healthy' has 2" in capsys.readouterr().err
    # without parts nothing is held out: one recording of a class is enough to score the model
    # (it was refused: "class 'healthy' comes from 1 recording")
    assert main(["evaluate", str(out / "model.onnx"), *data[1:], "--out", str(tmp_path / "e1"), "--folds", "0", "--pixel-size", "0.5",
                 "--hold-out", "recording"]) == 0
    assert "38 cells: accuracy" in capsys.readouterr().out  # 14 + 11 + 13
    assert main(["evaluate", str(out / "model.onnx"), *data[1:], "--out", str(tmp_path / "e2"), "--folds", "2",
                 "--hold-out", "recording"]) == 2
    assert "--folds: 2-fold cross-validation needs at least 2 recordings of every class, but class 'healthy' has 1" \
        in capsys.readouterr().err
    assert main(["train", *data[1:], "--out", str(tmp_path / "x"), "--hold-out", "recording", "--no-progress"]) == 2
    assert "--hold-out: recording: class 'healthy' comes from 1 recording" in capsys.readouterr().err


def test_a_class_whose_recordings_the_test_takes_all_but_one_of_is_refused_with_early_stopping(tmp_path, torch,
                                                                                                capsys):
    # two stiff recordings, --test-fraction and --val-fraction: one was held out for the test, one
    # trained on, none was left for early stopping, and the user was not told
    runs = [_event_table(tmp_path / f"run{k}", _events(6, label, 30 + k)) for k, label in enumerate((0, 0, 0, 1, 1))]
    data = [f"{r}={('healthy', 'stiff')[k > 2]}" for k, r in enumerate(runs)] + ["--pixel-size", "0.5"]
    common = ["--arch", "feature-only", "--epochs", "1", "--batch-size", "4", "--no-progress", "--folds", "0",
              "--hold-out", "recording", "--test-fraction", "0.3"]
    assert main(["train", *data, "--out", str(tmp_path / "x"), *common, "--val-fraction", "0.2"]) == 2
    err = capsys.readouterr().err
    assert (f"--hold-out: recording: class 'stiff' comes from 2 recordings ({data[3]}, {data[4]}); --test-fraction "
            f"0.3 holds out ") in err, err
    assert ("and none is left for early stopping (--val-fraction 0.2): give another recording of the class, or "
            "--val-fraction 0 (train all --epochs, no early stopping), or --test-fraction 0") in err, err
    assert "'healthy'" not in err and not (tmp_path / "x").exists()
    # without early stopping the same data train
    assert main(["train", *data, "--out", str(tmp_path / "m"), *common, "--val-fraction", "0"]) == 0
    assert (tmp_path / "m" / "test_cells.csv").is_file()


def test_a_fold_left_one_recording_of_a_class_is_refused_with_early_stopping(tmp_path, torch, capsys):
    # two recordings of each class, defaults: 2 folds, each trained on one recording of a class, so
    # no fold had an early-stopping set (each kept the epoch of its lowest training loss) while the
    # final fit stopped early, and nothing said the cross-validation was not of the model's training
    runs = [_event_table(tmp_path / f"run{k}", _events(6, label, 40 + k)) for k, label in enumerate((0, 0, 1, 1))]
    data = [f"{r}={('healthy', 'stiff')[k > 1]}" for k, r in enumerate(runs)] + ["--pixel-size", "0.5"]
    common = ["--arch", "feature-only", "--epochs", "1", "--batch-size", "4", "--no-progress", "--hold-out", "recording"]
    assert main(["train", *data, "--out", str(tmp_path / "x"), *common]) == 2
    err = capsys.readouterr().err
    assert "2-fold cross-validation (see --folds)" in err  # the default, lowered
    trained, held = (data[1], data[0]) if f"holds out {data[0]} of class" in err else (data[0], data[1])
    assert (f"--hold-out: recording: fold 1 of the 2-fold cross-validation holds out {held} of class 'healthy' and "
            f"trains on {trained} only: none is left for its early stopping (--val-fraction 0.15); give more "
            f"recordings of the class, or --val-fraction 0 (the folds and the final fit train all --epochs, no early "
            f"stopping), or --folds 0 (no cross-validation)") in err, err
    assert not (tmp_path / "x").exists()
    # either way out trains: every fold and the final fit alike, or no folds
    assert main(["train", *data, "--out", str(tmp_path / "m"), *common, "--val-fraction", "0"]) == 0
    assert "cross-validation (2 folds)" in capsys.readouterr().out
    assert main(["train", *data, "--out", str(tmp_path / "m0"), *common, "--folds", "0"]) == 0


def test_more_folds_are_offered_where_they_leave_every_fold_recordings_for_early_stopping(tmp_path, torch, capsys):
    # three recordings of a class in 2 folds: one fold trains on one of them; in 3 folds each trains on two
    runs = [_event_table(tmp_path / f"run{k}", _events(5, k // 3, 50 + k)) for k in range(6)]
    data = [f"{r}={('healthy', 'stiff')[k // 3]}" for k, r in enumerate(runs)] + ["--pixel-size", "0.5"]
    common = ["--arch", "feature-only", "--epochs", "1", "--batch-size", "4", "--no-progress", "--hold-out", "recording"]
    assert main(["train", *data, "--out", str(tmp_path / "x"), *common, "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert "of the 2-fold cross-validation holds out" in err and "none is left for its early stopping" in err, err
    assert "--folds 3 (each fold holds fewer out)" in err
    assert main(["train", *data, "--out", str(tmp_path / "m"), *common, "--folds", "3"]) == 0
    assert "cross-validation (3 folds)" in capsys.readouterr().out


@pytest.mark.parametrize("command", [
    ["train", "--simulated", "--sim-seconds", "1", "--epochs", "1"],
    ["evaluate", "demo", "--simulated", "--sim-seconds", "1"],
])
def test_without_onnx_runtime_training_stops_before_it_starts(command, tmp_path, torch):
    # ONNX Runtime is an extra (cpu or gpu) since the gpu extra installed both packages: `.[train]`
    # alone trained for minutes, then the check of the exported model failed on the import, and
    # both the .onnx and the checkpoint were deleted
    code = ("import sys; sys.modules['onnxruntime'] = None; from app.cli import main; "
            f"sys.exit(main({[*command, '--out', str(tmp_path / 'm')]!r}))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "ONNX Runtime is missing: install mimlsort[cpu]" in p.stderr
    assert "epoch" not in p.stderr and not (tmp_path / "m").exists()  # nothing trained, nothing written


def test_the_folds_note_counts_one_recording_in_the_singular(capsys):
    from types import SimpleNamespace

    from app.cli_train import _folds_for_data

    ds = SimpleNamespace(labels=[0, 0, 1], groups=["a", "c", "b"], class_names=("healthy", "stiff"))
    assert _folds_for_data(ds, None, unit="recordings") == 0
    assert "class 'stiff' has 1 recording: no cross-validation" in capsys.readouterr().err  # was "1 recordings"


def _table_of_two_exports(folder: Path, groups: bool) -> Path:
    """One event table holding two runs' cells under the same ids (e0 … e5 each), of one class;
    with ``groups`` each run's cells are grouped by run (so a cell's namesake can be split from it)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "group", "di", "transit_time_ms", "v_max_mm_s", "first_crop", "last_crop"])
        for run, seed in (("r1", 1), ("r2", 2)):
            for e in _events(6, 0, seed):
                for which, img in (("first", e.first_crop), ("last", e.last_crop)):
                    cv2.imwrite(str(folder / f"{run}_{e.index}_{which}.png"), img)
                w.writerow([f"e{e.index}", f"{run}:e{e.index}" if groups else "",
                            *(e.features[f] for f in ("di", "transit_time_ms", "v_max_mm_s")),
                            f"{run}_{e.index}_first.png", f"{run}_{e.index}_last.png"])
    return path


def _held_out(out: Path) -> list[tuple[str, str]]:
    with (out / "test_cells.csv").open(newline="") as fh:
        return [(r["data"], r["id"]) for r in csv.DictReader(fh)]


def _train_on_two_exports(tmp_path: Path, groups: bool) -> tuple[Path, Path, list[str], Path]:
    """A model trained on a table of two runs' cells under the same ids (class healthy) and one of
    another class, 30% held out: (the table, the other, the data arguments, the model's folder)."""
    a = _table_of_two_exports(tmp_path / "runs", groups=groups)
    b = _event_table(tmp_path / "other", _events(12, 1, 3))
    data = [f"{a}=healthy", f"{b}=stiff", "--pixel-size", "0.5"]
    out = tmp_path / "m"
    assert main(["train", *data, "--out", str(out), "--arch", "feature-only", "--epochs", "1", "--batch-size", "4",
                 "--folds", "0", "--test-fraction", "0.3", "--no-progress", "--seed", "2"]) == 0
    return a, b, data, out


def test_a_listed_id_that_a_file_holds_twice_is_refused_where_the_list_cannot_say_which(tmp_path, torch, capsys):
    # two runs' cells under the same ids in one table, grouped by run: e1 of one run was held out,
    # its namesake trained on; evaluate --cells scored both (and every such pair), not the test
    a, b, data, out = _train_on_two_exports(tmp_path, groups=True)
    listed = [i for d, i in _held_out(out) if d == str(a.resolve())]
    split = [i for i in listed if listed.count(i) == 1]
    assert split, listed  # the seed splits a pair
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.onnx"), *data, "--cells", str(out / "test_cells.csv"), "--folds", "0",
                 "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert f"{a.resolve()} holds 2 cells with id {split[0]}" in err, err
    assert not (tmp_path / "e").exists()
    # and a list naming a cell more often than the data hold it
    twice = tmp_path / "twice.csv"
    twice.write_text(f"data,id,class\n{b.resolve()},e0,stiff\n{b.resolve()},e0,stiff\n")
    assert main(["evaluate", str(out / "model.onnx"), *data, "--cells", str(twice), "--folds", "0",
                 "--out", str(tmp_path / "e")]) == 2
    assert f"cell e0 of {b.resolve()} is listed 2 times, but the data given hold 1" in capsys.readouterr().err


def test_cells_a_file_holds_under_one_id_held_out_together_are_scored_as_in_training(tmp_path, torch, capsys):
    # the same, grouped by id (no group column): a pair is held out whole, listed twice, and
    # evaluate --cells reproduces the held-out figures
    a, _, data, out = _train_on_two_exports(tmp_path, groups=False)
    listed = [i for d, i in _held_out(out) if d == str(a.resolve())]
    assert listed and all(listed.count(i) == 2 for i in listed), listed
    from inference.spec import read_spec

    m = read_spec(out / "model.onnx").provenance.metrics
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.onnx"), *data, "--cells", str(out / "test_cells.csv"), "--folds", "0",
                 "--out", str(tmp_path / "e")]) == 0
    assert (f"{m['test_n']} cells: accuracy {m['test_accuracy']:.4f}, macro F1 "
            f"{m['test_macro_f1']:.4f}") in capsys.readouterr().out


def test_two_old_miml_exports_in_one_folder_are_scored_as_in_training(tmp_path, torch, capsys):
    # exports from before cell IDs named the run, put in one folder: a healthy and a stiff cell
    # share each ID. They were one group, held out together; now each is a cell of its CSV, so one
    # namesake can be held out and the other trained on: the list names the CSV, not the folder
    from tests.test_training import old_miml_export

    folder = tmp_path / "exports"
    csvs = [old_miml_export(folder, name, label, seed) for name, label, seed in (("day1", 0, 1), ("day2", 1, 2))]
    out = tmp_path / "m"
    assert main(["train", str(folder), "--out", str(out), "--arch", "feature-only", "--epochs", "1",
                 "--batch-size", "4", "--folds", "0", "--test-fraction", "0.3", "--no-progress", "--seed", "1"]) == 0
    held = _held_out(out)
    assert {d for d, _ in held} == {str(c.resolve()) for c in csvs}
    ids = [i for _, i in held]
    assert any(ids.count(i) == 1 for i in ids), held  # the seed holds out a namesake without the other
    from inference.spec import read_spec

    m = read_spec(out / "model.onnx").provenance.metrics
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.onnx"), str(folder), "--cells", str(out / "test_cells.csv"),
                 "--folds", "0", "--out", str(tmp_path / "e")]) == 0, capsys.readouterr().err
    assert (f"{m['test_n']} cells: accuracy {m['test_accuracy']:.4f}, macro F1 "
            f"{m['test_macro_f1']:.4f}") in capsys.readouterr().out


def test_an_older_list_naming_the_miml_folder_is_read(tmp_path, torch, capsys):
    # lists written before they named the CSV inside a folder name the folder: read where they can
    # say which cells were held out, refused where a namesake of another CSV makes it ambiguous
    from tests.test_training import old_miml_export

    folder = tmp_path / "exports"
    for name, label, seed in (("day1", 0, 1), ("day2", 1, 2)):
        old_miml_export(folder, name, label, seed, n=4)
    out = tmp_path / "m"
    assert main(["train", str(folder), "--out", str(out), "--arch", "feature-only", "--epochs", "1",
                 "--batch-size", "4", "--folds", "0", "--no-progress"]) == 0
    old = tmp_path / "old.csv"
    # as the training before groups per CSV held out Cell1 and Cell2: both namesakes of each
    old.write_text("data,id,class\n" + "".join(f"{folder.resolve()},sample_M1_Cell{k},{c}\n"
                                                for k in (1, 2) for c in ("healthy", "stiff")))
    capsys.readouterr()
    evaluate = ["evaluate", str(out / "model.onnx"), str(folder), "--folds", "0", "--out", str(tmp_path / "e")]
    assert main([*evaluate, "--cells", str(old)]) == 0, capsys.readouterr().err
    assert "4 cells: accuracy" in capsys.readouterr().out
    one = tmp_path / "one.csv"
    one.write_text(f"data,id,class\n{folder.resolve()},sample_M1_Cell3,stiff\n")
    assert main([*evaluate, "--cells", str(one)]) == 2
    err = capsys.readouterr().err
    assert f"{folder.resolve()} holds 2 cells with id sample_M1_Cell3 (in day1_data.csv, day2_data.csv)" in err, err


def test_a_class_of_one_recording_is_refused_only_where_recordings_are_held_out(tmp_path, torch, capsys):
    # --hold-out recording refused a class of one recording whatever was asked; with no test,
    # validation or cross-validation split nothing is held out, and one recording is enough
    runs = [_event_table(tmp_path / f"run{k}", _events(6, label, 20 + k)) for k, label in enumerate((0, 1, 1))]
    data = [f"{runs[0]}=healthy", f"{runs[1]}=stiff", f"{runs[2]}=stiff", "--pixel-size", "0.5"]
    common = ["--arch", "feature-only", "--epochs", "1", "--batch-size", "4", "--no-progress", "--hold-out", "recording"]
    assert main(["train", *data, "--out", str(tmp_path / "m"), *common, "--val-fraction", "0", "--folds", "0"]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "m" / "model.onnx").is_file()
    capsys.readouterr()
    assert main(["train", *data, "--out", str(tmp_path / "x"), *common, "--folds", "0"]) == 2
    assert ("--hold-out: recording: class 'healthy' comes from 1 recording; holding out whole recordings "
            "(--val-fraction 0.15) needs at least 2 of every class") in capsys.readouterr().err
    assert main(["train", *data, "--out", str(tmp_path / "x"), *common, "--val-fraction", "0",
                 "--test-fraction", "0.3"]) == 2
    assert "(--test-fraction 0.3) needs at least 2 of every class" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
