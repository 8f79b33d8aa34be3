"""An operator's walk through the window on real runs (pytest-qt, offscreen): the synthetic camera,
the bundled model where it matters, the log trigger, and the event files read back with dclab.

Each test is a short run on a small ROI; every wait has a timeout.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="the GUI extra (PySide6) is not installed")
pytest.importorskip("pyqtgraph", reason="the GUI extra (pyqtgraph) is not installed")


def real_window(qtbot, tmp_path, model: str = "none", **sections):
    """The window on the synthetic camera (256x96) with the log trigger, as an operator opens it."""
    from app.gui.main import demo_config
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore
    from app.session import with_changes

    cfg = with_changes(demo_config(tmp_path / "runs", model=model), output={"report": False, **sections.pop("output", {})},
                       **sections)
    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config=cfg, config_path=tmp_path / "run.toml", settings=settings, save_on_close=False)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    qtbot.waitUntil(lambda: not win.model_pending, timeout=30000)
    assert not win.errors
    return win


def run_started(qtbot, win):
    qtbot.waitUntil(lambda: win.controller.run is not None or bool(win.errors), timeout=60000)
    assert not win.errors
    return win.controller.run


def stopped(qtbot, win):
    win.stop_run()
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=60000)
    assert not win.errors


def test_a_second_run_does_not_show_the_first_runs_cells(qtbot, tmp_path):
    # the table was cleared at the start, but the plots were only redrawn when a new cell came:
    # a run with no cell yet showed the last run's "91 cells shown" and its histogram
    from app.gui.main_window import PLOT_HZ
    from app.session import with_changes

    win = real_window(qtbot, tmp_path)
    win.start_run()
    run_started(qtbot, win)
    qtbot.waitUntil(lambda: win.table.total >= 10, timeout=30000)
    stopped(qtbot, win)
    # (each plot redraws on its own refresh: wait for both)
    qtbot.waitUntil(lambda: win.histogram.counts_shown() > 0 and not win.scatter.info.text().startswith("0 cells"),
                    timeout=10000)
    win.config = with_changes(win.config, camera={"synthetic.cells_per_second": 0.0, "synthetic.debris_per_second": 0.0})
    win.start_run()
    run = run_started(qtbot, win)
    qtbot.waitUntil(lambda: run.status().frames_processed > 0, timeout=30000)
    qtbot.wait(int(3000 / PLOT_HZ))  # a few plot refreshes
    assert win.table.total == 0
    assert win.scatter.info.text().startswith("0 cells shown") and win.histogram.counts_shown() == 0
    stopped(qtbot, win)
    win.close()


def _action(win, text):
    from app.gui.qt import QtGui

    return next(a for a in win.findChildren(QtGui.QAction) if a.text() == text)


def test_start_by_its_shortcut_takes_what_is_typed_but_not_entered(qtbot, tmp_path):
    # F5 (Run ▸ Start) leaves the focus in the field being typed in: the run was named and sorted
    # with the old sample name and threshold while the fields showed the new ones
    import dclab

    win = real_window(qtbot, tmp_path, model="demo")
    ct = win.controls
    qtbot.keyClicks(ct.sample, "-patient7")
    ct.threshold.lineEdit().selectAll()
    qtbot.keyClicks(ct.threshold.lineEdit(), "0.9")
    assert ct.sample.text() == "gui-demo-patient7" and ct.threshold.text() == "0.9"
    _action(win, "&Start").trigger()
    run = run_started(qtbot, win)
    assert run.events_path.name.startswith("gui-demo-patient7_")
    assert win.controller.pipeline.policy.settings.threshold == 0.9
    qtbot.waitUntil(lambda: run.status().frames_processed > 0, timeout=30000)
    stopped(qtbot, win)
    with dclab.new_dataset(run.events_path) as ds:
        assert ds.config["experiment"]["sample"] == "gui-demo-patient7"
    # a typed value the configuration refuses starts no run: it was not the run the operator meant
    qtbot.keyClicks(ct.sample, "/x")
    _action(win, "&Start").trigger()
    qtbot.wait(200)
    assert win.controller.run is None and not win.controller.busy
    assert win.errors and "output.sample" in win.errors[-1]
    assert ct.sample.text() == "gui-demo-patient7"  # the panel shows again what is in effect
    win.close()


def test_closing_the_window_while_a_run_starts_calls_the_start_off(qtbot, tmp_path):
    # the window waited for the start, then started the run (camera, tracker) only to stop it at
    # once: its event file and raw recording stayed in the folder, as a Stop while starting leaves none
    import time

    from app.gui.main import demo_config
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore
    from app.session import build_run, with_changes

    folder = tmp_path / "runs"
    cfg = with_changes(demo_config(folder, model="none"), output={"report": False, "record_raw": True})
    built: list = []

    def build_slowly(cfg, folder=None):  # the camera and files open while the window closes
        run = build_run(cfg, folder=folder)
        built.append(run)
        t0 = time.monotonic()
        while win.controller.starting and time.monotonic() - t0 < 10.0:
            time.sleep(0.01)
        return run

    settings = QtCore.QSettings(str(tmp_path / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config=cfg, config_path=tmp_path / "run.toml", factory=build_slowly, settings=settings,
                     save_on_close=False)
    qtbot.addWidget(win)
    win.show()
    win.start_run()
    qtbot.waitUntil(lambda: bool(built), timeout=60000)
    assert sorted(p.suffix for p in folder.glob("*.rtdc")) == [".rtdc", ".rtdc"]  # events and raw, reserved
    win.close()
    assert built[0].closed_all and built[0].pipeline.status().frames_in == 0  # never started
    assert not list(folder.glob("*.rtdc")) and not win.errors


def test_lines_drawn_after_the_pixel_size_was_corrected_are_where_the_next_run_tracks(qtbot, tmp_path):
    # the µm of the drawn lines were computed with the last run's pixel size, and the next run
    # turned them into pixels with the one the operator had set since: its constriction lay elsewhere
    win = real_window(qtbot, tmp_path)
    win.start_run()
    run_started(qtbot, win)
    qtbot.waitUntil(lambda: win.camera_view.geometry_px() is not None, timeout=30000)
    stopped(qtbot, win)
    assert win.config.camera.pixel_size_um == 0.0  # the camera's own
    own = win._pixel_size_um  # the last run's, from its tracker
    win.controls.pixel_size.setValue(own / 2)  # the calibration says: half of what the camera claims
    view = win.camera_view
    g = view.geometry_px()
    view.region.setRegion((g["constriction_x0"] - 10.0, g["constriction_x1"] + 10.0))
    view.region.sigRegionChangeFinished.emit(view.region)
    drawn = view.geometry_px()
    win.start_run()
    run_started(qtbot, win)
    pipeline = win.controller.pipeline
    qtbot.waitUntil(lambda: getattr(pipeline.tracker, "geometry", None) is not None or bool(win.errors),
                    timeout=30000)
    assert not win.errors
    tracked = pipeline.tracker.geometry
    assert tracked.pixel_size_um == pytest.approx(own / 2)
    assert tracked.constriction_x0 == pytest.approx(drawn["constriction_x0"], abs=0.05)
    assert tracked.constriction_x1 == pytest.approx(drawn["constriction_x1"], abs=0.05)
    assert tracked.channel_y0 == pytest.approx(drawn["channel_y0"], abs=0.05)
    stopped(qtbot, win)
    win.close()


def _legend(plot) -> list[str]:
    return [label.text for _, label in plot.plotItem.legend.items]


def test_a_model_picked_after_a_run_leaves_its_cells_under_the_classes_they_were_sorted_by(qtbot, tmp_path):
    # the cell table took the new model's class names at once: at the next redraw the last run's
    # cells stood under the new model's names (its class index 0 read as "c0", not "hct116")
    from tests.test_inference import make_spec, write_model

    other = write_model(tmp_path / "other.onnx", make_spec(k=3))
    win = real_window(qtbot, tmp_path, model="demo")
    demo = win.model_info.classes
    win.start_run()
    run_started(qtbot, win)
    qtbot.waitUntil(lambda: win.table.total >= 3, timeout=30000)
    stopped(qtbot, win)
    shown = [win.table.class_names[k] for k in win.table.classes()]
    assert set(shown) <= set(demo)
    ct = win.controls
    ct.model_path.setText(str(other))
    ct.model_path.editingFinished.emit()
    qtbot.waitUntil(lambda: not win.model_pending, timeout=30000)
    assert win.model_info.classes == ("c0", "c1", "c2") and not win.errors
    assert [ct.target.itemText(i) for i in range(ct.target.count())] == ["c0", "c1", "c2"]  # for the next run
    win.screenshot(tmp_path / "shot.png")  # a redraw of the plots
    assert [win.table.class_names[k] for k in win.table.classes()] == shown
    assert _legend(win.scatter.plot) == list(demo) and _legend(win.histogram.plot) == list(demo)
    assert "last run's cells" in win.statusBar().currentMessage()
    win.close()


def test_lines_drawn_during_a_run_leave_the_labels_at_the_exit_the_tracker_uses(qtbot, tmp_path):
    # dragging the constriction during a run moved the finished cells' labels to the drawn line,
    # while the running tracker still timed its cells at its own exit
    win = real_window(qtbot, tmp_path)
    view = win.camera_view
    win.start_run()
    run_started(qtbot, win)
    qtbot.waitUntil(lambda: view.geometry_px() is not None, timeout=30000)
    tracker = win.controller.pipeline.tracker
    exit_px = tracker.geometry.constriction_x1
    assert not view.run_exit.isVisible()  # the lines are the run's own
    g = view.geometry_px()
    view.region.setRegion((g["constriction_x0"] + 20.0, g["constriction_x1"] + 20.0))
    view.region.sigRegionChangeFinished.emit(view.region)
    assert win.config.tracking.geometry.constriction_end_um == pytest.approx(
        (exit_px + 20.0) * tracker.geometry.pixel_size_um, abs=0.01)  # for the next run
    assert "next start" in win.statusBar().currentMessage()
    assert view.run_exit.isVisible() and view.run_exit.value() == pytest.approx(exit_px)
    labels: list = []
    win.controller.recordsAdded.connect(lambda recs: labels.extend(view.label_positions()))
    qtbot.waitUntil(lambda: len(labels) >= 3, timeout=30000)
    assert tracker.geometry.constriction_x1 == exit_px  # the run kept its own geometry
    assert [x for x, _ in labels] == pytest.approx([exit_px + 3.0] * len(labels))  # a label starts 3 px past its mark
    assert view.geometry_px()["constriction_x1"] == pytest.approx(exit_px + 20.0)  # still what was drawn
    stopped(qtbot, win)
    assert not view.run_exit.isVisible()
    assert view.geometry_px()["constriction_x1"] == pytest.approx(exit_px + 20.0)
    win.close()


def _report_of(events):
    from app.report import report_dir

    return report_dir(events) / "report.md"


def _cells_in(events) -> int:
    import dclab

    with dclab.new_dataset(events) as ds:
        return len(ds)


def test_a_run_that_ends_writes_its_sample_report_beside_the_event_file(qtbot, tmp_path):
    # the daemon writes the report when a run ends (output.report); the window never did
    win = real_window(qtbot, tmp_path, model="demo", output={"report": True})
    at_idle, started = [], []
    c = win.controller
    # the window goes back to idle while a child process draws the report's figures
    c.runFinished.connect(lambda st: at_idle.append((win.reports.pending, win.status_panel.text("report"))))
    c.runClosed.connect(lambda run, st: started.extend(win.reports.processes))
    win.start_run()
    run = run_started(qtbot, win)
    qtbot.waitUntil(lambda: win.table.total >= 3, timeout=30000)
    stopped(qtbot, win)
    report = _report_of(run.events_path)
    assert at_idle == [(1, f"writing {report} …")]
    assert started[0].pid != os.getpid()
    qtbot.waitUntil(lambda: win.reports.pending == 0, timeout=60000)
    assert not win.errors
    assert win.status_panel.text("report") == str(report)
    assert win.statusBar().currentMessage() == f"sample report → {report}"
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Sample report: gui-demo") and f"| cells | {_cells_in(run.events_path)} |" in text
    assert (report.parent / "report.html").is_file()
    # closing the window while a run goes: the run is stopped and its report is written after
    # the window has gone (the window does not wait for the figures)
    started.clear()
    win.start_run()
    run = run_started(qtbot, win)
    qtbot.waitUntil(lambda: win.table.total >= 3, timeout=30000)
    win.close()
    assert len(started) == 1 and win.reports.pending == 0  # left to finish on its own
    assert started[0].wait(timeout=60) == 0
    report = _report_of(run.events_path)
    assert f"| cells | {_cells_in(run.events_path)} |" in report.read_text(encoding="utf-8")
    assert (report.parent / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>")
    assert not list(report.parent.glob("*.part"))


def test_a_report_that_fails_says_why_and_leaves_the_event_file_as_it_was(qtbot, tmp_path):
    win = real_window(qtbot, tmp_path, output={"report": True}, autostop={"events": 3})
    win.start_run()
    run = run_started(qtbot, win)
    blocker = _report_of(run.events_path).parent
    blocker.write_text("not a folder")  # the report's folder cannot be made
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=60000)  # auto-stop
    assert "completed" in win.status_panel.text("state") and not win.errors
    qtbot.waitUntil(lambda: win.reports.pending == 0, timeout=60000)
    assert len(win.errors) == 1 and str(run.events_path) in win.errors[0]
    assert "cannot create the report folder" in win.errors[0]
    assert win.status_panel.text("report").startswith("not written: ") and win.status_panel.alarms["report"]
    assert _cells_in(run.events_path) == win.table.total >= 3
    assert blocker.read_text() == "not a folder"
    win.close()


def test_closing_the_window_while_a_stop_closes_the_files_waits_for_them(qtbot, tmp_path):
    # Stop, then the window closed while the stop's worker closed the files: the window's own
    # close returned at once (the run's close had begun on that worker), and runClosed, whose
    # report reads the event file, came while the event file and raw recording were still open
    import time

    win = real_window(qtbot, tmp_path, output={"record_raw": True})
    closed: list = []
    win.controller.runClosed.connect(lambda run, st: closed.append((run.closed_all, st.cells)))
    win.start_run()
    run = run_started(qtbot, win)
    qtbot.waitUntil(lambda: run.status().cells >= 3, timeout=30000)
    win.stop_run()
    t0 = time.monotonic()
    while not run.closed and time.monotonic() - t0 < 30.0:  # the stop's worker has begun to close
        time.sleep(0.001)
    assert run.closed and not run.closed_all, "the files closed before the window could be closed: no race shown"
    win.close()
    assert run.closed_all
    assert len(closed) == 1 and closed[0][0], "runClosed came before the run's files were closed"
    assert closed[0][1] == run.status().cells


def test_a_trigger_that_fails_mid_run_says_how_many_cells_went_unsorted(qtbot, tmp_path):
    # the pulse log's disk is full (/dev/full): the trigger fails at the first pulse it flushes.
    # The run goes on, the warning reaches the window, and the Trigger row counts the target cells
    # it could not fire (the snapshot's trigger_failed, shown nowhere: "Fired | aborted" read "0 | 0")
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    from app.config import bundled_model_path

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model has not been built")
    win = real_window(qtbot, tmp_path, model="demo", trigger={"log.path": "/dev/full", "log.flush_s": 0.0})
    win.start_run()
    run = run_started(qtbot, win)
    qtbot.waitUntil(lambda: run.status().trigger_failed >= 2, timeout=30000)
    win.stop_run()
    qtbot.waitUntil(lambda: win.controller.run is None and not win.controller.busy, timeout=60000)
    st = run.status()
    assert st.finish_reason.value == "canceled" and st.trigger_failed >= 2
    row = win.status_panel.values["trigger"]
    assert win.status_panel.text("trigger") == f"FAULT, {st.trigger_failed} not fired"
    assert win.status_panel.alarms["trigger"] and "No space left on device" in row.toolTip()
    assert any("No space left on device" in w for w in win.warnings)
    # its close fails the same way: that is the failure already said, not one of closing the run's
    # files ("closing the run failed: trigger: … No space left on device" read as if they had not
    # closed; the daemon's exit code said 1 instead of the trigger's 3)
    assert not any("closing the run failed" in e for e in win.errors), win.errors
    win.close()
