"""Training data: one sample per cell (first crop, last crop, features, label, group, source).

Importers build a :class:`Dataset` from

* our own tracker output: :class:`tracking.events.CellEvent` lists (:func:`dataset_from_events`;
  one label for a whole run of one pure population, or one label per event), or a CSV of features
  with paths to crop images (:func:`dataset_from_csv`);
* the MIML authors' format: CSV ``cell ID,Cell Type,Max Velocity,Transition Time,Deformability``
  with one row per crop PNG (:func:`dataset_from_miml_csv`, :func:`dataset_from_miml_dir`).

Every importer attaches an :class:`ImportReport` and logs its problems — duplicate images (by pixel
hash, with conflicting labels called out), sources that hold a single class, missing or unpaired
crops. Nothing is silently dropped or fixed: what to do about a defect is the caller's decision.

Splits are grouped (all samples of one group — by default one cell — land on the same side),
stratified by class and seeded. This module needs no torch: the CLI can import and inspect data
without the training extra.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimlsort.errors import DataFormatError
from tracking.events import NOT_FOR_TRAINING
from tracking.features import FEATURES, MIML_FEATURES

log = logging.getLogger(__name__)

#: the MIML authors' CSV columns -> our feature names (their values are pre-scaled to 0..1)
MIML_COLUMNS: dict[str, str] = {
    "Deformability": "di",
    "Transition Time": "transit_time_ms",
    "Max Velocity": "v_max_mm_s",
}
MIML_ID_COLUMN = "cell ID"
MIML_LABEL_COLUMN = "Cell Type"
MIML_PROVENANCE = (
    "MIML authors' CSV format: Deformability->di, Transition Time->transit_time_ms, "
    "Max Velocity->v_max_mm_s; values were pre-scaled to 0-1 per recording batch by the authors "
    "(not physical units), so a model trained on them needs features scaled the same way"
)
_FIRST_SUFFIX = "_firstcrop"
_LAST_SUFFIX = "_lastcrop"


def same_pixel_size(a: float, b: float) -> bool:
    """Whether two pixel sizes are one: ShapeIn stores it as float32 (0.3400000035762787), others
    as float64 (0.34), and training refused such files together as "different pixel sizes (…: 0.34
    µm/px; …: 0.34 µm/px)". Within float32's precision; no two microscopes' pixels differ so little."""
    return math.isclose(a, b, rel_tol=1e-6)


class MissingFeatures(DataFormatError):
    """Features asked for (by name, or by a model to fine-tune) that the data do not hold."""


# ---------------------------------------------------------------------------------------------
# import report


