"""The sample report: what a run measured and sorted, for the operator, from its event file.

:func:`summarize` computes the numbers (cells per class with Wilson 95 % intervals, quality flags,
sorted counts and reasons, purity/recovery estimates, per-class feature medians);
:func:`write_report` adds the figures (matplotlib, Agg, no pyplot state) and writes Markdown and
HTML. Purity and recovery are *estimates from the classifier's probabilities* (no ground truth
exists at the sorter): purity = mean P(target) over fired cells; recovery = Σ P(target) of fired
cells / Σ P(target) of all cells.
"""

from __future__ import annotations

import base64
import html
import math
import os
import shutil
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.sorting import sorted_set
from app.storage import REPORT_KINDS, StoredRun, read_events, stated_duration_s
from mimlsort.errors import DataFormatError
from tracking.events import Quality
from tracking.features import FEATURES

Z95 = 1.959963984540054

#: features summarised per class and drawn as histograms
REPORT_FEATURES: tuple[str, ...] = ("di", "transit_time_ms", "v_max_mm_s", "dir_per_ms", "area_um", "deform")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (NaNs for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Share:
    name: str
    count: int
    total: int

    @property
    def fraction(self) -> float:
        return self.count / self.total if self.total else math.nan

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson(self.count, self.total)


@dataclass(frozen=True)
class Summary:
    path: Path
    sample: str
    run_index: int
    started: str
    complete: bool
    cells: int
    unflagged: int  # cells with no quality flag at all
    sortable: int  # cells with no flag the run's sort policy rejects (TOUCHING cells count)
    duration_s: float  # first to last cell's exit
    classes: tuple[Share, ...]  # predicted class among all classified cells
    classes_sortable: tuple[Share, ...]  # the same among sortable cells
    quality: tuple[Share, ...]  # each flag among all cells
    target_classes: tuple[str, ...]
    targets_from: str  # where the target classes came from
    fired: Share
    reasons: tuple[Share, ...]  # why cells were (not) fired, among cells with a decision
    purity_estimate: float
    recovery_estimate: float
    predicted_purity: float  # fraction of fired cells whose predicted class is a target
    medians: dict[str, dict[str, tuple[float, float, float]]]  # class -> feature -> (q25, median, q75)
    counters: dict = field(default_factory=dict)
    model: str = ""
    acks: int = 0
    error: str = ""  # the run's error, as the file records it ("" for a clean run)
    # pulse out minus fire time scheduled, where the device's ack says when its pulse went out on
    # the host clock: (pulses, p5, p50, p95) in µs
    pulse_timing_us: tuple[int, float, float, float] = (0, math.nan, math.nan, math.nan)
    # how far off those pulse times may be (median over them, µs): a device clock is known only
    # through round trips on a host that may be loaded; NaN where the file does not say
    pulse_time_doubt_us: float = math.nan
    device_refused: int = 0  # fired cells whose pulse the device then did not output
    device_late: int = 0  # pulses the device output later than its tolerance
    rejected_flags: tuple[str, ...] = ()  # what "sortable" leaves out
    policy_changes: tuple[str, ...] = ()  # the run log's lines on sort policies changed during the run
    test_pulses: tuple[str, ...] = ()  # the run log's lines on the operator's test pulses during the run
    # the outlet: fired cells and cells swept along within a fired cell's coincidence window
    swept: int = 0  # -1: not known (a file from before the windows were recorded)
    sorted_purity_estimate: float = math.nan
    sorted_recovery_estimate: float = math.nan
    measured: str = "tracked"  # "single image": a reanalysis of event images
    run_s: float = math.nan  # the run's own duration where the file says it (:func:`run_seconds`)
    # what the fired cells' pulses went to: the trigger backends named by their fire records
    # ("null", "log", "serial", …); () where none was handed to a trigger (a replay at full speed)
    fired_to: tuple[str, ...] = ()
    sorting_off: bool = False  # the run's configuration has sorting.enabled = false

    @property
    def cells_per_s(self) -> float:
        """Cells over the run's duration where the file says it; else the cells after the first
        over the first-to-last span (n over it counted one cell too many: 2 cells 1 s apart are
        1 cell/s); NaN with fewer than 2 cells and no run duration."""
        if self.run_s > 0:
            return self.cells / self.run_s
        if self.cells > 1 and self.duration_s > 0:
            return (self.cells - 1) / self.duration_s
        return math.nan


#: where the report's target classes came from, as the report says it
_TARGETS_FROM = {"given": " (given to the report)", "configuration": " (the run's configuration)",
                 "cells marked as targets": " (the classes of the cells the run marked as targets)"}


def _target_classes(run: StoredRun, f: dict, override) -> tuple[tuple[str, ...], str]:
    classes = run.class_names
    # a class named twice is one target, as the run's policy takes it (a set): summed twice, its
    # P(target) read a purity estimate of 197.9 % (`--target hct116 --target hct116`)
    if override:
        unknown = [c for c in override if c not in classes]
        if unknown:
            raise DataFormatError(f"{run.path}: target classes {unknown} are not among the model's {list(classes)}")
        return tuple(dict.fromkeys(override)), "given"
    if run.meta.config_toml:
        try:
            cfg = tomllib.loads(run.meta.config_toml)
            t = cfg.get("sorting", {}).get("target_classes")
            if t and all(c in classes for c in t):
                return tuple(dict.fromkeys(t)), "configuration"
        except tomllib.TOMLDecodeError:
            pass
    picked = sorted({classes[i] for i in f["predicted"][f["is_target"] == 1] if 0 <= i < len(classes)})
    return tuple(picked), "cells marked as targets" if picked else "none"


def _rejected_flags(run: StoredRun) -> tuple[str, ...]:
    """The quality flags the run's sort policy rejected (its configuration, else the default)."""
    from app.sorting import SortSettings

    if run.meta.config_toml:
        try:
            flags = tomllib.loads(run.meta.config_toml).get("sorting", {}).get("reject_flags")
            if isinstance(flags, list) and all(isinstance(x, str) and x in Quality.__members__ for x in flags):
                return tuple(flags)
        except tomllib.TOMLDecodeError:
            pass
    return SortSettings().reject_flags


def _sorting_off(run: StoredRun) -> bool:
    if run.meta.config_toml:
        try:
            return tomllib.loads(run.meta.config_toml).get("sorting", {}).get("enabled", True) is False
        except tomllib.TOMLDecodeError:
            pass
    return False


def run_seconds(run: StoredRun) -> float:
    """The run's own duration from the file's counters, NaN where it does not say it
    (:func:`app.storage.stated_duration_s`, which the file's ``user:duration s`` states too)."""
    return stated_duration_s(run.counters, run.meta.camera, run.meta.measured)


def summarize(events_path: str | Path, *, target_classes: tuple[str, ...] | None = None,
              data: tuple[dict, StoredRun] | None = None) -> Summary:
    f, run = data if data is not None else read_events(events_path)
    n = run.n_events
    classes = run.class_names
    q = f["quality"].astype(np.int64) if n else np.zeros(0, np.int64)
    rejected = _rejected_flags(run)
    if run.meta.measured == "single image":
        # a reanalysis flags every cell INCOMPLETE (one image, no passage seen): left out, no
        # cell was left for the class shares and feature medians, and every median read "–"
        rejected = tuple(x for x in rejected if x != "INCOMPLETE")
    # the summary's classes and medians are over cells measured whole, as the sort policy sees
    # them: a cell cut from a neighbour (TOUCHING) is measured on its uncut frames and counts;
    # rejecting it would leave out a share of cells that grows with density
    ok = (q & sum(Quality[x].value for x in rejected)) == 0
    pred = f["predicted"] if n else np.zeros(0, np.int64)
    classified = pred >= 0

    def shares(mask) -> tuple[Share, ...]:
        tot = int(mask.sum())
        counts = Counter(int(i) for i in pred[mask])
        return tuple(Share(c, counts.get(i, 0), tot) for i, c in enumerate(classes))

    quality = tuple(Share(flag.name, int(np.count_nonzero(q & flag.value)), n) for flag in Quality if flag.value)
    targets, source = _target_classes(run, f, target_classes)
    decided = f["reason"] > 0 if n else np.zeros(0, bool)
    fired = (f["fired"] == 1) if n else np.zeros(0, bool)
    reason_counts = Counter(int(r) for r in f["reason"][decided]) if n else Counter()
    reasons = tuple(Share(run.reasons[r] if r < len(run.reasons) else str(r), c, int(decided.sum()))
                    for r, c in sorted(reason_counts.items(), key=lambda kv: -kv[1]))
    idx = [classes.index(c) for c in targets]
    p_t = f["probabilities"][:, idx].sum(axis=1) if (n and idx) else np.zeros(n)
    purity = float(p_t[fired].mean()) if fired.any() and idx else math.nan
    recovery = float(p_t[fired].sum() / p_t.sum()) if idx and p_t.sum() > 0 else math.nan
    pred_purity = float(np.isin(pred[fired], idx).mean()) if fired.any() and idx else math.nan
    outlet = outlet_cells(f, run)
    windows_known = outlet is not None
    outlet = outlet if windows_known else np.zeros(n, bool)
    pulsed = fired & ~refused_cells(f, run)
    handed = fired & (f["fire_ok"] == 1) if n else np.zeros(0, bool)
    fired_to = tuple(sorted({str(d).split(":", 1)[0] for d in f["fire_device"][handed] if str(d)})) if n else ()
    sorted_purity = float(p_t[outlet].mean()) if outlet.any() and idx and windows_known else math.nan
    sorted_recovery = (float(p_t[outlet].sum() / p_t.sum()) if idx and p_t.sum() > 0 and windows_known
                       else math.nan)
    medians: dict[str, dict[str, tuple[float, float, float]]] = {}
    groups = [(c, (pred == i) & ok) for i, c in enumerate(classes)] or [("all", ok)]
    for c, m in groups:
        medians[c] = {}
        for feat in REPORT_FEATURES:
            v = f[feat][m] if feat in f else np.zeros(0)
            v = v[np.isfinite(v)]
            medians[c][feat] = tuple(float(x) for x in np.percentile(v, [25, 50, 75])) if v.size else (math.nan,) * 3
    t = f["exit_time_ms"][np.isfinite(f["exit_time_ms"])] if n else np.zeros(0)
    duration = float(t.max() - t.min()) / 1000.0 if t.size > 1 else math.nan
    cells_reports = run.device_reports[run.device_reports["event_index"] >= 0]
    started = run.meta.started.isoformat(timespec="seconds") if run.meta.started else \
        f"{run.attrs.get('experiment:date', '')} {run.attrs.get('experiment:time', '')}".strip()
    return Summary(
        path=Path(events_path), sample=run.meta.sample, run_index=run.meta.run_index, started=started,
        complete=run.complete, cells=n, unflagged=int(np.count_nonzero(q == 0)), sortable=int(ok.sum()),
        duration_s=duration, classes=shares(classified), classes_sortable=shares(classified & ok), quality=quality,
        target_classes=targets, targets_from=source, fired=Share("fired", int(fired.sum()), n), reasons=reasons,
        purity_estimate=purity, recovery_estimate=recovery, predicted_purity=pred_purity, medians=medians,
        policy_changes=tuple(line.strip() for line in run.run_log if "sort policy changed" in line),
        swept=int(np.count_nonzero(outlet & ~pulsed)) if windows_known else -1, sorted_purity_estimate=sorted_purity,
        sorted_recovery_estimate=sorted_recovery, measured=run.meta.measured, run_s=run_seconds(run), fired_to=fired_to,
        sorting_off=_sorting_off(run),
        # the operator's test pulses (negative event_index) are in the tables too, and kept apart here
        counters=dict(run.counters), model=run.meta.model_name, acks=int(np.count_nonzero(run.acks["event_index"] >= 0)),
        rejected_flags=rejected,
        error=run.error, pulse_timing_us=_pulse_timing_us(f, run), pulse_time_doubt_us=_pulse_time_doubt_us(run),
        device_refused=int(np.count_nonzero(cells_reports["kind"] == REPORT_KINDS["refused"])),
        device_late=int(np.count_nonzero(cells_reports["kind"] == REPORT_KINDS["late"])),
        test_pulses=tuple(line.strip() for line in run.run_log if line.startswith("operator's test pulse")),
    )


def refused_cells(f: dict, run: StoredRun) -> np.ndarray:
    """Per cell: fired, but the device then said it did not output the pulse."""
    reports = run.device_reports
    refused = reports["event_index"][reports["kind"] == REPORT_KINDS["refused"]]
    return np.isin(f["event_index"], refused) if run.n_events else np.zeros(0, bool)


def outlet_cells(f: dict, run: StoredRun) -> np.ndarray | None:
    """Per cell: in the outlet, i.e. fired with a pulse that went out, or within the window of such a
    pulse; None where the file does not record the windows (written before they were). A pulse the
    device refused sorts nothing: counted as sorted, a run whose device refused 68 of 86 pulses
    read an outlet recovery estimate of 94 %."""
    if not run.n_events:
        return np.zeros(0, bool)
    fired = f["fired"] == 1
    if fired.any() and not np.isfinite(f["sort_window_ms"][fired]).any():
        return None
    return sorted_set(f["exit_time_ms"], fired & ~refused_cells(f, run), f["sort_window_ms"])


# ---------------------------------------------------------------------------------------------
# figures


def _pulse_timing_us(f: dict, run: StoredRun) -> tuple[int, float, float, float]:
    """(pulses, p5, p50, p95) of when each acknowledged pulse went out against its scheduled fire
    time, in µs, over the acks that say it on the host clock."""
    acks = run.acks
    if not len(acks) or "pulse_host_ns" not in (acks.dtype.names or ()) or not len(f.get("event_index", ())):
        return 0, math.nan, math.nan, math.nan
    known = acks[acks["pulse_host_ns"] > 0]
    scheduled = dict(zip(f["event_index"].tolist(), f["fire_scheduled_ns"].tolist()))
    err = np.array([(int(a["pulse_host_ns"]) - scheduled[int(a["event_index"])]) / 1000.0 for a in known
                    if scheduled.get(int(a["event_index"]), -1) > 0])
    if not err.size:
        return 0, math.nan, math.nan, math.nan
    p5, p50, p95 = np.percentile(err, [5, 50, 95])
    return int(err.size), float(p5), float(p50), float(p95)


def _pulse_time_doubt_us(run: StoredRun) -> float:
    acks = run.acks
    if not len(acks) or "pulse_host_err_ns" not in (acks.dtype.names or ()):
        return math.nan
    err = acks["pulse_host_err_ns"][(acks["pulse_host_ns"] > 0) & (acks["pulse_host_err_ns"] >= 0)]
    return float(np.median(err)) / 1000.0 if err.size else math.nan


def _label(feat: str) -> str:
    d = FEATURES[feat]
    return f"{feat} [{d.unit}]" if d.unit else feat


def _colours(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _no_values(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            fontsize=8, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def make_figures(f: dict, run: StoredRun, out_dir: Path) -> dict[str, Path]:
    """Scatter plots (DI vs transit time, DI vs v_max) and histograms, coloured by class; PNG paths."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    classes = run.class_names
    n = run.n_events
    pred = f["predicted"] if n else np.zeros(0, np.int64)
    groups = [(c, pred == i) for i, c in enumerate(classes)]
    if (pred < 0).any() or not classes:
        groups.append(("unclassified", pred < 0))
    colours = _colours(len(groups))
    fired = f["fired"] == 1 if n else np.zeros(0, bool)
    out: dict[str, Path] = {}
    for name, x in (("scatter_di_transit", "transit_time_ms"), ("scatter_di_vmax", "v_max_mm_s")):
        fig = Figure(figsize=(6, 4.5), dpi=100)
        ax = fig.add_subplot()
        # the legend counts the cells drawn: a reanalysis (no transit time, no v_max) drew an empty
        # plot whose legend said "unclassified (32)"
        drawn = np.isfinite(f[x]) & np.isfinite(f["di"]) if n else np.zeros(0, bool)
        for (c, m), col in zip(groups, colours):
            if (m & drawn).any():
                ax.scatter(f[x][m & drawn], f["di"][m & drawn], s=9, color=col, alpha=0.7,
                           label=f"{c} ({int((m & drawn).sum())})", edgecolors="none")
        if (fired & drawn).any():
            ax.scatter(f[x][fired & drawn], f["di"][fired & drawn], s=30, facecolors="none", edgecolors="k",
                       linewidths=0.6, label=f"fired ({int((fired & drawn).sum())})")
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label("di"))
        ax.set_title(f"{run.meta.sample}: DI vs {x}")
        if drawn.any():
            ax.legend(fontsize=8, markerscale=1.5)
        else:
            _no_values(ax, f"no cell of this file has\nboth {x} and di" if n else "no cells")
        fig.tight_layout()
        out[name] = out_dir / f"{name}.png"
        fig.savefig(out[name])
    fig = Figure(figsize=(9, 6), dpi=100)
    axes = fig.subplots(2, 3).ravel()
    for ax, feat in zip(axes, REPORT_FEATURES):
        v_all = f[feat][np.isfinite(f[feat])] if n else np.zeros(0)
        bins = np.histogram_bin_edges(v_all, bins=30) if v_all.size > 1 else 10
        for (c, m), col in zip(groups, colours):
            v = f[feat][m]
            v = v[np.isfinite(v)]
            if v.size:
                ax.hist(v, bins=bins, histtype="step", color=col, label=c, linewidth=1.2)
        if not v_all.size:
            _no_values(ax, f"no cell of this file\nhas {feat}" if n else "no cells")
        ax.set_xlabel(_label(feat), fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("cells")
    axes[3].set_ylabel("cells")
    if n:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    out["histograms"] = out_dir / "histograms.png"
    fig.savefig(out["histograms"])
    return out


# ---------------------------------------------------------------------------------------------
# text


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def _ci(s: Share) -> str:
    lo, hi = s.ci95
    return "–" if math.isnan(lo) else f"{100 * lo:.1f}–{100 * hi:.1f} %"


def _g(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.4g}"


def _tables(s: Summary) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, note) of every table, shared by the Markdown and HTML writers."""
    t = []
    t.append(("Run", ["", ""], [
        ["file", str(s.path)], ["sample", s.sample], ["run index", str(s.run_index)], ["started", s.started],
        ["model", s.model or "none"],
        *([["measured", "one image per cell (a reanalysis): every cell is flagged INCOMPLETE, and counted as "
                        "sortable below"]] if s.measured == "single image" else []),
        ["cells", str(s.cells)], ["unflagged cells", str(s.unflagged)],
        [f"sortable cells (none of {', '.join(s.rejected_flags) or 'no flag'})", str(s.sortable)],
        ["duration (first to last cell)", "–" if math.isnan(s.duration_s) else f"{s.duration_s:.2f} s"],
        *([["run duration", f"{s.run_s:.2f} s"]] if s.run_s > 0 else []),
        [f"cells per second ({'over the run' if s.run_s > 0 else 'first to last cell'})",
         "–" if math.isnan(s.cells_per_s) else f"{s.cells_per_s:.1f}"],
        ["file complete", "yes" if s.complete else "NO (the writer did not close it; events up to its last flush)"],
        *([["run error", s.error]] if s.error else []),
    ], ""))
    counters = ("Run counters", ["counter", "value"], [[k, str(v)] for k, v in s.counters.items()], "")
    if not s.cells:
        # an empty run's tables were rows of zeros and dashes ("hct116 | 0 | – | –" for each class,
        # flag and feature, "fired 0 of 0"), read as figures of a sample that had none
        t.append(("Cells", ["", ""], [["summary", "none: the file holds no cell, so it has no class shares, "
                                                  "quality flags, sorting or feature medians to give"]], ""))
        return t + ([counters] if s.counters else [])
    if s.classes:
        rows = [[a.name, str(a.count), _pct(a.fraction), _ci(a), str(b.count), _pct(b.fraction), _ci(b)]
                for a, b in zip(s.classes, s.classes_sortable)]
        t.append(("Cells per class", ["class", "cells", "share", "95 % CI", "sortable", "share", "95 % CI"], rows,
                  "Predicted class (most probable). Sortable: no flag the run's sort policy rejects ("
                  f"{', '.join(s.rejected_flags) or 'none'}). Intervals: Wilson score, 95 %."))
    t.append(("Quality flags", ["flag", "cells", "share", "95 % CI"],
              [[q.name, str(q.count), _pct(q.fraction), _ci(q)] for q in s.quality], ""))
    if s.measured == "single image":
        # a reanalysis measures images another program recorded, and fires nothing: "fired 0 of 32
        # (95 % CI 0.0–10.7 %)", swept cells and acknowledgements read as a sorter that ran and
        # fired at none of them
        t.append(("Sorting", ["", ""], [["sorted", "no: a reanalysis of recorded event images decides and fires "
                                                   "nothing; the classes above are the model's predictions"
                                         if s.classes else "no: a reanalysis of recorded event images decides "
                                                           "and fires nothing"]], ""))
    else:
        t.append(_sorting_table(s))
    if s.reasons:
        t.append(("Decisions", ["reason", "cells", "share"],
                  [[r.name, str(r.count), _pct(r.fraction)] for r in s.reasons], ""))
    feats = list(REPORT_FEATURES)
    t.append(("Feature medians (sortable cells, [25 %, 75 %])", ["class", *(_label(x) for x in feats)],
              [[c, *(f"{_g(m[x][1])} [{_g(m[x][0])}, {_g(m[x][2])}]" for x in feats)]
               for c, m in s.medians.items()], ""))
    if s.counters:
        t.append(counters)
    return t


#: what a run's pulses went to where none reached a sorter; "fired" then counts the cells it would have
#: fired: a replay's report read "fired 152 of 340" and an outlet purity, as if it had sorted them
_DRY = {"": "none: the run decided without a trigger (a replay or simulation read at full speed), no pulse was sent",
        "null": "null: no pulse was output (a dry run)",
        "log": "log: pulses written to the pulse log, none output (a dry run)"}


def _pulses_row(s: Summary) -> list[list[str]]:
    if not s.fired.count:
        return []
    dry = [_DRY[b] for b in (s.fired_to or ("",)) if b in _DRY]
    if len(dry) < len(s.fired_to or ("",)):
        return [["trigger", ", ".join(s.fired_to)]]
    return [["trigger", "; ".join(dry) + ": the fired cells and the outlet are what the run would have sorted"]]


def _unacked(s: Summary) -> int:
    v = s.counters.get("unacked", 0)
    return v if isinstance(v, int) and v > 0 else 0


def _sorting_table(s: Summary) -> tuple[str, list[str], list[list[str]], str]:
    """The Sorting table of a run that sorted (or could have): what fired, the estimates, the device."""
    return ("Sorting", ["", ""], [
        ["target classes", (", ".join(s.target_classes) + _TARGETS_FROM.get(s.targets_from, "")) or "none"],
        # a run with sorting off read as a sort of its target classes that fired none (recovery 0.0 %)
        *([["sorting", "off (sorting.enabled = false when the run started): the targets it would have fired are "
                       "\"sorting off\" under Decisions"]] if s.sorting_off else []),
        *_pulses_row(s),
        ["fired", f"{s.fired.count} of {s.fired.total} ({_pct(s.fired.fraction)}, 95 % CI {_ci(s.fired)})"],
        ["purity estimate", _pct(s.purity_estimate)], ["recovery estimate", _pct(s.recovery_estimate)],
        ["fired cells predicted as target", _pct(s.predicted_purity)],
        *([["cells swept along (not fired, within a fired cell's window)", str(s.swept)],
           ["outlet purity / recovery estimate (fired and swept cells)",
            f"{_pct(s.sorted_purity_estimate)} / {_pct(s.sorted_recovery_estimate)}"]] if s.swept >= 0 else
          [["outlet (fired and swept cells)", "not known: the file does not record the coincidence window of "
                                              "its decisions (written before they were recorded)"]]),
        ["device acknowledgements", str(s.acks)],
        *([["pulses the device refused (not output)", str(s.device_refused)]] if s.device_refused else []),
        # said only in the counters table below, so 156 fired read as 51 acknowledged and 97 refused
        *([["pulses the device did not confirm (no ack: taken as output)", str(_unacked(s))]] if _unacked(s) else []),
        *([["pulse out − scheduled fire time (p5 / p50 / p95)",
            f"{s.pulse_timing_us[1]:.0f} / {s.pulse_timing_us[2]:.0f} / {s.pulse_timing_us[3]:.0f} µs over "
            f"{s.pulse_timing_us[0]} pulses"
            + (f" (each known to ±{s.pulse_time_doubt_us:.0f} µs, median)" if s.pulse_time_doubt_us > 0 else "")]]
          if s.pulse_timing_us[0] else []),
        *([["pulses the device output late", str(s.device_late)]] if s.device_late else []),
        *([["policy changed during the run", line] for line in s.policy_changes]),
        # not in the figures above, and each sorted whatever was at the junction when it went out
        *([["test pulse during the run", line] for line in s.test_pulses]),
    ], "Purity = mean P(target) over fired cells; recovery = ΣP(target) fired / ΣP(target) all "
       "(estimates from the classifier's probabilities, not measured). The outlet holds the fired cells and "
       "every cell that left the constriction within a fired cell's coincidence window (its pulse sorts "
       "that stretch of the stream): yield mode fires into such coincidences, purity mode aborts them."
       + (" Cells whose pulse the device refused are not in the outlet (unless another pulse swept them "
          "along)." if s.device_refused else "")
       + (" The sort policy changed during the run: the estimates take the target classes above for every "
          "cell, whatever the policy was when it was decided." if s.policy_changes else ""))


def to_markdown(s: Summary, figures: dict[str, Path]) -> str:
    lines = [f"# Sample report: {s.sample} (run {s.run_index})", ""]
    for title, header, rows, note in _tables(s):
        lines += [f"## {title}", ""]
        # a line break ends a Markdown table row: a multi-line run error (ONNX Runtime's are) left
        # the table at its first line and its other lines as paragraphs below it
        esc = lambda x: x.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")  # noqa: E731
        lines.append("| " + " | ".join(esc(h) for h in header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        if note:
            lines += ["", note]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        lines += [FIGURES_NOTE, ""]
        lines += [f"![{k}]({p.name})" for k, p in figures.items()]
        lines.append("")
    return "\n".join(lines)


#: what the figures show, said under them: the tables' medians are over sortable cells only
FIGURES_NOTE = ("The figures show every cell, flagged ones included (the medians above are over sortable cells); "
                "fired cells are ringed.")


def _html_lines(text: str) -> str:
    """A table cell's text with its line breaks kept, as the Markdown gives them (``<br>``)."""
    return "<br>".join(html.escape(x) for x in text.replace("\r\n", "\n").split("\n"))


def to_html(s: Summary, figures: dict[str, Path]) -> str:
    """A single self-contained HTML page (figures embedded), easy to mail or archive."""
    e = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             f"<title>{e(s.sample)} – mimlsort report</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1100px}"
             "table{border-collapse:collapse;margin-bottom:.5em}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;font-size:90%}"
             "th{background:#eee}.note{color:#555;font-size:85%}img{max-width:100%}"
             "</style></head><body>",
             f"<h1>Sample report: {e(s.sample)} (run {s.run_index})</h1>"]
    for title, header, rows, note in _tables(s):
        parts.append(f"<h2>{e(title)}</h2><table>")
        if any(header):
            parts.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{_html_lines(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
        if note:
            parts.append(f"<p class='note'>{e(note)}</p>")
    if figures:
        parts.append(f"<h2>Figures</h2><p class='note'>{e(FIGURES_NOTE)}</p>")
        for k, p in figures.items():
            b64 = base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(f"<p><img alt='{e(k)}' src='data:image/png;base64,{b64}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class ReportFiles:
    summary: Summary
    out_dir: Path
    markdown: Path | None
    html: Path | None
    figures: dict[str, Path]


def report_dir(events_path: str | Path) -> Path:
    """Where a run's report goes by default: ``<events>_report/`` beside its event file."""
    events_path = Path(events_path)
    return events_path.with_name(events_path.stem + "_report")


#: the hidden folder inside the report folder where a report is drawn before it replaces the one there
_STAGE = ".report.part"


def write_report(events_path: str | Path, out_dir: str | Path | None = None, *,
                 formats: tuple[str, ...] = ("md", "html"),
                 target_classes: tuple[str, ...] | None = None) -> ReportFiles:
    """Summarise ``events_path``, draw the figures and write ``report.md``/``report.html`` to ``out_dir``
    (default: ``<events>_report/`` beside the file).

    The report is written whole or not at all: it is drawn in a hidden folder inside ``out_dir``
    and moved into place at the end. One that fails on the way (a full disk, the plotting, Ctrl-C)
    leaves an earlier report as it was and removes a folder it made: a report that failed after
    its figures and report.md left them beside a half-written report.html.part, a folder that
    looked complete."""
    bad = [x for x in formats if x not in ("md", "html")]
    if bad:
        raise DataFormatError(f"report formats must be md and/or html, got {bad}")
    events_path = Path(events_path)
    out_dir = Path(out_dir) if out_dir is not None else report_dir(events_path)
    from mimlsort.outputs import check_folder_outputs

    # an earlier report of ours is replaced; a user's own report.md in --out was too
    check_folder_outputs(out_dir, {"report.md": "# Sample report: ",
                                   "report.html": "<!DOCTYPE html><html><head><meta charset='utf-8'>"})
    data = read_events(events_path)  # first: a file that cannot be read leaves no empty folder behind
    # and so does a --target that is not among the classes
    summary = summarize(events_path, target_classes=target_classes, data=data)
    missing = [p for p in (out_dir, *out_dir.absolute().parents) if not p.exists()]
    made = missing[-1] if missing else None  # the outermost folder this report makes
    stage = out_dir / _STAGE
    try:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataFormatError(f"{out_dir}: cannot create the report folder: {err}") from err
        shutil.rmtree(stage, ignore_errors=True)  # what a report killed on its way left
        stage.mkdir()
        figures = make_figures(*data, stage)
        pages = []
        if "md" in formats:
            pages.append(stage / "report.md")
            pages[-1].write_text(to_markdown(summary, figures), encoding="utf-8")
        if "html" in formats:
            pages.append(stage / "report.html")
            pages[-1].write_text(to_html(summary, figures), encoding="utf-8")
        for p in (*figures.values(), *pages):
            os.replace(p, out_dir / p.name)
        stage.rmdir()
    except BaseException as err:
        shutil.rmtree(made if made is not None else stage, ignore_errors=True)
        if isinstance(err, OSError):
            # the system's refusal named no file ("error: File too large")
            raise OSError(err.errno, f"{err.strerror or err}: the report was not written (nothing of it was kept)",
                          str(out_dir)) from err
        raise
    md = out_dir / "report.md" if "md" in formats else None
    ht = out_dir / "report.html" if "html" in formats else None
    return ReportFiles(summary, out_dir, md, ht, {k: out_dir / p.name for k, p in figures.items()})
