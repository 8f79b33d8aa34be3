"""Live plots of the measured cells: a feature scatter with the sort gate, histograms, the status table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.gui.models import (
    FeatureTable,
    StatusRow,
    class_colour,
    histogram,
    inside_gate,
    make_gate,
    rect_points,
    status_rows,
)
from app.gui.qt import QtCore, QtWidgets, Signal, pg
from mimlsort.errors import ConfigError
from tracking.features import FEATURES


def feature_label(name: str) -> str:
    unit = FEATURES[name].unit if name in FEATURES else ""
    return f"{name} [{unit}]" if unit else name


def _series(names: Sequence[str]) -> list[tuple[int, str]]:
    """Plot series: one per class; cells without a class only when there is no model."""
    return list(enumerate(names)) if names else [(-1, "cells")]


def _plain_axes(plot: pg.PlotWidget) -> None:
    for side in ("left", "bottom"):  # features have their own units; "x0.001" would only confuse
        plot.getAxis(side).enableAutoSIPrefix(False)


def _feature_combo(default: str) -> QtWidgets.QComboBox:
    box = QtWidgets.QComboBox()
    for name, d in FEATURES.items():
        box.addItem(feature_label(name), name)
        box.setItemData(box.count() - 1, d.description, QtCore.Qt.ItemDataRole.ToolTipRole)
    box.setCurrentIndex(max(0, box.findData(default)))
    # sized by its longest feature name it made the window ~1,700 px wide at least (lab PCs: 1366)
    box.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(12)
    return box


class ScatterPanel(QtWidgets.QWidget):
    """Scatter of two features coloured by class; the operator draws the sort gate on it.

    *Polygon*: click the vertices, double-click (or click the first vertex) to close.
    *Rectangle*: click two opposite corners. The gate stays editable (drag its handles); every
    finished edit emits ``gateChanged`` with an :class:`app.sorting.PolygonGate` (None: cleared).
    """

    gateChanged = Signal(object)
    error = Signal(str)

    def __init__(self, x: str = "transit_time_ms", y: str = "di", parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.x_box = _feature_combo(x)
        self.y_box = _feature_combo(y)
        self.poly_btn = QtWidgets.QPushButton("Polygon gate")
        self.rect_btn = QtWidgets.QPushButton("Rectangle gate")
        self.clear_btn = QtWidgets.QPushButton("Clear gate")
        for b in (self.poly_btn, self.rect_btn):
            b.setCheckable(True)
        self.info = QtWidgets.QLabel("")
        top = QtWidgets.QHBoxLayout()
        for w in (QtWidgets.QLabel("x"), self.x_box, QtWidgets.QLabel("y"), self.y_box):
            top.addWidget(w)
        top.addStretch(1)
        # the gate tools sit under the plot, beside the count: in one row with the axes they made
        # the window ~1,500 px wide at least
        bottom = QtWidgets.QHBoxLayout()
        self.info.setWordWrap(True)
        bottom.addWidget(self.info, 1)
        for w in (self.poly_btn, self.rect_btn, self.clear_btn):
            bottom.addWidget(w)
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.addLegend(offset=(5, 5))
        _plain_axes(self.plot)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(top)
        lay.addWidget(self.plot, 1)
        lay.addLayout(bottom)
        self._items: dict[int, pg.ScatterPlotItem] = {}
        self._class_names: tuple[str, ...] = ()
        self.gate = None
        self._roi: pg.PolyLineROI | None = None
        self._draft: list[tuple[float, float]] = []
        self._draft_line = pg.PlotDataItem(pen=pg.mkPen(255, 0, 0, width=1, style=QtCore.Qt.PenStyle.DashLine),
                                           symbol="o", symbolSize=6, symbolBrush=(255, 0, 0))
        self.plot.addItem(self._draft_line)
        self._mode: str | None = None
        self.plot.scene().sigMouseClicked.connect(self._clicked)
        self.poly_btn.toggled.connect(lambda on: self._set_mode("polygon" if on else None))
        self.rect_btn.toggled.connect(lambda on: self._set_mode("rect" if on else None))
        self.clear_btn.clicked.connect(self.clear_gate)
        self.x_box.currentIndexChanged.connect(self._axes_changed)
        self.y_box.currentIndexChanged.connect(self._axes_changed)
        self._axes_changed()

    @property
    def x(self) -> str:
        return self.x_box.currentData()

    @property
    def y(self) -> str:
        return self.y_box.currentData()

    def set_axes(self, x: str, y: str) -> None:
        self.x_box.setCurrentIndex(self.x_box.findData(x))
        self.y_box.setCurrentIndex(self.y_box.findData(y))

    def set_classes(self, names: Sequence[str]) -> None:
        names = tuple(names)
        if names == self._class_names and self._items:
            return
        self._class_names = names
        for item in self._items.values():
            self.plot.removeItem(item)
        self._items.clear()
        legend = self.plot.plotItem.legend
        if legend is not None:
            legend.clear()
        for k, name in _series(names):
            c = class_colour(k)
            item = pg.ScatterPlotItem(size=5, pen=None, brush=pg.mkBrush(*c, 190), name=name)
            self.plot.addItem(item)
            self._items[k] = item

    # -- data -------------------------------------------------------------------------------------
    def refresh(self, table: FeatureTable) -> None:
        if not self._items or table.class_names != self._class_names:
            self.set_classes(table.class_names)
        xs, ys, cls = table.column(self.x), table.column(self.y), table.classes()
        ok = np.isfinite(xs) & np.isfinite(ys)
        for k, item in self._items.items():
            m = ok & (cls == k)
            item.setData(x=xs[m], y=ys[m])
        if self.gate is not None and (self.gate.x, self.gate.y) == (self.x, self.y) and ok.any():
            inside = int(inside_gate(self.gate, xs[ok], ys[ok]).sum())
            self.info.setText(f"{ok.sum()} cells shown, {inside} in the gate ({100 * inside / ok.sum():.1f} %)")
        else:
            self.info.setText(f"{ok.sum()} cells shown" + self._gate_note())

    def _gate_note(self) -> str:
        g = self.gate
        if g is None:
            return ""
        if (g.x, g.y) != (self.x, self.y):
            return f"; the sort gate is on {g.y} vs {g.x} (select those axes to see it)"
        return ""

    def _axes_changed(self, *_: Any) -> None:
        self.plot.setLabel("bottom", feature_label(self.x))
        self.plot.setLabel("left", feature_label(self.y))
        self._cancel_draft()
        self._show_gate()

    # -- gate -------------------------------------------------------------------------------------
    def set_gate(self, gate: Any, emit: bool = False) -> None:
        """Show ``gate`` (an app.sorting.PolygonGate or None) without drawing it by hand."""
        self.gate = gate
        if gate is not None and (gate.x, gate.y) != (self.x, self.y):
            self.set_axes(gate.x, gate.y)
        self._show_gate()
        if emit:
            self.gateChanged.emit(gate)

    def clear_gate(self) -> None:
        self._cancel_draft()
        self.set_gate(None, emit=True)

    def _show_gate(self) -> None:
        if self._roi is not None:
            self.plot.removeItem(self._roi)
            self._roi = None
        g = self.gate
        if g is None or (g.x, g.y) != (self.x, self.y):
            self.info.setText(self._gate_note().lstrip("; "))
            return
        self._roi = pg.PolyLineROI([list(p) for p in g.points], closed=True, pen=pg.mkPen(255, 0, 0, width=2))
        self._roi.sigRegionChangeFinished.connect(self._roi_edited)
        self.plot.addItem(self._roi)

    def _roi_edited(self, roi: pg.PolyLineROI) -> None:
        pts = [roi.mapToParent(h["item"].pos()) for h in roi.handles]
        self._commit([(p.x(), p.y()) for p in pts], redraw=False)

    def _commit(self, points: Sequence[tuple[float, float]], redraw: bool = True) -> None:
        try:
            gate = make_gate(self.x, self.y, points)
        except ConfigError as e:
            self.error.emit(str(e))
            if not redraw:  # a dragged handle: show again the gate the policy still uses (after the drag's signal)
                QtCore.QTimer.singleShot(0, self._show_gate)
            return
        self.gate = gate
        if redraw:
            self._show_gate()
        self.gateChanged.emit(gate)

    def _set_mode(self, mode: str | None) -> None:
        other = self.rect_btn if mode == "polygon" else self.poly_btn if mode == "rect" else None
        if other is not None and other.isChecked():
            other.blockSignals(True)
            other.setChecked(False)
            other.blockSignals(False)
        self._mode = mode
        self._draft = []
        self._draft_line.setData([], [])
        self.plot.setCursor(QtCore.Qt.CursorShape.CrossCursor if mode else QtCore.Qt.CursorShape.ArrowCursor)

    def _cancel_draft(self) -> None:
        for b in (self.poly_btn, self.rect_btn):
            b.blockSignals(True)
            b.setChecked(False)
            b.blockSignals(False)
        self._set_mode(None)

    def add_vertex(self, x: float, y: float, close: bool = False) -> None:
        """One click of the gate tool in plot coordinates (the mouse handler calls this)."""
        if self._mode is None:
            return
        vb = self.plot.plotItem.vb
        if self._mode == "polygon" and len(self._draft) >= 3:
            # clicking near the first vertex closes the polygon (within 10 screen pixels)
            first = vb.mapViewToScene(QtCore.QPointF(*self._draft[0]))
            here = vb.mapViewToScene(QtCore.QPointF(x, y))
            if (first - here).manhattanLength() < 10:
                close = True
        if not close or self._mode == "rect":
            self._draft.append((x, y))
        pts = self._draft
        if self._mode == "rect" and len(pts) == 2:
            done = list(rect_points(pts[0][0], pts[0][1], pts[1][0], pts[1][1]))
        elif self._mode == "polygon" and close and len(pts) >= 3:
            done = list(pts)
        else:
            self._draft_line.setData([p[0] for p in pts], [p[1] for p in pts])
            return
        self._cancel_draft()
        self._commit(done)

    def _clicked(self, ev: Any) -> None:
        if self._mode is None or ev.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        vb = self.plot.plotItem.vb
        if not vb.sceneBoundingRect().contains(ev.scenePos()):
            return
        p = vb.mapSceneToView(ev.scenePos())
        ev.accept()
        self.add_vertex(p.x(), p.y(), close=ev.double())


class HistogramPanel(QtWidgets.QWidget):
    """Per-class histograms of one feature (step curves, shared bins)."""

    def __init__(self, feature: str = "di", parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.box = _feature_combo(feature)
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("left", "cells")
        self.plot.addLegend(offset=(5, 5))
        _plain_axes(self.plot)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("histogram of"))
        top.addWidget(self.box)
        top.addStretch(1)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(top)
        lay.addWidget(self.plot, 1)
        self._curves: dict[int, pg.PlotDataItem] = {}
        self._names: tuple[str, ...] | None = None
        self.box.currentIndexChanged.connect(lambda *_: self.plot.setLabel("bottom", feature_label(self.feature)))
        self.plot.setLabel("bottom", feature_label(self.feature))

    @property
    def feature(self) -> str:
        return self.box.currentData()

    def refresh(self, table: FeatureTable) -> None:
        names = table.class_names
        if names != self._names:
            for c in self._curves.values():
                self.plot.removeItem(c)
            legend = self.plot.plotItem.legend
            if legend is not None:
                legend.clear()
            self._curves = {}
            for k, name in _series(names):
                self._curves[k] = self.plot.plot([0, 1], [0], stepMode="center", name=name,
                                                 pen=pg.mkPen(*class_colour(k), width=2))
            self._names = names
        edges, counts = histogram(table.column(self.feature), table.classes(), len(names))
        for k, c in zip([*range(len(names)), -1], counts):
            if k in self._curves:
                self._curves[k].setData(edges, c)

    def counts_shown(self) -> int:
        return int(sum(np.sum(c.yData) for c in self._curves.values() if c.yData is not None))


class StatusPanel(QtWidgets.QWidget):
    """Run counters as a form; alarms (missed frames, trigger faults) in red."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.form = QtWidgets.QFormLayout(self)
        self.form.setLabelAlignment(QtCore.Qt.AlignmentFlag.AlignRight)
        self.values: dict[str, QtWidgets.QLabel] = {}
        self.alarms: dict[str, bool] = {}

    def update_status(self, st: Any) -> None:
        for row in status_rows(st):
            self.set_row(row)

    def set_row(self, row: StatusRow) -> None:
        """Show ``row`` (added at the end the first time its key comes)."""
        lab = self.values.get(row.key)
        if lab is None:
            lab = QtWidgets.QLabel()
            lab.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
            # a long message (a warning, why a start failed) wraps instead of widening the window
            lab.setWordWrap(True)
            self.form.addRow(row.label, lab)
            self.values[row.key] = lab
        if lab.text() != row.text:
            lab.setText(row.text)
        if self.alarms.get(row.key) != row.alarm:
            lab.setStyleSheet("color: #d00000; font-weight: bold" if row.alarm else "")
            self.alarms[row.key] = row.alarm
        lab.setToolTip(row.tooltip)

    def text(self, key: str) -> str:
        return self.values[key].text() if key in self.values else ""


__all__ = ["ScatterPanel", "HistogramPanel", "StatusPanel", "feature_label"]
