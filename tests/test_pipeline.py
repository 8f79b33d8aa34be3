"""The live pipeline on the synthetic camera and on replayed recordings: run state, counters,
overload, auto-stop, errors, determinism. Real components throughout (no model needed here; the
model path is covered in test_daemon.py)."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from acquisition.synthetic import SyntheticCamera, SyntheticSettings
from app.pipeline import AutoStop, FinishReason, Pipeline, RunState
from app.records import CellRecord
from mimlsort.errors import ConfigError
from tracking.tracker import TrackerSettings

FAST = SyntheticSettings(duration_s=0.4, realtime=False, seed=11)


class ListSink:
    """A real consumer of records (what the event writer does, in memory)."""

    def __init__(self):
        self.records: list[CellRecord] = []
        self.bytes_written = 0

    def write(self, records):
        self.records.extend(records)


class CountSink:
    """Counts records and lets them go (as the event writer does once they are on disk)."""

    def __init__(self):
        self.count = 0
        self.bytes_written = 0

    def write(self, records):
        self.count += len(records)


def run_to_end(p: Pipeline, timeout: float = 60.0) -> None:
    p.start()
    assert p.wait(timeout), "pipeline did not finish"


def test_lossless_run_tracks_every_frame_and_completes():
    sink = ListSink()
    p = Pipeline(SyntheticCamera(FAST), sink=sink, lossless=True, ring_capacity=512)
    run_to_end(p)
    st = p.status()
    assert st.state is RunState.FINISHED and st.finish_reason is FinishReason.COMPLETED
    assert st.frames_in == st.frames_processed > 0
    assert st.frames_missed == 0
    assert st.cells == len(sink.records) > 0
    assert st.elapsed_s > 0 and st.to_dict()["state"] == "finished"
    # each worker's CPU, read when it ended: together no more than the whole process used
    assert set(st.cpu_s) == {"camera", "sort", "decide", "storage"}
    assert st.cpu_s["sort"] > 0 and sum(st.cpu_s.values()) <= time.process_time()


def test_a_lossless_ring_too_small_for_a_batch_is_refused_not_stalled():
    """The camera of a lossless run waits for the tracker, which waits for a whole batch: a ring
    that cannot hold one beside its guard stalled both for good (a replay stopped at frame 317)."""
    p = Pipeline(SyntheticCamera(FAST), TrackerSettings(batch_frames=256), lossless=True, ring_capacity=256)
    with pytest.raises(ConfigError, match=r"camera\.ring_capacity.*cannot hold a batch of 256.*at least 516"):
        p.start()
    assert p.finish_reason is FinishReason.ERRORED


def test_cpu_seconds_of_a_thread_and_of_this_process():
    import threading

    from mimlsort import realtime

    tid = []
    spun, release = threading.Event(), threading.Event()

    def spin():
        tid.append(threading.get_native_id())
        t_end = time.thread_time() + 0.3
        while time.thread_time() < t_end:
            pass
        spun.set()
        release.wait(10)  # alive, not using CPU

    th = threading.Thread(target=spin)
    th.start()
    assert spun.wait(30)
    busy = realtime.cpu_seconds(os.getpid(), tid[0])
    release.set()
    th.join()
    assert 0.25 <= busy <= 0.6
    assert realtime.cpu_seconds(os.getpid()) >= busy
    # ended: gone from /proc (the kernel may finish the thread's exit a moment after join returns)
    deadline = time.monotonic() + 5.0
    while realtime.cpu_seconds(os.getpid(), tid[0]) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert realtime.cpu_seconds(os.getpid(), tid[0]) is None
    assert realtime.cpu_seconds(2**22 + 12345) is None  # no such process


def test_autostop_after_events_and_seconds():
    # a dense flow: cells finish together, and more are in view when the limit is reached
    sink = ListSink()
    p = Pipeline(SyntheticCamera(replace(FAST, duration_s=0.0, cells_per_second=600.0)), sink=sink,
                 autostop=AutoStop(events=7))
    run_to_end(p)
    assert p.finish_reason is FinishReason.COMPLETED and "after 7 events" in p.message
    assert p.status().cells == 7 and len(sink.records) == 7  # exactly the count asked for
    p = Pipeline(SyntheticCamera(replace(FAST, duration_s=0.0, realtime=True)), sink=ListSink(),
                 autostop=AutoStop(seconds=0.3))
    t0 = time.monotonic()
    run_to_end(p)
    assert p.finish_reason is FinishReason.COMPLETED and "0.3 s" in p.message
    assert time.monotonic() - t0 < 20


def test_autostop_seconds_counts_the_recordings_time_in_a_replay_at_any_speed(tmp_path):
    # it counted the host's seconds: a replay read as fast as it goes stopped after N s of
    # processing, wherever in the recording that was (here: not at all, the whole 5 s recording
    # is read in well under 1.5 s), and at another frame on another host
    from acquisition.replay import ReplayCamera, ReplaySettings
    from app.simdata import record_simulation

    rec = tmp_path / "rec.rtdc"
    fps = 200.0
    record_simulation(replace(FAST, fps=fps, duration_s=5.0, cells_per_second=0.0, debris_per_second=0.0), rec)
    p = Pipeline(ReplayCamera(ReplaySettings(path=str(rec))), sink=ListSink(), lossless=True,
                 autostop=AutoStop(seconds=1.5))
    run_to_end(p)
    st = p.status()
    assert p.finish_reason is FinishReason.COMPLETED, p.message
    assert p.message == "auto-stop after 1.5 s of measurement time (the recording's frame times)"
    # the frames of 1.5 s of the recording, to within the last grab (at most 64 frames)
    assert 1.5 * fps <= st.frames_in <= 1.5 * fps + 64, st.frames_in
    assert 1.5 <= st.measured_s <= 1.5 + 64 / fps and f"measured {st.measured_s:.1f}/1.5s" in st.line()
    assert st.autostop_clock == "the recording's frame times"


@pytest.mark.parametrize("ring_capacity", [64, 256])
def test_a_replay_measures_the_recordings_whole_time_however_small_the_ring(tmp_path, ring_capacity):
    # the event file's duration: the frames' own times, counted before the camera laps them (a
    # count at each grab cost ~10 µs of Python per grab beside the sort path; it is made only
    # once half the ring is new, and once at the end)
    from acquisition.replay import ReplayCamera, ReplaySettings
    from app.simdata import record_simulation

    rec = tmp_path / "rec.rtdc"
    fps = 1000.0
    record_simulation(replace(FAST, fps=fps, duration_s=1.0, cells_per_second=0.0, debris_per_second=0.0), rec)
    # not lossless: the camera laps the tracker in a ring this small, and must not lap the count
    p = Pipeline(ReplayCamera(ReplaySettings(path=str(rec))), sink=ListSink(), lossless=False,
                 ring_capacity=ring_capacity)
    run_to_end(p)
    st = p.status()
    assert st.frames_in == 1000 and st.measured_s == pytest.approx(999 / fps)
    assert "measured" not in st.line()  # the status line says it only against an auto-stop duration


def test_stop_cancels_and_records_reason():
    p = Pipeline(SyntheticCamera(replace(FAST, duration_s=0.0, realtime=True)), sink=ListSink())
    p.start()
    time.sleep(0.3)
    p.stop(FinishReason.CANCELED, "operator")
    assert p.wait(20)
    st = p.status()
    assert st.finish_reason is FinishReason.CANCELED and st.message == "operator"
    with pytest.raises(Exception):
        p.start()  # a pipeline runs once


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class DecisionSink(CountSink):
    """Counts records and keeps each one's decision (reason, fired) and fire record, not its images."""

    def __init__(self):
        super().__init__()
        self.decisions: list[tuple[str, bool, object]] = []

    def write(self, records):
        super().write(records)
        self.decisions += [(r.decision.reason.value, r.decision.fire, r.fire) for r in records]


