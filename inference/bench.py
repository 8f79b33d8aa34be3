"""``mimlsort bench inference``: classifier latency (batch 1) and throughput (batch 32).

For each model and provider: p50/p99 of one ``Classifier.classify`` call with one event (what a
cell waits for between leaving the constriction and its sort decision: preprocessing + inference),
the same for the ONNX Runtime call alone, p50 of the one-cell preprocessing alone, and cells per
second at batch 32.

Models: those given with ``--model`` (comma-separated), else the bundled ``miml-mini`` demo model
and, when torch is installed, a freshly exported untrained ``miml-resnet18`` at 64×64 (weights do
not change the speed). Providers: the one given, else every one the installed onnxruntime offers.
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mimlsort.errors import BackendUnavailable

from .classifier import PROVIDERS, Classifier, bundled_model

log = logging.getLogger(__name__)

__all__ = ["bench_inference", "export_untrained"]


def export_untrained(arch: str, size: int, out_dir: Path, n_features: int = 4) -> Path:
    """An untrained model of ``arch`` at size × size with a valid spec (for timing only)."""
    import torch

    from inference.spec import FeatureSpec, ImageSpec, ModelSpec, PixelNorm, Provenance
    from inference.training.export import export_onnx
    from inference.training.models import build_model
    from tracking.features import MIML_FEATURES

    torch.manual_seed(0)
    model = build_model(arch, in_channels=2, n_features=n_features, n_classes=2).eval()
    spec = ModelSpec(("a", "b"), tuple(FeatureSpec(n, mean=0.0, std=1.0) for n in MIML_FEATURES[:n_features]),
                     ImageSpec(size, size, ("first", "last"), 40.0, 40.0 / size), arch, PixelNorm("fixed", 128.0, 64.0),
                     Provenance(notes=("untrained, exported by mimlsort bench inference for timing only",)))
    return export_onnx(model, spec, out_dir / f"{arch}-{size}-untrained.onnx", checkpoint=False)


def _events(clf: Classifier, n: int, seed: int = 0) -> list:
    from tracking.events import CellEvent

    rng = np.random.default_rng(seed)
    im = clf.spec.image
    px = im.pixel_size_um or 0.5
    side = int(round(im.crop_size_um / px)) if im.crop_size_um else im.height
    out = []
    for i in range(n):
        feats = {f.name: float((f.mean if f.mean is not None else 0.5) + rng.standard_normal() * 0.1) for f in clf.spec.features}
        crops = rng.integers(60, 200, (2, side, side)).astype(np.uint8)
        out.append(CellEvent(i, i, feats, crops[0], crops[1], px, i, i + 1, 0))
    return out


def _time(fn, budget_s: float, min_runs: int, max_runs: int) -> np.ndarray:
    times = []
    t_end = time.perf_counter() + budget_s
    while len(times) < min_runs or (time.perf_counter() < t_end and len(times) < max_runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return np.asarray(times, np.float64) / 1e6  # ms


def _after_idle(clf: Classifier, one: list, idle_s: float, runs: int, busy: bool = False) -> np.ndarray:
    """ms per ``classify`` call made after ``idle_s`` of sleep (or of a busy loop that keeps the
    core awake, ``busy``), as sporadic cells come."""
    times = []
    for _ in range(runs):
        if busy:
            end = time.perf_counter() + idle_s
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(idle_s)
        t0 = time.perf_counter_ns()
        clf.classify(one)
        times.append(time.perf_counter_ns() - t0)
    return np.asarray(times, np.float64) / 1e6


def _bench_one(path: Path, provider: str, label: str, budget_s: float) -> dict:
    out: dict = {}
    try:
        clf = Classifier(path, provider=provider, intra_op_threads=1, warmup=True, check_tracker_features=False)
    except BackendUnavailable as err:
        return {f"{label}.{provider}.error": str(err)}
    with clf:
        key = f"{label}.{clf.provider}"
        one = _events(clf, 1)
        batch = _events(clf, 32, seed=1)
        image, feats = clf.preprocess(one)
        for _ in range(20):
            clf.classify(one)
        t1 = _time(lambda: clf.classify(one), budget_s, 200, 20000)
        tr = _time(lambda: clf.run_arrays(image, feats), budget_s / 2, 200, 20000)
        im1 = np.empty(image.shape[1:], np.float32)
        fe1 = np.empty(feats.shape[1:], np.float32)
        tp = _time(lambda: clf.preprocess.fill(one[0], im1, fe1), budget_s / 4, 200, 20000)
        tb = _time(lambda: clf.classify(batch), budget_s, 10, 2000)
        # cells come one at a time with idle gaps: the model's weights and code are out of the
        # caches by then, and that call is what a sorter sees (back to back above is the best case)
        tc = _after_idle(clf, one, 0.002, 100 if label.startswith("miml-mini") else 20)
        tc50 = _after_idle(clf, one, 0.05, 20)
        # the same gaps with the core kept busy: if the call is as slow, what cools it is time
        # (other tenants of the host's shared caches), not our core sleeping
        tb1 = _after_idle(clf, one, 0.001, 100, busy=True)
        tb10 = _after_idle(clf, one, 0.01, 100 if label.startswith("miml-mini") else 20, busy=True)
        out[f"{key}.b1_p50_ms"] = round(float(np.percentile(t1, 50)), 4)
        out[f"{key}.b1_p99_ms"] = round(float(np.percentile(t1, 99)), 4)
        out[f"{key}.b1_onnx_only_p50_ms"] = round(float(np.percentile(tr, 50)), 4)
        out[f"{key}.b1_onnx_only_p99_ms"] = round(float(np.percentile(tr, 99)), 4)
        out[f"{key}.b1_preprocess_p50_ms"] = round(float(np.percentile(tp, 50)), 4)
        out[f"{key}.b1_after_2ms_idle_p50_ms"] = round(float(np.percentile(tc, 50)), 4)
        out[f"{key}.b1_after_2ms_idle_p99_ms"] = round(float(np.percentile(tc, 99)), 4)
        out[f"{key}.b1_after_50ms_idle_p50_ms"] = round(float(np.percentile(tc50, 50)), 4)
        out[f"{key}.b1_after_1ms_busy_p50_ms"] = round(float(np.percentile(tb1, 50)), 4)
        out[f"{key}.b1_after_10ms_busy_p50_ms"] = round(float(np.percentile(tb10, 50)), 4)
        out[f"{key}.b32_cells_per_s"] = round(32 / (float(np.median(tb)) / 1e3), 1)
        out[f"{key}.runs_b1"] = len(t1)
    return out


def bench_inference(model: str | None = None, provider: str | None = None, seconds: float | None = None) -> dict:
    """Flat dict of latency/throughput figures per model and provider (see the module docstring)."""
    import onnxruntime as ort

    budget = seconds if seconds is not None else 2.0
    res: dict = {"onnxruntime": ort.__version__, "intra_op_threads": 1, "cpu": platform.processor() or platform.machine()}
    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-") as tmp:
        models: list[tuple[str, Path]] = []
        if model:
            models = [(Path(m).stem, Path(m)) for m in model.split(",") if m.strip()]
        else:
            if bundled_model().is_file():
                models.append(("miml-mini-demo", bundled_model()))
            try:
                import torch  # noqa: F401

                if not bundled_model().is_file():
                    models.append(("miml-mini-untrained", export_untrained("miml-mini", 48, Path(tmp))))
                models.append(("miml-resnet18-64-untrained", export_untrained("miml-resnet18", 64, Path(tmp))))
            except ImportError:
                res["note"] = "torch not installed: no miml-resnet18 model exported for timing (install mimlsort[train])"
        if not models:
            raise BackendUnavailable("no model to time: give --model, build the bundled model, or install mimlsort[train]")
        offered = ort.get_available_providers()
        providers = [provider] if provider and provider != "auto" else (
            ["auto"] if provider == "auto" else [p for p, n in PROVIDERS.items() if n in offered])
        for label, path in models:
            for prov in providers:
                res.update(_bench_one(path, prov, label, budget))
    return res