@dataclass(frozen=True, slots=True)
class Duplicate:
    """One image (pixel hash) that occurs in more than one place."""

    hash: str
    members: tuple[tuple[str, str, str, str], ...]  # (sample id, "first"/"last", label, source)

    @property
    def conflicting_labels(self) -> bool:
        return len({m[2] for m in self.members}) > 1

    def describe(self) -> str:
        where = "; ".join(f"{sid} {crop} crop [{label}] in {src}" for sid, crop, label, src in self.members)
        kind = "identical image with DIFFERENT labels" if self.conflicting_labels else "identical image"
        return f"{kind}: {where}"


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an importer found; :meth:`problems` lists every defect in words."""

    n_rows: int
    n_samples: int
    class_counts: Mapping[str, int]
    duplicates: tuple[Duplicate, ...] = ()
    single_class_sources: tuple[tuple[str, str], ...] = ()  # (source, its only class)
    missing: tuple[str, ...] = ()  # files named by the data that do not exist / could not be read
    notes: tuple[str, ...] = ()  # other findings (unpaired crops, colour images, ...)
    # True when each source is meant to be a train/validation split of mixed classes (the authors'
    # CSVs); False for our runs, where one pure population per run is the normal way to label
    sources_are_splits: bool = False
    info: tuple[str, ...] = ()  # facts worth reporting that are not defects (e.g. what a simulation left out)
    spellings: tuple[str, ...] = ()  # class names that differ only in case, spaces or punctuation
    # whether log() has said it (Dataset.concat then says only what the parts had not)
    logged: bool = field(default=False, compare=False)

    def problems(self) -> list[str]:
        out = [d.describe() for d in self.duplicates]
        out += [f"{src} holds only class {cls!r}: a split taken from it alone cannot train or "
                f"evaluate a classifier" for src, cls in self.single_class_sources]
        if len(self.class_counts) < 2 and self.sources_are_splits:
            out.append(f"the data hold only {len(self.class_counts)} class(es): {dict(self.class_counts)}")
        out += [f"missing: {m}" for m in self.missing]
        out += list(self.spellings)
        out += list(self.notes)
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def log(self, logger: logging.Logger = log, *, said: Iterable[str] = ()) -> None:
        said = set(said)
        for i in self.info:
            if i not in said:
                logger.info("data import: %s", i)
        for p in self.problems():
            if p not in said:
                logger.warning("data import: %s", p)
        object.__setattr__(self, "logged", True)

    def to_markdown(self) -> str:
        lines = [f"- rows read: {self.n_rows}, samples (cells): {self.n_samples}",
                 "- classes: " + ", ".join(f"{k}: {v}" for k, v in self.class_counts.items())]
        probs = self.problems()
        lines += [f"- {i}" for i in self.info]
        lines += [f"- **problem**: {p}" for p in probs] if probs else ["- no problems found"]
        return "\n".join(lines)


def image_hash(img: np.ndarray) -> str:
    """Hash of the pixels (and shape), so re-encoded copies of one image are found too."""
    h = hashlib.sha1(str(img.shape).encode())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the data set


@dataclass(frozen=True, slots=True)
class Sample:
    first_crop: np.ndarray
    last_crop: np.ndarray
    features: dict[str, float]
    label: int
    class_name: str
    group: str
    source: str
    id: str


@dataclass(frozen=True, eq=False)
class Dataset:
    """N cells: crops ``first``/``last`` (N, H, W), ``features`` (N, F) raw values in the units of
    :mod:`tracking.features` (or as the source delivered them, see ``provenance``), integer
    ``labels`` into ``class_names``, and per-sample ``groups``, ``sources`` and ``ids``."""

    first: np.ndarray
    last: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    groups: np.ndarray
    sources: np.ndarray
    ids: np.ndarray
    crop_pixel_size_um: float | None = None
    provenance: tuple[str, ...] = ()
    report: ImportReport | None = field(default=None, compare=False)

    def __post_init__(self):
        n = len(self.labels)
        if self.first.ndim != 3 or self.last.shape != self.first.shape:
            raise DataFormatError(f"crops must be (N, H, W) arrays of one shape, got {self.first.shape} and {self.last.shape}")
        if self.features.shape != (n, len(self.feature_names)):
            raise DataFormatError(f"features must be (N={n}, F={len(self.feature_names)}), got {self.features.shape}")
        for name, a in (("first", self.first), ("groups", self.groups), ("sources", self.sources), ("ids", self.ids)):
            if len(a) != n:
                raise DataFormatError(f"{name}: {len(a)} entries for {n} labels")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataFormatError(f"labels must index class_names {self.class_names}")
        if not np.all(np.isfinite(self.features)):
            ok = np.isfinite(self.features)
            bad = np.flatnonzero(~ok.all(axis=1))
            which = "; ".join(f"{self.ids[i]} in {self.sources[i]}: " + ", ".join(
                f"{n} = {self.features[i, j]}" for j, n in enumerate(self.feature_names) if not ok[i, j])
                for i in bad[:5])
            raise DataFormatError(f"non-finite feature values in {len(bad)} sample(s) ({which}"
                                  f"{' …' if len(bad) > 5 else ''})")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Sample:
        return Sample(
            self.first[i], self.last[i], dict(zip(self.feature_names, map(float, self.features[i]))),
            int(self.labels[i]), self.class_names[self.labels[i]], str(self.groups[i]), str(self.sources[i]),
            str(self.ids[i]),
        )

    @property
    def crop_shape(self) -> tuple[int, int]:
        return tuple(self.first.shape[1:])

    def class_counts(self) -> dict[str, int]:
        c = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c[i]) for i, name in enumerate(self.class_names)}

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Dataset":
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(
            self.first[idx], self.last[idx], self.features[idx], self.feature_names, self.labels[idx],
            self.class_names, self.groups[idx], self.sources[idx], self.ids[idx], self.crop_pixel_size_um,
            self.provenance, None,
        )

    def select_features(self, names: Sequence[str]) -> "Dataset":
        """The same samples with only the features ``names``, in that order."""
        missing = [n for n in names if n not in self.feature_names]
        if missing:
            raise MissingFeatures(f"features {missing} are not in the data (has {list(self.feature_names)})")
        cols = [self.feature_names.index(n) for n in names]
        return Dataset(
            self.first, self.last, self.features[:, cols], tuple(names), self.labels, self.class_names,
            self.groups, self.sources, self.ids, self.crop_pixel_size_um, self.provenance, self.report,
        )

    def hashes(self) -> list[tuple[str, str]]:
        return [(image_hash(a), image_hash(b)) for a, b in zip(self.first, self.last)]

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return grouped_split(self.labels, self.groups, test_fraction, seed)

    @staticmethod
    def concat(datasets: Sequence["Dataset"]) -> "Dataset":
        """One data set from several (class names united, labels remapped), re-checked as a whole."""
        if not datasets:
            raise DataFormatError("nothing to concatenate")
        d0 = datasets[0]

        def src(x) -> str:
            return ", ".join(dict.fromkeys(map(str, x.sources)))

        # crops of one shape at two pixel sizes are two fields of view: united, the pixel size
        # became unknown, the model took crops of 40 and 27 µm alike, and its spec lost the scale.
        # Said before the crops' shapes: at another pixel size they differ too ("crops differ in
        # size" said neither why nor what to do)
        known = {}
        for d in datasets:
            if d.crop_pixel_size_um is not None:
                px = next((k for k in known if same_pixel_size(k, d.crop_pixel_size_um)), d.crop_pixel_size_um)
                known.setdefault(px, []).extend(dict.fromkeys(map(str, d.sources)))
        if len(known) > 1:
            raise DataFormatError(
                "the crops have different pixel sizes (" + "; ".join(f"{', '.join(dict.fromkeys(srcs))}: {px:g} µm/px"
                                                                 for px, srcs in known.items())
                + "): a model takes crops at one scale, so it trains on recordings of one pixel size. Train on "
                  "those of one size, then fine-tune that model on the others (mimlsort train OTHERS --init-from "
                  "MODEL.onnx: their crops are resampled to its field of view) or evaluate it on them")
        for d in datasets[1:]:
            if d.feature_names != d0.feature_names:
                # named neither source: an event file read with DIR beside a table without it
                common = [n for n in d0.feature_names if n in d.feature_names]
                raise DataFormatError(f"the sources hold different features ({src(d0)}: {','.join(d0.feature_names)}; "
                                      f"{src(d)}: {','.join(d.feature_names)})"
                                      + (f": name those to train on, e.g. --features {','.join(common)}" if common
                                         else ""))
            if d.crop_shape != d0.crop_shape:
                # named both sides ("(100, 100) vs (90, 90) (source ['val_data.csv'])" said one)
                raise DataFormatError(f"crops differ in size ({src(d0)}: {d0.crop_shape[0]}×{d0.crop_shape[1]} px; "
                                      f"{src(d)}: {d.crop_shape[0]}×{d.crop_shape[1]} px): the data must hold crops of "
                                      f"one size")
        # the MIML authors' values are scaled 0-1 per batch, ours are in ms and mm/s: mixed, one
        # class's v_max of 0.5 met the other's 10, the model learnt the data's origin, and its
        # spec called every feature 0-1 scaled (the provenance of one part is the whole's)
        units = {}
        for d in datasets:
            units.setdefault(tuple(feature_unit(d, n) for n in d0.feature_names), []).append(d)
        if len(units) > 1:
            kinds = "; ".join(
                f"{', '.join(dict.fromkeys(str(s) for p in parts for s in p.sources))}: "
                + ", ".join(f"{n} [{u or 'no unit'}]" for n, u in zip(d0.feature_names, u_))
                for u_, parts in units.items())
            raise DataFormatError(
                f"the data hold features in different units ({kinds}); the MIML authors' 0-1 scaled values cannot "
                f"be mixed with physical ones: train on one kind, or export event files scaled as the authors did "
                f"(mimlsort export EVENTS.rtdc --miml DIR) and train on those folders")
        unknown_px = [] if not known else list(dict.fromkeys(
            str(s) for d in datasets if d.crop_pixel_size_um is None for s in d.sources))
        classes = tuple(dict.fromkeys(c for d in datasets for c in d.class_names))
        labels = np.concatenate([np.array([classes.index(c) for c in d.class_names], np.int64)[d.labels] for d in datasets])
        ds = Dataset(
            np.concatenate([d.first for d in datasets]), np.concatenate([d.last for d in datasets]),
            np.concatenate([d.features for d in datasets]), d0.feature_names, labels, classes,
            np.concatenate([d.groups for d in datasets]), np.concatenate([d.sources for d in datasets]),
            np.concatenate([d.ids for d in datasets]),
            next(iter(known)) if len(known) == 1 and not any(d.crop_pixel_size_um is None for d in datasets) else None,
            tuple(dict.fromkeys(p for d in datasets for p in d.provenance)),
        )
        notes = tuple(n for d in datasets if d.report for n in d.report.notes)
        if unknown_px:
            notes += (f"the crops' pixel size is not known for {', '.join(unknown_px)} (for a CSV: --pixel-size or a "
                      f"crop_pixel_size_um column): the model takes whole crops as they come, not a field of view "
                      f"in µm, for the data at {', '.join(f'{px:g}' for px in known)} µm/px too",)
        info = tuple(n for d in datasets if d.report for n in d.report.info)
        missing = tuple(m for d in datasets if d.report for m in d.report.missing)
        rows = sum(d.report.n_rows if d.report else len(d) for d in datasets)
        splits = any(d.report is not None and d.report.sources_are_splits for d in datasets)
        # each file's findings were logged when it was read: said again here, every warning came
        # twice ("A.rtdc: 13 events with quality flags left out", twice, read as 26)
        said = [m for d in datasets if d.report is not None and d.report.logged
                for m in (*d.report.problems(), *d.report.info)]
        ds = _with_report(ds, rows, missing, notes, splits, info, log_report=False)
        ds.report.log(said=said)
        return ds


def check_dataset(
    ds: Dataset, n_rows: int | None = None, missing: Sequence[str] = (), notes: Sequence[str] = (),
    sources_are_splits: bool = False, info: Sequence[str] = (),
) -> ImportReport:
    """Find duplicate images in ``ds`` and, when its sources are meant to be mixed-class splits,
    the sources that hold a single class."""
    where: dict[str, list[tuple[str, str, str, str]]] = defaultdict(list)
    for i, (h1, h2) in enumerate(ds.hashes()):
        cls = ds.class_names[ds.labels[i]]
        where[h1].append((str(ds.ids[i]), "first", cls, str(ds.sources[i])))
        if h2 != h1:
            where[h2].append((str(ds.ids[i]), "last", cls, str(ds.sources[i])))
    dups = tuple(Duplicate(h, tuple(m)) for h, m in where.items() if len(m) > 1)
    by_source: dict[str, set[str]] = defaultdict(set)
    for s, lab in zip(ds.sources, ds.labels):
        by_source[str(s)].add(ds.class_names[lab])
    single = ()
    if sources_are_splits:
        single = tuple((s, next(iter(c))) for s, c in by_source.items() if len(c) == 1)
    return ImportReport(
        n_rows if n_rows is not None else len(ds), len(ds), ds.class_counts(), dups, single, tuple(missing),
        tuple(notes), sources_are_splits, tuple(info), _spelled_alike(ds),
    )


def _spelled_alike(ds: Dataset) -> tuple[str, ...]:
    """Each set of class names that are one name but for case, spaces or punctuation (``T8`` and
    ``t8``, ``HCT-116`` and ``hct116``), with cells of each: such a set trained as that many classes,
    one of them a class of a cell or two, unsaid."""
    alike: dict[str, list[str]] = defaultdict(list)
    for c in ds.class_names:
        alike[re.sub(r"[\W_]+", "", c.casefold())].append(c)
    out = []
    for names in (v for v in alike.values() if len(v) > 1):
        parts = []
        for c in names:
            idx = np.flatnonzero(ds.labels == ds.class_names.index(c))
            cells = "; ".join(f"{ds.ids[i]} in {ds.sources[i]}" for i in idx[:3]) + (" …" if len(idx) > 3 else "")
            parts.append(f"{c!r} ({len(idx)} cell{'s' if len(idx) != 1 else ''}: {cells})")
        out.append("class names " + " and ".join(parts) + " differ only in case, spaces or punctuation: one class "
                   "spelled two ways? They are taken as different classes; give every cell of a class one spelling")
    return tuple(out)


def _with_report(
    ds: Dataset, n_rows: int, missing: Sequence[str] = (), notes: Sequence[str] = (), sources_are_splits: bool = False,
    info: Sequence[str] = (), log_report: bool = True,
) -> Dataset:
    rep = check_dataset(ds, n_rows, missing, notes, sources_are_splits, info)
    if log_report:
        rep.log()
    object.__setattr__(ds, "report", rep)
    return ds


# ---------------------------------------------------------------------------------------------
# importers


def _open_csv(path: Path) -> io.StringIO:
    """The text of the CSV ``path`` (UTF-8; a byte order mark, as Excel writes one, is dropped).

    Text in another encoding is refused, not guessed: the bytes of an 8-bit code page (latin-1,
    cp1252, cp1251 …) decode in each of them to different letters, and a class name read wrongly
    becomes the model's class name, which ``sorting.target_classes`` then never matches."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raw = err.object  # after a byte order mark, err.start counts from the end of it
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}; saved as latin-1 or "
                              f"another 8-bit code page?): save the file as UTF-8 (Excel: \"CSV UTF-8\")") from None
    return io.StringIO(text, newline="")


