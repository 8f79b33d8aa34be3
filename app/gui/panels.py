"""The control panel: every setting of a run, bound to a key path of the run configuration.

A control does not hold state of its own: it shows the value at its key in the configuration and,
when the operator changes it, emits ``changed({path: value})``; the window validates that against
the configuration (ConfigError names the key) and shows the result again. A control whose key the
configuration (or the selected backend) does not have is disabled, so what is on screen is always
what the daemon would read from the saved TOML.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from acquisition.camera import FLOW_DIRECTIONS
from app.gui.models import ModelInfo, config_get, config_value, first_field
from app.gui.qt import QtCore, QtWidgets, Signal

CAMERA_BACKENDS = ("synthetic", "replay", "basler", "genicam", "ximea")
TRIGGER_BACKENDS = ("null", "log", "serial", "visa", "camera-line", "nidaqmx")
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
SORT_MODES = ("purity", "yield", "single-cell")

NO_VALUE = "—"  # what a box shows for a setting the selected backend does not have

# field names a backend may use for the same thing (first match wins)
DEVICE_KEYS = ("path", "serial", "device", "device_id", "cti", "index")
TRIGGER_DEVICE_KEYS = ("port", "resource", "device", "line", "channel", "path")


class TargetList(QtWidgets.QListWidget):
    """The model's classes with a check box each: the cells of every checked class are sorted.

    ``changed`` fires when the operator checks or unchecks one (not when the list is reloaded).
    """

    changed = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self._quiet = False
        self.setMaximumHeight(84)
        self.itemChanged.connect(self._item_changed)

    def _item_changed(self, item) -> None:
        if self._quiet:
            return
        if not self.checked():  # sorting needs a target: the last check stays
            self._quiet = True
            item.setCheckState(QtCore.Qt.CheckState.Checked)
            self._quiet = False
            return
        self.changed.emit()

    def set_names(self, names: Sequence[str]) -> None:
        """Offer ``names``, keeping the checks of those still offered."""
        keep = set(self.checked())
        self._quiet = True
        try:
            self.clear()
            for name in names:
                it = QtWidgets.QListWidgetItem(str(name), self)
                it.setFlags(it.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
                it.setCheckState(QtCore.Qt.CheckState.Checked if name in keep else QtCore.Qt.CheckState.Unchecked)
        finally:
            self._quiet = False

    def checked(self) -> tuple[str, ...]:
        return tuple(self.item(i).text() for i in range(self.count())
                     if self.item(i).checkState() == QtCore.Qt.CheckState.Checked)

    def set_checked(self, names: Sequence[str]) -> None:
        """Check exactly ``names`` (added to the list if missing), without emitting ``changed``."""
        self._quiet = True
        try:
            have = {self.item(i).text() for i in range(self.count())}
            for name in names:
                if name not in have:
                    it = QtWidgets.QListWidgetItem(str(name), self)
                    it.setFlags(it.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
            for i in range(self.count()):
                it = self.item(i)
                it.setCheckState(QtCore.Qt.CheckState.Checked if it.text() in names else QtCore.Qt.CheckState.Unchecked)
        finally:
            self._quiet = False

    def itemText(self, i: int) -> str:  # noqa: N802 - the QComboBox name, for callers of either
        return self.item(i).text()

    def setCurrentIndex(self, i: int) -> None:  # noqa: N802
        """Sort class ``i`` only (as the operator would by checking it alone)."""
        self.set_checked((self.item(i).text(),))
        self.changed.emit()


def _cam(*keys: str) -> Callable[[Any], str | None]:
    def path(cfg: Any) -> str | None:
        backend = config_get(cfg, "camera.backend", "synthetic")
        return first_field(cfg, f"camera.{backend}", keys)
    return path


def _trig(*keys: str) -> Callable[[Any], str | None]:
    def path(cfg: Any) -> str | None:
        backend = config_get(cfg, "trigger.backend", "log")
        return first_field(cfg, f"trigger.{backend.replace('-', '_')}", keys)
    return path


def _fixed(path: str) -> Callable[[Any], str | None]:
    def resolve(cfg: Any) -> str | None:
        return path if config_get(cfg, path, _NONE) is not _NONE else None
    return resolve


_NONE = object()


@dataclass
class Binding:
    widget: QtWidgets.QWidget
    path: Callable[[Any], str | None]
    kind: str  # combo | text | float | optfloat (None shown as the minimum's special text) | int | bool | classes
    current: str | None = None
    special: str = ""  # a spin box's own text for its minimum ("no limit"), given back when it is bound again


def _spin(lo: float, hi: float, decimals: int = 2, step: float = 1.0, suffix: str = "") -> QtWidgets.QDoubleSpinBox:
    s = QtWidgets.QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setDecimals(decimals)
    s.setSingleStep(step)
    s.setSuffix(suffix)
    s.setKeyboardTracking(False)  # one change when the operator is done typing, not per key
    return s


def _ispin(lo: int, hi: int, suffix: str = "", special: str = "") -> QtWidgets.QSpinBox:
    s = QtWidgets.QSpinBox()
    s.setRange(lo, hi)
    s.setSuffix(suffix)
    s.setKeyboardTracking(False)
    if special:
        s.setSpecialValueText(special)
    return s


def _combo(items: Sequence[str]) -> QtWidgets.QComboBox:
    c = QtWidgets.QComboBox()
    c.addItems(list(items))
    return c


class ControlPanel(QtWidgets.QWidget):
    changed = Signal(object)  # {key path: value}
    startRequested = Signal()
    stopRequested = Signal()
    testFireRequested = Signal()
    autoDetectRequested = Signal()
    modelRequested = Signal(str, str)  # path, provider: load and describe this model

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self._bindings: list[Binding] = []
        self._run_state = (False, False, False)
        self._loading = False
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)

        # run control
        run = QtWidgets.QGroupBox("Run")
        f = QtWidgets.QGridLayout(run)
        self.start_btn = QtWidgets.QPushButton("Start")
        self.stop_btn = QtWidgets.QPushButton("Stop")
        self.start_btn.setStyleSheet("font-weight: bold")
        self.stop_btn.setEnabled(False)
        self.record_raw = QtWidgets.QCheckBox("Record raw video")
        f.addWidget(self.start_btn, 0, 0)
        f.addWidget(self.stop_btn, 0, 1)
        f.addWidget(self.record_raw, 1, 0, 1, 2)
        self.start_btn.clicked.connect(self.startRequested)
        self.stop_btn.clicked.connect(self.stopRequested)
        self._bind(self.record_raw, _fixed("output.record_raw"), "bool")
        lay.addWidget(run)

        # camera
        cam = QtWidgets.QGroupBox("Camera")
        f = QtWidgets.QFormLayout(cam)
        self.backend = _combo(CAMERA_BACKENDS)
        self.device = QtWidgets.QLineEdit()
        self.device.setPlaceholderText("serial number / recording file")
        # 0 keeps a vendor camera's own exposure and ROI: it read "1.0 µs" and "8 px × 8 px" (the
        # boxes' minimums) for a camera that delivered 1024×1040, and 0 could not be entered
        self.exposure = _spin(1, 1e6, 1, 10, " µs")
        self.fps = _spin(0, 1e6, 1, 100, " fps")  # 0: a replay's unset rate (the recording's own)
        self.roi_w = _ispin(8, 8192, " px")
        self.roi_h = _ispin(8, 8192, " px")
        # a vendor camera's 0 keeps its own value (see load); the simulator needs a number
        self._keep_zero = {self.exposure: (1.0, "the camera's"), self.roi_w: (8, "camera's"),
                           self.roi_h: (8, "camera's")}
        self.pixel_size = _spin(0, 100, 4, 0.01, " µm/px")
        self.pixel_size.setSpecialValueText("from camera")
        self.flow = _combo(tuple(FLOW_DIRECTIONS))
        self.flow.setToolTip("the way cells move in the camera's image; frames are turned so that they move "
                             "left to right")
        self.autodetect_btn = QtWidgets.QPushButton("Auto-detect channel geometry")
        roi = QtWidgets.QHBoxLayout()
        roi.addWidget(self.roi_w)
        roi.addWidget(QtWidgets.QLabel("×"))
        roi.addWidget(self.roi_h)
        f.addRow("Backend", self.backend)
        f.addRow("Device", self.device)
        f.addRow("Exposure", self.exposure)
        f.addRow("Frame rate", self.fps)
        f.addRow("ROI", roi)
        f.addRow("Pixel size", self.pixel_size)
        f.addRow("Flow in image", self.flow)
        f.addRow(self.autodetect_btn)
        self.autodetect_btn.clicked.connect(self.autoDetectRequested)
        self._bind(self.backend, _fixed("camera.backend"), "combo")
        self._bind(self.device, _cam(*DEVICE_KEYS), "text")
        self._bind(self.exposure, _cam("exposure_us", "exposure_time_us"), "float")
        self._bind(self.fps, _cam("fps", "frame_rate"), "optfloat")
        self._bind(self.roi_w, _cam("width"), "int")
        self._bind(self.roi_h, _cam("height"), "int")
        self._bind(self.pixel_size, _fixed("camera.pixel_size_um"), "float")
        self._bind(self.flow, _fixed("camera.flow_direction"), "combo")
        lay.addWidget(cam)

        # model
        model = QtWidgets.QGroupBox("Model")
        f = QtWidgets.QFormLayout(model)
        self.model_path = QtWidgets.QLineEdit()
        self.model_path.setPlaceholderText('"demo", "none" or a .onnx file')
        self.model_browse = QtWidgets.QPushButton("…")
        self.model_browse.setMaximumWidth(30)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.model_path, 1)
        row.addWidget(self.model_browse)
        self.provider = _combo(PROVIDERS)
        self.model_info = QtWidgets.QLabel("no model loaded")
        self.model_info.setWordWrap(True)
        self.model_info.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        f.addRow("File", row)
        f.addRow("Provider", self.provider)
        f.addRow(self.model_info)
        self.model_browse.clicked.connect(self._browse_model)
        self._bind(self.model_path, _fixed("model.path"), "text")
        self._bind(self.provider, _fixed("model.provider"), "combo")
        lay.addWidget(model)

        # sorting
        sort = QtWidgets.QGroupBox("Sorting")
        f = QtWidgets.QFormLayout(sort)
        self.sort_enabled = QtWidgets.QCheckBox("Sorting on (fire the trigger)")
        self.target = TargetList()
        self.threshold = _spin(0, 1, 3, 0.05)
        self.mode = _combo(SORT_MODES)
        self.window = _spin(0, 1000, 3, 0.1, " ms")
        self.trigger_backend = _combo(TRIGGER_BACKENDS)
        self.trigger_device = QtWidgets.QLineEdit()
        self.trigger_device.setPlaceholderText("port / VISA resource / line")
        self.test_fire_btn = QtWidgets.QPushButton("Test fire")
        f.addRow(self.sort_enabled)
        f.addRow("Target classes", self.target)
        f.addRow("Threshold", self.threshold)
        f.addRow("Mode", self.mode)
        f.addRow("Coincidence window", self.window)
        f.addRow("Trigger", self.trigger_backend)
        f.addRow("Trigger device", self.trigger_device)
        f.addRow(self.test_fire_btn)
        self.test_fire_btn.clicked.connect(self.testFireRequested)
        self._bind(self.sort_enabled, _fixed("sorting.enabled"), "bool")
        self._bind(self.target, _fixed("sorting.target_classes"), "classes")
        self._bind(self.threshold, _fixed("sorting.threshold"), "float")
        self._bind(self.mode, _fixed("sorting.mode"), "combo")
        self._bind(self.window, _fixed("sorting.window_ms"), "float")
        self._bind(self.trigger_backend, _fixed("trigger.backend"), "combo")
        self._bind(self.trigger_device, _trig(*TRIGGER_DEVICE_KEYS), "text")
        lay.addWidget(sort)

        # output
        out = QtWidgets.QGroupBox("Output")
        f = QtWidgets.QFormLayout(out)
        self.sample = QtWidgets.QLineEdit()
        self.folder = QtWidgets.QLineEdit()
        self.folder_browse = QtWidgets.QPushButton("…")
        self.folder_browse.setMaximumWidth(30)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(self.folder_browse)
        self.auto_events = _ispin(0, 1_000_000_000, " cells", "no limit")
        self.auto_seconds = _spin(0, 1e6, 1, 10, " s")
        self.auto_seconds.setSpecialValueText("no limit")
        self.auto_seconds.setToolTip("seconds of measurement time, by the frames' own clock: the camera's, "
                                     "or a replay's recorded time at any speed")
        f.addRow("Sample", self.sample)
        f.addRow("Folder", row)
        f.addRow("Stop after", self.auto_events)
        f.addRow("… or after", self.auto_seconds)
        self.folder_browse.clicked.connect(self._browse_folder)
        self._bind(self.sample, _fixed("output.sample"), "text")
        self._bind(self.folder, _fixed("output.folder"), "text")
        self._bind(self.auto_events, _fixed("autostop.events"), "int")
        self._bind(self.auto_seconds, _fixed("autostop.seconds"), "float")
        lay.addWidget(out)
        lay.addStretch(1)

        self.provider.currentIndexChanged.connect(lambda *_: self._request_model())
        self.model_path.editingFinished.connect(self._request_model)

    # -- bindings ---------------------------------------------------------------------------------
    def _bind(self, widget: QtWidgets.QWidget, path: Callable[[Any], str | None], kind: str) -> None:
        b = Binding(widget, path, kind)
        if isinstance(widget, QtWidgets.QAbstractSpinBox):
            b.special = widget.specialValueText()
        self._bindings.append(b)
        if kind == "combo":
            widget.currentIndexChanged.connect(lambda *_, b=b: self._edited(b))
        elif kind == "classes":
            widget.changed.connect(lambda b=b: self._edited(b))
        elif kind == "text":
            widget.editingFinished.connect(lambda b=b: self._edited(b))
        elif kind in ("float", "optfloat", "int"):
            widget.valueChanged.connect(lambda *_, b=b: self._edited(b))
        elif kind == "bool":
            widget.toggled.connect(lambda *_, b=b: self._edited(b))

    def _value(self, b: Binding) -> Any:
        w = b.widget
        if b.kind == "combo":
            return w.currentText()
        if b.kind == "classes":
            return w.checked()
        if b.kind == "text":
            return w.text().strip()
        if b.kind == "float":
            return float(w.value())
        if b.kind == "optfloat":  # unset only where the key may be (a replay's rate: the recording's)
            unset = b.current is not None and b.current.startswith("camera.replay.") and w.value() == w.minimum()
            return None if unset else float(w.value())
        if b.kind == "int":
            return int(w.value())
        return bool(w.isChecked())

    def _edited(self, b: Binding) -> None:
        if self._loading or b.current is None:
            return
        if b.kind == "text":
            b.widget.setModified(False)  # entered: commit() has nothing left to enter
        self.changed.emit({b.current: self._value(b)})

    def commit(self) -> None:
        """Enter what is typed in a field but not entered yet (Return or leaving the field enters
        it). A shortcut (F5 to start, Ctrl+S to save) leaves the focus where it is: the run started
        with the old sample name, threshold or port while the field showed the new one."""
        for b in self._bindings:
            w = b.widget
            if b.current is None or not w.isEnabled():
                continue
            if isinstance(w, QtWidgets.QAbstractSpinBox):
                w.interpretText()  # valueChanged, when the text is another value
            elif isinstance(w, QtWidgets.QLineEdit) and w.isModified():
                if w.hasFocus():
                    w.clearFocus()  # Qt enters it once (editingFinished), as a click elsewhere would
                if w.isModified():  # not entered by that (no focus: typed by a script or a test)
                    w.editingFinished.emit()

    def load(self, cfg: Any) -> None:
        """Show ``cfg``; controls without a key in it are disabled."""
        self._loading = True
        try:
            for b in self._bindings:
                b.current = b.path(cfg)
                w = b.widget
                w.setEnabled(b.current is not None)
                w.setToolTip(b.current or "not available for this configuration / backend")
                if isinstance(w, QtWidgets.QAbstractSpinBox):
                    w.setSpecialValueText(b.special if b.current is not None else NO_VALUE)
                if b.current is None:
                    if isinstance(w, QtWidgets.QAbstractSpinBox):
                        # a key this source does not have (a replay's exposure and ROI): it showed the
                        # last camera's values, or the box's minimum ("1.0 µs", "8 px"), as a setting
                        w.setValue(w.minimum())
                    continue
                v = config_value(cfg, b.current)
                if b.kind == "combo":
                    i = w.findText(str(v))
                    if i < 0:
                        w.addItem(str(v))
                        i = w.count() - 1
                    w.setCurrentIndex(i)
                elif b.kind == "classes":
                    w.set_checked(tuple(v or ()))
                elif b.kind == "text":
                    w.setText("" if v is None else str(v))
                elif b.kind in ("float", "int"):
                    if w in self._keep_zero:
                        lo, text = self._keep_zero[w]
                        vendor = not b.current.startswith(("camera.synthetic.", "camera.replay."))
                        w.setMinimum(0 if vendor else lo)
                        w.setSpecialValueText(text if vendor else "")
                    if v is not None:
                        w.setValue(v)
                    elif w.specialValueText():  # unset: the minimum reads as what unset means
                        w.setValue(w.minimum())
                elif b.kind == "optfloat":
                    # unset showed the last backend's value (the synthetic camera's 4000 fps for a
                    # replay); other cameras need a number, and their 0 (a free run) is no "unset"
                    w.setSpecialValueText("the source's" if b.current.startswith("camera.replay.") else "")
                    if v is not None or b.current.startswith("camera.replay."):
                        w.setValue(w.minimum() if v is None else v)
                elif b.kind == "bool":
                    w.setChecked(bool(v))
        finally:
            self._loading = False
        self.set_running(*self._run_state)

    def path_of(self, widget: QtWidgets.QWidget) -> str | None:
        for b in self._bindings:
            if b.widget is widget:
                return b.current
        return None

    # -- model ------------------------------------------------------------------------------------
    def set_classes(self, names: Sequence[str]) -> None:
        """Offer the model's classes as sort targets (keeps the checked ones the model has)."""
        self._loading = True
        try:
            self.target.set_names(list(names))
        finally:
            self._loading = False

    def set_model_info(self, info: ModelInfo | None, error: str = "") -> None:
        if info is None:
            self.model_info.setText(error or "no model (tracking only)")
            self.model_info.setStyleSheet("color: #d00000" if error else "")
            return
        self.model_info.setStyleSheet("")
        self.model_info.setText(info.summary())
        self.model_info.setToolTip(info.provider_note or info.path)
        self.set_classes(info.classes)

    def _request_model(self) -> None:
        if not self._loading:
            self.modelRequested.emit(self.model_path.text().strip(), self.provider.currentText())

    def _browse_model(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Model file", self.model_path.text(), "ONNX models (*.onnx)")
        if path:
            self.model_path.setText(path)
            self.model_path.editingFinished.emit()

    def _browse_folder(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Output folder", self.folder.text())
        if path:
            self.folder.setText(path)
            self.folder.editingFinished.emit()

    # -- run state --------------------------------------------------------------------------------
    def set_running(self, running: bool, busy: bool = False, starting: bool = False) -> None:
        self._run_state = (running, busy, starting)
        self.start_btn.setEnabled(not running and not busy)
        self.stop_btn.setEnabled((running and not busy) or starting)  # a start can be called off
        # settings fixed for a run (camera, files, model) lock while it runs; gates, threshold,
        # target and mode stay live (the policy is swapped at the next cell)
        for w in (self.backend, self.device, self.exposure, self.fps, self.roi_w, self.roi_h, self.pixel_size, self.flow,
                  self.model_path, self.model_browse, self.provider, self.trigger_backend, self.trigger_device,
                  self.sample, self.folder, self.folder_browse, self.auto_events, self.auto_seconds,
                  self.record_raw):
            w.setEnabled(not (running or busy) and (self.path_of(w) is not None or w in (
                self.model_browse, self.folder_browse)))