def test_overload_drops_are_counted_memory_stays_flat_no_record_lost():
    # the pure-Python kernels are ~100x slower than the camera: a sustained overload
    from app.sorting import Reason, SortPolicy, SortSettings
    from hardware.dryrun import NullTrigger
    from hardware.timing import TimingSettings

    class Model:  # every cell a target: each one is either fired or counted late
        classes = ("a", "b")

        def classify(self, events):
            return np.tile(np.float32([0.9, 0.1]), (len(events), 1))

    sink = DecisionSink()
    # within what the channel passes (~170 cells/s at 3 mm/s): beyond it the simulated inlet queues
    # cells without end, and their sprites are memory the pipeline does not own
    cam = SyntheticCamera(replace(FAST, duration_s=0.0, cells_per_second=150.0))
    timing = TimingSettings(distance_to_junction_um=100.0)
    trig = NullTrigger(timing=timing).open()
    policy = SortPolicy(SortSettings(target_classes=("a",), mode="yield", threshold=0.5, reject_flags=()), Model.classes)
    p = Pipeline(cam, TrackerSettings(batch_frames=16, background_frames=4), sink=sink, ring_capacity=128,
                 kernels="python", classifier=Model(), policy=policy, trigger=trig, timing=timing)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # let the camera thread in often, as a real camera's SDK thread is
    try:
        p.start()
        deadline = time.monotonic() + 60
        while p.tracker is None and time.monotonic() < deadline:  # the pure-Python background estimate
            time.sleep(0.05)
        time.sleep(1.0)
        rss0 = _rss_mb()
        time.sleep(2.0)
        rss1 = _rss_mb()
        p.stop()
    finally:
        # the camera grabs no more once stopped; the tracker then finishes the frames already in
        # the ring with the pure-Python kernels, which a GIL handed over every 100 µs slows down
        sys.setswitchinterval(old)
    assert p.wait(60)
    st = p.status()
    assert st.frames_missed > 0, "the overload was not detected"
    # every frame that came in was either tracked or counted as missed
    sort = next(r for r in p.ring.readers if r.name == "sort")
    # every frame that came in was tracked, went into the background estimate, was skipped
    # (counted) or was still unread when the stop came
    assert st.frames_processed > 0
    assert st.frames_in == st.frames_processed + st.startup_frames + sort.missed + sort.pending
    assert rss1 - rss0 < 20.0, f"memory grew by {rss1 - rss0:.1f} MB under overload"
    assert sink.count == st.cells > 0  # records are never dropped
    # no decision lost, and none late beyond its counter: every cell was fired or said why not
    reasons = [r for r, _f, _rec in sink.decisions]
    assert len(reasons) == st.cells == st.fired + sum(st.not_fired.values())
    assert sum(f for _r, f, _rec in sink.decisions) == st.fired == trig.fired
    assert reasons.count(Reason.LATE.value) == st.late > 0  # an overloaded tracker decides cells too late
    # the late ones: refused by the trigger for their fire time, or decided when the run had ended
    late = [rec for r, _f, rec in sink.decisions if r == Reason.LATE.value]
    assert sum(rec is not None and rec.late for rec in late) == trig.late
    assert all(rec is None or rec.late for rec in late)


class SlowClassifier:
    """A model that takes ``seconds`` a cell (the GIL released meanwhile, as ONNX Runtime does)."""

    classes = ("a", "b")

    def __init__(self, seconds: float):
        self.seconds = seconds

    def classify(self, events):
        time.sleep(self.seconds * len(events))
        return np.full((len(events), 2), 0.5, np.float32)


def test_more_cells_than_can_be_decided_hold_tracking_back_not_memory():
    # every cell takes 10 ms to classify and 150 cells/s come: ~1.5 s of decisions a second.
    # Tracking must wait for them (its frames are lost and counted) rather than queue cells, and
    # their snapshots, without end; every cell tracked is still decided and recorded
    from app.pipeline import DECIDE_BACKLOG

    sink = CountSink()
    cam = SyntheticCamera(replace(FAST, duration_s=0.0, realtime=True, cells_per_second=150.0))
    p = Pipeline(cam, sink=sink, classifier=SlowClassifier(0.01), decide_thread=True, ring_capacity=1024)
    p.start()
    deadline = time.monotonic() + 60
    # until tracking has waited for the decisions: a loaded host loses frames before that, and
    # the run was stopped before the decide queue filled (decide_waits 0 at a load of 5 on 2 cores)
    while (p.status().frames_missed == 0 or p.status().decide_waits == 0) and time.monotonic() < deadline:
        assert p.status().decide_queue <= DECIDE_BACKLOG
        time.sleep(0.02)
    rss0 = _rss_mb()
    for _ in range(50):
        assert p.status().decide_queue <= DECIDE_BACKLOG
        time.sleep(0.02)
    rss1 = _rss_mb()
    p.stop()
    assert p.wait(60)
    st = p.status()
    print(f"cells {st.cells}, waits {st.decide_waits}, frames missed {st.frames_missed}")
    assert st.decide_waits > 0
    assert st.frames_missed > 0  # the frames tracking could not take while it waited
    assert rss1 - rss0 < 50
    # the daemon's console line says so, and gives the latency from the exit frame too
    assert f"waits {st.decide_waits}" in st.line() and "from exit" in st.line()
    assert st.cells == sink.count >= DECIDE_BACKLOG


def _stalled_writer_run(tmp_path, monkeypatch, max_backlog_mb: float, cells_per_second: float = 150.0):
    """A live run whose event writer (the real one, in-process) stalls in ``write`` until the
    returned event is set — what a slow or network disk does. Only the stall is ours."""
    import threading

    from app.config import config_from_mapping
    from app.session import build_run
    from app.storage import EventWriter

    release = threading.Event()
    real_write = EventWriter.write

    def stalling_write(self, records):
        release.wait(60)
        return real_write(self, records)

    monkeypatch.setattr(EventWriter, "write", stalling_write)
    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.0, "realtime": True, "seed": 11,
                                                          "cells_per_second": cells_per_second}},
        "model": {"path": "none"},
        "output": {"folder": str(tmp_path), "writer": "thread", "report": False, "max_backlog_mb": max_backlog_mb},
    })
    return build_run(cfg), release