def _read_grey(path: Path, notes: list[str]) -> np.ndarray | None:
    import cv2

    if not path.is_file():
        return None  # said by the caller; OpenCV's own "can't open/read file" warning went to stderr besides
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        if np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 0], img[:, :, 2]):
            img = img[:, :, 0]  # grey stored as RGB (the authors' PNGs): lossless
        else:
            notes.append(f"{path}: colour image converted to grey")
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        # refused, not scaled: the model's fixed pixel normalisation is fitted on 8-bit grey, the
        # grey the tracker's crops reach it in, and a 16-bit file does not say how many bits its
        # camera had (a 12-bit camera's values, 0-4095, come 16x too dark divided by 256). One such
        # crop had set the normalisation of every crop (mean 1218, sd 6719 for 8-bit crops).
        top = int(img.max()) if img.size else 0
        how = ("its values are 8-bit (at most 255): save it as an 8-bit image" if top <= 255 else
               f"its values reach {top}: convert it to 8 bits, shifting them right by the camera's bit depth - 8 "
               f"(4 for a 12-bit camera, 8 for values spread over 16 bits)")
        raise DataFormatError(f"{path}: {img.dtype} image; training crops must be 8-bit grey, as the tracker "
                              f"gives them to the model: {how}")
    return np.ascontiguousarray(img)


def _unreadable(path: Path) -> str:
    """Why an image named by the data was not read, when it is there: a damaged PNG was listed as
    "missing" beside the file."""
    return " (there, but not a readable image)" if path.exists() else ""


def _class_index(names: Iterable[str], class_names: Sequence[str] | None) -> tuple[tuple[str, ...], dict[str, int]]:
    names = list(names)
    if class_names is None:
        class_names = tuple(sorted(set(names)))
    else:
        class_names = tuple(class_names)
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DataFormatError(f"labels {unknown} are not among class_names {list(class_names)}")
    return class_names, {c: i for i, c in enumerate(class_names)}


def _row_numbers(csv_path: Path, line: int, row: Mapping[str, str], columns: Sequence[str]) -> list[float]:
    """The feature values of one CSV row, each a finite number; errors name file, line and column
    (a 'nan' passed, and the data set then named only a sample id: "non-finite feature values in
    samples ['e2']")."""
    out = []
    for c in columns:
        text = row.get(c)
        if text is None:
            raise DataFormatError(f"{csv_path}:{line}: no value in column {c!r}")
        try:
            v = float(text)
        except ValueError:
            try:
                float(text.replace(",", ".", 1))
                hint = ": a decimal comma? write a decimal point"  # a spreadsheet in a comma locale
            except ValueError:
                hint = ""
            raise DataFormatError(f"{csv_path}:{line}: column {c!r}: not a number: {text!r}{hint}") from None
        if not math.isfinite(v):
            raise DataFormatError(f"{csv_path}:{line}: column {c!r}: {text!r} is not a finite number; a model cannot "
                                  f"take a cell without this measurement: remove its row")
        out.append(v)
    return out


