"""``mimlsort bench gui``: does a live GUI slow the pipeline down?

The synthetic camera (256×96, real time) runs the full pipeline while the main window refreshes
at 30 Hz offscreen (frames and overlays; counters at 10 Hz, plots at 5 Hz). Reports what the pipeline kept up
with and what the refresh cost the UI thread.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def _rates(st0, st, elapsed: float) -> tuple[int, int, int, int]:
    return (round((st.frames_in - st0.frames_in) / elapsed), round((st.frames_processed - st0.frames_processed) / elapsed),
            st.frames_missed - st0.frames_missed, st.camera_dropped - st0.camera_dropped)


def _tracking(run) -> bool:
    """The run has built its tracker and tracks: frames that queued during start-up are counted
    by then (as startup frames, not missed), so counters taken from here on only grow."""
    return run.status().frames_processed > 0


def _headless(cfg, folder: Path, seconds: float) -> tuple[int, int, int, int]:
    """The same run without a window, for comparison."""
    from app.session import build_run

    run = build_run(cfg, folder=folder)
    run.start()
    try:
        deadline = time.monotonic() + 60.0
        while not _tracking(run) and time.monotonic() < deadline:  # background estimate, model
            time.sleep(0.05)
        time.sleep(0.5)  # and the first batches
        st0, t0 = run.status(), time.monotonic()
        time.sleep(seconds)
        st, elapsed = run.status(), time.monotonic() - t0
    finally:
        run.stop()
        if run.wait(60.0):  # a run that has not stopped closes its own files when it does
            run.close()
    return _rates(st0, st, elapsed)


def bench_gui(seconds: float = 10.0, model: str | None = None, refresh_hz: float = 30.0, width: int = 256,
              height: int = 96, fps: float = 5000.0, baseline: bool = True) -> dict:
    """Figures with the window open; with ``baseline`` also the same run headless first."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from app.gui.main import demo_config, process_events_for
    from app.gui.main_window import MainWindow
    from app.gui.qt import QtCore, ensure_app
    from mimlsort.errors import MimlsortError

    ensure_app()
    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-gui-") as tmp:
        settings = QtCore.QSettings(str(Path(tmp) / "gui.ini"), QtCore.QSettings.Format.IniFormat)
        cfg = demo_config(tmp, seconds=0.0, width=width, height=height, fps=fps, model=model)
        base = _headless(cfg, Path(tmp) / "headless", seconds) if baseline else None
        win = MainWindow(config=cfg, config_path=Path(tmp) / "run.toml", settings=settings,
                         refresh_hz=refresh_hz, save_on_close=False)
        win.resize(1400, 860)
        win.show()
        try:
            process_events_for(30.0, until=lambda: not win.model_pending)
            win.start_run()
            if not process_events_for(120.0, until=lambda: win.controller.run is not None or bool(win.errors)):
                raise MimlsortError("the demo run did not start within 120 s")
            if win.errors:
                raise MimlsortError("; ".join(win.errors))
            c = win.controller
            process_events_for(60.0, until=lambda: _tracking(c.run))
            process_events_for(0.5)  # past start-up, as headless
            c.ticks, c.tick_seconds, c.tick_max_s = 0, 0.0, 0.0
            frames0 = win.camera_view.frames_shown
            st0 = c.run.status()
            t0 = time.monotonic()
            process_events_for(seconds)
            elapsed = time.monotonic() - t0
            st = c.run.status()
            ticks, busy, worst = c.ticks, c.tick_seconds, c.tick_max_s
            shown = win.camera_view.frames_shown - frames0
            win.stop_run()
            process_events_for(30.0, until=lambda: c.run is None and not c.busy)
        finally:
            win.close()
    fps_in, fps_proc, missed, dropped = _rates(st0, st, elapsed)
    out = {
        "roi": f"{width}x{height}",
        "model": cfg.model.path,
        "camera_fps_set": fps,
        "seconds": round(elapsed, 2),
        "fps_in": fps_in,
        "fps_processed": fps_proc,
        "frames_missed": missed,
        "camera_dropped": dropped,
        "cells": st.cells - st0.cells,
        "gui_refresh_hz": round(ticks / elapsed, 1),
        "gui_frames_shown_hz": round(shown / elapsed, 1),
        "gui_poll_ms_mean": round(1000 * busy / max(ticks, 1), 3),
        "gui_poll_ms_max": round(1000 * worst, 3),
        "latency_p50_us": round(st.latency_p50_us, 1) if st.latency_p50_us == st.latency_p50_us else None,
        "latency_p99_us": round(st.latency_p99_us, 1) if st.latency_p99_us == st.latency_p99_us else None,
    }
    if base is not None:
        out.update(zip(("headless_fps_in", "headless_fps_processed", "headless_frames_missed",
                        "headless_camera_dropped"), base))
    return out
