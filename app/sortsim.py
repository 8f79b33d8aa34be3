"""Sort modes measured on simulated runs whose true classes are known (issue 4, "What it must show").

One simulated recording is rendered once to a raw ``.rtdc`` and replayed *lossless* through the full
pipeline (replay camera → ring → tracker → classifier → sort policy) once per sort mode, so every
mode decides about exactly the same cells with exactly the same probabilities. The events are then
matched to the simulator's truth (:func:`app.validate.match_events`) and each mode is scored twice:

* **fired cells** — purity: the fraction of fired cells whose true class is a target; recovery:
  fired true targets / true targets the pipeline decided. This is what the classifier and the
  gates control, and what :class:`~app.sorting.SortCounters` estimates from the probabilities.
* **sorted set** — what ends up in the sorted outlet: every fired cell *and every cell swept along
  with it*, i.e. every true object whose constriction exit lies within the coincidence window of a
  fired cell's exit. This is what a sorter's purity means at the bench, and what the purity mode
  protects: yield mode fires into coincidences and sweeps non-targets along.

The scope is the complete passages of the run (``Matching.is_complete``: entry and exit inside the
run with room for the event to be emitted), so cells cut off at the start or flushed at the end of
a run (decided "late") do not blur the comparison.

Coincidences need cells close together: in the simulated channel a cell squeezed to DI ≈ 0.7 is
~35 µm long, so consecutive exits are never closer than ~2.8 ms and a realistic coincidence window
(pulse plus timing uncertainty, here 4 ms ≈ 20 µm at the 5 mm/s downstream speed) at 100 cells/s
puts ~6 % of the cells into coincidence (see :attr:`SortModeReport.coincident_fraction`; 200 cells/s:
~9 %). The default rate stays at 100 cells/s because denser runs move the cells' features away from
the 40 cells/s runs the demonstration model was trained on (queueing slows them), which blurs what
the modes themselves do. The quality gate stops few cells (7 of 313 at the defaults): touching
cells are cut apart and flagged TOUCHING, which the default policy sorts.

:func:`coincidence_neighbours` is the pipeline's neighbour rule as a pure function (decided cells,
cells finishing in the same batch, and cells still in view whose class is unknown yet, counted as
non-targets), so crafted coincidences can be tested without a camera; :class:`AuditingPolicy`
records every neighbour list the live pipeline hands to the policy, for audits.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.simdata import record_simulation
from app.sorting import coincidence_neighbours  # noqa: F401  (re-exported: tests and audits use it)
from app.sorting import Decision, Neighbour, Reason, SortPolicy
from mimlsort.errors import StateError
from mimlsort.settings import require

__all__ = [
    "MODES",
    "coincidence_neighbours",
    "AuditEntry",
    "AuditingPolicy",
    "record_simulation",
    "ModeResult",
    "SortModeReport",
    "score_mode",
    "evaluate_sort_modes",
    "bench_sort_modes",
]

MODES = ("purity", "yield", "single-cell")

#: cells one comparison may simulate: the pipeline keeps its last 4096 records (with debris and
#: split tracks there are a few more records than cells)
MAX_CELLS = 3500


# ---------------------------------------------------------------------------------------------
# the neighbour rule


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One call of the policy: the candidate, the neighbours it was judged against, the outcome."""

    event_index: int
    exit_ms: float
    window_ms: float
    neighbours: tuple[Neighbour, ...]
    decision: Decision


class AuditingPolicy(SortPolicy):
    """A :class:`SortPolicy` that also keeps every (event, neighbours, decision) it was asked about.

    Install it with ``pipeline.set_policy`` (or pass it to the Pipeline) to audit a run: the log
    says exactly what the pipeline knew about each cell's surroundings when it decided.
    """

    def __init__(self, settings, class_names):
        super().__init__(settings, class_names)
        self.log: list[AuditEntry] = []

    def decide(self, event, probs, neighbours=(), target=None) -> Decision:
        d = super().decide(event, probs, neighbours, target)
        # only the sort thread calls decide: list.append needs no lock
        self.log.append(AuditEntry(event.index, float(event.features.get("exit_time_ms", math.nan)),
                                   float(self.settings.window_for(event)), tuple(neighbours), d))
        return d


