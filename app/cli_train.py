"""``mimlsort train`` and ``mimlsort evaluate``: MIML models from labelled cells (extra `train`: torch).

Data sources are named ``PATH`` or ``PATH=CLASS`` (see inference.training.data.dataset_from_path):
a MIML authors' folder or CSV, our event table CSV, or our ``.rtdc`` event file of one population.
``--simulated`` adds cells from the synthetic camera, tracked and labelled with their true class.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path


def _csv_list(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _mix(text: str) -> dict[str, float]:
    """``hct116=0.5,wbc=0.5`` → class fractions."""
    out = {}
    for part in _csv_list(text):
        name, _, frac = part.partition("=")
        try:
            out[name.strip()] = float(frac) if frac else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"class mix must look like a=0.5,b=0.5, got {text!r}") from None
    return out


def _add_sim_args(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("simulated data (--simulated)")
    g.add_argument("--simulated", action="store_true", help="add cells from the synthetic camera, labelled with their true class")
    g.add_argument("--sim-seconds", type=float, default=20.0, help="simulated seconds per run (default 20)")
    g.add_argument("--sim-runs", type=int, default=1, help="independent simulated runs (seeds sim-seed, sim-seed+1, …)")
    g.add_argument("--sim-seed", type=int, default=1, help="seed of the first simulated run (default 1)")
    g.add_argument("--sim-classes", type=_mix, help="class mix, e.g. hct116=0.5,wbc=0.5 (default: the simulator's)")


# ---------------------------------------------------------------------------------------------
# option checks: run before any data is read, so a typo costs no loading time

#: the simulator's settings -> the options that set them (its errors named "runs", "duration_s")
_SIM_OPTIONS = {"seconds": "--sim-seconds", "duration_s": "--sim-seconds", "runs": "--sim-runs",
                "seed": "--sim-seed", "class_mix": "--sim-classes"}


def _simulated_data(args: argparse.Namespace, **changes):
    """The SimulatedData of the --sim-* options, checked as the simulator will use them; a
    ConfigError names the option."""
    from app.simdata import SimulatedData
    from mimlsort.errors import ConfigError

    mix = getattr(args, "sim_classes", None)
    try:
        sim = SimulatedData(seconds=args.sim_seconds, runs=args.sim_runs, seed=args.sim_seed,
                            class_mix=tuple(sorted(mix.items())) if mix else None, **changes)
        sim.settings_for_run(0)
    except ConfigError as err:
        key = err.key.split(".")[-1]
        raise ConfigError(_SIM_OPTIONS.get(key, err.key), err.problem) from None
    return sim


def _check_training_options(args: argparse.Namespace) -> None:
    """Training options in range (ConfigError naming the option)."""
    from mimlsort.errors import ConfigError

    if args.epochs < 1:
        raise ConfigError("--epochs", f"must be at least 1, got {args.epochs}")
    if args.batch_size < 2:
        # every architecture has BatchNorm layers, which cannot train on a batch of one sample
        raise ConfigError("--batch-size", f"must be at least 2 (BatchNorm needs two samples per batch), got {args.batch_size}")
    patience = getattr(args, "patience", None)
    if patience is not None and patience < 0:  # trained as "off" and recorded as -1 in the provenance
        raise ConfigError("--patience", f"must be 0 (off) or a number of epochs, got {patience}")
    lr = getattr(args, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ConfigError("--lr", f"must be a finite number > 0, got {lr}")
    # these reached the model spec after the data were loaded, and its words named its own keys
    # ("crop_size_um: must be > 0 µm, got -40.0" for --pixel-size -1; "height" for --image-size)
    size = getattr(args, "image_size", None)
    if size is not None and not 8 <= size <= 1024:
        raise ConfigError("--image-size", f"must be in [8, 1024] pixels, got {size}")
    channels = getattr(args, "channels", None) or ()
    from inference.spec import CHANNELS

    odd = [c for c in channels if c not in CHANNELS]
    if odd or len(set(channels)) < len(channels):
        raise ConfigError("--channels", f"must name {' and/or '.join(CHANNELS)}, each once, got {','.join(channels)}")
    _check_pixel_size(args)


def _check_pixel_size(args: argparse.Namespace) -> None:
    from mimlsort.errors import ConfigError

    px = getattr(args, "pixel_size", None)
    if px is not None and not (math.isfinite(px) and px > 0):
        raise ConfigError("--pixel-size", f"must be a finite number of µm per pixel > 0, got {px}")


def _check_fraction(option: str, value: float) -> None:
    from mimlsort.errors import ConfigError

    if not 0.0 <= value < 1.0:  # also rejects nan
        raise ConfigError(option, f"must be in [0, 1), got {value}")


#: k of k-fold cross-validation when --folds is not given (fewer when a class has fewer cells)
DEFAULT_FOLDS = 5


def _check_folds_option(folds: int | None) -> None:
    from mimlsort.errors import ConfigError

    if folds is not None and folds < 0:
        raise ConfigError("--folds", f"must be 0 or 1 (no cross-validation) or at least 2, got {folds}")


HOLD_OUT_HELP = ("what test splits, folds and the early-stopping set hold out: single cells (default) or whole "
                 "recordings (each PATH given; a simulated run; a MIML authors' folder is one, as its CSVs split one "
                 "batch of cells): then no recording has cells on both sides, and the figures say how the model "
                 "does on a recording it never saw")


def _folds_for_data(ds, folds: int | None, *, what: str = "", unit: str = "cells") -> int:
    """The k of k-fold parts for ``ds``. Each part needs a cell (group) of every class, so k may not
    exceed the cells of the smallest class: an explicit --folds above that is an error; the default
    is lowered to it (no cross-validation below 2)."""
    import numpy as np

    from mimlsort.errors import ConfigError

    labels, groups = np.asarray(ds.labels), np.asarray(ds.groups, dtype=object)
    cells = {name: len(set(groups[labels == c].tolist())) for c, name in enumerate(ds.class_names)}
    cells = {k: v for k, v in cells.items() if v > 0}
    name, fewest = min(cells.items(), key=lambda kv: kv[1]) if cells else ("", 0)
    if folds is None:
        k = min(DEFAULT_FOLDS, fewest)
        if k < DEFAULT_FOLDS:
            k = k if k >= 2 else 0
            print(f"class {name!r} has {fewest} {unit if fewest != 1 else unit[:-1]}{what}: "
                  + (f"{k}-fold cross-validation" if k else "no cross-validation") + " (see --folds)", file=sys.stderr)
        return k
    if folds >= 2 and cells and folds > fewest:
        raise ConfigError("--folds", f"{folds}-fold cross-validation needs at least {folds} {unit} of every class, but "
                                     f"class {name!r} has {fewest}{what}; use --folds {fewest} or fewer "
                                     f"(0: no cross-validation)")
    return folds


def _check_out(text: str) -> tuple[Path, list[Path]]:
    """The --out folder and the folders this run will have to create for it (deepest first).

    Nothing is created here: a run that fails on its input leaves no folder behind.
    """
    from mimlsort.errors import ConfigError

    out = Path(text)
    if os.path.lexists(out) and not out.is_dir():
        raise ConfigError("--out", f"{out}: exists and is not a folder")
    missing = []
    p = out.absolute()
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise ConfigError("--out", f"{out}: {p} is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError("--out", f"{out}: cannot write in {p}")
    return out, missing


@contextlib.contextmanager
def _output_folder(out: Path, missing: list[Path]) -> Iterator[Path]:
    """Create ``out``; if the run then fails, remove the folders it created that are still empty."""
    from mimlsort.errors import ConfigError

    def clean_up() -> None:
        for d in missing:  # deepest first; rmdir refuses folders with anything in them
            try:
                d.rmdir()
            except OSError:
                break

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        clean_up()
        raise ConfigError("--out", f"{out}: cannot create the folder ({err.strerror or err})") from None
    try:
        yield out
    except BaseException:
        clean_up()
        raise


def _data_description(args: argparse.Namespace) -> str:
    parts = list(args.data or ())
    if getattr(args, "simulated", False):
        parts.append("simulated cells")
    return ", ".join(parts)


def _check_parent(args: argparse.Namespace) -> None:
    """--init-from: a checkpoint, and the options that would change what it takes agree with it.

    A file that was no checkpoint, or an --arch of another kind, was found after the data were
    loaded; --channels and --image-size were ignored without a word, and --features differing
    from the parent's ended in "features [...] are not in the data" naming no model. The data are
    then read with the parent's features."""
    from inference.training.train import load_checkpoint
    from mimlsort.errors import ConfigError, ModelError

    try:
        model, spec = load_checkpoint(args.init_from)
    except ModelError as err:
        raise ConfigError("--init-from", str(err)) from None
    parent = f"the model to fine-tune ({args.init_from})"
    if args.arch and args.arch != model.arch:
        raise ConfigError("--arch", f"{args.arch}, but {parent} is a {model.arch!r} model: leave --arch out")
    if args.features and tuple(args.features) != spec.feature_names:
        raise ConfigError("--features", f"{','.join(args.features)}, but {parent} takes "
                                        f"{','.join(spec.feature_names)}: leave --features out")
    if args.channels and tuple(args.channels) != spec.image.channels:
        raise ConfigError("--channels", f"{','.join(args.channels)}, but {parent} takes "
                                        f"{','.join(spec.image.channels)}: leave --channels out")
    if args.image_size and args.image_size != spec.image.height:
        raise ConfigError("--image-size", f"{args.image_size}, but {parent} takes {spec.image.height} px: "
                                          f"leave --image-size out")
    args.features = spec.feature_names
    args.features_from = ("--init-from", parent)


