"""Track a finite source (a recording, or a synthetic camera with a duration) as fast as it goes.

The same ring → tracker path the live pipeline uses, on one thread: grab into the ring, estimate
the background from the first frames, then track batch by batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from acquisition.camera import Camera
from mimlsort.errors import DataFormatError
from tracking.events import CellEvent
from tracking.geometry import geometry_note
from tracking.tracker import Tracker, TrackerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OfflineResult:
    events: list[CellEvent]
    frames: int
    tracker: Tracker
    #: what ended the source before its end (``keep_partial``): the events are those of the frames before it
    error: Exception | None = None
    #: what ``stop`` answered when it ended the tracking ("" when it did not): the events are those of the frames before
    stopped: str = ""


#: the first columns of the tracking table (``mimlsort track --out``)
TABLE_START = ("index", "track_id", "entry_frame", "exit_frame", "quality")

def pixel_size_in_use(camera: Camera, override_um: float | None) -> float:
    """The µm per pixel a run on the open ``camera`` tracks with (0 where nobody says):
    ``override_um`` (camera.pixel_size_um, which --pixel-size sets) over what the camera or the
    recording says. Where two values disagree, one line says which is used and why (the replay
    source and the run each said theirs: three lines, two reading as if --pixel-size were ignored)."""
    info = camera.info
    stated = getattr(camera, "stated_pixel_size_um", info.pixel_size_um)
    replay = info.backend == "replay"
    source = f"{camera.settings.path} states" if replay else f"the {info.backend} camera reports"
    if override_um:
        if stated and not math.isclose(override_um, stated, rel_tol=1e-6):
            log.warning("%g µm/px (camera.pixel_size_um%s) is used, not the %g µm/px %s", override_um,
                        ", which --pixel-size sets" if replay else "", stated, source)
        return float(override_um)
    fallback = getattr(camera.settings, "pixel_size_um", None) if replay else None
    if stated and fallback and not math.isclose(fallback, stated, rel_tol=1e-6):
        log.warning("%s %g µm/px, which is used: camera.replay.pixel_size_um %g is only for recordings that do not "
                    "state one (camera.pixel_size_um, or --pixel-size, overrides a recording's)", source, stated, fallback)
    return float(info.pixel_size_um or 0.0)


def track_camera(camera: Camera, settings: TrackerSettings | None = None, *, pixel_size_um: float | None = None,
                 max_frames: int | None = None, ring_capacity: int = 1024,
                 progress: Callable[[int], None] | None = None, kernels: str = "numba",
                 keep_partial: bool = False, stop: Callable[[], str] | None = None) -> OfflineResult:
    """Track every frame ``camera`` (open, not yet started) delivers until it is exhausted.
    ``keep_partial``: a frame the source cannot deliver (a recording cut short, a corrupt image)
    ends the tracking there, with the cells of the frames before it and the error in
    :attr:`OfflineResult.error`, as a replay keeps its events; by default it is raised. ``stop``,
    asked before each frame, ends the tracking there when it answers a reason (a signal's name),
    with the cells of the frames before; before a frame was tracked it raises KeyboardInterrupt
    (``("SIGTERM",)`` for that signal, as :func:`app.cli.main` reads it)."""
    settings = settings or TrackerSettings()
    info = camera.info
    px = pixel_size_in_use(camera, pixel_size_um)
    if not px:
        from mimlsort.errors import ConfigError

        raise ConfigError("camera.pixel_size_um", f"the {info.backend} source does not say its pixel size: give it "
                          "(--pixel-size on the command line)")
    capacity = max(ring_capacity, 2 * settings.batch_frames, settings.background_frames + 8)
    ring = info.make_ring(capacity)
    ring.camera_clock = info.camera_clock
    reader = ring.reader("tracker")
    tracker: Tracker | None = None
    events: list[CellEvent] = []
    n = 0
    error: Exception | None = None
    stopped = ""
    camera.start()
    try:
        while max_frames is None or n < max_frames:
            if stop is not None and (stopped := stop()):
                if tracker is None:
                    raise KeyboardInterrupt(*(("SIGTERM",) if stopped == "SIGTERM" else ()))
                break
            try:
                got = camera.grab_into(ring, timeout_s=1.0)
            except DataFormatError as err:
                if not keep_partial or n == 0:
                    raise
                error = err
                break
            if not got:
                if camera.exhausted:
                    break
                continue
            n += 1
            if tracker is None:
                if reader.pending < settings.background_frames:
                    continue
                b = reader.read(reader.pending)
                stack = ring.images[b.slots]
                tracker = Tracker.from_frames(stack, px, settings, t0_ns=int(b.timestamps_ns[0]), kernels=kernels,
                                              bit_depth=info.bit_depth)
                events.extend(tracker.process_batch(ring, b))
                reader.release(b)
            elif reader.pending >= settings.batch_frames:
                b = reader.read(settings.batch_frames)
                events.extend(tracker.process_batch(ring, b))
                reader.release(b)
            if progress is not None and n % 64 == 0:  # (a slow source, OpenCV's TIFF walk, reads ~50 frames/s)
                progress(n)
        if tracker is None:  # shorter than the background window: use what there is
            b = reader.read(reader.pending)
            if len(b) == 0:
                raise DataFormatError(f"{info.serial or info.model}: holds no frames to track")
            tracker = Tracker.from_frames(ring.images[b.slots], px, settings, t0_ns=int(b.timestamps_ns[0]), kernels=kernels,
                                          bit_depth=info.bit_depth)
            events.extend(tracker.process_batch(ring, b))
        else:
            b = reader.read(reader.pending)
            events.extend(tracker.process_batch(ring, b))
        events.extend(tracker.flush())
        log.info("%s", geometry_note(tracker.geometry, settings.geometry))
        for note in tracker.setup_notes():
            log.warning("%s", note)
    finally:
        camera.stop()
    if progress is not None:
        progress(n)
    if reader.missed or reader.overrun:
        log.warning("tracker missed %d and overran %d frames", reader.missed, reader.overrun)
    return OfflineResult(events, n, tracker, error, stopped)


def events_table(events: list[CellEvent]) -> tuple[list[str], np.ndarray]:
    """Column names and a float matrix of the per-cell values (features + identity + quality)."""
    from tracking.features import FEATURES

    cols = [*TABLE_START, *FEATURES]
    rows = np.array([[e.index, e.track_id, e.entry_frame, e.exit_frame, int(e.quality),
                      *(e.features.get(k, np.nan) for k in FEATURES)] for e in events], dtype=np.float64)
    return cols, rows.reshape(len(events), len(cols))


def write_events_csv(events: list[CellEvent], path: str) -> None:
    """One row per cell: identity, quality bits and every feature (units in tracking.features)."""
    cols, rows = events_table(events)
    ints = {"index", "track_id", "entry_frame", "exit_frame", "quality"}
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(",".join(cols) + "\n")
        for r in rows:
            fh.write(",".join(str(int(v)) if c in ints else ("" if np.isnan(v) else f"{v:.10g}") for c, v in zip(cols, r)) + "\n")
