"""Qt-free state behind the GUI: config editing, the table of recent cells, gates, status rows.

Everything here is plain Python/numpy so it is tested without a display and the widgets stay thin:
a widget turns operator input into a call here and draws what comes back.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mimlsort.errors import ConfigError
from tracking.background import LIGHT_MAX, LIGHT_MIN
from tracking.features import FEATURES

# class colours (colour-blind safe, Okabe-Ito) in model class order; the last entry is for "?"
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
    (240, 228, 66), (0, 0, 0),
)
UNKNOWN_COLOUR = (200, 200, 200)
FIRED_COLOUR = (0, 200, 0)
NOT_FIRED_COLOUR = (220, 40, 40)


def class_colour(k: int) -> tuple[int, int, int]:
    return PALETTE[k % len(PALETTE)] if k >= 0 else UNKNOWN_COLOUR


# -- configuration editing ------------------------------------------------------------------------
_MISSING = object()


def config_get(cfg: Any, path: str, default: Any = None) -> Any:
    """The value at dotted ``path`` in a settings tree, or ``default`` where the tree has no such key.

    Tolerant on purpose: the GUI offers controls for every part of a run, and a configuration
    without (say) a ``trigger`` section simply leaves that control at its default.
    """
    obj = cfg
    for part in path.split("."):
        if isinstance(obj, Mapping):
            obj = obj.get(part, _MISSING)
        elif dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}:
            obj = getattr(obj, part)
        else:
            return default
        if obj is _MISSING:
            return default
    return default if obj is None else obj


def _coerce(obj: Any, name: str, value: Any) -> Any:
    tp = typing.get_type_hints(type(obj)).get(name)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _set(obj: Any, parts: Sequence[str], value: Any) -> Any:
    name = parts[0]
    if isinstance(obj, Mapping):  # a vendor table, validated by its backend when selected
        new_map = dict(obj)
        new_map[name] = value if len(parts) == 1 else _set(obj.get(name, {}), parts[1:], value)
        return new_map
    if len(parts) == 1:
        new = _coerce(obj, name, value)
    else:
        try:
            new = _set(getattr(obj, name), parts[1:], value)
        except ConfigError as e:
            raise e.under(name) from None
    return dataclasses.replace(obj, **{name: new})  # __post_init__ validates; its key is relative to obj


def config_with(cfg: Any, changes: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """``cfg`` with the dotted-path ``changes`` applied (validated), and the paths it has no key for.

    Raises :class:`ConfigError` naming the full key path when a value is out of range.
    """
    unsupported = []
    for path, value in changes.items():
        parts = path.split(".")
        parent = config_get(cfg, ".".join(parts[:-1]), _MISSING) if len(parts) > 1 else cfg
        if not isinstance(parent, Mapping) and (not dataclasses.is_dataclass(parent) or
                                                parts[-1] not in {f.name for f in dataclasses.fields(parent)}):
            unsupported.append(path)
            continue
        if config_get(cfg, path, _MISSING) == value:
            continue
        cfg = _set(cfg, parts, value)
    return cfg, unsupported


def _backend_settings_class(section: str) -> type | None:
    """The Settings class of the backend whose vendor table is ``section`` (None if unavailable)."""
    kind, _, backend = section.partition(".")
    try:
        if kind == "camera":
            from acquisition.camera import camera_class

            return camera_class(backend).Settings
        if kind == "trigger":
            from hardware.trigger import trigger_class

            return trigger_class(backend.replace("_", "-")).Settings
    except Exception:  # SDK missing or not a backend
        return None
    return None


def table_fields(cfg: Any, section: str) -> tuple[str, ...]:
    """Keys the table at ``section`` can hold, e.g. ``camera.synthetic`` or ``trigger.serial``.

    Vendor tables are plain dicts in the configuration; their keys come from the backend's own
    Settings class, which is imported only here (a missing SDK simply offers no keys).
    """
    obj = config_get(cfg, section, _MISSING)
    if dataclasses.is_dataclass(obj):
        return tuple(f.name for f in dataclasses.fields(obj))
    if not isinstance(obj, Mapping):
        return ()
    cls = _backend_settings_class(section)
    if cls is None or not dataclasses.is_dataclass(cls):
        return tuple(obj)
    return tuple(f.name for f in dataclasses.fields(cls))


def config_value(cfg: Any, path: str, default: Any = None) -> Any:
    """Like :func:`config_get`, but a key a vendor table leaves out reads as the backend's default."""
    v = config_get(cfg, path, _MISSING)
    if v is not _MISSING:
        return v
    section, _, key = path.rpartition(".")
    if isinstance(config_get(cfg, section, None), Mapping):
        cls = _backend_settings_class(section)
        try:
            return getattr(cls(), key, default) if cls is not None else default
        except Exception:  # a Settings class without defaults
            return default
    return default


