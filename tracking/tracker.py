"""The tracker: ring batches in, one :class:`~tracking.events.CellEvent` per finished passage out.

Per batch it runs three numba kernels that release the GIL — background update, segmentation
(:mod:`tracking.segment`) and linking (:mod:`tracking.link`) — and then, in Python, turns each
finished track's history into features. Python work is per batch and per cell, never per pixel;
per frame it is none.

``kernels="python"`` runs the very same kernels as plain Python (numba's ``py_func``), for tests
and debugging.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from acquisition.frame import FrameBatch, FrameRing
from mimlsort.errors import ConfigError
from mimlsort.settings import require
from tracking import link as L
from tracking.background import BackgroundModel
from tracking.blobs import (
    B_AREA,
    B_BRIGHT_AVG,
    B_BRIGHT_SD,
    B_CONTRAST,
    B_HULL_AREA,
    B_HULL_PERIM,
    B_MAJOR,
    B_MINOR,
    B_X,
    B_Y,
    N_BLOB_FIELDS,
)
from tracking.events import CellEvent, Quality
from tracking.geometry import ChannelGeometry, GeometrySettings
from tracking.segment import segment_batch

log = logging.getLogger(__name__)

_H = L.N_H_EXTRA  # offset of blob columns in a history row


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """How cells are segmented, linked and measured. Lengths in µm, times in ms."""

    threshold: float = 10.0  # grey levels |image - background| that count as cell
    min_area_um: float = 15.0  # blobs smaller than this are debris
    max_blobs: int = 16  # per frame
    max_tracks: int = 32  # cells followed at once
    max_history: int = 512  # observations kept per cell (a stuck cell overflows it)
    max_gap_frames: int = 2  # frames a cell may go unseen before its track ends
    crop_size_um: float = 40.0  # side of the square first/last crops
    emit_after_exit_um: float = 15.0  # emit once the cell is this far past the constriction
    gate_back_um: float = 4.0  # how far behind its predicted position a cell may be found
    gate_forward_um: float = 30.0  # how far ahead of its prediction (acceleration in the constriction)
    gate_y_um: float = 6.0
    initial_speed_mm_s: float = 5.0  # prediction for a cell seen once
    doublet_solidity: float = 0.90  # upstream hull solidity below this marks a doublet
    low_contrast: float = 4.0  # mean |image - background| in the cell below this: low contrast
    stuck_ms: float = 50.0  # a cell that takes longer than this to cross the view is stuck
    batch_frames: int = 256  # frames per kernel call
    background_frames: int = 64  # frames the initial background median is taken from
    geometry: GeometrySettings = field(default_factory=GeometrySettings)

    def __post_init__(self):
        for name in ("threshold", "min_area_um", "crop_size_um", "gate_forward_um", "gate_y_um", "stuck_ms",
                     "initial_speed_mm_s", "low_contrast"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("emit_after_exit_um", "gate_back_um"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(0 < self.doublet_solidity <= 1, "doublet_solidity", f"must be in (0, 1], got {self.doublet_solidity}")
        for name in ("max_blobs", "max_tracks", "batch_frames", "background_frames"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.max_history >= 8, "max_history", f"must be >= 8, got {self.max_history}")
        require(self.max_gap_frames >= 0, "max_gap_frames", f"must be >= 0, got {self.max_gap_frames}")


@dataclass(frozen=True, slots=True)
class TrackerStats:
    frames: int
    blobs: int
    tracks: int
    events: int
    lost_tracks: int
    track_overflow: int
    history_overflow: int
    merges: int


class Tracker:
    """Follows cells through the channel; see the module docstring.

    Build it with :meth:`from_frames` (estimates the background and, where the settings leave it
    open, the channel geometry) or directly with a known background and geometry.
    """

    def __init__(self, settings: TrackerSettings, geometry: ChannelGeometry, background: np.ndarray,
                 *, t0_ns: int | None = None, kernels: str = "numba"):
        if kernels not in ("numba", "python"):
            raise ConfigError("tracking.kernels", f"must be 'numba' or 'python', got {kernels!r}")
        self.settings = s = settings
        self.geometry = g = geometry
        px = g.pixel_size_um
        h, w = background.shape
        if (h, w) != (g.height, g.width):
            raise ConfigError("tracking.geometry", f"is for {g.width}x{g.height} px but frames are {w}x{h}")
        self._segment = segment_batch.py_func if kernels == "python" else segment_batch
        self._link = L.link_batch.py_func if kernels == "python" else L.link_batch
        self._flush = L.flush_tracks.py_func if kernels == "python" else L.flush_tracks
        self.background = BackgroundModel.from_image(background, kernels=kernels)
        self.crop_px = max(8, int(round(s.crop_size_um / px)) // 2 * 2)
        self.min_area_px = s.min_area_um / px**2
        self.t0_ns = t0_ns
        nb = s.batch_frames
        self._blobs = np.zeros((nb, s.max_blobs, N_BLOB_FIELDS), np.float64)
        self._counts = np.zeros(nb, np.int32)
        self._times = np.zeros(nb, np.float64)
        self._pi = np.array([s.max_gap_frames, self.crop_px, 0], np.int64)
        emit_x = min(g.constriction_x1 + s.emit_after_exit_um / px, g.width - 1.0)
        v_init = s.initial_speed_mm_s / px  # mm/s = µm/ms -> px/ms
        self._pf = np.array([g.constriction_x0, g.constriction_x1, emit_x, s.gate_back_um / px,
                             s.gate_forward_um / px, s.gate_y_um / px, v_init, 3.0], np.float64)
        T = s.max_tracks
        self._si = np.zeros((T, L.N_SI), np.int64)
        self._sf = np.zeros((T, L.N_SF), np.float64)
        self._hist = np.zeros((T, s.max_history, _H + N_BLOB_FIELDS), np.float64)
        self._crops = np.zeros((T, 2, self.crop_px, self.crop_px), np.uint8)
        self._done_i = np.zeros((2 * T, L.N_SI), np.int64)
        self._done_hist = np.zeros((2 * T, s.max_history, _H + N_BLOB_FIELDS), np.float64)
        self._done_crops = np.zeros((2 * T, 2, self.crop_px, self.crop_px), np.uint8)
        self._done_n = np.zeros(2 * T, np.int64)
        self._counters = np.zeros(L.N_C, np.int64)
        self._crop_dtype_set = False
        self._n_events = 0
        self.y0 = max(0, int(math.floor(g.channel_y0)))
        self.y1 = min(h, int(math.ceil(g.channel_y1)))

    # -- construction from data ------------------------------------------------------------------
    @classmethod
    def from_frames(cls, frames: np.ndarray, pixel_size_um: float, settings: TrackerSettings | None = None,
                    *, t0_ns: int | None = None, kernels: str = "numba") -> "Tracker":
        """Estimate the background from ``frames`` (a stack), resolve the geometry, build the tracker."""
        settings = settings or TrackerSettings()
        stack = np.asarray(frames)[: max(settings.background_frames, 1)]
        bg = BackgroundModel.estimate(stack)
        geometry = settings.geometry.resolve(bg, pixel_size_um)
        return cls(settings, geometry, bg, t0_ns=t0_ns, kernels=kernels)

    # -- processing ------------------------------------------------------------------------------
    def _ensure_crop_dtype(self, dtype: np.dtype) -> None:
        if not self._crop_dtype_set:
            if self._crops.dtype != dtype:
                T = self.settings.max_tracks
                self._crops = np.zeros((T, 2, self.crop_px, self.crop_px), dtype)
                self._done_crops = np.zeros((2 * T, 2, self.crop_px, self.crop_px), dtype)
            self._crop_dtype_set = True

    def process(self, images: np.ndarray, slots: np.ndarray, frame_ids: np.ndarray, timestamps_ns: np.ndarray,
                host_ns: np.ndarray) -> list[CellEvent]:
        """Track the frames ``images[slots]``; returns the events that finished in them."""
        self._ensure_crop_dtype(images.dtype)
        events: list[CellEvent] = []
        n = len(slots)
        if n == 0:
            return events
        if self.t0_ns is None:
            self.t0_ns = int(timestamps_ns[0])
        step = self.settings.batch_frames
        for a in range(0, n, step):
            sl = slots[a:a + step]
            m = len(sl)
            times = self._times[:m]
            np.subtract(timestamps_ns[a:a + m], self.t0_ns, out=times, casting="unsafe")
            times *= 1e-6
            self.background.update(images, sl)
            bg = self.background.image
            self._segment(images, sl, bg, self.settings.threshold, self.min_area_px, self.y0, self.y1,
                          self.settings.max_blobs, self._blobs, self._counts)
            done_f = 0
            while done_f < m:
                ids = frame_ids[a + done_f:a + m]
                res = self._link(images, sl[done_f:], ids, times[done_f:], host_ns[a + done_f:a + m], self.background.fill,
                                 self._blobs[done_f:m], self._counts[done_f:m], self._pi, self._pf, self._si, self._sf,
                                 self._hist, self._crops, self._done_i, self._done_hist, self._done_crops,
                                 self._done_n, self._counters)
                processed, n_done = int(res[0]), int(res[1])
                events.extend(self._harvest(n_done))
                done_f += processed
        return events

    def process_batch(self, ring: FrameRing, batch: FrameBatch) -> list[CellEvent]:
        """Track a batch read from a ring reader."""
        return self.process(ring.images, batch.slots, batch.frame_ids, batch.timestamps_ns, batch.host_ns)

    def process_frames(self, frames: np.ndarray, frame_ids: np.ndarray | None = None,
                       timestamps_ns: np.ndarray | None = None, fps: float | None = None) -> list[CellEvent]:
        """Track a stack of frames held in memory (replay, tests, analysis)."""
        n = len(frames)
        if frame_ids is None:
            frame_ids = np.arange(n, dtype=np.int64)
        if timestamps_ns is None:
            if not fps:
                raise ConfigError("fps", "is needed when frames carry no timestamps")
            timestamps_ns = np.round(np.asarray(frame_ids, np.float64) * (1e9 / fps)).astype(np.int64)
        host = np.zeros(n, np.int64)
        return self.process(frames, np.arange(n, dtype=np.int64), np.asarray(frame_ids, np.int64),
                            np.asarray(timestamps_ns, np.int64), host)

    def flush(self) -> list[CellEvent]:
        """End of run: emit cells still in view that reached the constriction (incomplete ones flagged)."""
        n_done = int(self._flush(self._si, self._hist, self._crops, self._done_i, self._done_hist, self._done_crops,
                                 self._done_n, self._counters))
        return self._harvest(n_done)

    @property
    def stats(self) -> TrackerStats:
        c = self._counters
        return TrackerStats(int(c[L.C_FRAMES]), int(c[L.C_BLOBS]), int(c[L.C_TRACKS]), self._n_events,
                            int(c[L.C_LOST]), int(c[L.C_TRACK_OVERFLOW]), int(c[L.C_HIST_OVERFLOW]), int(c[L.C_MERGES]))

    # -- features --------------------------------------------------------------------------------
    def _harvest(self, n_done: int) -> list[CellEvent]:
        out = []
        for d in range(n_done):
            ev = self._event(d)
            if ev is not None:
                out.append(ev)
        return out

    def _event(self, d: int) -> CellEvent | None:
        info = self._done_i[d]
        h = self._done_hist[d, : int(self._done_n[d])]
        feats, quality = measure_passage(h, self.geometry, self.settings)
        quality |= Quality(int(info[L.SI_FLAGS]) & int(Quality.DOUBLET | Quality.BORDER | Quality.STUCK))
        if not info[L.SI_HAS_FIRST] or not info[L.SI_HAS_LAST] or info[L.SI_EXIT_FRAME] < 0:
            quality |= Quality.INCOMPLETE
        ev = CellEvent(
            index=self._n_events,
            track_id=int(info[L.SI_ID]),
            features=feats,
            first_crop=self._done_crops[d, 0].copy(),
            last_crop=self._done_crops[d, 1].copy(),
            crop_pixel_size_um=self.geometry.pixel_size_um,
            entry_frame=int(info[L.SI_ENTRY_FRAME]),
            exit_frame=int(info[L.SI_EXIT_FRAME]),
            exit_host_ns=int(info[L.SI_EXIT_HOST]),
            quality=quality,
            extra={"emit_frame": int(info[L.SI_EMIT_FRAME]), "emit_host_ns": int(info[L.SI_EMIT_HOST])},
        )
        self._n_events += 1
        return ev


def _crossing(t: np.ndarray, x: np.ndarray, line: float) -> tuple[float, int]:
    """Time the track crosses x = ``line`` (linear between the two observations around it) and
    the index of the first observation at or past it; (nan, -1) if it never does."""
    idx = np.flatnonzero(x >= line)
    if idx.size == 0:
        return math.nan, -1
    i = int(idx[0])
    if i == 0:
        return math.nan, 0  # already past the line when first seen
    xa, xb = x[i - 1], x[i]
    ta, tb = t[i - 1], t[i]
    frac = (line - xa) / (xb - xa) if xb != xa else 1.0
    return float(ta + frac * (tb - ta)), i


def measure_passage(h: np.ndarray, g: ChannelGeometry, s: TrackerSettings) -> tuple[dict[str, float], Quality]:
    """Features of one cell from its observation history (rows: t_ms, frame, blob columns)."""
    px = g.pixel_size_um
    t = h[:, L.H_T]
    x = h[:, _H + B_X]
    y = h[:, _H + B_Y]
    a = h[:, _H + B_MAJOR]
    b = h[:, _H + B_MINOR]
    di = np.where(a + b > 0, (a - b) / np.maximum(a + b, 1e-12), 0.0)
    quality = Quality.OK
    t_in, i_in = _crossing(t, x, g.constriction_x0)
    t_out, i_out = _crossing(t, x, g.constriction_x1)
    if math.isnan(t_in) or math.isnan(t_out):
        quality |= Quality.INCOMPLETE
    up = slice(0, i_in) if i_in > 0 else slice(0, 0)
    inside = (x >= g.constriction_x0) & (x < g.constriction_x1)
    nan = math.nan

    # speed: central differences, then a 3-point median so one bad centroid cannot make the max
    v = np.full(len(t), nan)
    if len(t) >= 3:
        dxy = np.hypot(x[2:] - x[:-2], y[2:] - y[:-2])
        v[1:-1] = dxy / np.maximum(t[2:] - t[:-2], 1e-9) * px  # px/ms * µm/px = µm/ms = mm/s
    vm = v.copy()
    if len(v) >= 5:
        stack = np.vstack([v[:-2], v[1:-1], v[2:]])
        with np.errstate(invalid="ignore"):
            vm[1:-1] = np.nanmedian(stack, axis=0) if not np.isnan(stack).all() else nan

    def safe(fn, arr):
        arr = arr[~np.isnan(arr)]
        return float(fn(arr)) if arr.size else nan

    area_px = h[:, _H + B_AREA]
    hull_a = h[:, _H + B_HULL_AREA]
    hull_p = h[:, _H + B_HULL_PERIM]
    with np.errstate(divide="ignore", invalid="ignore"):
        deform_all = 1.0 - 2.0 * np.sqrt(np.pi * hull_a) / hull_p
        solidity = area_px / hull_a
    di_in = np.where(inside, di, -np.inf)
    i_max = int(np.argmax(di_in)) if inside.any() else -1

    feats = {
        "di": float(di[i_max]) if i_max >= 0 else nan,
        "di_entry": float(di[i_in - 1]) if i_in > 0 else nan,
        "di_exit": float(di[i_out]) if i_out > 0 else nan,
        "transit_time_ms": t_out - t_in,
        "v_max_mm_s": safe(np.max, vm[inside]) if inside.any() else nan,
        "v_before_mm_s": safe(np.median, v[up]),
        "v_after_mm_s": safe(np.median, v[i_out:]) if i_out > 0 else nan,
        "dir_per_ms": nan,
        "diameter_um": float(np.median(2.0 * np.sqrt(area_px[up] / np.pi))) * px if i_in > 0 else nan,
        "deform": float(deform_all[i_max]) if i_max >= 0 else nan,
        "area_um": float(np.median(hull_a[up])) * px * px if i_in > 0 else nan,
        "bright_avg": float(np.median(h[up, _H + B_BRIGHT_AVG])) if i_in > 0 else nan,
        "bright_sd": float(np.median(h[up, _H + B_BRIGHT_SD])) if i_in > 0 else nan,
        "entry_time_ms": t_in,
        "exit_time_ms": t_out,
        "pos_y_um": float(y[i_out]) * px if i_out > 0 else nan,
    }
    # DIR: mean |dDI/dt| from the last frame before entry to the last one observed after exit
    if i_in > 0 and i_out > 0:
        seg = slice(i_in - 1, len(t))
        dt = t[seg][-1] - t[seg][0]
        if dt > 0:
            feats["dir_per_ms"] = float(np.sum(np.abs(np.diff(di[seg]))) / dt)
    if i_in > 1 and np.nanmedian(solidity[up]) < s.doublet_solidity:
        quality |= Quality.DOUBLET
    if np.median(h[:, _H + B_CONTRAST]) < s.low_contrast:
        quality |= Quality.LOW_CONTRAST
    if t[-1] - t[0] > s.stuck_ms:
        quality |= Quality.STUCK
    return feats, quality