def _read_rows(csv_path: Path) -> tuple[list[str], list[tuple[int, int, dict[str, str]]]]:
    """The header of the CSV ``csv_path`` and its rows, each with the line of the file it ends on
    and its index among the rows (an empty one counted: an event table's ids name rows by it);
    names and values stripped of spaces. The lines are the file's own: counted as rows from line 2,
    a blank line or a quoted value over two lines put every later row's errors on the wrong line."""
    with _open_csv(csv_path) as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        sep = next((d for d in (";", "\t") if len(cols) == 1 and d in cols[0]), None)
        if sep:
            # a spreadsheet set to a decimal comma saves "CSV" with semicolons: "missing columns
            # ['cell ID', …] (has ['cell ID;Cell Type;…'])" did not say why
            raise DataFormatError(f"{csv_path}:1: the columns are separated by {'a tab' if sep == chr(9) else repr(sep)}, "
                                  f"not commas: save the table comma-separated, with decimal points (Excel: \"CSV "
                                  f"UTF-8 (Comma delimited)\" with '.' as the decimal separator)")
        rows = []
        for index, r in enumerate(reader):
            # values beyond the header's columns were dropped unsaid: a decimal comma (1,0) split a
            # value in two and moved the rest one column on (a transit time read as the deformability)
            rest = r.pop(None, None) or []
            extra = [x.strip() for x in rest if x.strip()]
            if extra:
                first = r.get(reader.fieldnames[0]) if reader.fieldnames else ""
                raise DataFormatError(
                    f"{csv_path}:{reader.line_num}: {len(cols) + len(rest)} values where the "
                    f"header has {len(cols)} columns (row {(first or '').strip()!r}; left over: {', '.join(extra)}): a "
                    f"value holding a comma (a decimal comma, 1,5) moves the values after it into the wrong columns: "
                    f"quote it or write a decimal point")
            row = {k.strip(): (v or "").strip() for k, v in r.items() if k}
            if any(row.values()):  # ",,,," (a spreadsheet's emptied row) holds no cell, as a blank line
                rows.append((reader.line_num, index, row))
    return cols, rows


def _refuse_unlabelled(csv_path: Path, rows: Sequence[tuple[int, int, Mapping[str, str]]], column: str) -> None:
    """Rows without a class name are refused, not read as a class named '': that class trained
    and cross-validated, and only the spec, after the training, refused an empty class name
    without saying where it came from."""
    empty = [line for line, _, r in rows if not r.get(column)]
    if empty:
        lines = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise DataFormatError(f"{csv_path}: {len(empty)} row(s) have no {column!r} (line(s) {lines}): give every "
                              f"cell its class, or remove the rows of cells you did not label")


def _refuse_odd_sizes(csv_path: Path, read: Sequence[tuple[tuple[int, ...], Path, int, str]]) -> None:
    """Crops of a CSV's images ((shape, image, line, cell) each) in more than one size are refused
    naming the odd images with their lines and cells: the refusal named a cell only, not which of
    its two PNGs was odd nor the line, and crops of one size each among the first and among the last
    crops, but not between them, went unnamed."""
    shapes = Counter(r[0] for r in read)
    if len(shapes) < 2:
        return
    common = shapes.most_common(1)[0][0]
    odd = [r for r in read if r[0] != common]
    size = lambda sh: "×".join(map(str, sh))  # noqa: E731
    raise DataFormatError(
        f"{csv_path}: crops differ in size ({', '.join(f'{k} of {size(sh)} px' for sh, k in shapes.items())}): "
        + "; ".join(f"{img} (line {line}, cell {cell}) is {size(sh)}" for sh, img, line, cell in odd[:5])
        + (f" and {len(odd) - 5} more" if len(odd) > 5 else "") + f", not {size(common)}: the data must hold crops "
        f"of one size")


def _stack(crops: list[np.ndarray], what: str, ids: Sequence[str]) -> np.ndarray:
    shapes = Counter(c.shape for c in crops)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = [ids[i] for i, c in enumerate(crops) if c.shape != common][:5]
        raise DataFormatError(f"{what}: crops differ in size ({dict(shapes)}); e.g. {odd} are not {common}")
    return np.stack(crops)


