"""Compare tracker events with the synthetic camera's ground truth.

An event is matched to the truth cell whose constriction entry time is nearest (within
``tolerance_frames``); it is an *identity swap* if its exit time is nearer another cell's exit.
Only cells whose whole passage lies inside the run (and that are not debris) count as complete
passages the tracker must find.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tracking.events import CellEvent, Quality


@dataclass
class Matching:
    pairs: list[tuple[CellEvent, object]] = field(default_factory=list)
    unmatched_events: list[CellEvent] = field(default_factory=list)
    missed_truth: list[object] = field(default_factory=list)
    swaps: int = 0
    complete_truth: int = 0
    run_ms: float = math.inf
    frame_ms: float = 0.0

    def is_complete(self, t: object) -> bool:
        return _complete(t, self.run_ms, self.frame_ms)

    @property
    def detection_rate(self) -> float:
        found = sum(1 for _, t in self.pairs if self.is_complete(t))
        return found / self.complete_truth if self.complete_truth else math.nan

    def errors(self) -> dict[str, float]:
        """Per-cell errors of complete, unflagged cell passages (not debris/doublets)."""
        ok = [(e, t) for e, t in self.pairs if t.kind == "cell" and self.is_complete(t)
              and not (e.quality & (Quality.DOUBLET | Quality.INCOMPLETE | Quality.STUCK))]
        if not ok:
            return {"n": 0}
        di = np.array([abs(e.features["di"] - t.di_max) for e, t in ok])
        tt = np.array([abs(e.features["transit_time_ms"] - t.transit_ms) for e, t in ok])
        vr = np.array([abs(e.features["v_max_mm_s"] / t.v_max_mm_s - 1.0) for e, t in ok])
        return {
            "n": len(ok),
            "di_mae": float(np.nanmean(di)),
            "di_p95": float(np.nanpercentile(di, 95)),
            "transit_err_max_frames": float(np.nanmax(tt) / self.frame_ms) if self.frame_ms else math.nan,
            "transit_err_mean_frames": float(np.nanmean(tt) / self.frame_ms) if self.frame_ms else math.nan,
            "v_max_rel_err_mean": float(np.nanmean(vr)),
            "v_max_rel_err_p95": float(np.nanpercentile(vr, 95)),
        }


def _complete(t: object, run_ms: float, frame_ms: float) -> bool:
    """A real cell whose passage (with room to be emitted after it) lies inside the run."""
    return (t.kind in ("cell", "doublet") and not math.isnan(t.entry_ms) and not math.isnan(t.exit_ms)
            and t.entry_ms > 2 * frame_ms and t.exit_ms < run_ms - 20 * frame_ms)


def match_events(events: Sequence[CellEvent], truth: Sequence[object], *, run_ms: float = math.inf,
                 frame_ms: float = 0.0, tolerance_frames: float = 2.0) -> Matching:
    m = Matching(run_ms=run_ms, frame_ms=frame_ms)
    cand = [t for t in truth if t.kind in ("cell", "doublet") and not math.isnan(t.entry_ms)]
    entries = np.array([t.entry_ms for t in cand]) if cand else np.zeros(0)
    exits = np.array([t.exit_ms for t in cand]) if cand else np.zeros(0)
    tol = tolerance_frames * frame_ms if frame_ms else 1.0
    used: set[int] = set()
    for e in events:
        te = e.features.get("entry_time_ms", math.nan)
        tx = e.features.get("exit_time_ms", math.nan)
        if math.isnan(te) or not len(entries):
            m.unmatched_events.append(e)
            continue
        i = int(np.argmin(np.abs(entries - te)))
        if abs(entries[i] - te) > tol or i in used:
            m.unmatched_events.append(e)
            continue
        used.add(i)
        m.pairs.append((e, cand[i]))
        if not math.isnan(tx):
            j = int(np.nanargmin(np.abs(exits - tx)))
            if j != i and abs(exits[j] - tx) < abs(exits[i] - tx):
                m.swaps += 1
    m.missed_truth = [t for k, t in enumerate(cand) if k not in used and _complete(t, run_ms, frame_ms)]
    m.complete_truth = sum(1 for t in cand if _complete(t, run_ms, frame_ms))
    return m


def travel_errors(matching: Matching, distance_um: float, *, queued: bool = False) -> np.ndarray:
    """For each single cell matched to its truth (not stuck; not queued behind the cell ahead, or
    with ``queued`` only those that were; exit seen): the travel
    time from the constriction exit to a junction ``distance_um`` further on that its sort pulse
    is timed with (:func:`hardware.timing.fire_time_ns` from the event's ``v_after_mm_s`` and
    ``exit_easing_ms``), relative to the truth's (``distance_um / v_after_mm_s`` of the
    simulator, which leaves out the ~1% a cell gains while it slows down past the exit)
    minus 1: 0.05 is a pulse 5% of the travel late."""
    from hardware.timing import TimingSettings, fire_time_ns

    timing = TimingSettings(distance_to_junction_um=distance_um)
    out = []
    for ev, tr in matching.pairs:
        if (getattr(tr, "kind", "cell") != "cell" or tr.stuck_ms > 0 or (tr.queued_ms > 0) != queued
                or not math.isfinite(ev.features.get("exit_time_ms", math.nan)) or not tr.v_after_mm_s > 0):
            continue
        ease = (ev.extra or {}).get("exit_easing_ms", 0.0)
        got_ms = fire_time_ns(0, ev.features.get("v_after_mm_s", math.nan), timing, ease) / 1e6
        out.append(got_ms / (distance_um / tr.v_after_mm_s) - 1.0)  # mm/s = µm/ms
    return np.array(out, np.float64)
