"""The synthetic microfluidic camera: a channel with a constriction, cells squeezing through it,
and the true answer for every object that passed.

Physics (positions are the object's centre, x along the flow, in ROI pixels; pixel centres at
integer coordinates):

* A wide channel (``channel_width_um``) narrows to ``constriction_gap_um`` between x0 and x1
  (``constriction_start_um`` .. + ``constriction_length_um``). Lumen bright, PDMS walls darker,
  the lumen boundary a dark line: what a brightfield image of a PDMS chip looks like, and what the
  tracker's geometry detection keys on.
* Cells arrive as a Poisson process (``cells_per_second``) in single file: a cell never closes in on
  the one ahead closer than ``min_gap_um`` (it queues, e.g. behind a stuck cell). Upstream they
  drift at ``flow_speed_mm_s`` on a lane off the centre line and funnel onto the centre line before
  their front reaches the constriction.
* Squeeze: from the moment the front touches x0 until the centre is ``entry_ramp_um`` past x0, DI
  rises (smoothstep) from the cell's rest DI to its constriction DI, and the speed from the upstream
  speed to its constriction speed. Both then PLATEAU until the centre reaches x1, so the maximum
  over sampled frames is the true maximum. After x1 the speed falls to ``exit_speed_mm_s`` over one
  cell radius and DI relaxes exponentially in time (``relax_ms``, class-dependent), so DIR means
  something. Constriction speed = ``constriction_speed_mm_s`` x class ``speed_factor`` x a per-cell
  log-normal spread, a little higher for more deformable cells. The projected area is conserved:
  a = R·sqrt((1+DI)/(1−DI)), b = R·sqrt((1−DI)/(1+DI)).
* Cells may stick at the constriction mouth for a while (``stuck_fraction``); doublets are two
  touching cells passing as one object; debris are small rigid particles that follow the flow.
* Appearance: cells are darker than the lumen (``darkness``), with a texture map in normalised
  ellipse coordinates (smooth cytoplasm texture, granules, a round or lobed nucleus) that squeezes
  with the cell, a darker rim just inside the boundary, and pixel-coverage anti-aliased edges
  (plus motion blur over ``exposure_us``). Darkness is subtracted in grey levels independent of the
  local background, so the segmented boundary sits on the true ellipse even over the walls.
  The default classes differ moderately in texture, granularity, nucleus and rim: a small CNN on
  64x64 crops (first/last frame in the constriction) reaches ~92 % from images alone, a small MLP
  on the true features (DI, transit, v_max, DIR, diameter) ~95 %, both together ~95-97 %.

Truth definitions (one :class:`TruthRecord` per object, times in ms from frame 0, frame i at i/fps):
``entry_ms``/``exit_ms`` are the exact times the centroid crosses x0/x1 (for doublets the centroid
of the pair, area-weighted); ``transit_ms`` = exit − entry; ``v_max_mm_s`` the maximum centroid
speed with the centroid inside [x0, x1]; ``di_max`` the plateau DI (the maximum inside; NaN for
doublets); ``dir_per_ms`` Σ|ΔDI|/Δt over the frames from the last one before entry to the first one
``truth_dir_after_um`` past exit (the tracker's DIR window); ``diameter_um`` the rest diameter 2R.
a and b are exactly the rendered ellipse's semi-axes. ``queued_ms`` > 0 marks the few cells held
up by the cell ahead while squeezing (their transit and v_max reflect that).

Faults: dropped frames (``drop_rate``, frame-id gaps), failed buffers (``failed_rate``: the frame
is discarded and counted in ``failed_buffers`` — its id is missing too, as on a GenICam camera),
lamp flicker (``flicker``), a lamp turned up or down (``lamp``), a wrapping frame counter
(``id_bits``); in ``realtime`` mode a consumer
that falls more than ``max_lag_frames`` behind loses frames as on a real camera.

Everything is deterministic for a seed: objects come from one random stream generated in time
windows, and per-frame noise/flicker/faults from a stream keyed by the frame index, so neither
depends on how fast frames are taken.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import os
import time
from dataclasses import dataclass, fields

import numpy as np

from acquisition import _render as rk
from acquisition import _runs as runs
from acquisition.camera import Camera, CameraInfo, CameraState, GrabResult
from acquisition.frame import FrameRing
from mimlsort import realtime
from mimlsort.errors import ConfigError, DataFormatError, StateError
from mimlsort.settings import from_mapping, require, to_mapping

_TEX = 48  # darkness-map resolution (normalised ellipse coordinates), sampled bilinearly
_NOISE_LEN = 1 << 20  # noise table entries (plus one frame)
_SCENE_KEYS = ("cells_per_second", "debris_per_second", "doublet_fraction", "stuck_fraction")  # what objects are made of
_CHUNK = 4096  # frames per block of per-frame random values
_WINDOW_S = 0.05  # objects are generated this many seconds at a time
# objects are generated this far ahead of the frame being taken: an object can show (its edge at
# the ROI border) a few frames before its birth time, and generated later it would miss them
_LOOKAHEAD_MS = 1000.0 * _WINDOW_S
_DX = 0.25  # px, step of the position grid trajectories are integrated on
_OVERSAMPLE = 8  # sub-frame samples for doublet truth
#: truth records an endless synthetic run keeps (the newest; ~25 MB, ~10 min at 80 cells/s)
TRUTH_KEPT_ENDLESS = 50_000
_EMPTY2 = np.zeros((0, 0))  # "none" for the optional parts of a darkness map


@dataclass(frozen=True, slots=True)
class ClassSpec:
    """One cell class: size, mechanics and appearance. Appearance values vary per cell by
    ``appearance_sd`` (relative, log-normal), so classes overlap without being identical."""

    name: str  # class name (the truth's, and what a model trained on it calls it)
    fraction: float = 1.0  # relative share of the cells
    diameter_um: float = 14.0  # mean rest diameter
    diameter_sd_um: float = 1.5  # sd of the rest diameter across cells
    di: float = 0.70  # mean DI (a-b)/(a+b) of the squeezed shape in the constriction
    di_sd: float = 0.09  # sd of the squeezed DI across cells
    rest_di: float = 0.02  # DI at rest, upstream
    speed_factor: float = 1.0  # constriction speed relative to constriction_speed_mm_s
    relax_ms: float = 1.0  # DI relaxation time constant after the exit
    darkness: float = 22.0  # grey levels the cell body is darker than the lumen
    edge_darkness: float = 6.0  # extra darkness of the boundary rim
    edge_width_um: float = 0.6  # rim width
    texture_contrast: float = 3.0  # sd of the smooth cytoplasm texture, grey levels
    texture_scale_um: float = 2.5  # correlation length of the texture
    granules: float = 10.0  # mean number of dark granules
    granule_contrast: float = 8.0  # grey levels
    nucleus_fraction: float = 0.5  # nucleus radius / cell radius (0: no visible nucleus)
    nucleus_contrast: float = 6.0  # extra darkness of the nucleus (negative: brighter)
    nucleus_lobes: float = 1.0  # mean number of nucleus lobes (1: round)
    appearance_sd: float = 0.2  # relative per-cell spread of the appearance values

    def __post_init__(self):
        for f in fields(self):  # inf passed: the run died in the camera ("lam value too large", no key named)
            v = getattr(self, f.name)
            require(not isinstance(v, float) or math.isfinite(v), f.name, f"must be finite, got {v}")
        require(bool(self.name) and "," not in self.name and "+" not in self.name, "name",
                f"must be a non-empty name without ',' or '+', got {self.name!r}")
        require(self.fraction >= 0, "fraction", f"must be >= 0, got {self.fraction}")
        require(self.diameter_um > 0, "diameter_um", f"must be > 0, got {self.diameter_um}")
        require(0 < self.di < 0.95, "di", f"must be in (0, 0.95), got {self.di}")
        require(0 <= self.rest_di < self.di, "rest_di", f"must be in [0, di), got {self.rest_di}")
        for name in ("diameter_sd_um", "di_sd", "edge_darkness", "texture_contrast", "granules", "granule_contrast",
                     "appearance_sd"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("speed_factor", "relax_ms", "darkness", "edge_width_um", "texture_scale_um"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        require(0 <= self.nucleus_fraction <= 0.9, "nucleus_fraction",
                f"must be in [0, 0.9], got {self.nucleus_fraction}")
        require(1 <= self.nucleus_lobes <= 6, "nucleus_lobes", f"must be in [1, 6], got {self.nucleus_lobes}")


#: The MIML paper's two populations: HCT116 (cancer line: larger spread of sizes, more deformable,
#: faster through the constriction, coarser granular cytoplasm, big round nucleus) vs white blood
#: cells (uniform size, smoother cytoplasm, smaller often lobed nucleus, crisper edge).
DEFAULT_CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("hct116", fraction=0.5, diameter_um=14.2, diameter_sd_um=4.4, di=0.722, di_sd=0.085,
              speed_factor=1.3, relax_ms=0.6, darkness=28.0, edge_darkness=3.0, edge_width_um=0.5,
              texture_contrast=3.8, texture_scale_um=1.45, granules=22.0, granule_contrast=12.0,
              nucleus_fraction=0.6, nucleus_contrast=10.0, nucleus_lobes=1.0, appearance_sd=0.2),
    ClassSpec("wbc", fraction=0.5, diameter_um=13.5, diameter_sd_um=1.5, di=0.660, di_sd=0.091,
              speed_factor=1.0, relax_ms=2.0, darkness=17.0, edge_darkness=9.0, edge_width_um=0.7,
              texture_contrast=2.1, texture_scale_um=3.4, granules=7.0, granule_contrast=5.0,
              nucleus_fraction=0.45, nucleus_contrast=8.0, nucleus_lobes=2.4, appearance_sd=0.2),
)


@dataclass(frozen=True, slots=True)
class SyntheticSettings:
    """The simulated channel, its cells, the optics and the faults to inject. Lengths in µm."""

    duration_s: float = 2.0  # length of the run; 0 = endless
    fps: float = 4000.0  # frame rate
    width: int = 256  # ROI width, px (along the flow)
    height: int = 96  # ROI height, px
    pixel_size_um: float = 0.5  # µm per pixel in the object plane
    realtime: bool = False  # pace frames at fps on the host clock (live demo) instead of as fast as possible
    max_lag_frames: int = 512  # realtime: frames the camera buffers before a slow consumer loses frames (1 to 1048576)
    # a camera costs the host no scene generation, so a benchmark's simulator should not either
    pregenerate: bool = False  # generate every object when the camera opens, not while it runs (needs duration_s > 0)
    seed: int = 1  # random seed: the same seed gives the same frames and truth
    cells_per_second: float = 40.0  # mean cell arrival rate (Poisson)
    classes: tuple[ClassSpec, ...] = DEFAULT_CLASSES  # cell classes and their mix
    channel_width_um: float = 32.0  # wide channel, up- and downstream
    constriction_gap_um: float = 6.0  # width of the constriction (narrower than a cell)
    constriction_length_um: float = 40.0  # length of the constriction along the flow
    constriction_start_um: float = 44.0  # x of the constriction's upstream end in the ROI
    channel_offset_um: float = 0.0  # channel centre line relative to the ROI centre (y)
    flow_speed_mm_s: float = 3.0  # cell speed in the wide channel upstream
    exit_speed_mm_s: float = 5.0  # cell speed downstream of the constriction
    constriction_speed_mm_s: float = 10.0  # cell speed in the constriction (times the class speed_factor)
    speed_sd: float = 0.12  # relative per-cell spread of the constriction speed
    entry_ramp_um: float = 3.0  # DI and speed reach their plateau this far past the constriction start
    min_gap_um: float = 3.0  # closest approach of consecutive cells in the single-file lane
    lane_spread: float = 0.5  # upstream lanes spread over this fraction of the free channel half-width
    lumen_level: float = 160.0  # grey level of the empty channel
    wall_level: float = 118.0  # grey level of the PDMS walls
    edge_level: float = 72.0  # grey level of the dark line along the channel walls
    edge_line_um: float = 0.8  # width of that line
    illumination_gradient: float = 0.08  # relative brightness change across the ROI (and vignetting)
    fixed_pattern_sd: float = 0.7  # static pixel-to-pixel background variation, grey levels
    noise_sd: float = 2.0  # temporal noise per pixel, grey levels
    exposure_us: float = 2.0  # exposure (flash) time: motion blur along the flow
    flicker: float = 0.0  # relative amplitude of lamp flicker (100 Hz and random frame to frame)
    lamp: float = 1.0  # the lamp's brightness against the usual (change it mid-run: a lamp turned up or down)
    debris_per_second: float = 5.0  # small rigid particles (mostly below the tracker's size limit)
    debris_diameter_um: tuple[float, float] = (1.5, 4.5)  # debris size range
    doublet_fraction: float = 0.01  # share of arrivals that are two touching cells
    stuck_fraction: float = 0.0  # share of cells that stick at the constriction mouth for a while
    stuck_ms: tuple[float, float] = (20.0, 80.0)  # how long a stuck cell stays (uniform range)
    drop_rate: float = 0.0  # probability that the camera drops a frame (frame-id gap)
    failed_rate: float = 0.0  # probability of a failed buffer (discarded, counted in failed_buffers)
    id_bits: int = 0  # width of the camera's frame counter (0: never wraps)
    truth_dir_after_um: float = 15.0  # DIR truth runs to this far past the exit (the tracker's emit_after_exit_um)

    def __post_init__(self):
        for f in fields(self):  # inf passes every ">= 0" check: inf cells a second hung the camera
            v = getattr(self, f.name)
            require(not isinstance(v, float) or math.isfinite(v), f.name, f"must be finite, got {v}")
        require(self.duration_s >= 0, "duration_s", f"must be >= 0 (0 = endless), got {self.duration_s}")
        require(not self.pregenerate or self.duration_s > 0, "pregenerate", "needs a finite run (duration_s > 0)")
        require(0 < self.fps <= 1e6, "fps", f"must be in (0, 1e6], got {self.fps}")
        # under half a frame rounds to 0 frames, the count of an endless run: 0.0001 s ran for ever
        require(self.duration_s == 0 or self.duration_s * self.fps >= 0.5, "duration_s",
                f"must be 0 (endless) or at least one frame ({1 / self.fps:g} s at {self.fps:g} fps), got {self.duration_s:g}")
        # the walls are rendered 4x4 supersampled in float64: 4096 x 1024 px takes 0.5 GiB for a moment
        require(32 <= self.width <= 4096, "width", f"must be in [32, 4096] px, got {self.width}")
        require(16 <= self.height <= 1024, "height", f"must be in [16, 1024] px, got {self.height}")
        require(self.pixel_size_um > 0, "pixel_size_um", f"must be > 0, got {self.pixel_size_um}")
        # the camera's kernel takes it as a 64-bit integer: 10**30 failed to compile there mid-start
        require(1 <= self.max_lag_frames <= 1 << 20, "max_lag_frames",
                f"must be in [1, {1 << 20}], got {self.max_lag_frames}")
        for name in ("cells_per_second", "debris_per_second", "min_gap_um", "noise_sd", "fixed_pattern_sd",
                     "exposure_us", "flicker", "illumination_gradient", "entry_ramp_um", "speed_sd",
                     "truth_dir_after_um"):
            require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("channel_width_um", "constriction_gap_um", "constriction_length_um", "flow_speed_mm_s",
                     "exit_speed_mm_s", "constriction_speed_mm_s", "edge_line_um"):
            require(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("lumen_level", "wall_level", "edge_level"):
            require(0 <= getattr(self, name) <= 255, name, f"must be in [0, 255], got {getattr(self, name)}")
        require(self.noise_sd <= 40, "noise_sd", f"must be <= 40 grey levels, got {self.noise_sd}")
        require(self.flicker < 0.5, "flicker", f"must be < 0.5, got {self.flicker}")
        require(0 < self.lamp <= 4, "lamp", f"must be in (0, 4], got {self.lamp}")
        require(self.illumination_gradient < 0.8, "illumination_gradient",
                f"must be < 0.8, got {self.illumination_gradient}")
        require(self.constriction_gap_um < self.channel_width_um, "constriction_gap_um",
                f"must be narrower than channel_width_um ({self.channel_width_um}), got {self.constriction_gap_um}")
        px = self.pixel_size_um
        roi_h_um = self.height * px
        half = self.channel_width_um / 2 + self.edge_line_um
        require(abs(self.channel_offset_um) + half <= roi_h_um / 2, "channel_width_um",
                f"channel ({self.channel_width_um} µm, offset {self.channel_offset_um}) does not fit the ROI height "
                f"({self.height} px x {px} µm = {roi_h_um:g} µm)")
        require(self.constriction_start_um >= 0, "constriction_start_um",
                f"must be >= 0, got {self.constriction_start_um}")
        end = self.constriction_start_um + self.constriction_length_um
        require(end < self.width * px, "constriction_length_um",
                f"constriction ends at {end:g} µm, outside the ROI "
                f"({self.width} px x {px} µm = {self.width * px:g} µm)")
        for name in ("drop_rate", "failed_rate", "doublet_fraction", "stuck_fraction"):
            require(0 <= getattr(self, name) <= 0.5, name, f"must be in [0, 0.5], got {getattr(self, name)}")
        require(0 <= self.lane_spread <= 1, "lane_spread", f"must be in [0, 1], got {self.lane_spread}")
        require(self.id_bits == 0 or 8 <= self.id_bits <= 62, "id_bits", f"must be 0 or in [8, 62], got {self.id_bits}")
        lo, hi = self.debris_diameter_um
        require(0 < lo <= hi < self.constriction_gap_um, "debris_diameter_um",
                f"must be 0 < min <= max < constriction_gap_um ({self.constriction_gap_um}), "
                f"got {list(self.debris_diameter_um)}")
        lo, hi = self.stuck_ms
        require(0 <= lo <= hi, "stuck_ms", f"must be 0 <= min <= max, got {list(self.stuck_ms)}")
        require(len(self.classes) >= 1, "classes", "at least one cell class is needed")
        names = [c.name for c in self.classes]
        require(len(set(names)) == len(names), "classes", f"class names must be unique, got {names}")
        require(sum(c.fraction for c in self.classes) > 0, "classes", "the class fractions add up to 0")
        for i, c in enumerate(self.classes):
            require(c.diameter_um < 0.9 * self.channel_width_um, f"classes[{i}].diameter_um",
                    f"a {c.diameter_um} µm cell does not fit a {self.channel_width_um} µm channel")
        upstream = self.constriction_start_um
        require(upstream >= max(c.diameter_um for c in self.classes), "constriction_start_um",
                f"leaves {upstream:g} µm of channel upstream: cells "
                f"({max(c.diameter_um for c in self.classes):g} µm) are never seen whole before they squeeze")

    @property
    def frame_count(self) -> int:
        """Frames of a finite run (0 when endless)."""
        return int(round(self.duration_s * self.fps)) if self.duration_s > 0 else 0


@dataclass(frozen=True, slots=True)
class ChannelLayout:
    """The true channel geometry in ROI pixels (pixel centres at integer coordinates)."""

    constriction_x0: float
    constriction_x1: float
    channel_y0: float  # inner edge of the upper wall in the wide channel
    channel_y1: float
    gap_y0: float  # inner edges of the walls in the constriction
    gap_y1: float
    center_y: float


@dataclass(frozen=True, slots=True)
class TruthRecord:
    """The true values of one simulated object (see the module docstring for the definitions).
    NaN where a value does not apply (DI of a doublet, passage of an object that never gets there)."""

    id: int
    kind: str  # "cell", "doublet" or "debris"
    cls: str  # class name; "a+b" for a doublet, "debris"
    birth_ms: float  # the object's front entered the view
    entry_ms: float
    exit_ms: float
    transit_ms: float
    v_max_mm_s: float
    v_before_mm_s: float  # speed upstream
    di_max: float
    di_rest: float
    dir_per_ms: float
    relax_ms: float
    diameter_um: float
    major_um: float  # semi-axes a, b of the rendered ellipse at maximum DI
    minor_um: float
    y_um: float  # centroid y upstream (lane)
    stuck_ms: float  # time stuck at the constriction mouth (0: never)
    queued_ms: float  # time lost behind the object ahead while squeezing (it slows transit, v_max)
    first_frame: int  # first and last frame index with the object (partly) in view
    last_frame: int
    # speed downstream of the constriction once the object has slowed down past the exit (over
    # about its radius): when it reaches a point D µm past the exit, exit_ms + D / v_after_mm_s
    # to within that stretch's ~1%. NaN in truth files written before it existed
    v_after_mm_s: float = math.nan


_TRUTH_FIELDS = [f.name for f in dataclasses.fields(TruthRecord)]
#: how the truth CSV's header begins (an existing file is replaced only if it does: an earlier
#: truth; its first columns only, so a truth written before a column was added is one too)
TRUTH_HEADER = ",".join(_TRUTH_FIELDS[:4])
_TRUTH_OPTIONAL = {"v_after_mm_s"}  # added later: older truth files read as NaN


def write_truth_csv(truth: list[TruthRecord], path: str | os.PathLike) -> None:
    """One row per object; NaN written as an empty cell."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(_TRUTH_FIELDS)
        for t in truth:
            row = []
            for name in _TRUTH_FIELDS:
                v = getattr(t, name)
                if isinstance(v, float):
                    row.append("" if math.isnan(v) else f"{v:.9g}")
                else:
                    row.append(v)
            w.writerow(row)