def dataset_from_miml_csv(
    csv_path: str | Path,
    image_dir: str | Path | None = None,
    *,
    source: str | None = None,
    class_names: Sequence[str] | None = None,
    log_report: bool = True,
) -> Dataset:
    """Import the MIML authors' format: one CSV row per crop PNG, two rows (first/last) per cell.

    ``image_dir`` holds the PNGs named in ``cell ID`` (default: the CSV's folder). Rows of one cell
    are paired by the name without its ``_Firstcrop``/``_Lastcrop`` suffix; a cell with only one crop
    uses it for both (noted in the report). Features map to ``di``, ``transit_time_ms`` and
    ``v_max_mm_s``, keeping the authors' 0–1 scaling (recorded in ``provenance``).
    """
    csv_path = Path(csv_path)
    image_dir = Path(image_dir) if image_dir is not None else csv_path.parent
    source = source or csv_path.name
    if not csv_path.is_file():
        raise DataFormatError(f"{csv_path}: no such file")
    cols, rows = _read_rows(csv_path)
    # a lab's own table in this format writes "Cell ID" or "cell type": refused as lacking the
    # column it holds, and named alone it was taken for our event table ("missing column 'first_crop'")
    canon = {c.casefold(): c for c in (MIML_ID_COLUMN, MIML_LABEL_COLUMN, *MIML_COLUMNS)}
    rename = {c: canon[c.casefold()] for c in cols if c.casefold() in canon}
    if any(k != v for k, v in rename.items()):
        cols = [rename.get(c, c) for c in cols]
        rows = [(line, i, {rename.get(k, k): v for k, v in r.items()}) for line, i, r in rows]
    lacking = [c for c in (MIML_ID_COLUMN, MIML_LABEL_COLUMN, *MIML_COLUMNS) if c not in cols]
    if lacking:
        raise DataFormatError(f"{csv_path}: missing columns {lacking} (has {cols})")
    feature_names = tuple(n for n in MIML_FEATURES if n in MIML_COLUMNS.values())
    col_of = {v: k for k, v in MIML_COLUMNS.items()}

    _refuse_unlabelled(csv_path, rows, MIML_LABEL_COLUMN)
    cells: dict[str, dict] = {}
    notes: list[str] = []
    missing: list[str] = []
    read: list[tuple[tuple[int, ...], Path, int, str]] = []
    one_image: list[tuple[str, int]] = []  # images named as neither crop, taken for both
    for line, _, r in rows:
        name = r[MIML_ID_COLUMN]
        stem, low = Path(name).stem, Path(name).stem.lower()
        crop = "both"
        if low.endswith(_FIRST_SUFFIX):
            stem, crop = stem[: -len(_FIRST_SUFFIX)], "first"
        elif low.endswith(_LAST_SUFFIX):
            stem, crop = stem[: -len(_LAST_SUFFIX)], "last"
        feats = tuple(_row_numbers(csv_path, line, r, [col_of[f] for f in feature_names]))
        cell = cells.setdefault(stem, {"label": r[MIML_LABEL_COLUMN], "features": feats, "line": line})
        if cell["label"] != r[MIML_LABEL_COLUMN] or cell["features"] != feats:
            # said what differs: "disagree on label or features" left the user to diff the rows
            what = [f"{MIML_LABEL_COLUMN} {r[MIML_LABEL_COLUMN]!r} here, {cell['label']!r} on line {cell['line']}"] \
                if cell["label"] != r[MIML_LABEL_COLUMN] else []
            what += [f"{col_of[n]} {a!r} here, {b!r} on line {cell['line']}"
                     for n, a, b in zip(feature_names, feats, cell["features"]) if a != b]
            notes.append(f"{csv_path}:{line}: the rows of cell {stem} disagree ({'; '.join(what)}); using line "
                         f"{cell['line']}")
        img = _read_grey(image_dir / name, notes)
        if img is None:
            missing.append(f"{csv_path}:{line}: {image_dir / name}{_unreadable(image_dir / name)}")  # the row naming it
            continue
        read.append((img.shape, image_dir / name, line, stem))
        if crop == "both":
            cell.setdefault("first", img)
            cell.setdefault("last", img)
            one_image.append((name, line))
        else:
            if crop in cell:
                notes.append(f"{csv_path}:{line}: cell {stem} has two {crop} crops; keeping the first")
            cell.setdefault(crop, img)

    ids, firsts, lasts, feats, labs = [], [], [], [], []
    for stem, c in cells.items():
        if "first" not in c and "last" not in c:
            continue  # no image at all: listed under missing
        if "first" not in c or "last" not in c:
            have = "first" if "first" in c else "last"
            notes.append(f"{source}: cell {stem} has only its {have} crop; used for both channels")
        ids.append(stem)
        firsts.append(c.get("first", c.get("last")))
        lasts.append(c.get("last", c.get("first")))
        feats.append(c["features"])
        labs.append(c["label"])
    if not ids:
        raise DataFormatError(f"{csv_path}: no usable rows (images looked up in {image_dir})")
    _refuse_odd_sizes(csv_path, read)
    if one_image:
        # the docstring promised it noted, as a cell with one of its two crops is: the model then
        # learnt from such cells that both crops look alike, unsaid
        notes.append(f"{csv_path}: {len(one_image)} image(s) named without _Firstcrop/_Lastcrop (e.g. "
                     f"{one_image[0][0]} on line {one_image[0][1]}): each is its cell's first and last crop")
    if _our_export(csv_path.parent) is None:  # an export --no-scale holds physical units, and says so
        # the format's values are min-max scaled per batch, and the model's spec says its features
        # are: values in ms or mm/s (a lab's own table in this format) were taken as such, unsaid
        kept = set(ids)
        for j, name in enumerate(feature_names):
            out = [(c["line"], s, c["features"][j]) for s, c in cells.items() if s in kept
                   and not -1e-9 <= c["features"][j] <= 1 + 1e-9]
            if out:
                line, stem, v = out[0]
                notes.append(f"{csv_path}: {col_of[name]} is outside 0-1 in {len(out)} cell(s) (e.g. {v!r}, cell "
                             f"{stem} on line {line}): the MIML authors' values are scaled to 0-1 per recording "
                             f"batch and are taken as so scaled; values in physical units need that scaling (as "
                             f"mimlsort export --miml does) or our event table (CSV with di, transit_time_ms, "
                             f"v_max_mm_s columns)")
    class_names, index = _class_index(labs, class_names)
    n = len(ids)
    ds = Dataset(
        _stack(firsts, str(csv_path), ids), _stack(lasts, str(csv_path), ids), np.asarray(feats, np.float64),
        feature_names, np.array([index[lab] for lab in labs], np.int64), class_names,
        np.array(ids, dtype=object), np.array([source] * n, dtype=object), np.array(ids, dtype=object),
        None, (MIML_PROVENANCE,),
    )
    return _with_report(ds, len(rows), missing, notes, sources_are_splits=True, log_report=log_report)


def dataset_from_miml_dir(root: str | Path) -> Dataset:
    """Import every ``<name>_data.csv`` in ``root`` with its image folder (``Train/``, ``Val/`` …).

    The authors' train/val division is kept in ``sources`` only (each cell's CSV name); splits for
    training are made afresh, grouped by cell of its CSV. Importing all CSVs together lets the report
    find duplicates across them.
    """
    root = Path(root)
    parts = []
    for csv_path in sorted(root.glob("*.csv")):
        stem = csv_path.stem.removesuffix("_data")
        folder = next((d for d in root.iterdir() if d.is_dir() and d.name.lower() == stem.lower()), root)
        # the united data set's report (logged by concat) covers every part's defects once
        parts.append(dataset_from_miml_csv(csv_path, folder, log_report=False))
    if len(parts) > 1:
        # a group is a cell of its CSV: two exports from before a cell's ID named its run, put in one
        # folder, both hold sample_M1_Cell1 …, and a healthy and a stiff cell were one group, held
        # out together with a class set by a tie-break (as _read_data does for PATHs given)
        parts = [dataclasses.replace(p, groups=np.array([f"{s}:{g}" for s, g in zip(p.sources, p.groups)],
                                                        dtype=object)) for p in parts]
    if not parts:
        raise DataFormatError(f"{root}: no CSV files")
    ours = _our_export(root)
    if ours is not None:
        parts = [ours(p) for p in parts]
    if len(parts) == 1:
        parts[0].report.log()
        return parts[0]
    return Dataset.concat(parts)


def feature_unit(dataset: Dataset, name: str) -> str:
    """The unit of feature ``name`` as ``dataset`` holds it (what a model's spec records)."""
    if MIML_PROVENANCE in dataset.provenance:
        return "0-1, scaled per batch by the MIML authors"
    return FEATURES[name].unit if name in FEATURES else ""


def _our_export(root: Path):
    """What ``mimlsort export --miml`` said of the folder in ``miml_export.json``, as a change to
    each part: an export with ``--no-scale`` holds physical units and the crops' pixel size, so a
    model trained on it takes tracked cells (it was taken as the authors' 0–1 scaled values, and
    ``replay``/``reanalyze`` then refused the model). None for the authors' own folders."""
    path = root / "miml_export.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        scaled = bool(meta["scaled_to_0_1"])
        px = meta.get("crop_pixel_size_um")
        px = float(px) if px is not None else None
    except (ValueError, KeyError, TypeError) as err:
        raise DataFormatError(f"{path}: not an export description of mimlsort's: {err}") from None
    if scaled:
        return None  # min-max scaled per run, as the authors did: their provenance holds
    note = (f"mimlsort's export of {meta.get('source', '?')} ({path}): features in physical units "
            f"(di, transit_time_ms [ms], v_max_mm_s [mm/s])")
    return lambda d: dataclasses.replace(d, crop_pixel_size_um=px,
                                         provenance=tuple(p for p in d.provenance if p != MIML_PROVENANCE) + (note,))


def _default_features(available: Iterable[str]) -> tuple[str, ...]:
    have = set(available)
    names = tuple(n for n in MIML_FEATURES if n in have)
    if len(names) < 3:
        raise DataFormatError(f"events lack the MIML features {list(MIML_FEATURES[:3])} (have {sorted(have)})")
    return names


