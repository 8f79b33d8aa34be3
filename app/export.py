"""Exports of an event file: a CSV table, and the MIML authors' training format.

* :func:`export_csv` — one row per cell: identity, times, quality, every feature (units in the column
  names or in ``tracking.features``), class probabilities, the sort decision and the trigger record.
* :func:`export_miml` — ``<name>_data.csv`` with the authors' columns ``cell ID,Cell Type,Max
  Velocity,Transition Time,Deformability`` (one row per crop PNG, two per cell) and the PNGs
  ``<ID>_Firstcrop.png``/``<ID>_Lastcrop.png`` in ``<name>/``, the layout of their published sample.
  Their values are scaled to 0–1 per recording batch; we do the same per exported run by default
  and write the scaling into ``miml_export.json`` so it can be undone.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.report import outlet_cells
from app.storage import read_events
from mimlsort.errors import DataFormatError
from tracking.events import NOT_FOR_TRAINING, Quality
from tracking.features import FEATURES

#: the authors' CSV columns, in their order, and the features they hold
MIML_COLUMNS: tuple[tuple[str, str], ...] = (("Max Velocity", "v_max_mm_s"), ("Transition Time", "transit_time_ms"),
                                             ("Deformability", "di"))
_IDENTITY = ("event_index", "track_id", "entry_frame", "exit_frame", "exit_host_ns")
#: how the features CSV begins (an existing file is replaced only if it does: it is an earlier export)
CSV_HEADER_START = ",".join(("cell", *_IDENTITY))
_FIRE = ("fire_scheduled_ns", "fire_sent_ns", "fire_delay_us", "fire_width_us", "fire_late", "fire_ok",
         "fire_device", "fire_error")


def quality_names(q: int) -> str:
    """``"OK"`` or the set flags joined by ``|`` (e.g. ``DOUBLET|BORDER``)."""
    q = int(q)
    if q == 0:
        return "OK"
    return "|".join(f.name for f in Quality if f.value and q & f.value)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        # 10 digits: a time in ms keeps µs after a day (7 digits had 1 ms steps after an hour)
        return "" if math.isnan(v) else f"{float(v):.10g}"
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode("utf-8", "replace")
    return str(v)


def export_csv(events_path: str | Path, out: str | Path) -> int:
    """Write one CSV row per cell of ``events_path`` to ``out``; returns the number of rows."""
    f, run = read_events(events_path)
    n = run.n_events
    classes = run.class_names
    probs = f["probabilities"]
    outlet = outlet_cells(f, run)
    cols: list[tuple[str, object]] = [("cell", np.arange(1, n + 1))]
    cols += [(k, f[k]) for k in _IDENTITY]
    cols += [("quality", f["quality"]), ("quality_flags", [quality_names(q) for q in f["quality"]])]
    cols += [(name, f.get(name, np.full(n, np.nan))) for name in FEATURES]
    cols += [(f"p_{c}", probs[:, i]) for i, c in enumerate(classes)]
    cols += [("predicted", [classes[i] if 0 <= i < len(classes) else "" for i in f["predicted"]]),
             ("probability", f["probability"]), ("is_target", f["is_target"]), ("fired", f["fired"]),
             ("reason", [run.reasons[i] if 0 <= i < len(run.reasons) else str(i) for i in f["reason"]]),
             ("decision_detail", f["decision_detail"]), ("sort_window_ms", f["sort_window_ms"]),
             # fired with a pulse the device output, or swept along within one's window: what
             # reached the outlet; empty where the file does not record the windows
             ("in_outlet", [""] * n if outlet is None else outlet.astype(np.uint8))]
    cols += [(k, f[k]) for k in _FIRE]
    # last, so the columns before keep their places: exports of several runs put together could
    # not be told apart (pulses.csv names its runs the same way)
    ident = run.attrs.get("experiment:run identifier", "")
    cols += [("run", [Path(events_path).stem] * n), ("run_identifier", [_fmt(ident)] * n)]
    out = Path(out)
    try:
        with out.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow([c for c, _ in cols])
            values = [list(v) for _, v in cols]
            for i in range(n):
                w.writerow([_fmt(v[i]) for v in values])
    except OSError as err:
        raise DataFormatError(f"{out}: cannot write the CSV: {err}") from err
    return n


@dataclass(frozen=True, slots=True)
class MimlExport:
    csv_path: Path
    image_dir: Path
    cells: int
    skipped: int  # cells left out (quality flags, or no crops)
    scaling: dict


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "cell"


def _run_prefix(run) -> str:
    """What names the run in its cells' IDs: sample, start, run index and a tag of the run's
    identifier. Sample and run index alone (``sample_M1``) named the cells of every day's first run
    of a sample alike: their PNGs replaced each other when the exports were put in one folder, and
    training on both tied two cells into one group (a healthy and a stiff cell held out together)."""
    import hashlib

    # digits only: a reanalysis copies its source's date and time as that file wrote them
    date = re.sub(r"[^0-9]", "", _fmt(run.attrs.get("experiment:date", "")))
    time = re.sub(r"[^0-9]", "", _fmt(run.attrs.get("experiment:time", "")))
    ident = _fmt(run.attrs.get("experiment:run identifier", ""))
    # the identifier is unique to the run (a reanalysis of a file gets its own, with the source's
    # start and run index); 8 hex digits of its hash keep the names short
    tag = hashlib.sha1(ident.encode()).hexdigest()[:8] if ident else ""
    return "_".join(p for p in (_safe(run.meta.sample), f"{date}-{time}" if date else "", f"M{run.meta.run_index}",
                                tag) if p)


def check_miml_destination(out_dir: str | Path, name: str = "cells") -> tuple[Path, Path]:
    """The image folder and CSV an export named ``name`` writes into ``out_dir``; refuses a bad name or a
    folder that holds an earlier export (checked before anything is written, also by ``export --csv``)."""
    out_dir = Path(out_dir)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name or ""):
        raise DataFormatError(f"--name {name!r}: must be a plain name (letters, digits, '-', '_'): it names "
                              f"{name}_data.csv and the image folder {name}/ inside {out_dir}")
    img_dir = out_dir / name
    csv_path = out_dir / f"{name}_data.csv"
    # one export per folder: a second one replaced the first's table and some of its PNGs (same
    # names), and left the rest without a row
    earlier = [p for p in (out_dir / "miml_export.json", csv_path) if p.exists()]
    if earlier or (img_dir.is_dir() and any(img_dir.iterdir())):
        raise DataFormatError(f"{out_dir}: holds an earlier export ({(earlier or [img_dir])[0].name}); refusing to "
                              "overwrite it (choose another folder)")
    return img_dir, csv_path


def export_miml(events_path: str | Path, out_dir: str | Path, *, name: str = "cells", label: str | None = None,
                scale: bool = True, include_flagged: bool = False, size: int | None = None,
                rgb: bool = True) -> MimlExport:
    """Export the cells of ``events_path`` in the MIML authors' training format.

    ``label`` is the ``Cell Type`` of every cell (a run of one pure population); without it, the
    predicted class of each cell (a run with a model) or else the sample name. Cells flagged as
    not one whole cell seen clearly (doublets, incomplete passages …: ``NOT_FOR_TRAINING``, all flags
    but TOUCHING) are left out unless ``include_flagged``, as from our own training data. ``size`` resizes the
    square crops (the authors' crops are 100 px); ``rgb`` writes grey as three equal channels, as
    their PNGs are.
    """
    import cv2

    f, run = read_events(events_path, crops=True)
    if "first_crop" not in f and run.n_events:  # a run without cells has no crop columns either
        raise DataFormatError(f"{events_path}: the file holds no crops to export")
    out_dir = Path(out_dir)
    img_dir, csv_path = check_miml_destination(out_dir, name)
    try:
        img_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataFormatError(f"{img_dir}: cannot create the export folder: {err}") from err
    n = run.n_events
    keep = np.ones(n, bool) if include_flagged else (f["quality"].astype(np.int64) & int(NOT_FOR_TRAINING)) == 0
    for _, feat in MIML_COLUMNS:
        keep &= np.isfinite(f[feat])
    idx = np.flatnonzero(keep)
    scaling = {}
    values = {}
    for col, feat in MIML_COLUMNS:
        v = f[feat][idx].astype(np.float64)
        if scale and v.size:
            lo, hi = float(v.min()), float(v.max())
            span = hi - lo
            values[col] = (v - lo) / span if span > 0 else np.zeros_like(v)
            scaling[col] = {"feature": feat, "unit": FEATURES[feat].unit, "min": lo, "max": hi}
        else:
            values[col] = v
            scaling[col] = {"feature": feat, "unit": FEATURES[feat].unit, "min": None, "max": None}
    classes = run.class_names
    shift = max(0, run.meta.bit_depth - 8)
    prefix = _run_prefix(run)

    def png(img: np.ndarray) -> np.ndarray:
        a = np.asarray(img)
        if a.dtype != np.uint8:
            a = np.clip(a.astype(np.int64) >> shift, 0, 255).astype(np.uint8)
        if size:
            a = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA if size < a.shape[0] else cv2.INTER_LINEAR)
        return cv2.merge([a, a, a]) if rgb else a

    crop_px = run.crop_pixel_size_um
    if size and f["first_crop"].ndim == 3 and math.isfinite(crop_px):
        crop_px = crop_px * f["first_crop"].shape[-1] / size
    crop_px = crop_px if math.isfinite(crop_px) else None
    rows = []
    for j, i in enumerate(idx):
        if label is not None:
            cls = label
        elif classes and 0 <= f["predicted"][i] < len(classes):
            cls = classes[f["predicted"][i]]
        else:
            cls = run.meta.sample
        cid = f"{prefix}_Cell{int(i) + 1}"  # the CSV's `cell` and dclab's `index`
        for which, key in (("Firstcrop", "first_crop"), ("Lastcrop", "last_crop")):
            fn = f"{cid}_{which}.png"
            if not cv2.imwrite(str(img_dir / fn), png(f[key][i])):
                raise DataFormatError(f"{img_dir / fn}: cannot write the PNG")
            rows.append([fn, cls, *(repr(float(values[col][j])) for col, _ in MIML_COLUMNS)])
    try:
        with csv_path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["cell ID", "Cell Type", *(c for c, _ in MIML_COLUMNS)])
            w.writerows(rows)
        (out_dir / "miml_export.json").write_text(json.dumps({
            "source": str(events_path), "sample": run.meta.sample, "run_index": run.meta.run_index,
            "cells": len(idx), "skipped": int(n - len(idx)), "scaled_to_0_1": scale, "scaling": scaling,
            "crop_pixel_size_um": crop_px,
            "crop_size_px": size if size is not None else int(f["first_crop"].shape[-1]) if "first_crop" in f else None,
            "label": label or ("predicted class" if classes else "sample name"),
        }, indent=2), encoding="utf-8")
    except OSError as err:
        raise DataFormatError(f"{csv_path}: cannot write the export: {err}") from err
    return MimlExport(csv_path, img_dir, len(idx), int(n - len(idx)), scaling)
