"""``mimlsort report`` and ``mimlsort export``: what a run's event file holds, for people and programs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from app.report import write_report

    formats = ("md", "html") if args.format == "both" else (args.format,)
    res = write_report(args.events, args.out, formats=formats, target_classes=tuple(args.target) or None)
    s = res.summary
    fired = "not sorted (a reanalysis)" if s.measured == "single image" else f"fired {s.fired.count}"
    if s.fired.count and s.measured != "single image" and all(b in ("null", "log") for b in s.fired_to):
        fired += " (no pulse output: a dry run)" if s.fired_to else " (no trigger: decisions only)"
    print(f"{s.sample} (run {s.run_index}): {s.cells} cells, {s.sortable} sortable, {s.unflagged} unflagged, {fired}"
          + ("" if s.complete else "  [file incomplete: writer did not close it]")
          + (f"  [run error: {s.error}]" if s.error else ""))
    if not s.cells:
        print("  no cells in the file")  # not a line of 0 for each class of the model
    for c in s.classes if s.cells else ():
        lo, hi = c.ci95
        print(f"  {c.name:>12}: {c.count:6d}  {100 * c.fraction:5.1f} %  (95 % CI {100 * lo:.1f}–{100 * hi:.1f} %)"
              if c.total else f"  {c.name:>12}: 0")
    written = [p for p in (res.markdown, res.html) if p is not None]
    print("report: " + ", ".join(str(p) for p in written) + f" ({len(res.figures)} figures in {res.out_dir})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.export import CSV_HEADER_START, check_miml_destination, export_csv, export_miml

    from mimlsort.errors import ConfigError
    from mimlsort.outputs import check_output_file

    if not args.miml:  # they were ignored without a word
        given = [o for o, v in (("--size", args.size), ("--label", args.label), ("--no-scale", args.no_scale),
                                ("--include-flagged", args.include_flagged), ("--name", args.name != "cells")) if v]
        if given:
            raise ConfigError(given[0], "applies to the MIML export: give --miml DIR")
    if args.miml:  # both destinations are checked before either is written
        check_miml_destination(args.miml, args.name)
    if args.csv:
        check_output_file(args.csv, inputs=(args.events,), option="--csv", header=CSV_HEADER_START)
        n = export_csv(args.events, args.csv)
        print(f"{n} cells -> {args.csv}")
        if n == 0:
            _say_empty(f"{args.events} holds no cells", args.csv)
    if args.miml:
        res = export_miml(args.events, args.miml, name=args.name, label=args.label, scale=not args.no_scale,
                          include_flagged=args.include_flagged, size=args.size)
        print(f"{res.cells} cells -> {res.csv_path} + {2 * res.cells} PNGs in {res.image_dir}"
              + (f" ({res.skipped} flagged/incomplete cells left out)" if res.skipped else ""))
        if res.cells == 0:
            _say_empty(_why_no_miml_cell(args.events, res.skipped, args.include_flagged), res.csv_path)
    return 0


def _say_empty(why: str, table: Path) -> None:
    """An export of no cell still writes its table's header (a script that reads it keeps
    working) and exits 0, as a replay or track that finds no cell does; it said only "0 cells"."""
    print(f"mimlsort export: warning: {why}: {table} holds only the header", file=sys.stderr)


def _why_no_miml_cell(events: Path, skipped: int, include_flagged: bool) -> str:
    from tracking.events import NOT_FOR_TRAINING, Quality

    if not skipped:
        return f"{events} holds no cells"
    flags = [q.name for q in Quality if q.value and q.value & int(NOT_FOR_TRAINING)]
    flagged = "" if include_flagged else (f"is flagged ({', '.join(flags[:-1])} or {flags[-1]}; --include-flagged "
                                          f"takes them in) or ")
    return f"none of the {skipped} cells of {events} is exported: each {flagged}lacks a MIML feature"


def register(sub) -> None:
    sp = sub.add_parser("report", help="sample report of an event file: classes with 95%% CIs, sorting, figures")
    sp.add_argument("events", type=Path, metavar="EVENTS.rtdc")
    sp.add_argument("--out", type=Path, help="folder for report.md/report.html and the PNGs (default: EVENTS_report/)")
    sp.add_argument("--format", choices=("md", "html", "both"), default="both")
    sp.add_argument("--target", action="append", default=[], metavar="CLASS",
                    help="target class for purity/recovery (default: from the run's configuration)")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("export", help="export an event file as CSV or in the MIML authors' training format")
    sp.add_argument("events", type=Path, metavar="EVENTS.rtdc")
    g = sp.add_argument_group("what to write (one or both)")
    g.add_argument("--csv", type=Path, metavar="OUT.csv", help="one row per cell: identity, features, decision")
    g.add_argument("--miml", type=Path, metavar="DIR", help="<name>_data.csv + first/last crop PNGs")
    sp.add_argument("--name", default="cells", help="MIML export: CSV <name>_data.csv, PNGs in <name>/")
    sp.add_argument("--label", help="MIML export: Cell Type of every cell (default: predicted class, else sample)")
    sp.add_argument("--no-scale", action="store_true", help="MIML export: physical units instead of 0-1 scaling")
    sp.add_argument("--include-flagged", action="store_true", help="MIML export: also cells flagged doublet, border, incomplete, low contrast, stuck or small (TOUCHING ones are in anyway)")
    sp.add_argument("--size", type=int, help="MIML export: resize crops to SIZE x SIZE px (the authors use 100)")
    sp.set_defaults(func=_export_checked)


def _export_checked(args: argparse.Namespace) -> int:
    from mimlsort.errors import ConfigError

    if not args.csv and not args.miml:
        raise ConfigError("export", "give --csv OUT.csv and/or --miml DIR")
    if args.size is not None and args.size < 8:
        raise ConfigError("export.size", f"must be >= 8 px, got {args.size}")
    return cmd_export(args)
