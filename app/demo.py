"""The quick-start main job: the synthetic camera through the full pipeline, checked against the truth.

Simulated camera → ring → tracker → bundled demonstration model → sort policy → ``log`` trigger, with
the event file and the sample report written; then, because the simulator knows every cell, a
per-class table of what was simulated, found, classified and sorted.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np


def run_demo(seconds: float = 3.0, out: Path = Path("out/demo"), seed: int | None = None, realtime: bool = True,
             stream=sys.stdout) -> int:
    from app.config import RunConfig
    from app.daemon import run_daemon
    from app.session import with_changes
    from app.validate import match_events

    synth = {"synthetic.duration_s": seconds, "synthetic.realtime": realtime}
    if seed is not None:
        synth["synthetic.seed"] = seed
    cfg = with_changes(RunConfig(), camera={"backend": "synthetic", **synth},
                       trigger={"backend": "log", "log.path": str(out / "pulses.csv")},
                       output={"folder": str(out), "sample": "demo"}, daemon={"log_file": "demo.log"})
    out.mkdir(parents=True, exist_ok=True)  # once the options are valid: a refused demo made an empty folder
    code, run = run_daemon(cfg, folder=out, out=sys.stderr)
    st = run.status()
    records = run.pipeline.recent()
    cam = run.pipeline.camera
    truth = list(cam.truth)
    cam.write_truth_csv(out / "truth.csv")
    settings = cam.settings
    frame_ms = 1000.0 / settings.fps
    m = match_events([r.event for r in records], truth, run_ms=st.frames_in * frame_ms, frame_ms=frame_ms)
    by_event = {id(e): t for e, t in m.pairs}
    print(f"simulated {seconds:g} s at {settings.fps:g} fps ({st.frames_in} frames, {settings.width}x{settings.height} px, "
          f"{settings.pixel_size_um} µm/px): {sum(1 for t in truth if t.kind == 'cell')} cells; "
          f"{st.cells} events, {st.frames_missed} frames missed", file=stream)
    rows = []
    classes = sorted({t.cls for t in truth if t.kind == "cell"})
    for cls in classes:
        recs = [(r, by_event.get(id(r.event))) for r in records]
        mine = [(r, t) for r, t in recs if t is not None and t.cls == cls and t.kind == "cell"]
        n_true = sum(1 for t in truth if t.cls == cls and t.kind == "cell" and m.is_complete(t))
        pred = Counter(r.decision.predicted for r, _ in mine if r.decision is not None)
        correct = pred.get(cls, 0)
        fired = sum(1 for r, _ in mine if r.decision is not None and r.decision.fire)
        di = np.nanmean([r.event.features["di"] for r, _ in mine]) if mine else math.nan
        di_t = np.nanmean([t.di_max for _, t in mine]) if mine else math.nan
        tt = np.nanmean([r.event.features["transit_time_ms"] for r, _ in mine]) if mine else math.nan
        rows.append((cls, n_true, len(mine), correct, fired, di, di_t, tt))
    print(f"{'class':>10} {'cells':>6} {'found':>6} {'correct':>8} {'fired':>6} {'DI meas':>8} {'DI true':>8} "
          f"{'transit ms':>10}", file=stream)
    for cls, n, found, correct, fired, di, di_t, tt in rows:
        print(f"{cls:>10} {n:>6} {found:>6} {correct:>8} {fired:>6} {di:>8.3f} {di_t:>8.3f} {tt:>10.3f}", file=stream)
    fired_truth = [by_event.get(id(r.event)) for r in records if r.decision is not None and r.decision.fire]
    targets = set(cfg.sorting.target_classes)
    if fired_truth:
        pure = sum(1 for t in fired_truth if t is not None and t.cls in targets) / len(fired_truth)
        print(f"sorted {len(fired_truth)} cells; purity of the sorted set against the truth: {pure:.1%} "
              f"(target {', '.join(sorted(targets))}, mode {cfg.sorting.mode})", file=stream)
    report = None
    if run.events_path is not None and run.events_path.exists():
        try:
            from app.report import write_report

            report = write_report(run.events_path, out / "report").markdown
        except ImportError:
            report = None
    print(f"files: {run.events_path}" + (f", report {report}" if report else "") +
          f", {out / 'truth.csv'}"
          # a simulation at full speed fires no trigger (app.session.build_run): no pulses to list
          + (f", {out / 'pulses.csv'}" if run.pipeline.trigger is not None else ""), file=stream)
    return code