def _load_data(args: argparse.Namespace, *, role: str):
    """(data set, per cell the data it came from: the PATH given, resolved, or the simulated run)."""
    from inference.training.data import MissingFeatures
    from mimlsort.errors import ConfigError

    try:
        return _read_data(args, role=role)
    except MissingFeatures as err:
        given_by = getattr(args, "features_from", None)
        if given_by:
            option, model = given_by
            raise ConfigError(option, f"{model} takes features {list(args.features)}: {err} "
                                      f"(data: {_data_description(args)})") from None
        if args.features:
            raise ConfigError("--features", f"{err} (data: {_data_description(args)})") from None
        raise


def _item_path(item) -> Path:
    """The PATH of a ``PATH`` or ``PATH=CLASS`` given (as inference.training.data reads it)."""
    path = Path(item)
    if not path.exists() and "=" in str(item):
        path = Path(str(item).rsplit("=", 1)[0])
    return path


def _check_each_path_once(items) -> None:
    """A file named twice (A.rtdc=x A.rtdc=x) had its cells counted twice and, held out by
    recording, on both sides of the split: the held-out figures tested cells the model trained on
    (the import report listed every cell as an identical image, 560 warnings)."""
    from mimlsort.errors import DataFormatError

    seen: dict[Path, str] = {}
    for item in items:
        path = _item_path(item)
        if not path.exists():
            continue  # the importer names it
        key = path.resolve()
        if key in seen:
            raise DataFormatError(f"{item}: the data {seen[key]} again: give each file or folder once")
        seen[key] = str(item)


