"""Metrics, plots and the Markdown report of a MIML model.

:func:`evaluate` runs a data set through the exported ONNX model with
:class:`inference.classifier.Classifier` — the code that runs live — so the report describes what
will sort cells, not a torch model that might differ. :func:`compute_metrics` and
:func:`write_report` are shared with training, which writes the same report for its
cross-validation. No torch is needed here.

Metrics are written out in numpy (no scikit-learn dependency): accuracy; precision, recall and F1
per class and macro-averaged; ROC-AUC (binary: positive = class 1; multi-class: one-vs-rest per
class and their macro mean), via the Mann–Whitney rank statistic with ties averaged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mimlsort.errors import DataFormatError, ModelError

__all__ = ["Metrics", "EvalResult", "compute_metrics", "roc_curve", "roc_auc", "write_report", "evaluate"]


@dataclass(frozen=True)
class Metrics:
    class_names: tuple[str, ...]
    n: int
    accuracy: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    macro_precision: float
    macro_recall: float
    macro_f1: float
    roc_auc: tuple[float, ...]  # one-vs-rest per class (nan where a class is absent or alone)
    macro_roc_auc: float  # binary: AUC of class 1; else mean of the defined one-vs-rest AUCs
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted class

    def to_dict(self) -> dict:
        return asdict(self)


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for binary ``y`` (nan unless both classes occur)."""
    y = np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s), np.float64)
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0,0) to (1,1)."""
    y = np.asarray(y, bool)
    order = np.argsort(-np.asarray(score), kind="mergesort")
    s, yy = np.asarray(score)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the final index of each distinct score
    tp = np.cumsum(yy)[last]
    fp = np.cumsum(~yy)[last]
    tpr = np.r_[0.0, tp / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~y).sum()), 1)]
    return fpr, tpr


def compute_metrics(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]) -> Metrics:
    y = np.asarray(y_true, np.int64)
    p = np.asarray(probs, np.float64)
    k = len(class_names)
    if p.ndim != 2 or p.shape != (len(y), k):
        raise DataFormatError(f"probabilities must be ({len(y)}, {k}), got {p.shape}")
    pred = p.argmax(axis=1)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        rec = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    present = cm.sum(1) > 0  # macro averages over the classes that occur in the data
    aucs = tuple(roc_auc(y == c, p[:, c]) for c in range(k))
    if k == 2:
        macro_auc = aucs[1]
    else:
        defined = [a for a in aucs if not math.isnan(a)]
        macro_auc = float(np.mean(defined)) if defined else math.nan
    mean = lambda a: float(a[present].mean()) if present.any() else math.nan  # noqa: E731
    return Metrics(
        tuple(class_names), len(y), float(tp.sum() / max(len(y), 1)),
        tuple(map(float, prec)), tuple(map(float, rec)), tuple(map(float, f1)), tuple(int(v) for v in cm.sum(1)),
        mean(prec), mean(rec), mean(f1), aucs, macro_auc, tuple(tuple(int(v) for v in row) for row in cm),
    )


# ---------------------------------------------------------------------------------------------
# plots and report


def _figure(size=(4.5, 4.0)):
    # the object API with the Agg canvas: no pyplot global state, no GUI backend, thread-safe enough
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_roc(y_true, probs, class_names: Sequence[str], path: Path) -> Path:
    y = np.asarray(y_true)
    p = np.asarray(probs)
    fig = _figure()
    ax = fig.add_subplot(111)
    classes = [1] if len(class_names) == 2 else range(len(class_names))
    for c in classes:
        yc = y == c
        if yc.all() or not yc.any():
            continue
        fpr, tpr = roc_curve(yc, p[:, c])
        ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {roc_auc(yc, p[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC" + (f" (positive: {class_names[1]})" if len(class_names) == 2 else " (one vs rest)"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_confusion(m: Metrics, path: Path) -> Path:
    cm = np.asarray(m.confusion)
    k = len(m.class_names)
    fig = _figure((1.6 + 0.9 * k, 1.3 + 0.9 * k))
    ax = fig.add_subplot(111)
    ax.imshow(cm, cmap="Blues", vmin=0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k), m.class_names)
    ax.set_yticks(range(k), m.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion (n={m.n})")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _f(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def metrics_markdown(m: Metrics) -> str:
    lines = [
        f"- samples: {m.n}",
        f"- accuracy: {_f(m.accuracy)}",
        f"- macro precision / recall / F1: {_f(m.macro_precision)} / {_f(m.macro_recall)} / {_f(m.macro_f1)}",
        f"- ROC-AUC ({'positive class ' + m.class_names[1] if len(m.class_names) == 2 else 'macro one-vs-rest'}): {_f(m.macro_roc_auc)}",
        "",
        "| class | support | precision | recall | F1 | ROC-AUC (one vs rest) |",
        "|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(m.class_names):
        lines.append(f"| {c} | {m.support[i]} | {_f(m.precision[i])} | {_f(m.recall[i])} | {_f(m.f1[i])} | {_f(m.roc_auc[i])} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(m.class_names) + " |", "|---|" + "---|" * len(m.class_names)]
    for i, c in enumerate(m.class_names):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in m.confusion[i]) + " |")
    return "\n".join(lines)


def folds_markdown(folds: Sequence[Metrics]) -> str:
    lines = ["| fold | n | accuracy | macro F1 | ROC-AUC |", "|---|---|---|---|---|"]
    for i, m in enumerate(folds):
        lines.append(f"| {i + 1} | {m.n} | {_f(m.accuracy)} | {_f(m.macro_f1)} | {_f(m.macro_roc_auc)} |")
    for name, fn in (("mean", np.nanmean), ("std", np.nanstd)):
        vals = [[m.accuracy for m in folds], [m.macro_f1 for m in folds], [m.macro_roc_auc for m in folds]]
        cells = []
        for v in vals:
            v = np.asarray(v, np.float64)
            cells.append(_f(float(fn(v))) if np.isfinite(v).any() else "–")
        lines.append(f"| {name} | {sum(m.n for m in folds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class EvalResult:
    metrics: Metrics
    fold_metrics: tuple[Metrics, ...]
    probabilities: np.ndarray = field(repr=False)
    y_true: np.ndarray = field(repr=False)
    report_path: Path | None = None
    roc_png: Path | None = None
    confusion_png: Path | None = None
    metrics_json: Path | None = None


def write_report(
    out_dir: str | Path,
    y_true,
    probs,
    class_names: Sequence[str],
    *,
    title: str = "MIML model evaluation",
    what: str = "",
    fold_metrics: Sequence[Metrics] = (),
    sections: Mapping[str, str] | None = None,
    folds_heading: str = "Cross-validation (per fold)",
) -> EvalResult:
    """Write ``report.md``, ``roc.png``, ``confusion.png`` and ``metrics.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y_true, np.int64)
    p = np.asarray(probs, np.float64)
    m = compute_metrics(y, p, class_names)
    roc_png = plot_roc(y, p, class_names, out / "roc.png")
    cm_png = plot_confusion(m, out / "confusion.png")
    parts = [f"# {title}", ""]
    if what:
        parts += [what, ""]
    parts += ["## Metrics", "", metrics_markdown(m), ""]
    if fold_metrics:
        parts += [f"## {folds_heading}", "", folds_markdown(fold_metrics), ""]
    parts += ["## Plots", "", "![ROC curve](roc.png)", "", "![confusion matrix](confusion.png)", ""]
    for head, body in (sections or {}).items():
        parts += [f"## {head}", "", body, ""]
    report = out / "report.md"
    report.write_text("\n".join(parts), encoding="utf-8")
    js = out / "metrics.json"

    def clean(o):  # JSON has no nan
        if isinstance(o, float) and math.isnan(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    js.write_text(json.dumps(clean({"overall": m.to_dict(), "folds": [f.to_dict() for f in fold_metrics]}), indent=1))
    return EvalResult(m, tuple(fold_metrics), p, y, report, roc_png, cm_png, js)


def _data_name(dataset) -> str:
    names = sorted(set(map(str, dataset.sources)))
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def predict_onnx(model_path: str | Path, dataset, *, batch_size: int = 256,
                 data_name: str | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class probabilities of every sample of ``dataset`` through the ONNX classifier, in the
    model's class order, and those class names. ``data_name`` (e.g. the paths the data came from)
    names the data in errors; by default its sources."""
    from inference.classifier import Classifier

    # data from elsewhere (the MIML authors' CSV) need not come from our tracker: check the graph only
    with Classifier(model_path, provider="cpu", warmup=False, check_tracker_features=False) as clf:
        missing = [n for n in clf.spec.feature_names if n not in dataset.feature_names]
        if missing:
            raise ModelError(f"{model_path}: the model needs features {missing} that the data "
                             f"({data_name or _data_name(dataset)}) do not have (they have "
                             f"{list(dataset.feature_names)})")
        if clf.spec.uses_features:
            # as replay and reanalyze refuse it: a model trained on the authors' 0-1 scaled values
            # called tracked cells (ms, mm/s) all one class, and the accuracy read 0 or 1
            from inference.training.data import feature_unit

            other = [f"{f.name} in {f.unit!r} (the data: {feature_unit(dataset, f.name)!r})" for f in clf.spec.features
                     if f.unit and f.unit != feature_unit(dataset, f.name)]
            if other:
                raise ModelError(f"{model_path}: the model was trained on features in other units than the data "
                                 f"({data_name or _data_name(dataset)}) hold: {'; '.join(other)}")
        im = clf.spec.image
        if im.physical and dataset.crop_pixel_size_um is None:
            # said by the preprocessor, without the model, the data or what to do about it
            raise ModelError(f"{model_path}: the model sees a {im.crop_size_um:g} µm field (trained at "
                             f"{im.pixel_size_um:g} µm/pixel), but the data ({data_name or _data_name(dataset)}) do "
                             f"not say their crops' pixel size: give --pixel-size (or a crop_pixel_size_um column)")
        ds = dataset.select_features(clf.spec.feature_names)
        pre = clf.preprocess
        out = []
        for s in range(0, len(ds), batch_size):
            sl = slice(s, s + batch_size)
            image, feats = pre.arrays(ds.first[sl], ds.last[sl], ds.features[sl], ds.crop_pixel_size_um)
            out.append(clf.run_arrays(image, feats))
        probs = np.concatenate(out) if out else np.zeros((0, len(clf.classes)), np.float32)
        return probs, clf.classes


def evaluate(
    model_path: str | Path,
    dataset,
    out_dir: str | Path,
    *,
    folds: Sequence = (),
    title: str | None = None,
    data_name: str | None = None,
    folds_heading: str = "Cross-validation (per fold)",
) -> EvalResult:
    """Evaluate the ONNX model ``model_path`` on ``dataset`` and write the report into ``out_dir``.

    The data set's class names must all be known to the model (matched by name, so a different
    order is fine). ``folds`` — :class:`Metrics` or fold results with a ``metrics`` attribute (e.g.
    ``TrainResult.folds``) — add a per-fold cross-validation table. ``data_name`` names the data
    in errors (default: its sources).
    """
    fold_metrics = [f if isinstance(f, Metrics) else f.metrics for f in folds]
    probs, model_classes = predict_onnx(model_path, dataset, data_name=data_name)
    unknown = [c for c in dataset.class_names if c not in model_classes]
    if unknown:
        raise ModelError(f"{model_path}: data classes {unknown} are not among the model's {list(model_classes)}")
    remap = np.array([model_classes.index(c) for c in dataset.class_names], np.int64)
    y = remap[dataset.labels]
    what = (
        f"Model `{Path(model_path).name}` run through ONNX Runtime (inference.classifier) on "
        f"{len(dataset)} samples from {', '.join(sorted(set(map(str, dataset.sources))))}."
    )
    sections = {}
    if dataset.report is not None:
        sections["Data"] = dataset.report.to_markdown()
    return write_report(
        out_dir, y, probs, model_classes, title=title or f"Evaluation of {Path(model_path).name}", what=what,
        fold_metrics=fold_metrics, sections=sections, folds_heading=folds_heading,
    )