def first_field(cfg: Any, section: str, candidates: Sequence[str]) -> str | None:
    """The dotted path of the first of ``candidates`` the table at ``section`` has (None: none)."""
    fields = table_fields(cfg, section)
    for c in candidates:
        if c in fields:
            return f"{section}.{c}"
    return None


def sensor_box(x: int, y: int, width: int, height: int, image_shape: tuple[int, int],
               turns: int) -> tuple[int, int, int, int]:
    """A box drawn on a frame turned ``turns`` quarter turns (``np.rot90``'s ``k``, see
    ``camera.flow_direction``) as the same box on the camera's sensor: (x, y, width, height). The
    camera's ROI is in sensor pixels; a box on a turned frame had its width and height swapped
    (quarter turns) or its offsets mirrored (half turns)."""
    h_img, w_img = image_shape
    k = turns % 4
    # the sensor frame's size, and where the turned frame's pixel (row i, column j) was on it
    sh, sw = (h_img, w_img) if k % 2 == 0 else (w_img, h_img)
    where = {0: lambda i, j: (i, j), 1: lambda i, j: (j, sw - 1 - i),
             2: lambda i, j: (sh - 1 - i, sw - 1 - j), 3: lambda i, j: (sh - 1 - j, i)}[k]
    corners = [where(i, j) for i in (y, y + height - 1) for j in (x, x + width - 1)]
    rows, cols = [r for r, _ in corners], [c for _, c in corners]
    return min(cols), min(rows), max(cols) - min(cols) + 1, max(rows) - min(rows) + 1


# -- recent cells ---------------------------------------------------------------------------------
class FeatureTable:
    """The last ``capacity`` cells as columns (one float array per feature) for plots.

    Filled on the UI thread from ``pipeline.recent()``; records are de-duplicated by event index, so
    polling an overlapping window never counts a cell twice.
    """

    def __init__(self, capacity: int = 5000, features: Iterable[str] = FEATURES):
        self.capacity = capacity
        self.features = tuple(features)
        self._col = {f: np.full(capacity, np.nan) for f in self.features}
        self._cls = np.full(capacity, -1, np.int32)
        self._fired = np.zeros(capacity, bool)
        self._n = 0  # cells ever added
        self.last_index = -1
        self.class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return min(self._n, self.capacity)

    @property
    def total(self) -> int:
        return self._n

    def clear(self, class_names: Sequence[str] = ()) -> None:
        for a in self._col.values():
            a.fill(np.nan)
        self._cls.fill(-1)
        self._fired.fill(False)
        self._n = 0
        self.last_index = -1
        self.class_names = tuple(class_names)

    def extend(self, records: Iterable[Any]) -> list[Any]:
        """Add the records not seen yet (by event index); returns those."""
        new = [r for r in records if r.event.index > self.last_index]
        for r in new:
            i = self._n % self.capacity
            feats = r.event.features
            for f, col in self._col.items():
                col[i] = feats.get(f, math.nan)
            self._cls[i] = record_class(r, self.class_names)
            self._fired[i] = bool(r.decision is not None and r.decision.fire)
            self._n += 1
            self.last_index = r.event.index
        return new

    def _order(self, a: np.ndarray) -> np.ndarray:
        if self._n <= self.capacity:
            return a[: self._n]
        i = self._n % self.capacity
        return np.concatenate([a[i:], a[:i]])

    def column(self, feature: str) -> np.ndarray:
        if feature not in self._col:
            raise KeyError(f"unknown feature {feature!r}")
        return self._order(self._col[feature])

    def classes(self) -> np.ndarray:
        """Class index per cell (-1: unknown), oldest first."""
        return self._order(self._cls)

    def fired(self) -> np.ndarray:
        return self._order(self._fired)


def record_class(record: Any, class_names: Sequence[str]) -> int:
    """Index of the record's predicted class in ``class_names`` (-1 when it has none)."""
    if record.decision is not None and record.decision.predicted in class_names:
        return list(class_names).index(record.decision.predicted)
    p = record.probabilities
    if p is not None and len(p) and len(p) == len(class_names):
        return int(np.argmax(p))
    return -1