def _file_counters(path) -> tuple[dict, str]:
    import h5py

    with h5py.File(path, "r") as h5:
        counters = {k[len("user:counter "):]: v for k, v in h5.attrs.items() if k.startswith("user:counter ")}
        lines = [x.decode() if isinstance(x, bytes) else str(x) for x in h5["logs/mimlsort-run"][:]]
    return counters, "".join(lines).replace(" ", "")  # long lines are wrapped


def test_a_writer_that_falls_behind_sheds_event_images_not_records(tmp_path, monkeypatch):
    # past half the backlog limit cells go to the file without their ROI image (features, crops
    # and decisions kept); once the writer catches up, images are stored again
    from tests.test_storage import dclab_check

    run, release = _stalled_writer_run(tmp_path, monkeypatch, max_backlog_mb=4.0)
    run.start()
    deadline = time.monotonic() + 60
    while run.status().images_shed < 5 and time.monotonic() < deadline:
        assert run.status().storage_backlog_mb <= 4.0
        time.sleep(0.01)
    shed_at_release = run.status().images_shed
    assert shed_at_release >= 5, "no image was shed while the writer stalled"
    release.set()
    time.sleep(0.5)
    while run.status().storage_backlog_mb > 0.2 and time.monotonic() < deadline:  # the writer caught up
        time.sleep(0.05)
    cells_caught_up = run.status().cells
    time.sleep(1.5)  # more cells, written with their images again
    run.stop()
    assert run.wait(60)
    run.close()
    st = run.status()
    assert st.finish_reason is FinishReason.CANCELED, st.message
    assert st.storage_backlog_mb == 0 and "images shed" in st.line()
    assert st.cells > cells_caught_up + 20
    assert st.images_shed < st.cells - 20  # shedding stopped once the writer caught up
    dclab, (violations, _alerts, _info) = dclab_check(run.events_path)
    assert violations == []
    with dclab.new_dataset(str(run.events_path)) as ds:
        assert len(ds) == st.cells  # every record reached the file
        from tracking.events import Quality

        # flagged, with a placeholder mask dclab can take a contour of
        slot = next(k for k, v in ds.config["user"].items() if k.startswith("userdef") and v.startswith("quality"))
        flags = np.asarray(ds[slot], np.int64)
        empty = (flags & int(Quality.NO_ROI_IMAGE)) > 0
        # every shed cell is flagged; so are cells the tracker had no image of: a passage not seen
        # whole (INCOMPLETE: a loaded host made 38 flagged with 36 shed, 31 with 29 in a full run)
        # or one whose frame the ring had overwritten
        whole = empty & ((flags & int(Quality.INCOMPLETE)) == 0)
        assert whole.sum() - st.snapshots_lost <= st.images_shed <= empty.sum(), \
            (whole.sum(), st.snapshots_lost, st.images_shed, empty.sum())
        assert all(np.count_nonzero(ds["mask"][i]) == 9 for i in np.flatnonzero(empty))
        assert whole[-20:].sum() <= st.snapshots_lost  # the last cells have their images: none is shed
        assert np.isfinite(ds["deform"][whole]).all()  # features of the shed cells are there (none of a partial passage)
    counters, lines = _file_counters(run.events_path)
    assert counters["images_shed"] == st.images_shed and counters["events_without_roi_frame"] == empty.sum()
    assert "withouttheirROIimage" in lines


def test_a_writer_that_cannot_keep_up_stops_the_run_with_every_record_written(tmp_path, monkeypatch):
    # the writer stalls for good: beyond the limit the run stops with an error that names the
    # setting rather than grow; what was decided is still written and the file is complete
    run, release = _stalled_writer_run(tmp_path, monkeypatch, max_backlog_mb=1.0)
    run.start()
    peak = 0.0
    deadline = time.monotonic() + 60
    while run.status().finish_reason is None and time.monotonic() < deadline:
        peak = max(peak, run.status().storage_backlog_mb)
        time.sleep(0.005)
    assert run.status().finish_reason is FinishReason.ERRORED
    release.set()  # the disk comes back: what is queued is written
    assert run.wait(60)
    run.close()
    st = run.status()
    assert "output.max_backlog_mb" in st.message and "behind" in st.message
    assert 0.5 < peak <= 1.0 + 0.2  # within the limit, give or take the last batch
    assert st.images_shed > 0
    from tests.test_storage import dclab_check

    dclab, (violations, _alerts, _info) = dclab_check(run.events_path)
    assert violations == []
    with dclab.new_dataset(str(run.events_path)) as ds:
        assert len(ds) == st.cells > 0
    counters, lines = _file_counters(run.events_path)
    assert counters["images_shed"] == st.images_shed
    assert "max_backlog_mb" in lines


def test_worker_error_ends_run_errored(tmp_path):
    # a recording that is corrupt in the middle: the camera worker fails, the run says why
    from acquisition.replay import ReplayCamera, ReplaySettings

    folder = tmp_path / "frames"
    folder.mkdir()
    import cv2

    from acquisition.synthetic import render_frames

    frames, _ = render_frames(replace(FAST, duration_s=0.0), 200)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"f{i:04d}.png"), f)
    (folder / "f0150.png").write_bytes(b"not a png")
    cam = ReplayCamera(ReplaySettings(path=str(folder), pixel_size_um=FAST.pixel_size_um, fps=FAST.fps))
    p = Pipeline(cam, sink=ListSink(), lossless=True)
    run_to_end(p)
    st = p.status()
    assert st.finish_reason is FinishReason.ERRORED
    assert "f0150" in st.message


def test_a_frame_ring_larger_than_the_memory_is_refused_before_it_is_made():
    # a large ROI times ring_capacity would push the machine into swap or the OOM killer mid-run
    from mimlsort import realtime

    avail = realtime.memory_available()
    if not avail:
        pytest.skip("no /proc/meminfo here")
    s = replace(FAST, width=512, height=128)
    capacity = avail // (512 * 128) + 1  # one frame more than all the memory there is
    p = Pipeline(SyntheticCamera(s), sink=ListSink(), ring_capacity=capacity)
    with pytest.raises(ConfigError, match=r"camera\.ring_capacity: .* frames of 512x128 uint8 need .* GiB"):
        p.start()
    assert p.ring is None
    ok = Pipeline(SyntheticCamera(s), sink=ListSink(), ring_capacity=256)  # the same ROI in a normal ring runs
    run_to_end(ok)
    assert ok.status().finish_reason is FinishReason.COMPLETED


