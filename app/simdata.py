"""Labelled training data from simulated runs: synthetic camera → tracker → events matched to the truth.

Each run drives :class:`acquisition.synthetic.SyntheticCamera` through :func:`app.offline.track_camera`
(the tracker the live pipeline uses) and labels every event with the true class of the cell it was
matched to (:func:`app.validate.match_events`). Events that match no single cell (debris, doublets,
unmatched detections) are left out and counted in the data set's report, and so — with
``only_ok`` — are events flagged as not one whole cell seen clearly
(:data:`tracking.events.NOT_FOR_TRAINING`), because a sorter is trained on the cells it will be
asked to classify: cells cut from a touching neighbour (TOUCHING) stay in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from mimlsort.settings import require

log = logging.getLogger(__name__)

__all__ = ["SimulatedData", "simulate_run", "simulated_dataset", "stiffened_pair"]


@dataclass(frozen=True, slots=True)
class SimulatedData:
    """What to simulate: ``runs`` runs of ``seconds`` each, seeds ``seed``, ``seed + 1`` …"""

    seconds: float = 20.0  # simulated seconds per run
    runs: int = 1  # independent runs (different seeds)
    seed: int = 1  # seed of the first run
    class_mix: tuple[tuple[str, float], ...] | None = None  # (class name, fraction); None: the simulator's default
    only_ok: bool = True  # leave out events with a flag in tracking.events.NOT_FOR_TRAINING (all but TOUCHING)
    synthetic: object | None = None  # acquisition.synthetic.SyntheticSettings to start from (None: defaults)
    tracker: object | None = None  # tracking.tracker.TrackerSettings (None: defaults)

    def __post_init__(self):
        require(self.seconds > 0, "seconds", f"must be > 0, got {self.seconds}")
        require(self.runs >= 1, "runs", f"must be >= 1, got {self.runs}")
        if self.class_mix is not None:
            require(len(self.class_mix) >= 2, "class_mix", f"needs two or more classes, got {list(self.class_mix)}")
            require(all(f > 0 for _, f in self.class_mix), "class_mix", "fractions must be > 0")

    def settings_for_run(self, run: int):
        """The SyntheticSettings of run number ``run`` (0-based)."""
        from acquisition.synthetic import SyntheticSettings

        base = self.synthetic if self.synthetic is not None else SyntheticSettings()
        changes = {"duration_s": self.seconds, "seed": self.seed + run}
        if self.class_mix is not None:
            changes.update(_class_mix_changes(base, dict(self.class_mix)))
        return dataclasses.replace(base, **changes)


def _class_mix_changes(base, mix: dict[str, float]) -> dict:
    """The SyntheticSettings changes that select the classes in ``mix`` with those fractions."""
    from mimlsort.errors import ConfigError

    classes = getattr(base, "classes", None)
    if classes is None:
        raise ConfigError("class_mix", "this synthetic camera has no configurable classes")
    by_name = {c.name: c for c in classes}
    unknown = [n for n in mix if n not in by_name]
    if unknown:
        raise ConfigError("class_mix", f"unknown classes {unknown} (the simulator knows {list(by_name)})")
    total = sum(mix.values())
    chosen = []
    for name, frac in mix.items():
        c = by_name[name]
        if any(f.name == "fraction" for f in dataclasses.fields(c)):
            c = dataclasses.replace(c, fraction=frac / total)
        chosen.append(c)
    return {"classes": tuple(chosen)}


def simulate_run(settings, tracker_settings=None, *, only_ok: bool = True, source: str | None = None):
    """One simulated run as a :class:`inference.training.data.Dataset`, labelled with the truth."""
    from acquisition.synthetic import SyntheticCamera
    from app.offline import track_camera
    from app.validate import match_events
    from inference.training.data import _with_report, dataset_from_events

    source = source or f"simulated seed {settings.seed}"
    with SyntheticCamera(settings) as cam:
        res = track_camera(cam, tracker_settings)
        truth = list(cam.truth)
    frame_ms = 1000.0 / settings.fps
    m = match_events(res.events, truth, run_ms=res.frames * frame_ms, frame_ms=frame_ms)
    events, labels, groups = [], [], []
    dropped = {"flagged": 0, "not a single cell": 0}
    for e, t in m.pairs:
        if t.kind != "cell":
            dropped["not a single cell"] += 1
            continue
        if only_ok and not e.trainable:
            dropped["flagged"] += 1
            continue
        events.append(e)
        labels.append(str(t.cls))
        groups.append(f"{source}#cell{getattr(t, 'id', len(groups))}")
    dropped["unmatched"] = len(m.unmatched_events)
    if not events:
        from mimlsort.errors import DataFormatError

        raise DataFormatError(f"{source}: the tracker found no usable cells in {res.frames} frames")
    ds = dataset_from_events(events, labels, groups=groups, source=source,
                             class_names=sorted({str(t.cls) for t in truth if t.kind == "cell"}) or None)
    notes = [f"{source}: {len(res.events)} events in {res.frames} frames; left out: "
             + ", ".join(f"{v} {k}" for k, v in dropped.items())]
    if m.complete_truth:
        notes.append(f"{source}: detection rate of complete passages {m.detection_rate:.3f}")
    log.info("%s", notes[0])
    return _with_report(ds, len(res.events), (), (), info=notes)


def simulated_dataset(sim: SimulatedData | None = None, *, progress: bool | Callable[[int, int], None] = False):
    """All runs of ``sim`` as one data set (class names united, one group per cell)."""
    from inference.training.data import Dataset

    sim = sim or SimulatedData()
    parts = []
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=sim.runs, desc="simulating", unit="run", leave=False)
    try:
        for r in range(sim.runs):
            s = sim.settings_for_run(r)
            mix = ",".join(f"{c.name}:{c.fraction:g}" for c in getattr(s, "classes", ()))
            src = f"synthetic camera seed {s.seed}, {s.duration_s:g} s" + (f", classes {mix}" if mix else "")
            parts.append(simulate_run(s, sim.tracker, only_ok=sim.only_ok, source=src))
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(r + 1, sim.runs)
    finally:
        if bar is not None:
            bar.close()
    return parts[0] if len(parts) == 1 else Dataset.concat(parts)


def stiffened_pair(base=None, cls: str = "wbc", *, di_factor: float = 0.8, speed_factor: float = 0.8,
                   relax_factor: float = 2.0):
    """SyntheticSettings with two classes: ``cls`` and a stiffened copy of it (``<cls>-stiff``).

    The MIML paper's transfer-learning scenario: normal vs mechanically altered cells of one type.
    The stiffened cells look the same but deform less (DI × ``di_factor``), pass slower
    (× ``speed_factor``) and relax slower (relaxation time × ``relax_factor``).
    """
    from acquisition.synthetic import SyntheticSettings

    base = base if base is not None else SyntheticSettings()
    by_name = {c.name: c for c in base.classes}
    if cls not in by_name:
        from mimlsort.errors import ConfigError

        raise ConfigError("cls", f"unknown class {cls!r} (the simulator knows {list(by_name)})")
    c = dataclasses.replace(by_name[cls], fraction=0.5)
    stiff = dataclasses.replace(c, name=f"{cls}-stiff", di=c.di * di_factor, rest_di=min(c.rest_di, c.di * di_factor / 2),
                                speed_factor=c.speed_factor * speed_factor, relax_ms=c.relax_ms * relax_factor)
    return dataclasses.replace(base, classes=(c, stiff))


def record_simulation(settings, path, *, sample: str = "mimlsort synthetic channel") -> list:
    """Render a finite synthetic run to a raw ``.rtdc`` (every frame, lossless, with the setup
    metadata dclab's checker wants); returns the simulator's truth."""
    from acquisition.recording import RawRecorder
    from acquisition.synthetic import SyntheticCamera

    require(settings.duration_s > 0, "synthetic.duration_s", "a recording needs a finite run (duration_s > 0)")
    with SyntheticCamera(settings) as cam:
        info = cam.info
        ring = info.make_ring(1024)
        reader = ring.reader("recorder")
        from app.config import SetupConfig
        from app.session import setup_meta
        from app.storage import RunMeta

        # the simulator's geometry; flow rate and medium are named as placeholders (a replay keeps them so)
        meta = {"experiment:sample": sample,
                **RunMeta(pixel_size_um=info.pixel_size_um, fps=info.fps, roi=(info.width, info.height),
                          **setup_meta(SetupConfig(), synthetic=settings)).setup_attrs()}
        with RawRecorder(path, info.width, info.height, info.dtype, pixel_size_um=info.pixel_size_um, fps=info.fps,
                         metadata=meta, overwrite=True) as rec:
            cam.start()
            while cam.grab_into(ring):
                if reader.pending >= 256:
                    rec.write_from_ring(reader, 256)
            rec.write_from_ring(reader, ring.capacity)
            cam.stop()
        return list(cam.truth)