def histogram(values: np.ndarray, classes: np.ndarray, n_classes: int, bins: int = 40
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Common bin edges over the finite values and one count array per class (and one for -1 last)."""
    finite = np.isfinite(values)
    v = values[finite]
    c = classes[finite]
    if v.size == 0:
        edges = np.linspace(0.0, 1.0, bins + 1)
    else:
        lo, hi = float(np.min(v)), float(np.max(v))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(v[c == k], edges)[0] for k in (*range(n_classes), -1)]
    return edges, counts


# -- gates ----------------------------------------------------------------------------------------
def rect_points(x0: float, y0: float, x1: float, y1: float) -> tuple[tuple[float, float], ...]:
    """A rectangle gate as a polygon (PolygonGate is the one gate type the policy needs)."""
    xa, xb = sorted((float(x0), float(x1)))
    ya, yb = sorted((float(y0), float(y1)))
    return ((xa, ya), (xb, ya), (xb, yb), (xa, yb))


def make_gate(x: str, y: str, points: Iterable[tuple[float, float]]):
    """A :class:`app.sorting.PolygonGate` from plot coordinates; ConfigError when degenerate."""
    from app.sorting import PolygonGate

    pts = tuple((float(px), float(py)) for px, py in points)
    if len(pts) >= 3:
        area = 0.5 * abs(sum(pts[i][0] * pts[i - 1][1] - pts[i - 1][0] * pts[i][1] for i in range(len(pts))))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        box = (max(xs) - min(xs)) * (max(ys) - min(ys))
        # relative: points on a line leave a rounding residue (~1e-17), not zero
        if not (box > 0 and area > 1e-9 * box):
            raise ConfigError("sorting.polygon_gates", f"the gate on {y} vs {x} encloses no area "
                                                       "(its points lie on a line, or its edges cross)")
    gate = PolygonGate(x=x, y=y, points=pts)
    return gate


def inside_gate(gate: Any, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Which points lie in ``gate`` (the policy's own test, so the plot and sorting agree)."""
    return gate.contains_many(xs, ys)


# -- status ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StatusRow:
    key: str
    label: str
    text: str
    alarm: bool = False  # shown in red
    tooltip: str = ""


_ABORT_REASONS = ("aborted by coincidence", "not isolated")


def _fmt(v: float, spec: str = ".0f", unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:{spec}}{unit}"


def _purity_row(st: Any) -> StatusRow:
    text = f"{_fmt(100 * st.purity_estimate, '.1f', ' %')} | {_fmt(100 * st.recovery_estimate, '.1f', ' %')}"
    swept = getattr(st, "swept", 0)
    if not swept:
        return StatusRow("purity", "Purity | recovery (est.)", text,
                         tooltip="of the fired cells, from the classifier's probabilities")
    # yield mode sweeps neighbours of fired cells into the outlet: what the outlet holds is the
    # figure the operator collects, so it is shown beside the fired cells'
    outlet = getattr(st, "sorted_purity_estimate", math.nan)
    return StatusRow("purity", "Purity | recovery (est.)", f"{text}; outlet {_fmt(100 * outlet, '.1f', ' %')}",
                     tooltip=f"fired cells: {text}; the outlet (fired cells and {swept} swept along within their "
                             f"coincidence window): purity {_fmt(100 * outlet, '.1f', ' %')}, recovery "
                             f"{_fmt(100 * getattr(st, 'sorted_recovery_estimate', math.nan), '.1f', ' %')}")


#: records waiting for the event file beyond which the operator is warned: a writer that keeps
#: up holds a few MB; a stalled disk grew the queue for minutes with nothing red on the window
BEHIND_MB = 128.0


def _file_row(st: Any) -> StatusRow:
    shed = getattr(st, "images_shed", 0)
    waiting = getattr(st, "storage_backlog_mb", 0.0)
    text = f"{st.file_bytes / 1e6:.1f} MB (queue {st.storage_queue})"
    if waiting >= BEHIND_MB:
        text += f", {waiting:.0f} MB waiting"
    if shed:
        text += f", {shed} without image"
    tip = ""
    if waiting >= BEHIND_MB or shed:
        tip = (f"the event file is behind the cells ({waiting:.0f} MB waiting): a slow or stalled disk? Past half of "
               "output.max_backlog_mb cells are recorded without their ROI image; at the limit the run stops")
    return StatusRow("file", "Event file", text, waiting >= BEHIND_MB or shed > 0, tip)


def reason_words(reason: str) -> str:
    """How a run's end reads to the operator: "canceled" read as if the data had been thrown
    away, where it is the operator's Stop (the files are complete)."""
    return "stopped" if reason == "canceled" else reason


def status_rows(st: Any) -> list[StatusRow]:
    """What the status panel shows for a :class:`app.pipeline.Status` snapshot, in order."""
    missed = sum(st.missed.values()) if st.missed else 0
    overrun = sum(st.overrun.values()) if getattr(st, "overrun", None) else 0
    aborted = sum(n for r, n in st.not_fired.items() if r in _ABORT_REASONS)
    state = st.state.value
    if st.finish_reason is not None and state in ("finished", "stopping"):
        state += f" ({reason_words(st.finish_reason.value)})"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st.class_counts.items())) or "–"
    return [
        StatusRow("state", "State", state, st.finish_reason is not None and st.finish_reason.value == "errored",
                  st.message),
        StatusRow("elapsed", "Elapsed", _fmt(st.elapsed_s, ".1f", " s")),
        StatusRow("fps", "Frames/s in | processed", f"{_fmt(st.fps_in)} | {_fmt(st.fps_processed)}"),
        StatusRow("frames", "Frames in | processed", f"{st.frames_in} | {st.frames_processed}"),
        StatusRow("missed", "Frames missed", str(missed + overrun), missed + overrun > 0,
                  ", ".join(f"{k}: {v}" for k, v in st.missed.items())),
        StatusRow("dropped", "Camera dropped | failed", f"{st.camera_dropped} | {st.failed_buffers}"
                  + (f" | lost and reopened {st.camera_reconnects}×" if st.camera_reconnects else ""),
                  st.camera_dropped + st.failed_buffers + st.camera_reconnects > 0),
        _cells_row(st),
        StatusRow("classes", "Per class", counts),
        StatusRow("fired", "Fired | aborted", f"{st.fired} | {aborted}",
                  tooltip="\n".join(f"{r}: {n}" for r, n in sorted(st.not_fired.items()))),
        StatusRow("late", "Late triggers", str(st.late), st.late > 0),
        _purity_row(st),
        StatusRow("latency", "Latency p50 | p99",
                  f"{_fmt(st.latency_p50_us / 1000, '.2f')} | {_fmt(st.latency_p99_us / 1000, '.2f', ' ms')}",
                  tooltip="decision latency from the frame that completed the cell's event; from the frame in which "
                          "it left the constriction: "
                          f"{_fmt(getattr(st, 'latency_from_exit_p50_us', math.nan) / 1000, '.2f')} | "
                          f"{_fmt(getattr(st, 'latency_from_exit_p99_us', math.nan) / 1000, '.2f', ' ms')}"),
        _light_row(st),
        _file_row(st),
        _trigger_row(st),
        _cpu_row(getattr(st, "cpu_cores", None) or {}),
    ]


