"""Where a decision's time goes, cell by cell: ``mimlsort bench sorting --stages``.

The probe wraps the live tracking call, the cell handling, the model call and the trigger's fire
of the run the bench starts in this process, and stamps each on the host's monotonic clock; the
tracking kernel stamps its own end (``tracking.live.O_T_END``). Per cell (those decided on the
tracking thread and handed to the trigger, which fired them or found them late: a cell handed to
the decide thread has no tracking call of its own):

- ``waited``: the event's frame arrived while the tracking thread was still busy with Python
  (the cells before, the records, the clock fit) — time until the tracking call began;
- ``kernel``: from the frame's arrival (or the call's start, if later) to the kernel's end —
  polling, tracking the frames that queued, and the CPU the thread did not get;
- ``harvest``: taking the GIL back and building the events;
- ``dispatch``: exit mapping and hand-over to the handling;
- ``classify``: the model call with its preprocessing;
- ``fire``: the policy, then the fire command handed to the device.

The stamps cost ~1 µs each. The probe is for the benches only: it replaces class attributes
while it is entered, so no other run may go in the same process meanwhile.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np

STAGES = ("waited", "kernel", "harvest", "dispatch", "classify", "fire")
#: cells whose latency is over this are the tail the shares are taken over
TAIL_US = 1000.0


class StageProbe:
    """Stamps collected while :meth:`attached`; :meth:`summary` turns them into figures."""

    def __init__(self) -> None:
        self._rows: list[tuple[int, ...]] = []
        # each thread's own stamps: the decide thread classifies and fires too, and with one dict
        # for both it overwrote the tracking thread's stamps or emptied them mid-cell
        self._local = threading.local()
        self._tracking_thread = 0

    @contextmanager
    def attached(self):
        from app.pipeline import Pipeline
        from tracking import live
        from tracking.tracker import Tracker

        track_live, handle = Tracker.track_live, Pipeline._handle
        probe = self

        def timed_track_live(tracker, *a, **k):
            call = time.monotonic_ns()
            res = track_live(tracker, *a, **k)
            probe._local.last = {"call": call, "ret": time.monotonic_ns(), "kend": int(tracker._live[0][live.O_T_END])}
            probe._tracking_thread = threading.get_ident()
            return res

        def timed_handle(pipeline, events, *a, **k):
            probe._wrap(pipeline)
            res = handle(pipeline, events, *a, **k)
            probe._record(events)
            return res

        Tracker.track_live, Pipeline._handle = timed_track_live, timed_handle
        try:
            yield self
        finally:
            Tracker.track_live, Pipeline._handle = track_live, handle

    def _wrap(self, pipeline) -> None:
        """Time the model call and the fire on these instances (once)."""
        for owner, name in ((pipeline.classifier, "classify"), (pipeline.trigger, "fire")):
            if owner is None or getattr(owner, "_stage_probe", None) is self:
                continue
            inner = getattr(owner, name)

            def timed(*a, _inner=inner, _name=name, **k):
                t = time.monotonic_ns()
                res = _inner(*a, **k)
                self._stamps()[_name] = (t, time.monotonic_ns())
                return res

            setattr(owner, name, timed)
            owner._stage_probe = self

    def _stamps(self) -> dict:
        if not hasattr(self._local, "last"):
            self._local.last = {}
        return self._local.last

    def _record(self, events) -> None:
        last, self._local.last = self._stamps(), {}
        if threading.get_ident() != self._tracking_thread or "fire" not in last or "classify" not in last:
            return  # handed to the decide thread, or nothing fired
        for ev in events:
            arrived = ev.extra.get("emit_host_ns", 0) if ev.extra else 0
            if arrived:
                self._rows.append((arrived, last["call"], last["kend"], last["ret"], *last["classify"], last["fire"][1]))

    def summary(self) -> dict:
        """p50 / p90 / p99 of each stage (µs), and each stage's share of the tail cells' time."""
        if not self._rows:
            return {"stage_cells": 0}
        a = np.array(self._rows, np.int64).T
        arrived, call, kend, ret, cls0, cls1, fired = a
        parts = {"waited": np.maximum(call - arrived, 0), "kernel": kend - np.maximum(call, arrived),
                 "harvest": ret - kend, "dispatch": cls0 - ret, "classify": cls1 - cls0, "fire": fired - cls1}
        total = (fired - arrived) / 1e3
        tail = total > TAIL_US
        res: dict = {"stage_cells": int(len(total)),
                     "stage_total_us_p50_p90_p99": [round(float(v), 1) for v in np.percentile(total, [50, 90, 99])]}
        for name in STAGES:
            us = parts[name] / 1e3
            res[f"stage_{name}_us_p50_p90_p99"] = [round(float(v), 1) for v in np.percentile(us, [50, 90, 99])]
        res[f"stage_cells_over_{TAIL_US:g}_us"] = int(tail.sum())
        if tail.any():
            whole = sum(float(parts[n][tail].sum()) for n in STAGES)
            for name in STAGES:
                res[f"stage_{name}_share_of_tail_pct"] = round(100.0 * float(parts[name][tail].sum()) / whole, 1)
        return res
