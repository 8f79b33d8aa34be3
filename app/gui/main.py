"""Entry points: the interactive GUI, and a scripted demo run that saves a screenshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_gui(config_path: str | Path | None = None, argv: list[str] | None = None) -> int:
    """Open the main window (optionally with a run configuration) and run the Qt event loop."""
    import os
    import sys

    from mimlsort.errors import DeviceError

    if (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
            and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))):
        # Qt would abort the process with a core dump; say what to do instead
        raise DeviceError("no display to open the window on (DISPLAY/WAYLAND_DISPLAY unset): run it in a desktop "
                          "session, under xvfb-run, or use `mimlsort run` for headless operation")
    from app.gui.main_window import MainWindow
    from app.gui.qt import ensure_app

    app = ensure_app(argv)
    win = MainWindow(config_path=config_path)
    win.show()
    return int(app.exec())


def process_events_for(seconds: float, until=None) -> bool:
    """Run the Qt event loop for up to ``seconds`` (offscreen scripts and benchmarks), as ``exec`` would;
    returns early with True once ``until()`` is true (checked every 20 ms)."""
    from app.gui.qt import QtCore

    loop = QtCore.QEventLoop()
    done = {"ok": until is None}
    deadline = QtCore.QTimer()
    deadline.setSingleShot(True)
    deadline.timeout.connect(loop.quit)
    check = QtCore.QTimer()
    check.setInterval(20)

    def poll() -> None:
        if until():
            done["ok"] = True
            loop.quit()

    if until is not None:
        if until():
            return True
        check.timeout.connect(poll)
        check.start()
    deadline.start(max(0, int(seconds * 1000)))
    loop.exec()
    check.stop()
    deadline.stop()
    return done["ok"]


def demo_config(out_dir: str | Path, seconds: float = 0.0, width: int = 256, height: int = 96,
                fps: float | None = None, model: str | None = None) -> Any:
    """The GUI demo's run configuration: the synthetic camera in real time, a log trigger, and the
    bundled demo model (``model``: another file, or "none" to track only; default "demo" when the
    bundled model is built, else "none")."""
    from app.config import RunConfig, bundled_model_path
    from app.session import with_changes

    out_dir = Path(out_dir)
    cam = {"backend": "synthetic", "synthetic.width": width, "synthetic.height": height,
           "synthetic.duration_s": seconds, "synthetic.realtime": True}
    if fps:
        cam["synthetic.fps"] = fps
    if model is None:
        model = "demo" if bundled_model_path().is_file() else "none"
    return with_changes(RunConfig(), camera=cam, model={"path": model},
                        trigger={"backend": "log", "log.path": str(out_dir / "pulses.csv")},
                        output={"folder": str(out_dir), "sample": "gui-demo"})


def take_screenshot(path: str | Path, seconds: float = 4.0, out_dir: str | Path = "out/gui-screenshot",
                    size: tuple[int, int] = (1400, 860)) -> Path:
    """Run the synthetic demo in the window offscreen for ``seconds`` and save a PNG of it."""
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore, ensure_app

    ensure_app()
    settings = QtCore.QSettings(str(Path(out_dir) / "gui.ini"), QtCore.QSettings.Format.IniFormat)
    win = MainWindow(config=demo_config(out_dir), config_path=Path(out_dir) / "run.toml", settings=settings)
    win.resize(*size)
    win.show()
    try:
        process_events_for(30.0, until=lambda: not win.model_pending)
        win.start_run()
        process_events_for(60.0, until=lambda: win.controller.run is not None or bool(win.errors))
        # cells on the plots before the clock starts: the first batch can take a while on a busy machine
        process_events_for(60.0, until=lambda: win.table.total > 0 or bool(win.errors))
        process_events_for(seconds / 2)
        _demo_gate(win)
        process_events_for(seconds / 2)
        shot = win.screenshot(path)
        win.stop_run()
        process_events_for(60.0, until=lambda: win.controller.run is None and not win.controller.busy)
        return shot
    finally:
        win.close()


def _demo_gate(win: Any) -> None:
    """A gate around the cells seen so far that the model calls the target class (for the picture)."""
    import numpy as np

    from app.gui.models import make_gate, rect_points

    t = win.table
    target = tuple(win.config.sorting.target_classes)
    k = [i for i, c in enumerate(t.class_names) if c in target]
    x, y = t.column(win.scatter.x), t.column(win.scatter.y)
    m = np.isin(t.classes(), k) & np.isfinite(x) & np.isfinite(y)
    if m.sum() < 5:
        return
    (x0, x1), (y0, y1) = np.percentile(x[m], [10, 90]), np.percentile(y[m], [10, 90])
    if x1 > x0 and y1 > y0:
        win.scatter.set_gate(make_gate(win.scatter.x, win.scatter.y, rect_points(x0, y0, x1, y1)), emit=True)


if __name__ == "__main__":  # python -m app.gui.main docs/screenshot.png
    import sys

    print(take_screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png"))