#: mean |gain - its mean| from which the light row is alarmed (the simulator's 5% flicker reads 0.021,
#: its 2% 0.009, a steady lamp 0.0003): flicker that, uncorrected, made channel pass for cells
FLICKER_ALARM = 0.02


def _light_row(st: Any) -> StatusRow:
    """The frames' light against the background's lately, and how much it flickers."""
    gain, flicker = getattr(st, "light_gain", math.nan), getattr(st, "light_flicker", math.nan)
    changed = gain == gain and not LIGHT_MIN < gain < LIGHT_MAX
    return StatusRow("light", "Light | flicker",
                     f"×{_fmt(gain, '.3f')} | {_fmt(100 * flicker, '.1f', ' %')}" + (" changed" if changed else ""),
                     flicker >= FLICKER_ALARM or changed,
                     "the last frame's brightness against the background's (×1: the same), and its mean change "
                     "from frame to frame over the last ~256 frames: lamp flicker, corrected frame by frame "
                     "(tracking.flicker_correction); steadier light (an LED on a DC supply) measures cells better. "
                     f"Beyond ×{LIGHT_MIN:g}–{LIGHT_MAX:g} the light changed (a lamp or the exposure): cells are "
                     "missed until the background has taken it over (2,048 frames)")


def _trigger_row(st: Any) -> StatusRow:
    """The trigger's state, and the pulses it was handed but did not output or confirm."""
    refused, unacked = getattr(st, "device_refused", 0), getattr(st, "unacked", 0)
    # target cells the trigger could not fire while it was unavailable: shown nowhere else (not in
    # Fired | aborted), and a trigger that came back read "ok" as if none had been lost
    failed = getattr(st, "trigger_failed", 0)
    text = ("ok" if st.trigger_ok else "FAULT") + (f", {failed} not fired" if failed else "") \
        + (f", {refused} refused" if refused else "") + (f", {unacked} unacked" if unacked else "")
    tip = "\n".join(f"{label}: {getattr(st, key, 0)}" for key, label in (
        ("trigger_failed", "target cells not fired: the trigger was unavailable"),
        ("device_refused", "pulses the device refused (queue full, not armed, counter busy)"),
        ("device_late", "pulses the device output late"),
        ("unacked", "pulses whose ack never came"),
        ("device_errors", "errors the device reported"),
        ("test_pulses", "test pulses fired during the run (not in the figures above)")))
    errors = [e for e in getattr(st, "errors", ()) if e.startswith("trigger:")]
    if errors:
        tip += f"\nlast error: {errors[-1]}"
    return StatusRow("trigger", "Trigger", text, not st.trigger_ok or refused > 0 or failed > 0, tip)


