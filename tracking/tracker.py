"""The tracker: ring batches in, one :class:`~tracking.events.CellEvent` per finished passage out.

Per batch it runs three numba kernels that release the GIL — background update, segmentation
(:mod:`tracking.segment`) and linking (:mod:`tracking.link`) — and then, in Python, turns each
finished track's history into features. Python work is per batch and per cell, never per pixel;
per frame it is none.

Each event can carry a :class:`~tracking.events.Snapshot`: the whole ROI at the frame of maximum
DI in the constriction, copied back from its ring slot at harvest (checked against the ring's
frame ids: a slot overwritten since is counted in ``stats.snapshots_lost``), with the background
and the cell's filled mask — what an RT-DC event file stores.

``kernels="python"`` runs every kernel as plain Python (slow: for tests and debugging). Every kernel is compiled (or loaded from numba's cache) when the tracker is built,
not at the first frame.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numpy as np

from acquisition.frame import FrameBatch, FrameRing, RingReader
from mimlsort import realtime
from mimlsort.errors import ConfigError, StateError
from mimlsort.settings import require
from tracking import link as L
from tracking import live as LV
from tracking._pure import pure_python
from tracking.background import (LIGHT_MAX, LIGHT_MIN, SATURATED_SHARE, BackgroundModel, corrects,
                                  estimate_background, estimate_steady_background, measure_illumination)
from tracking.blobs import (
    B_ANGLE,
    B_AREA,
    B_BG_OFF,
    B_BORDER,
    B_BRIGHT_AVG,
    B_BRIGHT_SD,
    B_CONTRAST,
    B_HULL_AREA,
    B_HULL_PERIM,
    B_LIGHT,
    B_MAJOR,
    B_MINOR,
    B_SPLIT,
    B_X,
    B_XMAX,
    B_XMIN,
    B_Y,
    B_YMAX,
    B_YMIN,
    N_BLOB_FIELDS,
)
from tracking.detect import measure_tilt
from tracking.drift import DriftGauge, Offset, translated
from tracking.events import CellEvent, Quality, Snapshot
from tracking.geometry import ChannelGeometry, GeometrySettings
from tracking.passage import _JOINED, CROSSING_STEPS, DOUBLET_DI, FEATURE_ORDER, N_FEATURES, STOP_UM, V_MEAN_SHARE, passage_kernel
from tracking.segment import nearest_blob_mask, segment_batch

log = logging.getLogger(__name__)

#: the radius of a cell at rest the ROI must leave room for beside the constriction (most cells
#: sorted by deformability are 8-20 µm across)
CELL_RADIUS_UM = 10.0
#: unflagged passages the tracker sees before it judges how finely the constriction is sampled
SAMPLING_CELLS = 32
#: fewer frames than this in the constriction (median) and it says that the speeds are coarse
MIN_FRAMES_INSIDE = 3.0
#: a track that ends this far (µm) upstream of where it started went against the flow; this many
#: of them, and none the other way, and the tracker says the flow direction was not given
BACKWARD_UM = 10.0
BACKWARD_TRACKS = 4
#: frames the light must stay within what the flicker correction follows before a change beyond
#: it is said again: a lamp dimmed to ~0.5x, its flicker crossing the limit, said it 84 times in
#: 3,000 frames of small (live) batches
LIGHT_SETTLED = 256
#: frames between two looks at the last frame for overexposure during a run (~20 µs a look)
EXPOSURE_EVERY = 4096
#: an object that stands still (within STOP_UM) this long (ms) in the constriction or at its
#: mouth (CELL_RADIUS_UM upstream, or its own radius + STOP_UM if larger) blocks the channel: no cell passes until it moves. Said sooner
#: when the background would take it over sooner (half its relearn time): it then vanishes from
#: the frames, and with it what could be seen
CLOG_MS = 200.0
#: frames between two looks for a blocked constriction (~10 µs a look: the tracks there)
CLOG_EVERY = 128
#: frames between two looks for a channel that moved in the view (~50 µs a look), between a look
#: that saw a move and the one that must agree, and how far (µm) the tracker follows it. Until it
#: does, the walls' old and new edges pass for cells: 5 µm along the flow gave ~40 flagged events
#: in the ~600 frames two looks 512 frames apart took
DRIFT_EVERY = 256
DRIFT_CONFIRM = 32
MAX_DRIFT_UM = 20.0
#: a channel turned this far against the image rows is said at the start (simulated, turned frames
#: against the same frames unturned: transit -0.2% at 1°, -1.5% at 2°; the other features within
#: what the turning's interpolation itself changes)
TILT_NOTE_DEG = 1.0

_H = L.N_H_EXTRA  # offset of blob columns in a history row
#: µm past the constriction exit after which a cell moves at the downstream channel's pace (it
#: slows down over about its radius, 5–11 µm for the simulator's cells)
RELAXED_AFTER_EXIT_UM = 15.0
#: µm short of the ROI's downstream edge where a cell's centroid is still its own (with 12 µm,
#: about a cell radius, pulses came 3% late at 60 mm/s: the bins at the edge learn a slower pace)
EDGE_MARGIN_UM = 20.0
_LINK_FLAGS = int(Quality.DOUBLET | Quality.BORDER | Quality.STUCK)  # quality bits the link kernel sets
_Q_INCOMPLETE = int(Quality.INCOMPLETE)
_Q_SMALL = int(Quality.SMALL)
#: the integer settings' ranges: the kernels' arrays are sized by them (10**30 blobs was "Maximum
#: allowed dimension exceeded" at the start, a gap of 10**30 frames an OverflowError), and beyond
#: the upper ends a run needs more memory than a host has or links unrelated blobs into one cell
INT_RANGES = {"max_blobs": (1, 1024), "max_tracks": (1, 1024), "max_history": (8, 65536),
              "max_gap_frames": (0, 1000), "batch_frames": (1, 65536), "background_frames": (1, 65536)}


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """How cells are segmented, linked and measured. Lengths in µm, times in ms."""

    # (RT-DC's "bin threshold" -6 leaves out the bright halo around a cell in bright field)
    threshold: float = -6.0  # grey levels of an 8-bit image (scaled for deeper cameras) that count as cell: < 0 darker than the background by more than that (RT-DC); > 0 |image - background| (halo included)
    min_area_um: float = 15.0  # blobs smaller than this are debris
    min_cell_diameter_um: float = 5.0  # a cell smaller than this at rest is flagged SMALL (debris, platelets: a constriction made to squeeze cells does not squeeze it); 0: never
    max_blobs: int = 16  # per frame (1 to 1024)
    max_tracks: int = 32  # cells followed at once (1 to 1024)
    max_history: int = 512  # observations kept per cell (8 to 65536); when full, those upstream of the constriction are thinned (a cell stuck in or past it overflows it: STUCK)
    max_gap_frames: int = 2  # frames a cell may go unseen before its track ends (0 to 1000)
    crop_size_um: float = 40.0  # side of the square first/last crops
    emit_after_exit_um: float = 15.0  # emit once the cell is this far past the constriction
    gate_back_um: float = 4.0  # how far behind where it was last seen a cell may be found (centroid jitter)
    gate_forward_um: float = 30.0  # how far ahead of its prediction (acceleration in the constriction)
    gate_y_um: float = 6.0  # how far across the channel from its prediction a cell may be found
    initial_speed_mm_s: float = 5.0  # prediction for a cell seen once
    doublet_solidity: float = 0.90  # upstream hull solidity below this marks a doublet
    doublet_di: float = DOUBLET_DI  # upstream DI above this marks a doublet (a cell at rest is round)
    split_ratio: float = 0.75  # cut a blob where its height dips to this share of the peaks beside (touching cells); 0: never
    low_contrast: float = 4.0  # mean |image - background| in the cell (8-bit grey levels) below this: low contrast
    stuck_ms: float = 50.0  # a cell that stops (stays within 2 µm) for longer than this is stuck
    batch_frames: int = 256  # frames per kernel call of a replay or unpaced source (1 to 65536; a live camera's frames are tracked as they come, up to 256 or 0.25 s a call; this many are read at once after falling behind)
    background_frames: int = 64  # frames the initial background is estimated from (1 to 65536) (per pixel, the median of its densest 2-noise-sd window of values: right even where cells often pass)
    snapshots: bool = True  # attach the full-ROI image, background and mask at the frame of max DI
    flicker_correction: bool = True  # compare each frame with the background scaled by the frame's own light (lamp flicker; each event's bg_off says by how much)
    pace_per_cell: bool = True  # time a cell's pulse with its own pace relative to the channel's (measured upstream); false: every cell at the channel's learned pace past the exit
    geometry: GeometrySettings = field(default_factory=GeometrySettings)

    def __post_init__(self):
        for f in fields(self):  # inf passes every "> 0" check: inf µm crops overflowed, inf µm² areas find nothing
            v = getattr(self, f.name)
            require(not isinstance(v, float) or math.isfinite(v), f.name, f"must be finite, got {v}")
            # ("off" is true: a switch given as text would be on)
            require(f.type not in ("bool", bool) or isinstance(v, bool), f.name, f"must be true or false, got {v!r}")
        require(self.threshold != 0 and math.isfinite(self.threshold), "threshold",
                f"must be finite and not 0 (> 0: |image - background|, < 0: dark pixels only), got {self.threshold}")
        for name in ("min_area_um", "crop_size_um", "gate_forward_um", "gate_y_um", "stuck_ms",
                     "initial_speed_mm_s", "low_contrast"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("emit_after_exit_um", "gate_back_um", "min_cell_diameter_um"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        require(0 < self.doublet_solidity <= 1, "doublet_solidity", f"must be in (0, 1], got {self.doublet_solidity}")
        require(0 < self.doublet_di < 1, "doublet_di", f"must be in (0, 1), got {self.doublet_di}")
        require(0 <= self.split_ratio < 1, "split_ratio", f"must be in [0, 1), got {self.split_ratio}")
        for name, (lo, hi) in INT_RANGES.items():
            v = getattr(self, name)
            require(lo <= v <= hi, name, f"must be in [{lo}, {hi}], got {v}")


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
    snapshots_lost: int = 0  # events without a snapshot because the ring had overwritten their frame
    paces_unlearned: int = 0  # events whose v_after is their own speed just past the exit (the channel's pace not learned yet)


class Tracker:
    """Follows cells through the channel; see the module docstring.

    Build it with :meth:`from_frames` (estimates the background and, where the settings leave it
    open, the channel geometry) or directly with a known background and geometry.
    """

    def __init__(self, settings: TrackerSettings, geometry: ChannelGeometry, background: np.ndarray,
                 *, t0_ns: int | None = None, kernels: str = "numba", bit_depth: int | None = None):
        if kernels not in ("numba", "python"):
            raise ConfigError("kernels", f"must be 'numba' or 'python', got {kernels!r}")
        bits = 8 * np.dtype(background.dtype).itemsize
        depth = int(bit_depth) if bit_depth else bits
        require(8 <= depth <= bits, "bit_depth",
                f"must be in [8, {bits}] for {np.dtype(background.dtype)} frames, got {depth}")
        self.bit_depth = depth
        # grey levels in the settings are an 8-bit image's, so one configuration serves an 8-bit
        # and a 12-bit camera (a 12-bit camera's 10 levels are under its noise)
        grey = 2.0 ** (depth - 8)
        self.threshold = float(settings.threshold) * grey
        self.low_contrast = float(settings.low_contrast) * grey
        # crops are the model's input, and models are trained on 8-bit grey: a 12-bit camera's crops
        # went to it 16× too bright (accuracy 0.99 -> 0.64 on simulated cells)
        self._crop_shift = depth - 8
        top = int(np.max(background)) if background.size else 0
        if depth > 8 and top < 2 ** (depth - 3):
            # (it said "is 2704, an eighth of the 16-bit range": 2704 is a 24th of it)
            log.warning("the background's brightest pixel is %d, under an eighth (%d) of the %d-bit range the "
                        "source says it uses, and the tracking thresholds are 8-bit grey levels scaled to that "
                        "range: if its grey levels use fewer bits, say so (a recording's: camera.replay.bit_depth "
                        "or --bit-depth), or no cell will be found", top, 2 ** (depth - 3), depth)
        self.settings = s = settings
        self.geometry = g = geometry
        px = g.pixel_size_um
        h, w = background.shape
        if (h, w) != (g.height, g.width):
            raise ConfigError("tracking.geometry", f"is for {g.width}x{g.height} px but frames are {w}x{h}")
        py = kernels == "python"
        self._segment = pure_python(segment_batch) if py else segment_batch
        self._link = pure_python(L.link_batch) if py else L.link_batch
        self._flush = pure_python(L.flush_tracks) if py else L.flush_tracks
        self._passage = pure_python(passage_kernel) if py else passage_kernel
        self._nearest_mask = pure_python(nearest_blob_mask) if py else nearest_blob_mask
        self._predicted_exits = pure_python(L.predicted_exits) if py else L.predicted_exits
        self._feat = np.zeros(N_FEATURES, np.float64)
        self.kernels = kernels
        self.background = BackgroundModel.from_image(background, kernels=kernels, threshold=abs(self.threshold))
        self.crop_px = max(8, int(round(s.crop_size_um / px)) // 2 * 2)
        self.min_area_px = s.min_area_um / px**2
        self.t0_ns = t0_ns
        nb = s.batch_frames
        self._blobs = np.zeros((nb, s.max_blobs, N_BLOB_FIELDS), np.float64)
        self._counts = np.zeros(nb, np.int32)
        self._times = np.zeros(nb, np.float64)
        self._pi = np.array([s.max_gap_frames, self.crop_px, 0], np.int64)
        v_init = s.initial_speed_mm_s / px  # mm/s = µm/ms -> px/ms
        self._pf = np.zeros(13, np.float64)
        self._pf[3:8] = (s.gate_back_um / px, s.gate_forward_um / px, s.gate_y_um / px, v_init, 3.0)
        self._pf[11:13] = (1.0 if s.pace_per_cell else 0.0, s.max_gap_frames + 1.0)
        self._set_geometry(g, h)
        far0, far1 = self._pf[8], self._pf[9]
        if far1 - far0 < 2 * L.MOTION_BIN_PX:
            log.warning("only %.0f px of the ROI lie between %g µm past the constriction and %g µm before the "
                        "ROI's edge: pulses are timed with each cell's speed just past the exit, which at fast "
                        "flow comes out up to 1.3x its speed further on (widen the ROI downstream)",
                        max(far1 - far0, 0.0), RELAXED_AFTER_EXIT_UM, EDGE_MARGIN_UM)
        T = s.max_tracks
        self._si = np.zeros((T, L.N_SI), np.int64)
        self._sf = np.zeros((T, L.N_SF), np.float64)
        self._motion = np.zeros((L.N_M, L.motion_bins(g.width)), np.float64)  # learned speed along x
        self._exits_out = np.zeros(T, np.float64)  # predicted_exits_ms
        self._hist = np.zeros((T, s.max_history, _H + N_BLOB_FIELDS), np.float64)
        self._crops = np.zeros((T, 2, self.crop_px, self.crop_px), np.uint8)
        self._done_i = np.zeros((2 * T, L.N_SI), np.int64)
        self._done_hist = np.zeros((2 * T, s.max_history, _H + N_BLOB_FIELDS), np.float64)
        self._done_crops = np.zeros((2 * T, 2, self.crop_px, self.crop_px), np.uint8)
        self._done_n = np.zeros(2 * T, np.int64)
        self._done_f = np.zeros((2 * T, L.N_DF), np.float64)
        self._counters = np.zeros(L.N_C, np.int64)
        self._crop_dtype_set = False
        self._n_events = 0
        self._snap_images: np.ndarray | None = None  # the frames the last batch came from
        self._snap_ids: np.ndarray | None = None  # frame id held by each of their slots, when known
        self._snap_first = -1  # slot of the first frame of the batch the snapshots are taken in
        self._snap_span = 0  # frames in that batch
        #: > 0: a snapshot of a frame more than this many slots before the first frame of the batch
        #: being tracked counts as lost even if its slot still holds it. A lossless run holds the
        #: camera back that far behind the batch (so every younger frame is there), and whether an
        #: older slot has been overwritten yet would depend on timing: replays must not differ
        self.snapshot_max_age = 0
        self._snapshots_lost = 0
        self._paces_unlearned = 0
        self._light = None  # measure_illumination of the run's first frames, when built from them
        self._tilt_deg: float | None = None  # the channel's against the image rows, when built from frames
        self._frames_inside: list[float] | None = []  # per unflagged passage, until the sampling is judged
        self._light_stepped = False  # the light went beyond what the flicker correction follows, and is not back
        self._light_back: int | None = None  # frames tracked since it has been back within it
        self._exposure_due = EXPOSURE_EVERY  # frames until the next look for overexposure
        self._overexposed = False  # the last look found it, and said so
        self._clog_due = CLOG_EVERY  # frames until the next look for a blocked constriction
        #: tracker ms since which an object has stood in the constriction, said and not yet
        #: cleared by a cell passing it; and the ms of the last look (the block's length so far)
        self._blocked_ms: float | None = None
        self._relearn_held = 0  # the background's relearn while a block holds it at 0
        self._blocked_now_ms = math.nan
        #: the latest entry frame of a cell that has passed the constriction (one that entered after an
        #: object began to stand there went by it: no clog)
        self._passed_frame = -1
        self._top_level = 256 * grey - grey  # the top 8-bit grey level of the camera's range
        self._moves: list[int] | None = [0]  # tracks that went BACKWARD_UM against the flow, until one went with it
        #: called with each note about the run's measurements that belongs in its record (the
        #: pipeline writes them into the event file's log); they are logged as warnings too
        self.on_note: Callable[[str], None] | None = None
        self._deferred: list[tuple[int, int, int]] = []  # (place in the returned list, done row, history row) of snapshots not taken yet
        self._live: tuple | None = None  # track_live's out, phase and timespec arrays
        self._looks_owed: int | None = None  # ring slot of the last frame tracked, when looks are due there
        #: each frame's light against the background's is measured (every event's bg_off), fitted
        #: to the pixels within the threshold of the fit; segmentation uses it when correcting
        self.light_clip = abs(self.threshold)
        #: the last frame's gain and offset, and the running means of |gain - mean gain| and of
        #: the gain (:attr:`light`)
        self._light_now = np.array([1.0, 0.0, 0.0, 1.0])
        self.background.light_level = grey
        self._geometry0 = g  # found in the run's first frames; the channel may move from there
        self._drift = DriftGauge(background, int(round(MAX_DRIFT_UM / px)))
        self._drift_due = DRIFT_EVERY  # frames until the next look for a channel that moved
        self._offset = (0.0, 0.0)  # px the tracker follows the channel by
        self._drift_seen: Offset | None = None  # the last look's move, taken once the next agrees
        self._drift_said = False  # a move beyond what the tracker follows was said
        self.correct_flicker(s.flicker_correction)
        self._warm_up(background)

    def _set_geometry(self, g: ChannelGeometry, h: int) -> None:
        """Where the constriction and walls are, for the kernels (in place: a live run's hold them)."""
        s, px = self.settings, g.pixel_size_um
        self.geometry = g
        emit_x = min(g.constriction_x1 + s.emit_after_exit_um / px, g.width - 1.0)
        # the stretch of channel whose learned pace times the pulses: past where a cell leaving the
        # constriction has slowed down (about its radius), short of where a cell touches the ROI's
        # edge (its centroid is pulled in there); while it is not known the cell's own speed does
        far0, far1 = g.constriction_x1 + RELAXED_AFTER_EXIT_UM / px, g.width - EDGE_MARGIN_UM / px
        self._pf[0:3] = (g.constriction_x0, g.constriction_x1, emit_x)
        self._pf[8:11] = (far0, far1, g.constriction_x0)  # (the last: where the pace's stretch upstream ends)
        self.y0 = max(0, int(math.floor(g.channel_y0)))
        self.y1 = min(h, int(math.ceil(g.channel_y1)))
        self.background.light_rows = (self.y0, self.y1)

    def correct_flicker(self, on: bool) -> None:
        """Compare each frame with the background scaled by the frame's own light (or not), from
        the next frame on."""
        self.flicker_corrected = bool(on)
        self.background.light_clip = self.light_clip if on else 0.0

    def _warm_up(self, background: np.ndarray) -> None:
        """Compile (or load from the cache) every kernel for this frame dtype before the first frame."""
        self._ensure_crop_dtype(background.dtype)
        if self.kernels != "numba":
            return
        self._drift.load()
        one = np.ascontiguousarray(background)[None]
        slot = np.zeros(1, np.int64)
        self._segment(one, slot, self.background.image, self.threshold, self.min_area_px, self.y0, self.y1,
                      self.settings.max_blobs, self._blobs, self._counts, float(self.settings.split_ratio),
                      self.light_clip, self.flicker_corrected, self.background.light_level, self._light_now.copy())
        self.background._kernel(one, slot[:0], 1, np.float32(0.0), np.float32(1.0), 0, self.background._acc.copy(),
                                self.background._count.copy(), self.background.image.copy(), self.y0, self.y1, 0.0,
                                self.background.light_level)
        self._nearest_mask(background, background, self.threshold, float(self.min_area_px),
                           self.settings.max_blobs, 0.0, 0.0, 0, 2, 0, 2, np.zeros(background.shape, bool),
                           float(self.settings.split_ratio))
        s = self.settings
        self._passage(np.zeros((3, _H + N_BLOB_FIELDS)), 0.0, 1.0, 1.0, s.doublet_solidity, self.low_contrast,
                      s.stuck_ms, np.zeros(N_FEATURES), s.doublet_di)
        if realtime.AVAILABLE:
            # the live loop on an empty ring: returns at once (timeout 0), having changed nothing
            h, w = background.shape
            ring = FrameRing(4, h, w, background.dtype)
            self.track_live(ring, ring.reader("warm-up"), timeout_s=0.0)
        # the link kernel on throw-away state: an empty frame changes nothing but the counters
        si = np.zeros_like(self._si)
        self._link(one, slot, slot, np.zeros(1), slot, self.background.fill, self._blobs[:1], np.zeros(1, np.int32),
                   self._pi.copy(), self._pf, si, self._sf.copy(), self._motion.copy(), self._hist[:, :1].copy(),
                   self._crops.copy(),
                   self._done_i.copy(), self._done_hist[:, :1].copy(), self._done_crops.copy(), self._done_n.copy(),
                   self._done_f.copy(),
                   np.zeros_like(self._counters))

    # -- construction from data ------------------------------------------------------------------
    @classmethod
    def from_frames(cls, frames: np.ndarray, pixel_size_um: float, settings: TrackerSettings | None = None,
                    *, t0_ns: int | None = None, kernels: str = "numba", bit_depth: int | None = None) -> "Tracker":
        """Estimate the background from the first ``background_frames`` of ``frames`` (a stack; see
        :func:`estimate_background`), resolve the geometry, build the tracker. ``bit_depth``: the
        camera's (grey levels in the settings are an 8-bit image's); by default the frames' dtype's."""
        settings = settings or TrackerSettings()
        stack = np.asarray(frames)[: max(settings.background_frames, 1)]
        bg = estimate_background(stack, kernels=kernels)
        grey = 2.0 ** ((int(bit_depth) if bit_depth else 8 * stack.dtype.itemsize) - 8)
        light = measure_illumination(stack, bg, grey)
        if settings.flicker_correction and light is not None and light.flickers(settings.threshold):
            bg = estimate_steady_background(stack, bg, abs(settings.threshold) * grey, kernels=kernels)
        geometry = settings.geometry.resolve(bg, pixel_size_um)
        tracker = cls(settings, geometry, bg, t0_ns=t0_ns, kernels=kernels, bit_depth=bit_depth)
        tracker._light = light
        tracker._tilt_deg = measure_tilt(bg, pixel_size_um)
        return tracker

    # -- processing ------------------------------------------------------------------------------
    def _ensure_crop_dtype(self, dtype: np.dtype) -> None:
        if not self._crop_dtype_set:
            if self._crops.dtype != dtype:
                T = self.settings.max_tracks
                self._crops = np.zeros((T, 2, self.crop_px, self.crop_px), dtype)
                self._done_crops = np.zeros((2 * T, 2, self.crop_px, self.crop_px), dtype)
            self._crop_dtype_set = True

    def process(self, images: np.ndarray, slots: np.ndarray, frame_ids: np.ndarray, timestamps_ns: np.ndarray,
                host_ns: np.ndarray, *, slot_frame_ids: np.ndarray | None = None) -> list[CellEvent]:
        """Track the frames ``images[slots]``; returns the events that finished in them.

        ``slot_frame_ids`` (a ring's ``frame_ids``) lets a snapshot check that the slot of its
        frame has not been overwritten since; without it, ``images`` must keep earlier frames
        (a stack in memory)."""
        self._drop_deferred()
        if not self._crop_dtype_set:
            self._ensure_crop_dtype(images.dtype)
        self._snap_images = images
        self._snap_ids = slot_frame_ids
        events: list[CellEvent] = []
        n = len(slots)
        if n == 0:
            return events
        self._snap_first, self._snap_span = int(slots[0]), n
        if self.t0_ns is None:
            self.t0_ns = int(timestamps_ns[0])
        s = self.settings
        step = s.batch_frames
        bgm_level = self.background.light_level
        # per-call Python work matters when the tracker keeps up (batches of one frame): no slicing
        # where the whole batch goes in, and the kernels' outputs are used in place
        for a in range(0, n, step):
            whole = a == 0 and n <= step
            sl = slots if whole else slots[a:a + step]
            m = len(sl)
            times = self._times[:m]
            np.subtract(timestamps_ns if whole else timestamps_ns[a:a + m], self.t0_ns, out=times, casting="unsafe")
            times *= 1e-6
            self.background.update(images, sl)
            self._segment(images, sl, self.background.image, self.threshold, self.min_area_px, self.y0, self.y1,
                          s.max_blobs, self._blobs, self._counts, float(s.split_ratio), self.light_clip,
                          self.flicker_corrected, bgm_level, self._light_now)
            if self._light_stepped or not LIGHT_MIN < self._light_now[0] < LIGHT_MAX:
                self._judge_light(int(frame_ids[a + m - 1]), m)
            self._exposure_due -= m
            if self._exposure_due <= 0:
                self._judge_exposure(images[sl[m - 1]], int(frame_ids[a + m - 1]))
            self._drift_due -= m
            if self._drift_due <= 0:
                self._judge_position(images[sl[m - 1]], int(frame_ids[a + m - 1]))
            frames_done = 0
            while frames_done < m:
                if frames_done == 0:
                    args = (sl, frame_ids if whole else frame_ids[a:a + m], times,
                            host_ns if whole else host_ns[a:a + m], self.background.fill, self._blobs, self._counts)
                else:
                    args = (sl[frames_done:], frame_ids[a + frames_done:a + m], times[frames_done:], host_ns[a + frames_done:a + m],
                            self.background.fill, self._blobs[frames_done:m], self._counts[frames_done:m])
                processed, n_done = self._link(images, *args, self._pi, self._pf, self._si, self._sf, self._motion, self._hist,
                                               self._crops, self._done_i, self._done_hist, self._done_crops,
                                               self._done_n, self._done_f, self._counters)
                if n_done:
                    events.extend(self._harvest(int(n_done)))
                frames_done += int(processed)
            self._clog_due -= m
            if self._clog_due <= 0:  # (on the tracks as of the batch's last frame, and its light)
                self._judge_flow(int(frame_ids[a + m - 1]), float(times[m - 1]))
        return events

    def track_live(self, ring: FrameRing, reader: RingReader, max_frames: int = 256, timeout_s: float = 0.05,
                   poll_s: float = 20e-6, behind_ok: int = 4, halt: np.ndarray | None = None,
                   defer_snapshots: bool = False) -> tuple[int, list[CellEvent], bool]:
        """Track the reader's frames as the camera publishes them, in one kernel without the GIL
        (:mod:`tracking.live`), until cells finish (while no more than ``behind_ok`` frames wait;
        further behind it goes on and returns several), ``max_frames`` are tracked or none comes
        for ``timeout_s`` (``halt``, an int64[1] another thread sets, ends that wait early). Returns (frames tracked, finished events, fell behind); a reader that fell
        behind must read its next batch with ``reader.read`` (which counts the frames it lost).
        The events equal those of :meth:`process_batch` with batches of one frame.

        ``defer_snapshots``: the events come without their ROI snapshot, which
        :meth:`with_snapshots` adds before the next tracking call — so a sort decision need not
        wait for copying and segmenting a whole frame."""
        if self.kernels != "numba" or not realtime.AVAILABLE:
            raise StateError("track_live needs the numba kernels on Linux; use process_batch")
        t0 = self.t0_ns
        if t0 is None:
            if reader.pending:
                self.t0_ns = t0 = int(ring.timestamps_ns[reader.cursor % ring.capacity])
            else:
                t0 = 0  # no frame yet: the kernel only waits (the warm-up loads it this way)
        if not self._crop_dtype_set:
            self._ensure_crop_dtype(ring.images.dtype)
        self._drop_deferred()
        if self._looks_owed is not None:
            self._look(ring, t0)
        if self._live is None:
            self._live = (np.zeros(LV.N_O, np.int64), np.zeros(1, np.int64), realtime.scratch(), np.zeros(1, np.int64))
        out, phase, ts, no_halt = self._live
        s, bgm = self.settings, self.background
        phase[0] = bgm._phase
        LV.track_ring(ring.images, ring.frame_ids, ring.timestamps_ns, ring.host_ns, ring._seq, ring.guard,
                      reader.cursor, max_frames, int(timeout_s * 1e9), int(poll_s * 1e9), ts, behind_ok, no_halt if halt is None else halt, t0, phase,
                      bgm.stride, np.float32(bgm.alpha), np.float32(bgm.threshold), bgm.relearn, bgm._acc, bgm._count,
                      bgm.image, self.threshold, self.min_area_px, self.y0, self.y1, s.max_blobs, float(s.split_ratio),
                      self.light_clip, self.flicker_corrected, bgm.light_level, self._light_now, self._blobs,
                      self._counts, self._pi, self._pf, self._si, self._sf, self._motion, self._hist, self._crops, self._done_i,
                      self._done_hist, self._done_crops, self._done_n, self._done_f, self._counters, out)
        bgm._phase = int(phase[0])
        n = int(out[LV.O_FRAMES])
        if n:
            reader.advance(n)
            if self._light_stepped or not LIGHT_MIN < self._light_now[0] < LIGHT_MAX:
                self._judge_light(int(ring.frame_ids[(reader.cursor - 1) % ring.capacity]), n)
            self._exposure_due -= n
            self._clog_due -= n
            self._drift_due -= n
            if min(self._exposure_due, self._clog_due, self._drift_due) <= 0:
                self._looks_owed = (reader.cursor - 1) % ring.capacity
                if not out[LV.O_DONE]:
                    self._look(ring, t0)
        events: list[CellEvent] = []
        if out[LV.O_DONE]:
            self._snap_images = ring.images
            self._snap_ids = ring.frame_ids
            events = self._harvest(int(out[LV.O_DONE]), defer_snapshots)
        return n, events, bool(out[LV.O_STOP] == LV.STOP_BEHIND)

    def _look(self, ring: FrameRing, t0: int) -> None:
        """The looks that are due (overexposure, a blocked constriction, a channel that moved),
        at the last frame tracked. They wait for a call that finished no cell, or for the start
        of the next call, once that call's cells are decided: a decision never waits for them
        (~15-70 µs), nor finds its model out of the caches because of them. (Only in calls that
        finished none, they never came while a cell finished every ~20 frames: a channel that
        moved under a loaded run made phantom cells off its walls, and was never followed.) A
        slot the camera lapped meanwhile holds a newer frame of the same channel."""
        last, self._looks_owed = self._looks_owed, None
        frame_id = int(ring.frame_ids[last])
        if self._exposure_due <= 0:
            self._judge_exposure(ring.images[last], frame_id)
        if self._clog_due <= 0:
            self._judge_flow(frame_id, (int(ring.timestamps_ns[last]) - t0) * 1e-6)
        if self._drift_due <= 0:
            self._judge_position(ring.images[last], frame_id)

    def with_snapshots(self, events: list[CellEvent]) -> list[CellEvent]:
        """``events`` as the last :meth:`track_live` call returned them, with the snapshots it
        deferred; call it before the next tracking call (which otherwise counts them as lost)."""
        if not self._deferred:
            return events
        out = list(events)
        for k, d, i_max in self._deferred:
            out[k] = replace(out[k], snapshot=self._snapshot(self._done_hist[d, : int(self._done_n[d])], i_max))
        self._deferred = []
        return out

    def _drop_deferred(self) -> None:
        if self._deferred:  # their rows are about to be overwritten
            self._snapshots_lost += len(self._deferred)
            self._deferred = []

    def process_batch(self, ring: FrameRing, batch: FrameBatch) -> list[CellEvent]:
        """Track a batch read from a ring reader."""
        return self.process(ring.images, batch.slots, batch.frame_ids, batch.timestamps_ns, batch.host_ns,
                            slot_frame_ids=ring.frame_ids)

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
        self._drop_deferred()
        n_done = int(self._flush(self._si, self._hist, self._crops, self._done_i, self._done_hist, self._done_crops,
                                 self._done_n, self._done_f, self._motion, self._pf, self._counters))
        return self._harvest(n_done)

    def predicted_exits_ms(self) -> list[float]:
        """Constriction exit times (ms, run clock) of the cells in view that have not been
        emitted yet — predicted for cells still upstream, extrapolated back for cells between the
        exit and the emission line. The coincidence check needs them: their class is not known yet."""
        out = self._exits_out
        n = self._predicted_exits(self._si, self._sf, self._motion, float(self.geometry.constriction_x1), out)
        return out[:n].tolist()  # one kernel call: numpy masks and indexing took ~80 µs on the sort path

    def live_tracks(self) -> list[tuple[int, float, float, float, float, float]]:
        """(track id, x, y, a, b, angle) in px/rad of the cells followed now, for overlays.

        Read from another thread while the tracker runs: a snapshot that may be one frame old.
        """
        si = self._si.copy()
        sf = self._sf.copy()
        out = []
        for k in np.flatnonzero(si[:, L.SI_STATE] != L.FREE):
            n = int(si[k, L.SI_NHIST])
            if si[k, L.SI_STATE] == L.ACTIVE and 0 < n <= self._hist.shape[1]:
                row = self._hist[k, n - 1]
                a, b, ang = float(row[_H + B_MAJOR]), float(row[_H + B_MINOR]), float(row[_H + B_ANGLE])
            else:
                a = b = ang = 0.0
            out.append((int(si[k, L.SI_ID]), float(sf[k, L.SF_X]), float(sf[k, L.SF_Y]), a, b, ang))
        return out

    @property
    def light(self) -> tuple[float, float]:
        """(gain, flicker) of the frames lately: the last frame's light against the background's
        (1: the same) and the mean |gain - its running mean| over the last ~256 frames (the
        simulator's 5% flicker reads 0.021, a steady lamp 0.0003, a lamp turned up for good 0
        once ~256 frames have passed). Read from another thread while the tracker runs."""
        g, _, flicker, _ = self._light_now.tolist()
        return g, flicker

    @property
    def stats(self) -> TrackerStats:
        c = self._counters
        return TrackerStats(int(c[L.C_FRAMES]), int(c[L.C_BLOBS]), int(c[L.C_TRACKS]), self._n_events,
                            int(c[L.C_LOST]), int(c[L.C_TRACK_OVERFLOW]), int(c[L.C_HIST_OVERFLOW]), int(c[L.C_MERGES]),
                            self._snapshots_lost, self._paces_unlearned)

    # -- features --------------------------------------------------------------------------------
    def _harvest(self, n_done: int, defer_snapshots: bool = False) -> list[CellEvent]:
        out = []
        defer = defer_snapshots and self.settings.snapshots
        for d in range(n_done):
            ev, i_max = self._event(d, not defer)
            if ev is not None:
                if defer and i_max >= 0:
                    self._deferred.append((len(out), d, i_max))
                out.append(ev)
        return out

    def _event(self, d: int, snapshot: bool = True) -> tuple[CellEvent | None, int]:
        """The event of done row ``d`` and its history row of maximum DI (the snapshot's)."""
        # Python ints and one copy of both crops: numpy scalar indexing, IntFlag construction and
        # a copy per crop took ~60 µs of the ~120 µs per cell on the sort path (its code is cold
        # between cells)
        info = self._done_i[d].tolist()
        h = self._done_hist[d, : int(self._done_n[d])]
        g, st = self.geometry, self.settings
        out = self._feat
        q, i_max = self._passage(h, g.constriction_x0, g.constriction_x1, g.pixel_size_um, st.doublet_solidity,
                                 self.low_contrast, st.stuck_ms, out, st.doublet_di)
        feats = dict(zip(FEATURE_ORDER, out.tolist()))
        feats["bg_off"] = float(h[i_max, _H + B_BG_OFF]) if i_max >= 0 else math.nan
        pace, easing = self._done_f[d].tolist()
        if pace > 0.0:
            feats["v_after_mm_s"] = g.pixel_size_um / pace  # µm per ms = mm/s
        elif info[L.SI_EXIT_FRAME] >= 0:
            self._paces_unlearned += 1
        q = int(q) | (info[L.SI_FLAGS] & _LINK_FLAGS)
        if feats["diameter_um"] < st.min_cell_diameter_um:  # NaN (no rest shape seen): not flagged
            q |= _Q_SMALL
        if not info[L.SI_HAS_FIRST] or not info[L.SI_HAS_LAST] or info[L.SI_EXIT_FRAME] < 0:
            q |= _Q_INCOMPLETE
        if q == 0 and self._frames_inside is not None:
            self._judge_sampling(h, feats["transit_time_ms"], feats["v_before_mm_s"])
        if self._moves is not None:
            self._judge_direction(float(h[-1, _H + B_X] - h[0, _H + B_X]) * g.pixel_size_um)
        if info[L.SI_EXIT_FRAME] >= 0 and info[L.SI_ENTRY_FRAME] > self._passed_frame:
            self._passed_frame = info[L.SI_ENTRY_FRAME]
        if self._blocked_ms is not None and info[L.SI_EXIT_FRAME] >= 0:
            self._unblocked(h, info[L.SI_EXIT_FRAME])
        quality = _QUALITY.get(q)
        if quality is None:
            quality = _QUALITY[q] = Quality(q)
        crops = self._done_crops[d].copy()
        if self._crop_shift > 0 or crops.dtype != np.uint8:
            crops = np.minimum(crops >> max(self._crop_shift, 0), 255).astype(np.uint8)
        ev = CellEvent(
            index=self._n_events,
            track_id=info[L.SI_ID],
            features=feats,
            first_crop=crops[0],
            last_crop=crops[1],
            crop_pixel_size_um=self.geometry.pixel_size_um,
            entry_frame=info[L.SI_ENTRY_FRAME],
            exit_frame=info[L.SI_EXIT_FRAME],
            exit_host_ns=info[L.SI_EXIT_HOST],
            quality=quality,
            extra=self._extra(info, h, i_max, easing if pace > 0.0 else 0.0),
            snapshot=self._snapshot(h, int(i_max)) if st.snapshots and snapshot else None,
        )
        self._n_events += 1
        return ev, int(i_max)


    def setup_notes(self) -> list[str]:
        """What the first frames and the ROI will do to the measurements, said once when the
        tracker starts on a run's frames: lamp flicker or camera noise near the segmentation
        threshold (:func:`measure_illumination`, when built :meth:`from_frames`); too little room
        beside the constriction, where a cell touching the ROI edge within half a crop of the
        constriction is flagged BORDER (an ROI cut close upstream flagged every cell, and nothing
        said why); and a ROI that ends before a cell is ``emit_after_exit_um`` past the exit."""
        g, s = self.geometry, self.settings
        px = g.pixel_size_um
        half = self.crop_px // 2 * px
        notes = self._light.notes(s.threshold, self.flicker_corrected) if self._light is not None else []
        if self._tilt_deg is not None and abs(self._tilt_deg) >= TILT_NOTE_DEG:
            t = self._tilt_deg
            drop = abs(math.tan(math.radians(t))) * g.width
            notes.append(
                f"the channel runs {abs(t):.1f}° {'clockwise' if t > 0 else 'counterclockwise'} of the image's rows "
                f"(as shown with row 0 at the top; its centre line {'falls' if t > 0 else 'rises'} {drop:.1f} px "
                f"across the ROI): the tracker measures along the rows, and on simulated frames turned 2° / 3° / 5° "
                f"transit times read 1.5 / 1.8 / 2.3% short; turn the camera or the chip until the walls run along "
                f"the rows")
        # downstream, a cell is flagged until it is emitted
        for side, room, reach in (("upstream", g.constriction_x0 * px, half),
                                  ("downstream", (g.width - g.constriction_x1) * px, min(half, s.emit_after_exit_um))):
            if room - reach < CELL_RADIUS_UM:
                fit = 2 * max(room - reach, 0.0)
                notes.append(
                    f"the constriction {'starts' if side == 'upstream' else 'ends'} {room:.1f} µm from the ROI's "
                    f"{side} edge: a cell touching that edge within {reach:.0f} µm of the constriction is flagged "
                    f"BORDER, so {f'cells over {fit:.0f} µm across are' if fit >= 1 else 'every cell is'}; give the "
                    f"ROI at least {reach + CELL_RADIUS_UM:.0f} µm {side} of the constriction"
                    + (" (or a smaller tracking.crop_size_um)" if side == "upstream" else ""))
        if (g.width - g.constriction_x1) * px <= s.emit_after_exit_um:
            notes.append(f"the ROI ends {(g.width - g.constriction_x1) * px:.0f} µm past the constriction, no more than "
                         f"tracking.emit_after_exit_um ({s.emit_after_exit_um:g} µm): cells leave it before their "
                         f"events are complete")
        return notes

    def _say(self, note: str) -> None:
        """A note about the run's measurements: a warning, and a line of the event file's log."""
        log.warning("%s", note)
        if self.on_note is not None:
            self.on_note(note)

    def _judge_light(self, frame_id: int, frames: int) -> None:
        """Say when the light leaves, and comes back within, what the flicker correction follows
        (a gain of LIGHT_MIN..LIGHT_MAX against the background): beyond it (a lamp turned up or
        down, an exposure changed) the background relearns pixel by pixel, and until it has the
        cells are missed or found in pieces, their events flagged (simulated ×0.4: ~100 flagged
        events and no whole cell for ~2,000 frames). Nothing told the user why. It is back once
        within for LIGHT_SETTLED frames: a light at the limit crosses it with each flicker
        (``frames``: tracked since the last call; counted, as a camera's frame ids may wrap)."""
        gain = float(self._light_now[0])
        bgm = self.background
        if LIGHT_MIN < gain < LIGHT_MAX:
            self._light_back = 0 if self._light_back is None else self._light_back + frames
            if self._light_back >= LIGHT_SETTLED:
                log.info("the light is back within %g-%g× the background's by frame %d", LIGHT_MIN, LIGHT_MAX,
                         frame_id)
                self._light_stepped, self._light_back = False, None
            return
        self._light_back = None
        if self._light_stepped:
            return  # the same change, not yet over
        self._light_stepped = True
        self._hold_background(False)  # the new light must be taken over, block or not
        note = (f"the light changed: frame {frame_id} is {gain:.2f}× as bright as the background, beyond the "
                f"{LIGHT_MIN:g}-{LIGHT_MAX:g}× the flicker correction follows (a lamp or the exposure changed?). "
                f"The background takes the new light over after {bgm.relearn * bgm.stride} frames of it; until "
                f"then cells are missed or found in pieces, their events flagged")
        if gain < 1.0:
            # the cells' contrast dims with the light: relearned at 0.4x, 2 whole cells were found
            # where the same frames at the old light gave 28 (simulated, the default threshold)
            note += (f". The cells' contrast is {gain:.2f}× what it was as well: a tracking.threshold set for the old "
                     f"light finds fewer of them, even once the background has taken the new light over")
        self._say(note)

    def _judge_exposure(self, image: np.ndarray, frame_id: int) -> None:
        """Say when the channel becomes overexposed during a run (the lamp or the exposure turned
        up): the light fitted to saturated frames stays within what the flicker correction
        follows, so nothing else said why cells stopped being found (simulated lamp ×2.5: none
        after the step). Said again only once it has been over."""
        self._exposure_due = EXPOSURE_EVERY
        band = image[self.y0:self.y1]
        share = float(np.count_nonzero(band >= self._top_level)) / max(band.size, 1)
        over = share >= SATURATED_SHARE
        if over and not self._overexposed:
            self._say(f"frame {frame_id}: {100 * share:.0f}% of the channel's pixels are at the camera's top grey "
                      f"level (overexposed: the lamp or the exposure turned up?): cells there are not seen whole "
                      f"and their brightness is clipped. Shorten the exposure or dim the lamp")
        self._overexposed = over

    def _judge_flow(self, frame_id: int, now_ms: float) -> None:
        """Say when the constriction is blocked: a cell or debris stuck in it stopped the flow and
        nothing said so. The status showed "0 cells/s" as for an empty sample, the stuck object
        became background after 2,048 frames and vanished from the tracker, and the cells that
        came once it left were measured against a background holding it (simulated, a cell stuck
        2.5 s at 4 kHz). Said once, until a cell passes (:meth:`_unblocked`)."""
        self._clog_due = CLOG_EVERY
        if self._light_stepped:
            return  # a lamp turned down made the whole channel one dark, still object
        if not self.flicker_corrected and abs(self._light_now[0] - 1.0) * float(
                self.background.image[self.y0:self.y1].mean()) > self.light_clip:
            # so did a lamp dimmed to 0.7 with the correction off (within what it would follow):
            # until the background relearns, the frames are not compared with the channel's light
            return
        if self._blocked_ms is not None:
            self._blocked_now_ms = now_ms
            return
        g, si, sf = self.geometry, self._si, self._sf
        px = g.pixel_size_um
        x = sf[:, L.SF_X]
        # at the mouth: within a cell radius of it, or within its own (a 26 µm bead that stopped
        # in front of the constriction has its centroid 13 µm upstream, and was never said)
        reach = np.maximum(CELL_RADIUS_UM / px, np.sqrt(sf[:, L.SF_AREA] / np.pi) + STOP_UM / px)
        near = np.flatnonzero((si[:, L.SI_STATE] == L.ACTIVE) & (x >= g.constriction_x0 - reach)
                              & (x <= g.constriction_x1) & (si[:, L.SI_NHIST] >= 2))
        bgm = self.background
        for k in near.tolist():
            h = self._hist[k, : int(si[k, L.SI_NHIST])]
            # its current place is sf's (a full history of a cell that stopped takes no more rows)
            moved = np.flatnonzero(np.abs(h[:, _H + B_X] - sf[k, L.SF_X]) > STOP_UM / px)
            i = int(moved[-1]) + 1 if moved.size else 0
            if i >= len(h) or h[i, L.H_FRAME] <= self._passed_frame:
                continue  # a cell passed it while it stood (debris stuck to a wall beside the way)
            still_ms = sf[k, L.SF_T] - h[i, L.H_T]
            span_ms, frames = h[-1, L.H_T] - h[0, L.H_T], h[-1, L.H_FRAME] - h[0, L.H_FRAME]
            limit = CLOG_MS
            if bgm.relearn > 0 and span_ms > 0 and frames > 0:  # the background takes it over sooner
                limit = min(limit, 0.5 * bgm.relearn * bgm.stride * span_ms / frames)
            if still_ms < max(limit, self.settings.stuck_ms):
                continue
            self._blocked_ms, self._blocked_now_ms = float(h[i, L.H_T]), now_ms
            self._hold_background(True)
            where = "in the constriction" if sf[k, L.SF_X] >= g.constriction_x0 else "at its mouth"
            self._say(f"frame {frame_id}: the constriction looks blocked: an object has stood still {where} "
                      f"(x {sf[k, L.SF_X] * px:.0f} µm) for {still_ms:.0f} ms, and no cell passes while it stays "
                      f"(a clog: flush the channel?). Said again once cells pass")
            return

    def _judge_position(self, image: np.ndarray, frame_id: int) -> None:
        """Follow a channel that moved in the view (the stage or the chip shifted; see
        :mod:`tracking.drift`): once two looks agree that it lies half a pixel or more from where
        the tracker has it, the constriction, the walls and the background move with it."""
        self._drift_due = DRIFT_EVERY
        if self._light_stepped:
            return  # the frames are not the channel's until the background has the new light
        o = self._drift.offset(image)
        px = self.geometry.pixel_size_um
        seen = self._drift_seen
        if o.beyond and not (seen is not None and seen.beyond):
            self._drift_seen, self._drift_due = o, DRIFT_CONFIRM
            return
        if o.beyond:
            self._drift_seen = None
            if not self._drift_said:
                self._drift_said = True
                self._say(f"frame {frame_id}: the channel moved more than {self._drift.max_x * px:g} µm along the flow "
                          f"or {self._drift.max_y * px:g} µm across it (as far as the tracker looks) from where it was "
                          f"at the start of the run (the stage or the chip shifted?): the tracker cannot follow it, "
                          f"and cells are measured against the constriction where it was. Restart the run")
            return
        dx, dy = self._offset
        if abs(o.dx - dx) < 0.5 and abs(o.dy - dy) < 0.5:
            self._drift_seen = None
            return
        self._drift_seen = o
        if seen is None or not abs(seen.dx - o.dx) <= 0.5 or not abs(seen.dy - o.dy) <= 0.5:
            self._drift_due = DRIFT_CONFIRM  # a frame's cells could pull one look: the next must agree
            return
        dx, dy = 0.5 * (seen.dx + o.dx), 0.5 * (seen.dy + o.dy)
        g0 = self._geometry0
        x0, x1 = g0.constriction_x0 + dx, g0.constriction_x1 + dx
        y0, y1 = max(0.0, g0.channel_y0 + dy), min(float(g0.height), g0.channel_y1 + dy)
        if x0 < 0 or x1 > g0.width or y1 - y0 < 0.5 * (g0.channel_y1 - g0.channel_y0):
            if not self._drift_said:
                self._drift_said = True
                self._say(f"frame {frame_id}: the channel moved {dx * px:+.1f} µm along the flow and {dy * px:+.1f} µm "
                          f"across it, and the constriction or the channel left the view: move it back and restart")
            return
        bgm = self.background
        held = self._drift.offset(bgm.image)  # where the background has it (it may have relearned some)
        if not held.beyond:
            bgm._acc[:] = translated(bgm._acc, dx - held.dx, dy - held.dy)
            top = float(np.iinfo(bgm.image.dtype).max)
            bgm.image[:] = np.clip(np.floor(bgm._acc + np.float32(0.5)), 0.0, top)
            bgm._count[:] = 0
        self._set_geometry(replace(g0, constriction_x0=x0, constriction_x1=x1, channel_y0=y0, channel_y1=y1),
                           g0.height)
        L.shift_profile(self._motion, dx - self._offset[0])
        self._offset, self._drift_seen = (dx, dy), None
        self._say(f"frame {frame_id}: the channel moved {dx * px:+.1f} µm along the flow and {dy * px:+.1f} µm across "
                  f"it since the run started (the stage or the chip shifted?): the tracker follows it, the constriction "
                  f"now at {x0 * px:.1f}-{x1 * px:.1f} µm and the walls at {y0 * px:.1f} and {y1 * px:.1f} µm. Cells in "
                  f"view while it moved are measured across the move")

    def _unblocked(self, h: np.ndarray, exit_frame: int) -> None:
        """A cell passed the constriction after it was said to be blocked: say for how long."""
        exits = np.flatnonzero(h[:, L.H_FRAME] == exit_frame)
        if not exits.size or h[exits[0], L.H_T] <= self._blocked_ms:
            return  # it left before the block began
        gone_ms = h[exits[0], L.H_T] - self._blocked_ms
        self._blocked_ms, self._blocked_now_ms = None, math.nan
        self._hold_background(False)
        note = f"cells pass the constriction again (it was blocked for {gone_ms / 1000:.1f} s)"
        log.info("%s", note)
        if self.on_note is not None:
            self.on_note(note)

    def _hold_background(self, hold: bool) -> None:
        """While the constriction is blocked the background takes nothing over (``relearn`` 0):
        it took the stuck object over after 2,048 frames, and the cells that came once it left
        were measured against a background that still held it, until the running update had
        learned the empty channel back there. No cell passes a block, so nothing else is lost
        meanwhile; a light that steps beyond what the flicker correction follows takes over as
        ever (:meth:`_judge_light`)."""
        bgm = self.background
        if hold and not self._light_stepped and bgm.relearn > 0:
            self._relearn_held, bgm.relearn = bgm.relearn, 0
        elif not hold and self._relearn_held:
            bgm.relearn, self._relearn_held = self._relearn_held, 0

    @property
    def blocked_s(self) -> float:
        """Seconds the constriction has been blocked (as last looked at); NaN while cells pass.
        Read from another thread while the tracker runs."""
        since, now = self._blocked_ms, self._blocked_now_ms
        return math.nan if since is None else max(now - since, 0.0) / 1000.0

    def _judge_direction(self, dx_um: float) -> None:
        """Say once when cells move right to left: a camera turned against the flow, replayed or
        run without camera.flow_direction, gave a few INCOMPLETE events (10 of 29 cells) and
        nothing said why. A track with the flow never goes that far back, so one that goes with
        it settles the question."""
        if dx_um >= BACKWARD_UM:
            self._moves = None
            return
        if dx_um > -BACKWARD_UM:
            return
        self._moves[0] += 1
        if self._moves[0] < BACKWARD_TRACKS:
            return
        self._moves = None
        note = (f"cells move right to left in the image ({BACKWARD_TRACKS} tracks went more than {BACKWARD_UM:g} µm "
                f"against the flow the tracker expects, none with it): the tracker takes them left to right, so "
                f"say which way they flow (camera.flow_direction; --flow-direction on replay and track)")
        self._say(note)

    def _judge_sampling(self, h: np.ndarray, transit_ms: float, v_before_mm_s: float) -> None:
        """Once ``SAMPLING_CELLS`` unflagged cells have passed, say what the frame rate does to
        their measurements (medians): crossing the constriction in fewer than
        ``MIN_FRAMES_INSIDE`` frames, transit is still timed to a fraction of a frame, but v_max
        and DIR rest on two or three frames; moving less than ``MIN_STEP_PX`` in
        ``MAX_STEP_FRAMES`` frames upstream, the learned pace that times the pulses knows nothing
        of the upstream channel (learning from single frames only, the cells' pace past the exit
        read 13-17% slow at 0.5 px a frame). Nothing else tells the user either."""
        # frames, not rows: a history thinned upstream has fewer rows than frames
        span = h[-1, L.H_T] - h[0, L.H_T]
        frames = h[-1, L.H_FRAME] - h[0, L.H_FRAME]
        if not span > 0 or not frames > 0 or not transit_ms > 0:
            return
        frame_ms = span / frames
        self._frames_inside.append((transit_ms / frame_ms, v_before_mm_s * frame_ms / self.geometry.pixel_size_um))
        if len(self._frames_inside) < SAMPLING_CELLS:
            return
        inside, step = (float(v) for v in np.nanmedian(np.array(self._frames_inside), axis=0))
        self._frames_inside = None
        notes = []
        if inside < MIN_FRAMES_INSIDE:
            notes.append(f"cells cross the constriction in {inside:.1f} frames (median of the first {SAMPLING_CELLS} "
                         f"unflagged cells): transit is still timed to a fraction of a frame, but a cell held up by "
                         f"the one ahead reaches its top speed between frames (its v_max reads up to 60% low) and DIR "
                         f"rests on a few frames; a higher frame rate or a slower flow gives {MIN_FRAMES_INSIDE:g} "
                         f"or more")
        slowest = L.MIN_STEP_PX / L.MAX_STEP_FRAMES
        if step < slowest:
            notes.append(f"cells move {step:.2f} px a frame upstream of the constriction (median of the first "
                         f"{SAMPLING_CELLS} unflagged cells): the channel's pace, which times the sort pulses, is "
                         f"learned from steps of {L.MIN_STEP_PX:g} px within {L.MAX_STEP_FRAMES} frames, so not "
                         f"there, and pulses come late; a lower frame rate (or a larger pixel size) gives "
                         f"{slowest:g} px a frame or more")
        for note in notes:
            self._say(note)

    def _extra(self, info: list, h: np.ndarray, i_max: int, easing_ms: float) -> dict:
        """When and where the event was emitted, and what the frame of maximum DI (the event
        image's) shows: its time and the cell's hull area and brightness in it, so that an RT-DC
        file's ``time``, ``area_um`` and ``bright_*`` describe the same image as its ``deform``."""
        extra = {"emit_frame": info[L.SI_EMIT_FRAME], "emit_host_ns": info[L.SI_EMIT_HOST],
                 "exit_easing_ms": easing_ms}
        px = self.geometry.pixel_size_um
        # the centroid x in the exit row (the passage's: the first row past the constriction, where
        # pos_y_um is taken): an event file without ROI frames gives the cell's position there
        # (its pos_x was NaN, though every cell's position is tracked)
        i_out = int(np.argmax(h[:, _H + B_X] >= self.geometry.constriction_x1)) if len(h) else 0
        if i_out > 0:
            extra["exit_pos_x_um"] = float(h[i_out, _H + B_X]) * px
        if i_max >= 0:
            row = h[i_max]
            extra["image_time_ms"] = float(row[L.H_T])
            extra["image_area_um"] = float(row[_H + B_HULL_AREA]) * px * px
            extra["image_bright_avg"] = float(row[_H + B_BRIGHT_AVG])
            extra["image_bright_sd"] = float(row[_H + B_BRIGHT_SD])
            extra["image_bg_off"] = float(row[_H + B_BG_OFF])
        return extra

    def _snapshot(self, h: np.ndarray, i: int) -> Snapshot | None:
        """History row ``i`` (maximum DI in the constriction)'s frame, copied back from its ring slot."""
        images = self._snap_images
        if i < 0 or images is None:
            return None
        slot = int(h[i, L.H_SLOT])
        frame_id = int(h[i, L.H_FRAME])
        too_old = False
        if self.snapshot_max_age > 0 and self._snap_first >= 0:
            cap = len(images)
            in_batch = (slot - self._snap_first) % cap < self._snap_span
            too_old = not in_batch and (self._snap_first - slot) % cap > self.snapshot_max_age
        if not 0 <= slot < len(images) or too_old or (self._snap_ids is not None and int(self._snap_ids[slot]) != frame_id):
            self._snapshots_lost += 1
            return None
        image = images[slot].copy()
        bg = self.background.image.copy()
        x, y = float(h[i, _H + B_X]), float(h[i, _H + B_Y])
        # segment only the blob's bounding box (from the history) plus a pixel: a few µs, not a frame.
        # A blob cut from a touching neighbour gets no pixel more along x: that is the neighbour
        hh, ww = image.shape
        mx = 0 if h[i, _H + B_SPLIT] > 0.5 else 1
        ya, yb = max(int(h[i, _H + B_YMIN]) - 1, 0), min(int(h[i, _H + B_YMAX]) + 2, hh)
        xa, xb = max(int(h[i, _H + B_XMIN]) - mx, 0), min(int(h[i, _H + B_XMAX]) + 1 + mx, ww)
        mask = np.zeros(image.shape, bool)
        # the mask as the frame was segmented: against the background scaled by its light; the
        # snapshot keeps the background itself (dclab adds bg_off to image_bg)
        seg_bg = bg
        gain = float(h[i, _H + B_LIGHT])
        # (the kernel's Python function: a numba dispatcher first called here compiled mid-run)
        if self.flicker_corrected and corrects.py_func(gain, int(bg[self.y0:self.y1].max(initial=0)),
                                                       self.background.light_level):
            seg_bg = bg.copy()  # (only the window is segmented)
            win = bg[ya:yb, xa:xb].astype(np.float64)
            seg_bg[ya:yb, xa:xb] = np.minimum(np.floor(gain * win + 0.5), np.iinfo(bg.dtype).max)
        if not self._nearest_mask(image, seg_bg, self.threshold, float(self.min_area_px), self.settings.max_blobs,
                                  x, y, ya, yb, xa, xb, mask, float(self.settings.split_ratio)):
            # a blob cut from a touching neighbour can fall apart, segmented again inside its own
            # bounding box, into pieces under the area limit: its mask was empty, and dclab's
            # bright_perc_* stopped with an IndexError on the file (contour features had no contour).
            # The window is the blob's, so its dark pixels nearest the centroid are the blob's
            self._nearest_mask(image, seg_bg, self.threshold, 0.0, self.settings.max_blobs,
                               x, y, ya, yb, xa, xb, mask, 0.0)
        return Snapshot(image=image, background=bg, mask=mask, frame_id=frame_id, pos_x_px=x, pos_y_px=y)


#: Quality of each flag combination met so far (IntFlag() of a composite value is slow)
_QUALITY: dict[int, Quality] = {}


def _median(a: np.ndarray) -> float:
    """Median of a small 1-D array (NaN if empty)."""
    n = a.size
    if n == 0:
        return math.nan
    b = np.sort(a)
    return float(b[n // 2]) if n % 2 else 0.5 * float(b[n // 2 - 1] + b[n // 2])


def _nanmedian3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Element-wise median of three arrays ignoring NaNs (np.nanmedian over a stack is ~100x slower)."""
    st = np.sort(np.vstack([a, b, c]), axis=0)  # NaNs sort last
    n = 3 - np.isnan(st).sum(axis=0)
    return np.where(n == 3, st[1], np.where(n == 2, 0.5 * (st[0] + st[1]), st[0]))


def _crossing(t: np.ndarray, x: np.ndarray, line: float) -> tuple[float, int]:
    """Time the track crosses x = ``line`` (:func:`_crossing_time`) and the index of the first
    observation at or past it; (nan, -1) if it never does."""
    idx = np.flatnonzero(x >= line)
    if idx.size == 0:
        return math.nan, -1
    i = int(idx[0])
    if i == 0:
        return math.nan, 0  # already past the line when first seen
    return _crossing_time(t, x, i, line), i


def _crossing_time(t: np.ndarray, x: np.ndarray, i: int, line: float) -> float:
    """Time the track crosses x = ``line`` between rows i - 1 and i, on the monotone cubic
    (PCHIP with Fritsch-Butland slopes) through the rows around the interval, solved by halving."""
    ta, tb, xa, xb = t[i - 1], t[i], x[i - 1], x[i]
    h = tb - ta
    if xb <= xa or h <= 0:
        return float(tb)
    d = (xb - xa) / h

    def knot_slope(d0: float, d1: float) -> float:
        return 2.0 * d0 * d1 / (d0 + d1) if d0 * d1 > 0 else 0.0

    ma = knot_slope((xa - x[i - 2]) / (ta - t[i - 2]), d) if i >= 2 and ta > t[i - 2] else d
    mb = knot_slope(d, (x[i + 1] - xb) / (t[i + 1] - tb)) if i + 1 < len(t) and t[i + 1] > tb else d
    lo, hi = 0.0, 1.0
    for _ in range(CROSSING_STEPS):
        u = 0.5 * (lo + hi)
        xu = ((2 * u - 3) * u * u + 1) * xa + ((u - 2) * u + 1) * u * h * ma + (3 - 2 * u) * u * u * xb \
            + (u - 1) * u * u * h * mb
        lo, hi = (u, hi) if xu < line else (lo, u)
    return float(ta + 0.5 * (lo + hi) * h)


def _v_max(vm: np.ndarray, inside: np.ndarray, near_cut: np.ndarray, mean_in: float) -> float:
    """The maximum speed in the constriction over rows neither cut from a neighbour nor next to
    one, unless there are none or they stay clearly under the mean speed through it
    (``V_MEAN_SHARE``: then they missed the maximum): then over every row in it."""
    if not inside.any():
        return math.nan
    whole = vm[inside & ~near_cut]
    whole = whole[~np.isnan(whole)]
    if whole.size and not whole.max() < V_MEAN_SHARE * mean_in:
        return float(max(whole.max(), mean_in)) if mean_in > 0 else float(whole.max())
    every = vm[inside]
    every = every[~np.isnan(every)]
    if not every.size:
        return math.nan
    return float(max(every.max(), mean_in)) if mean_in > 0 else float(every.max())


def measure_passage(h: np.ndarray, g: ChannelGeometry, s: TrackerSettings) -> tuple[dict[str, float], Quality]:
    """Features of one cell from its observation history (rows: t_ms, frame, slot, blob columns).

    The readable NumPy reference of :func:`tracking.passage.passage_kernel`, which the tracker
    runs (the tests hold the two to each other)."""
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
        vm[1:-1] = _nanmedian3(v[:-2], v[1:-1], v[2:])
    def safe(fn, arr):
        arr = arr[~np.isnan(arr)]
        return float(fn(arr)) if arr.size else nan

    med = _median  # np.median costs ~15 µs a call; the event path makes eight

    area_px = h[:, _H + B_AREA]
    hull_a = h[:, _H + B_HULL_AREA]
    hull_p = h[:, _H + B_HULL_PERIM]
    with np.errstate(divide="ignore", invalid="ignore"):
        deform_all = np.where(hull_p > 0, 1.0 - 2.0 * np.sqrt(np.pi * hull_a) / hull_p, nan)
        solidity = np.where(hull_a > 0, area_px / hull_a, nan)
    cut = h[:, _H + B_SPLIT] > 0.5
    near_cut = cut.copy()  # a cut moves the centroid: the speeds next to one too
    near_cut[1:] |= cut[:-1]
    near_cut[:-1] |= cut[1:]
    # the DI maximum over rows not cut from a touching neighbour, where the constriction has any
    whole = inside & ~cut
    di_in = np.where(whole if whole.any() else inside, di, -np.inf)
    i_max = int(np.argmax(di_in)) if inside.any() else -1

    feats = {
        "di": float(di[i_max]) if i_max >= 0 else nan,
        "di_entry": float(di[i_in - 1]) if i_in > 0 else nan,
        "di_exit": float(di[i_out]) if i_out > 0 else nan,
        "transit_time_ms": t_out - t_in,
        "v_max_mm_s": _v_max(vm, inside, near_cut, (g.constriction_x1 - g.constriction_x0) * px / (t_out - t_in)
                             if t_out > t_in else nan),
        "v_before_mm_s": safe(med, v[up]),
        "v_after_mm_s": safe(med, v[i_out:]) if i_out > 0 else nan,
        "dir_per_ms": nan,
        "diameter_um": 2.0 * math.sqrt(med(area_px[up]) / math.pi) * px if i_in > 0 else nan,
        "deform": float(deform_all[i_max]) if i_max >= 0 else nan,
        "area_um": med(hull_a[up]) * px * px if i_in > 0 else nan,
        "bright_avg": med(h[up, _H + B_BRIGHT_AVG]) if i_in > 0 else nan,
        "bright_sd": med(h[up, _H + B_BRIGHT_SD]) if i_in > 0 else nan,
        "entry_time_ms": t_in,
        "exit_time_ms": t_out,
        "pos_y_um": float(y[i_out]) * px if i_out > 0 else nan,
    }
    # DIR: mean |dDI/dt| from the last frame before entry to the last one observed after exit
    if i_in > 0 and i_out > 0:
        rows = np.arange(i_in - 1, len(t))
        whole_rows = rows[~cut[rows]]  # leaving out rows cut from a neighbour, if two or more remain
        if len(whole_rows) >= 2:
            rows = whole_rows
        dt = t[rows[-1]] - t[rows[0]]
        if dt > 0:
            feats["dir_per_ms"] = float(np.sum(np.abs(np.diff(di[rows]))) / dt)
    q = int(quality)  # IntFlag arithmetic is slow; combine plain ints and convert once
    if (cut & inside).any() or (i_in > 0 and cut[i_in - 1]):  # where the squeeze and the crops are measured
        q |= Quality.TOUCHING
    if inside.sum() >= 2 and i_in > 0 and i_out > 0:
        # joined to a neighbour on one side from before the constriction to past it: one object
        side = h[i_in - 1:i_out + 1, _H + B_SPLIT].astype(np.int64)
        if max(np.sum(side & 1), np.sum((side >> 1) & 1)) >= _JOINED * len(side):
            q |= Quality.DOUBLET
    if i_in > 1 and _median(solidity[up][~np.isnan(solidity[up])]) < s.doublet_solidity:
        q |= Quality.DOUBLET
    # the rest shape: blob wholly upstream of the constriction mouth and off the ROI border
    rest = (h[up, _H + B_XMAX] < g.constriction_x0) & (h[up, _H + B_BORDER] < 0.5)
    if rest.any() and _median(di[up][rest]) > s.doublet_di:
        q |= Quality.DOUBLET
    if _median(h[:, _H + B_CONTRAST]) < s.low_contrast:
        q |= Quality.LOW_CONTRAST
    reach, stop = STOP_UM / g.pixel_size_um, 0.0  # the longest time the cell stayed put
    for i in range(len(t)):
        away = np.flatnonzero(np.abs(x[i:] - x[i]) > reach)
        j = i + away[0] - 1 if away.size else len(t) - 1
        stop = max(stop, t[j] - t[i])
    if stop > s.stuck_ms:
        q |= Quality.STUCK
    return feats, Quality(q)