def _read_data(args: argparse.Namespace, *, role: str):
    from mimlsort.errors import DataFormatError

    _check_each_path_once(args.data or ())
    import numpy as np

    parts, origins = [], []
    by_recording = getattr(args, "hold_out", "cell") == "recording"
    if args.data:
        from dataclasses import replace

        from inference.training.data import Dataset, dataset_from_path

        items = [dataset_from_path(item, only_ok=not args.all_events, feature_names=args.features,
                                   pixel_size_um=args.pixel_size) for item in args.data]
        if by_recording:  # one group per PATH given: its cells never end up on both sides of a split
            items = [replace(d, groups=np.array([f"{k}:{item}"] * len(d), dtype=object))
                     for k, (item, d) in enumerate(zip(args.data, items))]
        elif len(items) > 1:
            # a group is a cell of its file: runA/events.csv's e0 and runB/events.csv's e0 (or two
            # days' M001_data.rtdc#5) were one group, a healthy and a stiff cell held out together
            items = [replace(d, groups=np.array([f"{k}:{g}" for g in d.groups], dtype=object))
                     for k, d in enumerate(items)]
        # a cell's id is its file's (run#5, e12): two files' ids can be the same
        origins += [o for item, d in zip(args.data, items) for o in _origins(item, d)]
        parts.append(items[0] if len(items) == 1 else Dataset.concat(items))
    if args.simulated:
        from app.simdata import simulated_dataset

        sd = simulated_dataset(_simulated_data(args, only_ok=not args.all_events), progress=not args.no_progress)
        if by_recording:  # a simulated run is a recording
            from dataclasses import replace

            sd = replace(sd, groups=sd.sources.copy())
        origins += [str(s) for s in sd.sources]
        parts.append(sd)
    if not parts:
        raise DataFormatError(f"{role}: give data (PATH or PATH=CLASS) or --simulated")
    if args.features:
        # before uniting: simulated cells carry every feature the tracker measures, files the ones
        # named ("feature names differ: ('di', 'area_um') vs ('di', 'transit_time_ms', …)")
        parts = [p.select_features(args.features) for p in parts]
    if len(parts) == 1:
        ds = parts[0]
    else:
        from inference.training.data import Dataset

        ds = Dataset.concat(parts)
    return ds, np.array(origins, dtype=object)


def _origins(item, d) -> list[str]:
    """Per cell of ``d``, read from ``item``, the file it came from, as test_cells.csv names it: the
    PATH given, resolved; for a MIML folder the CSV inside it (``sources`` holds the CSV's name).
    Two old exports in one folder hold the same IDs, each a cell of its CSV (one group), so the
    folder could not say which namesake was held out."""
    path = _item_path(item).resolve()
    if path.is_dir():
        return [str(path / str(s)) for s in d.sources]
    return [str(path)] * len(d)


def _check_recordings(ds, args: argparse.Namespace) -> None:
    """--hold-out recording: every class needs recordings on both sides of a split, where train
    makes one: a test set (--test-fraction) or an early-stopping set (--val-fraction). It refused
    a class of one recording with neither asked for, when nothing is held out. Cross-validation
    parts are counted in recordings by _folds_for_data (an explicit --folds above them is refused
    there, the default lowered); evaluate scores every cell and does not come here."""
    import numpy as np

    from mimlsort.errors import ConfigError

    asked = [f"{option} {value:g}" for option, value in (("--test-fraction", args.test_fraction),
                                                         ("--val-fraction", args.val_fraction)) if value > 0]
    if not asked:
        return
    labels, groups = np.asarray(ds.labels), np.asarray(ds.groups, dtype=object)
    for c, name in enumerate(ds.class_names):
        n = len(set(groups[labels == c].tolist()))
        if 0 < n < 2:
            raise ConfigError("--hold-out", f"recording: class {name!r} comes from {n} recording; holding out whole "
                                            f"recordings ({', '.join(asked)}) needs at least 2 of every class (or "
                                            f"--test-fraction 0 --val-fraction 0: none held out)")


def _check_recordings_left(train, test, args: argparse.Namespace) -> None:
    """--hold-out recording with --test-fraction and --val-fraction: the early-stopping set is taken
    from the recordings the test left, and a class left one has none there (two recordings: one
    tested, one trained on). Its early stopping then watched the other classes only, or nothing,
    unsaid. Refused as a class of one recording is (_check_recordings), before minutes of training."""
    from mimlsort.errors import ConfigError

    if test is None or args.val_fraction <= 0:
        return
    for c, name in enumerate(train.class_names):
        left, held = _recordings_of(train, c), _recordings_of(test, c)
        if len(left) >= 2 or not held:
            continue
        every = ", ".join(_recording_name(g) for g in sorted(left + held, key=_given_order))
        raise ConfigError("--hold-out", f"recording: class {name!r} comes from {len(left) + len(held)} recordings "
                                        f"({every}); --test-fraction {args.test_fraction:g} holds out "
                                        f"{', '.join(map(_recording_name, held))}, and none is left for early "
                                        f"stopping (--val-fraction {args.val_fraction:g}): give another recording of "
                                        f"the class, or --val-fraction 0 (train all --epochs, no early stopping), or "
                                        f"--test-fraction 0 (no held-out test: score the model on new recordings "
                                        f"with mimlsort evaluate)")