def _cells_row(st: Any) -> StatusRow:
    """Cells decided, and alarmed when the tracker saw cells it could not follow (no free track)."""
    overflow, blocked = getattr(st, "tracks_overflow", 0), getattr(st, "blocked_s", math.nan)
    text = f"{st.cells} | {_fmt(st.cells_per_s, '.1f', '/s')}" + (f", {overflow} untracked" if overflow else "") \
        + (f", BLOCKED {blocked:.1f} s" if blocked == blocked else "")
    tip = "\n".join(f"{label}: {getattr(st, key, 0)}" for key, label in (
        ("tracks_overflow", "blobs not followed (tracking.max_tracks in use)"),
        ("tracks_lost", "tracks ended before the constriction (cells lost upstream, specks)"),
        ("snapshots_lost", "events without their ROI image (the ring had moved on)"),
        ("paces_unlearned", "pulses timed before the channel's pace was learned"))) \
        + ("\nBLOCKED: an object has stood still in the constriction or at its mouth, and no cell has passed "
           "since (a clog: flush the channel?)" if blocked == blocked else "")
    return StatusRow("cells", "Cells | rate", text, overflow > 0 or blocked == blocked, tip)


def _cpu_row(cores: Mapping[str, float]) -> StatusRow:
    """Cores the run's threads and child processes use; alarmed when together they take 90% of
    the machine (decisions then wait for the CPU, and come late)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    total = sum(cores.values())
    top = max(cores, key=cores.get) if cores else None
    text = f"{total:.2f} of {n}" + (f" (most: {top} {cores[top]:.2f})" if top is not None else "")
    return StatusRow("cpu", "CPU (cores)", text, total >= 0.9 * n,
                     "\n".join(f"{k}: {v:.2f}" for k, v in sorted(cores.items(), key=lambda kv: -kv[1])))


# -- model ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ModelInfo:
    path: str
    classes: tuple[str, ...]
    features: tuple[str, ...]
    provider: str
    latency_ms: float  # one cell, measured when the model was loaded
    description: str = ""  # architecture
    provider_note: str = ""  # why the faster providers are not used (shown as a tooltip)

    def summary(self) -> str:
        arch = f"{self.description}: " if self.description else ""
        return (f"{arch}classes: {', '.join(self.classes)}\nfeatures: {', '.join(self.features)}\n"
                f"provider: {self.provider}, latency {_fmt(self.latency_ms, '.2f', ' ms')} per cell")


def inspect_model(path: str, provider: str = "auto") -> ModelInfo:
    """Load a model file and time one single-cell inference (on a worker thread, never the UI's).

    ``path`` may be ``"demo"`` (the bundled model), as in the run configuration.
    """
    import time

    from inference.classifier import Classifier  # heavy: onnxruntime

    if path == "demo":
        from app.config import bundled_model_path

        path = str(bundled_model_path())
    clf = Classifier(path, provider=provider)
    c, h, w = clf.spec.image.shape
    image = np.zeros((1, c, h, w), np.float32)
    feats = np.zeros((1, len(clf.spec.features)), np.float32)
    clf.run_arrays(image, feats)  # the first call allocates; time the next ones
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        clf.run_arrays(image, feats)
        times.append(time.perf_counter() - t0)
    choice = getattr(clf, "provider_choice", clf.provider)
    choice = choice() if callable(choice) else choice  # what runs the model, and why not a faster provider
    return ModelInfo(str(path), tuple(clf.classes), tuple(clf.spec.feature_names), str(clf.provider),
                     float(np.median(times) * 1000), str(clf.spec.arch), str(choice))
