"""Segment (and, where the model allows, classify) the event images of existing RT-DC files.

ShapeIn, CytoShot and dcnum store one image per event, not a cell's passage through a
constriction, so the mechanical MIML features that need tracking (transit time, v_max, DIR) do not
exist for them. Reanalysis measures what one image gives — `deform`, `area_um`, DI of the moment
ellipse, brightness — for the blob at the recorded position, and classifies only with a model
whose features are all among those; any other model is refused with the list of missing features.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mimlsort.errors import ConfigError, DataFormatError, ModelError
from mimlsort.inputs import attr_number, check_input, open_hdf5

log = logging.getLogger(__name__)

#: the stages ``reanalyze`` reports its progress in
MEASURING, WRITING = "measuring", "writing"
#: cells classified and written between two progress reports
WRITE_CHUNK = 256

#: features a single event image provides
SINGLE_IMAGE_FEATURES = ("di", "deform", "area_um", "bright_avg", "bright_sd", "diameter_um", "bg_off")


@dataclass(frozen=True, slots=True)
class ReanalysisResult:
    path: Path
    events_in: int
    events_out: int
    not_found: int
    model: str

    def summary(self) -> str:
        return (f"{self.events_in} event images -> {self.events_out} cells measured "
                f"({self.not_found} without a blob of their own near the recorded position)"
                + (f", classified with {self.model}" if self.model else "") + f" -> {self.path}")


@dataclass(frozen=True, slots=True)
class Segmentation:
    """How event images are segmented: RT-DC's signed threshold (negative: dark pixels only,
    image − background < threshold) and the closing applied to the mask (kernel size, px)."""

    threshold: float
    closing_px: int
    source: str  # where the values come from, for the file's log
    clear_border: bool = False  # objects touching the image's edge removed before the closing (dcnum's cle=1)


def source_segmentation(attrs, path: Path | str = "") -> Segmentation:
    """The segmentation the recording software used, from its metadata: ShapeIn's
    ``online_contour:bin threshold``/``bin kernel``, dcnum's ``pipeline:dcnum segmenter``
    (``thresh:t=-6…clo=2``: a disk of radius 2), CytoShot's ``user:dcevent ppid segmenter``,
    mimlsort's own ``user:segmentation threshold``/``closing`` (signed; the tracker closes nothing).
    RT-DC thresholds on the dark side; without a recorded value, −6 and a 5 px closing (ShapeIn's
    defaults). Reanalysing with anything else measures a different object (bright halos counted
    as cell): area +50–120% and deform −0.03…−0.2 on the shared real files."""
    import re

    def text(v) -> str:
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    threshold = closing = None
    clear_border = False
    origin = []
    # mimlsort's own files (tracked, or reanalysed) say it signed, and the tracker closes nothing:
    # with ShapeIn's 5 px closing, 15 of 98 tracked cells came out more than 5% off in area
    try:
        v = float(attrs.get("user:segmentation threshold", "nan"))
        if math.isfinite(v) and v != 0:
            threshold = v
            origin.append("user:segmentation threshold")
        v = float(attrs.get("user:segmentation closing", "nan"))
        if math.isfinite(v) and v >= 0:
            closing = int(v)
            origin.append("user:segmentation closing")
        clear_border = float(attrs.get("user:segmentation clear border", 0)) == 1
    except (TypeError, ValueError):
        pass  # an edited file's text: the RT-DC keys or defaults below
    v = attrs.get("online_contour:bin threshold")
    if threshold is None and v is not None and int(v) != 0:
        threshold = -abs(float(v))  # old ShapeIn files store it unsigned; it was the dark side
        origin.append("online_contour:bin threshold")
    v = attrs.get("online_contour:bin kernel")
    if closing is None and v is not None:
        closing = int(v)
        origin.append("online_contour:bin kernel")
    for key in ("pipeline:dcnum segmenter", "user:dcevent ppid segmenter"):
        seg = attrs.get(key)
        if seg is None:
            continue
        seg = text(seg)
        m = re.search(r"(?:^|[:^])t=(-?\d+(?:\.\d+)?)", seg)
        if threshold is None and m:
            threshold = -abs(float(m.group(1)))
            origin.append(key)
        m = re.search(r"clo=(\d+)", seg)
        if closing is None and m:
            closing = 2 * int(m.group(1)) + 1
            origin.append(key)
        # dcnum clears the border before it closes: closed with it, a cell cut by the ROI's edge
        # merged with the one beside it (CytoShot's test file: 132 µm² for the 98 it recorded)
        if re.search(r"(?:^|[:^])cle=(?:1|True)(?:$|\^)", seg):
            clear_border = True
    src = f"{path}: " if path else ""
    return Segmentation(-6.0 if threshold is None else threshold, 5 if closing is None else closing,
                        src + (", ".join(dict.fromkeys(origin)) if origin else "RT-DC defaults (not in the file)"),
                        clear_border)


def _read_input(path: Path):
    import h5py
    import hdf5plugin  # noqa: F401  (registers the filters dclab/dcnum write with)

    check_input(path, what="an RT-DC file")  # a named pipe blocked for ever
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    try:
        fh = open_hdf5(path)
    except (OSError, FileNotFoundError) as e:
        raise DataFormatError(f"{path}: cannot be opened as an RT-DC (HDF5) file: {e}") from None
    try:
        ev = fh.get("events")
        ok = ev is not None and "image" in ev
    except BaseException:  # a damaged file can fail here too: close it all the same
        fh.close()
        raise
    if not ok:
        fh.close()
        raise DataFormatError(f"{path}: has no events/image to reanalyze")
    return fh


class _MappedBackgrounds:
    """``image_bg`` of an internal basin (one image per distinct background and a ``basinmapN``
    column mapping each event to one), indexed by event like ``events/image_bg``."""

    def __init__(self, data, mapping: np.ndarray):
        self.data, self.mapping = data, mapping

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[int(self.mapping[i])]


def _internal_basin_bg(fh, images, src: Path) -> _MappedBackgrounds | None:
    """The backgrounds an event file keeps in a dclab internal basin (``/basins/*`` naming
    ``image_bg``, ``/basin_events/image_bg`` and ``events/basinmap0``, as mimlsort's event writer
    and dcnum store them), or None where it has none. Without this, mimlsort's own event files
    (which replay and track send here) were segmented against the median of their event images,
    cells in the constriction and all: area -10% (median) against the tracker's own masks, and
    cells lost."""
    import json

    import h5py

    basins = fh.get("basins")
    if not isinstance(basins, h5py.Group):
        return None
    n, h, w = images.shape
    for key in basins:
        ds = basins[key]
        if not isinstance(ds, h5py.Dataset):
            continue
        try:
            lines = ds[()]
            lines = [lines] if np.ndim(lines) == 0 else list(lines)
            spec = json.loads("".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                                      for v in lines))
        except (ValueError, TypeError, OSError):
            continue
        if not isinstance(spec, dict) or spec.get("type") != "internal" or spec.get("format") != "h5dataset" \
                or "image_bg" not in (spec.get("features") or ()):
            continue
        mapping = spec.get("mapping")
        for path in spec.get("paths") or ():
            data = fh.get(f"{path}/image_bg") if isinstance(path, str) else None
            if not isinstance(data, h5py.Dataset) or mapping not in fh["events"]:
                continue
            idx = fh["events"][mapping]
            if data.ndim != 3 or tuple(data.shape[1:]) != (h, w) or idx.shape != (n,):
                raise DataFormatError(f"{src}: the image_bg basin {path}/image_bg {data.shape} or its map "
                                      f"events/{mapping} {idx.shape} does not fit events/image {images.shape} "
                                      f"(a damaged or edited file)")
            idx = idx[:]
            if n and (idx.min() < 0 or idx.max() >= data.shape[0]):
                raise DataFormatError(f"{src}: events/{mapping} maps events to backgrounds outside "
                                      f"{path}/image_bg's {data.shape[0]} (a damaged or edited file)")
            return _MappedBackgrounds(data, idx)
    return None


def reanalyze(src: str | Path, dst: str | Path, *, model: str | None = None, threshold: float | None = None,
              closing_px: int | None = None, bit_depth: int | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> ReanalysisResult:
    """Measure every event image of ``src`` into the event file ``dst``. ``threshold`` (RT-DC's
    signed convention) and ``closing_px`` default to what ``src`` was segmented with
    (:func:`source_segmentation`); the experiment's metadata (flow, channel, medium, temperature,
    sample, date) are carried over, so dclab derives the same quantities from both files.
    ``progress(stage, done, total)`` is called as the event images are measured (stage
    :data:`MEASURING`, ``total`` the event images) and then as the cells are classified and
    written (:data:`WRITING`, ``total`` the cells); the second stage reaches its total only once
    the file is whole under its name."""
    from datetime import datetime

    import h5py

    from app.records import CellRecord
    from app.storage import EventWriter, RunMeta, setup_from_attrs, source_duration_s
    from tracking.events import CellEvent, Quality, Snapshot
    from tracking.background import frame_light
    from tracking.shapes import measure

    from mimlsort.outputs import check_output_file, empty_file

    src, dst = Path(src), Path(dst)
    check_output_file(dst, inputs=(src,))  # never the input, never an existing measurement
    if dst.suffix != ".rtdc":  # before the work: the event writer's own check saw only the temporary name
        raise DataFormatError(f"{dst}: event files must end in .rtdc (dclab and DCscope go by the suffix)")
    replace_empty = empty_file(dst)  # made for the output (`mktemp --suffix .rtdc`): nothing to lose
    clf = None
    ignored: tuple[str, ...] = ()  # features an image-only model lists but no single image gives
    if model and model != "none":
        from app.session import resolve_model_path
        from inference.classifier import Classifier

        clf = Classifier(resolve_model_path(model), provider="cpu")
        missing = [f for f in clf.spec.feature_names if f not in SINGLE_IMAGE_FEATURES]
        if not clf.spec.uses_features:  # fed, as the model's input needs them, but ignored: NaN will do
            ignored, missing = tuple(missing), []
        if missing:
            raise ModelError(f"{model}: needs features {missing} that single event images do not provide "
                             f"(available: {', '.join(SINGLE_IMAGE_FEATURES)}); use `mimlsort replay` on "
                             f"every-frame recordings for MIML models")
    with _read_input(src) as fh:
        ev = fh["events"]
        images = ev["image"]
        if images.ndim != 3 or images.dtype.kind != "u" or images.dtype.itemsize not in (1, 2):
            # RGB (N,H,W,3) or a single row per event: the moment ellipse needs grey (N,H,W) images
            raise DataFormatError(f"{src}: events/image holds {images.dtype} of shape {images.shape}; reanalysis "
                                  f"takes grey images, uint8 or uint16, of shape (events, height, width)")
        n = images.shape[0]
        depth = _image_bit_depth(images.dtype, fh.attrs, bit_depth, src)
        # thresholds are 8-bit grey levels (RT-DC's), scaled to the images' range as the tracker
        # does: unscaled, 12-bit images segmented their noise (every event the whole ROI, 2274 µm²),
        # and stored unshifted as 8-bit they came out white
        grey = 2.0 ** (depth - 8)
        if n == 0:
            raise DataFormatError(f"{src}: holds no events to reanalyse")
        attrs = dict(fh.attrs)
        # mimlsort's recorder wrote it, and no pipeline made events of it since (dcnum copies every
        # root attribute of its input into its output, which then holds tracked events)
        if ("user:recorder dropped frames" in attrs and "pos_x" not in ev
                and not any(str(k).startswith("pipeline:") for k in attrs)):
            # every frame of a channel, not one image per cell: each frame was measured as a cell
            # (6,063 "cells" from a recording of 83)
            raise DataFormatError(f"{src}: a raw recording of every frame (mimlsort's recorder), not event images; "
                                  f"track it with `mimlsort replay {src.name} --out EVENTS.rtdc`")
        px = _positive(attrs, "imaging:pixel size", src)
        if not px:
            raise DataFormatError(f"{src}: no 'imaging:pixel size' in the metadata")

        def column(name: str) -> np.ndarray | None:
            # one value per event image: a shorter column ended the loop with an IndexError
            if name not in ev:
                return None
            ds = ev[name]
            want = images.shape if name == "image_bg" else (n,)
            if not isinstance(ds, h5py.Dataset) or ds.shape != want:
                raise DataFormatError(f"{src}: events/{name} has shape {getattr(ds, 'shape', None)}, expected {want} "
                                      f"like events/image (a damaged or edited file)")
            return ds if name == "image_bg" else ds[:]

        fps = _positive(attrs, "imaging:frame rate", src)
        if not fps and column("frame") is not None and column("time") is not None and n > 1:  # CytoShot leaves the key out
            df, dt = np.diff(column("frame").astype(float)), np.diff(column("time").astype(float))
            ok = (df > 0) & (dt > 0)
            fps = float(np.median(df[ok] / dt[ok])) if ok.any() else 0.0
        if not fps:
            raise DataFormatError(f"{src}: no 'imaging:frame rate' in the metadata and none derivable from frame/time")
        seg = source_segmentation(attrs, src.name)
        if threshold is not None:
            seg = Segmentation(float(threshold), seg.closing_px, "--threshold", seg.clear_border)
        if closing_px is not None:
            seg = Segmentation(seg.threshold, int(closing_px), seg.source + "; closing from --closing", seg.clear_border)
        times = column("time")
        times = times.astype(float) if times is not None else None
        bgs = column("image_bg")
        if bgs is None:
            bgs = _internal_basin_bg(fh, images, src)
        if bgs is None:
            k = min(n, 64)
            bg_all = np.median(images[:k], axis=0).astype(images.dtype)
        pos_x, pos_y = column("pos_x"), column("pos_y")
        offsets = column("bg_off")
        frames = column("frame")
        frames = np.arange(n) if frames is None else frames
        # which source event each cell was measured in, in the column dclab has for it: the
        # online software's numbering, kept as a dclab export of a subset keeps it, else the
        # source's own index (1-based). Only /mimlsort/events/track_id said it, which dclab
        # does not read
        online = column("index_online")
        if online is not None and np.all(np.isfinite(online)) and np.all((online >= 0) & (online < 2**32)) \
                and np.all(online == np.round(online)):
            online, online_note = online.astype(np.int64), "the source's index_online"
        else:
            online, online_note = np.arange(1, n + 1), "the source event's index (1-based; it has no index_online)"
        h, w = images.shape[1:]
        if closing_px is not None and not 0 <= closing_px < min(h, w):
            # a kernel past the image closed it into one blob: 3 of 8 events measured, nothing said
            raise ConfigError("--closing", f"must be 0 to {min(h, w) - 1} px (the event images are {w}x{h} px), "
                                           f"got {closing_px}")
        crop = max(8, int(round(40.0 / px)) // 2 * 2)
        # the recorded object's mask must reach its recorded position (its centroid lies within half
        # a pixel of our mask on every shared file): the nearest centroid within 10 µm took a cell
        # the source had left out (at the ROI's edge) for a speck recorded 4 µm beside it, and
        # wrote the cell's 37-47 µm² as the speck's (0.5 µm²) measurement
        reach_px = max(1.0 / px, 1.5)
        records = []
        not_found = 0
        taken: set[tuple[int, int, int]] = set()  # (frame, blob position): each blob is one cell
        for i in range(n):
            if progress is not None:
                progress(MEASURING, i, n)  # here: the events left out below by `continue` count as done too
            try:
                img = np.asarray(images[i])
                bg = np.asarray(bgs[i]) if bgs is not None else bg_all
            except (OSError, ValueError) as e:
                raise DataFormatError(f"{src}: event {i}: image cannot be read: {e}") from None
            # segmented as the source did: against image_bg plus the offset it recorded (dcnum's
            # flicker correction; the median area error against dcnum's own 3.4% -> 2.1%), or
            # image_bg alone. The offset is measured where the source has none (the event file's
            # bg_off, which dclab adds to image_bg: a NaN there made its bright_bc_* NaN)
            seg_bg = bg
            if offsets is not None and math.isfinite(offsets[i]):
                off = float(offsets[i])
                info = np.iinfo(bg.dtype)
                seg_bg = np.clip(bg.astype(np.int64) + int(round(off)), info.min, info.max).astype(bg.dtype)
            else:
                off = float(frame_light(img, bg, 0, h, abs(seg.threshold) * grey)[1])
            shapes, labels = measure(img, seg_bg, px, threshold=seg.threshold * grey, closing_px=seg.closing_px,
                                     clear_border=seg.clear_border, return_labels=True)
            if not shapes:
                not_found += 1
                continue
            if pos_x is not None and pos_y is not None and math.isfinite(pos_x[i]) and math.isfinite(pos_y[i]):
                k = _blob_at(labels, len(shapes), pos_x[i] / px, pos_y[i] / px, reach_px)
                if k < 0:
                    not_found += 1
                    continue
            else:
                k = 0  # the largest blob
            s = shapes[k]
            # the same blob recorded twice in one frame (a speck event inside a cell matched to the
            # cell): the cell is measured once
            key = (int(frames[i]), int(round(s.x_um / px)), int(round(s.y_um / px)))
            if key in taken:
                not_found += 1
                continue
            taken.add(key)
            feats = {k: math.nan for k in ("transit_time_ms", "v_max_mm_s", "dir_per_ms", *ignored)}
            t_s = float(times[i]) if times is not None and math.isfinite(times[i]) else float(frames[i]) / fps
            feats.update({"di": s.di, "deform": s.deform, "area_um": s.area_um, "bright_avg": s.bright_avg,
                          "bright_sd": getattr(s, "bright_sd", math.nan),
                          # tracking/features.py: the diameter of the filled mask's area, not the hull's
                          "diameter_um": 2.0 * math.sqrt(s.area_px / math.pi) * px,
                          "pos_y_um": s.y_um, "entry_time_ms": math.nan, "exit_time_ms": t_s * 1e3, "bg_off": off})
            cx, cy = s.x_um / px, s.y_um / px
            c = _crop(img, bg, cx, cy, crop)
            if depth > 8:  # the model's input is 8-bit grey, as the tracker's crops are
                c = np.clip(c >> (depth - 8), 0, 255).astype(np.uint8)
            mask = labels == k + 1
            snap = Snapshot(image=img, background=bg, mask=mask, frame_id=int(frames[i]), pos_x_px=cx, pos_y_px=cy)
            event = CellEvent(len(records), i, feats, c, c, px, int(frames[i]), int(frames[i]), 0,
                              Quality.INCOMPLETE, extra={"index_online": int(online[i])}, snapshot=snap)
            records.append(event)
        if progress is not None:
            progress(MEASURING, n, n)
        if not records:
            # an event file without an event only stood in the way of the rerun with other settings
            # ("exists and holds a measurement"), and exit code 0 said all was well
            raise DataFormatError(f"{src}: none of its {n} event images holds an object at its recorded position "
                                  f"when segmented with threshold {seg.threshold:g} and closing {seg.closing_px} px "
                                  f"({seg.source}); nothing written: give the segmentation (--threshold, --closing)"
                                  + (f" or, if its grey levels use fewer than {depth} bits, the bit depth (--bit-depth)"
                                     if depth > 8 else ""))
        from app.session import file_sha256

        setup = setup_from_attrs(attrs)
        temp_note = ""
        if "temperature_c" not in setup and "temp" in ev:  # dclab's emodulus reads one or the other
            temp = np.asarray(column("temp"), float)
            if np.isfinite(temp).any():
                setup["temperature_c"] = float(np.nanmedian(temp))
                temp_note = f"; setup:temperature is the median of the source's temp feature ({setup['temperature_c']:.2f} °C)"
        meta = RunMeta(pixel_size_um=px, fps=fps, roi=(w, h), sample=_text(attrs.get("experiment:sample")) or src.stem,
                       run_index=max(1, _int(attrs.get("experiment:run index"), 1)),
                       roi_position=(max(0, _int(attrs.get("imaging:roi position x"), 0)),
                                     max(0, _int(attrs.get("imaging:roi position y"), 0))),
                       started=_started(attrs) or datetime.now(),
                       class_names=tuple(clf.classes) if clf is not None else (),
                       # the userdef columns dclab shows: only what one image gives (transit time,
                       # v_max, DIR ... were NaN for every cell, and dclab's "remove invalid
                       # events" then removed every event)
                       feature_names=SINGLE_IMAGE_FEATURES,
                       model_spec_json=clf.spec.to_json() if clf is not None else "",
                       model_sha256=file_sha256(clf.path) if clf is not None else "",
                       model_name=str(model or ""),
                       # no configuration: the default one it stored told of a synthetic camera at 4,000
                       # fps and target classes ["hct116"], none of which the reanalysis had; what it used
                       # is in the segmentation fields below
                       config_toml="",
                       camera=f"reanalysis of {src.name}", camera_clock=False, measured="single image",
                       segmentation_threshold=seg.threshold, segmentation_closing_px=seg.closing_px,
                       segmentation_clear_border=seg.clear_border, bit_depth=depth, **setup)
        # written under a temporary name and renamed when whole: an interrupted reanalysis leaves
        # neither a partial file that looks finished nor one that blocks the command's next run
        fd, name = tempfile.mkstemp(prefix=dst.stem + ".", suffix=".partial.rtdc", dir=dst.parent)
        os.close(fd)
        part = Path(name)
        os.chmod(part, 0o666 & ~_umask())  # mkstemp makes it private; the result reads as the user's other files do
        try:
            with EventWriter(part, meta=meta, overwrite=True) as wr:
                wr.log(f"reanalysis of {src} ({n} event images)")
                wr.log(f"segmentation: threshold {seg.threshold:g}, closing {seg.closing_px} px"
                       + (", objects at the image's edge removed before it" if seg.clear_border else "")
                       + f" ({seg.source})")
                wr.log("experiment metadata (date, sample, setup) copied from the source" + temp_note)
                wr.log(f"index_online: {online_note}")
                # the measurement's duration is the source's where it states it; the reanalysis's
                # own (the time its file was open) was written as the duration
                duration = source_duration_s(fh)
                if duration > 0:
                    wr.note_counters({"measured_s": duration})
                    wr.log(f"duration: the source's, {duration:g} s")
                # in chunks, each counted: the bar stood at 100% while a large file's cells were
                # classified and written
                for i0 in range(0, len(records), WRITE_CHUNK):
                    chunk = records[i0:i0 + WRITE_CHUNK]
                    probs = clf.classify(chunk) if clf is not None else np.zeros((len(chunk), 0), np.float32)
                    wr.write([CellRecord(e, p, None, None) for e, p in zip(chunk, probs)])
                    if progress is not None and i0 + len(chunk) < len(records):
                        progress(WRITING, i0 + len(chunk), len(records))
            try:
                if replace_empty and empty_file(dst):
                    os.replace(part, dst)
                else:
                    os.link(part, dst)  # fails, rather than replaces, if the name was taken meanwhile
            except FileExistsError:
                raise DataFormatError(f"{dst}: appeared while the reanalysis ran; refusing to overwrite it "
                                      f"(the result is discarded)") from None
        finally:
            part.unlink(missing_ok=True)
    if progress is not None:
        progress(WRITING, len(records), len(records))  # the file is whole and named
    return ReanalysisResult(dst, n, len(records), not_found, str(model or ""))


def _image_bit_depth(dtype: np.dtype, attrs, given: int | None, src: Path) -> int:
    """The bits the event images' grey levels use: ``given`` (--bit-depth), else the file's
    ``user:bit depth``, else the dtype's."""
    bits = 8 * np.dtype(dtype).itemsize
    if given:
        if not 8 <= int(given) <= bits:
            raise DataFormatError(f"{src}: --bit-depth {given} does not fit its {np.dtype(dtype)} images (8..{bits})")
        return int(given)
    v = attrs.get("user:bit depth")
    try:
        v = int(v) if v is not None else 0
    except (TypeError, ValueError):
        v = 0
    return v if 8 <= v <= bits else bits


def _blob_at(labels: np.ndarray, n: int, x_px: float, y_px: float, reach_px: float) -> int:
    """The index of the blob (label − 1) whose mask comes nearest (x_px, y_px), or −1 where none
    comes within ``reach_px``."""
    ys, xs = np.nonzero(labels)
    if not len(ys):
        return -1
    d2 = (xs - x_px) ** 2 + (ys - y_px) ** 2
    best = np.full(n + 1, np.inf)
    np.minimum.at(best, labels[ys, xs], d2)
    k = int(np.argmin(best[1:]))
    return k if best[k + 1] <= reach_px ** 2 else -1


def _positive(attrs, key: str, src: Path) -> float:
    """The metadata value ``key`` as a number > 0; 0 when it is missing or 0 (the caller derives
    or refuses it); a DataFormatError naming the file and key for text, NaN, inf or one below 0."""
    v = attrs.get(key)
    if v is None:
        return 0.0
    f = attr_number(v)
    if f == 0:
        return 0.0
    if not (0 < f < math.inf):
        raise DataFormatError(f"{src}: '{key}' is {_text(v)!r}, not a number > 0: correct it in the file's "
                              f"metadata (root attributes, e.g. with h5py)")
    return f


def _text(v) -> str:
    if v is None:
        return ""
    return (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).strip()


def _umask() -> int:
    """The process's umask, read without setting it where Linux says it (setting it to read it
    would change it for every thread meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _int(v, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _started(attrs):
    """The source's measurement date and time (``experiment:date``/``time``), or None."""
    from datetime import datetime

    try:
        return datetime.strptime(f"{_text(attrs.get('experiment:date'))} {_text(attrs.get('experiment:time'))}",
                                 "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None


def _crop(img: np.ndarray, bg: np.ndarray, cx: float, cy: float, size: int) -> np.ndarray:
    h, w = img.shape
    out = np.empty((size, size), img.dtype)
    x0, y0 = int(round(cx)) - size // 2, int(round(cy)) - size // 2
    ys = np.clip(np.arange(y0, y0 + size), 0, h - 1)
    xs = np.clip(np.arange(x0, x0 + size), 0, w - 1)
    inside = ((np.arange(y0, y0 + size) >= 0) & (np.arange(y0, y0 + size) < h))[:, None] & \
             ((np.arange(x0, x0 + size) >= 0) & (np.arange(x0, x0 + size) < w))[None, :]
    out[:] = np.where(inside, img[np.ix_(ys, xs)], bg[np.ix_(ys, xs)])
    return out
