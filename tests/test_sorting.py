import math

import numpy as np
import pytest

from app.sorting import (Decision, Neighbour, PolygonGate, RangeGate, Reason, SortCounters, SortPolicy,
                         SortSettings, sorted_set)
from mimlsort.errors import ConfigError
from mimlsort.settings import from_mapping
from tracking.events import CellEvent, Quality

CLASSES = ("hct116", "wbc")


def ev(index=0, exit_ms=10.0, quality=Quality.OK, **feats):
    f = {"exit_time_ms": exit_ms, "di": 0.7, "transit_time_ms": 1.0, "v_after_mm_s": 10.0, **feats}
    z = np.zeros((4, 4), np.uint8)
    return CellEvent(index, index, f, z, z, 0.5, 1, 2, 0, quality)


TARGET = np.array([0.9, 0.1], np.float32)
OTHER = np.array([0.2, 0.8], np.float32)


def policy(**kw):
    return SortPolicy(SortSettings(**kw), CLASSES)


def test_target_fires_and_non_target_does_not():
    p = policy()
    assert p.decide(ev(), TARGET).reason is Reason.FIRED
    d = p.decide(ev(), OTHER)
    assert not d.fire and d.reason is Reason.NOT_TARGET and d.predicted == "wbc"


def test_threshold_quality_and_gates():
    assert policy(threshold=0.95).decide(ev(), TARGET).reason is Reason.BELOW_THRESHOLD
    assert policy().decide(ev(quality=Quality.DOUBLET), TARGET).reason is Reason.QUALITY
    assert policy(reject_flags=()).decide(ev(quality=Quality.DOUBLET), TARGET).fire
    gate = RangeGate("di", 0.75, 1.0)
    assert policy(range_gates=(gate,)).decide(ev(), TARGET).reason is Reason.OUTSIDE_GATE
    square = PolygonGate("transit_time_ms", "di", ((0.5, 0.5), (1.5, 0.5), (1.5, 0.9), (0.5, 0.9)))
    assert policy(polygon_gates=(square,)).decide(ev(), TARGET).fire
    assert policy(polygon_gates=(square,)).decide(ev(transit_time_ms=2.0), TARGET).reason is Reason.OUTSIDE_GATE
    assert policy(polygon_gates=(square,)).decide(ev(di=math.nan), TARGET).reason is Reason.OUTSIDE_GATE


@pytest.mark.parametrize("mode, neighbours, fire, reason", [
    ("purity", [Neighbour(10.3, False)], False, Reason.COINCIDENCE),     # non-target inside window
    ("purity", [Neighbour(10.3, True)], True, Reason.FIRED),             # another target is fine
    ("purity", [Neighbour(10.6, False)], True, Reason.FIRED),            # non-target just outside 0.5 ms
    ("purity", [Neighbour(9.5, False)], False, Reason.COINCIDENCE),      # window is symmetric (edge inclusive)
    ("yield", [Neighbour(10.1, False)], True, Reason.FIRED),
    ("single-cell", [Neighbour(10.2, True)], False, Reason.NOT_ISOLATED),
    ("single-cell", [Neighbour(11.0, True)], True, Reason.FIRED),
])
def test_coincidence_modes(mode, neighbours, fire, reason):
    d = policy(mode=mode, window_ms=0.5).decide(ev(exit_ms=10.0), TARGET, neighbours)
    assert (d.fire, d.reason) == (fire, reason)


def test_window_in_um_uses_speed_after_exit():
    # 10 µm at 10 mm/s (= 10 µm/ms) is 1 ms: a non-target 0.8 ms away now aborts
    p = policy(window_um=10.0, window_ms=0.1)
    assert p.decide(ev(exit_ms=10.0), TARGET, [Neighbour(10.8, False)]).reason is Reason.COINCIDENCE
    assert p.decide(ev(exit_ms=10.0, v_after_mm_s=40.0), TARGET, [Neighbour(10.8, False)]).fire
    # speed unknown: window_ms stands in, and the decision says so
    d = p.decide(ev(exit_ms=10.0, v_after_mm_s=math.nan), TARGET, [Neighbour(10.8, False)])
    assert d.fire and "window 0.1 ms (window_ms) instead of 10 µm" in d.detail


