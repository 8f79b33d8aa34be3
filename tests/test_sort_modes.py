"""Sort modes: the purity mode's abort logic on crafted coincidences, and every mode measured on one
simulated run with known classes, replayed lossless through the real pipeline (app.sortsim).

The crafted tests need no model. The simulated-run tests use the bundled demonstration model and
skip while it has not been built; they audit each decision against what the pipeline knew (the
neighbour lists handed to the policy, the decided records, the event file's exit times).
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

import numpy as np
import pytest

from acquisition.synthetic import SyntheticSettings, TruthRecord
from app.config import bundled_model_path
from app.records import CellRecord
from app.sortsim import (
    AuditingPolicy,
    ModeResult,
    bench_sort_modes,
    coincidence_neighbours,
    evaluate_sort_modes,
    record_simulation,
    run_mode,
    score_mode,
)
from app.sorting import Decision, Neighbour, Reason, SortPolicy, SortSettings, sorted_set
from mimlsort.errors import ConfigError
from tracking.events import CellEvent, Quality

CLASSES = ("hct116", "wbc")
TARGET = np.array([0.9, 0.1], np.float32)
OTHER = np.array([0.2, 0.8], np.float32)
W = 4.0  # ms, the coincidence window of the crafted cases


def ev(index=0, exit_ms=100.0, entry_ms=None, quality=Quality.OK, **feats):
    f = {"exit_time_ms": exit_ms, "entry_time_ms": exit_ms - 3.0 if entry_ms is None else entry_ms, "di": 0.7,
         "transit_time_ms": 3.0, "v_after_mm_s": 5.0, **feats}
    z = np.zeros((4, 4), np.uint8)
    return CellEvent(index, index, f, z, z, 0.5, 4 * index, 4 * index + 12, 0, quality)


def decide_batch(policy, events, probs, decided=(), pending=()):
    """Decide one batch of finished cells exactly as the pipeline does: targets first (so cells of
    the same batch see each other), then each cell against decided, same-batch and pending cells."""
    targets = [policy.target(e, p)[0] for e, p in zip(events, probs)]
    batch = [(e.features["exit_time_ms"], tg) for e, tg in zip(events, targets)]
    out = []
    for i, (e, p) in enumerate(zip(events, probs)):
        near = coincidence_neighbours(e.features["exit_time_ms"], policy.settings.window_for(e), decided=decided,
                                      batch=batch, self_index=i, pending=pending)
        out.append(policy.decide(e, p, near))
    return out


def policy(mode="purity", **kw):
    return SortPolicy(SortSettings(mode=mode, window_ms=W, **kw), CLASSES)


# ---------------------------------------------------------------------------------------------
# crafted coincidences (no model needed)


@pytest.mark.parametrize("offset, aborted", [
    (W, True),  # exactly at the window: inside (edge inclusive)
    (-W, True),  # the window is symmetric: a cell exiting before counts the same
    (W * (1 + 1e-9), False),  # just outside
    (-W * (1 + 1e-9), False),
    (0.0, True),  # exiting at the same time
])
def test_decided_non_target_at_window_edges(offset, aborted):
    d = decide_batch(policy(), [ev(exit_ms=100.0)], [TARGET], decided=[(100.0 + offset, False)])[0]
    assert d.is_target
    assert (d.fire, d.reason) == ((False, Reason.COINCIDENCE) if aborted else (True, Reason.FIRED))
    assert ("1 non-target" in d.detail) == aborted


def test_target_flanked_by_targets():
    # decided target before, same-batch target after: purity and yield fire, single-cell does not
    events = [ev(0, exit_ms=100.0), ev(1, exit_ms=103.0)]
    decided = [(97.0, True)]
    for mode, fire, reason in (("purity", True, Reason.FIRED), ("yield", True, Reason.FIRED),
                               ("single-cell", False, Reason.NOT_ISOLATED)):
        d = decide_batch(policy(mode), events, [TARGET, TARGET], decided=decided)[0]
        assert (d.fire, d.reason) == (fire, reason), mode
    # the flanking cell's class decides: a non-target on one side aborts the purity sort
    d = decide_batch(policy("purity"), events, [TARGET, OTHER], decided=decided)
    assert (d[0].fire, d[0].reason) == (False, Reason.COINCIDENCE)
    assert (d[1].fire, d[1].reason) == (False, Reason.NOT_TARGET)  # the non-target itself is never fired


def test_same_batch_cells_see_each_other_but_not_themselves():
    p = policy("single-cell")
    assert decide_batch(p, [ev(0, exit_ms=100.0)], [TARGET])[0].fire  # alone in its batch
    d = decide_batch(p, [ev(0, exit_ms=100.0), ev(1, exit_ms=100.0 + W)], [TARGET, TARGET])
    assert [x.reason for x in d] == [Reason.NOT_ISOLATED, Reason.NOT_ISOLATED]
    # a below-threshold cell of the target class is a non-target for its neighbours
    d = decide_batch(policy("purity", threshold=0.95), [ev(0, exit_ms=100.0), ev(1, exit_ms=102.0)],
                     [np.array([0.99, 0.01], np.float32), TARGET])
    assert (d[0].reason, d[1].reason) == (Reason.COINCIDENCE, Reason.BELOW_THRESHOLD)
    # so is a flagged one (its class is known, but it will not be sorted)
    d = decide_batch(policy("purity"), [ev(0, exit_ms=100.0), ev(1, exit_ms=101.0, quality=Quality.DOUBLET)],
                     [TARGET, TARGET])
    assert (d[0].reason, d[1].reason) == (Reason.COINCIDENCE, Reason.QUALITY)


@pytest.mark.parametrize("pending, mode, fire", [
    ([102.0], "purity", False),  # a cell still in view, class unknown: counted as a non-target
    ([100.0 + W], "purity", False),
    ([100.0 + 1.5 * W], "purity", True),  # predicted to exit outside the window
    ([102.0], "yield", True),
    ([102.0], "single-cell", False),
    ([], "single-cell", True),
])
def test_unknown_cells_in_view(pending, mode, fire):
    decided = [(90.0, True)]  # far away: no influence
    d = decide_batch(policy(mode), [ev(exit_ms=100.0)], [TARGET], decided=decided, pending=pending)[0]
    assert d.fire is fire
    if not fire:
        assert d.reason is (Reason.COINCIDENCE if mode == "purity" else Reason.NOT_ISOLATED)


def test_neighbour_rule_edges_nan_and_order():
    near = coincidence_neighbours(10.0, 1.0, decided=[(9.0, True), (8.99, False), (math.nan, False)],
                                  batch=[(10.0, True), (11.0, False), (11.01, True)], self_index=0,
                                  pending=[10.5, math.nan, 12.0])
    assert near == [Neighbour(9.0, True), Neighbour(11.0, False), Neighbour(10.5, False)]
    assert coincidence_neighbours(10.0, 0.0, decided=[(10.0, False)]) == [Neighbour(10.0, False)]
    assert coincidence_neighbours(math.nan, 1e9, decided=[(10.0, False)]) == []


def test_window_in_um_widens_with_slow_cells():
    # 20 µm at 5 mm/s is 4 ms, at 10 mm/s 2 ms: the same neighbour 3 ms away aborts only the slow cell
    p = SortPolicy(SortSettings(window_um=20.0, window_ms=0.1), CLASSES)
    slow, fast = ev(0, exit_ms=100.0, v_after_mm_s=5.0), ev(1, exit_ms=100.0, v_after_mm_s=10.0)
    assert decide_batch(p, [slow], [TARGET], decided=[(103.0, False)])[0].reason is Reason.COINCIDENCE
    assert decide_batch(p, [fast], [TARGET], decided=[(103.0, False)])[0].fire


def test_auditing_policy_logs_what_it_was_given():
    p = AuditingPolicy(SortSettings(window_ms=W), CLASSES)
    decide_batch(p, [ev(0, exit_ms=100.0), ev(1, exit_ms=102.0)], [TARGET, OTHER], pending=[130.0])
    assert [e.event_index for e in p.log] == [0, 1]
    a, b = p.log
    assert a.neighbours == (Neighbour(102.0, False),) and a.decision.reason is Reason.COINCIDENCE
    assert a.window_ms == W and a.exit_ms == 100.0
    assert b.decision.reason is Reason.NOT_TARGET


# ---------------------------------------------------------------------------------------------
# scoring against the truth (crafted runs, no model needed)


def truth(i, cls, entry_ms, kind="cell"):
    # every value the scoring does not read is NaN / 0, so new truth fields need no change here
    vals = {f.name: (0 if f.type == "int" else "" if f.type == "str" else math.nan) for f in fields(TruthRecord)}
    vals.update(id=i, kind=kind, cls=cls, entry_ms=entry_ms, exit_ms=entry_ms + 3.0, transit_ms=3.0)
    return TruthRecord(**vals)


def record(i, entry_ms, probs, reason):
    fire = reason is Reason.FIRED
    k = int(np.argmax(probs))
    e = ev(i, exit_ms=entry_ms + 3.0, entry_ms=entry_ms)
    return CellRecord(e, probs, Decision(i, fire, reason, CLASSES[k], float(probs[k]), k == 0))


def test_score_counts_fired_cells_and_what_pulses_sweep_along():
    # true cells (entry ms): 0 hct @50, 1 wbc @52 (2 ms after 0), 2 hct @80, 3 wbc @120 (misclassified),
    # 4 hct @150 (missed by the tracker), 5 hct @200 (not fired); one fired detection of no true cell @300
    t = [truth(0, "hct116", 50.0), truth(1, "wbc", 52.0), truth(2, "hct116", 80.0), truth(3, "wbc", 120.0),
         truth(4, "hct116", 150.0), truth(5, "hct116", 200.0), truth(6, "hct116", 999.0)]
    recs = [record(0, 50.0, TARGET, Reason.FIRED), record(1, 52.0, OTHER, Reason.NOT_TARGET),
            record(2, 80.0, TARGET, Reason.FIRED), record(3, 120.0, TARGET, Reason.FIRED),
            record(5, 200.0, TARGET, Reason.COINCIDENCE), record(7, 300.0, TARGET, Reason.FIRED)]
    r = score_mode("yield", recs, t, frame_ms=0.25, run_ms=1000.0, target_classes=["hct116"], window_for=lambda e: W)
    assert isinstance(r, ModeResult)
    # in scope: 5 matched complete cells + the orphan detection; truth 6 ends too late to be complete
    assert (r.cells, r.targets, r.fired, r.fired_targets) == (6, 3, 4, 2)
    assert r.purity == pytest.approx(2 / 4) and r.recovery == pytest.approx(2 / 3)
    assert (r.coincidence, r.not_isolated, r.late, r.quality_gate) == (1, 0, 0, 0)
    # outlet: 0 (+1 swept along), 2, 3, and the orphan counted as a non-target; 4 of 5 hct116 are complete
    assert (r.sorted_cells, r.sorted_targets, r.swept_non_targets) == (5, 2, 1)
    assert r.sorted_purity == pytest.approx(2 / 5) and r.sorted_recovery == pytest.approx(2 / 4)
    assert len(r.fired_keys) == 4


def test_evaluate_checks_its_arguments_before_rendering(tmp_path):
    with pytest.raises(ConfigError, match="modes"):
        evaluate_sort_modes(0.1, modes=("fastest",), model="none")
    with pytest.raises(ConfigError, match="model.path"):
        evaluate_sort_modes(0.1, model=str(tmp_path / "missing.onnx"))
    with pytest.raises(ConfigError, match="seconds"):
        evaluate_sort_modes(0.0)
    with pytest.raises(ConfigError, match="cells one comparison"):
        evaluate_sort_modes(60.0, 200.0)


# ---------------------------------------------------------------------------------------------
# one simulated run, replayed through the real pipeline once per mode (bundled model)

needs_model = pytest.mark.skipif(not bundled_model_path().is_file(),
                                 reason="the bundled demo model (inference/models/miml-mini-demo.onnx) is not built yet")

SIM = replace(SyntheticSettings(), duration_s=1.5, cells_per_second=200.0, seed=7, realtime=False)
WINDOW_MS = 4.0


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory):
    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model (inference/models/miml-mini-demo.onnx) is not built yet")
    folder = tmp_path_factory.mktemp("sortsim")
    raw = folder / "raw.rtdc"
    truth_ = record_simulation(SIM, raw)
    runs = {}
    for mode in ("purity", "yield", "single-cell"):
        run = run_mode(raw, mode, model="demo", window_ms=WINDOW_MS, folder=folder, policy_cls=AuditingPolicy,
                       write_events=(mode == "purity"))
        runs[mode] = run
    return truth_, runs


def _targets(log):
    return {(e.exit_ms, e.decision.is_target) for e in log}


@needs_model
def test_purity_mode_audit(sim_runs):
    from app.storage import read_events

    _truth, runs = sim_runs
    run = runs["purity"]
    log = run.pipeline.policy.log
    records = run.pipeline.recent()
    assert len(log) == len(records) == run.status().cells > 100
    decided = _targets(log)
    n_coinc = 0
    for i, a in enumerate(log):
        d = a.decision
        assert records[i].decision.event_index == a.event_index  # records are in decision order
        non_targets = [n for n in a.neighbours if not n.is_target]
        assert all(abs(n.exit_time_ms - a.exit_ms) <= a.window_ms for n in a.neighbours)
        if d.is_target:
            if d.reason is Reason.COINCIDENCE:
                n_coinc += 1
                assert non_targets, f"event {a.event_index}: aborted without a non-target near"
            else:
                assert not non_targets, f"event {a.event_index}: {d.reason} with {non_targets} near"
        if not d.is_target:
            # a non-target is never fired, whoever is near: the pipeline does not look for neighbours
            assert not a.neighbours and not d.fire
            continue
        # what the pipeline knew: every cell decided before this one and within the window is a neighbour,
        # with its class verdict
        for b in log[:i]:
            if abs(b.exit_ms - a.exit_ms) <= a.window_ms:
                assert Neighbour(b.exit_ms, b.decision.is_target) in a.neighbours, f"event {a.event_index}"
        # and every neighbour is a decided cell, or a cell still in view (ahead of it) counted as a non-target
        for n in a.neighbours:
            if (n.exit_time_ms, n.is_target) not in decided:
                assert not n.is_target and n.exit_time_ms > a.exit_ms, f"event {a.event_index}: {n}"
    assert n_coinc > 0, "no coincidence happened: the run does not test the purity mode"
    # the event file carries the same decisions, and its exit times show every fired cell clear of
    # non-targets decided before it
    feats, stored = read_events(run.events_path)
    assert stored.complete and stored.n_events == len(records)
    reasons = [stored.reasons[k] for k in feats["reason"]]
    assert reasons == [r.decision.reason.value for r in records]
    np.testing.assert_array_equal(feats["fired"].astype(bool), [r.decision.fire for r in records])
    ex, tg = feats["exit_time_ms"], feats["is_target"].astype(bool)
    for i in np.flatnonzero(feats["fired"]):
        before = np.arange(i)
        clash = before[(np.abs(ex[before] - ex[i]) <= WINDOW_MS) & ~tg[before]]
        assert clash.size == 0, f"row {i} fired with non-target rows {clash.tolist()} within the window"


@needs_model
def test_single_cell_fires_only_isolated_cells(sim_runs):
    _truth, runs = sim_runs
    log = runs["single-cell"].pipeline.policy.log
    assert any(a.decision.fire for a in log) and any(a.decision.reason is Reason.NOT_ISOLATED for a in log)
    for i, a in enumerate(log):
        if a.decision.fire:
            assert a.neighbours == ()
            assert not any(abs(b.exit_ms - a.exit_ms) <= a.window_ms for b in log[:i])
    for a in log:
        if a.decision.reason is Reason.NOT_ISOLATED:
            assert a.neighbours and a.decision.is_target


@needs_model
def test_yield_fires_every_target(sim_runs):
    _truth, runs = sim_runs
    log = runs["yield"].pipeline.policy.log
    targets = [a for a in log if a.decision.is_target]
    assert targets
    assert all(a.decision.fire for a in targets)
    assert not any(a.decision.fire for a in log if not a.decision.is_target)
    # cells finished only by the end-of-run flush are past the junction: recorded late, never fired
    recs = runs["yield"].pipeline.recent()
    late = [r for r in recs if r.decision.reason is Reason.LATE]
    assert all(r.decision.is_target for r in late) and len(late) <= 3


@needs_model
def test_modes_on_the_same_cells(sim_runs):
    truth_, runs = sim_runs
    recs = {m: r.pipeline.recent() for m, r in runs.items()}
    keys = {m: [(r.event.entry_frame, r.event.exit_frame) for r in rs] for m, rs in recs.items()}
    assert keys["purity"] == keys["yield"] == keys["single-cell"], "the replays did not see the same cells"
    np.testing.assert_array_equal(np.stack([r.probabilities for r in recs["purity"]]),
                                  np.stack([r.probabilities for r in recs["yield"]]))
    frame_ms = 1000.0 / SIM.fps
    res = {}
    for m, run in runs.items():
        st = run.status()
        res[m] = score_mode(m, recs[m], truth_, frame_ms=frame_ms, run_ms=SIM.frame_count * frame_ms,
                            target_classes=run.pipeline.policy.settings.target_classes,
                            window_for=run.pipeline.policy.settings.window_for,
                            purity_estimate=st.purity_estimate, recovery_estimate=st.recovery_estimate,
                            sorted_purity_estimate=st.sorted_purity_estimate,
                            sorted_recovery_estimate=st.sorted_recovery_estimate)
        # the live outlet count is the file's rule over the same decisions
        decided = [r for r in recs[m] if r.decision is not None]
        fired = np.array([r.decision.fire for r in decided])
        outlet = sorted_set(np.array([r.event.features.get("exit_time_ms", np.nan) for r in decided]), fired,
                            np.array([r.decision.window_ms for r in decided]))
        assert st.swept == int((outlet & ~fired).sum())
    p, y, s = res["purity"], res["yield"], res["single-cell"]
    # yield mode sweeps non-targets along: the outlet estimate sees the purity it costs (the
    # estimates themselves sit a few points above the truth on this short run, whose classifier
    # is surer than right) where the fired cells' estimate cannot
    assert y.swept_non_targets > 0 and runs["yield"].status().swept > 0
    assert f"swept {runs['yield'].status().swept} (outlet est. purity" in runs["yield"].status().line()
    true_drop, est_drop = y.purity - y.sorted_purity, y.purity_estimate - y.sorted_purity_estimate
    assert true_drop > 0.03 and abs(est_drop - true_drop) < 0.03, (true_drop, est_drop)
    assert p.purity_estimate - p.sorted_purity_estimate < 0.01  # purity mode aborts what would be swept
    # stricter modes fire a subset of the cells
    assert set(s.fired_keys) <= set(p.fired_keys) < set(y.fired_keys)
    assert y.recovery >= p.recovery >= s.recovery
    assert y.sorted_recovery >= p.sorted_recovery
    # what purity mode is for: fewer non-targets swept into the outlet
    assert p.sorted_purity >= y.sorted_purity
    assert p.swept_non_targets < y.swept_non_targets
    assert p.coincidence > 0 and s.not_isolated >= p.coincidence
    for r in res.values():
        assert r.cells == p.cells and r.targets == p.targets > 0
        assert 0.0 <= r.purity_estimate <= 1.0 and 0.0 <= r.recovery_estimate <= 1.0
        # the classifier separates the classes: the fired cells are mostly true targets
        assert r.purity > 0.5


@needs_model
def test_bench_sort_modes_reports_a_flat_table():
    out = bench_sort_modes(seconds=0.6)
    assert all(not isinstance(v, (dict, list, tuple)) for v in out.values())
    for mode in ("purity", "yield", "single_cell"):
        assert out[f"{mode}_fired"] <= out[f"{mode}_cells"]
        assert out[f"{mode}_targets"] <= out[f"{mode}_cells"]
    assert out["yield_fired"] >= out["purity_fired"] >= out["single_cell_fired"]
    assert out["simulated_cells"] > 0 and 0.0 <= out["coincident_fraction"] <= 1.0


def test_report_markdown_has_a_row_per_mode():
    from app.sortsim import SortModeReport

    r = ModeResult("purity", 10, 5, 4, 3, 1, 0, 0, 2, 0.75, 0.6, 0.8, 0.7, 5, 3, 0.6, 0.5)
    rep = SortModeReport(1.0, 200.0, 4.0, 7, "demo", ("hct116",), 0.5, 12, 0.08, (r, replace(r, mode="yield")))
    md = rep.to_markdown().splitlines()
    rows = [line for line in md if line.startswith("| purity") or line.startswith("| yield")]
    assert len(rows) == 2 and "75.0 %" in rows[0] and "8.0 %" in md[0]
    flat = rep.to_flat()
    assert flat["purity_purity"] == 0.75 and flat["yield_sorted_recovery"] == 0.5 and flat["wall_s"] is None
    assert rep.result("yield").mode == "yield"
    with pytest.raises(KeyError):
        rep.result("single-cell")
