"""Training loop: k-fold cross-validation, a final fit, early stopping, augmentation, transfer learning.

The model is fed exactly what the ONNX model gets at run time: for every split, a
:class:`inference.spec.ModelSpec` is built with feature normalisation fitted on that split's training
part only, and the samples go through :class:`inference.preprocess.Preprocessor` built from that
spec. Augmentation then works on those preprocessed tensors (flips and rotations are geometric;
brightness/contrast changes are affine in pixel value, and an affine pixel normalisation keeps them
affine), so no second preprocessing path exists.

Cross-validation (``folds`` ≥ 2) trains one model per grouped, stratified fold and predicts its
held-out cells; the per-fold metrics and the pooled out-of-fold predictions are the honest estimate
of performance. The returned model is then fitted on all data (``final_fit``), holding back
``val_fraction`` of the cells for early stopping.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimlsort.errors import ConfigError, DataFormatError, ModelError

from . import models as _models  # raises BackendUnavailable without torch
from .data import Dataset, grouped_split, kfold_splits
from .evaluate import EvalResult, Metrics, compute_metrics, write_report
from .models import MimlNet, arch_info, build_model

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "FoldResult", "train_model", "load_checkpoint", "save_checkpoint", "resolve_device"]

CHECKPOINT_FORMAT = 1


@dataclass
class FoldResult:
    fold: int
    train_idx: np.ndarray = field(repr=False)
    test_idx: np.ndarray = field(repr=False)
    metrics: Metrics
    probabilities: np.ndarray = field(repr=False)
    history: list[dict]
    spec: object = field(repr=False)
    best_epoch: int


@dataclass
class TrainResult:
    model: MimlNet = field(repr=False)
    spec: object  # inference.spec.ModelSpec of the returned model (its FeatureNorm fitted on its training part)
    arch: str
    history: list[dict]  # per epoch of the final fit: train_loss, train_acc, val_loss, val_acc, seconds
    folds: list[FoldResult]
    oof_probabilities: np.ndarray | None = field(default=None, repr=False)  # pooled out-of-fold, per sample
    best_epoch: int = 0
    seconds_per_epoch: float = math.nan
    device: str = "cpu"
    onnx_path: Path | None = None
    checkpoint_path: Path | None = None
    report: EvalResult | None = None

    @property
    def fold_metrics(self) -> list[Metrics]:
        return [f.metrics for f in self.folds]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelError(f"device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r}: CUDA is not available (torch {torch.__version__})")
    return dev


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path: str | Path, model: MimlNet, spec) -> Path:
    """A torch checkpoint (.pt) with architecture, shape arguments, weights and the JSON spec."""
    path = Path(path)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "arch": model.arch,
            "in_channels": model.in_channels,
            "n_features": model.n_features,
            "n_classes": model.n_classes,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "spec": spec.to_json(),
        },
        path,
    )
    return path


def load_checkpoint(path: str | Path) -> tuple[MimlNet, object]:
    """(model, spec) from a checkpoint; an ``.onnx`` path loads the ``.pt`` saved beside it."""
    from inference.spec import ModelSpec

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        pt = path.with_suffix(".pt")
        if not pt.is_file():
            raise ModelError(f"{path}: no torch checkpoint {pt.name} beside it (mimlsort train writes one beside "
                             f"the model it exports; fine-tuning needs it)")
        path = pt
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        # torch's own words for a pickle of other objects run to a dozen lines advising to load it
        # with weights_only=False, i.e. to run what it holds
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if why.startswith("Weights only load failed"):
            why = "torch cannot read it as a file of weights"
        raise ModelError(f"{path}: not a mimlsort checkpoint ({why})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not a mimlsort checkpoint (format {ck.get('format') if isinstance(ck, dict) else '?'})")
    # the mini branch's widths are read off its weights: checkpoints of the first release's wider
    # (32, 64, 64) miml-mini keep loading
    model = build_model(ck["arch"], in_channels=ck["in_channels"], n_features=ck["n_features"], n_classes=ck["n_classes"],
                        widths=_models.MiniBranch.widths_in(ck["state_dict"]))
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ModelSpec.from_json(ck["spec"], str(path))


# ---------------------------------------------------------------------------------------------
# the loop


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips, rotations up to ±10°, brightness ±0.1 and contrast ×[0.9, 1.1] (per sample)."""
    n = x.shape[0]
    dev = x.device

    def u(lo, hi, shape=(n,)):
        return torch.rand(shape, generator=gen, device="cpu").to(dev) * (hi - lo) + lo

    flip_h = u(0, 1) < 0.5
    flip_v = u(0, 1) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    ang = u(-10, 10) * (math.pi / 180)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1), torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = x.mean(dim=(2, 3), keepdim=True)
    contrast = u(0.9, 1.1)[:, None, None, None]
    bright = u(-0.1, 0.1)[:, None, None, None]
    return (x - mean) * contrast + mean + bright