# ---------------------------------------------------------------------------------------------
# the simulated recording


# ---------------------------------------------------------------------------------------------
# scoring


def _true_target(t, targets: frozenset[str]) -> bool:
    """A single cell of a target class, or a doublet of target cells only."""
    if t.kind == "cell":
        return t.cls in targets
    if t.kind == "doublet":
        return all(c in targets for c in str(t.cls).split("+"))
    return False


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


@dataclass(frozen=True, slots=True)
class ModeResult:
    """One sort mode on one simulated recording (counts over the complete passages of the run)."""

    mode: str
    cells: int  # decided events in scope (complete passages, plus unmatched detections)
    targets: int  # of them, cells whose TRUE class is a target
    fired: int
    fired_targets: int  # fired cells whose true class is a target
    coincidence: int  # aborted by coincidence (purity mode)
    not_isolated: int  # not fired because another cell was near (single-cell mode)
    late: int
    quality_gate: int  # targets by class whose quality flags keep them from being sorted
    purity: float  # fired_targets / fired
    recovery: float  # fired_targets / targets
    purity_estimate: float  # SortCounters' estimates from the classifier's probabilities (whole run)
    recovery_estimate: float
    sorted_cells: int  # true objects in the sorted outlet: fired ones and those swept along
    sorted_targets: int
    sorted_purity: float  # sorted_targets / sorted_cells
    sorted_recovery: float  # sorted true targets / all true targets of the complete passages
    swept_non_targets: int = 0  # true non-target objects swept into the outlet along with a fired cell
    fired_keys: tuple[tuple[int, int], ...] = ()  # (entry frame, exit frame) of the fired events
    not_fired: dict[str, int] = field(default_factory=dict)
    # SortCounters' estimates of the outlet (fired cells and those swept along), from the probabilities
    sorted_purity_estimate: float = math.nan
    sorted_recovery_estimate: float = math.nan


def _key(ev) -> tuple[int, int]:
    return int(ev.entry_frame), int(ev.exit_frame)


def score_mode(mode: str, records: Sequence, truth: Sequence, *, frame_ms: float, run_ms: float,
               target_classes: Iterable[str], window_for, purity_estimate: float = math.nan,
               recovery_estimate: float = math.nan, sorted_purity_estimate: float = math.nan,
               sorted_recovery_estimate: float = math.nan) -> ModeResult:
    """Score one run's decided records against the truth (see the module docstring).

    ``window_for(event) -> ms`` is the policy's coincidence window (the sort volume of one pulse).
    """
    from app.validate import match_events

    targets = frozenset(target_classes)
    decided = [r for r in records if r.decision is not None]
    m = match_events([r.event for r in decided], truth, run_ms=run_ms, frame_ms=frame_ms)
    by_event = {id(e): t for e, t in m.pairs}
    lo, hi = 2 * frame_ms, run_ms - 20 * frame_ms  # Matching's notion of a complete passage

    scope = []
    for r in decided:
        t = by_event.get(id(r.event))
        if t is not None:
            if m.is_complete(t):
                scope.append((r, t))
        elif lo < r.event.features.get("exit_time_ms", math.nan) < hi:
            scope.append((r, None))  # a detection of no single true object (debris, a split track)
    n_targets = sum(1 for _, t in scope if t is not None and _true_target(t, targets))
    fired = [(r, t) for r, t in scope if r.decision.fire]
    fired_targets = sum(1 for _, t in fired if t is not None and _true_target(t, targets))
    reasons: dict[str, int] = {}
    for r, _ in scope:
        if not r.decision.fire:
            reasons[r.decision.reason.value] = reasons.get(r.decision.reason.value, 0) + 1

    # the sorted outlet: each pulse takes whatever exits within its window
    objects = [t for t in truth if t.kind in ("cell", "doublet") and m.is_complete(t)]
    exits = np.array([t.exit_ms for t in objects], float)
    swept: set[int] = set()
    own: set[int] = set()
    orphans = 0
    for r, t in fired:
        if t is not None:
            swept.add(t.id)
            own.add(t.id)
        else:
            orphans += 1  # counted as a non-target object in the outlet
        te = r.event.features.get("exit_time_ms", math.nan)
        if exits.size and math.isfinite(te):
            for k in np.flatnonzero(np.abs(exits - te) <= window_for(r.event)):
                swept.add(objects[k].id)
    sorted_objs = [t for t in objects if t.id in swept]
    sorted_targets = sum(1 for t in sorted_objs if _true_target(t, targets))
    all_targets = sum(1 for t in objects if _true_target(t, targets))
    return ModeResult(
        mode=mode, cells=len(scope), targets=n_targets, fired=len(fired), fired_targets=fired_targets,
        coincidence=reasons.get(Reason.COINCIDENCE.value, 0), not_isolated=reasons.get(Reason.NOT_ISOLATED.value, 0),
        late=reasons.get(Reason.LATE.value, 0), quality_gate=reasons.get(Reason.QUALITY.value, 0), purity=_ratio(fired_targets, len(fired)),
        recovery=_ratio(fired_targets, n_targets), purity_estimate=purity_estimate,
        recovery_estimate=recovery_estimate, sorted_cells=len(sorted_objs) + orphans, sorted_targets=sorted_targets,
        sorted_purity=_ratio(sorted_targets, len(sorted_objs) + orphans),
        sorted_recovery=_ratio(sorted_targets, all_targets),
        swept_non_targets=sum(1 for t in sorted_objs if t.id not in own and not _true_target(t, targets)),
        fired_keys=tuple(sorted(_key(r.event) for r, _ in fired)), not_fired=reasons,
        sorted_purity_estimate=sorted_purity_estimate, sorted_recovery_estimate=sorted_recovery_estimate,
    )