def dataset_from_events(
    events: Sequence,
    labels: str | Sequence[str],
    *,
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    source: str = "events",
    only_ok: bool = False,
) -> Dataset:
    """A data set from :class:`tracking.events.CellEvent` objects.

    ``labels`` is one class name for all events (a run of one pure population) or one per event.
    ``feature_names`` default to the MIML features present in every event (di, transit time, max
    velocity, and DIR when the tracker measured it). ``groups`` default to one group per event
    (``source#index``); pass e.g. the run name for coarser grouping. ``only_ok`` drops events with
    a flag in :data:`tracking.events.NOT_FOR_TRAINING` (all but TOUCHING; counted in the report's notes).
    """
    events = list(events)
    if isinstance(labels, str):
        labels = [labels] * len(events)
    labels = list(labels)
    if len(labels) != len(events):
        raise DataFormatError(f"{source}: {len(labels)} labels for {len(events)} events")
    notes = []
    if only_ok:
        keep = [i for i, e in enumerate(events) if e.trainable]
        if len(keep) < len(events):
            notes.append(f"{source}: {len(events) - len(keep)} events with quality flags left out")
        events = [events[i] for i in keep]
        labels = [labels[i] for i in keep]
        if groups is not None:
            groups = [groups[i] for i in keep]
    if not events:
        raise DataFormatError(f"{source}: no events")
    if feature_names is None:
        common = set(events[0].features)
        for e in events[1:]:
            common &= set(e.features)
        feature_names = _default_features(common)
    feature_names = tuple(feature_names)
    unknown = [n for n in feature_names if n not in FEATURES]
    if unknown:
        raise DataFormatError(f"unknown feature names {unknown}")
    feats = np.empty((len(events), len(feature_names)), np.float64)
    for i, e in enumerate(events):
        try:
            feats[i] = [e.features[n] for n in feature_names]
        except KeyError as err:
            raise DataFormatError(f"{source}: event {e.index} lacks feature {err.args[0]!r}") from None
    sizes = {float(e.crop_pixel_size_um) for e in events}
    if len(sizes) > 1:
        raise DataFormatError(f"{source}: events have different crop pixel sizes {sorted(sizes)}")
    ids = [f"{source}#{e.index}" for e in events]
    class_names, index = _class_index(labels, class_names)
    n = len(events)
    ds = Dataset(
        _stack([np.asarray(e.first_crop) for e in events], source, ids),
        _stack([np.asarray(e.last_crop) for e in events], source, ids),
        feats, feature_names, np.array([index[lab] for lab in labels], np.int64), class_names,
        np.array(list(groups) if groups is not None else ids, dtype=object), np.array([source] * n, dtype=object),
        np.array(ids, dtype=object), sizes.pop(), (f"{source}: tracker events, features in physical units",),
    )
    return _with_report(ds, n, (), notes)


def dataset_from_runs(runs: Mapping[str, tuple[Sequence, str]], **kwargs) -> Dataset:
    """Several runs, each of one pure population: ``{run name: (events, class name)}``."""
    return Dataset.concat([dataset_from_events(ev, lab, source=name, **kwargs) for name, (ev, lab) in runs.items()])