def read_truth_csv(path: str | os.PathLike) -> list[TruthRecord]:
    """Read a file written by :func:`write_truth_csv`."""
    types = {f.name: f.type for f in dataclasses.fields(TruthRecord)}
    out = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            r = csv.DictReader(fh)
            missing = set(_TRUTH_FIELDS) - set(r.fieldnames or ()) - _TRUTH_OPTIONAL
            if missing:
                raise DataFormatError(f"{path}: not a truth file, missing columns {sorted(missing)}")
            for line, row in enumerate(r, start=2):
                kw = {}
                for name in _TRUTH_FIELDS:
                    v = row.get(name, "")
                    tp = types[name]
                    try:
                        kw[name] = (int(v) if tp == "int" else v if tp == "str"
                                    else (math.nan if v == "" else float(v)))
                    except ValueError:
                        raise DataFormatError(f"{path}, line {line}: bad {name} {v!r}") from None
                out.append(TruthRecord(**kw))
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such truth file") from None
    return out


# -- physics ------------------------------------------------------------------------------------

def _k(di):
    """a/R for a shape of deformation index ``di`` (area conserved): sqrt((1+DI)/(1-DI))."""
    return np.sqrt((1.0 + di) / (1.0 - di))


@dataclass
class _Sprite:
    start: int  # frame index of traj[0]
    traj: np.ndarray  # float64[n, N_T]
    tex: np.ndarray  # float32[_TEX, _TEX]
    rim: float
    rim_w: float

    @property
    def end(self) -> int:  # last frame index
        return self.start + len(self.traj) - 1


