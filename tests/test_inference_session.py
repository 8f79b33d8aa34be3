"""ONNX Runtime session tuning in the classifier: the batch-1 session with small convolutions on
the plain kernel (inference.classifier._cpu_graph) and the IOBinding single-cell path.

The model is a small CNN written with onnx.helper (no torch): convolutions at 8×8 and at 4×4 output
pixels, so exactly the 4×4 ones qualify for the plain kernel; its outputs through every path must
match the untouched graph run by a plain ONNX Runtime session.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inference.classifier import PLAIN_CONV_MAX_PIXELS, Classifier, _cpu_graph
from inference.spec import SPEC_KEY, FeatureSpec, ImageSpec, ModelSpec, PixelNorm
from tracking.events import CellEvent


def cnn_spec() -> ModelSpec:
    feats = (FeatureSpec("di", mean=0.2, std=0.05), FeatureSpec("transit_time_ms", mean=2.0, std=0.5))
    return ModelSpec(("a", "b", "c"), feats, ImageSpec(16, 16, ("first", "last"), 20.0, 0.5), "test-cnn",
                     PixelNorm("fixed", 100.0, 50.0))


def write_cnn(path, spec: ModelSpec, seed: int = 0):
    rng = np.random.default_rng(seed)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    k, f = spec.n_classes, len(spec.features)
    nodes = [
        helper.make_node("Conv", ["image", "W1", "B1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),  # 8×8
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),  # 4×4
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "W3"], ["c3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),  # 4×4
        helper.make_node("Add", ["c3", "r2"], ["res"]),
        helper.make_node("Relu", ["res"], ["r3"]),
        helper.make_node("ReduceMean", ["r3", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "Wi"], ["zi"]),
        helper.make_node("MatMul", ["features", "Wf"], ["zf"]),
        helper.make_node("Add", ["zi", "zf"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    inits = [w("W1", 16, 2, 3, 3), w("B1", 16), w("W2", 16, 16, 3, 3), w("B2", 16), w("W3", 16, 16, 3, 3),
             helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]), w("Wi", 16, k), w("Wf", f, k)]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2, 16, 16]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {SPEC_KEY: spec.to_json()})
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def events(n: int, seed: int = 0) -> list[CellEvent]:
    rng = np.random.default_rng(seed)
    return [CellEvent(i, i, {"di": 0.2 + 0.05 * rng.standard_normal(), "transit_time_ms": 2 + rng.standard_normal()},
                      rng.integers(0, 256, (40, 40)).astype(np.uint8), rng.integers(0, 256, (40, 40)).astype(np.uint8),
                      0.5, i, i + 1, 0) for i in range(n)]


@pytest.fixture()
def cnn(tmp_path):
    spec = cnn_spec()
    return write_cnn(tmp_path / "cnn.onnx", spec), spec


def test_only_small_output_convolutions_are_taken_off_nchwc(cnn):
    path, _ = cnn
    data = _cpu_graph(path)
    assert data is not None
    proto = onnx.load_from_string(data)
    assert [i.name for i in proto.graph.input] == ["image", "features", "W2", "W3"]  # 4×4 outputs; W1 makes 8×8
    assert 4 * 4 <= PLAIN_CONV_MAX_PIXELS < 8 * 8
    assert onnx.load(str(path)).graph.input[2:] == []  # the file itself is untouched


def test_batch1_session_and_single_cell_path_match_the_plain_graph(cnn):
    path, spec = cnn
    evs = events(5)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    with Classifier(path, provider="cpu") as clf:
        assert clf._session_b1 is not None
        assert [i.name for i in clf._session_b1.get_inputs()] == ["image", "features"]
        image, feats = clf.preprocess(evs)
        want = plain.run(["probabilities"], {"image": image, "features": feats})[0]
        batch = clf.classify(evs)
        singles = np.concatenate([clf.classify(e) for e in evs])
        one_arrays = np.concatenate([clf.run_arrays(image[i:i + 1], feats[i:i + 1]) for i in range(5)])
    assert batch.shape == (5, 3)
    np.testing.assert_allclose(batch, want, atol=1e-5)
    np.testing.assert_allclose(singles, want, atol=1e-5)
    np.testing.assert_allclose(one_arrays, want, atol=1e-5)


def test_models_without_small_convolutions_keep_one_session(tmp_path):
    from tests.test_inference import make_spec, write_model

    path = write_model(tmp_path / "linear.onnx", make_spec())
    assert _cpu_graph(path) is None
    with Classifier(path) as clf:
        assert clf._session_b1 is None and clf._single is not None
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert _cpu_graph(junk) is None  # ORT's own load reports the file


def test_a_second_thread_never_shares_the_single_cell_buffers(cnn):
    """While one call holds the preallocated batch-1 buffers, another takes the general path."""
    import threading

    path, _ = cnn
    evs = events(40, seed=3)
    with Classifier(path) as clf:
        want = clf.classify(evs)
        got: dict[int, np.ndarray] = {}

        def work(lo):
            for i in range(lo, 40, 2):
                got[i] = clf.classify(evs[i])

        threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    np.testing.assert_allclose(np.concatenate([got[i] for i in range(40)]), want, atol=1e-5)
