"""Sort decisions: a pure function of (event, class probabilities, settings, neighbours).

A cell is a *target* when the target classes together are more likely than any other class and
their summed probability is ≥ threshold (with one target class: its most likely class is the
target with probability ≥ threshold), it passes every feature gate and no rejected quality flag
is set. The sort mode then decides
about coincidences with the cells around it (``neighbours``: other cells whose constriction exit
lies within the coincidence window):

* ``purity`` — fire only if no non-target cell is within the window (it would be sorted along);
* ``yield`` — fire for every target, whatever is around it;
* ``single-cell`` — fire only if no other cell at all is within the window.

Every decision carries its reason, so a run can be audited afterwards.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mimlsort.pickling import by_fields
from mimlsort.settings import require
from tracking.events import CellEvent, Quality
from tracking.features import FEATURES


class Reason(str, enum.Enum):
    FIRED = "fired"
    SORTING_OFF = "sorting off"
    NOT_TARGET = "not a target class"
    BELOW_THRESHOLD = "below threshold"
    OUTSIDE_GATE = "outside gate"
    QUALITY = "quality gate"
    COINCIDENCE = "aborted by coincidence"
    NOT_ISOLATED = "not isolated"
    LATE = "late"
    TRIGGER_UNAVAILABLE = "trigger unavailable"
    REFUSED = "refused by the trigger"  # the request was out of range (e.g. a cell nearly stopped past the exit)


@dataclass(frozen=True, slots=True)
class RangeGate:
    feature: str = "di"
    min: float = -math.inf
    max: float = math.inf

    def __post_init__(self):
        require(self.feature in FEATURES, "feature", f"unknown feature {self.feature!r}")
        require(self.min <= self.max, "max", f"must be >= min ({self.min}), got {self.max}")

    def contains(self, feats) -> bool:
        v = feats.get(self.feature, math.nan)
        return self.min <= v <= self.max  # NaN is outside


@dataclass(frozen=True, slots=True)
class PolygonGate:
    """A polygon on two features, as drawn on a scatter plot (vertices in the features' units)."""

    x: str = "transit_time_ms"
    y: str = "di"
    points: tuple[tuple[float, float], ...] = ()

    def __post_init__(self):
        for k in ("x", "y"):
            require(getattr(self, k) in FEATURES, k, f"unknown feature {getattr(self, k)!r}")
        require(len(self.points) >= 3, "points", f"a polygon needs >= 3 vertices, got {len(self.points)}")

    def contains(self, feats) -> bool:
        px, py = feats.get(self.x, math.nan), feats.get(self.y, math.nan)
        if math.isnan(px) or math.isnan(py):
            return False
        inside = False
        pts = self.points
        j = len(pts) - 1
        for i in range(len(pts)):  # even-odd ray casting
            xi, yi = pts[i]
            xj, yj = pts[j]
            if (yi > py) != (yj > py) and px < (xj - xi) * (py - yi) / (yj - yi) + xi:
                inside = not inside
            j = i
        return inside

    def contains_many(self, xs, ys) -> np.ndarray:
        """:meth:`contains` for arrays of points (the plots redraw thousands of cells at a time):
        the same arithmetic in the same order, so each point gets the same answer."""
        px, py = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        inside = np.zeros(px.shape, bool)
        pts = self.points
        j = len(pts) - 1
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in range(len(pts)):
                xi, yi = pts[i]
                xj, yj = pts[j]
                crosses = (yi > py) != (yj > py)
                if yj != yi:  # else no point crosses this edge (and the division is not made)
                    inside ^= crosses & (px < (xj - xi) * (py - yi) / (yj - yi) + xi)
                j = i
        return inside & ~(np.isnan(px) | np.isnan(py))


#: the flags a policy may reject: the tracker's (NO_ROI_IMAGE is the event file's, after the decision)
_FLAGS = {q.name: q for q in Quality if q.name and q not in (Quality.OK, Quality.NO_ROI_IMAGE)}


@dataclass(frozen=True, slots=True)
class SortSettings:
    enabled: bool = True  # false: decide and record, never fire
    target_classes: tuple[str, ...] = ("hct116",)  # classes to sort out
    threshold: float = 0.5  # minimum probability of the target classes (summed when there are several)
    mode: str = "purity"  # purity | yield | single-cell
    window_ms: float = 4.0  # coincidence window around a target's exit (cells sorted along within it; ~20 µm at 5 mm/s)
    window_um: float = 0.0  # if > 0: window as a distance, converted with the cell's speed after exit
    reject_flags: tuple[str, ...] = ("DOUBLET", "BORDER", "INCOMPLETE", "STUCK", "SMALL")  # quality flags that never sort
    range_gates: tuple[RangeGate, ...] = ()  # feature ranges a cell must fall in to sort: {feature, min, max}
    polygon_gates: tuple[PolygonGate, ...] = ()  # polygons on two features (as drawn on a scatter plot): {x, y, points}

    def __post_init__(self):
        require(0.0 <= self.threshold <= 1.0, "threshold", f"must be in [0, 1], got {self.threshold}")
        # an empty list was valid, and a run sorted nothing without a word; with sorting off, cells
        # are only classified and recorded, which needs no target
        require(bool(self.target_classes) or not self.enabled, "target_classes",
                "is empty: no cell would ever be sorted; name the model's classes to sort out, or set "
                "enabled = false to classify and record without sorting")
        require(self.mode in ("purity", "yield", "single-cell"), "mode",
                f"must be purity, yield or single-cell, got {self.mode!r}")
        # finite: an endless window would abort every purity decision while sweeping no cell
        require(0 <= self.window_ms < math.inf, "window_ms", f"must be finite and >= 0, got {self.window_ms}")
        require(0 <= self.window_um < math.inf, "window_um", f"must be finite and >= 0, got {self.window_um}")
        for f in self.reject_flags:
            require(f in _FLAGS, "reject_flags", f"unknown flag {f!r} (known: {', '.join(_FLAGS)})")

    def window_for(self, event: CellEvent) -> float:
        """Coincidence window in ms for this cell."""
        if self.window_um > 0:
            v = event.features.get("v_after_mm_s", math.nan)  # mm/s == µm/ms
            if v > 0:
                return self.window_um / v
        return self.window_ms


@dataclass(frozen=True, slots=True)
class Neighbour:
    """Another cell near a candidate: its exit time (ms, run clock) and whether it is a target."""

    exit_time_ms: float
    is_target: bool


def coincidence_neighbours(exit_ms: float, window_ms: float, *, decided: Iterable[tuple[float, bool]] = (),
                           batch: Sequence[tuple[float, bool]] = (), self_index: int | None = None,
                           pending: Iterable[float] = ()) -> list[Neighbour]:
    """The cells a candidate exiting at ``exit_ms`` must be judged against (the pipeline's rule).

    ``decided``: (exit ms, is target) of cells decided in earlier batches; ``batch``: the same for
    the cells finishing in the candidate's own batch (``self_index`` is the candidate's place in it
    and is skipped); ``pending``: predicted exits of cells still in view whose class is not known
    yet — they count as non-targets, because a purity sort must not gamble on them. A neighbour is
    near when ``|its exit − exit_ms| <= window_ms`` (edge inclusive); a NaN exit is never near.
    """
    near = [Neighbour(te, tg) for te, tg in decided if abs(te - exit_ms) <= window_ms]
    near += [Neighbour(te, tg) for j, (te, tg) in enumerate(batch) if j != self_index and abs(te - exit_ms) <= window_ms]
    near += [Neighbour(te, False) for te in pending if abs(te - exit_ms) <= window_ms]
    return near


@by_fields
@dataclass(frozen=True, slots=True)
class Decision:
    event_index: int
    fire: bool
    reason: Reason
    predicted: str  # most likely class
    probability: float  # of the most likely class
    is_target: bool
    detail: str = ""
    # the coincidence window this cell was judged with (ms; NaN for a cell that was no target):
    # for a fired cell, the stretch of the stream its pulse sorts, so the file says which cells
    # went into the outlet along with it
    window_ms: float = math.nan


class SortPolicy:
    """Decides per cell; holds only settings and class names (no run state)."""

    def __init__(self, settings: SortSettings, class_names: Sequence[str]):
        unknown = [c for c in settings.target_classes if c not in class_names]
        require(not unknown, "sorting.target_classes",
                f"{unknown} not among the model's classes {list(class_names)}")
        self.settings = settings
        self.class_names = tuple(class_names)
        self._target_idx = frozenset(self.class_names.index(c) for c in settings.target_classes)
        self._targets = tuple(sorted(self._target_idx))
        self._others = tuple(i for i in range(len(self.class_names)) if i not in self._target_idx)
        reject = Quality(0)
        for f in settings.reject_flags:
            reject |= _FLAGS[f]
        # plain ints and a tuple: Flag arithmetic and argument unpacking cost tens of µs per cell
        # on the sort path (its code is out of the caches between cells)
        self._reject = int(reject)
        self._gates = (*settings.range_gates, *settings.polygon_gates)

    def p_target(self, probs) -> float:
        """P(target): the summed probability of the target classes (what the threshold and the
        purity and recovery estimates take)."""
        p = probs.tolist() if isinstance(probs, np.ndarray) else probs
        return float(sum(p[i] for i in self._targets))

    def target(self, event: CellEvent, probs: np.ndarray) -> tuple[bool, Reason, str]:
        """Whether the cell alone qualifies as a target, and if not, why."""
        # the target classes count as one: with targets {a, b}, a cell at (a .40, b .35, c .25) is a
        # target at P 0.75 (taking the single most likely class left it "below threshold" at 0.40)
        p = probs.tolist()
        pt = sum(p[i] for i in self._targets)
        k = max(self._others, key=p.__getitem__) if self._others else -1
        if k >= 0 and not pt > p[k]:  # written so that NaN probabilities never make a target
            return False, Reason.NOT_TARGET, self.class_names[k]
        if not pt >= self.settings.threshold:
            return False, Reason.BELOW_THRESHOLD, f"p={pt:.3f} < {self.settings.threshold}"
        bad = int(event.quality) & self._reject
        if bad:
            return False, Reason.QUALITY, str(Quality(bad).name)
        for g in self._gates:
            if not g.contains(event.features):
                return False, Reason.OUTSIDE_GATE, repr(g)
        return True, Reason.FIRED, ""

    def decide(self, event: CellEvent, probs: np.ndarray, neighbours: Sequence[Neighbour] = (),
               target: tuple[bool, Reason, str] | None = None) -> Decision:
        """The decision for one cell; ``target`` is :meth:`target`'s answer when already known."""
        s = self.settings
        k = int(probs.argmax())
        is_target, reason, detail = target if target is not None else self.target(event, probs)
        fire = is_target
        window = math.nan
        if is_target:
            window = s.window_for(event)
            t = event.features.get("exit_time_ms", math.nan)
            near = [n for n in neighbours if abs(n.exit_time_ms - t) <= window]
            if s.window_um > 0 and not event.features.get("v_after_mm_s", math.nan) > 0:
                detail = f"speed after exit unknown: window {window:g} ms (window_ms) instead of {s.window_um:g} µm"
            if s.mode != "yield" and not math.isfinite(t):
                # no exit time, no coincidence check: a purity or single-cell sort does not gamble
                fire, reason = False, (Reason.COINCIDENCE if s.mode == "purity" else Reason.NOT_ISOLATED)
                detail = "exit time unknown: coincidences cannot be ruled out"
            elif s.mode == "purity" and any(not n.is_target for n in near):
                fire, reason = False, Reason.COINCIDENCE
                detail = f"{sum(not n.is_target for n in near)} non-target cell(s) within {window:.3g} ms"
            elif s.mode == "single-cell" and near:
                fire, reason = False, Reason.NOT_ISOLATED
                detail = f"{len(near)} cell(s) within {window:.3g} ms"
            if fire and not s.enabled:
                fire, reason = False, Reason.SORTING_OFF
        return Decision(event.index, fire, reason, self.class_names[k], float(probs[k]), is_target, detail, window)


#: how far (ms) out of exit order a cell may be decided and still be matched to a pulse around it
OUTLET_SLACK_MS = 50.0
#: an exit this far (ms) before the newest is a camera clock that started again (a reconnect)
OUTLET_RESTART_MS = 10_000.0
#: cells and pulses held for the outlet rule at most (a bound whatever the windows and exit times)
OUTLET_HELD = 4096


@dataclass
class SortCounters:
    """Run counters, owned by the thread that decides.

    Two kinds of estimate, both from the classifier's probabilities (there is no truth at the
    sorter): of the *fired* cells (mean P(target) over them), and of the *sorted set*, what ends up
    in the outlet: the fired cells and every cell whose exit lies within a fired cell's coincidence
    window (``Decision.window_ms``), which its pulse sweeps along. Yield mode fires into such
    coincidences, so there the outlet is less pure than the fired cells; purity mode aborts them.
    """

    class_names: tuple[str, ...]
    seen: int = 0
    fired: int = 0
    swept: int = 0  # cells not fired themselves but within a fired cell's window (into the outlet)
    per_class: dict[str, int] = field(default_factory=dict)
    not_fired: dict[str, int] = field(default_factory=dict)
    # the estimates' sums, since the run started or the target classes last changed
    _p_target_fired: float = 0.0  # Σ P(target) over fired cells
    _p_target_all: float = 0.0  # Σ P(target) over all cells
    _fired_est: int = 0  # fired cells in those sums
    _p_target_outlet: float = 0.0  # Σ P(target) over the sorted set
    _outlet_est: int = 0  # cells in the sorted set
    # recent cells [exit ms, P(target), in the outlet, counted in the current estimates] and
    # pulses (exit ms, window ms): a cell decided after the pulse that sweeps it, or before it,
    # is matched either way
    _recent: deque = field(default_factory=lambda: deque(maxlen=OUTLET_HELD))
    _pulses: deque = field(default_factory=lambda: deque(maxlen=OUTLET_HELD))
    _newest_exit: float = -math.inf

    def add(self, decision: Decision, p_target: float, exit_ms: float = math.nan) -> None:
        self.seen += 1
        self.per_class[decision.predicted] = self.per_class.get(decision.predicted, 0) + 1
        self._p_target_all += p_target
        if decision.fire:
            self.fired += 1
            self._fired_est += 1
            self._p_target_fired += p_target
        else:
            self.not_fired[decision.reason.value] = self.not_fired.get(decision.reason.value, 0) + 1
        self._outlet(decision, p_target, exit_ms)

    def _outlet(self, decision: Decision, p_target: float, exit_ms: float) -> None:
        if decision.fire:
            self._outlet_est += 1
            self._p_target_outlet += p_target
        if not math.isfinite(exit_ms):  # no exit time: in the outlet only if fired itself
            return
        if exit_ms < self._newest_exit - OUTLET_RESTART_MS:
            # the camera clock started again: the cells before are nobody's neighbours now
            self._recent.clear()
            self._pulses.clear()
            self._newest_exit = -math.inf
        cell = [exit_ms, p_target, decision.fire, True]
        w = decision.window_ms
        if decision.fire and 0 < w < math.inf:
            for other in self._recent:  # cells decided before it, within its window
                if not other[2] and abs(other[0] - exit_ms) <= w:
                    self._sweep(other)
            self._pulses.append((exit_ms, w))
        elif not decision.fire:
            for te, tw in self._pulses:  # pulses decided before it
                if abs(te - exit_ms) <= tw:
                    self._sweep(cell)
                    break
        self._recent.append(cell)
        # cells are decided roughly in exit order: keep what a later pulse or cell can still reach
        if exit_ms > self._newest_exit:
            self._newest_exit = exit_ms
        horizon = self._newest_exit - OUTLET_SLACK_MS - max((tw for _, tw in self._pulses), default=0.0)
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        while self._pulses and self._pulses[0][0] < horizon:
            self._pulses.popleft()

    def _sweep(self, cell: list) -> None:
        cell[2] = True
        self.swept += 1
        if cell[3]:  # not from before the estimates restarted
            self._outlet_est += 1
            self._p_target_outlet += cell[1]

    def restart_estimates(self) -> None:
        """New target classes: P(target) means something else from now on, so the purity and
        recovery estimates start again (the counts go on)."""
        self._p_target_fired = self._p_target_all = self._p_target_outlet = 0.0
        self._fired_est = self._outlet_est = 0
        for cell in self._recent:
            cell[3] = False

    @property
    def purity_estimate(self) -> float:
        """Expected fraction of targets among fired cells, from the classifier's probabilities."""
        n = self._fired_est  # read once: the deciding thread may restart the estimates meanwhile
        return self._p_target_fired / n if n else math.nan

    @property
    def recovery_estimate(self) -> float:
        """Expected fraction of all targets that were fired."""
        total = self._p_target_all
        return self._p_target_fired / total if total > 0 else math.nan

    @property
    def sorted_purity_estimate(self) -> float:
        """Expected fraction of targets in the outlet (fired cells and those swept along)."""
        n = self._outlet_est
        return self._p_target_outlet / n if n else math.nan

    @property
    def sorted_recovery_estimate(self) -> float:
        """Expected fraction of all targets that reached the outlet."""
        total = self._p_target_all
        return self._p_target_outlet / total if total > 0 else math.nan


def sorted_set(exit_ms: np.ndarray, fired: np.ndarray, window_ms: np.ndarray) -> np.ndarray:
    """Which cells reached the outlet: the fired ones and every cell whose exit lies within a fired
    cell's window (the offline form of :class:`SortCounters`' rule, for a whole file)."""
    exit_ms = np.asarray(exit_ms, float)
    out = np.asarray(fired, bool).copy()
    order = np.argsort(exit_ms, kind="stable")
    ex = exit_ms[order]
    window_ms = np.asarray(window_ms, float)
    for i in np.flatnonzero(out & np.isfinite(exit_ms) & (window_ms > 0) & np.isfinite(window_ms)):
        e, w = exit_ms[i], window_ms[i]
        # a range a little wide, then the live rule's own test: |Δexit| <= window, rounded as it is
        lo, hi = np.searchsorted(ex, e - 1.001 * w, "left"), np.searchsorted(ex, e + 1.001 * w, "right")
        near = order[lo:hi]
        out[near[np.abs(exit_ms[near] - e) <= w]] = True
    return out