def test_sorting_off_records_but_never_fires():
    d = policy(enabled=False).decide(ev(), TARGET)
    assert not d.fire and d.reason is Reason.SORTING_OFF and d.is_target


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^sorting\.threshold: must be in \[0, 1\], got 1.5"):
        from_mapping(SortSettings, {"threshold": 1.5}, "sorting")
    with pytest.raises(ConfigError, match="sorting.target_classes"):
        SortPolicy(SortSettings(target_classes=("t4",)), CLASSES)
    with pytest.raises(ConfigError, match=r"sorting\.polygon_gates\[0\]\.points"):
        from_mapping(SortSettings, {"polygon_gates": [{"points": [[0, 0], [1, 1]]}]}, "sorting")


def test_counters_estimate_purity_and_recovery():
    c = SortCounters(CLASSES)
    c.add(Decision(0, True, Reason.FIRED, "hct116", 0.9, True), 0.9)
    c.add(Decision(1, True, Reason.FIRED, "hct116", 0.7, True), 0.7)
    c.add(Decision(2, False, Reason.NOT_TARGET, "wbc", 0.6, False), 0.4)
    assert c.fired == 2 and c.seen == 3
    assert c.purity_estimate == pytest.approx(0.8)
    assert c.recovery_estimate == pytest.approx(1.6 / 2.0)
    assert c.not_fired == {"not a target class": 1}