def test_live_policy_swap_and_recent_records():
    from app.config import bundled_model_path
    from app.sorting import SortPolicy, SortSettings
    from inference.classifier import Classifier

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    clf = Classifier(bundled_model_path(), provider="cpu")
    pol = SortPolicy(SortSettings(reject_flags=(), mode="yield", threshold=0.0), clf.classes)
    p = Pipeline(SyntheticCamera(FAST), classifier=clf, policy=pol, sink=ListSink(), lossless=True)
    p.set_policy(SortPolicy(SortSettings(enabled=False, reject_flags=()), clf.classes))
    run_to_end(p)
    recs = p.recent()
    assert recs and all(r.decision is not None for r in recs)
    assert not any(r.decision.fire for r in recs)
    assert {r.decision.reason.value for r in recs} <= {"sorting off", "not a target class", "below threshold"}
    assert sum(p.status().class_counts.values()) == len(recs)
    with pytest.raises(Exception, match="classes"):
        p.set_policy(SortPolicy(SortSettings(target_classes=("x",)), ("x", "y")))


def test_live_tracks_for_overlays():
    from acquisition.synthetic import render_frames
    from tracking.tracker import Tracker

    frames, truth = render_frames(replace(FAST, cells_per_second=200.0), 600)
    t = Tracker.from_frames(frames, FAST.pixel_size_um)
    seen = 0
    for a in range(0, 600, 50):
        t.process_frames(frames[a:a + 50], np.arange(a, a + 50), fps=FAST.fps)
        tracks = t.live_tracks()
        seen += len(tracks)
        for tid, x, y, ax, bx, ang in tracks:
            assert 0 <= x < frames.shape[2] and 0 <= y < frames.shape[1]
            assert ax >= bx >= 0 and -np.pi / 2 <= ang <= np.pi / 2
    assert seen > 0


def test_a_paced_run_starts_tracking_at_the_newest_frame_and_counts_what_it_passed_over():
    # a camera in real time: the frames of the background estimate (and any that queued while it
    # ran) are not worked through, so the first decisions are not late; they are counted instead
    cam = SyntheticCamera(replace(FAST, duration_s=0.6, realtime=True, fps=2000.0))
    sink = CountSink()
    p = Pipeline(cam, TrackerSettings(background_frames=64), sink=sink)
    run_to_end(p)
    st = p.status()
    assert st.finish_reason is FinishReason.COMPLETED
    assert st.startup_frames >= 64
    assert st.frames_in == st.frames_processed + st.startup_frames + st.frames_missed
    assert st.cells == sink.count > 0
    # a replay at full speed is never late: every frame is tracked
    cam2 = SyntheticCamera(replace(FAST, duration_s=0.6, realtime=False, fps=2000.0))
    p2 = Pipeline(cam2, TrackerSettings(background_frames=64), sink=CountSink())
    run_to_end(p2)
    st2 = p2.status()
    assert st2.startup_frames == 0 and st2.frames_processed == st2.frames_in


def test_deciding_on_the_tracking_thread_gives_the_same_records():
    # the decide thread is a scheduling choice: it must not change what is decided
    from app.config import RunConfig
    from app.sorting import SortPolicy
    from inference.classifier import Classifier, bundled_model

    out = []
    for threaded in (True, False, "auto"):
        clf = Classifier(bundled_model())
        sink = ListSink()
        cam = SyntheticCamera(replace(FAST, duration_s=0.5))
        p = Pipeline(cam, sink=sink, classifier=clf, policy=SortPolicy(RunConfig().sorting, clf.classes),
                     lossless=True, decide_thread=threaded)
        run_to_end(p)
        out.append([(r.event.index, r.decision.reason, tuple(np.round(r.probabilities, 6))) for r in sink.records])
    assert out[0] == out[1] == out[2] and len(out[0]) > 0


_NO_LATE_KERNELS = r"""
import sys, numba
from numba.core.dispatcher import Dispatcher
from acquisition.synthetic import SyntheticCamera
from app.config import RunConfig
from app.daemon import run_daemon
from app.session import with_changes

OURS = ("mimlsort", "app", "acquisition", "tracking", "inference", "hardware")

def loaded():
    out = set()
    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] in OURS:
            for attr, v in list(vars(mod).items()):
                if isinstance(v, Dispatcher):
                    out |= {(f"{name}.{attr}", str(sig)) for sig in v.overloads}
    return out

before = []
start = SyntheticCamera.start
def start_and_note(self):
    before.append(loaded())
    start(self)
SyntheticCamera.start = start_and_note
folder = sys.argv[1]
cfg = with_changes(RunConfig(), camera={"backend": "synthetic", "synthetic.duration_s": 1.5, "synthetic.realtime": True},
                   trigger={"backend": "log", "log.path": folder + "/pulses.csv"},
                   output={"folder": folder, "sample": "k"}, daemon={"log_file": ""})
code, run = run_daemon(cfg, folder=folder)
assert code == 0 and run.status().cells > 0, (code, run.status())
for k in sorted(loaded() - before[0]):
    print("LATE", *k)
"""


