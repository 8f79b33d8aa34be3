"""The live camera view: newest frame, channel geometry as draggable lines, cells as ellipses."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.gui.models import FIRED_COLOUR, NOT_FIRED_COLOUR, class_colour, record_class
from app.gui.qt import QtCore, QtGui, QtWidgets, Signal, pg

WALL_PEN = (255, 80, 80)
CONSTRICTION_BRUSH = (255, 200, 0, 45)
TRACK_PEN = (0, 255, 255)
RUN_EXIT_PEN = (255, 200, 0)
LABEL_LINE_PX = 15.0  # a finished cell's label's height on screen (pixels), for stacking them
FINISHED_SECONDS = 0.6  # how long a finished cell's label stays on the image (cells come fast)
MAX_ELLIPSES = 32


class CameraView(pg.GraphicsLayoutWidget):
    """Shows frames with overlays; dragging a line emits ``geometryEdited`` (pixels)."""

    geometryEdited = Signal(object)  # dict: constriction_x0, constriction_x1, channel_y0, channel_y1 (px)
    roiEdited = Signal(object)  # dict: x, y, width, height (px of the current image) for the next run

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.view = self.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image)
        self.region = pg.LinearRegionItem(orientation="vertical", brush=pg.mkBrush(*CONSTRICTION_BRUSH),
                                          pen=pg.mkPen(255, 200, 0, width=1))
        self.region.setZValue(10)
        self.wall_top = pg.InfiniteLine(angle=0, movable=True, pen=pg.mkPen(*WALL_PEN, width=1))
        self.wall_bottom = pg.InfiniteLine(angle=0, movable=True, pen=pg.mkPen(*WALL_PEN, width=1))
        for item in (self.region, self.wall_top, self.wall_bottom):
            item.setVisible(False)
            self.view.addItem(item)
        self.region.sigRegionChangeFinished.connect(self._edited)
        # the running tracker's exit, where it differs from the lines drawn for the next run: the
        # tracker keeps the geometry it started with, and the finished cells' labels stand at its exit
        self.run_exit = pg.InfiniteLine(angle=90, movable=False,
                                        pen=pg.mkPen(*RUN_EXIT_PEN, width=1, style=QtCore.Qt.PenStyle.DashLine),
                                        label="this run's exit", labelOpts={"position": 0.08, "color": RUN_EXIT_PEN})
        self.run_exit.setZValue(11)
        self.run_exit.setVisible(False)
        self.view.addItem(self.run_exit)
        self._run_exit_x: float | None = None
        # the camera ROI for the next run: drag/resize the dashed box inside the current image
        self.roi = pg.ROI([0, 0], [1, 1], pen=pg.mkPen(120, 255, 120, width=1, style=QtCore.Qt.PenStyle.DashLine),
                          translateSnap=True, scaleSnap=True, movable=True)
        self.roi.addScaleHandle([1, 1], [0, 0])
        self.roi.addScaleHandle([0, 0], [1, 1])
        self.roi.setZValue(5)
        self.roi.setVisible(False)
        self.view.addItem(self.roi)
        self.roi.sigRegionChangeFinished.connect(self._roi_edited)
        self.wall_top.sigPositionChangeFinished.connect(self._edited)
        self.wall_bottom.sigPositionChangeFinished.connect(self._edited)
        pen = pg.mkPen(*TRACK_PEN, width=1)
        self._ellipses: list[QtWidgets.QGraphicsEllipseItem] = []
        self._ids: list[pg.TextItem] = []
        for _ in range(MAX_ELLIPSES):  # a fixed pool: no item churn at 30 Hz
            e = QtWidgets.QGraphicsEllipseItem()
            e.setPen(pen)
            e.setVisible(False)
            e.setZValue(20)
            self.view.addItem(e)
            self._ellipses.append(e)
            t = pg.TextItem(color=TRACK_PEN, anchor=(0.5, 1.2))
            t.setVisible(False)
            t.setZValue(21)
            self.view.addItem(t)
            self._ids.append(t)
        # finished cells: a pool of plain items (a ScatterPlotItem re-renders its symbols on every
        # setData with per-point pens, ~20 ms a call)
        self._labels = [pg.TextItem(anchor=(0, 0.5)) for _ in range(6)]
        self._marks = [QtWidgets.QGraphicsEllipseItem(-2.5, -2.5, 5.0, 5.0) for _ in self._labels]
        for t, m in zip(self._labels, self._marks):
            for item, z in ((t, 23), (m, 22)):
                item.setVisible(False)
                item.setZValue(z)
                self.view.addItem(item)
        self._finished: deque = deque(maxlen=len(self._labels))  # (t, x, y, colour, fired, text)
        self._px = 1.0
        self.default_radius_px = 4.0
        self._shape: tuple[int, int] | None = None
        self.frames_shown = 0

    # -- frames -----------------------------------------------------------------------------------
    def set_frame(self, img: np.ndarray) -> None:
        first = self._shape != img.shape
        levels = (0, 255) if img.dtype == np.uint8 else (float(img.min()), float(img.max()) or 1.0)
        self.image.setImage(img, autoLevels=False, levels=levels)
        if first:
            self._shape = img.shape
            self.reset_roi()
            self.view.autoRange(padding=0.0)
        self.frames_shown += 1
        self._prune_finished()

    def reset_roi(self) -> None:
        """The ROI box back to the whole image."""
        if self._shape is None:
            return
        h, w = self._shape[:2]
        self.roi.blockSignals(True)
        try:
            self.roi.setPos((0, 0))
            self.roi.setSize((w, h))
        finally:
            self.roi.blockSignals(False)
        self.roi.setVisible(True)

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(rows, columns) of the frames shown (None before the first)."""
        return None if self._shape is None else (int(self._shape[0]), int(self._shape[1]))

    def roi_px(self) -> dict[str, int] | None:
        if self._shape is None:
            return None
        h, w = self._shape[:2]
        x, y = (int(round(v)) for v in self.roi.pos())
        rw, rh = (int(round(v)) for v in self.roi.size())
        x0, y0 = min(max(x, 0), w - 8), min(max(y, 0), h - 8)
        return {"x": x0, "y": y0, "width": max(8, min(rw, w - x0)), "height": max(8, min(rh, h - y0))}

    def _roi_edited(self, *_: Any) -> None:
        r = self.roi_px()
        if r is not None:
            self.roiEdited.emit(r)

    # -- geometry ---------------------------------------------------------------------------------
    def set_geometry(self, x0: float, x1: float, y0: float, y1: float, pixel_size_um: float | None = None) -> None:
        if pixel_size_um:
            self._px = pixel_size_um
        for item in (self.region, self.wall_top, self.wall_bottom):
            item.blockSignals(True)
        try:
            self.region.setRegion((x0, x1))
            self.wall_top.setValue(y0)
            self.wall_bottom.setValue(y1)
        finally:
            for item in (self.region, self.wall_top, self.wall_bottom):
                item.blockSignals(False)
                item.setVisible(True)
        self._show_run_exit()

    def set_run_exit(self, x_px: float | None, pixel_size_um: float | None = None) -> None:
        """The exit of the running tracker's constriction (None: no run); drawn as a dashed line
        while the lines show another geometry (drawn for the next run)."""
        if pixel_size_um:
            self._px = pixel_size_um
        self._run_exit_x = x_px
        self._show_run_exit()

    def _show_run_exit(self) -> None:
        x, g = self._run_exit_x, self.geometry_px()
        differs = x is not None and g is not None and abs(g["constriction_x1"] - x) >= 0.5
        if differs:
            self.run_exit.setValue(x)
        self.run_exit.setVisible(differs)

    def geometry_px(self) -> dict[str, float] | None:
        if not self.region.isVisible():
            return None
        x0, x1 = sorted(self.region.getRegion())
        y0, y1 = sorted((self.wall_top.value(), self.wall_bottom.value()))
        return {"constriction_x0": float(x0), "constriction_x1": float(x1),
                "channel_y0": float(y0), "channel_y1": float(y1)}

    def _edited(self, *_: Any) -> None:
        self._show_run_exit()
        g = self.geometry_px()
        if g is not None:
            self.geometryEdited.emit(g)

    # -- cells ------------------------------------------------------------------------------------
    def set_tracks(self, tracks: Sequence[Sequence[float]]) -> None:
        """Current cells: (track_id, x, y[, a, b, angle_rad]) in pixels; without axes a small circle."""
        n = min(len(tracks), MAX_ELLIPSES)
        for i in range(n):
            tr = tuple(tracks[i])
            tid, x, y = tr[:3]
            a, b, angle = tr[3:6] if len(tr) >= 6 else (self.default_radius_px, self.default_radius_px, 0.0)
            e = self._ellipses[i]
            a, b = max(float(a), 0.5), max(float(b), 0.5)
            e.setRect(-a, -b, 2 * a, 2 * b)
            e.setPos(float(x), float(y))
            e.setRotation(math.degrees(float(angle)))
            e.setVisible(True)
            t = self._ids[i]
            t.setText(str(int(tid)))
            t.setPos(float(x), float(y) - b)
            t.setVisible(True)
        for i in range(n, MAX_ELLIPSES):
            if not self._ellipses[i].isVisible():
                break
            self._ellipses[i].setVisible(False)
            self._ids[i].setVisible(False)

    def clear_cells(self) -> None:
        """No cell overlays (a run ended: its last tracks and labels are no longer in the channel;
        nothing pruned them once the frames stopped)."""
        self.set_tracks([])
        self._finished.clear()
        self._draw_finished()

    @property
    def n_labels_shown(self) -> int:
        return sum(lab.isVisible() for lab in self._labels)

    @property
    def n_tracks_shown(self) -> int:
        return sum(e.isVisible() for e in self._ellipses)

    def add_finished(self, records: Sequence[Any], class_names: Sequence[str], x_px: float) -> None:
        """Label the cells that just finished with class and decision, at the constriction exit."""
        now = time.monotonic()
        for r in records[-len(self._labels):]:
            y_um = r.event.features.get("pos_y_um", math.nan)
            if not math.isfinite(y_um):
                continue
            k = record_class(r, class_names)
            name = class_names[k] if k >= 0 else "?"
            fired = r.decision is not None and r.decision.fire
            mark = "" if r.decision is None else (" ✓" if fired else " ✗")
            self._finished.append((now, x_px, y_um / self._px, class_colour(k), fired, name + mark))
        self._draw_finished()

    def _prune_finished(self) -> None:
        now = time.monotonic()
        before = len(self._finished)
        while self._finished and now - self._finished[0][0] > FINISHED_SECONDS:
            self._finished.popleft()
        if len(self._finished) != before:
            self._draw_finished()

    def _line_height(self) -> float:
        """A label's height in image pixels at the current zoom (labels keep their screen size)."""
        try:
            _, py = self.view.viewPixelSize()
        except Exception:  # noqa: BLE001 - a view not yet laid out has no pixel size
            py = math.nan
        return LABEL_LINE_PX * abs(py) if math.isfinite(py) and py else LABEL_LINE_PX

    def label_positions(self) -> list[tuple[float, float]]:
        """Where the visible finished-cell labels stand (image pixels), newest first."""
        return [(lab.pos().x(), lab.pos().y()) for lab in reversed(self._labels[:len(self._finished)])]

    def _draw_finished(self) -> None:
        items = list(self._finished)
        # cells leave at nearly the same height: each older label moves down past the newer ones
        # (they printed over one another, unreadable when cells came close together)
        line = self._line_height()
        taken: list[float] = []
        ys = [0.0] * len(items)
        gap = 0.999 * line  # (t + line) - t can round to less than line
        for i in range(len(items) - 1, -1, -1):
            y = items[i][2]
            for _ in range(len(taken)):  # each step moves past one of them: it ends
                near = [t for t in taken if abs(y - t) < gap]
                if not near:
                    break
                y = max(near) + line
            taken.append(y)
            ys[i] = y
        for lab, mark, item, ly in zip(self._labels, self._marks, items, ys):
            _, x, y, colour, fired, text = item
            mark.setPos(x, y)
            mark.setBrush(QtGui.QColor(*colour))
            mark.setPen(QtGui.QPen(QtGui.QColor(*(FIRED_COLOUR if fired else NOT_FIRED_COLOUR)), 0))
            mark.setVisible(True)
            lab.setText(text, color=colour)
            lab.setPos(x + 3, ly)
            lab.setVisible(True)
        for lab, mark in zip(self._labels[len(items):], self._marks[len(items):]):
            lab.setVisible(False)
            mark.setVisible(False)