def dataset_from_csv(
    csv_path: str | Path,
    *,
    label: str | None = None,
    label_column: str = "label",
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    crop_pixel_size_um: float | None = None,
) -> Dataset:
    """Our own event table: columns named as in :mod:`tracking.features`, ``first_crop`` and
    ``last_crop`` (image paths relative to the CSV), optional ``label`` (or pass ``label`` for a run
    of one population), optional ``group``, ``id`` and ``crop_pixel_size_um`` (else the argument;
    unknown pixel size means crops are used as they are, without physical rescaling)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataFormatError(f"{csv_path}: no such file")
    cols, rows = _read_rows(csv_path)
    for c in ("first_crop", "last_crop"):
        if c not in cols:
            raise DataFormatError(f"{csv_path}: missing column {c!r} (has {cols})")
    if label is None and label_column not in cols:
        raise DataFormatError(f"{csv_path}: no {label_column!r} column and no label given")
    if label is None:
        _refuse_unlabelled(csv_path, rows, label_column)
    feature_names = tuple(feature_names) if feature_names else _default_features(c for c in cols if c in FEATURES)
    lacking = [n for n in feature_names if n not in cols]
    if lacking:
        raise MissingFeatures(f"{csv_path}: features {lacking} are not in the file (has {cols})")
    notes, missing = [], []
    read: list[tuple[tuple[int, ...], Path, int, str]] = []
    sizes: set[float] = set()
    ids, firsts, lasts, feats, labs, groups = [], [], [], [], [], []
    for line, k, r in rows:
        imgs = []
        for c in ("first_crop", "last_crop"):
            p = csv_path.parent / r[c]
            img = _read_grey(p, notes)
            if img is None:
                missing.append(f"{csv_path}:{line}: {p}{_unreadable(p)}")
            imgs.append(img)
        if imgs[0] is None or imgs[1] is None:
            continue
        read += [(img.shape, csv_path.parent / r[c], line, r.get("id") or f"{csv_path.stem}#{k}")
                 for img, c in zip(imgs, ("first_crop", "last_crop"))]
        feats.append(_row_numbers(csv_path, line, r, feature_names))
        if r.get("crop_pixel_size_um"):
            try:
                sizes.add(float(r["crop_pixel_size_um"]))
            except ValueError:
                raise DataFormatError(f"{csv_path}:{line}: crop_pixel_size_um: not a number: {r['crop_pixel_size_um']!r}") from None
        sid = r.get("id") or f"{csv_path.stem}#{k}"  # the row's index: ids in test_cells.csv name it
        ids.append(sid)
        firsts.append(imgs[0])
        lasts.append(imgs[1])
        labs.append(label if label is not None else r[label_column])
        groups.append(r.get("group") or sid)
    if not ids:
        raise DataFormatError(f"{csv_path}: no usable rows")
    _refuse_odd_sizes(csv_path, read)
    if len(sizes) > 1:
        raise DataFormatError(f"{csv_path}: rows have different crop_pixel_size_um {sorted(sizes)}")
    if sizes:
        px = sizes.pop()
        if crop_pixel_size_um is not None and not same_pixel_size(crop_pixel_size_um, px):
            raise DataFormatError(f"{csv_path}: crop_pixel_size_um column says {px}, but {crop_pixel_size_um} was given")
        crop_pixel_size_um = px
    class_names, index = _class_index(labs, class_names)
    n = len(ids)
    ds = Dataset(
        _stack(firsts, str(csv_path), ids), _stack(lasts, str(csv_path), ids), np.asarray(feats, np.float64),
        feature_names, np.array([index[lab] for lab in labs], np.int64), class_names,
        np.array(groups, dtype=object), np.array([csv_path.name] * n, dtype=object), np.array(ids, dtype=object),
        crop_pixel_size_um, (f"{csv_path.name}: event table, features in physical units",),
    )
    return _with_report(ds, len(rows), missing, notes)


def dataset_from_rtdc(
    path: str | Path,
    label: str,
    *,
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    only_ok: bool = True,
) -> Dataset:
    """Our own event file (``.rtdc`` written by app.storage.EventWriter) of one pure population.

    Reads the rows under ``/mimlsort/events`` (our feature names, first/last crops, quality); the
    crops' pixel size is the file's ``imaging:pixel size``. ``only_ok`` leaves out events with a
    flag in :data:`tracking.events.NOT_FOR_TRAINING` (all but TOUCHING; counted in the report). The file layout is read with h5py, so this needs no
    part of the application.
    """
    import h5py
    import hdf5plugin  # noqa: F401  (registers the compression filters dclab-style files use)

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    try:
        from mimlsort.inputs import open_hdf5

        h5 = open_hdf5(path)
    except OSError as err:
        raise DataFormatError(f"{path}: not a readable HDF5/.rtdc file ({err})") from None
    with h5:
        grp = h5.get("mimlsort/events")
        if _rtdc_rows(h5, grp) == 0:
            raise DataFormatError(f"{path}: holds no events (a mimlsort event file of a run in which no cell "
                                  f"was recorded)")
        if grp is None or "first_crop" not in grp or "last_crop" not in grp:
            raise DataFormatError(f"{path}: no /mimlsort/events with first_crop and last_crop (not a mimlsort event file "
                                  f"with crops); export crops or use the CSV/MIML export instead")
        px = h5.attrs.get("imaging:pixel size")
        cols = [n for n in FEATURES if n in grp]
        # the rows every column holds: a writer killed mid-flush leaves some columns longer
        # (app.storage.read_events reads them so; here they ended in an IndexError)
        lengths = [len(d) for d in grp.values() if hasattr(d, "shape") and d.shape]
        n = min(lengths)
        notes = []
        if n < max(lengths):
            notes.append(f"{path.name}: datasets hold {n}..{max(lengths)} rows (writer killed mid-flush?); "
                         f"reading {n}")
        keep = np.ones(n, bool)
        if only_ok and "quality" in grp:
            keep = (grp["quality"][:n].astype(np.int64) & int(NOT_FOR_TRAINING)) == 0
            if (~keep).any():
                notes.append(f"{path.name}: {int((~keep).sum())} events with quality flags left out")
        idx = np.flatnonzero(keep)
        if not len(idx):
            # every cell of a reanalysed RT-DC file is INCOMPLETE (one image, no passage): the
            # message said only "no usable events", though README trains on such files
            from tracking.events import Quality

            q = grp["quality"][:n].astype(np.int64)
            flags = ", ".join(f"{f.name} {int(((q & int(f)) != 0).sum())}" for f in Quality
                              if f & NOT_FOR_TRAINING and ((q & int(f)) != 0).any())
            raise DataFormatError(
                f"{path}: no usable events: all {n} carry quality flags that leave them out of training ({flags}). "
                f"--all-events keeps them; cells of a reanalysed file (INCOMPLETE: one image, no passage) then "
                f"with --features one image gives, e.g. di,deform,area_um")
        # judged on the cells that are kept: an INCOMPLETE event's NaN transit time had made the
        # whole file "lack the MIML features"
        if feature_names:
            names = tuple(feature_names)
        else:
            unmeasured = {c: int((~np.isfinite(grp[c][:n][idx])).sum()) for c in cols}
            try:
                names = _default_features(c for c in cols if not unmeasured[c])
            except DataFormatError:
                # with the flagged events kept (--all-events) an INCOMPLETE one's NaN transit time
                # said the file "lacks the MIML features" it holds, naming no file
                lacking = {c: k for c in MIML_FEATURES[:3] if (k := unmeasured.get(c))}
                if not lacking or any(c not in cols for c in MIML_FEATURES[:3]):
                    raise DataFormatError(f"{path}: events lack the MIML features {list(MIML_FEATURES[:3])} "
                                          f"(have {cols})") from None
                raise DataFormatError(
                    f"{path}: " + ", ".join(f"{c} is not measured (NaN) in {k}" for c, k in lacking.items())
                    + f" of the {len(idx)} events read; a model cannot take a cell without them"
                    + (": leave out --all-events to leave flagged cells out, or give --features they all have (one "
                       "image gives di,deform,area_um)" if not only_ok else "")) from None
        missing = [n for n in names if n not in grp]
        if missing:
            raise MissingFeatures(f"{path}: features {missing} are not in the file (has {cols})")
        feats = np.stack([grp[name][:n][idx] for name in names], axis=1).astype(np.float64)
        first = grp["first_crop"][:n][idx]
        last = grp["last_crop"][:n][idx]
        ev_index = grp["event_index"][:n][idx] if "event_index" in grp else idx
    ids = [f"{path.stem}#{int(i)}" for i in ev_index]
    class_names, index = _class_index([label], class_names)
    ds = Dataset(
        first, last, feats, names, np.full(len(idx), index[label], np.int64), class_names,
        np.array(ids, dtype=object), np.array([path.name] * len(idx), dtype=object), np.array(ids, dtype=object),
        float(px) if px else None, (f"{path.name}: mimlsort event file, features in physical units",),
    )
    return _with_report(ds, n, (), notes)


def _rtdc_rows(h5, grp) -> int | None:
    """Rows under ``/mimlsort/events`` of our event file; None when it is not one."""
    if grp is None or not hasattr(grp, "values"):
        return None
    lengths = [len(d) for d in grp.values() if hasattr(d, "shape") and d.shape]
    if lengths:
        return max(lengths)
    count = h5.attrs.get("experiment:event count")
    if "user:mimlsort format" in h5.attrs or count is not None:
        try:
            return int(count) if count is not None else 0
        except (TypeError, ValueError):
            return 0
    return None


def _is_miml_csv(path: Path) -> bool:
    with _open_csv(path) as fh:
        header = [c.strip().casefold() for c in next(csv.reader(fh), [])]
    return MIML_ID_COLUMN.casefold() in header and MIML_LABEL_COLUMN.casefold() in header


def dataset_from_path(item: str | Path, *, only_ok: bool = True, feature_names: Sequence[str] | None = None,
                      pixel_size_um: float | None = None) -> Dataset:
    """One data source named on the command line: ``PATH`` or ``PATH=CLASS``.

    * a folder with ``*_data.csv`` files: the MIML authors' format (labels from their CSV);
    * a ``.csv`` with ``cell ID``/``Cell Type`` columns: one MIML authors' CSV (images beside it, or
      in the folder named like the CSV without ``_data``);
    * another ``.csv``: our event table (``first_crop``/``last_crop`` image paths, a ``label``
      column, or ``=CLASS`` for a run of one population; crop pixel size from its
      ``crop_pixel_size_um`` column or ``pixel_size_um``);
    * ``.rtdc``: our event file of one population (``=CLASS`` required).
    """
    text = str(item)
    label = None
    path = Path(text)
    if not path.exists() and "=" in text:
        text, label = text.rsplit("=", 1)
        path = Path(text)
        if not label:
            raise DataFormatError(f"{item}: empty class name after '='")
    if not path.exists():
        raise DataFormatError(f"{path}: no such file or folder")
    if path.is_dir():
        if label is not None:
            raise DataFormatError(f"{item}: a MIML authors' folder carries its own labels; drop '={label}'")
        return dataset_from_miml_dir(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        if _is_miml_csv(path):
            stem = path.stem.removesuffix("_data")
            folder = next((d for d in path.parent.iterdir() if d.is_dir() and d.name.lower() == stem.lower()), path.parent)
            ds = dataset_from_miml_csv(path, folder)
            ours = _our_export(path.parent)  # a --no-scale export's table holds physical units, named or not
            return ours(ds) if ours is not None else ds
        return dataset_from_csv(path, label=label, feature_names=feature_names, crop_pixel_size_um=pixel_size_um)
    if suffix == ".rtdc":
        if label is None:
            raise DataFormatError(f"{path}: say which class the file holds: {path}=CLASS")
        return dataset_from_rtdc(path, label, feature_names=feature_names, only_ok=only_ok)
    raise DataFormatError(f"{path}: unknown data format (expected a MIML authors' folder, .csv or .rtdc)")


def dataset_from_paths(items: Sequence[str | Path], **kwargs) -> Dataset:
    """Every source of :func:`dataset_from_path`, concatenated (class names united)."""
    parts = [dataset_from_path(i, **kwargs) for i in items]
    if not parts:
        raise DataFormatError("no data given")
    return parts[0] if len(parts) == 1 else Dataset.concat(parts)


# ---------------------------------------------------------------------------------------------
# grouped, stratified splits


def _groups_by_class(labels: np.ndarray, groups: np.ndarray) -> tuple[dict[int, list], dict]:
    """Each group's class (its majority label) and the groups of each class, in first-seen order."""
    members: dict = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[int, list] = defaultdict(list)
    for g, idx in members.items():
        by_class[int(np.bincount(labels[idx]).argmax())].append(g)
    return by_class, members