def test_no_kernel_is_first_loaded_once_the_camera_runs(tmp_path):
    # a numba kernel first called mid-run compiles (fresh machine) or loads from the cache with
    # the GIL held: the sort thread stands still, and a real-time camera overruns the ring
    import subprocess

    res = subprocess.run([sys.executable, "-c", _NO_LATE_KERNELS, str(tmp_path)], capture_output=True, text=True,
                         timeout=240, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert res.returncode == 0, res.stderr[-3000:]
    late = [line for line in res.stdout.splitlines() if line.startswith("LATE")]
    assert not late, "\n".join(late)


def test_a_request_the_trigger_refuses_is_that_cells_reason_not_a_trigger_fault(caplog):
    # a cell that nearly stopped past the exit (v_after 0.03 mm/s: 200 µm take ~7 s) asks for a
    # fire time beyond max_delay_us. The trigger refuses that request; it stays in service, and
    # the next cell fires
    from app.sorting import Decision, Reason
    from hardware.timing import TimingSettings
    from hardware.trigger import make_trigger
    from tracking.events import CellEvent

    timing = TimingSettings(min_lead_us=100.0)
    crop = np.zeros((8, 8), np.uint8)

    def cell(i: int, v_after: float) -> CellEvent:
        return CellEvent(i, i, {"v_after_mm_s": v_after, "exit_time_ms": float(i)}, crop, crop, 0.5, 0, 5, 0, 0)

    with make_trigger("null", None, timing) as trig:
        p = Pipeline(SyntheticCamera(FAST), trigger=trig, timing=timing)
        wants = Decision(0, True, Reason.FIRED, "a", 0.9, True)
        now = time.monotonic_ns()
        slow, rec = p._fire(cell(0, 0.03), wants, exit_ns=now)
        fast, rec2 = p._fire(cell(1, 10.0), wants, exit_ns=now)
        st = p.status()
    assert slow.reason is Reason.REFUSED and not slow.fire and "max_delay_us" in slow.detail and rec.refused
    assert fast.reason is Reason.FIRED and rec2.ok
    assert st.trigger_ok and st.trigger_failed == 0 and st.errors == ()
    assert not any("unavailable" in r.message for r in caplog.records)


def test_a_target_change_is_logged_and_restarts_the_estimates(caplog):
    from app.config import bundled_model_path
    from app.sorting import SortPolicy, SortSettings
    from inference.classifier import Classifier

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    clf = Classifier(bundled_model_path(), provider="cpu")
    a, b = clf.classes[:2]
    yield_all = dict(reject_flags=(), mode="yield", threshold=0.0)

    class LogSink(ListSink):
        lines: list[str] = []

        def log(self, line):
            self.lines.append(line)

    sink = LogSink()
    cam = SyntheticCamera(replace(FAST, duration_s=1.5, realtime=True, cells_per_second=80.0))
    p = Pipeline(cam, classifier=clf, policy=SortPolicy(SortSettings(target_classes=(a,), **yield_all), clf.classes),
                 sink=sink)
    p.start()
    deadline = time.monotonic() + 60
    while p.status().cells < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    with caplog.at_level("INFO", logger="app.pipeline"):
        p.set_policy(SortPolicy(SortSettings(target_classes=(b,), **yield_all), clf.classes))
    assert p.wait(60)
    st = p.status()
    assert any(f"targets {b}" in r.getMessage() and "sort policy changed after" in r.getMessage()
               for r in caplog.records)
    assert sum("sort policy changed after" in line and f"targets {b}" in line for line in sink.lines) == 1
    recs = [r for r in sink.records if r.decision is not None]
    # the first cell decided by the new policy: a cell of class a not fired, or one of class b fired
    i0 = next(i for i, r in enumerate(recs) if (r.decision.predicted == a) != r.decision.fire)
    assert 0 < i0 < len(recs) - 5
    kb = clf.classes.index(b)
    p_b = np.array([float(r.probabilities[kb]) for r in recs[i0:]])
    fired = np.array([r.decision.fire for r in recs[i0:]])
    # the estimates start again at the change: the new targets' P over the cells decided since
    assert st.purity_estimate == pytest.approx(p_b[fired].mean(), rel=1e-9)
    assert st.recovery_estimate == pytest.approx(p_b[fired].sum() / p_b.sum(), rel=1e-9)
    assert st.fired == sum(r.decision.fire for r in recs)  # the counts go on


def test_cells_the_tracker_could_not_follow_are_counted():
    from tracking.tracker import TrackerSettings

    p = Pipeline(SyntheticCamera(replace(FAST, cells_per_second=400.0)), sink=ListSink(), lossless=True,
                 tracker_settings=TrackerSettings(max_tracks=1))
    run_to_end(p)
    st = p.status()
    assert st.tracks_overflow > 0 and f"untracked {st.tracks_overflow}" in st.line()
    assert st.tracks_overflow == p.tracker.stats.track_overflow


def test_a_tracker_crop_smaller_than_the_models_field_is_refused(caplog):
    from app.config import bundled_model_path
    from app.session import check_model_scale
    from inference.classifier import Classifier
    from mimlsort.errors import ConfigError

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    clf = Classifier(bundled_model_path(), provider="cpu", warmup=False)
    field, px = clf.spec.image.crop_size_um, clf.spec.image.pixel_size_um
    check_model_scale(clf, field, px)
    with pytest.raises(ConfigError, match=rf"tracking\.crop_size_um: is 30 µm, smaller than the {field:g} µm field"):
        check_model_scale(clf, 30.0, px)
    with caplog.at_level("WARNING", logger="app.session"):
        check_model_scale(clf, field, 2 * px)
    assert any("far from the" in r.getMessage() for r in caplog.records)


def test_frames_the_camera_lapped_while_cells_were_decided_do_not_reach_the_clock_map():
    """Under overload the camera laps the ring while the sort thread decides: the times it then
    read back from the oldest slots were newer frames', and the clock map restarted on a camera
    clock that had "gone back" (16 restarts in a 30 kHz overload run). Only the slots the camera
    has not reached (less a margin it may be writing in) are read back."""
    from acquisition.frame import FrameRing
    from app.pipeline import intact_range
    from hardware.timing import ClockMap

    ring = FrameRing(64, 2, 2)
    img = np.zeros((2, 2), np.uint8)
    for k in range(40):
        ring.push(img, k, 1_000_000 * k, 5_000_000 + 1_000_000 * k)
    assert intact_range(ring, 10, 20, margin=4) == (10, 30)  # nothing lapped yet
    for k in range(40, 90):  # the camera goes on meanwhile: seq 10..29 partly overwritten
        ring.push(img, k, 1_000_000 * k, 5_000_000 + 1_000_000 * k)
    lo, hi = intact_range(ring, 10, 20, margin=4)
    assert (lo, hi) == (90 - 64 + 4, 30)
    assert list(ring.frame_ids[np.arange(lo, hi) % 64]) == list(range(lo, hi))  # what was tracked
    cm = ClockMap(window=64)
    cm.add_many(np.arange(0, 10, dtype=np.int64) * 1_000_000, 5_000_000 + np.arange(0, 10) * 1_000_000)
    cm.add_ring(ring.timestamps_ns, ring.host_ns, lo, hi - lo)
    assert cm.resets == 0
    cm.add_ring(ring.timestamps_ns, ring.host_ns, 10, 20)  # reading all of them back: a false restart
    assert cm.resets == 1
    assert intact_range(ring, 10, 5, margin=4)[1] - intact_range(ring, 10, 5, margin=4)[0] == 0  # all gone


def test_a_source_read_at_full_speed_has_no_clock_map(caplog):
    # a recording or simulation read as fast as it goes has a camera clock that says nothing
    # about when its frames reach the host: fitting a map to it restarted the map with a warning
    # ("frames arrive … earlier than the clock map predicts") in every full-speed replay
    from hardware.timing import TimingSettings
    from hardware.trigger import make_trigger

    timing = TimingSettings()
    with make_trigger("null", None, timing) as trig:
        p = Pipeline(SyntheticCamera(replace(FAST, duration_s=1.0, fps=8000.0)), sink=ListSink(), lossless=True,
                     trigger=trig, timing=timing)
        run_to_end(p)
        st = p.status()
    assert st.finish_reason is FinishReason.COMPLETED and st.frames_processed > 7000
    assert st.clock_resets == 0
    assert not any("clock map" in r.getMessage() for r in caplog.records)
    assert p._clock is None and p._clock_rate == 1.0  # pulses are timed from the frames' arrival
    # a paced source keeps its map (0.6 s: of 0.2 s, 800 frames went into the background estimate,
    # and beside 3 busy processes the source ended with 2-3 of the other 200 tracked, 0 once in CI
    # beside two test workers; 1,200-1,700 of 0.6 s)
    live = Pipeline(SyntheticCamera(replace(FAST, duration_s=0.6, realtime=True)), sink=ListSink())
    run_to_end(live)
    assert live._clock is not None and live._clock.n > 0


def test_a_run_follows_its_source_lossless_and_unfired_when_unpaced(tmp_path, caplog):
    # a recording or simulation read as fast as it goes, from the GUI or `mimlsort run`, lost frames
    # (the camera did not wait for the tracker) and fired pulses timed from nothing; a replay in
    # real time drove the configured sorter
    from app.config import bundled_model_path, config_from_mapping
    from app.session import build_run, source_pacing
    from app.simdata import record_simulation

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")

    def cfg(camera: dict, trigger: dict):
        return config_from_mapping({"camera": camera, "trigger": trigger,
                                    "output": {"folder": str(tmp_path / "out"), "report": False}})

    log_trigger = {"backend": "log", "log": {"path": str(tmp_path / "pulses.csv")}}
    fast = cfg({"backend": "synthetic", "synthetic": {"duration_s": 0.5, "realtime": False, "seed": 4,
                                                      "cells_per_second": 80.0}}, log_trigger)
    assert source_pacing(fast) == (False, True)
    with build_run(fast) as run:
        assert run.wait(120)
    st = run.status()
    assert run.pipeline.lossless and run.pipeline.trigger is None and st.frames_missed == 0
    assert st.frames_processed == st.frames_in and st.cells > 0 and st.late == 0
    assert not (tmp_path / "pulses.csv").exists()
    # a cell still in view when the source ended is decided after it (the tracker's flush): with
    # nothing to fire, it is recorded as fired like the others, not "late: decided after the run
    # ended" (this seed leaves one such target cell)
    every = config_from_mapping({"camera": {"backend": "synthetic", "synthetic": {
        "duration_s": 0.3, "realtime": False, "seed": 10, "cells_per_second": 150.0}},
        "sorting": {"mode": "yield", "threshold": 0.0}, "output": {"folder": str(tmp_path / "out2"), "report": False}})
    with build_run(every) as run:
        assert run.wait(120)
    st = run.status()
    assert run.pipeline.trigger is None and st.cells > 0 and st.late == 0 and "late" not in st.not_fired, st.not_fired

    raw = tmp_path / "rec.rtdc"
    record_simulation(SyntheticSettings(duration_s=0.3, seed=5), raw)
    serial = {"backend": "serial", "serial": {"port": str(tmp_path / "no-such-port")}}
    replay = cfg({"backend": "replay", "replay": {"path": str(raw), "realtime": True}}, serial)
    assert source_pacing(replay) == (True, True)
    with build_run(replay) as run:  # the serial port does not exist: it is not opened
        assert run.wait(60)
    assert run.pipeline.trigger.backend == "null" and not run.pipeline.lossless
    assert any("a replay sorts no cells" in r.getMessage() for r in caplog.records)
    assert source_pacing(cfg({"backend": "synthetic", "synthetic": {"realtime": True, "duration_s": 0}},
                             log_trigger)) == (True, False)


def test_a_run_whose_build_fails_leaves_no_empty_files(tmp_path, monkeypatch):
    # the raw recorder could not be opened (here: stands in for a full or read-only disk, which
    # cannot be made here without root): the event file already created held nothing and stayed
    from acquisition.recorder_process import RawRecorderProcess
    from app.config import config_from_mapping
    from app.session import build_run

    def refuse(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RawRecorderProcess, "__init__", refuse)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "mine.rtdc").write_bytes(b"")  # the user's own file stays whatever happens
    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.2, "realtime": False, "seed": 3}},
        "model": {"path": "none"},
        "output": {"folder": str(folder), "report": False, "record_raw": True},
    })
    with pytest.raises(OSError, match="No space"):
        build_run(cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["mine.rtdc"]


def test_a_run_whose_start_fails_leaves_no_empty_event_file(tmp_path):
    # refused in Pipeline.start (a ring too small for a lossless replay's batches): the error is
    # raised to the daemon / GUI, and the event file the run had created held no frame
    from app.config import config_from_mapping
    from app.session import build_run
    from mimlsort.errors import ConfigError

    folder = tmp_path / "out"
    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "ring_capacity": 64,
                   "synthetic": {"duration_s": 0.2, "realtime": False, "seed": 3}},
        "model": {"path": "none"},
        "output": {"folder": str(folder), "report": False},
    })
    run = build_run(cfg)
    assert run.events_path.is_file()
    with pytest.raises(ConfigError, match="ring_capacity"):
        run.start()
    assert run.closed_all and list(folder.iterdir()) == []