def test_gate_test_on_arrays_agrees_with_the_policys_test_point_by_point():
    # the plots count cells in the gate with contains_many; sorting decides with contains
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(3, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(0.3, 1.0, n)
        pts = tuple((float(1 + a * np.cos(t)), float(0.5 + 0.4 * a * np.sin(t))) for a, t in zip(r, ang))
        if rng.random() < 0.3:
            pts = pts[::-1] + ((1.0, 0.5),)  # other orientation, a vertex inside
        gate = PolygonGate("transit_time_ms", "di", pts)
        xs = rng.uniform(-0.2, 2.2, 400)
        ys = rng.uniform(-0.1, 1.1, 400)
        xs[:5] = [p[0] for p in pts[:5]] if len(pts) >= 5 else xs[:5]  # vertices themselves
        ys[:5] = [p[1] for p in pts[:5]] if len(pts) >= 5 else ys[:5]
        xs[7], ys[8] = np.nan, np.nan
        want = [gate.contains({"transit_time_ms": a, "di": b}) for a, b in zip(xs, ys)]
        got = gate.contains_many(xs, ys)
        assert got.tolist() == want
        assert 0 < sum(want) < len(want)


def test_several_target_classes_count_as_one():
    classes = ("a", "b", "c")
    both = SortPolicy(SortSettings(target_classes=("a", "b"), threshold=0.7), classes)
    cell = np.array([0.40, 0.35, 0.25], np.float32)  # most likely class a, but P(a or b) = 0.75
    d = both.decide(ev(), cell)
    assert d.fire and d.reason is Reason.FIRED and d.predicted == "a"
    assert both.p_target(cell) == pytest.approx(0.75)
    # c is the most likely single class, yet a or b is more likely than c
    assert SortPolicy(SortSettings(target_classes=("a", "b")), classes).decide(ev(), np.array([0.3, 0.3, 0.4])).fire
    assert both.decide(ev(), np.array([0.36, 0.3, 0.34], np.float32)).reason is Reason.BELOW_THRESHOLD
    d = both.decide(ev(), np.array([0.2, 0.1, 0.7], np.float32))
    assert d.reason is Reason.NOT_TARGET and "c" in d.detail
    # one target class: its probability must beat every other class's, as the most likely class did
    only_a = SortPolicy(SortSettings(target_classes=("a",), threshold=0.3), classes)
    assert only_a.decide(ev(), cell).fire
    assert only_a.decide(ev(), np.array([0.35, 0.40, 0.25], np.float32)).reason is Reason.NOT_TARGET
    # a model that gave NaN (a broken input) never makes a target
    assert not only_a.decide(ev(), np.array([np.nan, np.nan, np.nan], np.float32)).fire
    single = SortPolicy(SortSettings(target_classes=("a", "b", "c"), threshold=0.0), classes)
    assert not single.decide(ev(), np.array([np.nan, 0.1, 0.1], np.float32)).fire


@pytest.mark.parametrize("mode, fire, reason", [
    ("purity", False, Reason.COINCIDENCE), ("single-cell", False, Reason.NOT_ISOLATED), ("yield", True, Reason.FIRED),
])
def test_a_target_without_an_exit_time_is_not_gambled_on(mode, fire, reason):
    # INCOMPLETE taken off reject_flags: no exit time, so no neighbour can be ruled out
    d = policy(mode=mode, reject_flags=()).decide(ev(exit_ms=math.nan, quality=Quality.INCOMPLETE), TARGET,
                                                   [Neighbour(10.0, False)])
    assert (d.fire, d.reason) == (fire, reason)
    if not fire:
        assert "exit time unknown" in d.detail


def test_estimates_restart_with_new_targets_while_the_counts_go_on():
    c = SortCounters(CLASSES)
    c.add(Decision(0, True, Reason.FIRED, "hct116", 0.9, True), 0.9)
    c.add(Decision(1, False, Reason.NOT_TARGET, "wbc", 0.8, False), 0.2)
    assert c.purity_estimate == pytest.approx(0.9) and c.recovery_estimate == pytest.approx(0.9 / 1.1)
    c.restart_estimates()
    assert math.isnan(c.purity_estimate) and math.isnan(c.recovery_estimate)
    c.add(Decision(2, True, Reason.FIRED, "wbc", 0.7, True), 0.7)
    assert (c.seen, c.fired) == (3, 2)
    assert c.purity_estimate == pytest.approx(0.7) and c.recovery_estimate == pytest.approx(1.0)


def _d(i: int, fire: bool, window: float = math.nan, p: float = 0.9) -> Decision:
    return Decision(i, fire, Reason.FIRED if fire else Reason.NOT_TARGET, "hct116" if fire else "wbc", p, fire,
                    "", window)


def test_outlet_counts_cells_swept_along_decided_before_or_after_the_pulse():
    c = SortCounters(CLASSES)
    c.add(_d(0, False), 0.1, 100.0)  # decided before the pulse that sweeps it
    c.add(_d(1, True, window=4.0), 0.9, 103.0)
    c.add(_d(2, False), 0.2, 106.5)  # decided after it, within its window
    c.add(_d(3, False), 0.3, 107.5)  # 4.5 ms away: stays in the stream
    c.add(_d(4, False), 0.05, math.nan)  # no exit time: never swept
    assert c.swept == 2 and c.fired == 1
    assert c.purity_estimate == pytest.approx(0.9)
    # the outlet: cells 0, 1 and 2
    assert c.sorted_purity_estimate == pytest.approx((0.1 + 0.9 + 0.2) / 3)
    assert c.sorted_recovery_estimate == pytest.approx((0.1 + 0.9 + 0.2) / (0.1 + 0.9 + 0.2 + 0.3 + 0.05))
    # a cell in two pulses' windows goes into the outlet once
    c.add(_d(5, True, window=4.0), 0.8, 110.0)
    assert c.swept == 3  # cell 3 (107.5) is 2.5 ms from the new pulse
    c.add(_d(6, True, window=4.0), 0.8, 111.0)  # fired itself: not "swept", counted once
    assert c.swept == 3 and c.sorted_purity_estimate == pytest.approx((0.1 + 0.9 + 0.2 + 0.3 + 0.8 + 0.8) / 6)


def test_outlet_forgets_old_cells_and_restarts_with_the_estimates():
    c = SortCounters(CLASSES)
    for i in range(2000):  # a long run: what the counters keep stays a few ms of cells long
        c.add(_d(i, i % 7 == 0, window=3.0 if i % 7 == 0 else math.nan), 0.5, 2.0 * i)
    assert len(c._recent) < 50 and len(c._pulses) < 10
    c.restart_estimates()
    assert math.isnan(c.sorted_purity_estimate)
    swept = c.swept
    c.add(_d(5000, True, window=2.0), 0.9, 2.0 * 1999 + 1.0)  # sweeps cell 1999 alone, decided before the restart
    assert c.swept == swept + 1
    # ... whose P(target) meant another target and stays out of the new estimate
    assert c.sorted_purity_estimate == pytest.approx(0.9)


def test_sorted_set_of_a_file_agrees_with_the_live_counters():
    rng = np.random.default_rng(11)
    n = 400
    exits = np.cumsum(rng.exponential(3.0, n)) + rng.normal(0, 1.0, n)  # decided slightly out of exit order
    exits[rng.random(n) < 0.03] = np.nan
    fired = rng.random(n) < 0.3
    window = np.where(fired, rng.uniform(0.5, 5.0, n), np.nan)
    p = rng.random(n)
    c = SortCounters(CLASSES)
    for i in range(n):
        c.add(_d(i, bool(fired[i]), float(window[i])), float(p[i]), float(exits[i]))
    out = sorted_set(exits, fired, window)
    # brute force: fired, or within some fired cell's window
    brute = fired.copy()
    for i in np.flatnonzero(fired & np.isfinite(exits)):
        brute |= np.abs(exits - exits[i]) <= window[i]
    np.testing.assert_array_equal(out, brute)
    assert c.swept == int((out & ~fired).sum()) > 0
    assert c.sorted_purity_estimate == pytest.approx(p[out].mean())
    assert c.sorted_recovery_estimate == pytest.approx(p[out].sum() / p.sum())


def test_decision_carries_the_window_it_was_judged_with():
    d = policy(mode="yield", window_ms=3.5).decide(ev(), TARGET)
    assert d.fire and d.window_ms == 3.5
    d = policy(mode="yield", window_um=20.0).decide(ev(), TARGET)
    assert d.window_ms == pytest.approx(20.0 / 10.0)  # 20 µm at 10 mm/s
    d = policy(window_ms=3.5).decide(ev(), OTHER)
    assert not d.is_target and math.isnan(d.window_ms)


def test_live_and_file_outlet_rules_agree_at_the_windows_edge():
    # exits on a 0.1 ms grid exactly one window apart: e ± w and |a − e| round differently
    rng = np.random.default_rng(3)
    n = 3000
    exits = np.round(np.cumsum(rng.integers(1, 4, n)) * 0.1, 1) + 800.0
    fired = rng.random(n) < 0.3
    window = np.where(fired, 0.1 * rng.integers(1, 4, n), np.nan)
    c = SortCounters(CLASSES)
    for i in range(n):
        c.add(_d(i, bool(fired[i]), float(window[i])), 0.5, float(exits[i]))
    brute = fired.copy()
    for i in np.flatnonzero(fired):
        brute |= np.abs(exits - exits[i]) <= window[i]
    np.testing.assert_array_equal(sorted_set(exits, fired, window), brute)
    assert c.swept == int((brute & ~fired).sum())


def test_outlet_rule_stays_small_through_a_camera_clock_restart_and_odd_values():
    c = SortCounters(CLASSES)
    for i in range(1000):
        c.add(_d(i, i % 10 == 0, 2.0 if i % 10 == 0 else math.nan), 0.5, 1e7 + 2.0 * i)
    # a reconnected camera's clock starts again near zero: the cells before it are not held for ever
    for i in range(5000):
        c.add(_d(i, i % 10 == 0, 2.0 if i % 10 == 0 else math.nan), 0.5, 2.0 * i)
    assert len(c._recent) < 100 and len(c._pulses) < 20
    swept = c.swept
    c.add(_d(1, True, math.inf), 0.9, 2.0 * 5000)  # an unbounded window sweeps nothing, holds nothing
    c.add(_d(2, False), 0.1, math.inf)  # an infinite exit time is no exit time
    assert c.swept == swept and len(c._pulses) < 20
    c.add(_d(3, False), 0.1, 2.0 * 5000 + 1.0)  # the rule still works after them
    c.add(_d(4, True, 2.0), 0.9, 2.0 * 5000 + 2.0)
    assert c.swept == swept + 1


def test_an_endless_coincidence_window_is_refused():
    # it would abort every purity decision while its pulses swept no cell
    for key in ("window_ms", "window_um"):
        with pytest.raises(ConfigError, match=rf"^sorting\.{key}: must be finite"):
            from_mapping(SortSettings, {key: math.inf}, "sorting")