def _check_fold_recordings(ds, folds: int, args: argparse.Namespace) -> None:
    """--hold-out recording with cross-validation and --val-fraction: each fold takes its early-stopping
    recordings from its own training part, and a class trained there on one recording had none (two
    recordings of a class in 2 folds: the default). That fold then kept the epoch of the lowest
    training loss, or stopped on the other classes only, while the final fit stopped on every class:
    the cross-validation figures were not of the exported model's training, and nothing said so.
    Refused as the split before the folds is (_check_recordings_left), naming the fold; the folds
    are the ones train_model will make (same data, k and seed)."""
    from mimlsort.errors import ConfigError

    if folds < 2 or args.val_fraction <= 0:
        return
    short = _fold_short_of_recordings(ds, folds, args.seed)
    if short is None:
        return
    fold, c, trained, held = short
    name = ds.class_names[c]
    outs = ["give more recordings of the class"]
    better = [k for k in range(2, _fewest_recordings(ds) + 1)
              if k != folds and _fold_short_of_recordings(ds, k, args.seed) is None]
    if better:
        outs.append(f"--folds {better[0]} (each fold holds fewer out)")
    outs += ["--val-fraction 0 (the folds and the final fit train all --epochs, no early stopping)",
             "--folds 0 (no cross-validation)"]
    raise ConfigError("--hold-out", f"recording: fold {fold + 1} of the {folds}-fold cross-validation holds out "
                                    f"{', '.join(map(_recording_name, held))} of class {name!r} and trains on "
                                    f"{', '.join(map(_recording_name, trained))} only: none is left for its early "
                                    f"stopping (--val-fraction {args.val_fraction:g}); {', or '.join(outs)}")


def _fold_short_of_recordings(ds, folds: int, seed: int):
    """(fold, class, its recordings trained on, those held out) of the first fold whose training part
    holds fewer than 2 recordings of a class (early stopping takes whole recordings out of it); None
    when every fold keeps 2."""
    import numpy as np

    from inference.training.data import kfold_splits

    labels, groups = np.asarray(ds.labels), np.asarray(ds.groups, dtype=object)

    def of(idx, c: int) -> list[str]:  # on the labels, not ds.subset: that copies every crop
        return sorted(set(groups[idx][labels[idx] == c].tolist()), key=_given_order)

    for f, (tr, te) in enumerate(kfold_splits(labels, groups, folds, seed)):
        for c in range(len(ds.class_names)):
            trained = of(tr, c)
            if 0 < len(trained) < 2:
                return f, c, trained, of(te, c)
    return None


def _fewest_recordings(ds) -> int:
    return min((n for n in (len(_recordings_of(ds, c)) for c in range(len(ds.class_names))) if n), default=0)


def _recordings_of(ds, c: int) -> list[str]:
    """The groups of class ``c`` in ``ds``: under --hold-out recording ``k:PATH`` (the k-th PATH
    given) or a simulated run."""
    import numpy as np

    return list(dict.fromkeys(np.asarray(ds.groups, dtype=object)[np.asarray(ds.labels) == c].tolist()))


def _given_order(group: str) -> tuple[int, str]:
    k, colon, _ = str(group).partition(":")
    return (int(k), "") if colon and k.isdigit() else (1 << 30, str(group))


def _recording_name(group: str) -> str:
    """A recording as the user named it: the PATH given (``k:`` dropped), or the simulated run."""
    return re.sub(r"^\d+:", "", str(group))


def _unit(args: argparse.Namespace) -> str:
    return "recordings" if getattr(args, "hold_out", "cell") == "recording" else "cells"


def _recordings_confound_classes(args: argparse.Namespace) -> str:
    """A note when every recording is labelled as a whole (PATH=CLASS) with one class each: cells
    are held out one by one, so the test figures then measure the recordings' differences as much
    as the cells' (two recordings of one population, told apart by lamp brightness, tested 1.000)."""
    data = list(args.data or ())
    classes = {d.rpartition("=")[2] for d in data if "=" in d}
    if (args.simulated or len(data) < 2 or len(classes) < 2 or any("=" not in d for d in data)
            or getattr(args, "hold_out", "cell") == "recording"):
        return ""
    return ("note: every recording holds cells of one class only, and cells are held out one by one: the "
            "accuracy on held-out cells and folds measures the differences between the recordings (illumination, "
            "focus, day) as much as between the cells. Test the model on recordings it never saw "
            "(mimlsort evaluate MODEL RUN=CLASS) before sorting with it.")


def cmd_train(args: argparse.Namespace) -> int:
    # without torch this raises BackendUnavailable naming the extra (mimlsort[train]) before any data is read
    from inference.training.train import train_model  # noqa: F401
    from inference.classifier import _import_ort

    _import_ort()  # the model is checked with ONNX Runtime once trained: without it the work was lost
    from inference.training.models import arch_info
    from mimlsort.errors import ConfigError, ModelError
    from mimlsort.outputs import check_folder_outputs

    _check_training_options(args)
    _check_fraction("--val-fraction", args.val_fraction)
    _check_fraction("--test-fraction", args.test_fraction)
    if args.val_fraction + args.test_fraction >= 1.0:
        raise ConfigError("--val-fraction", f"plus --test-fraction must be below 1, got {args.val_fraction} + "
                                            f"{args.test_fraction}")
    _check_folds_option(args.folds)
    if args.arch:
        try:
            arch_info(args.arch)
        except ModelError as err:
            raise ConfigError("--arch", str(err)) from None
    out, missing = _check_out(args.out)
    # what is wrong with the options is said before minutes of loading data, not after
    from inference.training.train import resolve_device

    try:
        resolve_device(args.device)
    except ModelError as err:
        raise ConfigError("--device", str(err)) from None
    if args.simulated:
        _simulated_data(args)
    if args.init_from and not Path(args.init_from).is_file():
        raise ConfigError("--init-from", f"{args.init_from}: no such model file")
    if args.init_from:
        _check_parent(args)
    elif args.freeze_image_branch:
        # the image branch of a new model is random: frozen, the model learnt from features alone
        raise ConfigError("--freeze-image-branch", "keeps the image branch of the model given with --init-from; "
                                                   "without one it would stay at its random start")
    name = args.name.removesuffix(".onnx").removesuffix(".pt")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError("--name", f"must be a plain file name (letters, digits, '.', '-', '_'), got {args.name!r}")
    args.name = name
    # a second training into the folder replaced the first's model (event files name the model
    # they sorted with by its hash) and its report
    if not args.replace:
        check_folder_outputs(out, {f"{name}.onnx": None, f"{name}.pt": None, "report.md": None,
                                   "metrics.json": None}, option="--out (or --replace)")

    ds, origins = _load_data(args, role="train")
    if args.hold_out == "recording":
        _check_recordings(ds, args)
    note = _recordings_confound_classes(args)
    if note:
        print(note)
    test = None
    if args.test_fraction > 0:
        tr, te = ds.split(args.test_fraction, seed=args.seed)
        test, ds, origins = ds.subset(te), _with_report(ds.subset(tr), ds), origins[te]
        if args.hold_out == "recording":
            _check_recordings_left(ds, test, args)
    folds = _folds_for_data(ds, args.folds, what=" (after --test-fraction)" if test is not None else "",
                            unit=_unit(args))
    if args.hold_out == "recording":
        _check_fold_recordings(ds, folds, args)
    with _output_folder(out, missing):
        return _train(args, ds, test, out, folds, origins if test is not None else None)


