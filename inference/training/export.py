"""Export a trained model to the self-describing ONNX contract and prove it matches torch.

The ONNX file has inputs ``image`` float32[N, C, H, W] and ``features`` float32[N, F] (dynamic N)
and output ``probabilities`` float32[N, K]; its metadata_props key ``mimlsort_spec`` holds the full
JSON spec. A torch checkpoint (.pt) is written beside it so fine-tuning can start from the exported
model. After writing, the file is run through ONNX Runtime on random inputs (batch sizes 1 and 3)
and compared with torch; a difference above ``atol`` raises :class:`ModelError` (and the file is
removed, so a wrong model can never be picked up).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from inference.spec import INPUT_FEATURES, INPUT_IMAGE, OUTPUT, SPEC_KEY, ModelSpec
from mimlsort.errors import ModelError

from .models import MimlNet  # raises BackendUnavailable without torch

import torch  # noqa: E402  (after .models, which turns a missing torch into BackendUnavailable)

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "verify_onnx", "update_spec", "SPEC_KEY", "INPUT_NAMES", "OUTPUT_NAME"]

INPUT_NAMES = (INPUT_IMAGE, INPUT_FEATURES)
OUTPUT_NAME = OUTPUT
OPSET = 18


def export_onnx(
    model: MimlNet,
    spec: ModelSpec,
    path: str | Path,
    *,
    checkpoint: bool = True,
    verify: bool = True,
    atol: float = 1e-5,
    seed: int = 0,
) -> Path:
    """Write ``model`` to ``path`` (.onnx) with ``spec`` in its metadata; return the path."""
    import onnx

    from .train import save_checkpoint

    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ModelError(f"{path}: the exported model's name must end in .onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = spec.image.shape
    if c != model.in_channels:
        raise ModelError(f"{path}: spec says {c} image channels, the model takes {model.in_channels}")
    model = model.cpu().eval()
    gen = torch.Generator().manual_seed(seed)
    example = (torch.randn(2, c, h, w, generator=gen), torch.randn(2, model.n_features, generator=gen))
    batch = torch.export.Dim("batch", min=1)
    # the exporter's own deprecation and future warnings are about torch internals, not our model;
    # they would fail a `filterwarnings = error` test run
    # torch also logs that torchvision's custom ops are unavailable: irrelevant, we use none
    reg_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    old_level = reg_log.level
    reg_log.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model, example, None, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                dynamic_shapes={"image": {0: batch}, "features": {0: batch}}, dynamo=True, opset_version=OPSET,
                verbose=False,
            )
        except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
            raise ModelError(f"{path}: ONNX export of {model.arch!r} failed: {err}") from err
        finally:
            reg_log.setLevel(old_level)
    proto = program.model_proto
    names_in = [i.name for i in proto.graph.input]
    names_out = [o.name for o in proto.graph.output]
    if names_in != list(INPUT_NAMES) or names_out != [OUTPUT_NAME]:
        raise ModelError(f"{path}: exported graph has inputs {names_in} and outputs {names_out}, expected {list(INPUT_NAMES)} -> {OUTPUT_NAME}")
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = SPEC_KEY
    entry.value = spec.to_json()
    proto.producer_name = "mimlsort"
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    try:
        if verify:
            verify_onnx(model, path, atol=atol, seed=seed)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    if checkpoint:
        save_checkpoint(path.with_suffix(".pt"), model, spec)
    log.info("exported %s (%s)", path, model.arch)
    return path


def verify_onnx(model: MimlNet, path: str | Path, *, atol: float = 1e-5, seed: int = 0) -> float:
    """Largest |ONNX − torch| over random inputs of batch 1 and 3; raise ModelError above ``atol``.

    Checks the file as ONNX Runtime runs it for batches and, where the classifier runs single
    cells through its own CPU variant of the graph (inference.classifier._cpu_graph), that too.
    """
    from inference.classifier import _cpu_graph, _import_ort

    ort = _import_ort()

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the variant's overridable weights draw a warning that is its purpose
    sessions = [ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])]
    variant = _cpu_graph(Path(path))
    if variant is not None:
        sessions.append(ort.InferenceSession(variant, opts, providers=["CPUExecutionProvider"]))
    shape = sessions[0].get_inputs()[0].shape
    c, h, w = (int(s) for s in shape[1:])
    rng = np.random.default_rng(seed + 1)
    model = model.cpu().eval()
    worst = 0.0
    for n in (1, 3):
        image = rng.standard_normal((n, c, h, w)).astype(np.float32)
        feats = rng.standard_normal((n, model.n_features)).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(image), torch.from_numpy(feats)).numpy()
        for sess in sessions:
            got = sess.run([OUTPUT_NAME], {"image": image, "features": feats})[0]
            if got.shape != want.shape:
                raise ModelError(f"{path}: ONNX output shape {got.shape} != torch {want.shape} for batch {n}")
            worst = max(worst, float(np.abs(got - want).max()))
    if not worst <= atol:
        raise ModelError(f"{path}: ONNX output differs from torch by {worst:.3g} (> {atol:g})")
    return worst


def update_spec(path: str | Path, spec: ModelSpec) -> Path:
    """Replace the spec embedded in an exported model (e.g. to add held-out test figures to its
    provenance), and in the checkpoint (.pt) beside it. The graph is untouched; a spec that no
    longer fits it is refused."""
    import onnx

    from .train import load_checkpoint, save_checkpoint

    from inference.spec import TensorInfo, check_graph

    path = Path(path)
    proto = onnx.load(str(path))

    def info(v):
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim)
        return TensorInfo(v.name, "tensor(float)" if t.elem_type == onnx.TensorProto.FLOAT else f"elem {t.elem_type}", dims)

    check_graph(spec, [info(v) for v in proto.graph.input], [info(v) for v in proto.graph.output], str(path))
    kept = [p for p in proto.metadata_props if p.key != SPEC_KEY]
    del proto.metadata_props[:]
    for p in kept:
        proto.metadata_props.add().CopyFrom(p)
    entry = proto.metadata_props.add()
    entry.key = SPEC_KEY
    entry.value = spec.to_json()
    onnx.save_model(proto, str(path))
    checkpoint = path.with_suffix(".pt")
    if checkpoint.is_file():
        # the held-out figures reached the .onnx only: a model fine-tuned from the .pt, or the .pt
        # read on its own, had lost them
        model, _ = load_checkpoint(checkpoint)
        save_checkpoint(checkpoint, model, spec)
    return path