def grouped_split(labels, groups, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): whole groups per side, about ``test_fraction`` of each class's
    groups in test (at least one when the class has two or more groups)."""
    labels, groups = np.asarray(labels), np.asarray(groups, dtype=object)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    by_class, members = _groups_by_class(labels, groups)
    test_groups = []
    for c in sorted(by_class):
        gs = list(by_class[c])
        rng.shuffle(gs)
        k = int(round(test_fraction * len(gs)))
        if test_fraction > 0 and len(gs) >= 2:
            k = min(max(k, 1), len(gs) - 1)
        test_groups += gs[:k]
    test = np.sort(np.concatenate([members[g] for g in test_groups]).astype(np.int64)) if test_groups else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def kfold_splits(labels, groups, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, test) pairs; the test parts are disjoint, cover every sample, keep groups whole
    and hold each class's groups in near-equal shares (dealt round-robin after a seeded shuffle)."""
    labels, groups = np.asarray(labels), np.asarray(groups, dtype=object)
    by_class, members = _groups_by_class(labels, groups)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    if k > len(members):
        raise DataFormatError(f"{k}-fold cross-validation needs at least {k} groups (cells), got {len(members)}")
    rng = np.random.default_rng(seed)
    fold_of: dict = {}
    sizes = np.zeros(k, np.int64)
    for c in sorted(by_class):
        gs = list(by_class[c])
        rng.shuffle(gs)
        # start each class at the folds that are smallest so far, so fold sizes stay balanced
        order = np.argsort(sizes, kind="stable")
        for j, g in enumerate(gs):
            f = int(order[j % k])
            fold_of[g] = f
            sizes[f] += len(members[g])
    folds = []
    everything = np.arange(len(labels))
    for f in range(k):
        test = np.sort(np.concatenate([members[g] for g, ff in fold_of.items() if ff == f] or [np.zeros(0, np.int64)]).astype(np.int64))
        folds.append((np.setdiff1d(everything, test), test))
    return folds


# ---------------------------------------------------------------------------------------------
# spec glue: the one narrow door between training and inference.spec / inference.preprocess


def spec_for_training(
    dataset: Dataset,
    fit_idx,
    *,
    arch: str,
    channels: Sequence[str] | None = None,
    image_size: int = 48,
    parent=None,
    refit_features: bool = True,
    provenance=None,
    feature_norm: str = "zscore",
    pixel_norm: str = "fixed",
):
    """The :class:`inference.spec.ModelSpec` for training on ``dataset``, with the feature and
    pixel normalisation fitted on the samples ``fit_idx`` only (never on validation or test cells).

    The field of view is the whole crop: ``crop_size_um`` = crop side × the data's pixel size (both
    unknown for data without a pixel size, e.g. the MIML authors' crops; then crops are resampled
    as they come). With ``parent`` (fine-tuning), image layout and pixel normalisation are the
    parent's, the classes the data's, and features are refitted only when ``refit_features``.
    """
    from dataclasses import replace

    from inference.spec import FeatureSpec, ImageSpec, ModelSpec, PixelNorm, Provenance

    fit_idx = np.asarray(fit_idx, np.int64)
    if provenance is None:
        provenance = Provenance()
    elif isinstance(provenance, Mapping):
        provenance = Provenance(**provenance)
    x = dataset.features[fit_idx]

    def unit(name: str) -> str:
        return feature_unit(dataset, name)

    def fitted_features():
        return tuple(FeatureSpec.fit(n, x[:, i], feature_norm, unit=unit(n)) for i, n in enumerate(dataset.feature_names))

    if parent is not None:
        if not refit_features and any(f.unit and f.unit != unit(f.name) for f in parent.features):
            # the parent saw its features in other units (the MIML authors' 0-1 scaled CSVs): its
            # normalisation would scale these cells' values wrongly, and so would the child's
            log.warning("the parent model's features are in other units than the data's (%s): their normalisation "
                        "is fitted anew on the data", "; ".join(f"{f.name}: {f.unit!r} vs {unit(f.name)!r}"
                                                               for f in parent.features if f.unit != unit(f.name)))
            refit_features = True
        features = fitted_features() if refit_features else parent.features
        if not refit_features and tuple(f.name for f in features) != tuple(dataset.feature_names):
            raise DataFormatError(f"the data's features {list(dataset.feature_names)} are not the parent model's "
                                  f"{[f.name for f in features]}")
        return replace(parent, class_names=tuple(dataset.class_names), features=features, provenance=provenance)

    channels = tuple(channels or ("first", "last"))
    side = dataset.crop_shape[0]
    px = dataset.crop_pixel_size_um
    image = ImageSpec(image_size, image_size, channels, side * px if px else None, px)
    if pixel_norm == "per_image":
        pn = PixelNorm("per_image")
    else:
        pix = []
        if "first" in channels:
            pix.append(dataset.first[fit_idx])
        if "last" in channels:
            pix.append(dataset.last[fit_idx])
        pix = np.concatenate(pix).astype(np.float64) if len(fit_idx) else np.zeros(1)
        std = float(pix.std())
        pn = PixelNorm("fixed", float(pix.mean()), std if std > 1e-6 else 1.0)
    return ModelSpec(tuple(dataset.class_names), fitted_features(), image, arch, pn, provenance)


def preprocess_dataset(spec, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The model inputs (image float32[N, C, H, W], features float32[N, F]) of every sample,
    through :class:`inference.preprocess.Preprocessor` — the code the live classifier runs."""
    from inference.preprocess import Preprocessor

    ds = dataset.select_features(spec.feature_names)
    return Preprocessor(spec).arrays(ds.first, ds.last, ds.features, dataset.crop_pixel_size_um)