def test_two_runs_that_pick_a_name_at_once_get_a_file_each(tmp_path, monkeypatch):
    # two daemons started in the same second on one folder: both found the same name free before
    # either had made its file (the second then failed; or both could have written one file)
    import app.session as session
    from app.config import config_from_mapping

    folder = tmp_path / "out"
    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.2, "realtime": False, "seed": 3}},
        "model": {"path": "none"},
        "output": {"folder": str(folder), "report": False, "sample": "twin"},
    })
    first = session.build_run(cfg)
    real, calls = session.run_stem, []

    def stale_first(cfg, folder=None):  # the other process looked before the first file existed
        calls.append(1)
        return first.events_path.stem if len(calls) == 1 else real(cfg, folder)

    monkeypatch.setattr(session, "run_stem", stale_first)
    second = session.build_run(cfg)
    assert second.events_path != first.events_path and len(calls) == 2
    for run in (first, second):
        with run:
            assert run.wait(120)
    import dclab

    for run in (first, second):
        with dclab.new_dataset(run.events_path) as ds:
            assert len(ds) > 0 and ds.config["experiment"]["sample"] == "twin"
    indices = sorted(dclab.new_dataset(r.events_path).config["experiment"]["run index"] for r in (first, second))
    assert indices == [1, 2]  # the reserved file does not count itself
    # every file a run writes is taken: a raw-only run's name is not given to one with both
    raw_only = session.reserve_run_stem(cfg, folder, ("_raw.rtdc",))
    calls.clear()
    monkeypatch.setattr(session, "run_stem", lambda cfg, folder=None: raw_only[0] if not calls.append(1) and
                        len(calls) == 1 else real(cfg, folder))
    stem, taken = session.reserve_run_stem(cfg, folder, (".rtdc", "_raw.rtdc"))
    assert stem != raw_only[0] and len(taken) == 2 and all(p.is_file() for p in taken)
    assert not (folder / f"{raw_only[0]}.rtdc").exists()  # the half taken was given back


