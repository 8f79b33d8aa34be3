"""The operator GUI, offscreen (pytest-qt).

Two kinds of run drive the window: the real demo (synthetic camera → tracker → demo model → policy
→ log trigger → event file, through ``app.session.build_run``), skipped until all those parts are
installed, and a small deterministic stand-in run (real FrameRing, CellEvents, SortPolicy and
Status; cells made up per poll) so the window's own behaviour is tested on any checkout.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="the GUI extra (PySide6) is not installed")
pytest.importorskip("pyqtgraph", reason="the GUI extra (pyqtgraph) is not installed")

from acquisition.frame import FrameRing  # noqa: E402
from app.gui.models import (  # noqa: E402
    FeatureTable,
    ModelInfo,
    config_get,
    config_with,
    histogram,
    make_gate,
    rect_points,
    status_rows,
)
from app.pipeline import AutoStop, FinishReason, RunState, Status  # noqa: E402
from app.records import CellRecord  # noqa: E402
from app.sorting import PolygonGate, Reason, SortPolicy, SortSettings  # noqa: E402
from mimlsort.errors import ConfigError, DeviceError  # noqa: E402
from tracking.events import CellEvent  # noqa: E402
from tracking.geometry import ChannelGeometry  # noqa: E402
from tracking.tracker import TrackerSettings  # noqa: E402

CLASSES = ("hct116", "wbc")
W, H, PX = 256, 96, 0.5


# -- a configuration with the sections of app.config.RunConfig that the GUI edits ---------------------
@dataclass(frozen=True, slots=True)
class SynthCfg:
    width: int = W
    height: int = H
    fps: float = 5000.0
    exposure_us: float = 2.0  # as the simulator's: a box without a key reads "—"


@dataclass(frozen=True, slots=True)
class CamCfg:
    backend: str = "synthetic"
    pixel_size_um: float = PX
    flow_direction: str = "left-to-right"
    synthetic: SynthCfg = field(default_factory=SynthCfg)
    basler: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelCfg:
    path: str = "model-a.onnx"
    provider: str = "auto"


@dataclass(frozen=True, slots=True)
class OutCfg:
    folder: str = "out"
    sample: str = "sample"
    record_raw: bool = False


@dataclass(frozen=True, slots=True)
class Cfg:
    camera: CamCfg = field(default_factory=CamCfg)
    tracking: TrackerSettings = field(default_factory=TrackerSettings)
    model: ModelCfg = field(default_factory=ModelCfg)
    sorting: SortSettings = field(default_factory=SortSettings)
    output: OutCfg = field(default_factory=OutCfg)
    autostop: AutoStop = field(default_factory=AutoStop)


def fake_model(path: str, provider: str = "auto") -> ModelInfo:
    """Model descriptions by file name (the real loader is tested with the bundled model)."""
    classes = ("t4", "t8", "debris") if "b" in Path(path).stem.split("-")[-1] else CLASSES
    return ModelInfo(path, classes, ("di", "transit_time_ms"), provider, 0.1, "stand-in")


# -- stand-in run ------------------------------------------------------------------------------------
class StandInRun:
    """Behaves like ``app.session.Run`` for the window; every status poll adds ``per_poll`` cells."""

    def __init__(self, cfg: Cfg, folder=None, per_poll: int = 10, fail_start: bool = False,
                 hold: threading.Event | None = None):
        self.config = cfg
        self.fail_start = fail_start
        self.hold = hold  # start() waits for it: a start that takes a while (kernels compiling)
        self.per_poll = per_poll
        self.rng = np.random.default_rng(1)
        self.closed = False
        self.close_errors: list[str] = []
        self.classifier = SimpleNamespace(classes=CLASSES)
        geo = ChannelGeometry(PX, 100.0, 140.0, 30.0, 66.0, W, H)
        self.ring = FrameRing(64, H, W, np.dtype(np.uint8))
        self.pipeline = SimpleNamespace(
            ring=self.ring, tracker=SimpleNamespace(geometry=geo), classifier=self.classifier, trigger=None,
            policy=SortPolicy(cfg.sorting, CLASSES), recent=self.recent, live_tracks=self.live_tracks,
            set_policy=self.set_policy)
        self.records: list[CellRecord] = []
        self.state = RunState.IDLE
        self.finish_reason = None
        self.policies: list[SortPolicy] = []
        self.n_frames = 0
        self._lock = threading.Lock()

    def start(self):
        self.starting = True
        if self.hold is not None:
            self.hold.wait(10)
        if self.fail_start:
            raise DeviceError("camera 1234: not found (stand-in)")
        self.state = RunState.RUNNING

    def stop(self):
        if self.state is RunState.RUNNING:
            self.state, self.finish_reason = RunState.FINISHED, FinishReason.CANCELED

    def wait(self, timeout=None):
        return True

    def close(self):
        self.closed = True

    def set_policy(self, policy):
        self.pipeline.policy = policy
        self.policies.append(policy)

    def live_tracks(self):
        return [(7, 60.0, 48.0, 6.0, 5.0, 0.1), (8, 120.0, 47.0, 9.0, 4.0, 0.0)]

    def recent(self, n=None):
        return self.records[-n:] if n else list(self.records)

    def _advance(self):
        img = self.rng.integers(90, 110, (H, W), dtype=np.uint8)
        img[:30, :] = 40  # walls
        img[66:, :] = 40
        self.ring.push(img, self.n_frames, self.n_frames * 200_000)
        self.n_frames += 1
        for _ in range(self.per_poll):
            i = len(self.records)
            k = int(self.rng.integers(0, 2))
            feats = {"di": float(self.rng.uniform(0.1, 0.3) + 0.3 * k), "transit_time_ms": float(self.rng.uniform(0.5, 1.5)),
                     "exit_time_ms": float(i), "pos_y_um": 24.0, "v_after_mm_s": 10.0}
            p = np.array([0.9, 0.1] if k == 0 else [0.2, 0.8], np.float32)
            ev = CellEvent(i, i, feats, np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), PX, 0, 1, 0)
            self.records.append(CellRecord(ev, p, self.pipeline.policy.decide(ev, p), None))

    def status(self):
        if self.state is RunState.RUNNING:
            self._advance()
            limit = self.config.autostop.events
            if limit and len(self.records) >= limit:  # as the pipeline's auto-stop does
                self.state, self.finish_reason = RunState.FINISHED, FinishReason.COMPLETED
        recs = self.records
        counts = {c: sum(1 for r in recs if r.decision.predicted == c) for c in CLASSES}
        fired = sum(1 for r in recs if r.decision.fire)
        not_fired: dict[str, int] = {}
        for r in recs:
            if not r.decision.fire:
                not_fired[r.decision.reason.value] = not_fired.get(r.decision.reason.value, 0) + 1
        return Status(self.state, self.finish_reason, "", 1.0, self.n_frames, 5000.0, self.n_frames, 5000.0,
                      {"sort": 0}, {"sort": 0}, 0, 0, len(recs), 30.0, counts, fired, not_fired, 0, 0, 0.95, 0.5,
                      120.0, 400.0, 500.0, 0, 1000, 0, True)


@pytest.fixture
def window(qtbot, tmp_path):
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore

    runs: list[StandInRun] = []

    def factory(cfg, folder=None):
        run = StandInRun(cfg, folder, fail_start=getattr(factory, "fail", False), hold=getattr(factory, "hold", None))
        runs.append(run)
        return run

    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config=Cfg(), config_path=tmp_path / "run.toml", factory=factory, settings=settings,
                     model_loader=fake_model, save_on_close=False)
    win.runs = runs
    win.factory = factory
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    qtbot.waitUntil(lambda: win.model_info is not None, timeout=5000)
    yield win
    win.close()


def start(qtbot, win):
    from app.gui.qt import QtCore

    qtbot.mouseClick(win.controls.start_btn, QtCore.Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.controller.run is not None or bool(win.errors), timeout=60000)
    assert not win.errors


# -- Qt-free models ----------------------------------------------------------------------------------
def test_config_with_validates_with_key_path_and_reports_unknown_keys():
    cfg = Cfg()
    new, unsupported = config_with(cfg, {"sorting.threshold": 0.8, "camera.synthetic.width": 128,
                                         "camera.basler.exposure_us": 20.0, "trigger.backend": "serial"})
    assert new.sorting.threshold == 0.8 and new.camera.synthetic.width == 128
    assert new.camera.basler == {"exposure_us": 20.0}  # vendor tables are plain dicts
    assert cfg.sorting.threshold == 0.5  # the original is untouched (frozen)
    assert unsupported == ["trigger.backend"]
    assert config_get(new, "camera.synthetic.width") == 128 and config_get(new, "nope.x", 3) == 3
    with pytest.raises(ConfigError) as e:
        config_with(cfg, {"sorting.threshold": 1.5})
    assert e.value.key == "sorting.threshold"
    with pytest.raises(ConfigError) as e:
        config_with(cfg, {"tracking.geometry.constriction_start_um": -1.0})
    assert e.value.key == "tracking.geometry.constriction_start_um"


def test_vendor_tables_read_the_backend_defaults():
    basler = pytest.importorskip("acquisition.basler", reason="the basler backend is not available")
    from app.gui.models import config_value, first_field, table_fields

    cfg, _ = config_with(Cfg(), {"camera.basler.exposure_us": 20.0})
    assert config_value(cfg, "camera.basler.exposure_us") == 20.0
    assert config_value(cfg, "camera.basler.fps") == basler.BaslerSettings().fps  # not in the file: the default
    assert "offset_x" in table_fields(cfg, "camera.basler")
    assert first_field(cfg, "camera.basler", ("path", "serial")) == "camera.basler.serial"
    assert first_field(cfg, "camera.synthetic", ("path", "serial")) is None


def test_feature_table_deduplicates_and_keeps_the_newest():
    t = FeatureTable(capacity=5)
    t.clear(CLASSES)
    run = StandInRun(Cfg(), per_poll=4)
    run.state = RunState.RUNNING
    for _ in range(3):
        run.status()
        t.extend(run.recent(6))  # overlapping windows, as the controller polls
    assert t.total == 12 and len(t) == 5
    assert t.column("exit_time_ms").tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    want = [CLASSES.index(r.decision.predicted) for r in run.records[-5:]]
    assert t.classes().tolist() == want
    assert t.fired().tolist() == [r.decision.fire for r in run.records[-5:]]
    edges, counts = histogram(t.column("di"), t.classes(), 2, bins=4)
    assert sum(int(c.sum()) for c in counts) == 5 and len(edges) == 5


def test_gates_from_plot_coordinates():
    g = make_gate("transit_time_ms", "di", rect_points(1.5, 0.9, 0.5, 0.2))
    assert isinstance(g, PolygonGate) and len(g.points) == 4
    assert g.contains({"transit_time_ms": 1.0, "di": 0.5})
    assert not g.contains({"transit_time_ms": 1.6, "di": 0.5})
    with pytest.raises(ConfigError, match="encloses no area"):
        make_gate("transit_time_ms", "di", [(0, 0), (1, 1), (2, 2)])
    with pytest.raises(ConfigError, match="encloses no area"):  # on a line, with a rounding residue
        make_gate("transit_time_ms", "di", [(1, 0.1), (2, 0.2), (3, 0.3)])


def test_status_rows_flag_missed_frames():
    run = StandInRun(Cfg())
    st = run.status()
    rows = {r.key: r for r in status_rows(st)}
    assert not rows["missed"].alarm and rows["missed"].text == "0"
    from dataclasses import replace

    bad = {r.key: r for r in status_rows(replace(st, missed={"sort": 5}, overrun={"sort": 1}))}
    assert bad["missed"].alarm and bad["missed"].text == "6"
    assert "sort: 5" in bad["missed"].tooltip
    n = len(os.sched_getaffinity(0))
    calm = {r.key: r for r in status_rows(replace(st, cpu_cores={"sort": 0.25, "camera": 0.125}))}["cpu"]
    assert not calm.alarm and calm.text == f"0.38 of {n} (most: sort 0.25)" and calm.tooltip == "sort: 0.25\ncamera: 0.12"
    busy = {r.key: r for r in status_rows(replace(st, cpu_cores={"sort": 0.5 * n, "writer process": 0.45 * n}))}["cpu"]
    assert busy.alarm
    lat = {r.key: r for r in status_rows(replace(st, latency_p50_us=900.0, latency_p99_us=3000.0,
                                                 latency_from_exit_p50_us=1300.0, latency_from_exit_p99_us=3500.0))}
    assert lat["latency"].text == "0.90 | 3.00 ms"
    assert lat["latency"].tooltip.endswith("left the constriction: 1.30 | 3.50 ms")
    assert not rows["file"].alarm and "without image" not in rows["file"].text
    shed = {r.key: r for r in status_rows(replace(st, images_shed=12, storage_backlog_mb=600.0))}["file"]
    assert shed.alarm and "12 without image" in shed.text and "600 MB waiting" in shed.tooltip
    # a stalled disk: the queue grows long before any image is shed; nothing on the window said so
    stalled = {r.key: r for r in status_rows(replace(st, storage_backlog_mb=200.0, storage_queue=900))}["file"]
    assert stalled.alarm and "200 MB waiting" in stalled.text and "stalled disk" in stalled.tooltip
    assert not {r.key: r for r in status_rows(replace(st, storage_backlog_mb=5.0))}["file"].alarm
    assert not rows["cells"].alarm and "untracked" not in rows["cells"].text
    steady = {r.key: r for r in status_rows(replace(st, light_gain=1.001, light_flicker=0.002))}["light"]
    assert not steady.alarm and steady.text == "×1.001 | 0.2 %"
    assert {r.key: r for r in status_rows(replace(st, light_gain=0.97, light_flicker=0.03))}["light"].alarm
    # a lamp turned down mid-run: no flicker, but no cell is seen until the background relearns
    dimmed = {r.key: r for r in status_rows(replace(st, light_gain=0.4, light_flicker=0.0))}["light"]
    assert dimmed.alarm and dimmed.text == "×0.400 | 0.0 % changed"
    lost = {r.key: r for r in status_rows(replace(st, tracks_overflow=7, tracks_lost=3))}["cells"]
    assert lost.alarm and "7 untracked" in lost.text and "(cells lost upstream, specks): 3" in lost.tooltip
    clog = {r.key: r for r in status_rows(replace(st, blocked_s=2.04))}["cells"]
    assert clog.alarm and clog.text.endswith(", BLOCKED 2.0 s") and "a clog" in clog.tooltip
    assert "BLOCKED" not in rows["cells"].tooltip
    assert not rows["trigger"].alarm and rows["trigger"].text == "ok"
    refused = {r.key: r for r in status_rows(replace(st, device_refused=4, unacked=2))}["trigger"]
    assert refused.alarm and refused.text == "ok, 4 refused, 2 unacked" and "not armed, counter busy): 4" in refused.tooltip
    assert {r.key: r for r in status_rows(replace(st, trigger_ok=False))}["trigger"].text == "FAULT"
    # a trigger that was unavailable for a while and came back: the target cells it could not
    # fire are counted nowhere else, and the row read "ok", not red
    back = {r.key: r for r in status_rows(replace(st, trigger_failed=25, errors=("trigger: unavailable: EIO",)))}
    assert back["trigger"].alarm and back["trigger"].text == "ok, 25 not fired"
    assert "unavailable: 25" in back["trigger"].tooltip and back["trigger"].tooltip.endswith("trigger: unavailable: EIO")
    est = replace(st, purity_estimate=0.97, recovery_estimate=0.5)
    assert {r.key: r for r in status_rows(est)}["purity"].text == "97.0 % | 50.0 %"
    swept = {r.key: r for r in status_rows(replace(est, swept=6, sorted_purity_estimate=0.9,
                                                   sorted_recovery_estimate=0.52))}["purity"]
    assert swept.text == "97.0 % | 50.0 %; outlet 90.0 %" and "6 swept along" in swept.tooltip
    assert "recovery 52.0 %" in swept.tooltip


# -- the window with the stand-in run -------------------------------------------------------------------
def test_run_shows_frames_cells_and_counters(qtbot, window):
    win = window
    assert win.controls.start_btn.isEnabled() and not win.controls.stop_btn.isEnabled()
    start(qtbot, win)
    assert not win.controls.start_btn.isEnabled() and win.controls.stop_btn.isEnabled()
    assert not win.controls.backend.isEnabled()  # the camera is fixed while running
    fixed = [b.current for b in win.controls._bindings if b.current and b.current.startswith(("camera.", "model."))
             and b.widget.isEnabled()]
    assert fixed == [], fixed  # every camera and model control (the flow direction's was forgotten)
    assert win.controls.threshold.isEnabled()  # sort settings stay live
    qtbot.waitUntil(lambda: win.table.total >= 30, timeout=10000)
    cells1 = int(win.status_panel.text("cells").split("|")[0])
    qtbot.waitUntil(lambda: int(win.status_panel.text("cells").split("|")[0]) > cells1, timeout=5000)
    assert win.camera_view.frames_shown > 0
    assert win.camera_view.image.image.shape == (H, W)
    assert win.camera_view.n_tracks_shown == 2
    assert win.camera_view.geometry_px()["constriction_x0"] == pytest.approx(100.0)
    assert "hct116" in win.status_panel.text("classes")
    assert win.status_panel.alarms["missed"] is False
    win.stop_run()  # the table stops growing, so the plots can be compared with it
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=10000)
    # the last run's cells are not left on the image (nothing pruned them without frames)
    assert win.camera_view.n_tracks_shown == 0 and win.camera_view.n_labels_shown == 0
    qtbot.waitUntil(lambda: win.scatter.info.text().startswith(f"{len(win.table)} cells"), timeout=5000)
    assert win.histogram.counts_shown() == int(np.isfinite(win.table.column("di")).sum())


def click_plot(qtbot, scatter, x, y):
    from app.gui.qt import QtCore

    vb = scatter.plot.plotItem.vb
    pos = scatter.plot.mapFromScene(vb.mapViewToScene(QtCore.QPointF(x, y)))
    qtbot.mouseClick(scatter.plot.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=pos)


def test_drawn_gate_becomes_the_sort_policy(qtbot, window):
    from app.gui.qt import Qt

    win = window
    start(qtbot, win)
    run = win.runs[-1]
    sc = win.scatter
    assert (sc.x, sc.y) == ("transit_time_ms", "di")
    sc.plot.setRange(xRange=(0, 2), yRange=(0, 1), padding=0)
    qtbot.mouseClick(sc.poly_btn, Qt.MouseButton.LeftButton)
    for x, y in [(0.4, 0.05), (1.0, 0.05), (1.0, 0.35), (0.4, 0.35), (0.4, 0.05)]:  # last click closes
        click_plot(qtbot, sc, x, y)
    qtbot.waitUntil(lambda: len(run.policies) >= 1, timeout=5000)
    gate = run.pipeline.policy.settings.polygon_gates[0]
    assert (gate.x, gate.y) == ("transit_time_ms", "di") and len(gate.points) == 4
    assert gate.points[0] == pytest.approx((0.4, 0.05), abs=0.02)
    assert win.config.sorting.polygon_gates == (gate,)
    n0 = len(run.records)
    qtbot.waitUntil(lambda: len(run.records) > n0 + 30, timeout=5000)
    later = [r for r in run.records[n0:] if r.decision.is_target or r.decision.reason is Reason.OUTSIDE_GATE]
    for r in later:  # hct116 cells (transit 0.5..1.5 ms) right of the box are now refused
        inside = gate.contains(r.event.features)
        assert (r.decision.reason is Reason.OUTSIDE_GATE) == (not inside)
    assert any(r.decision.reason is Reason.OUTSIDE_GATE for r in later)
    # a threshold change reaches the running pipeline too, gate kept
    win.controls.threshold.setValue(0.95)
    assert run.pipeline.policy.settings.threshold == 0.95
    assert run.pipeline.policy.settings.polygon_gates == (gate,)
    qtbot.mouseClick(sc.clear_btn, Qt.MouseButton.LeftButton)
    assert run.pipeline.policy.settings.polygon_gates == ()


def test_a_gate_dragged_flat_is_refused_and_shown_as_it_still_is(qtbot, window):
    # the plot must show the gate the policy sorts with, not the collapsed shape that was refused
    win = window
    sc = win.scatter
    gate = make_gate("transit_time_ms", "di", rect_points(0.4, 0.05, 1.0, 0.35))
    sc.set_gate(gate, emit=True)
    roi = sc._roi
    for h in roi.handles:  # every handle dragged onto one point
        h["item"].setPos(0.7, 0.2)
    sc._roi_edited(roi)
    assert win.errors and "encloses no area" in win.errors[-1]
    qtbot.waitUntil(lambda: sc._roi is not roi, timeout=2000)
    shown = [c for p in (sc._roi.mapToParent(h["item"].pos()) for h in sc._roi.handles) for c in (p.x(), p.y())]
    assert shown == pytest.approx([c for p in gate.points for c in p])
    assert sc.gate == gate and win.config.sorting.polygon_gates == (gate,)


def test_rectangle_gate_by_two_clicks(qtbot, window):
    from app.gui.qt import Qt

    sc = window.scatter
    sc.plot.setRange(xRange=(0, 2), yRange=(0, 1), padding=0)
    qtbot.mouseClick(sc.rect_btn, Qt.MouseButton.LeftButton)
    click_plot(qtbot, sc, 0.5, 0.2)
    click_plot(qtbot, sc, 1.5, 0.8)
    g = window.config.sorting.polygon_gates[0]
    xs, ys = sorted({p[0] for p in g.points}), sorted({p[1] for p in g.points})
    assert xs == pytest.approx([0.5, 1.5], abs=0.02) and ys == pytest.approx([0.2, 0.8], abs=0.02)
    assert not sc.rect_btn.isChecked()


def test_stop_closes_the_run_and_reports_why(qtbot, window):
    from app.gui.qt import Qt

    win = window
    start(qtbot, win)
    run = win.runs[-1]
    qtbot.mouseClick(win.controls.stop_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=10000)
    assert run.closed
    assert "stopped" in win.status_panel.text("state")
    assert win.controls.start_btn.isEnabled() and win.controls.backend.isEnabled()
    start(qtbot, win)  # and a second run starts cleanly
    assert len(win.runs) == 2 and win.table.total <= len(win.runs[-1].records) + 3


def test_stop_while_starting_calls_the_start_off(qtbot, window):
    # the first start on a machine compiles the tracker's kernels for about a minute: the
    # operator who pressed Start by mistake must not have to wait for it to stop
    from app.gui.qt import Qt

    win = window
    win.factory.hold = hold = threading.Event()
    qtbot.mouseClick(win.controls.start_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.controls.stop_btn.isEnabled(), timeout=5000)
    assert not win.controls.start_btn.isEnabled()
    qtbot.waitUntil(lambda: bool(win.runs) and getattr(win.runs[-1], "starting", False), timeout=5000)
    assert win.status_panel.text("state").startswith("starting")  # not the status bar's 8 s message only
    qtbot.mouseClick(win.controls.stop_btn, Qt.MouseButton.LeftButton)
    assert not win.controls.stop_btn.isEnabled()  # asked once
    hold.set()
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=10000)
    run = win.runs[-1]
    assert run.closed and run.finish_reason is FinishReason.CANCELED
    assert "stopped" in win.status_panel.text("state")
    # stopped while the run was still being built (camera, files): not left at "starting"
    win.factory.hold = hold = threading.Event()
    factory = win.controller.factory

    def slow_build(cfg, folder=None):
        hold.wait(10)
        return factory(cfg, folder)

    win.controller.factory = slow_build
    qtbot.mouseClick(win.controls.start_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.controls.stop_btn.isEnabled(), timeout=5000)
    qtbot.mouseClick(win.controls.stop_btn, Qt.MouseButton.LeftButton)
    hold.set()
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=10000)
    assert win.status_panel.text("state") == "start canceled"
    assert win.controls.start_btn.isEnabled() and not win.errors


def test_the_runs_warnings_reach_the_window(qtbot, window):
    # they went only to the terminal: an operator who started the window from the desktop never
    # read "the camera's 2 µm/px is far from the 0.5 µm/px the model … was trained at"
    import logging

    win = window
    factory = win.factory

    def warning_factory(cfg, folder=None):
        logging.getLogger("app.session").warning("the model was trained at another pixel size (stand-in)")
        return factory(cfg, folder)

    win.controller.factory = warning_factory
    start(qtbot, win)
    qtbot.waitUntil(lambda: bool(win.warnings), timeout=5000)
    assert win.warnings == ["the model was trained at another pixel size (stand-in)"]
    assert "another pixel size" in win.status_panel.text("warnings") and win.status_panel.alarms["warnings"]
    assert "1 warning: see Run status" in win.statusBar().currentMessage()
    # a long one wraps: the window still fits a 1366 px lab screen (it was ~1,700 px at least)
    win.show_warning("the camera's 2 µm/px is far from the 0.5 µm/px the model /a/long/path/to/model.onnx was "
                     "trained at: crops are resampled to its scale, but blur and optics differ")
    qtbot.wait(50)
    assert win.minimumSizeHint().width() <= 1366
    del win.warnings[1:]
    logging.getLogger("app.gui.main_window").warning("the GUI's own (not a run's)")
    logging.getLogger("pyqtgraph").warning("not ours")
    qtbot.wait(200)
    assert len(win.warnings) == 1
    win.stop_run()
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=10000)
    win.controller.factory = factory
    start(qtbot, win)  # a new run starts with none
    assert win.warnings == [] and win.status_panel.text("warnings") == "none"


def test_opening_a_configuration_during_a_run_is_refused(qtbot, window, tmp_path):
    # the panel would show a camera, model and files the running run does not have
    from app.config import RunConfig, save_config
    from app.session import with_changes

    win = window
    start(qtbot, win)
    other = tmp_path / "other.toml"
    save_config(with_changes(RunConfig(), sorting={"threshold": 0.9}), other)
    before = win.config
    win.open_config(other)
    assert win.errors and "stop the run" in win.errors[-1]
    assert win.config is before and win.config_path != other


def test_auto_stop_ends_the_run_by_itself(qtbot, window):
    win = window
    win.controls.auto_events.setValue(30)
    assert win.config.autostop.events == 30
    start(qtbot, win)
    run = win.runs[-1]
    assert run.config.autostop.events == 30  # the run was built from the edited configuration
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=10000)
    assert run.closed and "completed" in win.status_panel.text("state")
    assert win.table.total == len(run.records) >= 30
    assert win.controls.start_btn.isEnabled() and not win.errors


def test_errors_reach_the_operator_without_blocking(qtbot, window):
    from app.gui.qt import Qt

    win = window
    win.factory.fail = True
    start_btn = win.controls.start_btn
    qtbot.mouseClick(start_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(win.errors), timeout=10000)
    assert "camera 1234: not found" in win.errors[-1]
    assert "camera 1234" in win.statusBar().currentMessage()
    assert win._dialog is not None and win._dialog.isVisible() and not win._dialog.isModal()
    qtbot.waitUntil(start_btn.isEnabled, timeout=5000)  # the UI is usable again
    assert win.runs[-1].closed
    # the failure stays on the window once the status bar's message has gone
    assert win.status_panel.text("state").startswith("failed to start: camera 1234: not found")
    assert win.status_panel.alarms["state"]
    # an invalid value is refused with its key, the configuration keeps the valid one
    assert not win.apply_changes({"sorting.threshold": 1.5})
    assert "sorting.threshold" in win.errors[-1] and win.config.sorting.threshold == 0.5
    assert win.controls.threshold.value() == 0.5
    assert "sorting.threshold" in win._dialog.text()  # one dialog collects the errors


def test_switch_model_updates_classes_and_target(qtbot, window):
    win = window
    assert win.model_info.classes == CLASSES
    assert [win.controls.target.itemText(i) for i in range(win.controls.target.count())] == list(CLASSES)
    win.controls.model_path.setText("model-b.onnx")
    win.controls.model_path.editingFinished.emit()
    qtbot.waitUntil(lambda: win.model_info.path == "model-b.onnx", timeout=5000)
    assert win.config.model.path == "model-b.onnx"
    assert [win.controls.target.itemText(i) for i in range(win.controls.target.count())] == ["t4", "t8", "debris"]
    assert win.config.sorting.target_classes == ("t4",)  # the old target is not in this model
    assert "t4, t8, debris" in win.controls.model_info.text()
    win.controls.target.setCurrentIndex(1)
    assert win.config.sorting.target_classes == ("t8",)
    # several targets: check a second class; the last check cannot be removed
    from app.gui.qt import QtCore

    tl = win.controls.target
    tl.item(2).setCheckState(QtCore.Qt.CheckState.Checked)
    assert win.config.sorting.target_classes == ("t8", "debris")
    tl.item(1).setCheckState(QtCore.Qt.CheckState.Unchecked)
    tl.item(2).setCheckState(QtCore.Qt.CheckState.Unchecked)
    assert win.config.sorting.target_classes == ("debris",) and tl.checked() == ("debris",)


def test_backend_switch_offers_that_backends_keys(qtbot, window):
    pytest.importorskip("acquisition.basler", reason="the basler backend is not available")
    ct = window.controls
    assert ct.path_of(ct.device) is None and not ct.device.isEnabled()  # synthetic has no device
    # the simulator needs a number: no "the camera's" 0, which failed the start naming flash_duration_us
    assert ct.exposure.minimum() > 0 and ct.exposure.specialValueText() == "" and ct.roi_w.minimum() > 0
    ct.backend.setCurrentText("basler")
    assert window.config.camera.backend == "basler"
    assert ct.path_of(ct.device) == "camera.basler.serial" and ct.device.isEnabled()
    assert ct.path_of(ct.exposure) == "camera.basler.exposure_us"
    # unset keeps the camera's own: it read "1.0 µs" / "8 px" (the boxes' minimums) or the
    # synthetic camera's values, for a camera that delivered 1024×1040
    assert ct.exposure.value() == 0 and ct.exposure.text() == "the camera's"
    assert ct.roi_w.value() == 0 and ct.roi_w.text() == "camera's" and ct.roi_h.text() == "camera's"
    assert window.config.camera.basler == {}  # showing it wrote nothing
    ct.device.setText("40012345")
    ct.device.editingFinished.emit()
    ct.exposure.setValue(150.0)
    assert window.config.camera.basler == {"serial": "40012345", "exposure_us": 150.0}


def test_geometry_lines_edit_the_configuration(qtbot, window):
    win = window
    start(qtbot, win)
    qtbot.waitUntil(lambda: win.camera_view.geometry_px() is not None, timeout=5000)
    win.camera_view.region.setRegion((90.0, 150.0))
    win.camera_view.region.sigRegionChangeFinished.emit(win.camera_view.region)
    g = win.config.tracking.geometry
    assert g.constriction_start_um == pytest.approx(90.0 * PX) and g.constriction_end_um == pytest.approx(150.0 * PX)
    assert g.channel_top_um == pytest.approx(30.0 * PX) and g.channel_bottom_um == pytest.approx(66.0 * PX)
    # the dashed ROI box, shrunk, becomes the camera ROI of the next run
    roi = win.camera_view.roi
    assert win.camera_view.roi_px() == {"x": 0, "y": 0, "width": W, "height": H}
    roi.setSize((200, 64))
    roi.sigRegionChangeFinished.emit(roi)
    assert (win.config.camera.synthetic.width, win.config.camera.synthetic.height) == (200, 64)
    assert win.controls.roi_w.value() == 200


def test_the_roi_box_is_the_sensors_roi_of_the_camera_whose_frames_are_shown(qtbot, window):
    # a vendor camera (ROI offsets, which no camera here has) mounted with cells moving down: the
    # frames are turned, the camera's ROI is in sensor pixels. The box's width and height went
    # to the camera swapped, and a second edit of the box added its offset to the first edit's.
    from app.gui.models import sensor_box

    win = window
    win.apply_changes({"camera.backend": "basler", "camera.flow_direction": "top-to-bottom",
                       "camera.basler.offset_x": 40, "camera.basler.offset_y": 8})
    start(qtbot, win)
    qtbot.waitUntil(lambda: win.camera_view.image_shape is not None, timeout=5000)
    win.stop_run()
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=10000)
    assert win.camera_view.image_shape == (H, W)  # turned: the sensor is H wide and W high
    roi = win.camera_view.roi
    for x in (10, 12):  # moved twice: each time from the frames' own offsets
        roi.setPos((x, 0))
        roi.setSize((200, H))  # shorter along the flow, i.e. along the sensor's rows
        roi.sigRegionChangeFinished.emit(roi)
        b = win.config.camera.basler
        assert (b["width"], b["height"]) == (H, 200)
        assert (b["offset_x"], b["offset_y"]) == (40, 8 + x)
    # against numpy's own turn of the sensor's pixel indices, for every turn
    rows, cols = np.indices((5, 9))
    for k in range(4):
        r, c = np.rot90(rows, k)[1:4, 2:4], np.rot90(cols, k)[1:4, 2:4]
        assert sensor_box(2, 1, 2, 3, np.rot90(rows, k).shape, k) == (
            c.min(), r.min(), c.max() - c.min() + 1, r.max() - r.min() + 1)


def test_screenshot_shows_content(qtbot, window, tmp_path):
    from app.gui.qt import QtGui

    start(qtbot, window)
    qtbot.waitUntil(lambda: window.table.total >= 60 and window.camera_view.frames_shown > 2, timeout=10000)
    path = window.screenshot(tmp_path / "shot.png")
    img = QtGui.QImage(str(path))
    assert img.width() >= 1000 and img.height() >= 700
    small = img.scaled(200, 140).convertToFormat(QtGui.QImage.Format.Format_RGB32)
    arr = np.frombuffer(small.constBits(), np.uint8).reshape(small.height(), small.bytesPerLine() // 4, 4)[:, :200, :3]
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50  # plots, image and text, not a blank window
    assert arr.std() > 20


def test_window_state_persists(qtbot, tmp_path):
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore

    ini = str(tmp_path / "gui.ini")

    def make():
        s = QtCore.QSettings(ini, QtCore.QSettings.Format.IniFormat)
        w = MainWindow(config=Cfg(), config_path=tmp_path / "run.toml", settings=s, model_loader=fake_model,
                       save_on_close=False)
        qtbot.addWidget(w)
        return w

    w1 = make()
    w1.scatter.set_axes("v_max_mm_s", "deform")
    w1.histogram.box.setCurrentIndex(w1.histogram.box.findData("area_um"))
    w1.close()
    w2 = make()
    assert (w2.scatter.x, w2.scatter.y) == ("v_max_mm_s", "deform")
    assert w2.histogram.feature == "area_um"
    assert w2.config_path == tmp_path / "run.toml"
    w2.close()


def test_broken_configuration_opens_with_defaults_and_is_kept(qtbot, tmp_path):
    pytest.importorskip("app.config", reason="app.config needs parts not written yet")
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore

    bad = tmp_path / "run.toml"
    bad.write_text("[sorting]\nthreshold = 1.5\n")
    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config_path=bad, settings=settings, model_loader=fake_model)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: bool(win.errors), timeout=5000)
    assert "sorting.threshold" in win.errors[0] and str(bad) in win.errors[0]
    assert win.config.sorting.threshold == 0.5
    win.close()
    assert bad.read_text() == "[sorting]\nthreshold = 1.5\n"  # not overwritten with the defaults


def test_open_and_save_the_daemons_toml(qtbot, tmp_path):
    app_config = pytest.importorskip("app.config", reason="app.config needs parts not written yet")
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore
    from app.session import with_changes

    gate = make_gate("transit_time_ms", "di", rect_points(0.5, 0.1, 1.5, 0.4))
    cfg = with_changes(app_config.RunConfig(), model={"path": "none"},
                       sorting={"threshold": 0.8, "polygon_gates": [{"x": gate.x, "y": gate.y,
                                                                      "points": [list(p) for p in gate.points]}]})
    src = tmp_path / "in.toml"
    app_config.save_config(cfg, src)
    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config=app_config.RunConfig(), config_path=tmp_path / "run.toml", settings=settings,
                     model_loader=fake_model, save_on_close=False)
    qtbot.addWidget(win)
    win.open_config(src)
    assert win.config == cfg and win.config_path == src
    assert win.controls.threshold.value() == 0.8 and win.scatter.gate == gate
    win.controls.threshold.setValue(0.6)
    out = tmp_path / "out.toml"
    assert win.save_config(out)
    back = app_config.load_config(out)
    assert back.sorting.threshold == 0.6 and back.sorting.polygon_gates == (gate,)
    win.close()


def test_real_model_loader_describes_the_bundled_model():
    pytest.importorskip("inference.classifier", reason="inference.classifier not installed yet")
    app_config = pytest.importorskip("app.config", reason="app.config needs parts not written yet")
    if not app_config.bundled_model_path().is_file():
        pytest.skip("the bundled demo model has not been built")
    from app.gui.models import inspect_model

    info = inspect_model("demo", "cpu")
    assert len(info.classes) >= 2 and info.features and info.provider == "cpu"
    assert math.isfinite(info.latency_ms) and info.latency_ms > 0


# -- the real demo run --------------------------------------------------------------------------------
def _need_pipeline():
    for mod in ("app.session", "acquisition.synthetic", "tracking.segment", "app.storage", "hardware.dryrun"):
        pytest.importorskip(mod, reason=f"{mod} (or what it imports) is not written yet")


def test_demo_run_end_to_end(qtbot, tmp_path):
    """The real pipeline on the synthetic camera (with the demo model once it is built)."""
    _need_pipeline()
    import h5py
    import hdf5plugin  # noqa: F401  (the event file is Zstandard-compressed)

    from app.config import load_config
    from app.gui.main import demo_config
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore

    from app.session import with_changes

    # the sample report a run writes when it ends: test_gui_operator.py (its child would outlive this test)
    cfg = with_changes(demo_config(tmp_path / "runs"), output={"report": False})
    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config=cfg, config_path=tmp_path / "run.toml", settings=settings)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: not win.model_pending, timeout=30000)
    assert not win.errors
    win.controls.threshold.setValue(0.7)
    start(qtbot, win)
    assert load_config(tmp_path / "run.toml") == win.config  # saved at start: what the daemon reads
    qtbot.waitUntil(lambda: win.table.total >= 5 or bool(win.errors), timeout=60000)
    assert not win.errors
    qtbot.waitUntil(lambda: win.controller.last_status.cells >= win.table.total, timeout=5000)
    st = win.controller.last_status
    assert st.frames_in > 0 and st.frames_processed > 0
    assert win.camera_view.frames_shown > 0 and win.camera_view.geometry_px() is not None
    gate = make_gate("transit_time_ms", "di", rect_points(0, 0, 100, 1))
    win.scatter.set_gate(gate, emit=True)
    assert win.config.sorting.polygon_gates == (gate,)
    if win.controller.class_names():  # a model runs: the gate reached the running policy
        assert win.controller.pipeline.policy.settings.polygon_gates == (gate,)
        assert win.controller.pipeline.policy.settings.threshold == 0.7
    path = win.controller.run.events_path
    win.stop_run()
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=30000)
    assert not win.errors
    assert "stopped" in win.status_panel.text("state")
    with h5py.File(path, "r") as f:  # closed by the run: it opens, and holds the cells
        n = len(next(iter(f["events"].values())))
    assert n >= win.table.total > 0
    win.close()
    assert load_config(tmp_path / "run.toml").sorting.polygon_gates == (gate,)  # saved on close


def test_replay_of_a_recording_runs_to_its_end(qtbot, tmp_path):
    """A finite source ends the run by itself; the window goes back to idle with the file closed."""
    _need_pipeline()
    pytest.importorskip("acquisition.replay", reason="the replay backend is not written yet")
    import h5py
    import hdf5plugin  # noqa: F401

    from app.cli import main as cli_main
    from app.gui.main import demo_config
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore
    from app.session import with_changes

    rec = tmp_path / "raw.rtdc"
    assert cli_main(["simulate", "--out", str(rec), "--seconds", "0.4", "--seed", "3"]) == 0
    cfg = with_changes(demo_config(tmp_path / "runs", model="none"), camera={"backend": "replay"})
    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config=cfg, config_path=tmp_path / "run.toml", settings=settings, save_on_close=False)
    qtbot.addWidget(win)
    win.show()
    ct = win.controls
    assert ct.path_of(ct.device) == "camera.replay.path" and ct.device.isEnabled()
    ct.device.setText(str(rec))
    ct.device.editingFinished.emit()
    assert win.config.camera.replay.path == str(rec)
    start(qtbot, win)
    path = win.controller.run.events_path
    qtbot.waitUntil(lambda: (win.controller.run is None and not win.controller.busy) or bool(win.errors),
                    timeout=60000)
    assert not win.errors
    assert "completed" in win.status_panel.text("state")
    with h5py.File(path, "r") as f:
        n = len(next(iter(f["events"].values())))
    assert n == win.table.total > 0
    # the end of a replay writes its sample report too (output.report, on by default), as `mimlsort run` does
    from app.report import report_dir

    qtbot.waitUntil(lambda: win.reports.pending == 0, timeout=60000)
    assert not win.errors and win.status_panel.text("report") == str(report_dir(path) / "report.md")
    assert f"| cells | {n} |" in (report_dir(path) / "report.md").read_text(encoding="utf-8")
    win.close()


def test_a_stuck_event_writer_does_not_keep_the_window_busy(qtbot, tmp_path):
    """The event writer child stops answering (SIGSTOP: a process stuck on a dead network disk).
    Stop must still bring the window back to idle, and closing it must not hang: past
    output.stop_timeout_s without progress the writer is abandoned and the operator is told."""
    _need_pipeline()
    import signal

    import dclab

    from app.gui.controller import RunController
    from app.gui.main import demo_config
    from app.session import with_changes

    cfg = with_changes(demo_config(tmp_path / "runs", model="none"), output={"stop_timeout_s": 2.0, "report": False})
    ctl = RunController()
    errors: list[str] = []
    ctl.errorOccurred.connect(errors.append)
    ctl.start(cfg)
    qtbot.waitUntil(lambda: ctl.run is not None or bool(errors), timeout=60000)
    assert not errors
    run = ctl.run
    qtbot.waitUntil(lambda: run.status().cells >= 3, timeout=60000)
    # the child writes (on a loaded machine it started writing seconds after the first cells,
    # and the file was still empty when it was stopped), then a flush with cells in it
    qtbot.waitUntil(lambda: run.writer.events_written > 0, timeout=30000)
    qtbot.wait(1200)
    pid = run.writer.child_pid
    os.kill(pid, signal.SIGSTOP)
    idle = False
    try:
        qtbot.wait(500)  # records queue for the writer
        ctl.stop()
        qtbot.waitUntil(lambda: ctl.run is None and not ctl.busy, timeout=30000)
        idle = True
    finally:
        if not idle:  # the writer was not abandoned: free it, or closing the controller hangs the suite
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ctl.shutdown(timeout_s=5.0)
    assert run.abandoned and "output.stop_timeout_s" in run.abandoned
    assert ctl.last_status.state.value == "finished"  # not left at "stopping"
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped, not left a zombie of the window's process
    assert len(errors) == 1 and "abandoned" in errors[0] and str(run.events_path) in errors[0]
    with dclab.new_dataset(run.events_path) as ds:
        assert len(ds) > 0


def test_test_fire_and_auto_detect_on_real_devices(qtbot, tmp_path):
    """Idle window: test-fire opens the configured trigger; auto-detect grabs from the camera."""
    for mod in ("app.session", "acquisition.synthetic", "tracking.detect", "hardware.dryrun"):
        pytest.importorskip(mod, reason=f"{mod} (or what it imports) is not written yet")
    from app.gui.main import demo_config
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore, Qt

    cfg = demo_config(tmp_path, model="none")
    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config=cfg, config_path=tmp_path / "run.toml", settings=settings, save_on_close=False)
    qtbot.addWidget(win)
    win.show()
    assert win.controls.trigger_device.text() == str(tmp_path / "pulses.csv")  # the log trigger's key
    qtbot.mouseClick(win.controls.test_fire_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.test_pulses == 1 or bool(win.errors), timeout=10000)
    assert not win.errors
    lines = (tmp_path / "pulses.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("-1\t")  # header + the test pulse
    assert win.config.tracking.geometry.constriction_start_um is None
    # a previous run's preview frames (another camera, another ROI) are not what is configured now
    win.controller.frames.extend([np.full((120, 200), 128, np.uint8)] * 8)
    qtbot.mouseClick(win.controls.autodetect_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.config.tracking.geometry.constriction_start_um is not None or bool(win.errors),
                    timeout=30000)
    assert not win.errors
    g = win.config.tracking.geometry
    s = cfg.camera.synthetic
    assert g.constriction_start_um == pytest.approx(s.constriction_start_um, abs=3 * s.pixel_size_um)
    assert g.channel_top_um < g.channel_bottom_um and win.camera_view.geometry_px() is not None
    win.close()


def test_cli_registers_gui_command():
    import argparse

    from app import cli_gui

    p = argparse.ArgumentParser()
    cli_gui.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["gui", "--config", "x.toml"])
    assert args.func is cli_gui.cmd_gui and args.config == Path("x.toml") and args.screenshot is None


def test_gui_without_a_display_is_a_clear_error(monkeypatch):
    from app.gui.main import run_gui

    for var in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(DeviceError, match="no display"):
        run_gui()


def test_a_replays_unset_frame_rate_reads_as_the_sources(qtbot):
    # it kept showing the synthetic camera's 4000 fps, though a replay takes its recording's rate
    from app.config import RunConfig
    from app.gui.panels import ControlPanel
    from app.session import with_changes

    panel = ControlPanel()
    qtbot.addWidget(panel)
    changes = []
    panel.changed.connect(changes.append)
    panel.load(RunConfig())
    assert panel.fps.value() == RunConfig().camera.synthetic.fps
    panel.load(with_changes(RunConfig(), camera={"backend": "replay"}))
    assert panel.fps.value() == panel.fps.minimum() and panel.fps.text() == "the source's"
    panel.fps.setValue(500.0)
    panel.fps.setValue(panel.fps.minimum())  # back to the recording's own rate
    assert changes == [{"camera.replay.fps": 500.0}, {"camera.replay.fps": None}]
    # other cameras need a number: their 0 is no "unset" (a reviewer: None raised TypeError in the slot)
    panel.load(RunConfig())
    changes.clear()
    panel.fps.setValue(panel.fps.minimum())
    assert changes == [{"camera.synthetic.fps": 0.0}] and panel.fps.text() != "the source's"


def test_a_replays_exposure_and_roi_read_as_none_not_another_cameras(qtbot):
    # a replay has no exposure or ROI: the disabled boxes showed the last camera's "2.0 µs" and
    # "256 px", or at first open their minimums "1.0 µs" and "8 px", as if they were its settings
    from app.config import RunConfig
    from app.gui.panels import NO_VALUE, ControlPanel
    from app.session import with_changes

    replay = with_changes(RunConfig(), camera={"backend": "replay"})
    synthetic = RunConfig().camera.synthetic
    for before in (None, RunConfig()):  # opened on a replay, or switched to one from the simulator
        panel = ControlPanel()
        qtbot.addWidget(panel)
        changes = []
        panel.changed.connect(changes.append)
        if before is not None:
            panel.load(before)
            assert (panel.roi_w.text(), panel.exposure.value()) == (f"{synthetic.width} px", synthetic.exposure_us)
        panel.load(replay)
        boxes = (panel.exposure, panel.roi_w, panel.roi_h)
        assert [w.text() for w in boxes] == [NO_VALUE] * 3 and not any(w.isEnabled() for w in boxes)
        assert changes == []  # showing it wrote nothing
    panel.load(RunConfig())  # and back: the simulator's numbers, no dash
    assert [w.text() for w in boxes] == [f"{synthetic.exposure_us:.1f} µs", f"{synthetic.width} px",
                                         f"{synthetic.height} px"]
    assert panel.auto_events.text() == "no limit" and panel.pixel_size.text() == "from camera"


def test_a_value_the_settings_refuse_with_a_type_error_is_an_error_dialog(qtbot, tmp_path):
    from app.gui.main import demo_config
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore

    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config=demo_config(tmp_path, model="none"), config_path=None, settings=settings,
                     save_on_close=False)
    qtbot.addWidget(win)
    assert not win.apply_changes({"camera.synthetic.fps": None})
    assert win.errors and "camera.synthetic.fps" in win.errors[-1]
    assert win.config.camera.synthetic.fps == 4000.0


def test_a_start_stopped_before_any_frame_leaves_no_empty_event_file(qtbot, tmp_path):
    """Stop pressed while a real run was being built (camera, files) or starting (kernels): the
    event file it had created held no frame and stayed in the folder, taking the day's next run
    index. A run that tracked frames keeps its file."""
    _need_pipeline()
    from app.gui.controller import RunController
    from app.gui.main import demo_config
    from app.session import build_run, with_changes

    folder = tmp_path / "runs"
    cfg = with_changes(demo_config(folder, model="none"), output={"report": False})
    gate = threading.Event()
    built: list = []

    def slow_build(cfg, folder=None):
        run = build_run(cfg, folder=folder)
        built.append(run)
        gate.wait(10)  # Stop is pressed now
        return run

    ctl = RunController(factory=slow_build)
    try:
        ctl.start(cfg)
        qtbot.waitUntil(lambda: bool(built), timeout=60000)
        path = built[-1].events_path
        assert path.is_file()  # the writer made it while the run was built
        ctl.stop()
        gate.set()
        qtbot.waitUntil(lambda: ctl.run is None and not ctl.busy, timeout=60000)
        assert built[-1].closed_all and not path.exists()
        assert not list(folder.glob("*.rtdc"))
        # a run that tracked frames keeps its file, also when the files are discarded on request
        ctl.factory = lambda cfg, folder=None: build_run(cfg, folder=folder)
        ctl.start(cfg)
        qtbot.waitUntil(lambda: ctl.run is not None, timeout=60000)
        run = ctl.run
        qtbot.waitUntil(lambda: run.status().frames_processed > 0, timeout=30000)
        ctl.stop()
        qtbot.waitUntil(lambda: ctl.run is None and not ctl.busy, timeout=60000)
        assert run.events_path.is_file() and run.discard_if_empty() == [] and run.events_path.is_file()
    finally:
        gate.set()
        ctl.shutdown(timeout_s=5.0)


def test_finished_cell_labels_do_not_print_over_one_another(qtbot):
    # cells leave the constriction at nearly the same height: their labels stood on one line and
    # printed over each other ("hct116 ✓" on "wbc ✗" read as neither)
    from app.gui.camera_view import CameraView

    view = CameraView()
    qtbot.addWidget(view)
    view.resize(800, 300)
    view.show()
    view.set_frame(np.full((H, W), 100, np.uint8))
    qtbot.wait(50)
    policy = SortPolicy(SortSettings(), CLASSES)
    recs = []
    for i, y in enumerate((24.0, 24.2, 23.9, 35.0)):  # three together, one well apart
        ev = CellEvent(i, i, {"pos_y_um": y, "exit_time_ms": float(i)}, np.zeros((4, 4), np.uint8),
                       np.zeros((4, 4), np.uint8), PX, 0, 1, 0)
        p = np.array([0.9, 0.1], np.float32)
        recs.append(CellRecord(ev, p, policy.decide(ev, p), None))
    view.set_geometry(100.0, 140.0, 30.0, 66.0, PX)
    view.add_finished(recs, CLASSES, 140.0)
    pos = view.label_positions()
    assert view.n_labels_shown == 4 and len(pos) == 4
    line = view._line_height()
    ys = sorted(y for _, y in pos)
    assert all(b - a >= 0.99 * line for a, b in zip(ys, ys[1:]))  # no two on one line
    assert pos[0][1] == pytest.approx(35.0 / PX)  # the newest stays at its cell
    assert pos[1][1] == pytest.approx(23.9 / PX)  # and so does the newest of the three together


def test_test_fire_at_idle_says_when_no_pulse_went_and_lets_a_serial_one_out(qtbot, tmp_path):
    """The status bar said "test pulse sent" for a pulse that was late or refused; and a serial
    device opened for one test pulse was closed (disarmed) before its pulse was due."""
    pytest.importorskip("serial", reason="pyserial not installed (mimlsort[serial])")
    from app.gui.main import demo_config
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore, Qt
    from app.session import with_changes
    from tests.sim.trigger_emulator import emulated_port

    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    # a fire time further ahead than max_delay_us is refused before anything is sent
    cfg = with_changes(demo_config(tmp_path, model="none"),
                       trigger={"timing.min_lead_us": 100.0, "timing.max_delay_us": 500.0})
    win = MainWindow(config=cfg, config_path=tmp_path / "run.toml", settings=settings, save_on_close=False)
    qtbot.addWidget(win)
    win.show()
    qtbot.mouseClick(win.controls.test_fire_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(win.errors) or win.test_pulses > 0, timeout=10000)
    assert win.test_pulses == 0 and "test pulse not sent" in win.errors[-1] and "max_delay_us" in win.errors[-1]
    assert not (tmp_path / "pulses.csv").exists() or len((tmp_path / "pulses.csv").read_text().splitlines()) <= 1
    win.close()
    with emulated_port(tmp_path / "device.tsv") as emu:
        cfg = with_changes(demo_config(tmp_path, model="none"), trigger={"backend": "serial", "serial.port": emu.port})
        win = MainWindow(config=cfg, config_path=tmp_path / "run.toml", settings=settings, save_on_close=False)
        qtbot.addWidget(win)
        win.show()
        qtbot.mouseClick(win.controls.test_fire_btn, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(win.errors) or win.test_pulses > 0, timeout=15000)
        assert win.test_pulses == 1 and not win.errors
        win.close()
    assert len(emu.records("pulse")) == 1  # it came out before the device was disarmed


def test_a_test_pulse_during_a_run_is_kept_apart_and_in_the_files_log(qtbot, tmp_path):
    """A Test fire during a run went into the trigger's books beside the cells' pulses: its ack
    (or its missing ack, as unacked) made the file's counters stop adding up (fired = acked +
    refused + unacked over the cells), and the file did not say that a pulse the operator fired
    sorted whatever was at the junction then."""
    _need_pipeline()
    pytest.importorskip("serial", reason="pyserial not installed (mimlsort[serial])")
    from app.gui.main import demo_config
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore, Qt
    from app.report import summarize
    from app.session import with_changes
    from app.storage import read_events
    from tests.sim.trigger_emulator import emulated_port

    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    with emulated_port(tmp_path / "device.tsv") as emu:
        cfg = with_changes(demo_config(tmp_path / "runs"), output={"report": False},
                           trigger={"backend": "serial", "serial.port": emu.port})
        win = MainWindow(config=cfg, config_path=tmp_path / "run.toml", settings=settings, save_on_close=False)
        qtbot.addWidget(win)
        win.show()
        qtbot.waitUntil(lambda: not win.model_pending, timeout=30000)
        qtbot.mouseClick(win.controls.start_btn, Qt.MouseButton.LeftButton)
        # the first start after a source change compiles the kernels (minutes on a loaded host)
        qtbot.waitUntil(lambda: win.controller.run is not None or bool(win.errors), timeout=300000)
        qtbot.waitUntil(lambda: win.table.total >= 3 or bool(win.errors), timeout=60000)
        qtbot.mouseClick(win.controls.test_fire_btn, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: win.test_pulses == 1 or bool(win.errors), timeout=15000)
        assert not win.errors, win.errors
        path = win.controller.run.events_path
        win.stop_run()
        qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=30000)
        assert not win.errors, win.errors
        win.close()
    f, run = read_events(path)
    c = run.counters
    assert c["test_pulses"] == 1 and c["test_acked"] + c["test_unacked"] + c["test_refused"] == 1, c
    cells_acked = int((run.acks["event_index"] >= 0).sum())
    assert c["fired"] == int((f["fired"] == 1).sum()) == cells_acked + c["device_refused"] + c["unacked"], c
    # the test pulse's own ack is kept, under its negative index
    assert int((run.acks["event_index"] < 0).sum()) == c["test_acked"]
    lines = [line for line in run.run_log if line.startswith("operator's test pulse")]
    assert len(lines) == 1 and lines[0].startswith("operator's test pulse -1 at t=") and "due at host" in lines[0]
    pulse = emu.records("pulse")
    assert any(p[0] == pulse[0][0] for p in pulse)  # the device saw it
    s = summarize(path)
    assert s.test_pulses == tuple(lines) and s.acks == cells_acked
