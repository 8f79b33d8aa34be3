"""Event files: one ``.rtdc`` (HDF5) per run that dclab, DCscope and Shape-Out open as they are.

Layout (dclab's names wherever dclab defines the quantity, ours in our own group)::

    /                      metadata attributes ``section:key`` (experiment, imaging, setup,
                           online_filter, user) that dclab's checker requires
    /events/<feature>      dclab features, one row per cell: index, index_online, frame, time,
                           pos_x, pos_y, deform, area_um, bright_avg, bright_sd, ml_score_<xxx>,
                           userdef0..9 (our features, mapping in ``user:userdefN``), and the event
                           images ``image``/``mask`` and ``basinmap0``
    /basin_events/image_bg each distinct background once (dclab internal basin, /basins/…), so
                           dclab and DCscope show ``image_bg`` for every event
    /logs/mimlsort-*       run log, configuration (TOML), model spec (JSON), counters, mappings
    /mimlsort/events/<x>   the same rows again under our own names: every tracker feature, identity,
                           quality, first/last crops, class probabilities, the sort decision (fired,
                           reason code, detail) and the trigger's fire record
    /mimlsort/acks         device acknowledgements (event_index, device_time_us, host_ns, pulse_host_ns,
                           pulse_host_err_ns)
    /mimlsort/device_reports  the device's word on single pulses after they were handed over
                           (event_index, host_ns, kind: 1 refused = not output, 2 late; message)
    /mimlsort/config_toml, /mimlsort/model_spec_json   the exact texts (logs hold them wrapped)

Crash safety: rows are buffered in memory and written at :meth:`EventWriter.flush` (at least once a
second). Until the first events the file stays closed between flushes (consistent on disk); from the
first flush with events on it is open in HDF5 SWMR mode, so a process killed at any moment leaves a
file that dclab opens (it falls back to SWMR reading by itself) holding every row of the last
completed flush. ``close()`` ends SWMR mode and writes the final counters and the
``complete`` flag in a normal reopen, because SWMR forbids creating attributes.

Why SWMR rather than plain flushes: between two flushes of a non-SWMR file HDF5 may evict dirty
metadata in any order, so a kill can leave a file that does not open at all.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.camera import FLOW_DIRECTIONS
from mimlsort.provenance import software_version
from mimlsort.errors import DataFormatError, DeviceError
from mimlsort.inputs import check_input
from mimlsort.settings import require
from tracking.events import Quality
from tracking.features import FEATURES, MIML_FEATURES

_NO_ROI_IMAGE = int(Quality.NO_ROI_IMAGE)

log = logging.getLogger(__name__)

FORMAT = "mimlsort-events"
FORMAT_VERSION = 1

#: dclab's limit for log lines (longer lines are an alert in dclab's checker)
LOG_LINE_BYTES = 100

#: our features that have a dclab name and meaning of their own (``rtdc=True`` in tracking.features)
RTDC_FEATURES: tuple[str, ...] = tuple(n for n, d in FEATURES.items() if d.rtdc)

#: what goes into dclab's ten ``userdef`` slots, in this order, so DCscope users can plot and gate
#: on it; MIML's features first, then what an operator gates on (quality bits, whether it fired)
USERDEF_PRIORITY: tuple[str, ...] = (*MIML_FEATURES, "diameter_um", "di_entry", "di_exit", "v_after_mm_s",
                                     "quality", "fired")

#: reason codes stored per event; 0 means that no sort policy ran for the cell
REASON_CODES: tuple[str, ...] = ("no decision", "fired", "sorting off", "not a target class", "below threshold",
                                 "outside gate", "quality gate", "aborted by coincidence", "not isolated", "late",
                                 "trigger unavailable", "refused by the trigger")

#: /mimlsort/acks: pulse_host_ns is when the pulse went out on the host clock (-1: not known),
#: pulse_host_err_ns how far off that may be (hardware.trigger.Ack; files before session 26 lack it)
ACK_DTYPE = np.dtype([("event_index", "<i8"), ("device_time_us", "<f8"), ("host_ns", "<i8"), ("pulse_host_ns", "<i8"),
                      ("pulse_host_err_ns", "<i8")])
#: /mimlsort/device_reports: kind 1 = refused (the pulse was not output), 2 = output late
REPORT_KINDS = {"refused": 1, "late": 2}
REPORT_MESSAGE_BYTES = 96
DEVICE_REPORT_DTYPE = np.dtype([("event_index", "<i8"), ("host_ns", "<i8"), ("kind", "u1"),
                                ("message", f"S{REPORT_MESSAGE_BYTES}")])
_IMAGE_CHUNK_BYTES = 256 * 1024
_ROW_CHUNK = 1024  # rows per chunk of scalar datasets (8 KiB for float64)
#: HDF5's chunk cache per dataset. Its 1 MiB default, times the ~70 datasets of an event file,
#: filled up over hours as scalar chunks were touched (the writer grew ~0.5 kB an event, 80 MB
#: after 100,000 events); a writer only appends, so one image chunk and the scalars' current
#: chunks are all it needs: flat memory at the same events/s (session 12, NOTES.md)
_CHUNK_CACHE_BYTES = 512 * 1024
#: free space below which a closing writer leaves its file as the last flush left it (see close)
FINALIZE_MIN_FREE_BYTES = 2**20
#: dclab features in grey levels: a deeper camera's are written in the stored 8-bit images' levels
_GREY_FEATURES = ("bright_avg", "bright_sd", "bg_off")
_DETAIL_BYTES = 96
_ERROR_BYTES = 96
_DEVICE_BYTES = 32


# ---------------------------------------------------------------------------------------------
# run metadata


@dataclass(frozen=True, slots=True)
class RunMeta:
    """What a run's file says about the run besides its events (dclab metadata and provenance)."""

    pixel_size_um: float
    fps: float
    roi: tuple[int, int]  # camera ROI width, height in pixels
    sample: str = "unnamed sample"
    run_index: int = 1  # 1-based measurement number of the day/session (dclab "run index")
    operator: str = ""
    roi_position: tuple[int, int] = (0, 0)  # ROI offset on the sensor, px
    bit_depth: int = 8  # bits per pixel of the camera; event images are stored as 8 bit
    # what dclab's "image" holds: roi = the tracker's ROI frame at max DI (with mask, background);
    # crop = the last crop; auto = roi if any event of the first batch has a ROI frame
    event_images: str = "auto"
    channel_width_um: float = 20.0
    constriction_width_um: float | None = None
    constriction_length_um: float | None = None
    chip_region: str = "channel"  # channel | reservoir
    chip_identifier: str = ""
    flow_rate_ul_s: float = 0.04
    flow_rate_sample_ul_s: float | None = None
    flow_rate_sheath_ul_s: float | None = None
    medium: str = "other"
    temperature_c: float | None = None
    flash_device: str = "LED"
    flash_duration_us: float = 2.0  # exposure time for a continuously lit sample
    setup_identifier: str = "mimlsort"
    camera: str = ""  # backend and model, e.g. "basler acA720-520um"
    camera_clock: bool = True  # frame times come from the camera's clock (False: host arrival times)
    # the way cells moved in the camera's image; frames (and so images, masks, positions and the
    # ROI size) were turned from it so that they move left to right
    flow_direction: str = "left-to-right"
    class_names: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = tuple(FEATURES)
    model_name: str = ""
    model_spec_json: str = ""
    model_sha256: str = ""
    config_toml: str = ""
    software_version: str = field(default_factory=software_version)  # with the commit in a git checkout
    started: datetime | None = None  # run start (aware or naive local time); None: when the file is opened
    run_identifier: str = ""  # unique id of the run; empty: a new UUID
    target_event_count: int = 0  # auto-stop limits, 0: none
    target_duration_s: float = 0.0
    # how `deform` was measured: "tracked" (at the frame of maximum DI inside the constriction) or
    # "single image" (reanalysis of RT-DC event images: RT-DC's own channel deformation)
    measured: str = "tracked"
    # how the event masks were segmented, so that a reanalysis of the file segments its images
    # the same way: RT-DC's signed threshold in 8-bit grey levels (< 0: darker than the background)
    # and the closing kernel in px (0: none, the tracker's)
    segmentation_threshold: float = -6.0
    segmentation_closing_px: int = 0
    segmentation_clear_border: bool = False  # objects at the image's edge removed before the closing (dcnum's cle=1)
    # setup keys written with mimlsort's defaults because nobody gave the experiment's values
    # (dclab requires every one of them): named in the file so no one takes them for measured
    placeholders: tuple[str, ...] = ()

    def __post_init__(self):
        require(self.pixel_size_um > 0, "pixel_size_um", f"must be > 0, got {self.pixel_size_um}")
        require(self.fps > 0, "fps", f"must be > 0, got {self.fps}")
        require(len(self.roi) == 2 and all(int(v) > 0 for v in self.roi), "roi",
                f"must be (width, height) > 0, got {self.roi}")
        require(len(self.roi_position) == 2 and all(int(v) >= 0 for v in self.roi_position), "roi_position",
                f"must be (x, y) >= 0, got {self.roi_position}")
        require(self.run_index >= 1, "run_index", f"must be >= 1, got {self.run_index}")
        require(8 <= self.bit_depth <= 16, "bit_depth", f"must be in 8..16, got {self.bit_depth}")
        require(self.event_images in ("auto", "roi", "crop", "none"), "event_images",
                f"must be auto, roi, crop or none, got {self.event_images!r}")
        require(self.channel_width_um > 0, "channel_width_um", f"must be > 0, got {self.channel_width_um}")
        require(self.flow_rate_ul_s > 0, "flow_rate_ul_s", f"must be > 0, got {self.flow_rate_ul_s}")
        require(self.flash_duration_us > 0, "flash_duration_us", f"must be > 0, got {self.flash_duration_us}")
        require(self.chip_region in ("channel", "reservoir"), "chip_region",
                f"must be channel or reservoir, got {self.chip_region!r}")
        require(bool(self.sample.strip()), "sample", "must not be empty")
        require(len(set(self.class_names)) == len(self.class_names), "class_names",
                f"must be unique, got {list(self.class_names)}")
        unknown = [f for f in self.feature_names if f not in FEATURES]
        require(not unknown, "feature_names", f"unknown features {unknown} (known: {', '.join(FEATURES)})")
        require(not self.model_sha256 or re.fullmatch(r"[0-9a-f]{64}", self.model_sha256) is not None,
                "model_sha256", f"must be 64 lower-case hex digits, got {self.model_sha256!r}")
        if self.model_spec_json:
            try:
                json.loads(self.model_spec_json)
            except ValueError as err:
                require(False, "model_spec_json", f"is not valid JSON: {err}")
        if self.flow_rate_sample_ul_s is not None and self.flow_rate_sheath_ul_s is not None:
            total = self.flow_rate_sample_ul_s + self.flow_rate_sheath_ul_s
            require(math.isclose(total, self.flow_rate_ul_s, rel_tol=1e-6), "flow_rate_ul_s",
                    f"must be sample + sheath = {total:g}, got {self.flow_rate_ul_s:g}")
        require(self.flow_direction in FLOW_DIRECTIONS, "flow_direction",
                f"must be one of {', '.join(FLOW_DIRECTIONS)}, got {self.flow_direction!r}")
        require(self.measured in ("tracked", "single image"), "measured",
                f"must be 'tracked' or 'single image', got {self.measured!r}")
        require(self.target_event_count >= 0, "target_event_count", f"must be >= 0, got {self.target_event_count}")
        require(math.isfinite(self.segmentation_threshold) and self.segmentation_threshold != 0,
                "segmentation_threshold", f"must be finite and not 0, got {self.segmentation_threshold}")
        require(self.segmentation_closing_px >= 0, "segmentation_closing_px",
                f"must be >= 0, got {self.segmentation_closing_px}")
        require(self.target_duration_s >= 0, "target_duration_s", f"must be >= 0, got {self.target_duration_s}")

    def to_json(self) -> str:
        # the long texts live in their own datasets (attributes should stay small)
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TEXT_FIELDS}
        d["started"] = self.started.isoformat() if self.started else None
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str, **texts: str) -> "RunMeta":
        d = {**json.loads(text), **texts}
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}  # files from newer versions may carry more
        for k in ("roi", "roi_position", "class_names", "feature_names", "placeholders"):
            if k in d:
                d[k] = tuple(d[k])
        if d.get("started"):
            d["started"] = datetime.fromisoformat(d["started"])
        return cls(**d)


    def setup_attrs(self) -> dict[str, Any]:
        """The dclab metadata that describe the experiment rather than the run (``imaging:flash …``,
        ``setup:…``, the operator): the event file and a raw recording of the same run share them."""
        attrs: dict[str, Any] = {
            "imaging:flash device": self.flash_device,
            "imaging:flash duration": float(self.flash_duration_us),
            "setup:channel width": float(self.channel_width_um),
            "setup:chip region": self.chip_region,
            "setup:flow rate": float(self.flow_rate_ul_s),
            "setup:medium": self.medium,
        }
        if self.flow_rate_sample_ul_s is not None:
            attrs["setup:flow rate sample"] = float(self.flow_rate_sample_ul_s)
        if self.flow_rate_sheath_ul_s is not None:
            attrs["setup:flow rate sheath"] = float(self.flow_rate_sheath_ul_s)
        if self.temperature_c is not None:
            attrs["setup:temperature"] = float(self.temperature_c)
        if self.chip_identifier:
            attrs["setup:chip identifier"] = self.chip_identifier.lower()
        if self.operator:
            attrs["user:operator"] = self.operator
        if self.flow_direction != "left-to-right":  # RT-DC's own: said only when the frames were turned
            attrs["user:camera flow direction"] = self.flow_direction
        if self.placeholders:
            attrs["user:setup placeholders"] = ", ".join(self.placeholders)
        return attrs