def test_a_worker_that_fails_while_the_run_stops_makes_it_errored(tmp_path):
    # the auto-stop came during the background estimate, then the tracker refused a geometry
    # outside the ROI: the run ended "completed" (exit code 0) with no frame tracked
    from app.config import config_from_mapping
    from app.pipeline import FinishReason
    from app.session import build_run

    cfg = config_from_mapping({
        # 64 background frames at 100 fps: the auto-stop comes first
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.0, "realtime": True, "fps": 100.0, "seed": 3}},
        "tracking": {"geometry": {"constriction_start_um": 40.0, "constriction_end_um": 80.0,
                                  "channel_top_um": 5.0, "channel_bottom_um": 500.0}},  # below the ROI
        "model": {"path": "none"}, "autostop": {"seconds": 0.2},
        "output": {"folder": str(tmp_path), "report": False},
    })
    with build_run(cfg) as run:
        assert run.wait(120)
    st = run.status()
    assert st.finish_reason is FinishReason.ERRORED, (st.finish_reason, st.message)
    assert "channel_bottom_um" in st.message and "while stopping: completed" in st.message
    # a run that had finished stays as its files say it ended, whatever its caller raises after
    done = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.1, "realtime": False, "seed": 3}},
        "model": {"path": "none"}, "output": {"folder": str(tmp_path / "b"), "report": False},
    })
    with pytest.raises(ValueError):
        with build_run(done) as run:
            assert run.wait(120)
            raise ValueError("the caller's own error")
    assert run.status().finish_reason is FinishReason.COMPLETED


def test_a_slow_camera_shows_its_processed_frames_as_it_goes(tmp_path):
    # the live kernel came back after 256 frames: at 50 fps every status line said "proc 0fps"
    # for 5 s while tracking went on
    from app.config import config_from_mapping
    from app.session import build_run

    cfg = config_from_mapping({
        # no cell in view (a camera's test pattern, an empty channel): nothing else brings it back
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.0, "realtime": True, "fps": 50.0, "seed": 3,
                                                         "cells_per_second": 0.01}},
        "model": {"path": "none"}, "autostop": {"seconds": 6.0},
        "output": {"folder": str(tmp_path), "report": False},
    })
    with build_run(cfg) as run:
        deadline = time.monotonic() + 60
        while run.status().frames_in < 64 + 40 and time.monotonic() < deadline:  # estimate + 0.8 s
            time.sleep(0.05)
        time.sleep(0.5)
        st = run.status()
        assert st.finish_reason is None and st.frames_processed > 0, st.line()
        run.stop()
        assert run.wait(60)


def test_a_pixel_size_given_over_the_cameras_own_is_said(tmp_path, caplog):
    import logging

    from app.config import config_from_mapping
    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "pixel_size_um": 0.4,
                   "synthetic": {"duration_s": 0.1, "realtime": False, "seed": 3, "pixel_size_um": 0.5}},
        "model": {"path": "none"}, "output": {"folder": str(tmp_path), "report": False},
    })
    with caplog.at_level(logging.WARNING, logger="app"):
        run = build_run(cfg)
    run.close()
    assert "0.4 µm/px (camera.pixel_size_um) is used, not the 0.5 µm/px the synthetic camera reports" in caplog.text


def test_empty_files_of_runs_that_died_while_starting_are_removed_by_the_next_run(tmp_path):
    # a process killed while its camera opened left the empty file that reserved its name: dclab
    # could not open it, and it counted as a run of the day
    import os
    import time as _time

    from app.config import config_from_mapping
    from app.session import STALE_RESERVATION_S, build_run

    folder = tmp_path / "out"
    folder.mkdir()
    day = _time.strftime("%Y%m%d")
    old = _time.time() - STALE_RESERVATION_S - 60
    stale = [folder / f"s_{day}-101010.rtdc", folder / f"s_{day}-101010_raw.rtdc", folder / f"s_{day}-101011_2.rtdc"]
    kept = [folder / f"s_{day}-101012.rtdc",  # just reserved by a run that is starting
            folder / "mine.rtdc",  # not a run's name
            folder / f"s_{day}-101013.rtdc"]  # not empty
    for p in stale + kept:
        p.write_bytes(b"x" if p is kept[2] else b"")
        if p is not kept[0]:
            os.utime(p, (old, old))
    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.1, "realtime": False, "seed": 3}},
        "model": {"path": "none"},
        "output": {"folder": str(folder), "report": False, "sample": "s"},
    })
    with build_run(cfg) as run:
        assert run.wait(120)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    import dclab

    with dclab.new_dataset(run.events_path) as ds:
        # the run index of the day counts the runs that wrote a file (the unreadable stale ones went)
        assert ds.config["experiment"]["run index"] == 3


def test_the_channel_geometry_the_tracker_used_is_in_the_event_files_log(tmp_path):
    # every measurement rests on it; a wrong detection was seen nowhere (neither log nor file)
    import re

    import dclab

    from app.config import config_from_mapping
    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.1, "realtime": False, "seed": 3}},
        "model": {"path": "none"},
        "tracking": {"geometry": {"channel_top_um": 8.0}},
        "output": {"folder": str(tmp_path), "report": False},
    })
    with build_run(cfg) as run:
        assert run.wait(120)
    with dclab.new_dataset(run.events_path) as ds:
        text = " ".join("".join(ds.logs[name]) for name in ds.logs)  # long lines are wrapped at 100 bytes
    m = re.search(r"channel geometry \(constriction_start_um, constriction_end_um, channel_bottom_um detected from the "
                  r"background\): constriction ([\d.]+)-([\d.]+) µm .*walls at 8\.0 and", text)
    assert m, text
    assert float(m[1]) == pytest.approx(44.0, abs=0.5) and float(m[2]) == pytest.approx(84.0, abs=0.5)


def test_a_gap_in_a_realtime_replays_times_is_said_as_such(tmp_path, monkeypatch, caplog):
    # the warning asked whether camera.replay.trigger (no such setting) was waiting for a trigger
    import logging
    import re

    import h5py

    import app.pipeline as pipeline
    from acquisition.synthetic import SyntheticSettings
    from app.config import config_from_mapping
    from app.session import build_run
    from app.simdata import record_simulation

    rec = tmp_path / "rec.rtdc"
    record_simulation(SyntheticSettings(duration_s=0.05, seed=4, fps=4000.0), rec)
    with h5py.File(rec, "a") as f:
        t = f["events/time"][:]
        t[150:] += 1.5
        f["events/time"][:] = t
    monkeypatch.setattr(pipeline, "NO_FRAME_WARN_S", 0.5)
    cfg = config_from_mapping({
        "camera": {"backend": "replay", "replay": {"path": str(rec), "realtime": True}},
        "model": {"path": "none"}, "output": {"folder": str(tmp_path / "out"), "report": False},
    })
    with caplog.at_level(logging.WARNING, logger="app.pipeline"):
        with build_run(cfg) as run:
            assert run.wait(60)
    assert re.search(r"no frame from the replay for \d s: its next frame is timed later than the last", caplog.text)
    assert "camera.replay.trigger" not in caplog.text and run.status().frames_in == 200


