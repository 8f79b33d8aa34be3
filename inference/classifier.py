"""The run-time classifier: an ONNX Runtime session over a self-describing MIML model.

``Classifier(model_path)`` reads the spec (embedded, or ``<model>.spec.json`` beside a spec-less
model), checks it against the graph and against the features the tracker produces, picks an
execution provider, warms the session up and then classifies tracker events. Inference never
imports torch.

Provider choice ``auto`` tries TensorRT → CUDA → CPU in that order among those the installed
onnxruntime offers; a provider that is offered but fails to initialise (e.g. CUDA libraries missing)
falls back to the next, and the reason for each provider not used is logged and kept in
:attr:`Classifier.provider_notes`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimlsort.errors import BackendUnavailable, MimlsortError, ModelError, StateError
from mimlsort.inputs import check_input

from .preprocess import Preprocessor
from .spec import INPUT_FEATURES, INPUT_IMAGE, OUTPUT, ModelSpec, TensorInfo, check_features, check_graph, read_spec

log = logging.getLogger(__name__)

__all__ = ["Classifier", "PROVIDERS", "bundled_model"]

#: our provider names → ONNX Runtime's, in the order ``auto`` tries them
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

_LATENCY_WINDOW = 10_000  # recent calls kept for the latency statistics


def bundled_model() -> Path:
    """The demonstration model shipped with mimlsort (simulated cells only, not for biological use)."""
    return Path(__file__).resolve().parent / "models" / "miml-mini-demo.onnx"


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as err:  # an extra: `cpu` or `gpu`, which must not be installed together
        raise BackendUnavailable("ONNX Runtime is missing: install mimlsort[cpu] (onnxruntime) or, for a CUDA GPU, "
                                 "mimlsort[gpu] (onnxruntime-gpu), not both") from err
    return ort


#: on CPU, single cells run through a session in which convolutions with at most this many output
#: pixels per channel use ONNX Runtime's plain (im2col + GEMM) kernel instead of its NCHWc layout:
#: NCHWc re-reads the weights for every output row, which at ResNet-18's last stages (512 channels
#: at 2×2, 4×4) costs more than the layout saves at batch 1 — miml-resnet18 at 64×64 runs 7–17%
#: faster (≤ 8×8 gains no more, ≤ 16×16 less); miml-mini (no conv below 12×12) is unchanged.
PLAIN_CONV_MAX_PIXELS = 16


def _cpu_graph(path: Path) -> bytes | None:
    """The model with the weights of small-output convolutions declared overridable graph inputs,
    or None when no convolution qualifies (or the file cannot be read here: ORT then reports it).

    ONNX Runtime's NCHWc transformer only takes convolutions whose weights are constant; an
    initializer that is also a graph input is not constant to it, yet is still the value used
    (ORT lists only the real inputs in ``get_inputs()``). The numbers are unchanged; the file on
    disk is not touched, and GPU providers load the original.
    """
    try:
        import onnx
        from onnx import helper, shape_inference

        proto = onnx.load(str(path))
        if proto.ir_version < 4:  # there every initializer is a graph input already
            return None
        inferred = shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - not our job to diagnose the file; ORT's own load will
        return None
    shapes = {v.name: v.type.tensor_type.shape for v in inferred.graph.value_info}
    inits = {i.name: i for i in proto.graph.initializer}
    declared = {i.name for i in proto.graph.input}
    for node in proto.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        shape = shapes.get(node.output[0])
        if w is None or w.name in declared or shape is None or len(shape.dim) != 4:
            continue
        hw = [d.dim_value if d.HasField("dim_value") else 0 for d in shape.dim[2:]]
        if 0 < hw[0] * hw[1] <= PLAIN_CONV_MAX_PIXELS:
            proto.graph.input.append(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
            declared.add(w.name)
    if len(declared) == len(inferred.graph.input):
        return None
    return proto.SerializeToString()


class Classifier:
    """Classify cell events with an ONNX MIML model.

    ``classes``/``spec`` describe the model; ``provider`` is the provider in use (``cpu``, ``cuda`` or
    ``tensorrt``); ``classify(events)`` returns float32[N, K] probabilities in ``classes`` order.
    ``last_latency_us`` is the wall time of the last ``classify`` call (preprocessing + inference);
    :meth:`latency_stats` summarises recent calls. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, model_path: str | Path, provider: str = "auto", intra_op_threads: int = 1,
                 warmup: bool = True, *, spec: ModelSpec | None = None, check_tracker_features: bool = True):
        ort = _import_ort()
        self.path = check_input(model_path, what="a model file", error=ModelError)  # a pipe blocked; "not an ONNX model" for an unreadable one
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        if provider not in ("auto", *PROVIDERS):
            raise ModelError(f"provider: must be auto, {', '.join(PROVIDERS)}; got {provider!r}")
        if intra_op_threads < 0:
            raise ModelError(f"intra_op_threads: must be >= 0 (0 = ONNX Runtime's default), got {intra_op_threads}")
        self.intra_op_threads = intra_op_threads
        self.provider_notes: dict[str, str] = {}
        self._session_b1 = None  # the batch-1 (latency) session where it differs from the main one
        self._session = self._make_session(ort, provider)
        meta = self._session.get_modelmeta().custom_metadata_map
        self.spec = spec if spec is not None else read_spec(self.path, meta)
        self.max_batch = check_graph(
            self.spec, [TensorInfo.of(i) for i in self._session.get_inputs()],
            [TensorInfo.of(o) for o in self._session.get_outputs()], str(self.path))
        if check_tracker_features:
            check_features(self.spec, source=str(self.path))
        self.classes: tuple[str, ...] = self.spec.class_names
        self.preprocess = Preprocessor(self.spec)
        self._single = self._single_cell_path() if self.max_batch in (None, 1) else None
        self._single_busy = threading.Lock()
        self._latencies = collections.deque(maxlen=_LATENCY_WINDOW)
        self.last_latency_us = float("nan")
        self.last_run_us = float("nan")
        self.calls = 0
        self.cells = 0
        if warmup:
            self.warmup()

    # -- session and provider ---------------------------------------------------------------------

    def _make_session(self, ort, provider: str):
        available = ort.get_available_providers()
        wanted = list(PROVIDERS) if provider == "auto" else [provider]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # ORT's own warnings are about its internals; our choice is logged below
        last_err: Exception | None = None
        for name in wanted:
            ort_name = PROVIDERS[name]
            if ort_name not in available:
                extra = ("mimlsort[gpu] (onnxruntime-gpu) in place of onnxruntime: pip uninstall onnxruntime first"
                         if name != "cpu" else "mimlsort[cpu]")
                self.provider_notes[name] = f"not offered by this onnxruntime (offers {', '.join(available)}; install {extra})"
                continue
            # CPU is always listed last so that ops a GPU provider does not implement still run
            providers = [ort_name] if name == "cpu" else [ort_name, PROVIDERS["cpu"]]
            try:
                sess = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
            except Exception as err:  # noqa: BLE001 - ORT raises its own exception types (Fail, InvalidGraph…)
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                if ("Protobuf parsing failed" in msg or "INVALID_PROTOBUF" in msg or "No graph was found" in msg
                        or "InvalidProtobuf" in type(err).__name__):
                    raise ModelError(f"{self.path}: not an ONNX model ({msg})") from None
                self.provider_notes[name] = f"failed to start: {msg}"
                last_err = err
                continue
            used = sess.get_providers()
            if used[0] != ort_name:  # ORT falls back to CPU silently when a GPU provider cannot load
                self.provider_notes[name] = f"offered but could not be loaded (the session fell back to {used[0]})"
                continue
            self.provider = name
            if name == "cpu":
                self._session_b1 = self._latency_session(ort, opts, providers)
            for skipped, why in self.provider_notes.items():
                log.info("%s: provider %s not used: %s", self.path.name, skipped, why)
            log.info("%s: running on %s (%s), intra-op threads %d", self.path.name, name, ort_name, self.intra_op_threads)
            return sess
        why = "; ".join(f"{k}: {v}" for k, v in self.provider_notes.items())
        if provider == "auto" or provider == "cpu":
            raise ModelError(f"{self.path}: ONNX Runtime could not load the model ({why})") from last_err
        raise BackendUnavailable(f"{self.path}: provider {provider!r} is unavailable ({why})")

    def _latency_session(self, ort, opts, providers):
        """A second CPU session for single cells when the model has small-output convolutions
        (see :data:`PLAIN_CONV_MAX_PIXELS`): plain kernels there are faster at batch 1 but slower
        for batches (NCHWc reads each weight once per output row for the whole batch: miml-resnet18
        at batch 32 runs ~15% slower without it), so batches keep the main session. None: no such
        convolutions, one session serves all."""
        model = _cpu_graph(self.path)
        if model is None:
            return None
        try:
            sess = ort.InferenceSession(model, sess_options=opts, providers=providers)
        except Exception as err:  # noqa: BLE001 - the main session works; this one is only faster
            log.warning("%s: no separate batch-1 session (%s); batches of one use the main session", self.path.name, err)
            return None
        log.info("%s: batch-1 session with small convolutions on the plain kernel", self.path.name)
        return sess

    @property
    def provider_choice(self) -> str:
        """One line: what runs the model and why the faster providers do not."""
        notes = "; ".join(f"{k} {v}" for k, v in self.provider_notes.items())
        return f"{self.provider}" + (f" ({notes})" if notes else "")

    def _single_cell_path(self):
        """Preallocated batch-1 inputs and output bound to the session once (IOBinding): a single
        cell is preprocessed straight into the bound buffers and run without ONNX Runtime
        allocating or converting anything (~5% of the batch-1 call for miml-mini)."""
        c, h, w = self.spec.image.shape
        image = np.zeros((1, c, h, w), np.float32)
        feats = np.zeros((1, len(self.spec.features)), np.float32)
        probs = np.zeros((1, len(self.classes)), np.float32)
        io = (self._session_b1 or self._session).io_binding()
        io.bind_cpu_input(INPUT_IMAGE, image)
        io.bind_cpu_input(INPUT_FEATURES, feats)
        io.bind_output(OUTPUT, "cpu", 0, np.float32, list(probs.shape), probs.ctypes.data)
        return io, image, feats, probs

    def warmup(self, runs: int = 3) -> None:
        """Run a few zero batches so the first real cell does not pay for allocations and kernel
        choice, and compile the preprocessing kernel (from numba's cache after the first time)."""
        c, h, w = self.spec.image.shape
        f = len(self.spec.features)
        for n in (1, 1, 8)[:max(runs, 1)]:
            try:
                p = self._run(np.zeros((n, c, h, w), np.float32), np.zeros((n, f), np.float32))
            except MimlsortError:
                raise
            except Exception as err:  # ONNX Runtime's own (a node it refuses at run time)
                raise ModelError(f"{self.path}: the model fails on a batch of {n}: {err}") from err
            self.check_probabilities(p)
        if self._single is not None:
            (self._session_b1 or self._session).run_with_iobinding(self._single[0])
        im = self.spec.image
        px = im.pixel_size_um if im.physical else None
        side = self.preprocess.field_pixels(px) or max(h, w)
        crop = np.zeros((side, side), np.uint8)
        self.preprocess.images([crop], [crop], px)

    def check_probabilities(self, p: np.ndarray) -> None:
        """Refuse outputs that are no class probabilities: logits (a graph exported without its
        softmax) were stored as probabilities and passed the threshold, so every cell was sorted."""
        p = np.asarray(p, dtype=np.float64)
        sums = p.sum(axis=-1) if p.size else np.ones(1)
        if not np.isfinite(p).all() or (p < -1e-4).any() or (p > 1 + 1e-4).any() or np.abs(sums - 1).max() > 1e-3:
            raise ModelError(f"{self.path}: its outputs are no class probabilities (values {np.nanmin(p):.3g} to "
                             f"{np.nanmax(p):.3g}, rows summing to {np.nanmin(sums):.3g}-{np.nanmax(sums):.3g}): export "
                             "the model with a softmax at its end")

    # -- inference -----------------------------------------------------------------------------------

    def _run(self, image: np.ndarray, features: np.ndarray) -> np.ndarray:
        sess, b1 = self._session, self._session_b1
        if sess is None:
            raise StateError(f"{self.path.name}: the classifier is closed")
        b = self.max_batch
        if len(image) == 1 and b1 is not None and b in (None, 1):
            return b1.run([OUTPUT], {INPUT_IMAGE: image, INPUT_FEATURES: features})[0]
        if b is None or len(image) == b:
            return sess.run([OUTPUT], {INPUT_IMAGE: image, INPUT_FEATURES: features})[0]
        # a graph exported with a fixed batch size (often 1) still serves any batch: in pieces of
        # that size, the last one padded with zeros
        out = []
        for s in range(0, len(image), b):
            im, fe = image[s:s + b], features[s:s + b]
            n = len(im)
            if n < b:
                im = np.concatenate([im, np.zeros((b - n, *im.shape[1:]), np.float32)])
                fe = np.concatenate([fe, np.zeros((b - n, fe.shape[1]), np.float32)])
            out.append(sess.run([OUTPUT], {INPUT_IMAGE: im, INPUT_FEATURES: fe})[0][:n])
        return np.concatenate(out)

    def run_arrays(self, image: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Probabilities float32[N, K] for inputs that are already preprocessed."""
        image = np.ascontiguousarray(image, np.float32)
        features = np.ascontiguousarray(features, np.float32)
        c, h, w = self.spec.image.shape
        if image.ndim != 4 or image.shape[1:] != (c, h, w) or features.shape != (len(image), len(self.spec.features)):
            raise ModelError(f"{self.path.name}: inputs must be image [N, {c}, {h}, {w}] and features "
                             f"[N, {len(self.spec.features)}], got {image.shape} and {features.shape}")
        if len(image) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        t0 = time.perf_counter_ns()
        out = self._run(image, features)
        self.last_run_us = (time.perf_counter_ns() - t0) / 1e3
        return np.asarray(out, np.float32)

    def classify(self, events: Sequence) -> np.ndarray:
        """Class probabilities float32[N, K] (``classes`` order) for tracker events (one or many)."""
        if not isinstance(events, Sequence):
            events = [events] if hasattr(events, "features") else list(events)
        t0 = time.perf_counter_ns()
        if len(events) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        # one cell, the sort path's usual case: no temporaries; a second thread calling at the
        # same moment takes the general path instead of waiting for (or corrupting) the buffers
        single = self._single
        if len(events) == 1 and single is not None and self._single_busy.acquire(blocking=False):
            try:
                probs = self._classify_single(events[0], single)
            finally:
                self._single_busy.release()
        else:
            image, feats = self.preprocess(events)
            probs = self.run_arrays(image, feats)
        dt = (time.perf_counter_ns() - t0) / 1e3
        self.last_latency_us = dt
        self._latencies.append(dt)
        self.calls += 1
        self.cells += len(events)
        return probs

    def _classify_single(self, event, single) -> np.ndarray:
        io, image, feats, probs = single
        self.preprocess.fill(event, image[0], feats[0])
        sess = self._session_b1 or self._session
        if sess is None:
            raise StateError(f"{self.path.name}: the classifier is closed")
        t0 = time.perf_counter_ns()
        sess.run_with_iobinding(io)
        self.last_run_us = (time.perf_counter_ns() - t0) / 1e3
        return probs.copy()

    def latency_stats(self) -> dict[str, float]:
        """p50/p99/max/mean of the recent ``classify`` calls in µs, and how many calls that is."""
        if not self._latencies:
            return {"calls": 0}
        a = np.fromiter(self._latencies, np.float64)
        return {"calls": len(a), "p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
                "max_us": float(a.max()), "mean_us": float(a.mean())}

    # -- resources -----------------------------------------------------------------------------------

    def close(self) -> None:
        self._session = None
        self._session_b1 = None
        self._single = None

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Classifier({self.path.name!r}, arch={self.spec.arch!r}, classes={list(self.classes)}, provider={self.provider!r})"