_TEXT_FIELDS = ("config_toml", "model_spec_json")

#: RunMeta fields read from an RT-DC file's ``setup:``/``imaging:`` metadata (`setup_from_attrs`)
_SETUP_KEYS = {
    "setup:channel width": ("channel_width_um", float),
    "setup:chip region": ("chip_region", str),
    "setup:chip identifier": ("chip_identifier", str),
    "setup:flow rate": ("flow_rate_ul_s", float),
    "setup:flow rate sample": ("flow_rate_sample_ul_s", float),
    "setup:flow rate sheath": ("flow_rate_sheath_ul_s", float),
    "setup:medium": ("medium", str),
    "setup:temperature": ("temperature_c", float),
    "imaging:flash device": ("flash_device", str),
    "imaging:flash duration": ("flash_duration_us", float),
    "user:camera flow direction": ("flow_direction", str),
}


def setup_from_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``RunMeta`` keyword arguments for what an RT-DC file's metadata say about its experiment
    (channel, flow rates, medium, temperature, flash), so that a replay or reanalysis keeps them:
    Young's modulus in dclab depends on the flow rate, channel width, medium and temperature.
    Values that are missing, unreadable or out of range are left out (the caller's default holds)."""
    out: dict[str, Any] = {}
    # values a mimlsort file itself names as placeholders stay placeholders downstream
    unknown = {f"setup:{w.strip()}" for w in _s(attrs.get("user:setup placeholders", "")).split(",") if w.strip()}
    unknown |= {"imaging:flash duration"} if "setup:flash duration" in unknown else set()
    for key, (name, kind) in _SETUP_KEYS.items():
        v = attrs.get(key)
        if v is None or key in unknown:
            continue
        try:
            v = _s(v).strip() if kind is str else float(v)
        except (TypeError, ValueError):
            continue
        if kind is float and not (math.isfinite(v) and (v > 0 or name == "temperature_c")):
            continue
        if kind is str and not v:
            continue
        out[name] = v
    if out.get("chip_region") not in (None, "channel", "reservoir"):
        del out["chip_region"]
    if out.get("flow_direction") not in (None, *FLOW_DIRECTIONS):
        del out["flow_direction"]
    sample, sheath = out.get("flow_rate_sample_ul_s"), out.get("flow_rate_sheath_ul_s")
    if sample is not None and sheath is not None:
        total = out.setdefault("flow_rate_ul_s", sample + sheath)
        if not math.isclose(total, sample + sheath, rel_tol=1e-6):  # inconsistent: keep the total alone
            del out["flow_rate_sample_ul_s"], out["flow_rate_sheath_ul_s"]
    else:
        out.pop("flow_rate_sample_ul_s", None)
        out.pop("flow_rate_sheath_ul_s", None)
    return out


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file (for ``RunMeta.model_sha256``)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def score_codes(class_names: Sequence[str]) -> dict[str, str]:
    """Class name -> the three characters of its dclab ``ml_score_<xxx>`` feature (unique, stable).

    dclab allows exactly three of ``[a-z0-9]``; the code is the name's first three such characters,
    or, when that is taken or too short, its first two/one plus a running number.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for i, name in enumerate(class_names):
        base = re.sub(r"[^a-z0-9]", "", name.lower())
        cands = [base[:3]] if len(base) >= 3 else []
        cands += [f"{base[:2]}{d}" for d in range(10)] if len(base) >= 2 else []
        cands += [f"{base[:1]}{d:02d}" for d in range(100)] if base else []
        cands += [f"c{d:02d}" for d in range(i, 100)] + [f"{d:03d}" for d in range(1000)]
        code = next(c for c in cands if len(c) == 3 and c not in used)
        used.add(code)
        out[name] = code
    return out


def userdef_mapping(feature_names: Iterable[str]) -> dict[str, str]:
    """``userdefN`` -> what it holds (a feature name, ``quality`` or ``fired``)."""
    have = set(feature_names) | {"quality", "fired"}
    chosen = [n for n in USERDEF_PRIORITY if n in have]
    chosen += [n for n in FEATURES if n in have and n not in chosen and n not in RTDC_FEATURES]
    return {f"userdef{i}": n for i, n in enumerate(chosen[:10])}


def _describe(name: str) -> str:
    if name == "quality":
        return "quality: bitmask of tracking.events.Quality (0 = OK; 128 = no ROI image of the cell in this file)"
    if name == "fired":
        return "fired: 1 if the sort trigger fired for the cell"
    d = FEATURES[name]
    return f"{name} [{d.unit}]: {d.description}" if d.unit else f"{name}: {d.description}"


def wrap_bytes(text: str, limit: int = LOG_LINE_BYTES) -> list[bytes]:
    """Lines of ``text`` as UTF-8, each cut to at most ``limit`` bytes (never inside a character)."""
    out = []
    for line in text.splitlines() or [""]:
        b = line.encode("utf-8")
        while len(b) > limit:
            cut = limit
            while cut > 0 and (b[cut] & 0xC0) == 0x80:  # continuation byte: back up to a char start
                cut -= 1
            out.append(b[:cut])
            b = b[cut:]
        out.append(b)
    return out


def _fixed(text: str, n: int) -> bytes:
    b = text.encode("utf-8")[:n]
    return b.decode("utf-8", "ignore").encode("utf-8")  # a cut character would not decode


# ---------------------------------------------------------------------------------------------
# the writer


def _snapshot(event) -> Any:
    snap = getattr(event, "snapshot", None)
    if snap is None and getattr(event, "extra", None):
        snap = event.extra.get("snapshot")
    return snap


#: grey levels a stored background may differ from the one the tracker used (see _add_row)
_BG_TOLERANCE = 1


def _differs(a: np.ndarray, b: np.ndarray, tolerance: int) -> bool:
    """True if any pixel of ``a`` and ``b`` differs by more than ``tolerance``."""
    d = a.astype(np.int16)
    d -= b
    return bool(np.abs(d, out=d).max() > tolerance)


def _known_frame(ev) -> int:
    """The cell's exit frame, else the frame it was emitted in, else its entry frame (never < 0)."""
    for f in (ev.exit_frame, (ev.extra or {}).get("emit_frame", -1), ev.entry_frame):
        if f is not None and int(f) >= 0:
            return int(f)
    return 0


@dataclass
class _Column:
    """One appendable dataset: its path, per-row shape and dtype, and rows waiting for a flush."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    image: bool = False
    pending: list = field(default_factory=list)


class EventWriter:
    """Writes :class:`~app.records.CellRecord` batches to an ``.rtdc`` file; a context manager.

    ``write`` is called on the storage thread; ``log``, ``add_acks`` and ``note_counters`` may be
    called from any thread (they only queue; the storage thread writes them at the next flush).
    Flushes happen inside ``write`` once ``flush_interval_s`` has passed, on ``flush()`` and on
    ``flush_if_due()`` (call it when the storage thread idles, so a run without cells still flushes).
    """

    def __init__(self, path: str | Path, *, meta: RunMeta, overwrite: bool = False, flush_interval_s: float = 0.9,
                 max_buffered: int = 1024, compression: str | None = "zstd", compression_level: int = 1,
                 compress_images: bool = True, min_free_bytes: int = 256 * 2**20):
        require(flush_interval_s > 0, "flush_interval_s", f"must be > 0, got {flush_interval_s}")
        require(max_buffered >= 1, "max_buffered", f"must be >= 1, got {max_buffered}")
        require(compression in (None, "zstd", "gzip"), "compression",
                f"must be zstd, gzip or None, got {compression!r}")
        self.path = Path(path)
        self.meta = meta
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self.min_free_bytes = min_free_bytes
        self._io_broken = False  # an HDF5 write failed: the handle cannot be trusted any more
        self._compression = compression
        self._level = compression_level
        # False: event images and crops are stored plain, masks and backgrounds still compressed —
        # camera noise leaves frames ~1.4x smaller at best, for half the writer's CPU
        self._compress_images = compress_images
        self._lock = threading.Lock()
        self._pending_log: list[bytes] = []
        self._pending_acks: list[tuple[int, float, int, int, int]] = []
        self._pending_reports: list[tuple[int, int, int, bytes]] = []
        self._counters: dict[str, Any] = {}
        self._counters_dirty = False
        self._run_error = ""
        self._columns: dict[str, _Column] = {}
        self._ds: dict[str, Any] = {}
        self._buffered = 0
        self._first_row_t = 0.0  # when the first event was buffered (sets the image chunk size)
        self._written = 0
        self._swmr = False
        self._closed = False
        self._failed: DeviceError | None = None
        self._image_mode: str | None = None  # "snapshot" | "crop" | "none", fixed by the first event
        self._image_shape: tuple[int, int] | None = None
        self._crop_shape: tuple[int, int] | None = None
        self._crop_dtype: np.dtype | None = None
        self._crop_px = math.nan
        self._last_bg: np.ndarray | None = None
        self._bg_pending: list[np.ndarray] = []
        self._bg_count = 0
        self._no_snapshot = 0
        self._bytes = 0
        self._t0 = time.monotonic()
        self._last_flush = self._t0
        self.codes = score_codes(meta.class_names)
        self.userdef = userdef_mapping(meta.feature_names)
        self.started = meta.started or datetime.now().astimezone()
        self.run_identifier = meta.run_identifier or str(uuid.uuid4())
        self._h5 = self._create(overwrite)

    # -- opening ---------------------------------------------------------------------------------
    def _create(self, overwrite: bool):
        import h5py
        import hdf5plugin  # noqa: F401  (registers the Zstandard filter)

        p = self.path
        if p.suffix != ".rtdc":
            raise DataFormatError(f"{p}: event files must end in .rtdc (dclab and DCscope go by the suffix)")
        if not p.parent.is_dir():
            raise DeviceError(f"{p}: cannot write the event file: folder {p.parent} does not exist")
        if p.exists() and not overwrite:
            raise DataFormatError(f"{p}: exists; refusing to overwrite a measurement (choose another name)")
        free = _free_bytes(p.parent)
        if self.min_free_bytes and free is not None and free < self.min_free_bytes:
            # before the run opens its camera and fires pulses: a short run on a full disk would
            # otherwise end "completed" with none of its events in the file
            raise DeviceError(f"{p}: disk nearly full ({free / 2**20:.0f} MiB free in {p.parent}, an event file needs "
                              f"{self.min_free_bytes / 2**20:.0f} MiB to start): free some space or write elsewhere")
        try:
            h5 = h5py.File(p, "w", libver="latest", locking=False, rdcc_nbytes=_CHUNK_CACHE_BYTES)
        except OSError as err:
            raise DeviceError(f"{p}: cannot create the event file: {err}") from err
        try:
            self._write_header(h5)
        except OSError as err:
            raise DeviceError(f"{p}: cannot write the event file: {err}") from err
        finally:
            # closed until the first events: a killed non-SWMR file would not open at all
            h5.close()
        self._bytes = _size(p)
        return None

    def _write_header(self, h5) -> None:
        m = self.meta
        t = self.started
        attrs = {
            "experiment:date": t.strftime("%Y-%m-%d"),
            "experiment:time": t.strftime("%H:%M:%S"),
            "experiment:timestamp": float(t.timestamp()),
            "experiment:event count": 0,
            "experiment:run index": int(m.run_index),
            "experiment:run identifier": self.run_identifier,
            "experiment:sample": m.sample,
            "imaging:frame rate": float(m.fps),
            "imaging:pixel size": float(m.pixel_size_um),
            "imaging:roi position x": int(m.roi_position[0]),
            "imaging:roi position y": int(m.roi_position[1]),
            "imaging:roi size x": int(m.roi[0]),
            "imaging:roi size y": int(m.roi[1]),
            "setup:software version": m.software_version,
            "setup:identifier": m.setup_identifier,
            "setup:module composition": "mimlsort " + (m.camera or "camera"),
            "user:mimlsort format": f"{FORMAT} {FORMAT_VERSION}",
            "user:camera": m.camera,
            "user:camera roi": f"{m.roi[0]}x{m.roi[1]}",
            "user:camera bit depth": int(m.bit_depth),
            "user:segmentation threshold": float(m.segmentation_threshold),
            "user:segmentation closing": int(m.segmentation_closing_px),
            **({"user:segmentation clear border": 1} if m.segmentation_clear_border else {}),
            "user:frame times": ("the source file's" if m.measured == "single image" else
                                 "camera clock" if m.camera_clock else "host arrival (camera has no clock)"),
            "user:event image": "pending",
            "user:complete": 0,
            "user:model": m.model_name,
            "user:model sha256": m.model_sha256,
        }
        attrs.update(m.setup_attrs())
        attrs["user:deform"] = (
            "RT-DC deformation of the event image (reanalysis)" if m.measured == "single image" else
            "at the frame of maximum DI inside the constriction: not RT-DC's deformation in a straight channel, "
            "so Young's modulus look-up tables do not apply")
        if m.measured == "tracked":
            attrs["user:event columns"] = (
                "time, deform, area_um, bright_avg, bright_sd, pos_x, pos_y describe the event image (the frame of "
                "maximum DI); mimlsort's own features, e.g. area_um and bright_* at rest upstream, are in "
                "/mimlsort/events and the userdef columns" if m.event_images not in ("crop", "none") else
                "no ROI frames (tracking.snapshots = false): deform is at maximum DI, area_um and bright_* at rest "
                "upstream, time is the exit time, and frame, pos_x and pos_y (in the channel) are the exit frame's "
                "(NaN for a cell not seen past the constriction); mimlsort's own features are in /mimlsort/events "
                "and the userdef columns")
        if m.constriction_width_um is not None:
            attrs["user:constriction width um"] = float(m.constriction_width_um)
        if m.constriction_length_um is not None:
            attrs["user:constriction length um"] = float(m.constriction_length_um)
        if m.target_event_count:
            attrs["online_filter:target event count"] = int(m.target_event_count)
        if m.target_duration_s:
            attrs["online_filter:target duration"] = float(m.target_duration_s) / 60.0
        for cls, code in self.codes.items():
            attrs[f"user:ml_score_{code}"] = cls
        for slot, name in self.userdef.items():
            attrs[f"user:{slot}"] = _describe(name)
        for k, v in attrs.items():
            if v != "":  # dclab warns about empty values
                h5.attrs[k] = v

        h5.create_group("events")  # dclab requires it, also while (or if) no cell has come
        g = h5.create_group("mimlsort")
        g.attrs["format"] = FORMAT
        g.attrs["format_version"] = FORMAT_VERSION
        from dataclasses import replace

        g.attrs["run_meta"] = replace(m, started=self.started, run_identifier=self.run_identifier).to_json()
        g.attrs["class_codes"] = json.dumps(self.codes)
        g.attrs["userdef"] = json.dumps(self.userdef)
        g.attrs["reasons"] = json.dumps(REASON_CODES)
        g.attrs["features"] = json.dumps({n: [d.unit, d.description] for n, d in FEATURES.items()})
        g.create_group("events")
        _text_dataset(g, "config_toml", m.config_toml)
        _text_dataset(g, "model_spec_json", m.model_spec_json)
        g.create_dataset("acks", (0,), dtype=ACK_DTYPE, maxshape=(None,), chunks=(256,))
        g.create_dataset("device_reports", (0,), dtype=DEVICE_REPORT_DTYPE, maxshape=(None,), chunks=(256,))

        logs = h5.create_group("logs")
        for name in ("mimlsort-run", "mimlsort-counters"):
            logs.create_dataset(name, (0,), dtype=f"S{LOG_LINE_BYTES}", maxshape=(None,), chunks=(256,))
        self._static_log(logs, "mimlsort-config", m.config_toml or "# no configuration given")
        self._static_log(logs, "mimlsort-model-spec", _pretty_json(m.model_spec_json) or "no model")
        lines = [f"mimlsort event file (format {FORMAT_VERSION}); our features under /mimlsort/events",
                 *(f"{slot} = {_describe(n)}" for slot, n in self.userdef.items()),
                 *(f"ml_score_{code} = P({cls})" for cls, code in self.codes.items()),
                 *(f"reason {i} = {r}" for i, r in enumerate(REASON_CODES))]
        self._static_log(logs, "mimlsort-mapping", "\n".join(lines))

    @staticmethod
    def _static_log(group, name: str, text: str) -> None:
        lines = wrap_bytes(text)
        group.create_dataset(name, data=np.array(lines, dtype=f"S{LOG_LINE_BYTES}"))

    # -- columns ---------------------------------------------------------------------------------
    def _define_columns(self, batch: Sequence) -> None:
        """Fix the file's datasets from the first batch (crop sizes are known only then)."""
        ev = batch[0].event
        mode = self.meta.event_images
        if mode == "auto":
            mode = "roi" if any(_snapshot(r.event) is not None for r in batch) else "crop"
        cols: list[_Column] = []

        def add(path, shape=(), dtype="<f8", image=False):
            cols.append(_Column(path, tuple(shape), np.dtype(dtype), image))

        for name, dt in (("index", "<u4"), ("index_online", "<u4"), ("frame", "<u8"), ("time", "<f8"),
                         ("pos_x", "<f8"), ("pos_y", "<f8")):
            add(f"events/{name}", (), dt)
        for name in RTDC_FEATURES:
            add(f"events/{name}")
        for code in self.codes.values():
            add(f"events/ml_score_{code}")
        for slot in self.userdef:
            add(f"events/{slot}")
        w, h = self.meta.roi
        if mode == "roi":
            self._image_mode = "snapshot"
            self._image_shape = (h, w)  # each snapshot is checked against it in _add_row
            # of a cell whose ROI frame is not in the file: 3x3 pixels, the least in which dclab
            # finds a contour (one pixel's collapses to a point)
            self._placeholder_mask = np.zeros((h, w), np.uint8)
            self._placeholder_mask[max(h // 2 - 1, 0):h // 2 + 2, max(w // 2 - 1, 0):w // 2 + 2] = 255
            for name in ("image", "mask"):
                add(f"events/{name}", (h, w), "u1", image=True)
            # the background changes rarely: each distinct one is stored once in dclab's internal
            # basin (/basin_events/image_bg) and basinmap0 maps every event to it, as dcnum does
            add("events/basinmap0", (), "<i8")
        elif mode == "crop" and ev.last_crop is not None and np.ndim(ev.last_crop) == 2:
            # no ROI frame: the last crop is the event image, and the ROI keys say the crop's size
            # (dclab requires them to match the images); the camera ROI stays in "user:camera roi"
            self._image_mode = "crop"
            self._image_shape = tuple(np.shape(ev.last_crop))
            add("events/image", self._image_shape, "u1", image=True)
        else:
            self._image_mode = "none"

        for name in FEATURES:
            add(f"mimlsort/events/{name}")
        for name, dt in (("event_index", "<i8"), ("track_id", "<i8"), ("entry_frame", "<i8"), ("exit_frame", "<i8"),
                         ("exit_host_ns", "<i8"), ("quality", "<u2"), ("predicted", "<i2"), ("probability", "<f4"),
                         ("is_target", "u1"), ("fired", "u1"), ("reason", "u1"), ("fire_scheduled_ns", "<i8"),
                         ("fire_sent_ns", "<i8"), ("fire_delay_us", "<f8"), ("fire_width_us", "<f8"),
                         ("fire_late", "u1"), ("fire_ok", "u1"), ("sort_window_ms", "<f8")):
            add(f"mimlsort/events/{name}", (), dt)
        add("mimlsort/events/decision_detail", (), f"S{_DETAIL_BYTES}")
        add("mimlsort/events/fire_error", (), f"S{_ERROR_BYTES}")
        add("mimlsort/events/fire_device", (), f"S{_DEVICE_BYTES}")
        if self.meta.class_names:
            add("mimlsort/events/probabilities", (len(self.meta.class_names),), "<f4")
        crop = np.asarray(ev.first_crop)
        if crop.ndim == 2 and crop.size:
            self._crop_shape, self._crop_dtype = crop.shape, crop.dtype
            self._crop_px = float(ev.crop_pixel_size_um)
            add("mimlsort/events/first_crop", crop.shape, crop.dtype, image=True)
            add("mimlsort/events/last_crop", crop.shape, crop.dtype, image=True)
        self._columns = {c.path: c for c in cols}
        # column names and class places worked out once: _add_row runs per cell at up to
        # thousands of cells a second
        # dclab's columns describe the event image: where the tracker says what that frame showed
        # (CellEvent.extra "image_<name>"), that value, else the feature's
        self._rtdc_keys = tuple((f"events/{n}", n, f"image_{n}") for n in RTDC_FEATURES)
        # brightness in the stored 8-bit image's grey levels, whatever the camera's bit depth
        self._bright_scale = 2.0 ** (8 - self.meta.bit_depth)
        self._score_keys = tuple((f"events/ml_score_{code}", self.meta.class_names.index(cls))
                                 for cls, code in self.codes.items())
        self._userdef_keys = tuple((f"events/{slot}", name) for slot, name in self.userdef.items())
        self._miml_keys = tuple((f"mimlsort/events/{n}", n) for n in FEATURES)
        self._class_index = {c: i for i, c in enumerate(self.meta.class_names)}

    def _create_datasets(self) -> None:
        import hdf5plugin

        h5 = self._h5
        if self._compression == "zstd":
            comp = dict(hdf5plugin.Zstd(clevel=self._level))
        elif self._compression == "gzip":
            comp = {"compression": "gzip", "compression_opts": min(self._level, 9)}
        else:
            comp = {}
        self._ds = {}
        for c in self._columns.values():
            if c.image:
                # ~256 KiB chunks compress well and keep HDF5's per-chunk cost low (one-row chunks
                # write ~30% fewer events/s). But each flush rewrites the half-filled last chunk of
                # every image column and, in SWMR mode, HDF5 never reuses the old copy's space: at a
                # few cells per flush the file grew to 10x its data. A chunk holds at most an
                # eighth of the cells that came per flush interval before the first flush, so the
                # rewrites stay within ~10% at the rate the run started with
                per_flush = self._buffered / max(time.monotonic() - self._first_row_t, 0.25) * self.flush_interval_s
                rows = int(np.clip(min(_IMAGE_CHUNK_BYTES // max(1, int(np.prod(c.shape)) * c.dtype.itemsize),
                                       per_flush // 8), 1, 64))
                plain = not self._compress_images and c.path != "events/mask"
                ds = h5.create_dataset(c.path, (0, *c.shape), dtype=c.dtype, maxshape=(None, *c.shape),
                                       chunks=(rows, *c.shape), **({} if plain else comp))
                ds.attrs.create("CLASS", np.bytes_("IMAGE"))
                self._ds[c.path] = ds
                ds.attrs.create("IMAGE_VERSION", np.bytes_("1.2"))
                ds.attrs.create("IMAGE_SUBCLASS", np.bytes_("IMAGE_GRAYSCALE"))
                if c.path.endswith("_crop"):
                    ds.attrs["pixel_size_um"] = self._crop_px
            else:
                # scalars stay uncompressed: their chunks are rewritten in place at every flush
                rows = max(16, _ROW_CHUNK // max(1, int(np.prod(c.shape))))
                self._ds[c.path] = h5.create_dataset(c.path, (0, *c.shape), dtype=c.dtype, maxshape=(None, *c.shape),
                                                     chunks=(rows, *c.shape))
        if self._image_mode == "snapshot":
            h, w = self._image_shape
            ds = h5.create_dataset("basin_events/image_bg", (0, h, w), dtype="u1", maxshape=(None, h, w),
                                   chunks=(1, h, w), **comp)
            for k, v in (("CLASS", "IMAGE"), ("IMAGE_VERSION", "1.2"), ("IMAGE_SUBCLASS", "IMAGE_GRAYSCALE")):
                ds.attrs.create(k, np.bytes_(v))
            self._ds["basin_events/image_bg"] = ds
            basin = {"description": "distinct background images, mapped to events by basinmap0",
                     "features": ["image_bg"], "format": "h5dataset", "identifier": None, "mapping": "basinmap0",
                     "name": "mimlsort backgrounds", "paths": ["basin_events"], "perishable": False,
                     "type": "internal"}
            lines = json.dumps(basin, indent=2, sort_keys=True).encode("utf-8").split(b"\n")
            h5.create_group("basins").create_dataset("mimlsort-image-bg", data=np.array(lines, dtype="S100"))
        roi_frame = ("the source file's event image" if self.meta.measured == "single image"
                     else "ROI frame at maximum DI")
        mode = {"snapshot": f"{roi_frame} (image, mask; image_bg via the internal basin)",
                "crop": "last crop (no ROI frame from the tracker); roi size = crop size",
                "none": "none"}[self._image_mode or "none"]
        h5.attrs["user:event image"] = mode
        if self._image_mode == "crop":
            h5.attrs["imaging:roi size x"] = int(self._image_shape[1])
            h5.attrs["imaging:roi size y"] = int(self._image_shape[0])

    # -- writing ---------------------------------------------------------------------------------
    def write(self, records: Sequence) -> None:
        """Queue a batch of records; flushes when the interval has passed or the buffer is full."""
        self._check_open()
        if records:
            if not self._columns:
                self._define_columns(records)
                self._first_row_t = time.monotonic()
            for r in records:
                self._add_row(r)
        if self._flush_due():
            self.flush()

    def _add_row(self, rec) -> None:
        ev = rec.event
        cols = self._columns
        n = self._written + self._buffered
        f = ev.features
        row: dict[str, Any] = {}
        put = row.__setitem__  # the row is appended only once complete: a bad event leaves no partial row
        snap = _snapshot(ev)
        px = self.meta.pixel_size_um
        probs = np.asarray(rec.probabilities, np.float32).reshape(-1)
        k = len(self.meta.class_names)
        if probs.size != k:
            raise DataFormatError(f"{self.path}: event {ev.index}: {probs.size} probabilities for {k} classes "
                                  f"{list(self.meta.class_names)}")
        d = rec.decision
        fire = rec.fire

        put("events/index", n + 1)
        # a reanalysis names its source event (CellEvent.extra), as a dclab export keeps it
        put("events/index_online", (ev.extra or {}).get("index_online", ev.index + 1))
        # the frame of the stored image; without one, the best frame known (an exit not seen is -1)
        frame = int(snap.frame_id) if snap is not None else _known_frame(ev)
        put("events/frame", frame)
        # the time of the stored image's frame, as dclab takes `time` to be (frame / frame rate
        # where the file has no time); the exit time stays in /mimlsort/events/exit_time_ms
        x = ev.extra if snap is not None and ev.extra else {}
        put("events/time", x.get("image_time_ms", f.get("exit_time_ms", math.nan)) / 1000.0)
        # without an ROI frame the row is the exit frame's (frame, pos_y): pos_x too, in the channel.
        # Not for a cell whose ROI frame was lost in a file that has them: its placeholder mask's
        # contour would then give dclab a volume (NaN with pos_x NaN)
        exit_x = (ev.extra or {}).get("exit_pos_x_um", math.nan) if self._image_mode != "snapshot" else math.nan
        put("events/pos_x", float(snap.pos_x_px) * px if snap is not None else exit_x)
        put("events/pos_y", float(snap.pos_y_px) * px if snap is not None else f.get("pos_y_um", math.nan))
        nan = math.nan
        scale = self._bright_scale
        for key, name, image_name in self._rtdc_keys:
            v = x.get(image_name, f.get(name, nan))
            put(key, v * scale if name in _GREY_FEATURES else v)
        scores = probs.tolist()
        for key, i in self._score_keys:
            # dclab rejects scores outside [0, 1]; float32 softmax can overshoot by an ulp
            put(key, min(1.0, max(0.0, scores[i])))
        lost = snap is None and self._image_mode == "snapshot"  # a cell without a ROI frame in a file that has them
        quality = int(ev.quality) | (_NO_ROI_IMAGE if lost else 0)
        extra = {"quality": quality, "fired": int(bool(d is not None and d.fire))}
        for key, name in self._userdef_keys:
            put(key, extra[name] if name in extra else f.get(name, nan))

        if self._image_mode == "snapshot":
            if snap is not None:
                put("events/image", self._image(snap.image, ev))
                put("events/mask", np.asarray(snap.mask, bool).view(np.uint8) * np.uint8(255))  # dclab: 0/255
                bg = self._image(snap.background, ev)
            else:  # the background, and a placeholder mask flagged in the quality bits: dclab finds no
                # contour in an empty mask, and then computes no volume, tilt or inertia ratio for any event
                self._no_snapshot += 1
                bg = self._last_bg if self._last_bg is not None else np.zeros(self._image_shape, np.uint8)
                put("events/image", bg)
                put("events/mask", self._placeholder_mask)
                # dclab's volume centres every contour on pos_y and fails for the whole file on a
                # NaN one (AssertionError): a cell that never left the constriction has no exit
                # position, so it gets the placeholder's
                if not math.isfinite(row["events/pos_y"]):
                    put("events/pos_y", (self._image_shape[0] // 2) * px)
            # the running background changes at every update, by one grey level in a few pixels:
            # stored on each change it was a background per event, a fifth of the file. A new one
            # is stored once a pixel has moved by more than one grey level (bytes comparison is
            # memcmp: ~5x faster than np.array_equal on a 24 KB frame; most rows stop there)
            last = self._last_bg
            if last is None or (bg.tobytes() != last.tobytes() and _differs(bg, last, _BG_TOLERANCE)):
                self._bg_pending.append(bg)
                self._bg_count += 1
                self._last_bg = bg
            put("events/basinmap0", self._bg_count - 1)
        elif self._image_mode == "crop":
            put("events/image", self._image(ev.last_crop, ev))

        for key, name in self._miml_keys:
            put(key, f.get(name, nan))
        put("mimlsort/events/event_index", ev.index)
        put("mimlsort/events/track_id", ev.track_id)
        put("mimlsort/events/entry_frame", ev.entry_frame)
        put("mimlsort/events/exit_frame", ev.exit_frame)
        put("mimlsort/events/exit_host_ns", ev.exit_host_ns)
        put("mimlsort/events/quality", quality)
        if d is not None and d.predicted in self._class_index:
            put("mimlsort/events/predicted", self._class_index[d.predicted])
        elif probs.size:
            put("mimlsort/events/predicted", int(np.argmax(probs)))
        else:
            put("mimlsort/events/predicted", -1)
        put("mimlsort/events/probability", float(d.probability) if d is not None else
            (float(probs.max()) if probs.size else math.nan))
        put("mimlsort/events/is_target", int(bool(d is not None and d.is_target)))
        put("mimlsort/events/fired", extra["fired"])
        put("mimlsort/events/reason", _reason_code(d))
        put("mimlsort/events/decision_detail", _fixed(d.detail if d is not None else "", _DETAIL_BYTES))
        put("mimlsort/events/sort_window_ms", d.window_ms if d is not None else nan)
        if fire is None:  # most cells: nothing was sent
            put("mimlsort/events/fire_scheduled_ns", -1)
            put("mimlsort/events/fire_sent_ns", -1)
            put("mimlsort/events/fire_delay_us", nan)
            put("mimlsort/events/fire_width_us", nan)
            put("mimlsort/events/fire_late", 0)
            put("mimlsort/events/fire_ok", 0)
            put("mimlsort/events/fire_error", b"")
            put("mimlsort/events/fire_device", b"")
        else:
            # -1: nothing scheduled/sent (FireRecord says 0 for "never sent")
            put("mimlsort/events/fire_scheduled_ns", int(getattr(fire, "scheduled_ns", 0) or -1))
            put("mimlsort/events/fire_sent_ns", int(getattr(fire, "sent_ns", 0) or -1))
            put("mimlsort/events/fire_delay_us", _num(getattr(fire, "delay_us", None)))
            put("mimlsort/events/fire_width_us", _num(getattr(fire, "width_us", None)))
            put("mimlsort/events/fire_late", int(bool(getattr(fire, "late", False))))
            put("mimlsort/events/fire_ok", int(bool(getattr(fire, "ok", False))))
            put("mimlsort/events/fire_error", _fixed(str(getattr(fire, "error", "") or ""), _ERROR_BYTES))
            put("mimlsort/events/fire_device", _fixed(str(getattr(fire, "device", "") or ""), _DEVICE_BYTES))
        if k:
            put("mimlsort/events/probabilities", probs)
        if self._crop_shape is not None:
            for name, crop in (("first_crop", ev.first_crop), ("last_crop", ev.last_crop)):
                crop = np.asarray(crop)
                if crop.shape != self._crop_shape:
                    raise DataFormatError(f"{self.path}: event {ev.index}: {name} is {crop.shape}, "
                                          f"earlier crops are {self._crop_shape}")
                put(f"mimlsort/events/{name}", crop)
        for path, v in row.items():
            cols[path].pending.append(v)
        self._buffered += 1

    def _to8(self, img) -> np.ndarray:
        a = np.asarray(img)
        if a.dtype == np.uint8:
            return a
        shift = self.meta.bit_depth - 8
        return np.clip(a.astype(np.int64) >> shift, 0, 255).astype(np.uint8)

    def _image(self, img, ev) -> np.ndarray:
        a = self._to8(img)
        if a.shape != self._image_shape:
            raise DataFormatError(f"{self.path}: event {ev.index}: image is {a.shape[::-1]} px (w x h), the file's "
                                  f"event images are {self._image_shape[::-1]} (RunMeta.roi)")
        return a

    def log(self, line: str) -> None:
        """Add a line to the run log (``/logs/mimlsort-run``); long lines are wrapped."""
        with self._lock:
            self._pending_log.extend(wrap_bytes(str(line)))

    def add_acks(self, acks: Iterable) -> None:
        """Device acknowledgements of fired triggers (``event_index``, ``device_time_us``, ``host_ns``)."""
        rows = [(int(getattr(a, "event_index")), _num(getattr(a, "device_time_us", None)),
                 int(getattr(a, "host_ns", -1) or -1), int(getattr(a, "pulse_host_ns", -1)),
                 int(getattr(a, "pulse_host_err_ns", -1))) for a in acks]
        with self._lock:
            self._pending_acks.extend(rows)

    def add_device_reports(self, reports: Iterable) -> None:
        """The trigger device's reports on single pulses (:class:`hardware.trigger.DeviceReport`)."""
        rows = [(int(r.event_index), int(r.host_ns), REPORT_KINDS.get(r.kind, 0),
                 str(r.message).encode("utf-8", "replace")[:REPORT_MESSAGE_BYTES]) for r in reports]
        with self._lock:
            self._pending_reports.extend(rows)

    def note_error(self, message: str) -> None:
        """The run ended with this error (not one of the writer's own): stored as the file's
        ``error`` at close, so a file of a failed run does not read as a clean one."""
        with self._lock:
            self._run_error = str(message)

    def note_counters(self, counters: Mapping[str, Any]) -> None:
        """Run counters (drops, missed frames …); logged at the next flush, stored in full at close."""
        with self._lock:
            for k, v in counters.items():
                if self._counters.get(k) != v:
                    self._counters[k] = v
                    self._counters_dirty = True

    @property
    def bytes_written(self) -> int:
        """File size after the last flush."""
        return self._bytes

    @property
    def events_written(self) -> int:
        """Events in the file as of the last flush (what a reader sees now)."""
        return self._written

    def flush_if_due(self) -> bool:
        """Flush if ``flush_interval_s`` has passed since the last flush; True if it flushed."""
        if not self._closed and self._failed is None and self._flush_due():
            self.flush()
            return True
        return False

    def _flush_due(self) -> bool:
        if self._buffered >= self.max_buffered:
            return True
        now = time.monotonic()
        if now - self._last_flush < self.flush_interval_s:
            return False
        # the first events wait until they have come for a whole interval: their rate sizes the
        # image chunks (a flush due when the first cell came would have seen one cell, and sized
        # them for one cell a second)
        return self._swmr or not self._buffered or now - self._first_row_t >= self.flush_interval_s

    def flush(self) -> None:
        """Write everything queued and make it durable (readable after a crash)."""
        self._check_open()
        self._check_space()
        try:
            self._flush()
        except (OSError, RuntimeError) as err:  # h5py reports a failed flush as RuntimeError
            self._io_broken = True
            self._failed = DeviceError(f"{self.path}: writing events failed ({_io_reason(err, self.path)}); the file holds the "
                                       f"{self._written} events of the last flush")
            # not logged here: whoever catches it says it (the run's "run stopping", the command's
            # "error:"), and a line here as well said it twice, three times from the writer's child
            raise self._failed from err

    def _check_space(self) -> None:
        """Stop before the disk is full: a clean stop leaves a complete file, a failed write does not."""
        if not self.min_free_bytes:
            return
        free = _free_bytes(self.path.parent)
        if free is not None and free < self.min_free_bytes:
            self._failed = DeviceError(
                f"{self.path}: disk nearly full ({free / 2**20:.0f} MiB free, need {self.min_free_bytes / 2**20:.0f} "
                f"MiB); stopped writing, the file holds the {self._written} events of the last flush")
            raise self._failed  # not logged here, as in flush()

    def _flush(self) -> None:
        import h5py

        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r+", libver="latest", locking=False, rdcc_nbytes=_CHUNK_CACHE_BYTES)
        h5 = self._h5
        if self._columns and not self._swmr:
            self._create_datasets()
            h5.swmr_mode = True  # from here on a kill leaves a file readers can open
            self._swmr = True
        with self._lock:
            lines, self._pending_log = self._pending_log, []
            acks, self._pending_acks = self._pending_acks, []
            reports, self._pending_reports = self._pending_reports, []
            if self._counters_dirty:
                elapsed = time.monotonic() - self._t0
                # the whole wrapped line goes to the counters' own log
                counter_lines = wrap_bytes(f"t={elapsed:.1f}s " + " ".join(f"{k}={v}" for k, v in self._counters.items()))
                self._counters_dirty = False
            else:
                counter_lines = []
        if counter_lines:
            _append(h5["logs/mimlsort-counters"], np.array(counter_lines, dtype=f"S{LOG_LINE_BYTES}"))
        if lines:
            _append(h5["logs/mimlsort-run"], np.array(lines, dtype=f"S{LOG_LINE_BYTES}"))
        if acks:
            _append(h5["mimlsort/acks"], np.array(acks, dtype=ACK_DTYPE))
        if reports and "mimlsort/device_reports" in h5:
            _append(h5["mimlsort/device_reports"], np.array(reports, dtype=DEVICE_REPORT_DTYPE))
        if self._bg_pending:  # before the rows that refer to them
            _append(self._ds["basin_events/image_bg"], np.stack(self._bg_pending))
            self._bg_pending.clear()
        n = self._buffered
        if n:
            # every column converted before any is appended: a bad value must not leave the
            # file's columns at different lengths
            arrays = [(c, np.asarray(c.pending, dtype=c.dtype).reshape(n, *c.shape)) for c in self._columns.values()]
            for c, a in arrays:
                # h5py's group lookup costs ~0.4 ms: use the handles kept since creation
                _append(self._ds[c.path], a)
                c.pending.clear()
            self._written += n
            self._buffered = 0
            h5.attrs["experiment:event count"] = self._written  # modifying (not adding) is SWMR-safe
        h5.flush()
        if not self._swmr:  # no events yet: keep the file closed (consistent) between flushes
            h5.close()
            self._h5 = None
        self._last_flush = time.monotonic()
        self._bytes = _size(self.path)

    def _check_open(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            from mimlsort.errors import StateError

            raise StateError(f"{self.path}: event writer is closed")

    # -- closing ---------------------------------------------------------------------------------
    def close(self, *, error: str = "") -> None:
        """Write what is queued, end SWMR mode and mark the file complete (idempotent)."""
        if self._closed:
            return
        error = error or self._run_error
        if error:
            self.log(f"run ended with an error: {error}")
        try:
            if self._failed is None:
                self.flush()
        finally:
            self._closed = True
            try:
                if self._h5 is not None:
                    self._h5.close()
            except Exception as err:  # noqa: BLE001 - after a failed write the handle may be unusable
                log.warning("%s: closing after a write failure: %s", self.path, err)
            self._h5 = None
        if self._io_broken:
            repair_event_file(self.path)
            return
        free = _free_bytes(self.path.parent)
        if free is not None and free < FINALIZE_MIN_FREE_BYTES:
            # marking the file complete writes its attributes, and a write that fails half-way
            # leaves a file nobody can open (another program filled the disk after the writer
            # stopped at "nearly full"); as it is, it opens as after a kill, with the last flush
            log.warning("%s: not marked complete: %.1f MiB free in %s; it holds the %d events of the last flush",
                        self.path, free / 2**20, self.path.parent, self._written)
            return
        self._finalize(error or (str(self._failed) if self._failed is not None else ""))

    def _finalize(self, error: str) -> None:
        import h5py

        try:
            with h5py.File(self.path, "r+", libver="latest", locking=False) as h5:
                with self._lock:
                    counters = dict(self._counters)
                if self._no_snapshot:
                    counters["events_without_roi_frame"] = self._no_snapshot
                h5.attrs["experiment:event count"] = self._written
                if not self._columns:  # a run without cells: dclab still wants an events group
                    h5.require_group("events")
                    h5.attrs["user:event image"] = "none (no events)"
                for k, v in counters.items():
                    v = v.item() if isinstance(v, np.generic) else v
                    if v != "":  # dclab warns about empty values
                        h5.attrs[f"user:counter {k}"] = v if isinstance(v, (int, float, str)) else str(v)
                g = h5["mimlsort"]
                g.attrs["counters"] = json.dumps(counters, default=lambda o: o.item() if isinstance(o, np.generic)
                                                 else str(o))
                g.attrs["ended"] = datetime.now().astimezone().isoformat()
                g.attrs["error"] = error
                g.attrs["complete"] = True
                h5.attrs["user:complete"] = 1
                duration, processing = _durations(counters, time.monotonic() - self._t0, self.meta, self._written)
                if duration is not None:  # left out where the run does not know it (a reanalysis)
                    h5.attrs["user:duration s"] = duration
                h5.attrs["user:processing time s"] = processing
            self._bytes = _size(self.path)
        except (OSError, RuntimeError) as err:  # h5py reports a failed close as RuntimeError
            raise DeviceError(f"{self.path}: finishing the event file failed: {_io_reason(err, self.path)}") from err

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=f"{exc_type.__name__}: {exc}" if exc_type else "")

    def __call__(self, records: Sequence) -> None:
        """So the writer can be a pipeline ``sink`` directly."""
        self.write(records)


def _durations(counters: dict, open_s: float, meta: RunMeta, events: int = 0) -> tuple[float | None, float]:
    """The run's duration (None where it does not know it) and the host time it took (s), for the
    event file. The duration is :func:`stated_duration_s`: never the time the file was open, which
    a reanalysis wrote as its duration (0.048 s for a measurement of seconds). The host's time is
    the run's own length when it says it (``run_s``; the file is opened before the kernels load),
    else the time the file was open."""
    run_s = counters.get("run_s")
    processing = run_s if isinstance(run_s, (int, float)) and math.isfinite(run_s) and run_s > 0 else open_s
    duration = stated_duration_s(counters, meta.camera, meta.measured)
    if not duration > 0:
        # a run that measured nothing (no frame came, one frame, or it ended before it reported its
        # counters) measured for 0 s, which it knows: stated, so that every run's file has the key
        # (a script reading it failed on these alone; before, they stated their processing time).
        # Left out only where the duration is not known: a reanalysis of a source that states none,
        # and a run that wrote cells but no counters (killed: its writer closes the file), which
        # stated 0 s for 324 cells over 4.2 s
        nothing = (meta.measured != "single image" and not events
                   and (counters.get("frames_in", 0) == 0 or counters.get("measured_s") == 0))
        return (0.0 if nothing else None), round(processing, 3)
    frames_own = duration == counters.get("measured_s")  # to the µs; a host's time to the ms
    return round(duration, 6 if frames_own else 3), round(processing, 3)


def stated_duration_s(counters: Mapping[str, Any], camera: str, measured: str) -> float:
    """A run's own duration from its counters, NaN where they do not say it: the frames' own time
    (``measured_s``: a replay's or simulation's, any run with an auto-stop duration, and a
    reanalysis's source's), else a live camera's host time (``run_s``), which is its measurement
    time. A replay's or simulation's ``run_s`` is the time it took to process (a replay as fast as
    it goes takes less than it recorded), and a reanalysis has none of its own."""

    def positive(key: str) -> float:
        v = counters.get(key)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else math.nan

    if positive("measured_s") > 0:
        return positive("measured_s")
    backend = camera.split(" ", 1)[0] if camera else ""
    if measured == "single image" or backend in ("", "replay", "synthetic", "reanalysis"):
        return math.nan
    return positive("run_s")


def source_duration_s(h5) -> float:
    """The duration an open RT-DC file states for its measurement (:func:`stated_duration_s`):
    only mimlsort's event files state one (dclab defines no such key; ``online_filter:target
    duration`` is an auto-stop's target), NaN for the others and where it does not know it."""
    g = h5.get("mimlsort")
    if g is None or _s(g.attrs.get("format", "")) != FORMAT:
        return math.nan
    try:
        counters = json.loads(_s(g.attrs.get("counters", "{}")))
        meta = json.loads(_s(g.attrs.get("run_meta", "{}")))
    except ValueError:
        return math.nan  # a damaged file's duration is unknown; the reanalysis reads its images
    if not isinstance(counters, dict) or not isinstance(meta, dict):
        return math.nan
    return stated_duration_s(counters, str(meta.get("camera") or ""), str(meta.get("measured") or ""))


def _io_reason(err: BaseException, path: Path) -> str:
    """What an I/O failure means, in words. HDF5's own message is a dump of its call ("file write
    failed: time = …\n, filename = …, errno = 27, error message = 'File too large', buf = 0x…")
    and h5py leaves ``errno`` unset: the errno and its message are read out of that text."""
    import errno
    import os
    import re

    text = " ".join(str(err).split())  # the dump breaks its line after the time stamp
    code = getattr(err, "errno", None)
    if code is None and (m := re.search(r"errno = (\d+)", text)):
        code = int(m.group(1))
    free = _free_bytes(path.parent)
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 2**20):
        what = "the disk quota is used up" if code == errno.EDQUOT else "the disk is full"
        return f"{what} ({(free or 0) / 2**20:.1f} MiB free in {path.parent})"
    if code == errno.EFBIG:
        return f"{path} reached the largest file its file system or a limit allows (a FAT32 drive: 4 GiB)"
    if code == errno.EROFS:
        return f"{path.parent} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM) or not os.access(path, os.W_OK):
        return f"{path} is not writable (permissions, or the file was made immutable)"
    if code is not None:
        return f"{os.strerror(code)} (errno {code})"
    m = re.search(r"error message = '([^']*)'", text)
    if m:
        return m.group(1)
    return text if len(text) <= 300 else text[:300] + " …"


def _free_bytes(folder: Path) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _reason_code(decision) -> int:
    if decision is None:
        return 0
    value = getattr(decision.reason, "value", decision.reason)
    try:
        return REASON_CODES.index(value)
    except ValueError:  # a reason newer than this table: keep it readable in the detail
        return 0


def _num(v) -> float:
    return float(v) if v is not None else math.nan


def _append(ds, data: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + len(data), axis=0)
    ds[n:] = data


def _text_dataset(group, name: str, text: str) -> None:
    import h5py

    # a variable-length string is fine here: written once, before SWMR mode starts
    group.create_dataset(name, data=text, dtype=h5py.string_dtype("utf-8"))


def _pretty_json(text: str) -> str:
    if not text:
        return ""
    return json.dumps(json.loads(text), indent=1, ensure_ascii=False)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def repair_event_file(path: str | Path) -> bool:
    """Make a file whose last write failed (disk full) openable again; True if it changed it.

    A write that failed for lack of space can leave the superblock's end-of-file address beyond
    the real end of the file, and HDF5 then refuses to open it as truncated. The data of the last
    successful flush all lie before the real end, so extending the file (sparsely: no disk space
    needed on common file systems) to the recorded address makes it readable again.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(48)
        size = os.stat(path).st_size
    except OSError:
        return False
    # superblock version 2/3 (libver "latest"): 8 signature, version, offset size, length size,
    # flags, then base, extension and end-of-file addresses
    if len(head) < 36 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3) or head[9] != 8:
        return False
    eof = int.from_bytes(head[28:36], "little")
    if eof <= size:
        return False
    try:
        os.truncate(path, eof)
    except OSError as err:
        log.warning("%s: could not extend the file to its recorded end (%d bytes): %s", path, eof, err)
        return False
    log.warning("%s: extended from %d to its recorded end %d bytes after a failed write", path, size, eof)
    return True


# ---------------------------------------------------------------------------------------------
# reading back


@dataclass(frozen=True)
class StoredRun:
    """What :func:`read_events` found besides the per-event arrays."""

    path: Path
    meta: RunMeta
    n_events: int
    complete: bool  # closed properly (False: the writer was killed; rows are those of the last flush)
    class_codes: dict[str, str]
    userdef: dict[str, str]
    reasons: tuple[str, ...]
    counters: dict[str, Any]
    acks: np.ndarray
    error: str = ""
    #: the trigger device's reports on single pulses (DEVICE_REPORT_DTYPE; empty in older files)
    device_reports: np.ndarray = field(default_factory=lambda: np.zeros(0, DEVICE_REPORT_DTYPE))
    run_log: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    crop_pixel_size_um: float = math.nan

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names


_READ_DEFAULTS: dict[str, tuple[Any, Any]] = {
    **{name: (np.float64, math.nan) for name in FEATURES},
    **{name: (np.int64, 0) for name in ("event_index", "track_id", "entry_frame", "exit_frame", "exit_host_ns",
                                        "quality", "is_target", "fired", "reason", "fire_late", "fire_ok")},
    "predicted": (np.int64, -1), "probability": (np.float32, math.nan),
    "fire_scheduled_ns": (np.int64, -1), "fire_sent_ns": (np.int64, -1),
    "fire_delay_us": (np.float64, math.nan), "fire_width_us": (np.float64, math.nan),
    "sort_window_ms": (np.float64, math.nan),
    "decision_detail": (object, ""), "fire_error": (object, ""), "fire_device": (object, ""),
}


def open_h5(path: str | Path):
    """Open an event file for reading, also one whose writer was killed (SWMR flags still set)."""
    import h5py
    import hdf5plugin  # noqa: F401

    path = check_input(path, what="an event file")  # a named pipe blocked HDF5 for ever
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as err:
        if "truncated file" in str(err):
            # shorter than HDF5 wrote it (a copy cut off, a disk that lost the end). Opened in
            # SWMR mode anyway, reading it retried metadata beyond the end for minutes on end
            raise DataFormatError(f"{path}: event file damaged or incomplete ({err})") from err
        try:  # a writer that died in SWMR mode leaves the consistency flags set
            return h5py.File(path, "r", libver="latest", swmr=True, locking=False)
        except OSError:
            raise DataFormatError(f"{path}: not a readable HDF5 event file: {err}") from err


def _foreign_rtdc_advice(h5, path: Path) -> str:
    """What to do with another program's RT-DC file (ShapeIn, CytoShot, dcnum), by what it holds:
    "open other RT-DC files with dclab" did not say that mimlsort measures their event images,
    nor, for an empty one, that there was nothing to measure."""
    ev = h5.get("events")
    images = ev.get("image") if ev is not None and hasattr(ev, "get") else None
    n = len(images) if images is not None and getattr(images, "shape", ()) else 0
    if images is not None and n:
        from acquisition.replay import event_file_sign

        if not event_file_sign(path):  # a recording of every frame, which reanalyze takes for events
            return (f"it is a recording of {n} frames: mimlsort replay {path} --out EVENTS.rtdc tracks its cells "
                    f"(then report or export EVENTS.rtdc)")
        return (f"its {n} event images can be measured by mimlsort reanalyze {path} --out OUT.rtdc (then report or "
                f"export OUT.rtdc), or the file opened with dclab")
    what = "holds no events" if images is not None or ev is None or not len(ev) else "holds no event images"
    return f"it {what} for mimlsort to measure (mimlsort reanalyze needs them); open it with dclab"


def read_events(path: str | Path, *, crops: bool = False) -> tuple[dict[str, np.ndarray], StoredRun]:
    """Per-event arrays of a mimlsort event file and what the file says about its run.

    The arrays have our names: every feature of ``tracking.features``, ``event_index``,
    ``track_id``, ``entry_frame``, ``exit_frame``, ``exit_host_ns``, ``quality``, ``predicted``
    (class index, -1: none), ``probability``, ``is_target``, ``fired``, ``reason`` (index into
    ``StoredRun.reasons``), ``decision_detail``, the ``fire_*`` fields, ``probabilities`` (N, K)
    and, with ``crops=True``, ``first_crop``/``last_crop``. A file whose writer was killed is read
    up to the shortest dataset (a kill during a flush can leave some a little longer).
    """
    path = Path(path)
    try:
        with open_h5(path) as h5:
            g = h5.get("mimlsort")
            if g is None or g.attrs.get("format") != FORMAT:
                raise DataFormatError(f"{path}: not a mimlsort event file (no /mimlsort group); "
                                      + _foreign_rtdc_advice(h5, path))
            version = int(g.attrs.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise DataFormatError(f"{path}: event file format {version} is newer than this mimlsort "
                                      f"reads ({FORMAT_VERSION}); update mimlsort")
            try:
                texts = {k: _s(g[k][()]) for k in _TEXT_FIELDS if k in g}
                meta = RunMeta.from_json(_s(g.attrs["run_meta"]), **texts)
            except (KeyError, ValueError, TypeError) as err:
                raise DataFormatError(f"{path}: run metadata unreadable: {err}") from err
            ev = g.get("events")
            if ev is None:
                raise DataFormatError(f"{path}: no /mimlsort/events group (the file is damaged)")
            names = [k for k in ev if crops or k not in ("first_crop", "last_crop")]
            for k in names:
                if getattr(ev[k], "refresh", None) and h5.swmr_mode:
                    ev[k].refresh()
            lengths = [ev[k].shape[0] for k in names]
            n = min(lengths) if lengths else 0
            if lengths and len(set(lengths)) > 1:
                log.warning("%s: datasets hold %d..%d rows (writer killed mid-flush); reading %d",
                            path, n, max(lengths), n)
            out: dict[str, np.ndarray] = {}
            for k in names:
                a = ev[k][:n]
                if a.dtype.kind == "S":
                    a = np.array([b.decode("utf-8", "replace") for b in a], dtype=object)
                out[k] = a
            for k, (dtype, fill) in _READ_DEFAULTS.items():  # a run without cells has no datasets yet
                if k not in out:
                    out[k] = np.full(n, fill, dtype=dtype)
            if "probabilities" not in out:
                out["probabilities"] = np.zeros((n, len(meta.class_names)), np.float32)
            shape = np.shape(out["probabilities"])
            if len(shape) != 2 or shape[1] != len(meta.class_names):
                raise DataFormatError(f"{path}: /mimlsort/events/probabilities is {shape}, not one column per class "
                                      f"of {list(meta.class_names)} (the file is damaged)")
            acks = g["acks"][:] if "acks" in g else np.zeros(0)
            reports = g["device_reports"][:] if "device_reports" in g else np.zeros(0, DEVICE_REPORT_DTYPE)
            run_log = tuple(b.decode("utf-8", "replace") for b in h5["logs/mimlsort-run"][:]) \
                if "logs/mimlsort-run" in h5 else ()
            crop_px = float(ev["first_crop"].attrs.get("pixel_size_um", math.nan)) if "first_crop" in ev else math.nan
            stored = StoredRun(
                path=path, meta=meta, n_events=n, complete=bool(g.attrs.get("complete", False)),
                class_codes=json.loads(_s(g.attrs.get("class_codes", "{}"))),
                userdef=json.loads(_s(g.attrs.get("userdef", "{}"))),
                reasons=tuple(json.loads(_s(g.attrs.get("reasons", "[]")))),
                counters=json.loads(_s(g.attrs.get("counters", "{}"))),
                acks=acks, device_reports=reports, error=_s(g.attrs.get("error", "")), run_log=run_log,
                attrs={k: (_s(v) if isinstance(v, bytes) else v) for k, v in h5.attrs.items()},
                crop_pixel_size_um=crop_px,
            )
    except DataFormatError:
        raise
    except (KeyError, RuntimeError, OSError, ValueError) as err:  # h5py's words for a damaged file
        raise DataFormatError(f"{path}: event file damaged or incomplete ({type(err).__name__}: {err})") from err
    return out, stored


def _s(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------------------------------------
# benchmark (``mimlsort bench storage``)


def bench_storage(seconds: float = 3.0, n_frames: int | None = None, compression: str = "all") -> dict:
    """Write synthetic records (256x96 ROI frames, 48 px crops, 2 classes) as fast as possible.

    Batches of 32 records; the writer flushes by itself once a second, as in a run. Reports
    events/s, MB/s, bytes per event and the time of one ``write`` call (p50, and the maximum,
    which includes a flush), so it is visible whether storage keeps up with >= 300 cells/s, and
    the process's resident memory after the first flush and at the end (a writer of a long run
    must not grow with the events it has written).
    """
    import tempfile

    from app.records import CellRecord
    from app.sorting import Decision, Reason
    from tracking.events import CellEvent

    @dataclass(frozen=True)
    class _Snap:
        image: np.ndarray
        background: np.ndarray
        mask: np.ndarray
        frame_id: int
        pos_x_px: float
        pos_y_px: float

    w_, h_ = 256, 96
    rng = np.random.default_rng(0)
    bg = (110 + 8 * np.sin(np.arange(w_) / 17.0)[None, :] + np.zeros((h_, 1))).astype(np.uint8)
    yy, xx = np.mgrid[:h_, :w_]
    pool = []
    for i in range(64):
        cx, cy = rng.uniform(60, 200), rng.uniform(35, 60)
        mask = ((xx - cx) / 11) ** 2 + ((yy - cy) / 7) ** 2 <= 1
        img = bg.copy()
        img[mask] = (img[mask] * 0.7 + rng.normal(0, 3, mask.sum())).clip(0, 255).astype(np.uint8)
        img = (img.astype(np.int16) + rng.integers(-2, 3, img.shape)).clip(0, 255).astype(np.uint8)
        crop = np.ascontiguousarray(img[24:72, int(cx) - 24:int(cx) + 24])
        feats = {n: float(rng.random()) for n in FEATURES}
        p = np.array([rng.random(), 0], np.float32)
        p[1] = 1 - p[0]
        pool.append((feats, crop, _Snap(img, bg, mask, i, cx, cy), p))
    meta = RunMeta(pixel_size_um=0.5, fps=10000, roi=(w_, h_), class_names=("a", "b"), sample="bench")
    n_target = n_frames or 0
    flushes = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.rtdc"
        with EventWriter(path, meta=meta, compression=None if compression == "none" else "zstd",
                         compress_images=compression == "all") as w:
            t0 = time.perf_counter()
            n = 0
            rss_first, n_first = 0.0, 0
            while (n < n_target) if n_target else (time.perf_counter() - t0 < seconds):
                batch = []
                for _ in range(32):
                    feats, crop, snap, p = pool[n % len(pool)]
                    ev = CellEvent(n, n, feats, crop, crop, 0.5, n, n + 5, n, 0, {"snapshot": snap})
                    batch.append(CellRecord(ev, p, Decision(n, n % 3 == 0, Reason.FIRED, "a", float(p[0]), True)))
                    n += 1
                t1 = time.perf_counter()
                w.write(batch)  # flushes by itself once a second, as in a run
                flushes.append(time.perf_counter() - t1)
                if not rss_first and time.perf_counter() - t0 > 1.5:
                    rss_first, n_first = _rss_mb(), n
            rss_end = _rss_mb()
            w.close()
            dt = time.perf_counter() - t0
            size = w.bytes_written
    fl = np.array(flushes) * 1000
    return {"events": n, "seconds": round(dt, 3), "events_per_s": round(n / dt, 1),
            "mb_per_s": round(size / dt / 1e6, 2), "bytes_per_event": int(size / max(n, 1)),
            "write_ms_p50": round(float(np.percentile(fl, 50)), 3),
            "write_ms_max_incl_flush": round(float(fl.max()), 2),
            "batch": 32, "compression": compression,
            "rss_mb_after_first_flush": round(rss_first, 1), "rss_mb_end": round(rss_end, 1),
            "rss_growth_mb_per_100k_events": round((rss_end - rss_first) / max(n - n_first, 1) * 1e5, 1)
            if rss_first else None}


def _rss_mb() -> float:
    """Resident memory of this process (MB); 0 where /proc is not there."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
