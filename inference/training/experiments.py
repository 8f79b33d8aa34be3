"""The MIML paper's two comparisons, reproducible on any labelled data (simulated by default in the CLI).

* :func:`compare_architectures`: fused MIML vs the image-only and feature-only baselines, all trained
  by the same loop on the same cells and scored on the same held-out cells.
* :func:`transfer_experiment`: a model trained on one pair of classes, fine-tuned with a few
  (~100) examples of a new pair, against the same architecture trained from scratch on those few
  examples; both scored on the new pair's remaining cells. Repeated over several draws of the few
  examples, because with ~100 cells one draw says little.

Scores come from the exported ONNX models through :func:`inference.training.evaluate.predict_onnx`
(the code that sorts cells), not from torch.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Dataset, grouped_split
from .evaluate import compute_metrics, predict_onnx
from .models import count_parameters  # raises BackendUnavailable without torch
from .train import train_model

log = logging.getLogger(__name__)

__all__ = ["ArchScore", "compare_architectures", "TransferResult", "transfer_experiment", "few_examples"]


@dataclass(frozen=True)
class ArchScore:
    arch: str
    accuracy: float
    macro_f1: float
    roc_auc: float
    n_test: int
    parameters: int
    best_epoch: int
    seconds: float


def _score(onnx_path: Path, test: Dataset) -> tuple[float, float, float]:
    probs, classes = predict_onnx(onnx_path, test)
    remap = np.array([classes.index(c) for c in test.class_names])
    m = compute_metrics(remap[test.labels], probs, classes)
    return m.accuracy, m.macro_f1, m.macro_roc_auc


def compare_architectures(train: Dataset, test: Dataset, out_dir: str | Path,
                          archs: Sequence[str] = ("miml-mini", "image-only", "feature-only"), **train_kw) -> list[ArchScore]:
    """Train each of ``archs`` on ``train`` (no cross-validation) and score it on ``test``."""
    out = Path(out_dir)
    scores = []
    for arch in archs:
        t0 = time.perf_counter()
        res = train_model(train, arch, folds=0, out_dir=out / arch, model_name=arch, **train_kw)
        acc, f1, auc = _score(res.onnx_path, test)
        scores.append(ArchScore(arch, acc, f1, auc, len(test), count_parameters(res.model), res.best_epoch,
                                time.perf_counter() - t0))
        log.info("%s: held-out accuracy %.4f", arch, acc)
    return scores


def few_examples(ds: Dataset, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(few, rest): about ``n`` cells stratified by class (whole groups), and all the others."""
    frac = min(max(n / len(ds), 0.0), 0.95)
    rest, few = grouped_split(ds.labels, ds.groups, frac, seed)
    return few, rest


@dataclass(frozen=True)
class TransferResult:
    n_few: int
    n_test: int
    seeds: tuple[int, ...]
    scratch: tuple[float, ...]  # accuracy per draw, trained from scratch on the few examples
    finetuned: tuple[float, ...]  # accuracy per draw, fine-tuned from the parent
    parent_accuracy_on_source: float
    frozen_image_branch: bool

    @property
    def scratch_mean(self) -> float:
        return float(np.mean(self.scratch))

    @property
    def finetuned_mean(self) -> float:
        return float(np.mean(self.finetuned))

    def to_markdown(self) -> str:
        lines = [
            f"Parent trained on the source pair (held-out accuracy there {self.parent_accuracy_on_source:.4f}); "
            f"{self.n_few} examples of the new pair for training, {self.n_test} for testing"
            f"{' (image branch frozen)' if self.frozen_image_branch else ''}.",
            "",
            "| draw (seed) | from scratch | fine-tuned |",
            "|---|---|---|",
        ]
        for s, a, b in zip(self.seeds, self.scratch, self.finetuned):
            lines.append(f"| {s} | {a:.4f} | {b:.4f} |")
        lines.append(f"| mean | {self.scratch_mean:.4f} | {self.finetuned_mean:.4f} |")
        return "\n".join(lines)


def transfer_experiment(source: Dataset, target: Dataset, *, n_few: int = 100, seeds: Sequence[int] = (0, 1, 2),
                        arch: str = "miml-mini", freeze_image_branch: bool = False, out_dir: str | Path | None = None,
                        parent_epochs: int = 30, few_epochs: int = 30, **train_kw) -> TransferResult:
    """Parent on ``source``; then, per seed, ``n_few`` cells of ``target`` train a fine-tuned and a
    from-scratch model, both scored on the rest of ``target``."""
    with tempfile.TemporaryDirectory(prefix="mimlsort-transfer-") as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        tr, te = grouped_split(source.labels, source.groups, 0.2, 0)
        parent = train_model(source.subset(tr), arch, folds=0, epochs=parent_epochs, out_dir=out / "parent",
                             model_name="parent", **train_kw)
        parent_acc = _score(parent.onnx_path, source.subset(te))[0]
        target = target.select_features(parent.spec.feature_names)
        scratch, fine = [], []
        n_test = 0
        for seed in seeds:
            few_idx, rest_idx = few_examples(target, n_few, seed)
            few, rest = target.subset(few_idx), target.subset(rest_idx)
            n_test = len(rest)
            # few examples: no cross-validation, a small validation share for early stopping
            kw = dict(train_kw, folds=0, epochs=few_epochs, seed=seed)
            a = train_model(few, arch, out_dir=out / f"scratch-{seed}", model_name="scratch", **kw)
            b = train_model(few, None, init_from=parent.onnx_path, freeze_image_branch=freeze_image_branch,
                            out_dir=out / f"finetuned-{seed}", model_name="finetuned", **kw)
            scratch.append(_score(a.onnx_path, rest)[0])
            fine.append(_score(b.onnx_path, rest)[0])
            log.info("transfer draw %d: scratch %.4f, fine-tuned %.4f", seed, scratch[-1], fine[-1])
        return TransferResult(len(few_idx), n_test, tuple(seeds), tuple(scratch), tuple(fine), parent_acc,
                              freeze_image_branch)


def architectures_markdown(scores: Sequence[ArchScore]) -> str:
    lines = ["| model | held-out accuracy | macro F1 | ROC-AUC | parameters | best epoch | training s |",
             "|---|---|---|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s.arch} | {s.accuracy:.4f} | {s.macro_f1:.4f} | {s.roc_auc:.4f} | {s.parameters:,} | "
                     f"{s.best_epoch} | {s.seconds:.0f} |")
    return "\n".join(lines)