def _turn_the_lamp(tmp_path, lamp, done):
    """A live synthetic run whose lamp is turned to ``lamp`` after 2,000 frames, stopped once
    ``done(status lines since)`` holds (90 s at most); its status lines and its file's log."""
    import dclab

    from app.config import config_from_mapping
    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.0, "realtime": True, "seed": 3,
                                                         "cells_per_second": 20.0}},
        "model": {"path": "none"}, "autostop": {"seconds": 30.0},
        "output": {"folder": str(tmp_path), "report": False},
    })
    lines = []
    with build_run(cfg) as run:
        deadline = time.monotonic() + 90
        while run.status().frames_processed < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "light changed" not in run.status().line()
        run.pipeline.camera.apply({"lamp": lamp})
        n = run.status().frames_processed
        while time.monotonic() < deadline and not done(lines, run.status().frames_processed - n):
            lines.append(run.status().line())
            time.sleep(0.02)
        run.stop()
        assert run.wait(60)
    with dclab.new_dataset(run.events_path) as ds:
        return lines, " ".join("".join(ds.logs[name]) for name in ds.logs)  # lines wrapped at 100 bytes


def test_a_lamp_turned_down_mid_run_is_said_on_the_status_line_and_in_the_file(tmp_path):
    # beyond the 0.5-2x the flicker correction follows, no whole cell is found until the
    # background relearns (2,048 frames): the live path says so where the operator looks
    lines, text = _turn_the_lamp(tmp_path, 0.4, lambda lines, _: any("light changed" in x for x in lines))
    said = [x for x in lines if "light changed" in x]
    assert said and "light changed x0.40 (background relearning)" in said[0], lines[-3:]
    assert "the light changed: frame" in text and "0.40× as bright as the background" in text, text
    assert "overexposed" not in text


def test_a_lamp_turned_up_into_saturation_mid_run_is_said_in_the_file(tmp_path):
    # the light fitted to saturated frames stays within the flicker correction's range: no cell
    # was found, and nothing said why. Said once over two looks (every 4,096 frames)
    _, text = _turn_the_lamp(tmp_path, 2.5, lambda _, frames: frames >= 10000)
    assert text.count("at the camera's top grey level (overexposed: the lamp") == 1, text


def test_a_blocked_constriction_is_said_on_the_status_line_and_in_the_file(tmp_path):
    # the live path (track_live) looks for it too: a clog read "0 cells/s" with nothing said
    import dclab

    from app.config import config_from_mapping
    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {
            "duration_s": 1.5, "realtime": True, "seed": 4, "cells_per_second": 20.0, "debris_per_second": 0.0,
            "doublet_fraction": 0.0, "stuck_fraction": 0.5, "stuck_ms": [600.0, 600.0]}},
        "model": {"path": "none"},
        "output": {"folder": str(tmp_path), "report": False},
    })
    lines = []
    with build_run(cfg) as run:
        deadline = time.monotonic() + 90
        while not run.wait(0.02) and time.monotonic() < deadline:
            lines.append(run.status().line())
    blocked = [x for x in lines if "CONSTRICTION BLOCKED" in x]
    assert blocked and any(x not in blocked for x in lines[lines.index(blocked[0]):]), lines  # ... and cleared
    with dclab.new_dataset(run.events_path) as ds:
        text = " ".join("".join(ds.logs[name]) for name in ds.logs)  # lines wrapped at 100 bytes
    assert "the constriction looks blocked" in text and "pass the constriction again" in text, text


def test_each_pulse_in_the_appended_pulse_log_names_its_run(tmp_path):
    # pulses.csv is appended run after run and no row said which run it came from
    import h5py

    from app.config import bundled_model_path, config_from_mapping
    from app.session import build_run

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    pulses = tmp_path / "pulses.csv"
    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.6, "realtime": True, "seed": 4,
                                                          "cells_per_second": 80.0}},
        "trigger": {"backend": "log", "log": {"path": str(pulses)}},
        "output": {"folder": str(tmp_path / "out"), "sample": "s", "report": False, "writer": "thread"}})
    files = []
    for _ in range(2):
        with build_run(cfg) as run:
            assert run.wait(120)
        files.append(run.events_path)
    rows = [line.split("\t") for line in pulses.read_text().splitlines()[1:]]
    assert files[0] != files[1]
    for path in files:
        with h5py.File(path, "r") as h5:
            ident = h5.attrs["experiment:run identifier"]
            ok = h5["mimlsort/events/fire_ok"][:] == 1
            scheduled = set(h5["mimlsort/events/fire_scheduled_ns"][:][ok].tolist())
        mine = {int(r[1]) for r in rows if r[5:] == [path.stem, ident]}
        assert scheduled and mine == scheduled, (path.name, len(mine), len(scheduled))


def test_a_second_wait_returns_once_the_first_has_finished_the_run():
    # the first wait() to see the threads end closes the camera and calls on_finish (a Run's
    # close: its files); a second one, from another thread, returned True at once, with the files
    # still open (the GUI's window closed during a Stop reported on them)
    import threading

    finished = threading.Event()

    def slow_finish(_p):
        time.sleep(0.4)
        finished.set()

    p = Pipeline(SyntheticCamera(replace(FAST, duration_s=0.1)), sink=ListSink(), on_finish=slow_finish)
    p.start()
    first = threading.Thread(target=p.wait)
    first.start()
    deadline = time.monotonic() + 60
    while not p.finished and time.monotonic() < deadline:
        time.sleep(0.001)
    assert p.finished and not finished.is_set()
    assert not p.wait(0.05)  # still finishing: not finished for this caller within its timeout
    assert p.wait(10) and finished.is_set()
    first.join(10)


def test_a_second_close_of_a_run_returns_once_its_files_are_closed(tmp_path, monkeypatch):
    # Run.close from a second thread returned at once while the first was still closing the files
    import threading

    from app.config import config_from_mapping
    from app.session import build_run
    from app.storage import EventWriter

    closing, real_close = threading.Event(), EventWriter.close

    def slow_close(self):
        closing.set()
        time.sleep(0.4)
        return real_close(self)

    monkeypatch.setattr(EventWriter, "close", slow_close)  # the real writer, slow to close (a slow disk)
    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.1, "realtime": False, "seed": 11}},
        "model": {"path": "none"},
        "output": {"folder": str(tmp_path), "writer": "thread", "report": False},
    })
    run = build_run(cfg)
    run.pipeline.on_finish = None  # closed below, from two threads, once the run has ended
    run.start()
    assert run.wait(60)
    first = threading.Thread(target=run.close)
    first.start()
    assert closing.wait(30)
    run.close()
    assert run.closed_all
    first.join(10)