def coincident_fraction(truth: Sequence, window_ms: float, *, frame_ms: float, run_ms: float) -> float:
    """Fraction of the complete passages with another object's exit within ``window_ms`` of theirs."""
    from app.validate import Matching

    complete = Matching(run_ms=run_ms, frame_ms=frame_ms).is_complete
    objs = [t for t in truth if t.kind in ("cell", "doublet") and not math.isnan(t.exit_ms)]
    ex = np.sort(np.array([t.exit_ms for t in objs], float))
    mine = np.array([t.exit_ms for t in objs if complete(t)], float)
    if not mine.size:
        return math.nan
    # each exit appears once in ex; a neighbour means at least two exits inside [t - w, t + w]
    n_in = np.searchsorted(ex, mine + window_ms, "right") - np.searchsorted(ex, mine - window_ms, "left")
    return float(np.mean(n_in >= 2))


# ---------------------------------------------------------------------------------------------
# the report


def _pct(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{100 * v:.1f} %"


@dataclass(frozen=True, slots=True)
class SortModeReport:
    seconds: float
    cells_per_second: float
    window_ms: float
    seed: int
    model: str
    target_classes: tuple[str, ...]
    threshold: float
    simulated_cells: int  # complete passages of true single cells and doublets
    coincident_fraction: float  # of them, with another object exiting within the window
    results: tuple[ModeResult, ...]
    wall_s: float = math.nan  # render + all replays

    def result(self, mode: str) -> ModeResult:
        for r in self.results:
            if r.mode == mode:
                return r
        raise KeyError(mode)

    def to_markdown(self) -> str:
        head = (f"Simulated {self.seconds:g} s at {self.cells_per_second:g} cells/s (seed {self.seed}): "
                f"{self.simulated_cells} complete passages, {_pct(self.coincident_fraction)} with another cell "
                f"exiting within the {self.window_ms:g} ms window. Model {self.model}, target "
                f"{'+'.join(self.target_classes)}, threshold {self.threshold:g}. "
                f"Purity/recovery of the fired cells against the truth beside the classifier's estimate; "
                f"\"sorted\" counts every cell swept into the outlet by a pulse.")
        cols = ("mode", "cells", "true targets", "fired", "purity", "est. purity", "recovery", "est. recovery",
                "sorted purity", "est. sorted purity", "sorted recovery", "est. sorted recovery", "non-targets swept along", "aborted (coincidence)", "not isolated",
                "quality gate", "late")
        lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
        for r in self.results:
            row = (r.mode, r.cells, r.targets, r.fired, _pct(r.purity), _pct(r.purity_estimate), _pct(r.recovery),
                   _pct(r.recovery_estimate), _pct(r.sorted_purity), _pct(r.sorted_purity_estimate), _pct(r.sorted_recovery),
                   _pct(r.sorted_recovery_estimate), r.swept_non_targets, r.coincidence,
                   r.not_isolated, r.quality_gate, r.late)
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
        return "\n".join(lines)

    def to_flat(self) -> dict[str, Any]:
        """A flat dict (``mimlsort bench sort-modes``); NaN becomes None."""

        def num(v):
            return None if isinstance(v, float) and not math.isfinite(v) else (round(v, 4) if isinstance(v, float) else v)

        out: dict[str, Any] = {"seconds": self.seconds, "cells_per_second": self.cells_per_second,
                               "window_ms": self.window_ms, "seed": self.seed, "model": self.model,
                               "target": "+".join(self.target_classes), "simulated_cells": self.simulated_cells,
                               "coincident_fraction": num(self.coincident_fraction)}
        for r in self.results:
            p = r.mode.replace("-", "_")
            for k in ("cells", "targets", "fired", "purity", "purity_estimate", "recovery", "recovery_estimate",
                      "sorted_purity", "sorted_purity_estimate", "sorted_recovery", "sorted_recovery_estimate",
                      "swept_non_targets", "coincidence", "not_isolated", "quality_gate", "late"):
                out[f"{p}_{k}"] = num(getattr(r, k))
        out["wall_s"] = num(self.wall_s)
        return out


# ---------------------------------------------------------------------------------------------
# running it


def run_mode(raw_path: Path, mode: str, *, model: str, window_ms: float, folder: Path, threshold: float | None = None,
             target_classes: Sequence[str] | None = None, policy_cls: type[SortPolicy] | None = None,
             write_events: bool = False, timeout_s: float = 600.0):
    """Replay ``raw_path`` lossless through the full pipeline in one sort mode; returns the finished Run.

    ``policy_cls`` replaces the policy class (e.g. :class:`AuditingPolicy`); the trigger is left out
    (decisions only: what is measured here is the policy, not the device).
    """
    from app.config import RunConfig
    from app.pipeline import FinishReason
    from app.session import build_run, with_changes

    sorting: dict[str, Any] = {"mode": mode, "window_ms": window_ms, "window_um": 0.0}
    if threshold is not None:
        sorting["threshold"] = threshold
    if target_classes is not None:
        sorting["target_classes"] = list(target_classes)
    cfg = with_changes(RunConfig(), camera={"backend": "replay", "replay.path": str(raw_path), "ring_capacity": 1024},
                       model={"path": model}, sorting=sorting,
                       output={"folder": str(folder), "sample": f"sortsim-{mode}", "write_events": write_events,
                               "report": False},
                       daemon={"log_file": ""})
    run = build_run(cfg, folder=folder, trigger=False, lossless=True)
    if policy_cls is not None and run.pipeline.policy is not None:
        run.pipeline.set_policy(policy_cls(cfg.sorting, run.pipeline.policy.class_names))
    with run:
        if not run.wait(timeout_s):
            run.stop()
            run.wait(30)
            raise StateError(f"sort-mode replay ({mode}) did not finish within {timeout_s:g} s")
    st = run.status()
    if st.finish_reason is FinishReason.ERRORED:
        raise StateError(f"sort-mode replay ({mode}) failed: {st.message}")
    if st.cells > len(run.pipeline.recent()):
        raise StateError(f"sort-mode replay ({mode}): {st.cells} cells, more than the pipeline keeps in memory "
                         f"({len(run.pipeline.recent())}); simulate fewer seconds")
    return run


def evaluate_sort_modes(seconds: float = 3.0, cells_per_second: float = 100.0, modes: Sequence[str] = MODES, *,
                        window_ms: float = 4.0, seed: int = 7, model: str = "demo", threshold: float | None = None,
                        target_classes: Sequence[str] | None = None, folder: str | Path | None = None,
                        synthetic=None, keep: bool = False) -> SortModeReport:
    """Render one simulated run, replay it through the pipeline once per mode, score each against the truth.

    ``model``: "demo" (the bundled model) or an ONNX file; ``threshold``/``target_classes``: the
    sort settings' defaults when None; ``synthetic``: SyntheticSettings to start from (duration,
    rate and seed are set from the arguments); ``folder``: where the recording and the replays' files
    go (a temporary folder, removed afterwards, when None; ``keep`` keeps the recording there).
    At most :data:`MAX_CELLS` cells (``seconds * cells_per_second``) per comparison.
    """
    import dataclasses

    from acquisition.synthetic import SyntheticSettings
    from app.config import RunConfig
    from app.session import resolve_model_path

    require(seconds > 0, "seconds", f"must be > 0, got {seconds}")
    require(cells_per_second > 0, "cells_per_second", f"must be > 0, got {cells_per_second}")
    require(window_ms >= 0, "window_ms", f"must be >= 0, got {window_ms}")
    require(seconds * cells_per_second <= MAX_CELLS, "seconds",
            f"{seconds:g} s at {cells_per_second:g} cells/s is more than the {MAX_CELLS} cells one comparison "
            f"scores (the pipeline keeps the last {MAX_CELLS + 596} decided cells in memory)")
    for m in modes:
        require(m in MODES, "modes", f"unknown sort mode {m!r} (known: {', '.join(MODES)})")
    # a missing model is a clear error before the rendering, not after it
    require(resolve_model_path(model) is not None, "model", "comparing sort modes needs a model, got none")
    base = synthetic if synthetic is not None else SyntheticSettings()
    sim = dataclasses.replace(base, duration_s=seconds, cells_per_second=cells_per_second, seed=seed, realtime=False,
                              drop_rate=0.0, failed_rate=0.0)
    defaults = RunConfig().sorting
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mimlsort-sortsim-") as tmp:
        work = Path(folder) if folder is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        raw = work / "sortsim_raw.rtdc"
        truth = record_simulation(sim, raw)
        frame_ms = 1000.0 / sim.fps
        run_ms = sim.frame_count * frame_ms
        results = []
        try:
            for mode in modes:
                run = run_mode(raw, mode, model=model, window_ms=window_ms, folder=work, threshold=threshold,
                               target_classes=target_classes)
                st = run.status()
                policy = run.pipeline.policy
                results.append(score_mode(mode, run.pipeline.recent(), truth, frame_ms=frame_ms, run_ms=run_ms,
                                          target_classes=policy.settings.target_classes,
                                          window_for=policy.settings.window_for,
                                          purity_estimate=st.purity_estimate, recovery_estimate=st.recovery_estimate,
                                          sorted_purity_estimate=st.sorted_purity_estimate,
                                          sorted_recovery_estimate=st.sorted_recovery_estimate))
        finally:
            if folder is not None and not keep:
                raw.unlink(missing_ok=True)
        from app.validate import Matching

        complete = Matching(run_ms=run_ms, frame_ms=frame_ms).is_complete
        return SortModeReport(
            seconds=seconds, cells_per_second=cells_per_second, window_ms=window_ms, seed=seed, model=model,
            target_classes=tuple(target_classes or defaults.target_classes),
            threshold=defaults.threshold if threshold is None else threshold,
            simulated_cells=sum(1 for t in truth if complete(t)),
            coincident_fraction=coincident_fraction(truth, window_ms, frame_ms=frame_ms, run_ms=run_ms),
            results=tuple(results), wall_s=time.monotonic() - t0)


def bench_sort_modes(seconds: float = 3.0, model: str | None = None) -> dict:
    """``mimlsort bench sort-modes``: purity and recovery per sort mode on one simulated run."""
    rep = evaluate_sort_modes(seconds=seconds, model=model or "demo")
    return rep.to_flat()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app.sortsim``: print the Markdown table (for BENCHMARKS.md)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m app.sortsim", description=main.__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cells-per-second", type=float, default=100.0)
    ap.add_argument("--window-ms", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--threshold", type=float)
    args = ap.parse_args(argv)
    rep = evaluate_sort_modes(args.seconds, args.cells_per_second, window_ms=args.window_ms, seed=args.seed,
                              model=args.model, threshold=args.threshold)
    print(rep.to_markdown())
    print(f"\n({rep.wall_s:.0f} s: render once, replay {len(rep.results)} times)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
