"""Training, export and evaluation of MIML models (inference.training; extra `train`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training extra (torch) is not installed")

from inference.training.data import (  # noqa: E402
    Dataset,
    dataset_from_events,
    dataset_from_miml_dir,
    grouped_split,
    kfold_splits,
)
from tracking.events import CellEvent  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIML_SAMPLE = ROOT.parent / "shared" / "data" / "miml_t4t8"
if not MIML_SAMPLE.is_dir():
    MIML_SAMPLE = Path("/work/shared/data/miml_t4t8")


@pytest.fixture(autouse=True)
def _few_threads():
    # the test machine is shared; small models gain nothing from many threads
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cell_image(rng, size: int, a: float, b: float) -> np.ndarray:
    import cv2

    img = np.full((size, size), 180, np.uint8)
    c = (size // 2 + int(rng.integers(-2, 3)), size // 2 + int(rng.integers(-2, 3)))
    cv2.ellipse(img, c, (int(a), int(b)), float(rng.uniform(-10, 10)), 0, 360, 90, -1)
    return np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)


def synthetic_events(n: int, label: int, seed: int, size: int = 40, dir_feature: bool = False) -> list[CellEvent]:
    """Two populations: class 1 cells are stiffer (lower DI, longer transit) and rounder in the crop."""
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        di = rng.normal(0.30 if label == 0 else 0.18, 0.04)
        feats = {
            "di": float(di),
            "transit_time_ms": float(rng.normal(2.0 if label == 0 else 3.0, 0.3)),
            "v_max_mm_s": float(rng.normal(40 if label == 0 else 30, 4)),
        }
        if dir_feature:
            feats["dir_per_ms"] = float(rng.normal(0.1, 0.02))
        a = 9 * (1 + di)
        first = _cell_image(rng, size, 9, 9)
        last = _cell_image(rng, size, a, 9 * (1 - di))
        events.append(CellEvent(i, i, feats, first, last, 0.5, 10 * i, 10 * i + 5, 1000 * i))
    return events


def synthetic_dataset(n_per_class: int = 24, seed: int = 0, **kw) -> Dataset:
    a = dataset_from_events(synthetic_events(n_per_class, 0, seed, **kw), "A", source="runA")
    b = dataset_from_events(synthetic_events(n_per_class, 1, seed + 100, **kw), "B", source="runB")
    return Dataset.concat([a, b])


# ---------------------------------------------------------------------------------------------
# models


@pytest.mark.parametrize("arch", ["miml-mini", "miml-resnet18", "image-only", "feature-only"])
@pytest.mark.parametrize("channels,n_features,n_classes", [(1, 3, 2), (2, 4, 3)])
def test_model_outputs_probabilities(arch, channels, n_features, n_classes):
    from inference.training.models import build_model

    torch.manual_seed(0)
    m = build_model(arch, in_channels=channels, n_features=n_features, n_classes=n_classes).eval()
    size = 64 if arch == "miml-resnet18" else 48
    with torch.no_grad():
        p = m(torch.randn(5, channels, size, size), torch.randn(5, n_features))
    assert p.shape == (5, n_classes)
    assert torch.all(p >= 0)
    torch.testing.assert_close(p.sum(1), torch.ones(5), atol=1e-6, rtol=0)
    # the image (or feature) input actually changes the output where the architecture uses it
    with torch.no_grad():
        p2 = m(torch.randn(5, channels, size, size) * 3, torch.randn(5, n_features) * 3)
    assert not torch.allclose(p, p2)


def test_architecture_sizes():
    from inference.training.models import MiniBranch, build_model, count_parameters
    from mimlsort.errors import ModelError

    mini = build_model("miml-mini", in_channels=1, n_features=3, n_classes=2)
    assert 80_000 <= count_parameters(mini) <= 130_000  # "~0.1 M"
    assert mini.image_branch.widths == (24, 32, 32)
    wide = build_model("miml-mini", in_channels=1, n_features=3, n_classes=2, widths=(32, 64, 64))
    assert 150_000 <= count_parameters(wide) <= 260_000  # the first release's miml-mini
    # a checkpoint's widths are read off its weights, so older (wider) checkpoints load
    assert MiniBranch.widths_in(wide.state_dict()) == (32, 64, 64)
    assert MiniBranch.widths_in(res_sd := build_model("feature-only", in_channels=1, n_features=3,
                                                       n_classes=2).state_dict()) is None and res_sd
    with pytest.raises(ModelError):
        build_model("miml-resnet18", in_channels=2, n_features=4, n_classes=2, widths=(8, 8, 8))
    res = build_model("miml-resnet18", in_channels=2, n_features=4, n_classes=2)
    # ResNet-18 without fc has 11.17 M parameters (3 input channels); ours differs only in conv1
    assert 11.1e6 <= count_parameters(res.image_branch) <= 11.2e6
    assert res.image_branch.out_dim == 512
    assert [m.out_features for m in res.feature_branch.net if isinstance(m, torch.nn.Linear)] == [32, 16]
    assert [m.out_features for m in res.head.net if isinstance(m, torch.nn.Linear)] == [128, 16]


def test_unknown_architecture_is_a_model_error():
    from inference.training.models import build_model
    from mimlsort.errors import ModelError

    with pytest.raises(ModelError, match="miml-mini"):
        build_model("resnet50", in_channels=1, n_features=3, n_classes=2)


# ---------------------------------------------------------------------------------------------
# export


@pytest.mark.parametrize("arch,size", [("miml-mini", 48), ("miml-resnet18", 64)])
def test_onnx_export_matches_torch(tmp_path, arch, size):
    import onnx
    import onnxruntime as ort

    from inference.training.data import spec_for_training
    from inference.training.export import SPEC_KEY, export_onnx
    from inference.training.models import build_model

    ds = synthetic_dataset(4)
    spec = spec_for_training(ds, np.arange(len(ds)), arch=arch, channels=("first", "last"), image_size=size)
    torch.manual_seed(1)
    model = build_model(arch, in_channels=2, n_features=3, n_classes=2)
    # give BatchNorm non-trivial running statistics, as after training
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 2, size, size) * 2 + 1, torch.randn(8, 3))
    model.eval()
    path = export_onnx(model, spec, tmp_path / f"{arch}.onnx")
    assert path.with_suffix(".pt").is_file()
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta[SPEC_KEY])  # the full spec travels with the model
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image", "features"]
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    rng = np.random.default_rng(7)
    for n in (1, 6):
        image = rng.standard_normal((n, 2, size, size)).astype(np.float32)
        feats = rng.standard_normal((n, 3)).astype(np.float32)
        got = sess.run(None, {"image": image, "features": feats})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(image), torch.from_numpy(feats)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# data and splits


def test_grouped_split_keeps_cells_whole_and_stratifies():
    rng = np.random.default_rng(3)
    groups, labels = [], []
    for g in range(60):  # 60 cells, 1–3 samples each (e.g. several crops per cell)
        lab = int(g % 3 == 0)
        for _ in range(int(rng.integers(1, 4))):
            groups.append(f"cell{g}")
            labels.append(lab)
    labels, groups = np.array(labels), np.array(groups, dtype=object)
    for seed in range(5):
        tr, te = grouped_split(labels, groups, 0.25, seed)
        assert not set(groups[tr]) & set(groups[te])
        assert len(tr) + len(te) == len(labels)
        assert set(labels[te]) == {0, 1} and set(labels[tr]) == {0, 1}
        n_test_groups = len(set(groups[te]))
        assert 13 <= n_test_groups <= 17  # ~25 % of 60 cells
    a, b = grouped_split(labels, groups, 0.25, 1), grouped_split(labels, groups, 0.25, 1)
    assert np.array_equal(a[1], b[1])  # seeded


def test_kfold_folds_disjoint_grouped_and_stratified():
    labels = np.array([0] * 50 + [1] * 20 + [2] * 11)
    groups = np.array([f"c{i // 2}" for i in range(len(labels))], dtype=object)  # pairs of samples per cell
    folds = kfold_splits(labels, groups, 5, seed=2)
    assert len(folds) == 5
    tests = [te for _, te in folds]
    assert sorted(np.concatenate(tests).tolist()) == list(range(len(labels)))  # disjoint and complete
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        assert len(np.intersect1d(tr, te)) == 0
    for c in range(3):
        per_fold = [len(set(groups[te][labels[te] == c])) for te in tests]
        assert max(per_fold) - min(per_fold) <= 1, per_fold


def test_miml_sample_import_reports_defects():
    ds = dataset_from_miml_dir(MIML_SAMPLE)
    assert len(ds) == 15 and ds.class_counts() == {"T4": 12, "T8": 3}
    assert ds.feature_names == ("di", "transit_time_ms", "v_max_mm_s")
    assert ds.first.shape == (15, 100, 100) and ds.first.dtype == np.uint8
    rep = ds.report
    conflicts = [d for d in rep.duplicates if d.conflicting_labels]
    assert len(conflicts) == 1
    ids = {m[0] for m in conflicts[0].members}
    assert ids == {"T4_Notch_Day1_B3_Cell126_Processed", "T8_Notch_Day2_B2_Cell151_Processed"}
    assert ("train_data.csv", "T4") in rep.single_class_sources
    assert any("DIFFERENT labels" in p for p in rep.problems())
    assert any("pre-scaled" in p for p in ds.provenance)
    # the values are the authors' (0..1), mapped to our names
    i = list(ds.ids).index("T4_Notch_Day1_B1_Cell185_Processed")
    assert ds[i].features == {"di": pytest.approx(0.0588235294117647), "transit_time_ms": 0.0, "v_max_mm_s": 1.0}


def old_miml_export(folder: Path, name: str, label: int, seed: int, n: int = 8) -> Path:
    """``name_data.csv`` with its crops in ``name/``, as ``mimlsort export --miml`` wrote them before
    a cell's ID named its run: every export's cells are ``sample_M1_Cell1`` … (``label`` 0 healthy, 1 stiff)."""
    import csv

    import cv2

    (folder / name).mkdir(parents=True)
    path = folder / f"{name}_data.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell ID", "Cell Type", "Max Velocity", "Transition Time", "Deformability"])
        for e in synthetic_events(n, label, seed):
            for which, img in (("Firstcrop", e.first_crop), ("Lastcrop", e.last_crop)):
                fn = f"sample_M1_Cell{e.index + 1}_{which}.png"
                cv2.imwrite(str(folder / name / fn), img)
                w.writerow([fn, ("healthy", "stiff")[label], e.features["v_max_mm_s"] / 60,
                            e.features["transit_time_ms"] / 5, e.features["di"]])
    return path


def test_cells_of_two_csvs_in_one_miml_folder_with_the_same_ids_are_not_one_group(tmp_path):
    # two old exports in one folder: day1's healthy sample_M1_Cell3 and day2's stiff one were one
    # group, held out and dealt to folds together, the group's class set by a tie-break
    old_miml_export(tmp_path, "day1", 0, 1, n=4)
    old_miml_export(tmp_path, "day2", 1, 2, n=4)
    ds = dataset_from_miml_dir(tmp_path)
    assert len(ds) == 8 and sorted(set(ds.ids)) == [f"sample_M1_Cell{k}" for k in range(1, 5)]
    assert len(set(ds.groups)) == 8  # were 4, each a healthy and a stiff cell
    assert list(ds.sources) == ["day1_data.csv"] * 4 + ["day2_data.csv"] * 4
    # held out per class: half the healthy and half the stiff cells, whatever their namesakes
    _, te = grouped_split(ds.labels, ds.groups, 0.5, seed=0)
    assert np.bincount(ds.labels[te], minlength=2).tolist() == [2, 2]


def test_miml_train_csv_alone_is_reported_single_class():
    from inference.training.data import dataset_from_miml_csv

    ds = dataset_from_miml_csv(MIML_SAMPLE / "train_data.csv", MIML_SAMPLE / "Train")
    assert ds.class_names == ("T4",) and len(ds) == 10
    assert ("train_data.csv", "T4") in ds.report.single_class_sources
    assert any("only 1 class" in p for p in ds.report.problems())


def test_authors_scaled_features_do_not_mix_with_physical_ones():
    # the authors' 0-1 values beside tracked cells' ms and mm/s: the model had learnt which data a
    # cell came from, under a spec that called every feature 0-1 scaled
    from mimlsort.errors import DataFormatError

    authors = dataset_from_miml_dir(MIML_SAMPLE)
    ours = dataset_from_events(synthetic_events(4, 0, 1, size=100), "T8", source="run7.rtdc")
    with pytest.raises(DataFormatError, match=r"different units.*train_data\.csv.*0-1.*run7\.rtdc: di \[no unit\], "
                                              r"transit_time_ms \[ms\]"):
        Dataset.concat([authors, ours])
    # two parts in one kind of unit still unite
    assert len(Dataset.concat([ours, dataset_from_events(synthetic_events(3, 1, 2, size=100), "T4", source="b")])) == 7


def test_crops_at_different_pixel_sizes_do_not_mix():
    # one crop shape at 0.5 and 0.34 µm/px: united, the pixel size became unknown and the model
    # took 40 and 27 µm fields of view alike, its spec without a scale
    from dataclasses import replace

    from mimlsort.errors import DataFormatError

    a = dataset_from_events(synthetic_events(3, 0, 1), "A", source="setup1.rtdc")
    b = dataset_from_events([replace(e, crop_pixel_size_um=0.34) for e in synthetic_events(3, 1, 2)], "B",
                            source="setup2.rtdc")
    with pytest.raises(DataFormatError, match=r"different pixel sizes \(setup1\.rtdc: 0\.5 µm/px; setup2\.rtdc: "
                                              r"0\.34 µm/px\)"):
        Dataset.concat([a, b])
    # the usual case, crops of one field at another pixel size, differ in shape too: that was all
    # it said ("crops differ in size (…): the data must hold crops of one size")
    d = dataset_from_events([replace(e, crop_pixel_size_um=0.25) for e in synthetic_events(3, 1, 2, size=80)], "B",
                            source="setup3.rtdc")
    with pytest.raises(DataFormatError, match=r"different pixel sizes \(setup1\.rtdc: 0\.5 µm/px; setup3\.rtdc: "
                                              r"0\.25 µm/px\).*fine-tune that model on the others \(mimlsort train "
                                              r"OTHERS --init-from MODEL\.onnx"):
        Dataset.concat([a, d])
    # a part whose pixel size is not known is said to make the model scale-blind
    c = replace(b, crop_pixel_size_um=None)
    both = Dataset.concat([a, c])
    assert both.crop_pixel_size_um is None
    assert any("pixel size is not known for setup2.rtdc" in p for p in both.report.problems())


def test_sources_of_different_crop_sizes_or_features_are_named():
    from mimlsort.errors import DataFormatError

    a = dataset_from_events(synthetic_events(2, 0, 1, size=40), "A", source="small.rtdc")
    b = dataset_from_events(synthetic_events(2, 1, 2, size=50), "B", source="large.rtdc")
    with pytest.raises(DataFormatError, match=r"crops differ in size \(small\.rtdc: 40×40 px; large\.rtdc: 50×50 px\)"):
        Dataset.concat([a, b])
    # features: "feature names differ: (…) vs (…)" named no source
    c = dataset_from_events(synthetic_events(2, 1, 2, dir_feature=True), "B", source="with_dir.rtdc")
    with pytest.raises(DataFormatError, match=r"different features \(small\.rtdc: di,transit_time_ms,v_max_mm_s; "
                                              r"with_dir\.rtdc: di,transit_time_ms,v_max_mm_s,dir_per_ms\): name "
                                              r"those to train on, e\.g\. --features di,transit_time_ms,v_max_mm_s"):
        Dataset.concat([a, c])


def test_united_data_say_each_files_findings_once(caplog):
    # every warning came twice, once as each file was read and again for the whole
    from dataclasses import replace

    from tracking.events import Quality

    events = synthetic_events(4, 0, 1)
    events[0] = replace(events[0], quality=Quality.BORDER)
    with caplog.at_level("WARNING", logger="inference.training.data"):
        a = dataset_from_events(events, "A", source="runA.rtdc", only_ok=True)
        b = dataset_from_events(synthetic_events(3, 1, 2), "B", source="runB.rtdc")
        both = Dataset.concat([a, b, dataset_from_events([events[1]], "A", source="copy")])
    said = [r.getMessage() for r in caplog.records]
    assert said.count("data import: runA.rtdc: 1 events with quality flags left out") == 1, said
    # what only the whole shows (a cell in two files) is still said, and the report keeps it all
    assert sum("identical image: runA.rtdc#1 first crop" in m for m in said) == 1
    assert any("quality flags left out" in p for p in both.report.problems())


def test_event_table_csv_import_matches_events(tmp_path):
    import csv

    import cv2

    from inference.training.data import dataset_from_csv

    events = synthetic_events(5, 0, seed=4)
    with (tmp_path / "events.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "di", "transit_time_ms", "v_max_mm_s", "first_crop", "last_crop"])
        for e in events:
            for which, img in (("first", e.first_crop), ("last", e.last_crop)):
                cv2.imwrite(str(tmp_path / f"{e.index}_{which}.png"), img)
            w.writerow([f"e{e.index}", e.features["di"], e.features["transit_time_ms"], e.features["v_max_mm_s"],
                        f"{e.index}_first.png", f"{e.index}_last.png"])
    from_csv = dataset_from_csv(tmp_path / "events.csv", label="A")
    from_events = dataset_from_events(events, "A")
    assert np.array_equal(from_csv.first, from_events.first) and np.array_equal(from_csv.last, from_events.last)
    np.testing.assert_allclose(from_csv.features, from_events.features)
    assert from_csv.feature_names == from_events.feature_names == ("di", "transit_time_ms", "v_max_mm_s")
    assert from_csv.report.ok


def test_events_with_dir_feature_use_four_features():
    ds = dataset_from_events(synthetic_events(3, 1, seed=2, dir_feature=True), ["B", "B", "B"])
    assert ds.feature_names == ("di", "transit_time_ms", "v_max_mm_s", "dir_per_ms")
    assert ds.crop_pixel_size_um == 0.5


# ---------------------------------------------------------------------------------------------
# training, evaluation, transfer learning


def test_miml_sample_trains_and_evaluates_end_to_end(tmp_path):
    from inference.training.data import preprocess_dataset
    from inference.training.evaluate import evaluate, predict_onnx
    from inference.training.train import predict_torch, train_model

    ds = dataset_from_miml_dir(MIML_SAMPLE)
    res = train_model(
        ds, "miml-mini", epochs=2, batch_size=8, folds=3, val_fraction=0.2, seed=0, progress=False,
        out_dir=tmp_path / "train", device="cpu",
    )
    assert len(res.fold_metrics) == 3 and sum(m.n for m in res.fold_metrics) == 15
    assert not np.isnan(res.oof_probabilities).any()
    for f in res.folds:  # the feature normalisation of each fold saw only its training cells
        assert not set(ds.groups[f.test_idx]) & set(ds.groups[f.train_idx])
    train_dir = tmp_path / "train"
    for name in ("model.onnx", "model.pt", "report.md", "roc.png", "confusion.png", "metrics.json"):
        assert (train_dir / name).is_file(), name
    assert "Cross-validation" in (train_dir / "report.md").read_text()

    ev = evaluate(res.onnx_path, ds, tmp_path / "eval", folds=res.folds)
    text = ev.report_path.read_text()
    assert "ROC-AUC" in text and "Confusion" in text and "DIFFERENT labels" in text
    assert "Cross-validation" in text
    assert ev.roc_png.stat().st_size > 1000 and ev.confusion_png.stat().st_size > 1000
    assert ev.metrics.n == 15 and sum(map(sum, ev.metrics.confusion)) == 15
    # the ONNX model fed by the run-time preprocessing gives what torch gave in training
    probs, classes = predict_onnx(res.onnx_path, ds)
    images, feats = preprocess_dataset(res.spec, ds)
    want = predict_torch(res.model, images, feats, torch.device("cpu"))
    assert classes == ds.class_names
    np.testing.assert_allclose(probs, want, atol=1e-5, rtol=0)


def test_training_learns_separable_populations():
    from inference.training.train import train_model

    ds = synthetic_dataset(30)
    res = train_model(ds, "feature-only", epochs=25, batch_size=16, lr=1e-2, folds=0, val_fraction=0.3,
                      patience=0, seed=1, progress=False, device="cpu")
    assert res.history[-1]["val_acc"] >= 0.8
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_transfer_learning_with_frozen_image_branch(tmp_path):
    from inference.training.export import export_onnx
    from inference.training.train import train_model

    parent = train_model(synthetic_dataset(12, seed=5), "miml-mini", epochs=1, batch_size=8, folds=0,
                         val_fraction=0.0, progress=False, device="cpu")
    onnx_path = export_onnx(parent.model, parent.spec, tmp_path / "parent.onnx")
    before = {k: v.clone() for k, v in parent.model.image_branch.state_dict().items()}
    head_before = parent.model.head.out.weight.detach().clone()

    few = synthetic_dataset(6, seed=9)  # "few examples"
    child = train_model(few, None, init_from=onnx_path, freeze_image_branch=True, epochs=3, batch_size=4,
                        folds=0, val_fraction=0.0, progress=False, device="cpu")
    assert child.arch == "miml-mini"
    after = child.model.image_branch.state_dict()
    for k, v in before.items():  # weights and BatchNorm statistics alike
        assert torch.equal(v, after[k]), k
    assert not torch.equal(head_before, child.model.head.out.weight)
    # the parent's feature normalisation is kept for fine-tuning
    assert child.spec.features == parent.spec.features

    # without freezing, the image branch does learn
    free = train_model(few, None, init_from=onnx_path.with_suffix(".pt"), epochs=2, batch_size=4, folds=0,
                       val_fraction=0.0, progress=False, device="cpu")
    assert any(not torch.equal(v, free.model.image_branch.state_dict()[k]) for k, v in before.items())


def test_training_without_torch_names_the_extra():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import inference.training as t\n"
        "from inference.training.data import dataset_from_miml_dir\n"  # data import needs no torch
        "from inference.training.evaluate import evaluate, compute_metrics\n"  # nor does evaluation
        "from mimlsort.errors import BackendUnavailable\n"
        "try:\n"
        "    t.train_model\n"
        "except BackendUnavailable as e:\n"
        "    print('RAISED', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "RAISED" in out.stdout and "mimlsort[train]" in out.stdout


def test_transfer_experiment_draws_few_examples_and_reports():
    # the full experiment (train, export, score 3 models per draw) runs in `mimlsort experiment transfer`;
    # here the parts that decide what is compared, without the ONNX exports that make it slow
    from inference.training.experiments import TransferResult, few_examples

    ds = synthetic_dataset(60, seed=3)
    few, rest = few_examples(ds, 20, seed=0)
    assert 18 <= len(few) <= 22 and len(few) + len(rest) == len(ds)
    assert not set(ds.groups[few]) & set(ds.groups[rest])
    assert sorted(np.bincount(ds.labels[few]).tolist()) == [10, 10]  # stratified
    assert not np.array_equal(few, few_examples(ds, 20, seed=1)[0])  # a new draw per seed
    res = TransferResult(len(few), len(rest), (0, 1), (0.7, 0.8), (0.9, 0.85), 0.97, True)
    assert res.scratch_mean == pytest.approx(0.75) and res.finetuned_mean == pytest.approx(0.875)
    md = res.to_markdown()
    assert "| mean | 0.7500 | 0.8750 |" in md and "image branch frozen" in md


def test_checkpoint_round_trip_keeps_the_mini_branch_widths(tmp_path):
    from inference.classifier import Classifier, bundled_model
    from inference.training.models import build_model
    from inference.training.train import load_checkpoint, save_checkpoint

    with Classifier(bundled_model()) as clf:
        spec = clf.spec
    for widths in ((32, 64, 64), (24, 32, 32), (8, 16, 12)):
        torch.manual_seed(1)
        model = build_model("miml-mini", in_channels=2, n_features=4, n_classes=2, widths=widths).eval()
        back, _ = load_checkpoint(save_checkpoint(tmp_path / f"w{widths[0]}.pt", model, spec))
        assert back.image_branch.widths == widths
        x, f = torch.rand(3, 2, 48, 48), torch.rand(3, 4)
        with torch.no_grad():
            assert torch.equal(model(x, f), back(x, f))


def test_a_diverging_training_is_an_error_not_a_random_model():
    # a NaN loss never beat the best so far: the random weights of epoch 0 were exported, the
    # report said "best epoch 0", and nothing said the training had diverged
    from inference.training.train import train_model
    from mimlsort.errors import ModelError

    with pytest.raises(ModelError, match=r"final fit: the training diverged at epoch \d+ \(.*loss nan.*\): lower the "
                                         r"learning rate \(--lr, 1e\+08 now\)"):
        train_model(synthetic_dataset(6), "miml-mini", epochs=3, lr=1e8, folds=0, batch_size=4, progress=False,
                    device="cpu", augment=False)


@pytest.mark.parametrize("kw,key", [
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": float("nan")}, "lr"),
    ({"folds": -1}, "folds"),
    ({"val_fraction": 1.5}, "val_fraction"),
])
def test_train_model_rejects_unusable_arguments(kw, key):
    from inference.training.train import train_model
    from mimlsort.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        train_model(synthetic_dataset(3), "feature-only", progress=False, **kw)
    assert info.value.key == key


def test_fine_tuning_refits_a_parents_features_in_other_units(caplog):
    # a parent trained on the MIML authors' 0-1 scaled CSVs normalises features in those units;
    # kept for tracked cells (ms, mm/s), the child would call every cell one class
    from dataclasses import replace

    from inference.spec import check_features
    from inference.training.data import spec_for_training

    ds = synthetic_dataset(8)
    spec = spec_for_training(ds, np.arange(len(ds)), arch="miml-mini")
    scaled = replace(spec, features=tuple(replace(f, unit="0-1, scaled per batch by the MIML authors", mean=0.5,
                                                  std=0.2) for f in spec.features))
    with caplog.at_level("WARNING", logger="inference.training.data"):
        child = spec_for_training(ds, np.arange(len(ds)), arch="miml-mini", parent=scaled, refit_features=False)
    assert "other units than the data's" in caplog.text
    assert [f.unit for f in child.features] == [f.unit for f in spec.features]
    assert [f.mean for f in child.features] == [f.mean for f in spec.features]
    check_features(child)  # a model for tracked cells
    # a parent in the data's units keeps its normalisation, as fine-tuning does by default
    kept = spec_for_training(ds, np.arange(4), arch="miml-mini", parent=spec, refit_features=False)
    assert kept.features == spec.features


def test_a_fit_whose_early_stopping_set_lacks_a_class_says_so(caplog):
    # a class of 2 cells (or groups) under the default 2 folds: each fold trains on one of them
    # and its early-stopping set has none, so that fold's epoch was chosen on the other class alone,
    # unsaid (the command line refuses the same for whole recordings)
    from inference.training.data import Dataset
    from inference.training.train import train_model

    few = dataset_from_events(synthetic_events(2, 1, 100), "B", source="runB")
    ds = Dataset.concat([dataset_from_events(synthetic_events(20, 0, 0), "A", source="runA"), few])
    with caplog.at_level("WARNING", logger="inference.training.train"):
        train_model(ds, "feature-only", epochs=1, batch_size=8, folds=2, val_fraction=0.3, seed=0,
                    progress=False, device="cpu", final_fit=False)
    said = [r.getMessage() for r in caplog.records if "early-stopping set holds no cell of B" in r.getMessage()]
    assert said and all(m.startswith("fold ") or m.startswith("best fold") for m in said), said
    # with enough cells of both, nothing is said
    caplog.clear()
    with caplog.at_level("WARNING", logger="inference.training.train"):
        train_model(synthetic_dataset(20), "feature-only", epochs=1, batch_size=8, folds=2, val_fraction=0.3,
                    seed=0, progress=False, device="cpu", final_fit=False)
    assert not [r for r in caplog.records if "early-stopping" in r.getMessage()]