#: the held-out cells of a training, beside its model: ``evaluate --cells`` takes exactly them
TEST_CELLS = "test_cells.csv"
TEST_CELLS_COLUMNS = ["data", "id", "class"]


def _write_test_cells(path: Path, test, origins) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(TEST_CELLS_COLUMNS)
        w.writerows([o, str(i), test.class_names[c]] for o, i, c in zip(origins, test.ids, test.labels))


def _read_cell_list(path: str) -> dict[tuple[str, str], list[str]]:
    """``evaluate --cells``: {(data, id): the class of each row naming it} of a list such as train's
    test_cells.csv (one file can hold cells of one id, held out together and listed once each)."""
    import csv

    from mimlsort.errors import ConfigError

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("--cells", f"{path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if not rows or rows[0] != TEST_CELLS_COLUMNS or any(len(r) != 3 for r in rows[1:]):
        raise ConfigError("--cells", f"{path}: not a list of cells (columns {','.join(TEST_CELLS_COLUMNS)}, as "
                                     f"mimlsort train writes {TEST_CELLS})")
    if len(rows) < 2:
        raise ConfigError("--cells", f"{path}: lists no cell")
    listed: dict[tuple[str, str], list[str]] = {}
    for d, i, c in rows[1:]:
        listed.setdefault((d, i), []).append(c)
    return listed


def _folder_key(key: tuple[str, str], listed: dict) -> tuple[str, str]:
    """A cell of a MIML folder's CSV as a list written before lists named the CSV names it: by the
    folder (given as PATH) and its id; ``key`` where the list does not name the folder."""
    origin, cell = key
    folder = str(Path(origin).parent)
    return (folder, cell) if Path(origin).suffix.lower() == ".csv" and (folder, cell) in listed else key


def _only_listed(ds, origins, listed: dict, path: str):
    """The cells of ``ds`` that ``listed`` names; every one listed must be there, of its class.

    A file can hold several cells under one id (exports of several runs from before their ids
    named the run, put in one folder or table). They are taken where the list names the id as
    often, with the same classes: the training held them out together (one group). Named less
    often, the list cannot say which of them was held out, and it is refused: every cell of a
    listed id was scored, and the figures were not the held-out test's."""
    from mimlsort.errors import DataFormatError

    cells: dict[tuple[str, str], list[int]] = {}
    for k, key in enumerate(zip(map(str, origins), map(str, ds.ids))):
        if key not in listed:
            key = _folder_key(key, listed)
        if key in listed:
            cells.setdefault(key, []).append(k)
    absent = [key for key in listed if key not in cells]
    if absent:
        data, cell = absent[0]
        raise DataFormatError(f"{path}: {len(absent)} of the {sum(map(len, listed.values()))} cells listed are not "
                              f"in the data given (the first: {cell} of {data}): give the data the model was trained "
                              f"on, read as it was (its command is in the model's provenance)")
    for (data, cell), ks in cells.items():
        named, have = sorted(listed[data, cell]), sorted(ds.class_names[ds.labels[k]] for k in ks)
        if len(ks) > len(named):
            files = sorted({str(ds.sources[k]) for k in ks})
            raise DataFormatError(f"{path}: {data} holds {len(ks)} cells with id {cell}"
                                  f"{' (in ' + ', '.join(files) + ')' if len(files) > 1 else ''}, and the list names "
                                  f"{len(named)}: it cannot say which was held out. Give each cell an id of its own "
                                  f"(one naming its run) and train again")
        if len(ks) < len(named):
            raise DataFormatError(f"{path}: cell {cell} of {data} is listed {len(named)} times, but the data given "
                                  f"hold {len(ks)}: give the data the model was trained on, read as it was")
        if named != have:
            said = named[0] if len(named) == 1 else named
            raise DataFormatError(f"{path}: cell {cell} of {data} is listed as class {said!r}, but the data given "
                                  f"call it {have[0] if len(have) == 1 else have!r}")
    return _with_report(ds.subset(sorted(k for ks in cells.values() for k in ks)), ds)


def _train(args: argparse.Namespace, ds, test, out: Path, folds: int, test_origins=None) -> int:
    import numpy as np

    from inference.training.evaluate import evaluate
    from inference.training.export import update_spec
    from inference.training.train import train_model

    arch = args.arch or (None if args.init_from else "miml-mini")
    counts = ", ".join(f"{k} {v}" for k, v in ds.class_counts().items())
    print(f"training {arch or 'from ' + str(args.init_from)} on {len(ds)} cells ({counts})"
          + (f"; {len(test)} cells held out for testing" if test is not None else ""), file=sys.stderr)
    ours = sys.argv and (sys.argv[0].endswith("mimlsort") or sys.argv[0].endswith(("app/cli.py", "app\\cli.py")))
    command = "mimlsort " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if ours else ""
    res = train_model(
        ds, arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, folds=folds,
        val_fraction=args.val_fraction, patience=args.patience, augment=not args.no_augment, device=args.device,
        init_from=args.init_from, freeze_image_branch=args.freeze_image_branch, channels=args.channels,
        image_size=args.image_size, out_dir=out, model_name=args.name, progress=not args.no_progress,
        command=command or None,
    )
    lines = [f"model: {res.onnx_path}"]
    report = out / "report.md"
    stale = []
    if res.report is None:
        # no folds and no validation cells (--val-fraction 0, or classes of one cell each): the training
        # wrote no report, and the command said it had; after --replace it pointed to the replaced
        # model's report, whose figures stayed beside the new model
        report.write_text(_bare_report(args, ds, res, test), encoding="utf-8")
        stale += [out / n for n in REPORT_FILES if n != "report.md"]
    if test is None:
        stale += [out / "test" / n for n in REPORT_FILES] + [out / TEST_CELLS]
    if args.replace:  # without it, check_folder_outputs refused a folder holding an earlier training's
        for p in stale:
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (out / "test").rmdir()
    if res.folds:
        acc = np.array([m.accuracy for m in res.fold_metrics])
        lines.append(f"cross-validation ({len(res.folds)} folds): accuracy {acc.mean():.4f} ± {acc.std():.4f}")
    if test is not None:
        ev = evaluate(res.onnx_path, test, out / "test", title=f"Held-out test of {res.onnx_path.name}")
        m = ev.metrics
        # a class of one cell (group) stays in training: the test's macro figures then average the
        # other classes only, and read 1.000 without saying a class was never tested
        untested = [c for c, k in zip(m.class_names, m.support) if k == 0 and c in ds.class_names]
        absent = (f" (no cell of {', '.join(map(repr, untested))} was held out: too few to spare; these figures "
                  f"say nothing about {'it' if len(untested) == 1 else 'them'})") if untested else ""
        lines.append(f"held-out test ({m.n} cells): accuracy {m.accuracy:.4f}, macro F1 {m.macro_f1:.4f}, "
                     f"ROC-AUC {m.macro_roc_auc:.4f}{absent}")
        _write_test_cells(out / TEST_CELLS, test, test_origins)
        prov = res.spec.provenance
        spec = res.spec.with_provenance(
            metrics={**prov.metrics, "test_n": m.n, "test_accuracy": m.accuracy, "test_macro_f1": m.macro_f1},
            training={**prov.training, "test_fraction": args.test_fraction, "hold_out": args.hold_out,
                      "test_cells": TEST_CELLS})
        update_spec(res.onnx_path, spec)
        text = report.read_text(encoding="utf-8")
        whole = ("whole recordings (--hold-out recording), " if _unit(args) == "recordings"
                 else "single cells (--hold-out cell: cells of one recording can be on both sides), ")
        report.write_text(text.rstrip() + "\n\n## Held-out test\n\n"
                          f"{m.n} cells never used in training, cross-validation or early stopping "
                          f"(grouped, stratified, seed {args.seed}; held out as {whole}"
                          "run through ONNX Runtime): accuracy "
                          f"{m.accuracy:.4f}, macro F1 {m.macro_f1:.4f}, ROC-AUC {m.macro_roc_auc:.4f}{absent}. "
                          "Full report: [test/report.md](test/report.md). The cells are listed in "
                          f"[{TEST_CELLS}]({TEST_CELLS}): `mimlsort evaluate MODEL DATA --cells {TEST_CELLS}`, with "
                          "the data of the training, scores exactly them.\n", encoding="utf-8")
    lines.append(f"report: {out / 'report.md'}")
    print("\n".join(lines))
    return 0


#: what inference.training.evaluate.write_report writes into a folder
REPORT_FILES = ("report.md", "metrics.json", "roc.png", "confusion.png")


def _bare_report(args: argparse.Namespace, ds, res, test) -> str:
    """The training report of a run that measured nothing itself (no folds, no validation cells):
    what was trained on what, and what the data's import found."""
    counts = ", ".join(f"{k} {v}" for k, v in ds.class_counts().items())
    parts = [f"# Training report: {res.onnx_path.name}", "",
             f"{res.arch} trained for {len(res.history)} epochs on {len(ds)} cells ({counts}) from "
             f"{', '.join(args.data) if getattr(args, 'data', None) else 'the data given'}; features "
             f"{', '.join(ds.feature_names)}.", "",
             "No cross-validation and no validation cells: the training measured no accuracy"
             + (" (see the held-out test below)." if test is not None else
                " (use --folds, --val-fraction or --test-fraction)."), ""]
    problems = ds.report.problems() if ds.report is not None else []
    if problems:
        parts += ["## Data problems", "", *(f"- {p}" for p in problems), ""]
    return "\n".join(parts)


def _with_report(sub, full):
    """A subset keeps the import report of the whole data (its defects still apply)."""
    object.__setattr__(sub, "report", full.report)
    return sub


def _features_of_model(args: argparse.Namespace) -> None:
    """Read the data with the features the model takes: by default the MIML ones were read, and a
    model trained on what one image gives (di,deform,area_um: reanalysed files, whose cells have no
    transit time) could not be evaluated on the data it was trained on."""
    from inference.spec import read_spec
    from mimlsort.errors import ModelError

    try:
        spec = read_spec(args.model)
    except ModelError:
        return  # the classifier says what is wrong with the file
    if spec.uses_features:
        args.features = spec.feature_names
        args.features_from = ("model", f"the model {args.model}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from inference.classifier import _import_ort
    from inference.training.data import kfold_splits
    from inference.training.evaluate import compute_metrics, evaluate, predict_onnx
    from mimlsort.outputs import check_folder_outputs

    _check_folds_option(args.folds)
    _check_pixel_size(args)
    _import_ort()  # before the data are loaded
    if args.model == "demo":  # the bundled model, as `replay --model demo` takes it
        from app.config import bundled_model_path

        args.model = str(bundled_model_path())
    if not Path(args.model).is_file():  # before the data are loaded, not after
        from mimlsort.errors import ConfigError

        raise ConfigError("model", f"{args.model}: no such model file")
    if args.simulated:
        _simulated_data(args)
    if not args.features:
        _features_of_model(args)
    listed = _read_cell_list(args.cells) if args.cells else None
    out, missing = _check_out(args.out)
    # `evaluate m/model.onnx DATA --out m` replaced the training's report, metrics and figures;
    # an earlier evaluation of its own is replaced
    earlier = out / "report.md"
    check_folder_outputs(out, {"report.md": "# Evaluation of"} if earlier.exists() else {"metrics.json": None})
    ds, origins = _load_data(args, role="evaluate")
    data = _data_description(args)
    title = None
    if listed is not None:
        ds = _only_listed(ds, origins, listed, args.cells)
        title = f"Evaluation of {Path(args.model).name} on the cells listed in {args.cells}"
    k = _folds_for_data(ds, args.folds, unit=_unit(args))
    folds = []
    if k >= 2:
        parts = kfold_splits(ds.labels, ds.groups, k, args.seed)
        probs, classes = predict_onnx(args.model, ds, data_name=data)
        remap = [classes.index(c) if c in classes else -1 for c in ds.class_names]
        y = [remap[i] for i in ds.labels]
        if -1 not in remap:  # else evaluate() below names the classes the model does not know
            import numpy as np

            y = np.asarray(y)
            folds = [compute_metrics(y[te], probs[te], classes) for _, te in parts]
    with _output_folder(out, missing):
        # one model scored on k parts of the data: nothing was cross-validated (the report said so)
        ev = evaluate(args.model, ds, out, folds=folds, data_name=data, title=title,
                      folds_heading=f"Per part of the data ({len(folds)} grouped, stratified parts; one model, "
                                    f"no retraining)")
    m = ev.metrics
    print(f"{m.n} cells: accuracy {m.accuracy:.4f}, macro F1 {m.macro_f1:.4f}, ROC-AUC {m.macro_roc_auc:.4f}")
    print(f"report: {ev.report_path}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """The paper's comparisons on simulated cells: baselines (fused vs image-only vs feature-only)
    and transfer learning (new class pair, ~100 examples, fine-tuned vs from scratch)."""
    from inference.training import experiments  # noqa: F401  (without torch: names the extra)
    from inference.training.models import arch_info
    from inference.training.train import resolve_device
    from mimlsort.errors import ConfigError, ModelError

    _check_training_options(args)
    # checked before minutes of simulating and training: a mistyped --archs entry ended the
    # experiment after the architectures before it were trained, --draws 0 in a traceback
    for arch in args.archs:
        try:
            arch_info(arch)
        except ModelError as err:
            raise ConfigError("--archs", str(err)) from None
    try:
        resolve_device(args.device)
    except ModelError as err:
        raise ConfigError("--device", str(err)) from None
    if args.draws < 1:
        raise ConfigError("--draws", f"must be at least 1, got {args.draws}")
    if args.few < 2:
        raise ConfigError("--few", f"must be at least 2 (a cell of each class of the new pair), got {args.few}")
    _simulated_data(args)
    # a second experiment into the folder replaced the first's models and experiment.md without a
    # word (train refuses its own earlier model the same way)
    if not args.replace:
        from mimlsort.outputs import check_folder_outputs

        check_folder_outputs(args.out, {"experiment.md": None}, option="--out (or --replace)")
    out, missing = _check_out(args.out)
    with _output_folder(out, missing):
        return _experiment(args, out)


def _experiment(args: argparse.Namespace, out: Path) -> int:
    import dataclasses

    from inference.training import experiments as ex
    from app.simdata import simulated_dataset, stiffened_pair

    kw = dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
              device=args.device)
    base = _simulated_data(args)
    parts = [f"# mimlsort experiment {args.what}", "", f"Command: `mimlsort {' '.join(sys.argv[1:])}`", ""]
    if args.what == "baselines":
        train = simulated_dataset(base, progress=not args.no_progress)
        test = simulated_dataset(dataclasses.replace(base, seed=args.sim_seed + 1000, runs=1),
                                 progress=not args.no_progress)
        scores = ex.compare_architectures(train, test, out, archs=args.archs, **kw)
        parts += [f"Trained on {len(train)} simulated cells ({train.class_counts()}); tested on {len(test)} cells "
                  f"of another simulated run (seed {args.sim_seed + 1000}).", "", ex.architectures_markdown(scores)]
    else:
        source = simulated_dataset(base, progress=not args.no_progress)
        target = simulated_dataset(dataclasses.replace(base, seed=args.sim_seed + 2000, synthetic=stiffened_pair()),
                                   progress=not args.no_progress)
        res = ex.transfer_experiment(source, target, n_few=args.few, seeds=tuple(range(args.draws)),
                                     freeze_image_branch=args.freeze_image_branch, out_dir=out,
                                     parent_epochs=args.epochs, few_epochs=args.epochs,
                                     **{k: v for k, v in kw.items() if k not in ("epochs", "seed")})
        parts += [f"Source pair {source.class_names} ({len(source)} cells); new pair {target.class_names} "
                  f"({len(target)} cells).", "", res.to_markdown()]
    text = "\n".join(parts) + "\n"
    (out / "experiment.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def register(subparsers) -> None:
    sp = subparsers.add_parser(
        "train", help="train a MIML model (extra: train)",
        description="Train a MIML model on labelled cells; writes MODEL.onnx (+ .pt), report.md, roc.png, "
                    "confusion.png and metrics.json into --out.")
    sp.add_argument("data", nargs="*", help="PATH or PATH=CLASS: MIML authors' folder/CSV, event table CSV, .rtdc event file")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--name", default="model", help="model file name without .onnx (default: model)")
    sp.add_argument("--replace", action="store_true",
                    help="replace the model, report and metrics of an earlier training in --out (refused otherwise)")
    sp.add_argument("--arch", help="miml-mini (default; with --init-from: the parent's), miml-resnet18, image-only, feature-only")
    sp.add_argument("--epochs", type=int, default=30)
    sp.add_argument("--batch-size", type=int, default=32, help="samples per training step (at least 2; default 32)")
    sp.add_argument("--lr", type=float, default=1e-3)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--folds", type=int, help="k-fold cross-validation (0 or 1: none; at most the cells of the smallest class; default 5, or that many when fewer)")
    sp.add_argument("--val-fraction", type=float, default=0.15, help="cells held back for early stopping")
    sp.add_argument("--test-fraction", type=float, default=0.0,
                    help="cells held out before anything else and evaluated at the end (default 0)")
    sp.add_argument("--patience", type=int, default=8, help="early-stopping patience in epochs (0: off)")
    sp.add_argument("--no-augment", action="store_true", help="no flips/rotations/brightness changes")
    sp.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 …")
    sp.add_argument("--init-from", help="fine-tune this model (.onnx with its .pt beside it, or .pt)")
    sp.add_argument("--freeze-image-branch", action="store_true", help="with --init-from: train only features and head")
    sp.add_argument("--channels", type=_csv_list, help="image channels, e.g. first,last (default) or last")
    sp.add_argument("--image-size", type=int, help="model input side in pixels (default: the architecture's)")
    sp.add_argument("--features", type=_csv_list, help="feature names in order (default: di,transit_time_ms,v_max_mm_s[,dir_per_ms])")
    sp.add_argument("--all-events", action="store_true", help="keep every event; by default those flagged doublet, border, incomplete, low contrast, stuck or small are left out (TOUCHING ones stay)")
    sp.add_argument("--pixel-size", type=float, help="µm per pixel of CSV crops without a crop_pixel_size_um column")
    sp.add_argument("--hold-out", choices=("cell", "recording"), default="cell", help=HOLD_OUT_HELP)
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_sim_args(sp)
    sp.set_defaults(func=cmd_train)

    sp = subparsers.add_parser(
        "evaluate", help="evaluate a model on labelled cells: metrics, ROC and confusion PNGs, Markdown report",
        description="Run MODEL through ONNX Runtime on labelled data; writes report.md, roc.png, confusion.png, metrics.json.")
    sp.add_argument("model", help="ONNX model (\"demo\": the bundled model)")
    sp.add_argument("data", nargs="*", help="PATH or PATH=CLASS (as for train)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--folds", type=int, help="per-fold table over k grouped parts of the data (0 or 1: none; at most the cells of the smallest class; default 5, or that many when fewer)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--cells", metavar="LIST.csv",
                    help=f"score only the cells listed (data,id,class), e.g. the {TEST_CELLS} a training with "
                         f"--test-fraction writes beside its model: give the data it was trained on")
    sp.add_argument("--features", type=_csv_list, help=argparse.SUPPRESS)
    sp.add_argument("--all-events", action="store_true", help="keep every event; by default those flagged doublet, border, incomplete, low contrast, stuck or small are left out (TOUCHING ones stay)")
    sp.add_argument("--pixel-size", type=float, help="µm per pixel of CSV crops without a crop_pixel_size_um column")
    sp.add_argument("--hold-out", choices=("cell", "recording"), default="cell", help=HOLD_OUT_HELP)
    sp.add_argument("--no-progress", action="store_true")
    _add_sim_args(sp)
    sp.set_defaults(func=cmd_evaluate)

    sp = subparsers.add_parser(
        "experiment", help="the MIML paper's comparisons on simulated cells (extra: train)",
        description="baselines: fused MIML vs image-only vs feature-only on held-out simulated cells; "
                    "transfer: fine-tuning on ~100 cells of a new class pair vs training from scratch.")
    sp.add_argument("what", choices=("baselines", "transfer"))
    sp.add_argument("--out", required=True, help="output folder (models, reports, experiment.md)")
    sp.add_argument("--archs", type=_csv_list, default=("miml-mini", "image-only", "feature-only"))
    sp.add_argument("--epochs", type=int, default=30)
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default="auto")
    sp.add_argument("--few", type=int, default=100, help="transfer: examples of the new pair (default 100)")
    sp.add_argument("--draws", type=int, default=3, help="transfer: independent draws of the few examples")
    sp.add_argument("--freeze-image-branch", action="store_true", help="transfer: fine-tune features and head only")
    sp.add_argument("--sim-seconds", type=float, default=20.0)
    sp.add_argument("--sim-runs", type=int, default=1)
    sp.add_argument("--sim-seed", type=int, default=1)
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument("--replace", action="store_true",
                    help="replace the models and experiment.md of an earlier experiment in --out (refused otherwise)")
    sp.set_defaults(func=cmd_experiment)
