"""The operator's main window: camera view, live plots, run counters and every setting of a run.

The window holds the run configuration (the same frozen dataclasses the daemon reads) and shows it
in the control panel; every edit goes through :func:`app.gui.models.config_with`, so invalid values
are refused with the key path, and File ▸ Save writes the TOML that ``mimlsort run`` accepts.
Sort settings and the gate drawn on the scatter plot reach a running pipeline at once
(``set_policy``); settings that define a run (camera, model, files) apply at the next start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.camera import FLOW_DIRECTIONS
from app.gui.camera_view import CameraView
from app.gui.controller import RunController, describe_error
from app.gui.models import FeatureTable, ModelInfo, StatusRow, config_get, config_with, inspect_model
from app.gui.panels import ControlPanel
from app.gui.plots import HistogramPanel, ScatterPanel, StatusPanel
from app.gui.report_job import ReportJobs
from app.gui.qt import QtCore, QtGui, QtWidgets
from mimlsort.errors import ConfigError, MimlsortError

log = logging.getLogger(__name__)

PLOT_HZ = 5.0  # scatter/histogram redraws per second: axes and thousands of points are the costliest paint
MESSAGE_MS = 8000


def default_config_path() -> Path:
    base = QtCore.QStandardPaths.writableLocation(QtCore.QStandardPaths.StandardLocation.AppConfigLocation)
    return Path(base or Path.home() / ".config" / "mimlsort") / "run.toml"


def _load_config(path: Path | None) -> Any:
    from app.config import RunConfig, load_config

    if path is not None and path.is_file():
        return load_config(path)
    return RunConfig()


class MainWindow(QtWidgets.QMainWindow):
    """See the module docstring. ``config`` overrides loading ``config_path``; ``factory`` builds runs
    (default :func:`app.session.build_run`); ``settings`` is the QSettings for window state."""

    def __init__(self, config: Any = None, config_path: str | Path | None = None, *, factory=None,
                 settings: QtCore.QSettings | None = None, refresh_hz: float = 30.0,
                 model_loader=inspect_model, save_on_close: bool = True):
        super().__init__()
        self.setWindowTitle("mimlsort")
        self.settings = settings if settings is not None else QtCore.QSettings("mimlsort", "mimlsort-gui")
        stored = self.settings.value("config_path", "")
        self.config_path = Path(config_path) if config_path else (Path(stored) if stored else default_config_path())
        load_error = ""
        try:
            self.config = config if config is not None else _load_config(self.config_path)
        except MimlsortError as e:  # open with defaults and say why; never overwrite the broken file
            from app.config import RunConfig

            self.config, load_error = RunConfig(), f"{e} — using the defaults"
            save_on_close = False
        self.model_loader = model_loader
        self.save_on_close = save_on_close
        self.model_info: ModelInfo | None = None
        self.table = FeatureTable()
        self._pixel_size_um: float = float(config_get(self.config, "camera.pixel_size_um", 0.0) or 0.0)
        self._x_exit_px = 0.0  # the running tracker's constriction exit, where finished cells are labelled
        self._drawn_in_run = False  # the channel lines were drawn (for the next run) while this one runs
        # the quarter turns and sensor offsets (x, y) of the run whose frames the camera view shows
        self._view_source: tuple[int, tuple[int, int]] = (0, (0, 0))
        self._plots_dirty = False
        self._dialog: QtWidgets.QMessageBox | None = None
        self.errors: list[str] = []  # everything shown to the operator, for the log and tests
        self.warnings: list[str] = []  # the run's warnings since the last Start (the log has them all)
        self._model_seq = 0
        self.model_pending = False  # a model file is being loaded and described
        self.test_pulses = 0

        self.controller = RunController(factory, refresh_hz=refresh_hz, parent=self)
        self.reports = ReportJobs()  # sample reports being written by child processes
        self.camera_view = CameraView()
        self.scatter = ScatterPanel()
        self.histogram = HistogramPanel()
        self.status_panel = StatusPanel()
        self.controls = ControlPanel()

        plots = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        plots.addWidget(self.scatter)
        plots.addWidget(self.histogram)
        plots.setStretchFactor(0, 3)
        plots.setStretchFactor(1, 2)
        central = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        central.addWidget(self.camera_view)
        central.addWidget(plots)
        central.setStretchFactor(0, 2)
        central.setStretchFactor(1, 3)
        self.setCentralWidget(central)
        self._splitters = {"central": central, "plots": plots}

        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.controls)
        scroll.setMinimumWidth(self.controls.sizeHint().width() + 24)  # room for the scroll bar
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._dock("Controls", scroll, QtCore.Qt.DockWidgetArea.LeftDockWidgetArea)
        self._dock("Run status", self.status_panel, QtCore.Qt.DockWidgetArea.RightDockWidgetArea)
        self._build_menu()
        self.statusBar().showMessage("ready")

        c = self.controller
        c.statusChanged.connect(self.status_panel.update_status)
        c.recordsAdded.connect(self._records)
        c.frameReady.connect(self.camera_view.set_frame)
        c.tracksChanged.connect(self.camera_view.set_tracks)
        c.geometryReady.connect(self._geometry_ready)
        c.runStarted.connect(self._run_started)
        c.runFinished.connect(self._run_finished)
        c.runClosed.connect(self._run_closed)
        c.busyChanged.connect(lambda busy: self.controls.set_running(c.run is not None, busy, c.starting))
        c.errorOccurred.connect(self.show_error)
        c.warningLogged.connect(self.show_warning)
        c.startFailed.connect(self._start_failed)
        c.message.connect(lambda m: self.statusBar().showMessage(m, MESSAGE_MS))
        ct = self.controls
        ct.changed.connect(self.apply_changes)
        ct.startRequested.connect(self.start_run)
        ct.stopRequested.connect(self.stop_run)
        ct.testFireRequested.connect(self.test_fire)
        ct.autoDetectRequested.connect(self.auto_detect)
        ct.modelRequested.connect(self.load_model)
        self.scatter.gateChanged.connect(self.set_gate)
        self.scatter.error.connect(self.show_error)
        self.camera_view.geometryEdited.connect(self._geometry_edited)
        self.camera_view.roiEdited.connect(self._roi_edited)

        self._plot_timer = QtCore.QTimer(self)
        self._plot_timer.setInterval(int(1000 / PLOT_HZ))
        self._plot_timer.timeout.connect(self._refresh_plots)
        self._plot_timer.start()
        self._report_timer = QtCore.QTimer(self)
        self._report_timer.setInterval(250)
        self._report_timer.timeout.connect(self._poll_reports)
        self._report_timer.start()

        self.controls.load(self.config)
        gates = config_get(self.config, "sorting.polygon_gates", ())
        if gates:
            self.scatter.set_gate(gates[0])
        self._restore_window()
        if load_error:
            QtCore.QTimer.singleShot(0, lambda: self.show_error(load_error))
        self.load_model(config_get(self.config, "model.path", ""), config_get(self.config, "model.provider", "auto"))

    # -- layout -----------------------------------------------------------------------------------
    def _dock(self, title: str, widget: QtWidgets.QWidget, area: QtCore.Qt.DockWidgetArea) -> QtWidgets.QDockWidget:
        d = QtWidgets.QDockWidget(title, self)
        d.setObjectName(title.replace(" ", "_"))
        d.setWidget(widget)
        self.addDockWidget(area, d)
        return d

    def _build_menu(self) -> None:
        m = self.menuBar().addMenu("&File")
        for text, slot, key in (("&Open configuration…", self.open_config, QtGui.QKeySequence.StandardKey.Open),
                                ("&Save configuration", self.save_config, QtGui.QKeySequence.StandardKey.Save),
                                ("Save configuration &as…", self.save_config_as, QtGui.QKeySequence.StandardKey.SaveAs),
                                ("Save &screenshot…", self._screenshot_dialog, None),
                                ("&Quit", self.close, QtGui.QKeySequence.StandardKey.Quit)):
            a = m.addAction(text)
            a.triggered.connect(lambda *_, s=slot: s())
            if key is not None:
                a.setShortcut(key)
        r = self.menuBar().addMenu("&Run")
        for text, slot, key in (("&Start", self.start_run, "F5"), ("S&top", self.stop_run, "Shift+F5"),
                                ("&Test fire", self.test_fire, None), ("&Auto-detect geometry", self.auto_detect, None)):
            a = r.addAction(text)
            a.triggered.connect(lambda *_, s=slot: s())
            if key is not None:
                a.setShortcut(QtGui.QKeySequence(key))
        v = self.menuBar().addMenu("&View")
        for d in self.findChildren(QtWidgets.QDockWidget):
            v.addAction(d.toggleViewAction())

    def _restore_window(self) -> None:
        geo = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1400, 900)
        if state is not None:
            self.restoreState(state)
        for name, sp in self._splitters.items():
            s = self.settings.value(f"window/splitter_{name}")
            if s is not None:
                sp.restoreState(s)
        hist = self.settings.value("plots/histogram_feature")
        if hist:
            i = self.histogram.box.findData(str(hist))
            if i >= 0:
                self.histogram.box.setCurrentIndex(i)
        axes = self.settings.value("plots/scatter_axes")
        if axes and len(axes) == 2 and not config_get(self.config, "sorting.polygon_gates", ()):
            self.scatter.set_axes(str(axes[0]), str(axes[1]))

    def _save_window(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        for name, sp in self._splitters.items():
            self.settings.setValue(f"window/splitter_{name}", sp.saveState())
        self.settings.setValue("plots/scatter_axes", [self.scatter.x, self.scatter.y])
        self.settings.setValue("plots/histogram_feature", self.histogram.feature)
        self.settings.setValue("config_path", str(self.config_path))
        self.settings.sync()

    # -- errors -----------------------------------------------------------------------------------
    def show_warning(self, text: str) -> None:
        """A warning of the run's (a model trained at another pixel size, cells coming faster than
        they are decided …): they went only to the terminal, which an operator who started the
        window from the desktop never sees. The status bar says it; the Warnings row keeps them."""
        self.warnings.append(text)
        del self.warnings[:-50]
        self.statusBar().showMessage(f"warning: {text}", 2 * MESSAGE_MS)
        self.status_panel.set_row(StatusRow("warnings", "Warnings", f"{len(self.warnings)}: {text}", True,
                                            "\n".join(self.warnings[-10:])))

    def _start_failed(self, text: str) -> None:
        # the panel still showed the last run's "finished" and its counts: the failure must stay
        # on the window after the status bar's message has gone
        self.status_panel.set_row(StatusRow("state", "State", f"failed to start: {text}", True, text))

    def show_error(self, text: str) -> None:
        """Status bar and a non-modal dialog: the operator sees it, acquisition and the UI go on."""
        log.error("%s", text)
        self.errors.append(text)
        self.statusBar().showMessage(f"error: {text}", 2 * MESSAGE_MS)
        if self._dialog is None:
            self._dialog = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Icon.Warning, "mimlsort", text,
                                                 QtWidgets.QMessageBox.StandardButton.Ok, self)
            self._dialog.setWindowModality(QtCore.Qt.WindowModality.NonModal)
            self._dialog.finished.connect(self._dialog_closed)
            self._dialog.show()
        else:  # one dialog; later errors are added, not stacked
            self._dialog.setText(self._dialog.text() + "\n" + text)

    def _dialog_closed(self, *_: Any) -> None:
        self._dialog = None

    # -- configuration ----------------------------------------------------------------------------
    def apply_changes(self, changes: dict[str, Any]) -> bool:
        """Apply ``{key path: value}`` to the configuration; refused values are reported and undone."""
        try:
            cfg, unsupported = config_with(self.config, changes)
        except (ConfigError, TypeError, ValueError) as e:  # a settings class's own check may raise the others
            self.show_error(str(e) if isinstance(e, ConfigError) else f"{', '.join(changes)}: {e}")
            self.controls.load(self.config)  # show what is in effect again
            return False
        if unsupported:
            self.statusBar().showMessage(f"not in this configuration: {', '.join(unsupported)}", MESSAGE_MS)
        self.config = cfg
        keys = set(changes)
        if keys & {"camera.backend", "trigger.backend"}:
            self.controls.load(cfg)  # the backend's own keys now
        if any(k.startswith("sorting.") for k in keys):
            self._push_policy()
        return not unsupported

    def open_config(self, path: str | Path | None = None) -> None:
        if self.controller.run is not None or self.controller.busy:
            # the panel would show settings the running camera, model and files do not have
            self.show_error("stop the run before opening another configuration")
            return
        if path is None:
            path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Run configuration", str(self.config_path),
                                                            "TOML (*.toml)")
            if not path:
                return
        from app.config import load_config

        try:
            cfg = load_config(path)
        except MimlsortError as e:
            self.show_error(str(e))
            return
        self.config = cfg
        self.config_path = Path(path)
        self.controls.load(cfg)
        gates = config_get(cfg, "sorting.polygon_gates", ())
        self.scatter.set_gate(gates[0] if gates else None)
        self.load_model(config_get(cfg, "model.path", ""), config_get(cfg, "model.provider", "auto"))
        self.statusBar().showMessage(f"loaded {path}", MESSAGE_MS)

    def _enter_typed(self) -> bool:
        """Apply what is typed in the control panel but not entered yet (see ``ControlPanel.commit``);
        False when a value was refused."""
        n = len(self.errors)
        self.controls.commit()
        return len(self.errors) == n

    def save_config(self, path: str | Path | None = None) -> bool:
        from app.config import save_config

        self._enter_typed()
        path = Path(path) if path is not None else self.config_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_config(self.config, path)
        except OSError as e:
            self.show_error(f"{path}: cannot save the configuration: {e}")
            return False
        self.config_path = path
        self.statusBar().showMessage(f"saved {path}", MESSAGE_MS)
        return True

    def save_config_as(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save run configuration", str(self.config_path),
                                                        "TOML (*.toml)")
        if path:
            self.save_config(path)

    # -- model ------------------------------------------------------------------------------------
    def load_model(self, path: str, provider: str = "auto") -> None:
        """Describe the model at ``path`` (classes, features, provider, latency) off the UI thread."""
        self._model_seq += 1
        seq = self._model_seq
        if not path or path == "none":
            self.model_info = None
            self.controls.set_model_info(None)
            self.model_pending = False
            return
        self.model_pending = True
        self.controls.model_info.setText(f"loading {path} …")
        loader = self.model_loader

        def done(info: ModelInfo) -> None:
            if seq != self._model_seq:  # the operator picked another model meanwhile
                return
            self.model_pending = False
            self.model_info = info
            self.controls.set_model_info(info)
            notes = []
            if not self.table.total:  # the legends name the classes a run will have
                self.table.class_names = info.classes
            elif tuple(info.classes) != self.table.class_names:
                # the table's class of each cell is an index into the names of the model that
                # classified it: the new model's names put the last run's cells under other classes
                notes.append("the plots keep the last run's cells under its model's classes until the next start")
            targets = config_get(self.config, "sorting.target_classes", ())
            if targets and not set(targets) <= set(info.classes):
                self.apply_changes({"sorting.target_classes": (info.classes[0],)})
                notes.insert(0, f"target class set to {info.classes[0]}: the model has no {', '.join(targets)}")
            if notes:
                self.statusBar().showMessage("; ".join(notes), MESSAGE_MS)
            self.controls.load(self.config)

        def failed(err: BaseException) -> None:
            if seq != self._model_seq:
                return
            self.model_pending = False
            self.model_info = None
            self.controls.set_model_info(None, describe_error(err))
            self.show_error(describe_error(err))

        self.controller.submit(lambda: loader(path, provider), done, failed)

    # -- sorting ----------------------------------------------------------------------------------
    def set_gate(self, gate: Any) -> None:
        """The gate drawn on the scatter plot becomes the sort gate (live when running).

        The plot edits the first polygon gate; further ones from the TOML file are kept as they are.
        """
        rest = tuple(config_get(self.config, "sorting.polygon_gates", ())[1:])
        self.apply_changes({"sorting.polygon_gates": ((gate,) if gate is not None else ()) + rest})
        self.statusBar().showMessage("sort gate cleared" if gate is None else
                                     f"sort gate on {gate.y} vs {gate.x} ({len(gate.points)} vertices)", MESSAGE_MS)

    def _push_policy(self) -> None:
        if not self.controller.running:
            return
        names = self.controller.class_names()
        if not names:
            return
        from app.sorting import SortPolicy

        try:
            policy = SortPolicy(config_get(self.config, "sorting"), names)
            self.controller.set_policy(policy)
        except MimlsortError as e:
            self.show_error(str(e))

    def test_fire(self) -> None:
        self._enter_typed()  # the trigger's port as typed
        run_trigger = getattr(self.controller.pipeline, "trigger", None)
        cfg = self.config

        def fire():
            if run_trigger is not None:
                return run_trigger.test_fire()
            import contextlib

            from hardware.trigger import make_trigger

            with contextlib.ExitStack() as stack:
                # a camera-line trigger fires the run's camera's line: that camera, opened for the
                # pulse as configured (made without it, every test pulse at idle failed)
                resources = {"camera": stack.enter_context(cfg.camera.make_camera())} \
                    if cfg.trigger.backend == "camera-line" else {}
                trig = stack.enter_context(make_trigger(cfg.trigger.backend, cfg.trigger.backend_settings(),
                                                        cfg.trigger.timing, **resources))
                rec = trig.test_fire()
                if rec.ok:  # closing disarms the device: its pulse would be dropped
                    trig.settle(timeout_s=2.0)
                return rec

        def sent(rec: Any) -> None:
            where = "the running trigger" if run_trigger is not None else f"the {cfg.trigger.backend} trigger"
            if not getattr(rec, "ok", True):  # it said "sent" for a pulse that was late or refused
                self.show_error(f"test pulse not sent through {where}: {getattr(rec, 'error', '') or 'failed'}")
                return
            self.test_pulses += 1
            self.statusBar().showMessage(f"test pulse sent through {where}", MESSAGE_MS)

        self.controller.submit(fire, sent)

    # -- geometry ---------------------------------------------------------------------------------
    def _geometry_ready(self, g: Any) -> None:
        self._pixel_size_um = g.pixel_size_um
        self._x_exit_px = g.constriction_x1
        if not self._drawn_in_run:  # a channel that moved must not undo the lines drawn for the next run
            self.camera_view.set_geometry(g.constriction_x0, g.constriction_x1, g.channel_y0, g.channel_y1,
                                          g.pixel_size_um)
        self.camera_view.set_run_exit(g.constriction_x1, g.pixel_size_um)

    def _geometry_edited(self, g: dict[str, float]) -> None:
        # the next run turns these µm back into pixels with the pixel size set in the panel, when
        # one is (0: the camera's, as the last run had it); a pixel size corrected since the last
        # run put the drawn constriction elsewhere, or outside the ROI
        px = float(config_get(self.config, "camera.pixel_size_um", 0.0) or 0.0) or self._pixel_size_um
        if not px:
            self.show_error("the pixel size is unknown: set camera.pixel_size_um before editing the geometry")
            return
        # not the labels' place: the running tracker keeps its own exit (they moved to the drawn line)
        self._drawn_in_run = self.controller.running
        ok = self.apply_changes({
            "tracking.geometry.constriction_start_um": round(g["constriction_x0"] * px, 2),
            "tracking.geometry.constriction_end_um": round(g["constriction_x1"] * px, 2),
            "tracking.geometry.channel_top_um": round(g["channel_y0"] * px, 2),
            "tracking.geometry.channel_bottom_um": round(g["channel_y1"] * px, 2),
        })
        if ok:
            self.statusBar().showMessage("channel geometry set" + (
                "; it applies from the next start (this run tracks with its own: the dashed line is its exit)"
                if self.controller.running else ""), MESSAGE_MS)

    def _roi_edited(self, r: dict[str, int]) -> None:
        """The box drawn on the image becomes the camera ROI of the next run (offsets where the backend has them)."""
        from app.gui.models import sensor_box, table_fields

        backend = config_get(self.config, "camera.backend", "synthetic")
        section = f"camera.{backend}"
        fields = table_fields(self.config, section)
        # the box is drawn on the frames shown: turned as their run turned them, and taken at that
        # run's offsets (a second edit added its offset to the first edit's)
        turns, base = self._view_source
        x, y, w, h = sensor_box(r["x"], r["y"], r["width"], r["height"], self.camera_view.image_shape, turns)
        changes: dict[str, Any] = {}
        if "width" in fields and "height" in fields:
            changes[f"{section}.width"] = w
            changes[f"{section}.height"] = h
        for v, b, key in ((x, base[0], "offset_x"), (y, base[1], "offset_y")):
            if key in fields and (v or config_get(self.config, f"{section}.{key}", 0) != b):
                changes[f"{section}.{key}"] = b + v
        if not changes:
            self.statusBar().showMessage(f"the {backend} camera has no ROI setting", MESSAGE_MS)
            return
        if self.apply_changes(changes):
            self.controls.load(self.config)
            self.statusBar().showMessage(f"camera ROI {w}×{h} px applies from the next start",
                                         MESSAGE_MS)

    def auto_detect(self) -> None:
        """Detect the constriction and walls from the running camera's recent frames, or from a
        short grab of the configured camera when idle (the last run's frames may be of another
        camera or ROI)."""
        running = self.controller.run is not None
        frames = list(self.controller.frames) if running else []
        cfg = self.config
        px = self._pixel_size_um if running else cfg.camera.pixel_size_um

        def detect():
            from tracking.detect import detect_geometry

            stack = frames
            pixel = px
            if len(stack) < 4:
                stack, pixel = _grab_frames(cfg, 32)
                pixel = px or pixel
            bg = np.median(np.stack(stack), axis=0).astype(stack[0].dtype)
            return detect_geometry(bg, pixel), pixel

        def done(res: tuple[Any, float]) -> None:
            g, pixel = res
            self._pixel_size_um = pixel
            self.camera_view.set_geometry(g.constriction_x0, g.constriction_x1, g.channel_y0, g.channel_y1, pixel)
            self._geometry_edited(self.camera_view.geometry_px())

        self.statusBar().showMessage("detecting the channel geometry …", MESSAGE_MS)
        self.controller.submit(detect, done)

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self) -> None:
        if self.controller.run is not None or self.controller.busy:
            return
        if not self._enter_typed():
            return  # a typed value was refused (the dialog says why): not the run the operator meant
        if self.config_path is not None and self.save_on_close:
            self.save_config()  # the run's settings are on disk before it starts
        # the last run's cells stay on the plots until this one has started (a failed start keeps them)
        self.warnings.clear()
        # it stayed on "finished" for the minute the first start compiles the tracker's kernels
        self.status_panel.set_row(StatusRow("state", "State", "starting: opening the camera and loading the tracker "
                                            "(the first start on a machine compiles it: about a minute) …"))
        if "warnings" in self.status_panel.values:
            self.status_panel.set_row(StatusRow("warnings", "Warnings", "none"))
        self.controller.start(self.config)  # its busyChanged enables Stop for the start

    def stop_run(self) -> None:
        self.controller.stop()

    def _run_started(self, run: Any) -> None:
        cfg = getattr(run, "config", None) or self.config
        section = f"camera.{config_get(cfg, 'camera.backend', '')}"
        self._view_source = (FLOW_DIRECTIONS.get(config_get(cfg, "camera.flow_direction", ""), 0),
                             (int(config_get(cfg, f"{section}.offset_x", 0) or 0),
                              int(config_get(cfg, f"{section}.offset_y", 0) or 0)))
        self._drawn_in_run = False
        names = self.controller.class_names()
        self.table.clear(names)
        self.scatter.set_classes(names)
        # redrawn empty now: a run with no cell yet showed the last run's cells and "N cells shown"
        self._plots_dirty = True
        self.controls.set_running(True, False)
        path = getattr(run, "events_path", None)
        text = f"running; events → {Path(path).absolute()}" if path else "running"
        if self.warnings:  # logged while it was built: this message replaces theirs
            text += f" ({len(self.warnings)} warning{'s' * (len(self.warnings) > 1)}: see Run status)"
        self.statusBar().showMessage(text, MESSAGE_MS)
        self._push_policy()  # a gate drawn while starting still counts

    def _run_finished(self, status: Any) -> None:
        self.controls.set_running(False, False)
        if status is None and self.status_panel.text("state").startswith("starting"):
            self.status_panel.set_row(StatusRow("state", "State", "start canceled"))  # stopped while it was built
        self.camera_view.clear_cells()
        self.camera_view.set_run_exit(None)
        self._drawn_in_run = False
        self._plots_dirty = True

    # -- sample report ----------------------------------------------------------------------------
    def _run_closed(self, run: Any, status: Any) -> None:
        """Write the sample report beside the closed run's event file when ``output.report`` is on,
        as ``mimlsort run`` does, by ``mimlsort report`` in a child process (see app.gui.report_job)."""
        path = getattr(run, "events_path", None)
        if not config_get(getattr(run, "config", None), "output.report", False) or path is None:
            return
        if not Path(path).is_file() or not getattr(status, "cells", 0):
            self.status_panel.set_row(StatusRow("report", "Report", "none: no cell was measured"))
            return
        try:
            where = self.reports.start(path)
        except OSError as e:  # no process could be started (out of memory, process limit)
            self._report_failed(Path(path), f"the report process could not be started: {e}")
            return
        self.status_panel.set_row(StatusRow("report", "Report", f"writing {where} …", False, str(where)))
        done = self.statusBar().currentMessage()
        self.statusBar().showMessage((f"{done}; " if done else "") + f"writing the sample report → {where}",
                                     MESSAGE_MS)

    def _poll_reports(self) -> None:
        for r in self.reports.poll():
            if r.error:
                self._report_failed(r.events, r.error)
                continue
            log.info("sample report → %s", r.markdown)
            self.status_panel.set_row(StatusRow("report", "Report", str(r.markdown), False,
                                                f"the sample report of {r.events}"))
            self.statusBar().showMessage(f"sample report → {r.markdown}", MESSAGE_MS)

    def _report_failed(self, events: Path, why: str) -> None:
        text = f"{events}: the sample report could not be written: {why}"
        self.status_panel.set_row(StatusRow("report", "Report", f"not written: {why}", True, text))
        self.show_error(text)

    def _records(self, records: list[Any]) -> None:
        new = self.table.extend(records)
        if new:
            self._plots_dirty = True
            # the running tracker's own exit where it has one: records can come before its
            # geometry's signal does (two labels stood at x 0 on a loaded host)
            g = getattr(getattr(self.controller.pipeline, "tracker", None), "geometry", None)
            x = g.constriction_x1 if g is not None else self._x_exit_px
            self.camera_view.add_finished(new, self.table.class_names, x)

    def _refresh_plots(self) -> None:
        if not self._plots_dirty or not self.isVisible():
            return
        self._plots_dirty = False
        try:
            self.scatter.refresh(self.table)
            self.histogram.refresh(self.table)
        except Exception as e:  # a plot must never take the window down
            self.show_error(describe_error(e))

    # -- screenshot / close -----------------------------------------------------------------------
    def screenshot(self, path: str | Path) -> Path:
        self._plots_dirty = True
        self._refresh_plots()
        img = self.grab()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not img.save(str(path)):
            raise MimlsortError(f"{path}: could not write the screenshot")
        return path

    def _screenshot_dialog(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Screenshot", "mimlsort.png", "PNG (*.png)")
        if path:
            self.screenshot(path)

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        self._plot_timer.stop()
        self.controller.shutdown()  # a run still going is stopped, and its report started
        self._report_timer.stop()
        self.reports.leave()  # they finish on their own: the window does not wait for figures
        self._save_window()
        if self.save_on_close:
            self.save_config()
        super().closeEvent(event)


def _grab_frames(cfg: Any, n: int) -> tuple[list[np.ndarray], float]:
    """``n`` frames from the configured camera (opened and closed here), and its pixel size."""
    frames = []
    with cfg.camera.make_camera() as cam:
        cam.start()
        for _ in range(4 * n):
            f = cam.read(timeout_s=1.0)
            if f is not None:
                frames.append(f.image)
            if len(frames) >= n or cam.exhausted:
                break
        px = cam.info.pixel_size_um
    if not frames:
        raise MimlsortError(f"the {cfg.camera.backend} camera delivered no frames for geometry detection")
    return frames, px
