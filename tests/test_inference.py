"""The MIML model contract (inference.spec), preprocessing and the ONNX Runtime classifier.

Models here are small ONNX graphs written with onnx.helper, so these tests need no torch: the
output of each graph is also computed in numpy, which checks the classifier's preprocessing end to
end. The torch-exported architectures (ONNX vs torch within 1e-5, through this module's
preprocessing) are covered in test_training.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inference.classifier import Classifier, bundled_model
from inference.preprocess import Preprocessor
from inference.spec import (
    SPEC_KEY,
    FeatureSpec,
    ImageSpec,
    ModelSpec,
    PixelNorm,
    Provenance,
    check_features,
    read_spec,
    sidecar_path,
)
from mimlsort.errors import BackendUnavailable, ModelError, StateError
from tracking.events import CellEvent

ROOT = Path(__file__).resolve().parents[1]


def make_spec(k: int = 2, size: int = 16, channels=("first", "last"), crop_um: float | None = 20.0,
              px: float | None = 0.5, pixel_norm=PixelNorm("fixed", 100.0, 50.0)) -> ModelSpec:
    feats = (FeatureSpec("di", mean=0.2, std=0.05), FeatureSpec("transit_time_ms", mean=2.0, std=0.5, clip=(-3.0, 3.0)),
             FeatureSpec("v_max_mm_s", "minmax", min=10.0, max=50.0, clip=None))
    return ModelSpec(tuple(f"c{i}" for i in range(k)), feats, ImageSpec(size, size, tuple(channels), crop_um, px),
                     "test-linear", pixel_norm, Provenance(seed=3, data=("unit test",), metrics={"acc": 1.0}))


def linear_weights(spec: ModelSpec, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = len(spec.image.channels)
    return (rng.standard_normal((c, spec.n_classes)).astype(np.float32),
            rng.standard_normal((len(spec.features), spec.n_classes)).astype(np.float32),
            rng.standard_normal(spec.n_classes).astype(np.float32))


def write_model(path: Path, spec: ModelSpec | None, *, shape_spec: ModelSpec | None = None, batch="N",
                input_names=("image", "features"), output_name="probabilities", embed=True, seed=0,
                elem=TensorProto.FLOAT, softmax=True) -> Path:
    """probabilities = softmax(mean_hw(image) @ Wi + features @ Wf + b): a real ONNX graph whose
    output depends on every channel and feature, so a preprocessing error shows in the numbers."""
    s = shape_spec or spec
    c, h, w = s.image.shape
    f, k = len(s.features), s.n_classes
    wi, wf, b = linear_weights(s, seed)
    img_name, feat_name = input_names
    nodes = [
        helper.make_node("Cast", [img_name], ["img32"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["img32", "axes"], ["pooled4"], keepdims=0),
        helper.make_node("MatMul", ["pooled4", "Wi"], ["zi"]),
        helper.make_node("Cast", [feat_name], ["f32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["f32", "Wf"], ["zf"]),
        helper.make_node("Add", ["zi", "zf"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output_name], axis=1) if softmax
        else helper.make_node("Identity", ["logits"], [output_name]),
    ]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
             onnx.numpy_helper.from_array(wi, "Wi"), onnx.numpy_helper.from_array(wf, "Wf"),
             onnx.numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info(img_name, elem, [batch, c, h, w]),
         helper.make_tensor_value_info(feat_name, elem, [batch, f])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if spec is not None and embed:
        helper.set_model_props(model, {SPEC_KEY: spec.to_json()})
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def reference(spec: ModelSpec, image: np.ndarray, feats: np.ndarray, seed: int = 0) -> np.ndarray:
    wi, wf, b = linear_weights(spec, seed)
    z = image.mean(axis=(2, 3)) @ wi + feats @ wf + b
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def event(i: int, rng, side: int = 40, px: float = 0.5, **feats) -> CellEvent:
    f = {"di": 0.2 + 0.05 * rng.standard_normal(), "transit_time_ms": 2.0 + rng.standard_normal() * 0.5,
         "v_max_mm_s": 30.0 + 5 * rng.standard_normal()}
    f.update(feats)
    first = rng.integers(60, 200, (side, side)).astype(np.uint8)
    last = rng.integers(30, 120, (side, side)).astype(np.uint8)
    return CellEvent(i, i, f, first, last, px, 10 * i, 10 * i + 4, 0)


# ---------------------------------------------------------------------------------------------
# the spec


def test_spec_json_round_trip_keeps_every_field(tmp_path):
    spec = make_spec(k=3, channels=("last",), pixel_norm=PixelNorm("per_image"))
    spec = spec.with_provenance(training={"epochs": 3, "lr": 1e-3}, notes=("a", "b"))
    text = spec.to_json()
    again = ModelSpec.from_json(text)
    assert again == spec
    assert again.features[2].clip is None  # "no clipping" survives (None is not dropped)
    assert again.feature_names == ("di", "transit_time_ms", "v_max_mm_s")
    assert json.loads(text)["image"]["channels"] == ["last"]
    assert ModelSpec.load(spec.save(tmp_path / "m.spec.json")) == spec


@pytest.mark.parametrize("change,key", [
    (lambda d: d["features"][0].update(std=0.0), "features[0].std"),
    (lambda d: d["features"][2].update(min=5.0, max=5.0), "features[2].max"),
    (lambda d: d["features"][1].update(clip=[3, -3]), "features[1].clip"),
    (lambda d: d["image"].update(channels=["first", "middle"]), "image.channels[1]"),
    (lambda d: d["image"].update(crop_size_um=-1), "image.crop_size_um"),
    (lambda d: d["image"].update(height=4), "image.height"),
    (lambda d: d.update(class_names=["only"]), "class_names"),
    (lambda d: d.update(class_names=["a", "a"]), "class_names"),
    (lambda d: d.update(features=[d["features"][0], d["features"][0]]), "features"),
    (lambda d: d["pixel_norm"].update(std=0), "pixel_norm.std"),
    (lambda d: d.update(format=99), "format"),
    (lambda d: d.update(colour="blue"), "colour"),
    (lambda d: d["features"][0].update(norm="log"), "features[0].norm"),
    (lambda d: d.pop("class_names"), "class_names"),  # a required key, named as such
])
def test_invalid_spec_is_a_model_error_with_key_path(change, key):
    d = make_spec().to_dict()
    change(d)
    with pytest.raises(ModelError) as e:
        ModelSpec.from_dict(d, "model.onnx")
    assert f"model.onnx: model spec {key}:" in str(e.value)


def test_a_model_whose_outputs_are_no_probabilities_is_refused_before_it_sorts(tmp_path):
    # logits (exported without the softmax) were stored as probabilities and passed the
    # threshold: every cell was fired on, and `config --check` called the model valid
    from app.config import config_from_mapping
    from app.session import preflight

    path = write_model(tmp_path / "logits.onnx", make_spec(), softmax=False)
    with pytest.raises(ModelError, match=r"logits\.onnx: its outputs are no class probabilities .*softmax"):
        Classifier(path, provider="cpu")
    cfg = config_from_mapping({"model": {"path": str(path)}, "sorting": {"target_classes": [make_spec().class_names[0]]},
                               "tracking": {"crop_size_um": make_spec().image.crop_size_um}})
    with pytest.raises(ModelError, match="no class probabilities"):
        preflight(cfg)
    Classifier(write_model(tmp_path / "ok.onnx", make_spec()), provider="cpu").close()


def test_an_empty_model_file_is_not_an_onnx_model(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.onnx: not an ONNX model"):
        Classifier(empty, provider="auto")


def test_spec_not_json_is_a_model_error():
    with pytest.raises(ModelError, match="m.onnx: model spec is not valid JSON"):
        ModelSpec.from_json("{nope", "m.onnx")


def test_feature_fit_uses_given_values_only():
    f = FeatureSpec.fit("di", [0.1, 0.2, 0.3, np.nan])
    assert f.mean == pytest.approx(0.2) and f.std == pytest.approx(np.std([0.1, 0.2, 0.3]))
    const = FeatureSpec.fit("di", [0.5, 0.5])
    assert const.std == 1.0  # a constant feature does not divide by zero
    mm = FeatureSpec.fit("v_max_mm_s", [10, 30], "minmax")
    assert (mm.min, mm.max) == (10.0, 30.0)


def test_check_features_names_the_missing_ones():
    spec = make_spec()
    check_features(spec)  # di, transit time, v_max: all produced by the tracker
    bad = replace(spec, features=spec.features + (FeatureSpec("stiffness_kpa", mean=1.0, std=1.0),))
    with pytest.raises(ModelError, match=r"m.onnx: the model needs features \['stiffness_kpa'\] that the tracker does not produce"):
        check_features(bad, source="m.onnx")


# ---------------------------------------------------------------------------------------------
# preprocessing


def test_feature_scaling_order_fill_and_clip():
    pre = Preprocessor(make_spec())
    raw = np.array([[0.25, 2.5, 30.0], [np.nan, 100.0, 90.0]])
    x = pre.scale_features(raw)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0], [1.0, 1.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(x[1], [0.0, 3.0, 2.0], rtol=1e-6)  # NaN -> fill, clip at 3, minmax unclipped
    assert pre.filled == 1
    rng = np.random.default_rng(0)
    ev = event(0, rng)
    # the order is the spec's, not the mapping's
    shuffled = replace(ev, features=dict(reversed(list(ev.features.items()))))
    np.testing.assert_array_equal(pre.raw_features([shuffled]), pre.raw_features([ev]))


def test_missing_feature_names_event_and_feature():
    rng = np.random.default_rng(1)
    ev = event(7, rng)
    ev = replace(ev, features={k: v for k, v in ev.features.items() if k != "transit_time_ms"})
    with pytest.raises(ModelError, match="event 7: lacks feature 'transit_time_ms'"):
        Preprocessor(make_spec())([ev])


def test_crops_are_rescaled_to_the_models_physical_scale():
    """A 20 µm field: 40 px at 0.5 µm/px and 80 px at 0.25 µm/px give the same model image."""
    import cv2

    spec = make_spec(size=16, crop_um=20.0, px=0.5, pixel_norm=PixelNorm("fixed", 0.0, 1.0))
    pre = Preprocessor(spec)
    yy, xx = np.mgrid[0:40, 0:40]
    coarse = (100 + 80 * ((xx - 20) ** 2 + (yy - 14) ** 2 < 64)).astype(np.uint8)  # an off-centre disc
    fine = cv2.resize(coarse, (80, 80), interpolation=cv2.INTER_NEAREST)
    a = pre.images([coarse], [coarse], 0.5)
    b = pre.images([fine], [fine], 0.25)
    assert a.shape == (1, 2, 16, 16)
    np.testing.assert_allclose(a, b, atol=1.0)
    # a crop wider than the field (60 px at 0.5 µm = 30 µm) is cut to its central 20 µm
    wide = np.pad(coarse, 10, mode="edge")
    np.testing.assert_allclose(pre.images([wide], [wide], 0.5), a, atol=1e-4)
    # ... and a narrower one padded: a 20 µm field at 1 µm/px is 20 px, the crop 40 px
    c = pre.images([coarse], [coarse], 1.0)
    assert not np.allclose(c, a, atol=1.0)
    assert pre.field_pixels(1.0) == 20 and pre.field_pixels(0.25) == 80


def test_unknown_pixel_size_is_an_error_for_a_physical_model():
    pre = Preprocessor(make_spec())
    img = np.zeros((40, 40), np.uint8)
    with pytest.raises(ModelError, match="pixel size must be known"):
        pre.images([img], [img], None)
    # a model without a physical scale resamples whole crops
    plain = Preprocessor(make_spec(crop_um=None, px=None))
    assert plain.images([img], [img], None).shape == (1, 2, 16, 16)


def test_channels_and_pixel_normalisation():
    rng = np.random.default_rng(2)
    ev = event(0, rng, side=16, px=1.25)  # 16 px × 1.25 µm = the 20 µm field: no resampling
    pre = Preprocessor(make_spec(channels=("last", "first")))
    img, _ = pre([ev])
    np.testing.assert_allclose(img[0, 0], (ev.last_crop.astype(np.float32) - 100) / 50, atol=1e-6)
    np.testing.assert_allclose(img[0, 1], (ev.first_crop.astype(np.float32) - 100) / 50, atol=1e-6)
    per = Preprocessor(make_spec(pixel_norm=PixelNorm("per_image")))
    img2, _ = per([ev])
    np.testing.assert_allclose(img2.mean(axis=(2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(img2.std(axis=(2, 3)), 1, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the classifier


@pytest.fixture()
def model(tmp_path) -> tuple[Path, ModelSpec]:
    spec = make_spec()
    return write_model(tmp_path / "m.onnx", spec), spec


def test_classifier_on_cpu_matches_numpy(model):
    path, spec = model
    rng = np.random.default_rng(5)
    events = [event(i, rng) for i in range(5)]
    with Classifier(path, provider="auto") as clf:
        assert clf.provider == "cpu" and clf.classes == ("c0", "c1") and clf.spec == spec
        # auto tried the GPU providers first and says why they were not used
        assert set(clf.provider_notes) == {"tensorrt", "cuda"}
        assert "not offered" in clf.provider_notes["cuda"]
        p = clf.classify(events)
        assert p.dtype == np.float32 and p.shape == (5, 2)
        image, feats = Preprocessor(spec)(events)
        np.testing.assert_allclose(p, reference(spec, image, feats), atol=1e-5)
        # one event, and a batch, give the same numbers
        np.testing.assert_allclose(clf.classify(events[2]), p[2:3], atol=1e-6)
        assert clf.last_latency_us > 0
        st = clf.latency_stats()
        assert st["calls"] == 2 and st["p99_us"] >= st["p50_us"] > 0
        assert clf.classify([]).shape == (0, 2)


@pytest.mark.parametrize("batch", [1, 2])
def test_classifier_serves_any_batch_from_a_fixed_batch_graph(tmp_path, batch):
    spec = make_spec()
    path = write_model(tmp_path / "fixed.onnx", spec, batch=batch)
    rng = np.random.default_rng(6)
    events = [event(i, rng) for i in range(3)]
    with Classifier(path) as clf:
        assert clf.max_batch == batch
        p = clf.classify(events)
        assert clf.classify(events[:1]).shape == (1, 2)
    image, feats = Preprocessor(spec)(events)
    np.testing.assert_allclose(p, reference(spec, image, feats), atol=1e-5)
    with pytest.raises(StateError, match="closed"):
        clf.classify(events)


def test_spec_less_model_loads_with_json_beside_it(tmp_path):
    spec = make_spec()
    path = write_model(tmp_path / "authors.onnx", None, shape_spec=spec)
    with pytest.raises(ModelError, match=r"no mimlsort spec .* no authors.spec.json beside it"):
        Classifier(path)
    spec.save(sidecar_path(path))
    assert sidecar_path(path).name == "authors.spec.json"
    with Classifier(path) as clf:
        assert clf.spec == spec
        assert clf.classify([event(0, np.random.default_rng(0))]).shape == (1, 2)


def test_embedded_and_sidecar_specs_must_agree(model):
    path, spec = model
    replace(spec, class_names=("healthy", "sick")).save(sidecar_path(path))
    with pytest.raises(ModelError, match=r"differ \(class_names"):
        read_spec(path)
    spec.save(sidecar_path(path))  # the same spec beside it is fine
    assert read_spec(path) == spec


@pytest.mark.parametrize("graph_kw,spec_change,message", [
    ({}, lambda s: replace(s, class_names=("a", "b", "c")), r"'probabilities' axis 1 is 2 in the graph but the spec's classes \['a', 'b', 'c'\] make 3"),
    ({}, lambda s: replace(s, features=s.features[:2]), r"'features' axis 1 is 3 in the graph but the spec's features \['di', 'transit_time_ms'\] make 2"),
    ({}, lambda s: replace(s, image=replace(s.image, channels=("first",))), r"'image' axis 1 is 2 in the graph but the spec's channels \['first'\] make 1"),
    ({}, lambda s: replace(s, image=replace(s.image, height=32)), r"'image' axis 2 is 16 in the graph but the spec's image height make 32"),
    ({"input_names": ("img", "features")}, None, r"graph inputs are \['img', 'features'\], the contract needs \['image', 'features'\]"),
    ({"output_name": "scores"}, None, r"graph outputs are \['scores'\], the contract needs 'probabilities'"),
    ({"elem": TensorProto.DOUBLE}, None, r"'image' is tensor\(double\), the contract needs float32"),
])
def test_graph_spec_mismatch_says_what_differs(tmp_path, graph_kw, spec_change, message):
    spec = make_spec()
    claimed = spec_change(spec) if spec_change else spec
    path = write_model(tmp_path / "m.onnx", claimed, shape_spec=spec, **graph_kw)
    with pytest.raises(ModelError, match=message) as e:
        Classifier(path, warmup=False)
    assert str(path) in str(e.value)


def test_model_needing_unknown_features_is_refused(tmp_path):
    spec = make_spec()
    spec = replace(spec, features=spec.features[:2] + (FeatureSpec("elasticity", mean=0.0, std=1.0),))
    path = write_model(tmp_path / "m.onnx", spec)
    with pytest.raises(ModelError, match=r"needs features \['elasticity'\] that the tracker does not produce"):
        Classifier(path)
    with Classifier(path, check_tracker_features=False) as clf:  # evaluation on foreign data may allow it
        assert clf.spec.feature_names[-1] == "elasticity"


def test_bad_files_and_options(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        Classifier(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError, match="junk.onnx"):
        Classifier(junk)
    path = write_model(tmp_path / "m.onnx", make_spec())
    with pytest.raises(ModelError, match="provider: must be"):
        Classifier(path, provider="gpu")
    with pytest.raises(BackendUnavailable, match=r"provider 'cuda' is unavailable .*mimlsort\[gpu\]"):
        Classifier(path, provider="cuda")


def test_run_arrays_checks_shapes(model):
    path, _ = model
    with Classifier(path, warmup=False) as clf:
        with pytest.raises(ModelError, match=r"image \[N, 2, 16, 16\]"):
            clf.run_arrays(np.zeros((1, 1, 16, 16), np.float32), np.zeros((1, 3), np.float32))


def test_inference_never_imports_torch(model):
    path, _ = model
    code = ("import sys; sys.modules['torch'] = None\n"
            "from inference.classifier import Classifier\n"
            f"c = Classifier({str(path)!r})\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print(c.classes)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "('c0', 'c1')" in out.stdout


@pytest.mark.skipif(not bundled_model().is_file(), reason="the bundled demo model is not built yet (make model)")
def test_bundled_model_loads_and_classifies():
    rng = np.random.default_rng(0)
    with Classifier(bundled_model()) as clf:
        assert clf.spec.arch == "miml-mini" and clf.spec.image.physical
        side = int(round(clf.spec.image.crop_size_um / 0.5))
        p = clf.classify([event(i, rng, side=side, dir_per_ms=0.14) for i in range(4)])
    assert p.shape == (4, len(clf.classes))
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)


def test_bench_reports_latency_and_throughput_per_model_and_provider(model):
    from inference.bench import bench_inference

    path, _ = model
    res = bench_inference(model=str(path), provider="cpu", seconds=0.05)
    for k in ("b1_p50_ms", "b1_p99_ms", "b1_onnx_only_p50_ms", "b1_preprocess_p50_ms", "b32_cells_per_s"):
        assert res[f"m.cpu.{k}"] > 0, k
    assert res["m.cpu.b1_p99_ms"] >= res["m.cpu.b1_p50_ms"]
    assert res["intra_op_threads"] == 1


def test_a_model_trained_on_features_in_other_units_does_not_classify_tracked_cells(tmp_path):
    # the MIML authors' CSVs (and our --miml export) carry DI, transit time and v_max scaled to
    # 0-1 per batch; the tracker gives ms and mm/s
    spec = make_spec()
    check_features(spec)
    scaled = tuple(replace(f, unit="0-1, scaled per batch by the MIML authors") if f.name == "v_max_mm_s" else f
                   for f in spec.features)
    path = write_model(tmp_path / "m.onnx", replace(spec, features=scaled))
    with pytest.raises(ModelError, match=r"other units than the tracker measures: v_max_mm_s in '0-1, scaled per "
                                         r"batch by the MIML authors' \(the tracker measures 'mm/s'\)"):
        Classifier(path)
    with Classifier(path, check_tracker_features=False) as clf:  # evaluation on the same kind of data
        assert clf.spec.feature_names == spec.feature_names
