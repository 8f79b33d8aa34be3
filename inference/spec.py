"""The MIML model contract: what a model expects, carried inside the ONNX file as JSON.

An ONNX model for mimlsort has inputs ``image`` float32[N, C, H, W] and ``features`` float32[N, F]
and the output ``probabilities`` float32[N, K], with a dynamic batch axis N. Its metadata_props
entry ``mimlsort_spec`` holds a :class:`ModelSpec` as JSON: class names; features in input order
with their normalisation and clipping; image size, what each channel holds, the field of view in µm
and the pixel size the model was trained at; pixel normalisation; architecture; provenance.
Preprocessing (:mod:`inference.preprocess`) is built from the spec alone, so feature order or
scaling can never silently differ between training and sorting.

A model without an embedded spec (e.g. exported from the MIML authors' own code) is used with the
spec in a JSON file beside it: ``model.onnx`` + ``model.spec.json``.

:func:`check_graph` compares a spec with the graph's inputs/outputs, :func:`check_features` with the
features the tracker produces; every mismatch is a :class:`~mimlsort.errors.ModelError` naming the
model file and what differs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mimlsort.errors import ConfigError, ModelError
from mimlsort.settings import from_mapping, require

__all__ = [
    "SPEC_KEY",
    "SPEC_FORMAT",
    "INPUT_IMAGE",
    "INPUT_FEATURES",
    "OUTPUT",
    "CHANNELS",
    "FeatureSpec",
    "ImageSpec",
    "PixelNorm",
    "Provenance",
    "ModelSpec",
    "sidecar_path",
    "read_spec",
    "check_graph",
    "check_features",
]

#: the metadata_props key that holds the JSON spec
SPEC_KEY = "mimlsort_spec"
#: version of the JSON layout; a reader refuses newer formats rather than misreading them
SPEC_FORMAT = 1
INPUT_IMAGE = "image"
INPUT_FEATURES = "features"
OUTPUT = "probabilities"
#: what an image channel can hold: the crop at constriction entry or at exit (tracking.events.CellEvent)
CHANNELS = ("first", "last")


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


#: architectures whose feature input is ignored (inference/training/models.py: ArchInfo.uses_features)
IMAGE_ONLY_ARCHS = frozenset({"image-only"})

@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One model input feature: ``name`` from :mod:`tracking.features` and how to scale it.

    ``norm="zscore"``: (x − mean) / std; ``"minmax"``: (x − min) / (max − min); ``"none"``: x as is.
    Then, if ``clip`` is set, the scaled value is clipped to [clip[0], clip[1]] so that one absurd
    measurement cannot dominate the fused layers. A missing (NaN) measurement becomes ``fill`` (in
    scaled units: 0 is the training mean for zscore).
    """

    name: str
    norm: Literal["zscore", "minmax", "none"] = "zscore"
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    clip: tuple[float, float] | None = (-5.0, 5.0)
    fill: float = 0.0
    unit: str = ""  # as the training data delivered it (informative; the tracker's units are in tracking.features)

    def __post_init__(self):
        require(bool(self.name), "name", "must not be empty")
        if self.norm == "zscore":
            require(_finite(self.mean), "mean", f"zscore normalisation needs a finite mean, got {self.mean}")
            require(_finite(self.std) and self.std > 0, "std", f"must be > 0 for zscore normalisation, got {self.std}")
        elif self.norm == "minmax":
            require(_finite(self.min) and _finite(self.max), "min", f"minmax normalisation needs finite min and max, got {self.min}, {self.max}")
            require(self.max > self.min, "max", f"must be > min ({self.min}), got {self.max}")
        if self.clip is not None:
            lo, hi = self.clip
            require(lo < hi, "clip", f"must be [low, high] with low < high, got {list(self.clip)}")
        require(math.isfinite(self.fill), "fill", f"must be finite, got {self.fill}")

    @property
    def offset(self) -> float:
        """Scaled value = (x − offset) * gain (before clipping)."""
        return {"zscore": self.mean, "minmax": self.min}.get(self.norm) or 0.0

    @property
    def gain(self) -> float:
        if self.norm == "zscore":
            return 1.0 / self.std
        if self.norm == "minmax":
            return 1.0 / (self.max - self.min)
        return 1.0

    @staticmethod
    def fit(name: str, values, norm: str = "zscore", clip: tuple[float, float] | None = (-5.0, 5.0), unit: str = "") -> "FeatureSpec":
        """The normalisation of ``values`` (the training part only: fitting on test data leaks)."""
        import numpy as np

        v = np.asarray(values, np.float64)
        v = v[np.isfinite(v)]
        if norm == "zscore":
            mean = float(v.mean()) if len(v) else 0.0
            std = float(v.std()) if len(v) else 0.0
            # a constant feature carries no information; scale 1 keeps it at 0 instead of dividing by 0
            return FeatureSpec(name, "zscore", mean=mean, std=std if std > 1e-12 else 1.0, clip=clip, unit=unit)
        if norm == "minmax":
            lo = float(v.min()) if len(v) else 0.0
            hi = float(v.max()) if len(v) else 1.0
            clip = (-0.5, 1.5) if clip == (-5.0, 5.0) else clip
            return FeatureSpec(name, "minmax", min=lo, max=hi if hi > lo else lo + 1.0, clip=clip, fill=0.5, unit=unit)
        return FeatureSpec(name, "none", clip=clip, unit=unit)


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """The image input: ``channels`` (one of :data:`CHANNELS` each) of ``height`` × ``width`` pixels.

    ``crop_size_um`` is the side of the square field of view the model sees and ``pixel_size_um``
    the µm per pixel of the crops it was trained on. At run time the central ``crop_size_um`` of a
    tracker crop is cut (or padded) at the event's pixel size and resampled to height × width, so a
    microscope with another pixel size feeds the model the same physical scale. When either is
    unknown (None: e.g. the MIML authors' crops), whole crops are resampled as they come.
    """

    height: int
    width: int
    channels: tuple[str, ...] = ("first", "last")
    crop_size_um: float | None = None
    pixel_size_um: float | None = None

    def __post_init__(self):
        require(8 <= self.height <= 1024, "height", f"must be in [8, 1024] pixels, got {self.height}")
        require(8 <= self.width <= 1024, "width", f"must be in [8, 1024] pixels, got {self.width}")
        require(len(self.channels) >= 1, "channels", "must name at least one channel")
        for i, c in enumerate(self.channels):
            require(c in CHANNELS, f"channels[{i}]", f"must be one of {', '.join(CHANNELS)}, got {c!r}")
        require(self.crop_size_um is None or (_finite(self.crop_size_um) and self.crop_size_um > 0),
                "crop_size_um", f"must be > 0 µm, got {self.crop_size_um}")
        require(self.pixel_size_um is None or (_finite(self.pixel_size_um) and self.pixel_size_um > 0),
                "pixel_size_um", f"must be > 0 µm, got {self.pixel_size_um}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.channels), self.height, self.width

    @property
    def physical(self) -> bool:
        """Whether crops are rescaled to a physical field of view (both sizes known)."""
        return self.crop_size_um is not None and self.pixel_size_um is not None


@dataclass(frozen=True, slots=True)
class PixelNorm:
    """Grey values → model input. ``fixed``: (p − mean) / std with constants fitted on the training
    crops; ``per_image``: each channel standardised by its own mean and std (insensitive to
    illumination, blind to absolute brightness)."""

    mode: Literal["fixed", "per_image"] = "fixed"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        require(math.isfinite(self.mean), "mean", f"must be finite, got {self.mean}")
        require(math.isfinite(self.std) and self.std > 0, "std", f"must be > 0, got {self.std}")


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a model came from: enough to reproduce it and to judge whether it fits the data."""

    created: str = ""  # ISO 8601 UTC
    software: str = ""  # e.g. "mimlsort 0.1.0, torch 2.13.0"
    command: str = ""  # the command line that trained it
    data: tuple[str, ...] = ()  # data sources (files, simulator settings)
    seed: int | None = None
    parent: str | None = None  # the model it was fine-tuned from
    training: Mapping[str, Any] = field(default_factory=dict)  # hyperparameters
    metrics: Mapping[str, Any] = field(default_factory=dict)  # held-out / cross-validated figures
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything the application needs to feed a model and read its output."""

    class_names: tuple[str, ...]
    features: tuple[FeatureSpec, ...]
    image: ImageSpec
    arch: str
    pixel_norm: PixelNorm = field(default_factory=PixelNorm)
    provenance: Provenance = field(default_factory=Provenance)
    format: int = SPEC_FORMAT

    def __post_init__(self):
        require(self.format <= SPEC_FORMAT, "format",
                f"spec format {self.format} is newer than this mimlsort reads ({SPEC_FORMAT}): update mimlsort")
        require(len(self.class_names) >= 2, "class_names", f"need at least two classes, got {list(self.class_names)}")
        require(len(set(self.class_names)) == len(self.class_names), "class_names", f"must be unique, got {list(self.class_names)}")
        require(all(bool(c) for c in self.class_names), "class_names", "must not be empty strings")
        require(len(self.features) >= 1, "features", "need at least one feature")
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, "features", f"feature names must be unique, {dup} repeat")
        require(bool(self.arch), "arch", "must name the architecture")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def uses_features(self) -> bool:
        """False for architectures that take the feature input but ignore it (the image-only
        baseline): such a model can classify cells whose features are not measured."""
        return self.arch not in IMAGE_ONLY_ARCHS

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    # -- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        # not settings.to_mapping: it drops None, and None is meaningful here (clip=None: no clipping)
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "spec") -> "ModelSpec":
        """Build and validate; errors are ModelError naming ``source`` and the key path."""
        try:
            return from_mapping(cls, data)
        except ConfigError as e:
            raise ModelError(f"{source}: model spec {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> "ModelSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError(f"{source}: model spec is not valid JSON: {e}") from None
        return cls.from_dict(data, source)

    def save(self, path: str | Path) -> Path:
        """Write the spec as a JSON file (e.g. the ``.spec.json`` beside a spec-less model)."""
        path = Path(path)
        path.write_text(self.to_json(indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(f"{path}: cannot read the model spec: {e.strerror or e}") from None
        return cls.from_json(text, str(path))

    def with_provenance(self, **changes) -> "ModelSpec":
        return replace(self, provenance=replace(self.provenance, **changes))


def sidecar_path(model_path: str | Path) -> Path:
    """``model.onnx`` → ``model.spec.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + ".spec.json")


def read_spec(model_path: str | Path, proto_metadata: Mapping[str, str] | None = None) -> ModelSpec:
    """The spec of ``model_path``: embedded in its metadata, else from ``<model>.spec.json``.

    ``proto_metadata`` is the model's metadata map when the caller already has it (an ONNX Runtime
    session's ``get_modelmeta().custom_metadata_map``); otherwise the file is read with ``onnx``.
    A spec both embedded and beside the model must agree: which one to trust is the user's call.
    """
    path = Path(model_path)
    if proto_metadata is None:
        proto_metadata = _onnx_metadata(path)
    side = sidecar_path(path)
    embedded = proto_metadata.get(SPEC_KEY)
    if embedded is not None:
        spec = ModelSpec.from_json(embedded, f"{path} (embedded {SPEC_KEY})")
        if side.is_file():
            other = ModelSpec.load(side)
            if other != spec:
                raise ModelError(
                    f"{path}: the embedded spec and {side.name} beside it differ ({_first_difference(spec, other)}); "
                    f"remove {side.name} or re-export the model with the spec you mean")
        return spec
    if side.is_file():
        return ModelSpec.load(side)
    raise ModelError(
        f"{path}: the model carries no mimlsort spec (metadata key {SPEC_KEY!r}) and there is no "
        f"{side.name} beside it; write one (see inference.spec.ModelSpec) to use a model exported elsewhere")


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    try:
        # the graph is not needed here; loading external data of a big model would only cost time
        proto = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file") from None
    except Exception as e:  # noqa: BLE001 - onnx raises protobuf's DecodeError and others
        raise ModelError(f"{path}: not an ONNX model ({e})") from None
    return {p.key: p.value for p in proto.metadata_props}


def _first_difference(a: ModelSpec, b: ModelSpec) -> str:
    da, db = a.to_dict(), b.to_dict()

    def walk(x, y, key):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in list(x) + [k for k in y if k not in x]:
                if x.get(k) != y.get(k):
                    return walk(x.get(k), y.get(k), f"{key}.{k}" if key else k)
        if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                if u != v:
                    return walk(u, v, f"{key}[{i}]")
        return f"{key}: {x!r} vs {y!r}"

    return walk(da, db, "")


# ---------------------------------------------------------------------------------------------
# checks against the graph and the tracker


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """Name, element type (ONNX Runtime's ``tensor(float)`` spelling) and shape (ints or symbols)."""

    name: str
    type: str
    shape: tuple

    @staticmethod
    def of(node) -> "TensorInfo":  # onnxruntime.NodeArg
        return TensorInfo(node.name, node.type, tuple(node.shape))


def _dim(d) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def check_graph(spec: ModelSpec, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], source: str) -> int | None:
    """Compare the spec with the graph; return the graph's fixed batch size (None: dynamic).

    Raises ModelError listing every difference.
    """
    problems = []
    ins = {t.name: t for t in inputs}
    outs = {t.name: t for t in outputs}
    want_in = [INPUT_IMAGE, INPUT_FEATURES]
    if sorted(ins) != sorted(want_in):
        problems.append(f"graph inputs are {list(ins)}, the contract needs {want_in}")
    if OUTPUT not in outs:
        problems.append(f"graph outputs are {list(outs)}, the contract needs {OUTPUT!r}")
    c, h, w = spec.image.shape
    expect = {INPUT_IMAGE: (ins, (None, c, h, w), "[N, C, H, W]"),
              INPUT_FEATURES: (ins, (None, len(spec.features)), "[N, F]"),
              OUTPUT: (outs, (None, spec.n_classes), "[N, K]")}
    what = {INPUT_IMAGE: {1: f"channels {list(spec.image.channels)}", 2: "image height", 3: "image width"},
            INPUT_FEATURES: {1: f"features {list(spec.feature_names)}"},
            OUTPUT: {1: f"classes {list(spec.class_names)}"}}
    batches = set()
    for name, (table, want, layout) in expect.items():
        t = table.get(name)
        if t is None:
            continue
        if t.type != "tensor(float)":
            problems.append(f"{name!r} is {t.type}, the contract needs float32 (tensor(float))")
        if len(t.shape) != len(want):
            problems.append(f"{name!r} has shape {list(t.shape)}, the contract needs {layout}")
            continue
        batches.add(_dim(t.shape[0]))
        for axis in range(1, len(want)):
            got = _dim(t.shape[axis])
            if got is not None and got != want[axis]:
                problems.append(f"{name!r} axis {axis} is {got} in the graph but the spec's {what[name][axis]} "
                                f"make {want[axis]}")
    fixed = {b for b in batches if b is not None}
    if len(fixed) > 1:
        problems.append(f"the graph's batch axes disagree: {sorted(fixed)}")
    if problems:
        raise ModelError(f"{source}: the model does not match its spec: " + "; ".join(problems))
    return fixed.pop() if fixed else None


def check_features(spec: ModelSpec, produced: Sequence[str] | Mapping | None = None, source: str = "model") -> None:
    """Every feature the model needs must be one the tracker produces (tracking.features.FEATURES)."""
    if produced is None:
        from tracking.features import FEATURES as produced
    missing = [n for n in spec.feature_names if n not in produced]
    if missing:
        raise ModelError(
            f"{source}: the model needs features {missing} that the tracker does not produce "
            f"(it produces: {', '.join(produced)})")
    if not spec.uses_features:  # the values are fed but ignored: their units do not matter
        return
    # a model trained on the MIML authors' CSVs (or our --miml export) saw features scaled to 0-1
    # per recording batch: given the tracker's ms and mm/s it called every cell one class
    units = {n: getattr(d, "unit", None) for n, d in produced.items()} if isinstance(produced, Mapping) else {}
    other = [f"{f.name} in {f.unit!r} (the tracker measures {units[f.name]!r})" for f in spec.features
             if f.unit and units.get(f.name) is not None and f.unit != units[f.name]]
    if other:
        raise ModelError(
            f"{source}: the model was trained on features in other units than the tracker measures: "
            f"{'; '.join(other)}. Train it on tracked cells (mimlsort's or RT-DC event files) to classify them")
