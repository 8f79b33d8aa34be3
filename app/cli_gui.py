"""``mimlsort gui [--config RUN.toml]``: the operator window (extra ``gui``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_gui(args: argparse.Namespace) -> int:
    if args.screenshot:
        from app.gui.main import take_screenshot

        print(take_screenshot(args.screenshot, seconds=args.seconds))
        return 0
    from app.console import Console
    from app.gui.main import run_gui  # imports PySide6: BackendUnavailable without the extra

    with Console():  # log lines of the run's threads never wait for the terminal the GUI was started from
        return run_gui(args.config)


def register(subparsers) -> None:
    sp = subparsers.add_parser("gui", help="the operator window: live view, plots, gates, run control")
    sp.add_argument("--config", type=Path, metavar="RUN.toml",
                    help="run configuration to start from (saved back on exit; default: the last one used)")
    sp.add_argument("--screenshot", type=Path, metavar="PNG",
                    help="run the synthetic demo offscreen, save a screenshot of the window and exit")
    sp.add_argument("--seconds", type=float, default=4.0, help="how long the demo runs before --screenshot")
    sp.set_defaults(func=cmd_gui)