def _set_train_mode(model: MimlNet, frozen_image: bool) -> None:
    model.train()
    if frozen_image and model.image_branch is not None:
        # frozen means frozen: BatchNorm running statistics must not drift either
        model.image_branch.eval()


@torch.no_grad()
def predict_torch(model: MimlNet, images: np.ndarray, feats: np.ndarray, device, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(images), batch_size):
        im = torch.from_numpy(images[s : s + batch_size]).to(device)
        fe = torch.from_numpy(feats[s : s + batch_size]).to(device)
        out.append(model(im, fe).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_classes), np.float32)


def _fit(
    model: MimlNet,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int,
    augment: bool,
    freeze_image_branch: bool,
    class_weight: str | None,
    device: torch.device,
    seed: int,
    progress: bool,
    desc: str,
) -> tuple[list[dict], int]:
    """Train ``model`` in place; keep the weights of the epoch with the lowest validation loss."""
    xi, xf, y = train
    n = len(y)
    if n < 2:
        raise DataFormatError(f"{desc}: training needs at least 2 samples, got {n}")
    k = model.n_classes
    counts = np.bincount(y, minlength=k)
    weight = None
    if class_weight == "balanced":
        w = np.where(counts > 0, n / (k * np.maximum(counts, 1)), 0.0)
        weight = torch.tensor(w, dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    val_loss_fn = nn.CrossEntropyLoss()  # unweighted: comparable across epochs and folds
    if freeze_image_branch and model.image_branch is not None:
        for p in model.image_branch.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    gen = torch.Generator().manual_seed(seed)
    use_aug = augment and model.image_branch is not None

    ti, tf, ty = torch.from_numpy(xi).to(device), torch.from_numpy(xf).to(device), torch.from_numpy(y).to(device)
    if val is not None and len(val[2]):
        vi, vf, vy = (torch.from_numpy(a).to(device) for a in val)
    else:
        vi = None

    history: list[dict] = []
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=False)
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            _set_train_mode(model, freeze_image_branch)
            perm = torch.randperm(n, generator=gen).to(device)
            # BatchNorm cannot train on a batch of one: fold a lone last sample into the previous batch
            starts = list(range(0, n, batch_size))
            if len(starts) > 1 and n - starts[-1] == 1:
                starts.pop()
            tot_loss, tot_ok = 0.0, 0
            for j, s in enumerate(starts):
                e = starts[j + 1] if j + 1 < len(starts) else n
                idx = perm[s:e]
                im = ti[idx]
                if use_aug:
                    im = _augment(im, gen)
                logits = model.logits(im, tf[idx])
                loss = loss_fn(logits, ty[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot_loss += float(loss.detach()) * len(idx)
                tot_ok += int((logits.argmax(1) == ty[idx]).sum())
            sched.step()
            rec = {"epoch": epoch, "train_loss": tot_loss / n, "train_acc": tot_ok / n}
            if vi is not None:
                model.eval()
                with torch.no_grad():
                    vl = model.logits(vi, vf)
                    rec["val_loss"] = float(val_loss_fn(vl, vy))
                    rec["val_acc"] = float((vl.argmax(1) == vy).float().mean())
            rec["seconds"] = time.perf_counter() - t0
            history.append(rec)
            bad = {k2: v for k2, v in rec.items() if k2.endswith("_loss") and not math.isfinite(v)}
            if bad:
                # a NaN loss never beats the best so far: the model of epoch 0 (random weights)
                # was exported, its report said "best epoch 0", and nothing said the run diverged
                raise ModelError(f"{desc}: the training diverged at epoch {epoch} ("
                                 + ", ".join(f"{k2.replace('_', ' ')} {v}" for k2, v in bad.items())
                                 + f"): lower the learning rate (--lr, {lr:g} now)")
            score = rec.get("val_loss", rec["train_loss"])
            if score < best[0] - 1e-6:
                best = (score, epoch, copy.deepcopy(model.state_dict()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k2: f"{v:.3f}" for k2, v in rec.items() if k2 in ("train_loss", "val_loss", "val_acc")})
            if vi is not None and patience > 0 and epoch - best[1] >= patience:
                log.info("%s: early stop at epoch %d (best %d)", desc, epoch, best[1])
                break
    finally:
        if bar is not None:
            bar.close()
    model.load_state_dict(best[2])
    model.eval()
    return history, best[1]


def check_training_arguments(*, epochs: int, batch_size: int, lr: float, folds: int | None, val_fraction: float) -> None:
    """ConfigError naming the argument for values the training loop cannot use."""
    if epochs < 1:
        raise ConfigError("epochs", f"must be at least 1, got {epochs}")
    if batch_size < 2:  # BatchNorm cannot train on a batch of one sample
        raise ConfigError("batch_size", f"must be at least 2, got {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError("lr", f"must be a finite number > 0, got {lr}")
    if folds is not None and folds < 0:
        raise ConfigError("folds", f"must be 0 or 1 (no cross-validation) or at least 2, got {folds}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError("val_fraction", f"must be in [0, 1), got {val_fraction}")


def _inner_split(ds: Dataset, idx: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if val_fraction <= 0:
        return idx, np.zeros(0, np.int64)
    tr, va = grouped_split(ds.labels[idx], ds.groups[idx], val_fraction, seed)
    return idx[tr], idx[va]


def _say_classes_not_validated(ds: Dataset, fit_idx: np.ndarray, val_idx: np.ndarray, desc: str) -> None:
    """Warn where early stopping cannot see a class the fit trains on: a class of a few cells (or
    groups) all taken for the fit. That fit's epoch is then chosen on the other classes alone,
    unlike the others' (the command line refuses it for whole recordings; here it is said)."""
    missing = sorted(set(ds.labels[fit_idx].tolist()) - set(ds.labels[val_idx].tolist()))
    if missing:
        names = ", ".join(ds.class_names[k] for k in missing)
        log.warning("%s: the early-stopping set holds no cell of %s (too few cells or groups of it): its epoch "
                    "is chosen without that class", desc, names)


def train_model(
    dataset: Dataset,
    arch: str | None = "miml-mini",
    *,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    folds: int = 5,
    val_fraction: float = 0.15,
    patience: int = 8,
    augment: bool = True,
    device: str = "auto",
    init_from: str | Path | None = None,
    freeze_image_branch: bool = False,
    refit_features: bool | None = None,
    channels: Sequence[str] | None = None,
    image_size: int | None = None,
    feature_names: Sequence[str] | None = None,
    class_weight: str | None = "balanced",
    final_fit: bool = True,
    out_dir: str | Path | None = None,
    model_name: str = "model",
    progress: bool = True,
    command: str | None = None,
) -> TrainResult:
    """Train a MIML model on ``dataset``; see the module docstring for the procedure.

    ``arch``: a name from :data:`inference.training.models.ARCHITECTURES` (None with ``init_from``:
    the parent's). ``channels``: what each image channel holds, ``("first", "last")`` (default) or
    ``("first",)`` etc. ``init_from``: a checkpoint (.pt) or an exported model (.onnx with its .pt
    beside it) to fine-tune; image size, channels and feature names then come from it, classes are
    matched by name (a new last layer when they differ), and its feature normalisation is kept
    unless ``refit_features``. ``freeze_image_branch`` trains only the feature MLP and the head.
    With ``out_dir``, the final model is exported (``<model_name>.onnx`` + ``.pt``) and the report
    (report.md, roc.png, confusion.png, metrics.json) is written there. ``command`` (the command line
    that trained the model) is recorded in the spec's provenance.
    """
    from .data import preprocess_dataset, spec_for_training

    check_training_arguments(epochs=epochs, batch_size=batch_size, lr=lr, folds=folds, val_fraction=val_fraction)
    if len(set(dataset.labels.tolist())) < 2:
        raise DataFormatError(f"training needs at least two classes; the data hold only {dataset.class_counts()}")
    dev = resolve_device(device)
    torch.manual_seed(seed)

    parent_model, parent_spec = (None, None)
    if init_from is not None:
        parent_model, parent_spec = load_checkpoint(init_from)
        if arch is not None and arch != parent_model.arch:
            raise ModelError(f"init_from {init_from}: is a {parent_model.arch!r} model, not {arch!r}")
        arch = parent_model.arch
        feature_names = parent_spec.feature_names
        if refit_features is None:
            refit_features = False
    if arch is None:
        raise ModelError("arch: give an architecture name (or init_from)")
    info = arch_info(arch)
    if feature_names is not None:
        dataset = dataset.select_features(feature_names)
    if refit_features is None:
        refit_features = True

    def make_model(spec) -> MimlNet:
        if parent_model is None:
            c = len(spec.image.channels)
            return build_model(arch, in_channels=c, n_features=len(dataset.feature_names), n_classes=len(dataset.class_names)).to(dev)
        m = copy.deepcopy(parent_model)
        parent_classes = parent_spec.class_names
        if parent_classes != tuple(dataset.class_names):
            m.replace_output(len(dataset.class_names))
            if set(parent_classes) == set(dataset.class_names):  # same classes, other order: permute the last layer
                perm = [parent_classes.index(c) for c in dataset.class_names]
                with torch.no_grad():
                    m.head.out.weight.copy_(parent_model.head.out.weight[perm])
                    m.head.out.bias.copy_(parent_model.head.out.bias[perm])
        return m.to(dev)

    def spec_for(fit_idx: np.ndarray):
        return spec_for_training(
            dataset, fit_idx, arch=arch, channels=channels, image_size=image_size or info.default_image_size,
            parent=parent_spec, refit_features=refit_features,
            provenance=provenance,
        )

    provenance = _provenance(
        dataset, seed, init_from, command,
        {"arch": arch, "epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
         "folds": folds, "val_fraction": val_fraction, "patience": patience, "augment": augment,
         "freeze_image_branch": freeze_image_branch, "class_weight": class_weight, "device": str(dev)})

    fit_kw = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience, augment=augment,
        freeze_image_branch=freeze_image_branch, class_weight=class_weight, device=dev, progress=progress,
    )

    def run(train_idx: np.ndarray, eval_idx: np.ndarray | None, fseed: int, desc: str):
        fit_idx, val_idx = _inner_split(dataset, train_idx, val_fraction, fseed)
        if val_fraction > 0:
            _say_classes_not_validated(dataset, fit_idx, val_idx, desc)
        spec = spec_for(fit_idx)
        model = make_model(spec)
        images, feats = preprocess_dataset(spec, dataset)
        y = dataset.labels.astype(np.int64)
        val = (images[val_idx], feats[val_idx], y[val_idx]) if len(val_idx) else None
        torch.manual_seed(fseed)
        hist, best_epoch = _fit(model, (images[fit_idx], feats[fit_idx], y[fit_idx]), val, seed=fseed, desc=desc, **fit_kw)
        probs = None
        if eval_idx is not None:
            probs = predict_torch(model, images[eval_idx], feats[eval_idx], dev)
        return model, spec, hist, best_epoch, probs, val_idx

    fold_results: list[FoldResult] = []
    oof = None
    if folds and folds >= 2:
        oof = np.full((len(dataset), len(dataset.class_names)), np.nan, np.float32)
        for i, (tr, te) in enumerate(kfold_splits(dataset.labels, dataset.groups, folds, seed)):
            _, spec, hist, best_epoch, probs, _ = run(tr, te, seed + 1 + i, f"fold {i + 1}/{folds}")
            oof[te] = probs
            m = compute_metrics(dataset.labels[te], probs, dataset.class_names)
            fold_results.append(FoldResult(i, tr, te, m, probs, hist, spec, best_epoch))
            log.info("fold %d/%d: accuracy %.3f, macro F1 %.3f, ROC-AUC %.3f", i + 1, folds, m.accuracy, m.macro_f1, m.macro_roc_auc)

    if final_fit or not fold_results:
        model, spec, hist, best_epoch, _, val_idx = run(np.arange(len(dataset)), None, seed, "final fit")
    else:  # no final fit: return the best fold's model
        best = max(fold_results, key=lambda f: (np.nan_to_num(f.metrics.macro_f1), f.metrics.accuracy))
        model, spec, hist, best_epoch, _, val_idx = run(best.train_idx, None, seed + 1 + best.fold, "best fold")
    spec = spec.with_provenance(metrics=_summary_metrics(dataset, fold_results, oof, model, spec, val_idx, dev))
    secs = [h["seconds"] for h in hist]
    result = TrainResult(
        model, spec, arch, hist, fold_results, oof, best_epoch, float(np.mean(secs)) if secs else math.nan, str(dev),
    )
    if out_dir is not None:
        _write_outputs(result, dataset, val_idx, Path(out_dir), model_name)
    return result


def _provenance(dataset: Dataset, seed: int, init_from, command: str | None, training: dict):
    import datetime

    import mimlsort
    from inference.spec import Provenance

    return Provenance(
        created=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        software=f"mimlsort {mimlsort.__version__}, torch {torch.__version__}",
        command=command or "",
        data=tuple(dict.fromkeys(map(str, dataset.sources))),
        seed=seed,
        parent=str(init_from) if init_from else None,
        training=training,
        notes=tuple(dataset.provenance) + (f"classes: {dataset.class_counts()}",),
    )


def _summary_metrics(dataset, folds, oof, model, spec, val_idx, dev) -> dict:
    """The figures that travel with the model: cross-validated when there were folds, else held-out validation."""
    from .data import preprocess_dataset

    out: dict = {"n_samples": len(dataset)}
    if folds:
        acc = np.array([f.metrics.accuracy for f in folds])
        m = compute_metrics(dataset.labels, oof, dataset.class_names)
        out.update({"cv_folds": len(folds), "cv_accuracy_mean": float(acc.mean()), "cv_accuracy_std": float(acc.std()),
                    "oof_accuracy": m.accuracy, "oof_macro_f1": m.macro_f1,
                    "oof_roc_auc": None if math.isnan(m.macro_roc_auc) else m.macro_roc_auc})
    elif len(val_idx):
        images, feats = preprocess_dataset(spec, dataset.subset(val_idx))
        m = compute_metrics(dataset.labels[val_idx], predict_torch(model, images, feats, dev), dataset.class_names)
        out.update({"val_n": len(val_idx), "val_accuracy": m.accuracy, "val_macro_f1": m.macro_f1})
    return out


def _write_outputs(result: TrainResult, dataset: Dataset, val_idx: np.ndarray, out: Path, name: str) -> None:
    from .export import export_onnx

    out.mkdir(parents=True, exist_ok=True)
    result.onnx_path = export_onnx(result.model, result.spec, out / f"{name}.onnx")
    result.checkpoint_path = result.onnx_path.with_suffix(".pt")
    hist_lines = ["| epoch | train loss | train acc | val loss | val acc | s |", "|---|---|---|---|---|---|"]
    for h in result.history:
        hist_lines.append(
            f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_acc']:.3f} | "
            f"{h.get('val_loss', float('nan')):.4f} | {h.get('val_acc', float('nan')):.3f} | {h['seconds']:.2f} |"
        )
    sections = {
        "Training": (
            f"- architecture: `{result.arch}` ({_models.count_parameters(result.model):,} parameters)\n"
            f"- device: {result.device}; mean time per epoch (final fit): {result.seconds_per_epoch:.3f} s\n"
            f"- best epoch of the final fit: {result.best_epoch}\n- exported: `{result.onnx_path.name}` "
            f"(+ `{result.checkpoint_path.name}` for fine-tuning)\n\n" + "\n".join(hist_lines)
        ),
    }
    if dataset.report is not None:
        sections["Data"] = dataset.report.to_markdown()
    if result.oof_probabilities is not None:
        what = (
            f"Pooled out-of-fold predictions of {len(result.folds)} grouped, stratified cross-validation "
            f"folds over {len(dataset)} cells (each cell predicted by the fold model that did not see it)."
        )
        y, p = dataset.labels, result.oof_probabilities
    else:
        what = f"Held-out validation cells of the final fit ({len(val_idx)} cells; also used for early stopping)."
        if not len(val_idx):
            return
        from .data import preprocess_dataset

        images, feats = preprocess_dataset(result.spec, dataset.subset(val_idx))
        y, p = dataset.labels[val_idx], predict_torch(result.model, images, feats, resolve_device(result.device))
    result.report = write_report(
        out, y, p, dataset.class_names, title=f"Training report: {name} ({result.arch})", what=what,
        fold_metrics=result.fold_metrics, sections=sections,
    )