@dataclass
class _Object:
    truth: TruthRecord
    sprites: list[_Sprite]
    first: int
    last: int


@dataclass
class _Lane:
    """The previous object in the single-file lane (what the next one must stay behind)."""

    x: np.ndarray
    t: np.ndarray
    back_px: float  # rest distance from its centre to its rear


class _Scene:
    """Generates objects (trajectories, appearance, truth) in time windows, deterministically."""

    def __init__(self, s: SyntheticSettings):
        self.s = s
        px = s.pixel_size_um
        self.px = px
        self.fps = s.fps
        self.frame_ms = 1000.0 / s.fps
        self.W, self.H = s.width, s.height
        self.yc = (s.height - 1) / 2 + s.channel_offset_um / px
        self.half_w = s.channel_width_um / 2 / px
        self.half_g = s.constriction_gap_um / 2 / px
        self.x0 = s.constriction_start_um / px - 0.5  # pixel c covers [c - 0.5, c + 0.5]
        self.x1 = self.x0 + s.constriction_length_um / px
        self.ramp = s.entry_ramp_um / px
        self.v_down = s.exit_speed_mm_s / px  # mm/s = µm/ms -> px/ms
        self.v_up_mean = s.flow_speed_mm_s / px
        self.rng = np.random.default_rng([s.seed, 0x5E11])
        fr = np.array([c.fraction for c in s.classes], float)
        self.class_cum = np.cumsum(fr / fr.sum())
        g = np.linspace(-1.0, 1.0, _TEX)
        self.tex_g = g
        self.tex_u, self.tex_v = np.meshgrid(g, g)  # map[row (v), col (u)]
        self.tex_inside = self.tex_u ** 2 + self.tex_v ** 2 <= 1.0
        self.gen_until_ms = 0.0
        self.next_cell_ms = self._exp(s.cells_per_second)
        self.next_debris_ms = self._exp(s.debris_per_second)
        self.lane: _Lane | None = None
        self.n_objects = 0
        self.end_ms = s.duration_s * 1000.0 if s.duration_s > 0 else math.inf

    def layout(self) -> ChannelLayout:
        return ChannelLayout(self.x0, self.x1, self.yc - self.half_w, self.yc + self.half_w,
                             self.yc - self.half_g, self.yc + self.half_g, self.yc)

    def _exp(self, rate: float) -> float:
        return float(self.rng.exponential(1000.0 / rate)) if rate > 0 else math.inf

    def generate_window(self) -> list[_Object]:
        """Objects born in the next window [gen_until_ms, +_WINDOW_S), sorted by first frame."""
        t_lo = self.gen_until_ms
        t_hi = t_lo + _WINDOW_S * 1000.0
        self.gen_until_ms = t_hi
        births: list[tuple[float, str]] = []
        while self.next_cell_ms < t_hi:
            births.append((self.next_cell_ms, "cell"))
            self.next_cell_ms += self._exp(self.s.cells_per_second)
        while self.next_debris_ms < t_hi:
            births.append((self.next_debris_ms, "debris"))
            self.next_debris_ms += self._exp(self.s.debris_per_second)
        births.sort()
        out = []
        for t, kind in births:
            if t >= self.end_ms:
                continue
            if kind == "debris":
                obj = self._debris(t)
            elif self.rng.random() < self.s.doublet_fraction:
                obj = self._doublet(t)
            else:
                obj = self._cell(t)
            if obj is not None:
                out.append(obj)
        out.sort(key=lambda o: o.first)
        return out

    # -- per-object parameters ---------------------------------------------------------------------
    def _class(self) -> ClassSpec:
        i = int(np.searchsorted(self.class_cum, self.rng.random(), side="right"))
        return self.s.classes[min(i, len(self.s.classes) - 1)]

    def _mech(self, c: ClassSpec) -> dict:
        s = self.s
        rng = self.rng
        # below 6 µm a cell would pass for debris; above 0.9 x the channel it would not fit
        d_um = min(max(float(rng.normal(c.diameter_um, c.diameter_sd_um)), 6.0), 0.9 * s.channel_width_um)
        di = min(max(float(rng.normal(c.di, c.di_sd)), c.rest_di + 0.02, 0.05), 0.90)
        # more deformable cells slip through a little faster: couples transit time and DI as in
        # real constriction assays (without making one redundant)
        v_c = (s.constriction_speed_mm_s * c.speed_factor * math.exp(rng.normal(0.0, s.speed_sd))
               * (1.0 + 0.8 * (di - c.di)))
        v_up = s.flow_speed_mm_s * math.exp(rng.normal(0.0, 0.05))
        relax = c.relax_ms * math.exp(rng.normal(0.0, 0.25))
        v_c = max(v_c, 0.2 * s.constriction_speed_mm_s)
        return dict(R=d_um / 2 / self.px, di=di, rest=c.rest_di, v_c=v_c / self.px, v_up=v_up / self.px, relax=relax,
                    cls=c)

    def _lane_y(self, R: float) -> float:
        free = max(0.0, self.half_w - R - 1.0)
        return self.yc + float(self.rng.uniform(-1.0, 1.0)) * self.s.lane_spread * free

    # -- trajectory in time: t(x) on a position grid ------------------------------------------------
    def _profile(self, x: np.ndarray, R: float, v_up: float, v_c: float) -> tuple[np.ndarray, np.ndarray]:
        """Squeeze progress s(x) (0 at rest, 1 on the plateau) and speed v(x) in px/ms."""
        s = np.empty_like(x)
        v = np.empty_like(x)
        v_down = self.v_down * v_up / self.v_up_mean  # per-object spread carried downstream
        rk.squeeze_profile(x, self.x0 - R, max(R + self.ramp, 1e-6), self.x1, max(R, 1.0), v_up, v_c, v_down, s, v)
        return s, v

    def _time_grid(self, birth_ms: float, x: np.ndarray, v: np.ndarray, stuck_at: float, stuck_ms: float,
                   front_px: np.ndarray, queue: bool) -> tuple[np.ndarray, np.ndarray]:
        """Times at the grid positions ``x`` and the part of them spent queueing behind the
        object ahead."""
        t = np.empty_like(x)
        rk.time_grid(x, v, birth_ms, t)
        if stuck_ms > 0:
            t[x > stuck_at] += stuck_ms
        u = np.zeros_like(t)
        if queue and self.lane is not None:
            # single file: the front of this object stays min_gap behind the rear of the one ahead
            ahead = x + front_px + self.lane.back_px + self.s.min_gap_um / self.px
            c = np.interp(ahead, self.lane.x, self.lane.t, left=-np.inf, right=-np.inf)
            u = np.maximum.accumulate(np.maximum(c - t, 0.0))
            t = t + u
        return t, u

    def _frames(self, x: np.ndarray, t: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """Frame indices covered by the trajectory, their times, and the centre x at each."""
        f0 = int(math.ceil(t[0] / self.frame_ms - 1e-9))
        f1 = int(math.floor(t[-1] / self.frame_ms + 1e-9))
        idx = np.arange(f0, f1 + 1)
        tf = idx * self.frame_ms
        return f0, tf, np.interp(tf, t, x)

    def _x_grid(self, R_back: float, R_front: float) -> np.ndarray:
        a_max = R_front * 3.0
        return np.arange(-R_front - 2.0, self.W + a_max + R_back + 2.0, _DX)

    def _passage_truth(self, x: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
        entry = float(np.interp(self.x0, x, t))
        exit_ = float(np.interp(self.x1, x, t))
        v_max = rk.max_speed_between(x, t, self.x0, self.x1) * self.px
        return entry, exit_, v_max

    def _dir_truth(self, tf: np.ndarray, xf: np.ndarray, di: np.ndarray) -> float:
        before = np.flatnonzero(xf < self.x0)
        after = np.flatnonzero(xf >= self.x1 + self.s.truth_dir_after_um / self.px)
        if before.size == 0:
            return math.nan
        i0 = int(before[-1])
        i1 = int(after[0]) if after.size else len(tf) - 1
        if i1 <= i0:
            return math.nan
        return float(np.sum(np.abs(np.diff(di[i0:i1 + 1]))) / (tf[i1] - tf[i0]))

    def _blur(self, tf: np.ndarray, xf: np.ndarray) -> np.ndarray:
        """Distance (px) moved during the exposure: speed from the step to the next frame."""
        if self.s.exposure_us == 0 or len(xf) < 2:
            return np.zeros_like(xf)
        step = np.empty_like(xf)
        np.subtract(xf[1:], xf[:-1], out=step[:-1])
        step[-1] = (2 * xf[-1] - xf[-2]) - xf[-1]
        return np.abs(step, out=step) * (self.s.exposure_us * 1e-3 / self.frame_ms)

    def _y(self, x: np.ndarray, y_lane: float, y_gap: float, R: float) -> np.ndarray:
        funnel = 10.0 / self.px
        z = np.empty_like(x)
        rk.smoothstep_ramp(x, self.x0 - R - funnel, funnel, z)
        return y_lane + (y_gap - y_lane) * z

    # -- objects -------------------------------------------------------------------------------------
    def _new_id(self) -> int:
        self.n_objects += 1
        return self.n_objects

    def _cell(self, birth_ms: float) -> _Object:
        c = self._class()
        m = self._mech(c)
        R, v_up, v_c = m["R"], m["v_up"], m["v_c"]
        stuck = 0.0
        if self.s.stuck_fraction > 0 and self.rng.random() < self.s.stuck_fraction:
            stuck = float(self.rng.uniform(*self.s.stuck_ms))
        y_lane = self._lane_y(R)
        appearance = self._appearance(c, R)
        x = self._x_grid(R, R)
        sq, v = self._profile(x, R, v_up, v_c)
        di_pos, front = np.empty_like(x), np.empty_like(x)
        rk.squeezed_shape(sq, m["rest"], m["di"] - m["rest"], R, di_pos, front)
        stuck_at = self.x0 - 0.5 * R
        t, u = self._time_grid(birth_ms, x, v, stuck_at, stuck, front, queue=True)
        queued = float(np.interp(self.x1, x, u) - np.interp(self.x0 - R, x, u))
        self.lane = _Lane(x, t, R)
        entry, exit_, v_max = self._passage_truth(x, t)
        f0, tf, xf = self._frames(x, t)
        s_f, _ = self._profile(xf, R, v_up, v_c)
        di_f = m["rest"] + (m["di"] - m["rest"]) * s_f
        post = xf > self.x1
        di_f[post] = m["rest"] + (m["di"] - m["rest"]) * np.exp(-(tf[post] - exit_) / m["relax"])
        traj = np.empty((len(tf), rk.N_T))
        traj[:, 0] = xf
        traj[:, 1] = self._y(xf, y_lane, self.yc, R)
        rk.semi_axes(di_f, R, traj)
        traj[:, 4] = self._blur(tf, xf)
        di_max = float(np.max(di_pos[x <= self.x1]))
        truth = TruthRecord(
            id=self._new_id(), kind="cell", cls=c.name, birth_ms=float(t[0]), entry_ms=entry, exit_ms=exit_,
            transit_ms=exit_ - entry, v_max_mm_s=v_max, v_before_mm_s=v_up * self.px, di_max=di_max,
            di_rest=m["rest"], dir_per_ms=self._dir_truth(tf, xf, di_f), relax_ms=m["relax"],
            diameter_um=2 * R * self.px,
            major_um=float(R * _k(di_max) * self.px), minor_um=float(R / _k(di_max) * self.px),
            y_um=y_lane * self.px, stuck_ms=stuck, queued_ms=queued, first_frame=f0, last_frame=f0 + len(tf) - 1,
            v_after_mm_s=self.v_down * v_up / self.v_up_mean * self.px)
        sp = _Sprite(f0, traj, *appearance)
        return _Object(truth, [sp], sp.start, sp.end)

    def _doublet(self, birth_ms: float) -> _Object:
        cl, cf = self._class(), self._class()
        ml, mf = self._mech(cl), self._mech(cf)
        Rl, Rf = ml["R"], mf["R"]
        v_up = min(ml["v_up"], mf["v_up"])
        v_c = 0.9 * min(ml["v_c"], mf["v_c"])  # two cells squeeze through slower than either alone
        y_lane = self._lane_y(max(Rl, Rf))
        touch = 0.95  # slight overlap: touching cells look like one blob with a waist
        x = self._x_grid(Rl + 2 * Rf, Rl)
        sq, v = self._profile(x, Rl, v_up, v_c)
        front = np.empty_like(x)
        rk.squeezed_shape(sq, ml["rest"], ml["di"] - ml["rest"], Rl, np.empty_like(x), front)
        t, u = self._time_grid(birth_ms, x, v, 0.0, 0.0, front, queue=True)
        queued = float(np.interp(self.x1, x, u) - np.interp(self.x0 - Rl, x, u))

        def member(xc, m, R):
            s_, _ = self._profile(xc, R, v_up, v_c)
            di = m["rest"] + (m["di"] - m["rest"]) * s_
            post = xc > self.x1
            di[post] = m["rest"] + (m["di"] - m["rest"]) * np.exp(-(xc[post] - self.x1) / (self.v_down * m["relax"]))
            return di

        def positions(xl):
            di_l = member(xl, ml, Rl)
            al = Rl * _k(di_l)
            xf = xl - touch * (al + Rf)
            for _ in range(2):
                xf = xl - touch * (al + Rf * _k(member(xf, mf, Rf)))
            return xf, di_l, member(xf, mf, Rf)

        # truth from the area-weighted centroid of the pair, sampled finely
        ts = np.arange(t[0], t[-1], self.frame_ms / _OVERSAMPLE)
        if len(ts) < 3:  # frames so long (a few fps) that the pair passes within one: sample the passage itself
            ts = np.linspace(t[0], t[-1], 64)
        xls = np.interp(ts, t, x)
        xfs, _, _ = positions(xls)
        wl, wf = Rl * Rl, Rf * Rf
        xu = np.maximum.accumulate((wl * xls + wf * xfs) / (wl + wf))
        entry = float(np.interp(self.x0, xu, ts)) if xu[-1] > self.x0 else math.nan
        exit_ = float(np.interp(self.x1, xu, ts)) if xu[-1] > self.x1 else math.nan
        vu = np.gradient(xu, ts)
        inside = (xu >= self.x0) & (xu <= self.x1)
        v_max = float(vu[inside].max()) * self.px if inside.any() else math.nan
        self.lane = _Lane(x, t, Rl + 2 * Rf)

        f0, tf, xlf = self._frames(x, t)
        xff, di_l, di_ff = positions(xlf)
        yl = self._y(xlf, y_lane, self.yc, Rl)
        yf = self._y(xff, y_lane, self.yc, Rf)
        sprites = []
        for xc, yy, di, R, c in ((xlf, yl, di_l, Rl, cl), (xff, yf, di_ff, Rf, cf)):
            traj = np.empty((len(tf), rk.N_T))
            traj[:, 0] = xc
            traj[:, 1] = yy
            rk.semi_axes(di, R, traj)
            traj[:, 4] = self._blur(tf, xc)
            sprites.append(_Sprite(f0, traj, *self._appearance(c, R)))
        truth = TruthRecord(
            id=self._new_id(), kind="doublet", cls=f"{cl.name}+{cf.name}", birth_ms=float(t[0]), entry_ms=entry,
            exit_ms=exit_, transit_ms=exit_ - entry, v_max_mm_s=v_max, v_before_mm_s=v_up * self.px, di_max=math.nan,
            di_rest=math.nan, dir_per_ms=math.nan, relax_ms=math.nan, diameter_um=math.nan, major_um=math.nan,
            minor_um=math.nan, y_um=y_lane * self.px,
            stuck_ms=0.0, queued_ms=queued, first_frame=f0, last_frame=f0 + len(tf) - 1,
            v_after_mm_s=self.v_down * v_up / self.v_up_mean * self.px)
        return _Object(truth, sprites, f0, f0 + len(tf) - 1)

    def _debris(self, birth_ms: float) -> _Object:
        s = self.s
        rng = self.rng
        d_um = float(rng.uniform(*s.debris_diameter_um))
        R = d_um / 2 / self.px
        v_up = 1.1 * s.flow_speed_mm_s / self.px
        v_c = 1.5 * s.constriction_speed_mm_s / self.px  # small particles ride the fast fluid
        y_lane = self.yc + float(rng.uniform(-1, 1)) * max(0.0, self.half_w - R - 1.0)
        y_gap = self.yc + float(rng.uniform(-1, 1)) * 0.8 * max(0.0, self.half_g - R)
        x = self._x_grid(R, R)
        _, v = self._profile(x, R, v_up, v_c)
        t, _ = self._time_grid(birth_ms, x, v, 0.0, 0.0, np.zeros_like(x), queue=False)
        entry, exit_, v_max = self._passage_truth(x, t)
        f0, tf, xf = self._frames(x, t)
        traj = np.empty((len(tf), rk.N_T))
        traj[:, 0] = xf
        traj[:, 1] = self._y(xf, y_lane, y_gap, R)
        traj[:, 2] = R
        traj[:, 3] = R
        traj[:, 4] = self._blur(tf, xf)
        tex = np.full((_TEX, _TEX), float(rng.uniform(30.0, 60.0)), np.float32)
        truth = TruthRecord(
            id=self._new_id(), kind="debris", cls="debris", birth_ms=float(t[0]), entry_ms=entry, exit_ms=exit_,
            transit_ms=exit_ - entry, v_max_mm_s=v_max, v_before_mm_s=v_up * self.px, di_max=0.0, di_rest=0.0,
            dir_per_ms=0.0, relax_ms=math.nan, diameter_um=d_um, major_um=d_um / 2, minor_um=d_um / 2,
            y_um=y_lane * self.px, stuck_ms=0.0,
            queued_ms=0.0, first_frame=f0, last_frame=f0 + len(tf) - 1,
            v_after_mm_s=self.v_down * v_up / self.v_up_mean * self.px)
        sp = _Sprite(f0, traj, tex, 0.0, 1.0)
        return _Object(truth, [sp], sp.start, sp.end)

    # -- appearance ----------------------------------------------------------------------------------
    def _appearance(self, c: ClassSpec, R: float) -> tuple[np.ndarray, float, float]:
        """Darkness map over normalised ellipse coordinates, rim darkness and rim width (px)."""
        rng = self.rng
        sd = c.appearance_sd

        def vary(v: float) -> float:
            return v * math.exp(rng.normal(0.0, sd)) if sd > 0 else v

        R_um = R * self.px
        g, inside = self.tex_g, self.tex_inside
        body = vary(c.darkness)
        # the random draws here, in their fixed order; the map is composed in one kernel pass
        field_, f_mean, f_sd, f_contrast = _EMPTY2, 0.0, 0.0, 0.0
        # smooth cytoplasm texture: a sum of Gaussian bumps at the texture's correlation length
        # (separable: one small matrix product instead of a 2-D exponential per bump)
        if c.texture_contrast > 0:
            sig = max(vary(c.texture_scale_um) / R_um, 0.05)
            k = min(max(int(3.0 / (sig * sig)), 8), 160)
            cu, cv = rng.uniform(-1, 1, (2, k))
            amp = rng.normal(0, 1, k)
            field_ = _bumps(g, cu, cv, amp, sig)
            fin = field_[inside]
            sdv = fin.std()
            if sdv > 0:
                f_mean, f_sd, f_contrast = float(fin.mean()), float(sdv), vary(c.texture_contrast)
        # nucleus: one or more overlapping soft discs (soft edge ~0.1 of the radius wide)
        dv2 = du2 = _EMPTY2
        rad = nuc_contrast = 0.0
        if c.nucleus_fraction > 0 and c.nucleus_contrast != 0:
            nr = min(vary(c.nucleus_fraction), 0.85)
            lobes = 1 + int(rng.poisson(c.nucleus_lobes - 1.0)) if c.nucleus_lobes > 1 else 1
            lobes = min(lobes, 5)
            off = rng.uniform(0, 0.3 * (1 - nr))
            ang = rng.uniform(0, 2 * math.pi)
            nu, nv = off * math.cos(ang), off * math.sin(ang)
            rad = nr if lobes == 1 else nr / math.sqrt(lobes) * 1.25
            phi = rng.uniform(0, 2 * math.pi)
            ca = np.empty(lobes)
            cb = np.empty(lobes)
            for j in range(lobes):
                ca[j] = nu + (0.0 if lobes == 1 else (nr - rad) * math.cos(phi + 2 * math.pi * j / lobes))
                cb[j] = nv + (0.0 if lobes == 1 else (nr - rad) * math.sin(phi + 2 * math.pi * j / lobes))
            dv2 = (g[None, :] - cb[:, None]) ** 2
            du2 = (g[None, :] - ca[:, None]) ** 2
            nuc_contrast = math.copysign(vary(abs(c.nucleus_contrast)), c.nucleus_contrast)
        # granules: small dark dots, kept off the boundary
        gran = _EMPTY2
        if c.granules > 0 and c.granule_contrast > 0:
            n = int(rng.poisson(vary(c.granules)))
            if n:
                gs = max(0.35 / R_um, 0.02)
                rr = 0.8 * np.sqrt(rng.uniform(0, 1, n))
                aa = rng.uniform(0, 2 * math.pi, n)
                amp = c.granule_contrast * np.exp(rng.normal(0.0, sd, n))
                gran = _bumps(g, rr * np.cos(aa), rr * np.sin(aa), amp, gs)
        tex = np.empty((_TEX, _TEX), np.float32)
        # never lighter than a third of the body: a cell shows no holes to the segmenter
        rk.assemble_texture(tex, float(body), field_, f_mean, f_sd, f_contrast, dv2, du2, float(rad), nuc_contrast,
                            gran, body / 3.0)
        return tex, vary(c.edge_darkness) if c.edge_darkness > 0 else 0.0, max(c.edge_width_um / self.px, 0.3)


def _bumps(g: np.ndarray, cu: np.ndarray, cv: np.ndarray, amp: np.ndarray, sig: float) -> np.ndarray:
    """Σ amp·exp(-((u-cu)²+(v-cv)²)/2σ²) on the grid g×g, as map[v, u]."""
    two_sig2 = 2 * sig * sig
    gu = np.empty((len(cu), len(g)))  # [k, u]
    gv = np.empty((len(cv), len(g)))  # [k, v]
    rk.gauss_exponents(g, cu, two_sig2, gu)
    rk.gauss_exponents(g, cv, two_sig2, gv)
    np.exp(gu, out=gu)
    np.exp(gv, out=gv)
    return (gv * amp[:, None]).T @ gu


# -- static background --------------------------------------------------------------------------

def _box_sdf(px: np.ndarray, py: np.ndarray, cx: float, cy: float, hx: float, hy: float) -> np.ndarray:
    qx = np.abs(px - cx) - hx
    qy = np.abs(py - cy) - hy
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def render_background(s: SyntheticSettings) -> np.ndarray:
    """The empty channel as float64[H, W] grey levels (4x4 supersampled walls and edge lines)."""
    sc = _Scene(s)  # for its geometry
    H, W = s.height, s.width
    ss = 4
    off = (np.arange(ss) + 0.5) / ss - 0.5
    ys = (np.arange(H)[:, None] + off[None, :]).ravel()
    xs = (np.arange(W)[:, None] + off[None, :]).ravel()
    X, Y = np.meshgrid(xs, ys)
    big = 1e6
    up = _box_sdf(X, Y, sc.x0 - big, sc.yc, big, sc.half_w)
    down = _box_sdf(X, Y, sc.x1 + big, sc.yc, big, sc.half_w)
    gap = _box_sdf(X, Y, 0.5 * (sc.x0 + sc.x1), sc.yc, big, sc.half_g)
    sdf = np.minimum(np.minimum(up, down), gap)  # < 0 in the lumen
    line = np.abs(sdf) < 0.5 * s.edge_line_um / s.pixel_size_um
    img = np.where(sdf < 0, s.lumen_level, s.wall_level)
    img = np.where(line, s.edge_level, img)
    img = img.reshape(H, ss, W, ss).mean(axis=(1, 3))
    gx = (np.arange(W) / max(W - 1, 1) - 0.5)[None, :]
    gy = ((np.arange(H) - (H - 1) / 2) / (H / 2))[:, None]
    img = img * (1.0 + s.illumination_gradient * gx - 0.5 * s.illumination_gradient * gy * gy)
    if s.fixed_pattern_sd > 0:
        img = img + np.random.default_rng([s.seed, 0xF1ED]).normal(0, s.fixed_pattern_sd, img.shape)
    return img


# -- the camera ---------------------------------------------------------------------------------

class SyntheticCamera(Camera):
    """A simulated microfluidic channel camera that knows the truth about every object.

    ``truth`` holds a :class:`TruthRecord` for every object that has come into view so far (with
    the values of its whole passage, even where that ends after the last frame taken).
    """

    backend = "synthetic"
    Settings = SyntheticSettings

    @property
    def paced(self) -> bool:
        return bool(self.settings.realtime)

    def _new_truth(self) -> list[TruthRecord] | collections.deque:
        # an endless run (a demo left on all day) keeps the newest records only: ~500 bytes each
        return [] if self.settings.duration_s > 0 else collections.deque(maxlen=TRUTH_KEPT_ENDLESS)

    def __init__(self, settings: SyntheticSettings | dict | None = None, *, kernels: str = "numba",
                 flow_direction: str = "left-to-right"):
        if flow_direction != "left-to-right":
            raise ConfigError("camera.flow_direction", "the synthetic camera's cells flow left to right: leave it "
                              f"at left-to-right (got {flow_direction!r})")
        super().__init__(settings)
        if kernels not in ("numba", "python"):
            raise ConfigError("camera.synthetic.kernels", f"must be 'numba' or 'python', got {kernels!r}")
        # "python" runs the same kernel as plain Python (numba's py_func): for tests and debugging
        self._kernel = rk.render_frame.py_func if kernels == "python" else rk.render_frame
        self.truth: list[TruthRecord] | collections.deque = self._new_truth()
        self._scene: _Scene | None = None
        self._next_idx = 0

    # -- Camera hooks ------------------------------------------------------------------------------
    def _do_open(self) -> CameraInfo:
        s = self.settings
        self._reset()
        if s.pregenerate:
            sc = self._scene
            while sc.gen_until_ms < sc.end_ms:
                self._pending.extend(sc.generate_window())
            self._pending.sort(key=lambda o: o.first)  # stable: the order generating on the way gives
        # compile (or load from the cache) before the first frame, not during it
        out = np.empty((s.height, s.width), np.uint8)
        rk.render_frame(out, self._bg, self._noise, 0, 1.0, self._sp_i, self._sp_f, 0, self._traj, self._tex, 0)
        rk.compile_object_kernels()
        if realtime.AVAILABLE:  # the grab loop's kernel, on an empty run
            one = np.zeros(1, np.int64)
            st, offsets, gains = np.zeros(1, np.int8), one.copy(), np.ones(1)
            rk.render_run(out[None], one, one.copy(), one.copy(), one.copy(), self._bg, self._noise, st, offsets, gains,
                          0, self._sp_i, self._sp_f, 0, self._traj, self._tex, 0, 0, True, 0, 1e5, 0, s.max_lag_frames,
                          0, 0, self._ts, self._res.copy())
        mod = (1 << s.id_bits) if s.id_bits else 0
        return CameraInfo(backend=self.backend, model="synthetic microfluidic channel", serial=f"seed-{s.seed}",
                          width=s.width, height=s.height, dtype="uint8", bit_depth=8, fps=s.fps,
                          pixel_size_um=s.pixel_size_um, camera_clock=True, id_modulus=mod,
                          frame_count=s.frame_count if s.duration_s > 0 else -1,
                          clock_rate=1.0 if s.realtime else 0.0)

    def _do_start(self) -> None:
        s = self.settings
        self._t0_host = time.monotonic_ns() - int(self._next_idx * 1e9 / s.fps)
        self._n_total = s.frame_count
        self._period_ns = 1e9 / s.fps

    def due_host_ns(self, timestamp_ns: int) -> int:
        """The host monotonic time at which a real-time run's frame of camera time ``timestamp_ns``
        was due: its arrival minus the delivery's lateness, the truth a camera→host clock map
        estimates."""
        return self._t0_host + int(timestamp_ns)

    def _do_close(self) -> None:
        self._scene = None

    def _do_grab(self, out: np.ndarray, timeout_s: float) -> GrabResult | None:
        s = self.settings
        period_ns = self._period_ns
        deadline = time.monotonic_ns() + int(timeout_s * 1e9) if s.realtime else 0
        n_total = self._n_total
        while True:
            idx = self._next_idx
            if n_total and idx >= n_total:
                self.exhausted = True
                return None
            if s.realtime:
                now = time.monotonic_ns()
                due = self._t0_host + int(idx * period_ns)
                if due > now:
                    if due > deadline:
                        time.sleep(max(0.0, (deadline - now) * 1e-9))
                        return None
                    time.sleep((due - now) * 1e-9)
                elif now - due > s.max_lag_frames * period_ns:
                    # the camera's buffers overflowed while the consumer was away: frames are lost
                    self._next_idx = int((now - self._t0_host) / period_ns) - s.max_lag_frames // 2
                    continue
            self._next_idx = idx + 1
            status = self._frame_status(idx)
            if status == 1:  # dropped on the camera side: only the gap in frame ids tells
                continue
            if status == 2:
                self.failed_buffers += 1
                continue
            self._render(out, idx)
            fid = idx & ((1 << s.id_bits) - 1) if s.id_bits else idx
            return GrabResult(fid, int(round(idx * period_ns)))

    def _do_grab_many(self, ring: FrameRing, max_frames: int, timeout_s: float) -> int | None:
        """Frames in runs rendered and published by one kernel without the GIL (frame by frame
        the grab loop's Python cost about doubles the camera's, and every frame takes the GIL).
        The same frames, ids and timestamps as :meth:`grab_into`, frame for frame."""
        if self._kernel is not rk.render_frame or not realtime.AVAILABLE:
            return None
        if self.state is not CameraState.ACQUIRING:
            raise StateError(f"{self.backend} camera is not acquiring")
        s = self.settings
        period_ns = self._period_ns
        deadline = time.monotonic_ns() + int(timeout_s * 1e9) if s.realtime else 0
        id_mask = (1 << s.id_bits) - 1 if s.id_bits else 0
        res = self._res
        total = 0
        while total < max_frames:
            idx = self._next_idx
            if self._n_total and idx >= self._n_total:
                self.exhausted = True
                break
            self._frame_status(idx)
            if idx >= self._next_change:
                self._advance(idx)
            # a run ends where the scene changes (objects enter or leave), the block of per-frame
            # values ends, or the source does
            stop_at = min(idx + max_frames - total, self._next_change, self._chunk0 + _CHUNK)
            if self._n_total:
                stop_at = min(stop_at, self._n_total)
            st, offsets, gains = self._block
            runs.start_run(res, ring)
            rk.render_run(ring.images, ring.frame_ids, ring.timestamps_ns, ring.host_ns, ring._seq, self._bg, self._noise,
                          st, offsets, gains, self._chunk0, self._sp_i, self._sp_f, self._n_sp, self._traj, self._tex,
                          idx, stop_at, bool(s.realtime), self._t0_host, period_ns, deadline, s.max_lag_frames, id_mask,
                          ring.id_modulus, self._ts, res)
            n = runs.book_run(res, ring, self)
            self._next_idx = int(res[runs.R_NEXT])
            total += n
            if res[runs.R_STOP] == runs.STOP_TIMEOUT:
                break
        if total == 0 and not self.exhausted:
            self.timeouts += 1
        return total

    def apply(self, changes: dict) -> dict:
        """Change the arrival rates, noise, flicker, lamp, faults or pacing of an open camera."""
        live = {"cells_per_second", "debris_per_second", "noise_sd", "flicker", "lamp", "drop_rate", "failed_rate",
                "realtime", "doublet_fraction", "stuck_fraction"}
        for k in changes:
            if k not in live:
                raise ConfigError(f"camera.synthetic.{k}",
                                  f"cannot be changed on an open camera (live: {', '.join(sorted(live))})")
            if self.settings.pregenerate and k in _SCENE_KEYS:
                raise ConfigError(f"camera.synthetic.{k}", "cannot be changed: the scene was generated when the "
                                  "camera opened (pregenerate = true)")
        # through the TOML path, so that wrong types are refused like in a configuration file
        new = from_mapping(SyntheticSettings, {**to_mapping(self.settings), **changes}, "camera.synthetic")
        old = self.settings
        self.settings = new
        if self._scene is not None:
            self._scene.s = new
        if new.noise_sd != old.noise_sd:
            self._noise = self._make_noise(new)
        self._chunk = -1  # per-frame values follow the new settings from the next frame on
        if new.realtime and not old.realtime and self._scene is not None:
            self._do_start()  # pace from now on, not from when the run started
        return {k: getattr(new, k) for k in changes}

    # -- what the simulation knows -----------------------------------------------------------------
    @property
    def layout(self) -> ChannelLayout:
        """The true channel geometry in ROI pixels."""
        return _Scene(self.settings).layout()

    @property
    def background(self) -> np.ndarray:
        """The empty channel as the camera sees it without noise (uint8[H, W])."""
        bg = self._bg if hasattr(self, "_bg") else render_background(self.settings)
        return np.clip(np.rint(bg), 0, 255).astype(np.uint8)

    def write_truth_csv(self, path: str | os.PathLike) -> None:
        write_truth_csv(self.truth, path)

    @property
    def frame_index(self) -> int:
        """Index of the next frame the camera will take."""
        return self._next_idx

    # -- internals ----------------------------------------------------------------------------------
    def _reset(self) -> None:
        s = self.settings
        self._scene = _Scene(s)
        self._bg = np.clip(np.rint(render_background(s)), 0, 255).astype(np.int16)
        self._noise = self._make_noise(s)
        self._next_idx = 0
        self._t0_host = time.monotonic_ns()
        self._pending: list[_Object] = []
        self._active: list[_Sprite] = []
        self._next_change = 0
        self._chunk = -1
        self.truth = self._new_truth()
        self.exhausted = False
        self.failed_buffers = 0
        self._sp_i = np.zeros((1, rk.N_SI), np.int64)
        self._sp_f = np.zeros((1, rk.N_SF), np.float64)
        self._traj = np.zeros((1, rk.N_T), np.float64)
        self._tex = np.zeros((1, _TEX, _TEX), np.float32)
        self._n_sp = 0
        self._res = np.zeros(runs.N_R, np.int64)
        self._ts = realtime.scratch()

    def _make_noise(self, s: SyntheticSettings) -> np.ndarray:
        n = _NOISE_LEN + s.width * s.height
        if s.noise_sd <= 0:
            return np.zeros(n, np.int16)
        rng = np.random.default_rng([s.seed, 0x401A])
        return np.rint(rng.normal(0.0, s.noise_sd, n)).astype(np.int16)

    def _frame_status(self, idx: int) -> int:
        c = idx // _CHUNK
        if c != self._chunk:
            s = self.settings
            rng = np.random.default_rng([s.seed, 0xC4A, c])
            u = rng.random(_CHUNK)
            st = np.zeros(_CHUNK, np.int8)
            st[u < s.drop_rate] = 1
            st[(u >= s.drop_rate) & (u < s.drop_rate + s.failed_rate)] = 2
            offsets = rng.integers(0, _NOISE_LEN, _CHUNK)
            t = (c * _CHUNK + np.arange(_CHUNK)) / s.fps
            gains = 1.0 + s.flicker * (0.6 * np.sin(2 * np.pi * 100.0 * t) + 0.4 * rng.uniform(-1, 1, _CHUNK))
            if s.lamp != 1.0:  # (left out at 1: frames stay bit-identical to those models were trained on)
                gains *= s.lamp
            # Python lists: indexing them per frame is cheaper than indexing arrays and converting
            self._status = st.tolist()
            self._offsets = offsets.tolist()
            self._gains = gains.tolist()
            self._block = (st, offsets.astype(np.int64), gains.astype(np.float64))  # for render_run
            self._chunk = c
            self._chunk0 = c * _CHUNK
        return self._status[idx - self._chunk0]

    def _render(self, out: np.ndarray, idx: int) -> None:
        """Draw frame ``idx`` (after :meth:`_frame_status` for it) into ``out``."""
        if idx >= self._next_change:
            self._advance(idx)
        j = idx - self._chunk0
        self._kernel(out, self._bg, self._noise, self._offsets[j], self._gains[j], self._sp_i, self._sp_f, self._n_sp,
                     self._traj, self._tex, idx)

    def _advance(self, idx: int) -> None:
        """Bring the set of objects in view up to frame ``idx`` (per object, not per frame)."""
        sc = self._scene
        t_ms = idx * sc.frame_ms
        while sc.gen_until_ms <= t_ms + _LOOKAHEAD_MS and sc.gen_until_ms < sc.end_ms:
            self._pending.extend(sc.generate_window())
            self._pending.sort(key=lambda o: o.first)
        changed = False
        while self._pending and self._pending[0].first <= idx:
            obj = self._pending.pop(0)
            self.truth.append(obj.truth)
            for sp in obj.sprites:
                if sp.end >= idx:
                    self._active.append(sp)
            changed = True
        keep = [sp for sp in self._active if sp.end >= idx]
        if len(keep) != len(self._active):
            changed = True
            self._active = keep
        if changed:
            self._pack()
        nxt = [sp.end + 1 for sp in self._active]
        if self._pending:
            nxt.append(self._pending[0].first)
        elif sc.gen_until_ms < sc.end_ms:
            nxt.append(int((sc.gen_until_ms - _LOOKAHEAD_MS) / sc.frame_ms))
        self._next_change = max(idx + 1, min(nxt)) if nxt else 1 << 62

    def _pack(self) -> None:
        act = self._active
        n = len(act)
        self._n_sp = n
        if n == 0:
            return
        rows = sum(len(sp.traj) for sp in act)
        sp_i = np.zeros((n, rk.N_SI), np.int64)
        sp_f = np.zeros((n, rk.N_SF), np.float64)
        traj = np.empty((rows, rk.N_T), np.float64)
        tex = np.empty((n, _TEX, _TEX), np.float32)
        r = 0
        for k, sp in enumerate(act):
            m = len(sp.traj)
            sp_i[k] = (sp.start, m, r, k)
            sp_f[k] = (sp.rim, sp.rim_w)
            traj[r:r + m] = sp.traj
            tex[k] = sp.tex
            r += m
        self._sp_i, self._sp_f, self._traj, self._tex = sp_i, sp_f, traj, tex


def simulate_truth(settings: SyntheticSettings) -> list[TruthRecord]:
    """The truth of every object born during ``settings.duration_s`` without rendering a frame
    (the same objects, in the same order, as a camera run with these settings sees)."""
    if settings.duration_s <= 0:
        raise ConfigError("duration_s", "must be > 0 to simulate the truth of a whole run")
    sc = _Scene(settings)
    out: list[_Object] = []
    while sc.gen_until_ms < sc.end_ms:
        out.extend(sc.generate_window())
    out.sort(key=lambda o: o.first)
    return [o.truth for o in out]


def render_frames(settings: SyntheticSettings, n_frames: int) -> tuple[np.ndarray, list[TruthRecord]]:
    """Frames 0..n_frames-1 of a run as uint8[n, H, W] and the truth of every object seen in them.

    For analysis, tests and benchmarks: frame-level faults (drops, failed buffers) and real-time
    pacing are off, so frame i is at i/fps; ``duration_s`` is ignored.
    """
    if n_frames < 0:
        raise ConfigError("n_frames", f"must be >= 0, got {n_frames}")
    s = dataclasses.replace(settings, drop_rate=0.0, failed_rate=0.0, realtime=False, duration_s=0.0)
    frames = np.empty((n_frames, s.height, s.width), np.uint8)
    with SyntheticCamera(s) as cam:
        cam.start()
        for i in range(n_frames):
            cam._frame_status(i)
            cam._render(frames[i], i)
            cam._next_idx = i + 1
        truth = list(cam.truth)
    return frames, truth


def bench_synthetic(n_frames: int = 20000, cells_per_second: float | None = None, seed: int = 3,
                    one_core: bool = True, settings: dict | None = None) -> dict:
    """Frames/s of the synthetic camera grabbing straight into a ring (the live camera thread's job).

    ``settings``: other :class:`SyntheticSettings` values, e.g. the faster flow of the live
    pipeline ``{"fps": 10000, "flow_speed_mm_s": 20, "constriction_speed_mm_s": 60,
    "exit_speed_mm_s": 30}``.
    """
    if one_core:
        try:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        except (AttributeError, OSError):
            pass
    s = SyntheticSettings(seed=seed, duration_s=0.0)
    if settings:
        s = from_mapping(SyntheticSettings, {**to_mapping(s), **settings}, "bench.synthetic")
    if cells_per_second is not None:
        s = dataclasses.replace(s, cells_per_second=cells_per_second)
    with SyntheticCamera(s) as cam:
        ring = cam.info.make_ring(1024)
        cam.start()
        for _ in range(200):  # warm up
            cam.grab_into(ring)
        t0 = time.perf_counter()
        c0 = time.thread_time()
        got = 0
        while got < n_frames:  # in runs, as the pipeline's camera thread grabs
            got += cam.grab_many_into(ring, min(64, n_frames - got))
        cpu = time.thread_time() - c0  # on a shared machine the CPU time says more than the wall time
        dt = time.perf_counter() - t0
        in_view = sum(max(0, min(t.last_frame, cam.frame_index - 1) - max(t.first_frame, 200) + 1)
                      for t in cam.truth if t.kind != "debris")
    return {
        "frames": n_frames,
        "roi": f"{s.width}x{s.height}",
        "fps_simulated": s.fps,
        "cells_in_view_mean": round(in_view / n_frames, 2),
        "objects": len(cam.truth),
        "frames_per_s": round(n_frames / dt),
        "us_per_frame": round(1e6 * dt / n_frames, 2),
        "cpu_us_per_frame": round(1e6 * cpu / n_frames, 2),
        "realtime_factor": round(n_frames / dt / s.fps, 1),
    }
