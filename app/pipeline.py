"""The live pipeline: camera → ring → tracker → classifier → sort policy → trigger, storage beside.

Threads, one owner each:

* ``camera`` grabs straight into the :class:`~acquisition.frame.FrameRing` and never waits on anyone;
* ``sort`` reads the ring in batches and tracks; while it keeps up it also classifies the cells
  that finished, decides and fires (a thread hop costs a wake-up); once it falls behind, the cells go to
* ``decide``, which classifies, decides and fires (the model call releases the GIL, so tracking
  goes on meanwhile). Either hands the records to storage through a queue (records are small and
  never dropped; the sort path never waits on storage);
* ``storage`` hands records to the sink (the ``.rtdc`` event writer) — it may lag, the sort path
  does not notice;
* ``recorder`` (optional) writes raw frames; it may fall behind, its ``missed`` counter says so.

The GUI and status readers take :meth:`Pipeline.status` (an immutable snapshot),
:meth:`Pipeline.recent` (the latest records) and ``ring.newest()`` (preview); none of them touches a
worker's state.

Decision latency is measured from the host arrival of the frame that completed a cell's event (the
frame in which the cell crossed the emission line past the constriction) to the moment the fire
command was handed to the trigger device (or the decision was taken, when nothing is fired).
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import logging
import math
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acquisition.camera import Camera, CameraState
from acquisition.frame import FrameRing
from app.latency import LatencyWindow
from app.records import CellRecord
from app.sorting import Decision, Reason, SortCounters, SortPolicy, coincidence_neighbours
from hardware.timing import MIN_SAMPLES, fire_time_ns
from hardware.trigger import FireRequest
from mimlsort import realtime
from mimlsort.errors import ConfigError, MimlsortError, StateError
from mimlsort.settings import require
from tracking.background import LIGHT_MAX, LIGHT_MIN
from tracking.events import CellEvent
from tracking.geometry import geometry_note
from tracking.tracker import Tracker, TrackerSettings

log = logging.getLogger(__name__)


class _ThreadMuted(logging.Filter):
    """Context manager: ``logger`` drops what this thread logs inside it; other threads' records
    (another run's) pass."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger, self.thread = logger, threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread

    def __enter__(self) -> None:
        self.logger.addFilter(self)

    def __exit__(self, *exc) -> None:
        self.logger.removeFilter(self)


class RunState(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"


class FinishReason(enum.Enum):
    COMPLETED = "completed"  # the source ended or an auto-stop limit was reached
    CANCELED = "canceled"  # stopped by the operator / a signal
    ERRORED = "errored"  # a worker failed; see the message


#: autostop.events' upper end: a year at 30,000 cells/s
MAX_EVENTS = 10**12


@dataclass(frozen=True, slots=True)
class AutoStop:
    events: int = 0  # stop after this many cells (0: no limit; at most 10**12)
    seconds: float = 0.0  # stop after this many seconds of measurement time (0: no limit): the frames' own times (the camera's clock; a replay's recorded times, at any speed; a simulation's), not the host's

    def __post_init__(self):
        # the file keeps it as dclab's "online_filter:target event count": 10**30 (no 64-bit
        # integer) stopped the event file's creation with a TypeError
        require(0 <= self.events <= MAX_EVENTS, "events", f"must be in [0, {MAX_EVENTS}] (0: no limit), got {self.events}")
        require(0 <= self.seconds < math.inf, "seconds", f"must be finite and >= 0 (0: no limit), got {self.seconds}")


def clock_name(backend: str, camera_clock: bool) -> str:
    """What a source's frame times are, as the auto-stop's messages say it."""
    if backend == "replay":
        return "the recording's frame times"
    if backend == "synthetic":
        return "the simulation's frame times"
    return "the camera's clock" if camera_clock else "the frames' host arrival times (the camera has no clock)"


class MeasurementClock:
    """How long a run has measured, by its frames' own times: ``autostop.seconds`` counts this.

    The host's clock made a replay read as fast as it goes stop after N seconds of processing,
    wherever in the recording that was (and elsewhere on a faster host). The steps from frame to
    frame are summed, so a camera clock that steps back mid-run adds nothing instead of holding
    the stop off by the step."""

    def __init__(self, ring):
        self._ring = ring
        self._seen = ring.written  # frames before the run's first (none, as the run starts)
        self._last = -1  # timestamp of the last frame counted; -1: none yet
        self.ns = 0

    def advance(self) -> float:
        """Count the frames written since the last call; returns the measurement time in s."""
        ring = self._ring
        end = ring.written
        if end > self._seen:
            stamps = ring.timestamps_ns[np.arange(self._seen, end) % ring.capacity]
            if self._last < 0:
                self._last = int(stamps[0])
            steps = np.diff(stamps, prepend=self._last)
            self.ns += int(steps[steps > 0].sum())
            self._last = int(stamps[-1])
            self._seen = end
        return self.ns / 1e9

    def advance_if_due(self, most_per_call: int) -> None:
        """:meth:`advance` once enough frames have come that the next call, ``most_per_call``
        frames later, could find the oldest of them overwritten: a few calls a second rather than
        one per grab (~10 µs of Python each, beside the sort path)."""
        if self._ring.written - self._seen >= max(0, self._ring.capacity - most_per_call) // 2:
            self.advance()


@dataclass(frozen=True, slots=True)
class Status:
    """An immutable snapshot of a run, cheap to take at any time."""

    state: RunState
    finish_reason: FinishReason | None
    message: str
    elapsed_s: float
    frames_in: int
    fps_in: float
    frames_processed: int
    fps_processed: float
    missed: dict[str, int]  # per ring reader: frames skipped because it fell behind
    overrun: dict[str, int]
    camera_dropped: int  # frame-id gaps and skipped images the camera reported
    failed_buffers: int
    cells: int
    cells_per_s: float
    class_counts: dict[str, int]
    fired: int
    not_fired: dict[str, int]
    late: int
    trigger_failed: int
    purity_estimate: float
    recovery_estimate: float
    latency_p50_us: float
    latency_p99_us: float
    latency_max_us: float
    storage_queue: int
    file_bytes: int
    frames_recorded: int
    trigger_ok: bool
    errors: tuple[str, ...] = ()
    startup_frames: int = 0  # live runs: frames that went into the background estimate, not tracked
    camera_reconnects: int = 0  # times the camera was lost and reopened mid-run
    # CPU per worker thread and child process (the event writer's, the recorder's): seconds used
    # so far, and cores used lately — which stage takes the machine when decisions come late
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_cores: dict[str, float] = field(default_factory=dict)
    # decision latency timed from the frame in which the cell left the constriction, rather than
    # from the one that completed its event (emit_after_exit_um further on, where DIR is known)
    latency_from_exit_p50_us: float = math.nan
    latency_from_exit_p99_us: float = math.nan
    decide_queue: int = 0  # batches of cells waiting for the decide thread (at most DECIDE_BACKLOG)
    decide_waits: int = 0  # times tracking waited for the decisions (more cells than the CPU can decide)
    storage_backlog_mb: float = 0.0  # memory held by records not yet handed to the event file
    images_shed: int = 0  # cells recorded without their ROI image because the event file fell behind
    # cells the tracker saw but never reported: tracks that ended before the constriction (cells
    # lost upstream, and specks seen for a frame or two), blobs it had no free track for
    # (tracking.max_tracks), events whose ROI image the ring had already overwritten
    tracks_lost: int = 0
    tracks_overflow: int = 0
    snapshots_lost: int = 0
    paces_unlearned: int = 0  # cells timed with their own speed just past the exit (the run's first, or a short ROI)
    clock_resets: int = 0  # times the camera clock went back or stepped forward mid-run (its host map restarted)
    # what the trigger device said after pulses were handed over (fired counts those handed over)
    device_refused: int = 0  # pulses it did not output (queue full, not armed, counter busy)
    device_late: int = 0  # pulses it output later than its own tolerance
    unacked: int = 0  # pulses whose ack never came
    late_acks: int = 0  # acks that came after their pulse was counted unacked (counted acked then)
    device_errors: int = 0  # errors the device reported (a VISA instrument's queue is read after the last pulse)
    # the operator's test pulses during the run (GUI Test fire), kept out of the cells' figures above:
    # handed over, and of those acked, unacked and refused by the device
    test_pulses: int = 0
    test_acked: int = 0
    test_unacked: int = 0
    test_refused: int = 0
    # the sorted set (the outlet): fired cells and cells swept along within a fired cell's
    # coincidence window (yield mode fires into coincidences); estimates from the probabilities
    swept: int = 0
    sorted_purity_estimate: float = math.nan
    sorted_recovery_estimate: float = math.nan
    # the light lately (tracking.Tracker.light): the last frame's gain against the background's
    # and the mean |gain - its running mean| over ~256 frames, lamp flicker the operator otherwise
    # sees nowhere
    light_gain: float = math.nan
    light_flicker: float = math.nan
    # seconds the constriction has been blocked (an object stood still in it; Tracker.blocked_s),
    # NaN while cells pass: a clog read "0 cells/s", as an empty sample does
    blocked_s: float = math.nan
    # measurement time, by the frames' own clock (named here): a replay's recorded time, not the
    # host's, which autostop.seconds counts and the event file states as the run's duration; NaN
    # for a live camera without an auto-stop duration
    measured_s: float = math.nan
    autostop_s: float = 0.0
    autostop_clock: str = ""

    @property
    def frames_missed(self) -> int:
        return sum(self.missed.values()) + sum(self.overrun.values())

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            if isinstance(v, enum.Enum):
                v = v.value
            elif isinstance(v, float) and not math.isfinite(v):
                v = None
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        # the figure the status line, the GUI and the event file's counters call "missed" (skipped
        # plus overrun): the per-reader tables alone made a client count fewer than the line said
        out["frames_missed"] = self.frames_missed
        return out

    def line(self) -> str:
        """One status line for logs and the daemon's console."""
        cls = " ".join(f"{k}={v}" for k, v in sorted(self.class_counts.items()))
        lat = f"{self.latency_p50_us:.0f}/{self.latency_p99_us:.0f}us" if self.latency_p50_us == self.latency_p50_us else "-"
        if self.latency_from_exit_p50_us == self.latency_from_exit_p50_us:
            lat += f" (from exit {self.latency_from_exit_p50_us:.0f}/{self.latency_from_exit_p99_us:.0f}us)"
        return (f"{self.state.value} {self.elapsed_s:6.1f}s in {self.fps_in:7.0f}fps proc {self.fps_processed:7.0f}fps "
                f"missed {self.frames_missed} camdrop {self.camera_dropped} cells {self.cells} ({self.cells_per_s:.0f}/s) "
                f"{cls} fired {self.fired} late {self.late} lat p50/p99 {lat} queue {self.storage_queue} "
                + (f"camera reconnects {self.camera_reconnects} " if self.camera_reconnects else "")
                + ("" if self.trigger_ok else "TRIGGER FAULT ")
                + (f"device errors {self.device_errors} " if self.device_errors else "")
                + (f"device refused {self.device_refused} " if self.device_refused else "")
                + (f"device late {self.device_late} " if self.device_late else "")
                + (f"unacked {self.unacked} " if self.unacked else "")
                + (f"test pulses {self.test_pulses} " if self.test_pulses else "")
                + (f"decide queue {self.decide_queue} waits {self.decide_waits} " if self.decide_waits else "")
                + (f"images shed {self.images_shed} (backlog {self.storage_backlog_mb:.0f}MB) " if self.images_shed else "")
                + (f"untracked {self.tracks_overflow} " if self.tracks_overflow else "")
                + (f"CONSTRICTION BLOCKED {self.blocked_s:.1f}s " if self.blocked_s == self.blocked_s else "")
                + (f"measured {self.measured_s:.1f}/{self.autostop_s:g}s " if self.autostop_s else "")
                + (f"light changed x{self.light_gain:.2f} (background relearning) "
                   if not LIGHT_MIN < self.light_gain < LIGHT_MAX and self.light_gain == self.light_gain else
                   f"lamp flicker {100 * self.light_flicker:.1f}% (light x{self.light_gain:.3f}) "
                   if self.light_flicker >= FLICKER_SHOWN else "")
                + (f"est. purity {self.purity_estimate:.3f} recovery {self.recovery_estimate:.3f} "
                   if self.fired and self.purity_estimate == self.purity_estimate else "")
                + (f"swept {self.swept} (outlet est. purity {self.sorted_purity_estimate:.3f}) "
                   if self.swept and self.sorted_purity_estimate == self.sorted_purity_estimate else "")
                + f"file {self.file_bytes / 1e6:.1f}MB"
                + ("" if not self.cpu_cores else " cpu " + " ".join(f"{k}={v:.2f}" for k, v in self.cpu_cores.items())))


def operator_pulse_line(rec: Any, t_start_s: float = 0.0) -> str:
    """The run log's lines on a test pulse fired during the run (a :class:`FireRecord`): it sorted
    whatever was at the junction when it went out, which the file must say, and when. The first
    line fits the file's log lines (100 bytes): a reader finds it by its start."""
    if not rec.ok:
        return f"operator's test pulse {rec.event_index} not sent:\n{rec.error}"
    t = f" at t={rec.sent_ns / 1e9 - t_start_s:.3f} s" if t_start_s else ""
    return (f"operator's test pulse {rec.event_index}{t}: due at host {rec.scheduled_ns} ns, {rec.width_us:g} µs\n"
            "(on the clock of fire_scheduled_ns; it sorted whatever was at the junction then)")


#: the status line names lamp flicker from this mean |gain - its mean| on (the simulator's 2% flicker
#: reads 0.009, a steady lamp 0.0003)
FLICKER_SHOWN = 0.005


@dataclass
class _Rate:
    """Rate over the last few samples of (time, count)."""

    samples: deque = field(default_factory=lambda: deque(maxlen=8))

    def update(self, now: float, count: int) -> float:
        if not self.samples or now - self.samples[-1][0] > 0.05:
            self.samples.append((now, count))
        (t0, c0), (t1, c1) = self.samples[0], (now, count)
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


#: the GIL switch interval while a pipeline runs (seconds; None leaves Python's 5 ms)
SWITCH_INTERVAL_S = 2e-4
#: live runs: frames the tracking kernel takes before it returns to Python (status counters, clock fit)
LIVE_MAX_FRAMES = 256
#: ... but at most this long at the camera's frame rate: at 50 fps, 256 frames were 5 s in which
#: the status said "proc 0fps" while tracking went on
LIVE_MAX_SECONDS = 0.25
#: live runs: how often the tracking kernel looks for the next frame (s)
LIVE_POLL_S = 20e-6
#: timer slack of the run's threads (ns)
TIMER_SLACK_NS = 1000
#: decide="auto": frames the tracking thread may have unread and still classify cells itself
INLINE_MAX_PENDING = 16
#: batches of cells the decide thread may have waiting. Beyond that the tracking thread waits for
#: it: frames then queue in the ring and, past its capacity, are lost and counted. So when more
#: cells come than the CPU can decide, memory and the decisions' lateness stay bounded (the queue
#: grew without end, each cell holding its snapshot, and every decision came later than the last)
DECIDE_BACKLOG = 64
#: memory (MiB) the records waiting for the event file may hold by default (``output.max_backlog_mb``).
#: Past half of it, cells are recorded without their ROI image (~90 kB each: frame, background,
#: mask); at the limit the run stops with an error. A writer that falls behind for good (a slow or
#: network disk) would otherwise grow the process until the OS kills it and the run with it
MAX_BACKLOG_MB = 1024.0
#: how often the storage thread lets the trigger poll its device during a run (its error queue;
#: a clock-mode serial device's clock sync while no cell is fired)
TRIGGER_POLL_S = 0.25
NO_FRAME_WARN_S = 5.0  # a live camera that sends no frame for this long is said to the operator
#: a live camera that sends no frame for this long: its time still counts towards autostop.seconds
NO_FRAME_COUNTS_S = 1.0
_RECORD_OVERHEAD = 2048  # bytes a record holds besides its arrays (features, decision, objects)
_GRAB_RUN = 64  # frames a camera may grab per call (those that can, without the GIL; each is published at once)
_LOSSLESS_BACKLOG = 64  # record batches the decide thread of a lossless run lets storage lag behind


def _check_lossless_ring(ring, s: TrackerSettings) -> None:
    """A lossless run's camera waits for the tracker, which waits for whole batches: a ring that
    cannot hold a batch (or the background estimate's frames) beside the guard would stall both."""
    most = ring.capacity - ring.guard - 2
    need = max(s.batch_frames, s.background_frames)
    if most < need:
        raise ConfigError("camera.ring_capacity",
                          f"{ring.capacity} frames cannot hold a batch of {need} (tracking.batch_frames "
                          f"{s.batch_frames}, tracking.background_frames {s.background_frames}) beside its guard of "
                          f"{ring.guard}: a replay at full speed would stall; set it to at least "
                          f"{2 * need + ring.guard + 2}")
    if most - s.batch_frames < 128:
        log.warning("camera.ring_capacity %d leaves %d frames behind a batch of tracking.batch_frames %d: a cell's "
                    "event image from further back is not kept", ring.capacity, max(0, most - s.batch_frames),
                    s.batch_frames)


#: slots this close to being overwritten by the camera are not read back (it may be writing them)
_LAP_MARGIN = 64


def intact_range(ring, seq0: int, n: int, margin: int = _LAP_MARGIN) -> tuple[int, int]:
    """The sequence numbers ``[lo, hi)`` of frames ``seq0 .. seq0 + n`` whose ring slots the camera
    has not overwritten since (nor is about to): the frames after ``written - capacity + margin``."""
    lo = max(seq0, ring.written - ring.capacity + margin)
    return lo, max(lo, seq0 + n)


def _record_bytes(rec: CellRecord) -> int:
    """Memory a record holds while it waits for the event file (its arrays dominate)."""
    ev = rec.event
    n = _RECORD_OVERHEAD + ev.first_crop.nbytes + ev.last_crop.nbytes
    snap = ev.snapshot
    if snap is not None:
        n += snap.image.nbytes + snap.background.nbytes + snap.mask.nbytes
    return n


def _without_snapshot(rec: CellRecord) -> CellRecord:
    ev = rec.event
    if ev.snapshot is None:
        return rec
    return dataclasses.replace(rec, event=dataclasses.replace(ev, snapshot=None))



def _check_ring_memory(capacity: int, info) -> None:
    """Refuse a frame ring that would take more than half the memory available now (a large ROI
    times ``camera.ring_capacity``): the allocation would push the machine into swap or the OOM
    killer mid-run, with the camera, the writer and the operator's desktop beside it."""
    need = capacity * info.height * info.width * np.dtype(info.dtype).itemsize
    avail = realtime.memory_available()
    if avail and need > avail // 2:
        raise ConfigError("camera.ring_capacity", f"{capacity} frames of {info.width}x{info.height} {info.dtype} "
                                                  f"need {need / 2**30:.1f} GiB, more than half of the {avail / 2**30:.1f} GiB "
                                                  f"of memory available: lower ring_capacity or the ROI")

class Pipeline:
    """One run. Build it, ``start()``, then ``stop()``/``wait()``; or use it as a context manager.

    ``classifier`` needs ``classes`` and ``classify(events) -> float32[N, K]``; ``trigger`` is a
    :class:`hardware.trigger.Trigger` (``fire(FireRequest) -> FireRecord``, ``drain_acks()``);
    ``timing`` a :class:`hardware.timing.TimingSettings`; ``sink`` gets lists of
    :class:`~app.records.CellRecord` on the storage thread (``sink.write``; optional ``sink.add_acks``,
    ``sink.log``, ``sink.bytes_written``). ``recorder`` is a raw-frame recorder with
    ``write_from_ring(reader, n)``. Each of them may be ``None``.
    """

    def __init__(self, camera: Camera, tracker_settings: TrackerSettings | None = None, *, classifier=None,
                 policy: SortPolicy | None = None, trigger=None, timing=None, sink=None, recorder=None,
                 autostop: AutoStop = AutoStop(), ring_capacity: int = 4096, pixel_size_um: float | None = None,
                 kernels: str = "numba", recent_capacity: int = 4096, tracker: Tracker | None = None,
                 lossless: bool = False, on_finish: Callable[["Pipeline"], None] | None = None,
                 switch_interval_s: float | None = SWITCH_INTERVAL_S, decide_thread: bool | str = "auto",
                 freeze_gc: bool = True, max_backlog_mb: float = MAX_BACKLOG_MB):
        self.camera = camera
        self.tracker_settings = tracker_settings or (tracker.settings if tracker else TrackerSettings())
        self.classifier = classifier
        self.policy = policy
        self.trigger = trigger
        self.timing = timing
        self.sink = sink
        self.recorder = recorder
        self.autostop = autostop
        self.ring_capacity = ring_capacity
        self.pixel_size_um = pixel_size_um
        self.kernels = kernels
        self.lossless = lossless
        self.on_finish = on_finish
        self.switch_interval_s = switch_interval_s
        self.freeze_gc = freeze_gc
        if not max_backlog_mb >= 0:
            raise StateError(f"max_backlog_mb must be >= 0 (0: unbounded), got {max_backlog_mb}")
        self.max_backlog_bytes = int(max_backlog_mb * 2**20)
        # Where cells are classified and decided. "auto" (default): on the tracking thread while it
        # keeps up — a hop to another thread costs a wake-up (0.2–0.4 ms at p50 on this 2-core VM,
        # where an idle vCPU is woken through the hypervisor) — and on the decide thread once it
        # falls behind (> INLINE_MAX_PENDING frames unread) or cells are already queued there, so
        # tracking goes on while a burst is classified. True: always the decide thread; False: never.
        if decide_thread not in (True, False, "auto"):
            raise StateError(f"decide_thread must be True, False or 'auto', got {decide_thread!r}")
        self.decide_thread = decide_thread
        self._handle_lock = threading.Lock()  # _handle runs on one thread at a time, in cell order
        self._n_queued = 0  # batches of cells handed to the decide thread
        self._n_decided = 0  # of those, decided
        self._decide_waits = 0  # times the tracking thread waited for room in the decide queue
        self._bytes_queued = 0  # of records put for storage (written under _handle_lock)
        self._bytes_stored = 0  # of those, handed to the sink (written by the storage thread only)
        self._images_shed = 0
        self._shed_noted = 0  # images shed when the storage thread last wrote so into the file's log
        self._file_notes: deque = deque()  # lines for the event file's log, written by the storage thread
        # (policy, generation of its target classes), swapped as one: the deciding thread restarts
        # the estimates when the generation changes, with the policy it came with
        self._policy_gen: tuple = (policy, 0)
        self._estimates_gen = 0
        self._old_switch: float | None = None
        self.state = RunState.IDLE
        self.finish_reason: FinishReason | None = None
        self.message = ""
        self.ring: FrameRing | None = None
        self.tracker: Tracker | None = tracker
        self._stop = threading.Event()
        self._halt = np.zeros(1, np.int64)  # set with _stop and when the camera is done: the live kernel stops waiting
        self._camera_done = threading.Event()
        self._storage_done = threading.Event()
        # set once the first wait() to see the run end has closed the camera and called on_finish:
        # a second caller returned True before that (the run's files still open)
        self._finish_done = threading.Event()
        self._finishing_thread = 0
        self._threads: list[threading.Thread] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # records, to storage
        self._decide_q: queue.SimpleQueue = queue.SimpleQueue()  # finished cells, to the decide thread
        self._lock = threading.Lock()
        self._t_start = 0.0
        self._measured: MeasurementClock | None = None  # the camera thread's, once it runs
        self._t_end = 0.0
        self._frames_processed = 0
        self._live_max_frames = LIVE_MAX_FRAMES
        self._cells = 0
        self._latencies = LatencyWindow(8192)
        self._latencies_exit = LatencyWindow(8192)  # the same decisions, from the cell's exit frame
        self._late = 0
        self._trigger_failed = 0
        self._refused = 0
        self._trigger_ok = True
        self._counters = SortCounters(tuple(classifier.classes) if classifier else ())
        self._neighbours: deque = deque(maxlen=256)  # (exit_time_ms, is_target) of decided cells
        self._recent: deque = deque(maxlen=recent_capacity)
        self._next_trigger_poll = 0.0
        self._rate_in = _Rate()
        self._rate_proc = _Rate()
        self._rate_cells = _Rate()
        self._tids: dict[str, int] = {}  # worker -> native thread id
        self._cpu_final: dict[str, float] = {}  # worker -> CPU seconds when it ended
        self._cpu_children: dict[str, float] = {}  # child process -> CPU seconds when last read
        # child process -> CPU seconds it had used when the run started (its imports and file
        # creation): a short run's cores were its startup divided by a second or less
        self._cpu_child_base: dict[str, float] = {}
        self._cpu_rates: dict[str, _Rate] = {}
        self._errors: list[str] = []
        self._frames_recorded = 0
        self._startup_skipped = 0  # live runs: frames of the background estimate, not tracked
        self._sort_hold = 0  # oldest ring sequence number the sort thread may still read
        self._hold_lag = 0  # lossless runs: frames before the sort reader's that stay readable (event images)
        self._clock = None  # camera clock -> host clock fit, for cameras with their own clock
        self._clock_rate = 1.0  # its rate (host ns per camera ns), copied by the sort thread after each fit

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.state is not RunState.IDLE:
            raise StateError(f"pipeline is {self.state.value}; a pipeline runs once")
        self.state = RunState.STARTING
        try:
            if self.camera.state is CameraState.CLOSED:
                self.camera.open()
            info = self.camera.info
            _check_ring_memory(self.ring_capacity, info)
            self.ring = info.make_ring(self.ring_capacity,
                                       shared=bool(getattr(self.recorder, "needs_shared_ring", False)))
            self.ring.camera_clock = info.camera_clock
            delivered = info.fps / info.clock_rate if info.clock_rate > 0 else info.fps  # a paced replay at its speed
            self._live_max_frames = (LIVE_MAX_FRAMES if not delivered > 0 else
                                     int(min(LIVE_MAX_FRAMES, max(1, delivered * LIVE_MAX_SECONDS))))
            if self.lossless:
                _check_lossless_ring(self.ring, self.tracker_settings)
            if info.camera_clock and info.clock_rate > 0:  # an unpaced source's clock maps to nothing
                from hardware.timing import ClockMap

                self._clock = ClockMap(nominal_rate=info.clock_rate)
                self._clock_rate = info.clock_rate
                ClockMap.warm_up()
            self._sort_reader = self.ring.reader("sort")
            self._rec_reader = self.ring.reader("recorder") if self.recorder is not None else None
            if self.tracker is None and self.kernels == "numba":
                self._warm_up(info.height, info.width, np.dtype(info.dtype))
            self._latencies.warm()  # the status's percentiles: loading the kernel holds the GIL
            if self.freeze_gc:
                # what exists now (modules, model, numba, caches) stays out of every collection of
                # the run: a full collection traversed all of it, 60 ms with the GIL held (and
                # every decision waiting); the cells' own short-lived objects are still collected
                gc.collect()
                gc.freeze()
            self.camera.start()
        except BaseException:
            self.state = RunState.FINISHED
            self._finish_done.set()  # nothing more to finish: a wait() returns at once
            self.finish_reason = FinishReason.ERRORED
            if self.freeze_gc:
                gc.unfreeze()  # else every failed start keeps what it built out of the collections
            if self.ring is not None:
                self.ring.unlink_shared()
            self.camera.close()
            raise
        if self.switch_interval_s:
            # a thread waiting for the GIL gets it at the latest after the switch interval (5 ms by
            # default): Python stretches of other threads (event harvest, pickling records for the
            # writer) must not hold a decision that long
            self._old_switch = sys.getswitchinterval()
            sys.setswitchinterval(self.switch_interval_s)
        self._t_start = time.monotonic()
        for name, owner in self._children():
            child = getattr(owner, "child_pid", None)
            base = realtime.cpu_seconds(child) if child else None
            if base is not None:
                self._cpu_child_base[name] = base
        workers = [("camera", self._camera_loop), ("sort", self._sort_loop), ("decide", self._decide_loop),
                   ("storage", self._storage_loop)]
        if self.recorder is not None:
            workers.append(("recorder", self._recorder_loop))
        for name, fn in workers:
            self._threads.append(threading.Thread(target=self._guard, args=(name, fn), name=f"mimlsort-{name}",
                                                  daemon=True))
        self.state = RunState.RUNNING
        for th in self._threads:
            th.start()
        log.info("run started: %s camera, %s%s", self.camera.backend,
                 f"model classes {list(self.classifier.classes)}" if self.classifier else "no model",
                 f"; auto-stop after {self.autostop.seconds:g} s of measurement time ({self._clock_name()})"
                 if self.autostop.seconds else "")

    def _clock_name(self) -> str:
        return clock_name(self.camera.backend, bool(self.ring is not None and self.ring.camera_clock))

    def stop(self, reason: FinishReason = FinishReason.CANCELED, message: str = "") -> bool:
        """Ask every worker to stop at its next batch boundary (idempotent; the first reason wins,
        but a worker that fails while the run stops makes it ERRORED: an auto-stop during the
        background estimate, then a geometry outside the ROI, ended "completed", exit code 0, with
        no frame tracked). Returns whether ``message`` was taken as how the run ends (and logged)."""
        taken = False
        with self._lock:
            first = self.finish_reason
            if first is None or (reason is FinishReason.ERRORED and first is not FinishReason.ERRORED
                                 and self.state is not RunState.FINISHED):  # a finished run's files say how it ended
                self.finish_reason = reason
                self.message = message if first is None else \
                    f"{message} (while stopping: {first.value}{': ' + self.message if self.message else ''})"
                if message:
                    (log.error if reason is FinishReason.ERRORED else log.info)("run stopping: %s", message)
                    taken = True
            if self.state is RunState.RUNNING:
                self.state = RunState.STOPPING
        self._stop.set()
        self._halt[0] = 1
        return taken

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the run has finished; True if it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for th in self._threads:
            th.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if th.is_alive():
                return False
        with self._lock:
            finishing = self.state is RunState.FINISHED
            if not finishing:
                self.state = RunState.FINISHED
                self._finishing_thread = threading.get_ident()
        if finishing:
            if self._finishing_thread == threading.get_ident():  # called from on_finish
                return True
            return self._finish_done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        try:
            self._finish()
        finally:
            self._finish_done.set()
        return True

    def _finish(self) -> None:
        """What the end of a run takes, once: the camera closed, the times, ``on_finish``."""
        self._t_end = time.monotonic()
        if self._old_switch is not None:
            sys.setswitchinterval(self._old_switch)
        if self.freeze_gc:
            gc.unfreeze()
        if self.ring is not None:
            self.ring.unlink_shared()
        try:
            self.camera.close()
        except Exception as e:  # closing must not hide how the run ended
            log.warning("closing the camera failed: %s", e)
        if self.finish_reason is None:
            self.finish_reason = FinishReason.COMPLETED
        if self.on_finish is not None:
            self.on_finish(self)

    @property
    def finished(self) -> bool:
        return self.state is RunState.FINISHED

    def __enter__(self) -> "Pipeline":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.stop(FinishReason.ERRORED, f"{exc_type.__name__}: {exc}")
        else:
            self.stop(FinishReason.CANCELED, "left the context")
        self.wait()

    def _guard(self, name: str, fn: Callable[[], None]) -> None:
        self._tids[name] = threading.get_native_id()
        realtime.name_thread(f"mimlsort-{name}")
        # sleeps and timed waits end on time: Linux's default 50 µs slack would stretch a 20 µs
        # poll of the ring fourfold
        realtime.set_timer_slack_ns(TIMER_SLACK_NS)
        try:
            fn()
        except Exception as e:  # a worker failure ends the run; files are closed readable by their owners
            ours = isinstance(e, MimlsortError)  # says what is wrong: a traceback would bury it
            if not ours:
                log.exception("%s worker failed", name)
            msg = f"{name}: {e}" if ours else f"{name}: {type(e).__name__}: {e}"
            self._errors.append(msg)
            # "run stopping: <name>: …" is the one line of our own errors: a "worker failed" line
            # before it said the same again (a full disk was said five times on stderr); only an
            # error that does not become how the run ends (another worker's came first) needs its own
            if not self.stop(FinishReason.ERRORED, msg) and ours:
                log.error("%s worker failed: %s", name, e)
        finally:
            self._cpu_final[name] = time.thread_time()
            if name == "camera":  # only now: a failed camera must be ERRORED before the sort loop ends
                self._camera_done.set()
                self._halt[0] = 1

    # -- live adjustments (any thread) -----------------------------------------------------------
    def set_policy(self, policy: SortPolicy) -> None:
        """Replace the sort policy; takes effect with the next decided cell. The change goes into
        the run's log (and so its file), and new target classes restart the purity and recovery
        estimates."""
        if self.classifier is not None and tuple(policy.class_names) != tuple(self.classifier.classes):
            raise StateError(f"policy classes {policy.class_names} differ from the model's {self.classifier.classes}")
        old, gen = self._policy_gen
        if old is None or old.settings.target_classes != policy.settings.target_classes:
            gen += 1  # the estimates restart with the first batch this policy decides
        # one assignment: the thread that decides reads policy and generation together (it owns
        # the counters; taking its lock here could hold the GUI while a lossless run waits for storage)
        self._policy_gen = (policy, gen)
        self.policy = policy
        if old is not None and old.settings == policy.settings:
            return
        s = policy.settings
        line = (f"sort policy changed after {self._cells} cells: targets {'+'.join(s.target_classes)}, threshold "
                f"{s.threshold:g}, mode {s.mode}, window {s.window_ms:g} ms"
                + (f" / {s.window_um:g} µm" if s.window_um else "")
                + f", reject {','.join(s.reject_flags) or 'nothing'}, {len(s.range_gates) + len(s.polygon_gates)} gate(s)"
                + ("" if s.enabled else ", sorting off"))
        log.info("%s", line)
        self._file_notes.append(line)

    def recent(self, n: int | None = None) -> list[CellRecord]:
        """The latest decided cells (newest last, without their ROI snapshot), for plots; they
        appear once the storage thread has handed them to the event file."""
        items = list(self._recent)
        return items if n is None else items[-n:]

    def live_tracks(self) -> list[tuple[int, float, float, float, float, float]]:
        """(track id, x, y, a, b, angle) in px/rad of the cells the tracker follows now (overlays)."""
        t = self.tracker
        return t.live_tracks() if t is not None and hasattr(t, "live_tracks") else []

    # -- workers ---------------------------------------------------------------------------------
    def _camera_loop(self) -> None:
        ring, cam = self.ring, self.camera
        measured = self._measured = MeasurementClock(ring)
        live = cam.info.backend not in ("replay", "synthetic")
        try:
            # lossless (finite sources): never lap the sort reader, so every frame is tracked
            limit = ring.capacity - ring.guard - 1
            rec = self._rec_reader
            seen, last_frame, stalled = ring.written, time.monotonic(), False
            reconnects = getattr(cam, "reconnects", 0)
            while not self._stop.is_set():
                if getattr(cam, "reconnects", 0) != reconnects:  # it said so only in the process's log
                    reconnects = cam.reconnects
                    note = (f"the {cam.info.backend} camera was lost and reopened (reconnect {reconnects}) "
                            f"{time.monotonic() - self._t_start:.1f} s into the run: its frames meanwhile were not taken "
                            f"(the last one before came {time.monotonic() - last_frame:.1f} s ago)")
                    log.warning("%s", note)
                    self._file_notes.append(note)
                # a camera waiting for a trigger that never comes (a wrong line, "Software") or one
                # that stalled looked like a run with no cells in the channel: "in 0fps", exit 0
                now = time.monotonic()
                if ring.written != seen:
                    if stalled:
                        log.warning("frames from the %s camera again after %.0f s without", cam.info.backend,
                                    now - last_frame)
                    seen, last_frame, stalled = ring.written, now, False
                elif not stalled and not self.lossless and now - last_frame >= NO_FRAME_WARN_S:
                    stalled = True
                    if cam.info.backend == "replay":  # paced in real time: a gap in the recorded times
                        log.warning("no frame from the replay for %.0f s: its next frame is timed later than the last "
                                    "(a gap in the recording's times is waited out in real time; --max-speed does "
                                    "not wait)", now - last_frame)
                    else:
                        log.warning("no frame from the %s camera for %.0f s: is it waiting for a trigger "
                                    "(camera.%s.trigger) or stalled?", cam.info.backend, now - last_frame,
                                    cam.info.backend)
                room = _GRAB_RUN
                if self.lossless:
                    while True:
                        room = limit - (ring.written - min(self._sort_hold, rec.cursor if rec is not None else ring.written))
                        if room > 0 or self._stop.is_set():
                            break
                        time.sleep(50e-6)
                    room = min(room, _GRAB_RUN)
                if not cam.grab_many_into(ring, room, timeout_s=0.2) and cam.exhausted:
                    break
                if not live and not self.autostop.seconds:
                    # a recording's or simulation's own duration, which the event file states: a
                    # replay as fast as it goes took less time than it holds (a live camera's time
                    # is the host's; counting there would cost the camera thread for nothing)
                    measured.advance_if_due(_GRAB_RUN)
                elif self.autostop.seconds:
                    # a live camera's time goes on when it sends nothing (a stall, a trigger that
                    # never comes): counted, or an unattended run on it never stopped
                    idle = time.monotonic() - last_frame if live else 0.0
                    idle = idle if idle >= NO_FRAME_COUNTS_S else 0.0
                    if measured.advance() + idle >= self.autostop.seconds:
                        self.stop(FinishReason.COMPLETED, f"auto-stop after {self.autostop.seconds:g} s of measurement "
                                                          f"time ({self._clock_name()})"
                                  + (f", the last {idle:.1f} s of it without a frame from the camera" if idle else ""))
                        break
        finally:
            if not live:
                measured.advance()  # the frames since the last count
            skipped = getattr(cam, "skipped", 0)
            if skipped:
                log.info("camera reported %d skipped images", skipped)

    def _warm_up(self, h: int, w: int, dtype: np.dtype) -> None:
        """Load the compiled tracking kernels before the camera starts, so the first frames of a
        run do not queue up behind compilation (or loading from numba's cache)."""
        from tracking.background import estimate_background
        from tracking.geometry import ChannelGeometry

        # the background estimate runs once the first frames are in: loading (or, on a fresh
        # machine, compiling) its kernel there held the GIL 2.4 s and lost 4,000 frames of the demo
        t0 = time.perf_counter()
        log.info("loading the tracking kernels (compiled on a machine's first run, about a minute; "
                 "from numba's cache after that)")
        estimate_background(np.zeros((2, 4, 4), dtype), kernels=self.kernels)
        px = self.pixel_size_um or self.camera.info.pixel_size_um or 1.0
        geo = ChannelGeometry(px, w * 0.4, w * 0.6, 0.0, float(h), w, h)
        # at 8 significant bits: the real depth only scales the thresholds, and on this black
        # background it warned of a 16-bit source that looks 8-bit on every 12/16-bit replay
        # its geometry is a placeholder: what it would warn of (a narrow ROI's pace stretch) is not
        # the run's; a vertical recording's run was told "only 0 px of the ROI lie between ..."
        # before the error that says it flows vertically
        with _ThreadMuted(logging.getLogger(Tracker.__module__)):
            t = Tracker(self.tracker_settings, geo, np.zeros((h, w), dtype), kernels=self.kernels, bit_depth=8)
            t.process_frames(np.zeros((4, h, w), dtype), fps=1000.0)
            t.predicted_exits_ms()
            t.flush()
        log.info("tracking kernels ready in %.1f s", time.perf_counter() - t0)

    def _build_tracker(self) -> bool:
        """Build the tracker from the first frames; False if the run ends before there are any."""
        s = self.tracker_settings
        reader, ring = self._sort_reader, self.ring
        px = self.pixel_size_um or self.camera.info.pixel_size_um
        while True:
            done = self._camera_done.is_set()
            if reader.pending >= s.background_frames or (done and reader.pending):
                b = reader.read(s.background_frames if reader.pending >= s.background_frames else reader.pending)
                self.tracker = Tracker.from_frames(ring.images[b.slots], px, s, t0_ns=int(b.timestamps_ns[0]),
                                                   kernels=self.kernels, bit_depth=self.camera.info.bit_depth)
                # every measurement rests on it: said where a wrong one can be seen (log and file)
                note = geometry_note(self.tracker.geometry, s.geometry)
                log.info("%s", note)
                self._file_notes.append(note)
                for note in self.tracker.setup_notes():
                    log.warning("%s", note)
                    self._file_notes.append(note)
                self.tracker.on_note = self._file_notes.append
                if self.lossless:
                    # the frame of a cell's event image is taken when the cell is emitted, up to many
                    # batches later: the camera stays this far behind the tracker, and older frames
                    # count as lost whatever their slot holds (else replays would differ by timing)
                    self._hold_lag = max(0, min(ring.capacity // 2, ring.capacity - ring.guard - 2 - s.batch_frames))
                    self.tracker.snapshot_max_age = self._hold_lag
                if self.lossless or not self.camera.paced:
                    self._track(b)
                else:
                    # live: the cells in these frames could no longer be sorted in time, and working
                    # through the backlog would make the first real-time decisions late too
                    reader.release(b)
                    self._sort_hold = reader.cursor
                    n = len(b) + reader.skip_pending()
                    self._startup_skipped = n
                    log.info("tracking starts at frame %d: the %d frames before it went into the background "
                             "estimate and are not tracked", reader.cursor, n)
                return True
            if done or self._stop.is_set():
                return False
            time.sleep(0.001)

    def _track(self, b) -> None:
        lag = self._hold_lag
        self._sort_hold = b.seq0 - lag  # frames from here on are in use until released
        if self._clock is not None and len(b):
            self._clock.add_many(b.timestamps_ns, b.host_ns)
            self._clock.refit()  # the batch path (replay, catching up) maps with the current fit
            self._clock_rate = self._clock.rate
        events = self.tracker.process_batch(self.ring, b)
        self._frames_processed += len(b)
        self._sort_reader.release(b)
        self._sort_hold = self._sort_reader.cursor - lag
        self._after_tracking(events)

    def _track_live(self) -> tuple[int, bool]:
        """Track frames as they come in the live kernel (see :mod:`tracking.live`) until cells
        finish; returns (frames tracked, fell behind)."""
        reader, ring = self._sort_reader, self.ring
        seq0 = reader.cursor
        overrun0 = reader.overrun
        n, events, behind = self.tracker.track_live(ring, reader, max_frames=self._live_max_frames, timeout_s=0.05,
                                                    poll_s=LIVE_POLL_S, halt=self._halt, defer_snapshots=True)
        if n:
            self._frames_processed += n
        # decide first: the exit times map through the clock fit of the frames before these (the
        # clocks drift by ppm); adding these frames' times and refitting (~0.1 + 0.3 ms at 10 kHz)
        # waits until the pulses are on their way
        self._after_tracking(events)
        if n:
            if self._clock is not None and reader.overrun == overrun0:  # lapped slots hold newer times
                # the camera went on while the cells were decided: under overload it may have
                # lapped the oldest of these slots since, and their newer times read as the camera
                # clock going back (the map restarted for nothing)
                lo, hi = intact_range(ring, seq0, n)
                if hi > lo:
                    self._clock.add_ring(ring.timestamps_ns, ring.host_ns, lo, hi - lo)
                    self._clock.refit()
                    self._clock_rate = self._clock.rate
            self._sort_hold = reader.cursor
        return n, behind

    def _after_tracking(self, events: list[CellEvent]) -> None:
        if not events:
            return
        # exit times on the host clock, mapped here: the clock fit belongs to this thread
        exits = [self._exit_host_ns(ev) for ev in events] if self.trigger is not None else None
        mode = self.decide_thread
        if mode is not True and (mode is False or (self._sort_reader.pending <= INLINE_MAX_PENDING
                                                    and self._n_queued == self._n_decided)):
            # nothing handed to the decide thread is still undecided: deciding here keeps cell order
            if self._handle_lock.acquire(blocking=mode is False):
                try:
                    # the tracker stands still until this returns: the cells still in the channel
                    # and the snapshots are taken when needed, after the pulse is on its way
                    self._handle(events, live=True, pending=self._pending_exits, exits=exits,
                                 complete=self.tracker.with_snapshots)
                finally:
                    self._handle_lock.release()
                return
        # the tracker goes on meanwhile: take what the decision and the record need from it now
        events = self.tracker.with_snapshots(events)
        self._wait_for_decide_room()
        self._n_queued += 1  # written by this thread only; _n_decided by the decide thread only
        self._decide_q.put((events, self._pending_exits(), True, exits))

    def _wait_for_decide_room(self) -> None:
        """Hold the tracking thread while DECIDE_BACKLOG batches wait for the decide thread."""
        if self._n_queued - self._n_decided < DECIDE_BACKLOG:
            return
        self._decide_waits += 1
        if self._decide_waits == 1:
            log.warning("cells come faster than they can be decided: tracking waits for the decisions "
                        "(frames the ring cannot hold are lost and counted)")
        while self._n_queued - self._n_decided >= DECIDE_BACKLOG and not self._stop.is_set():
            time.sleep(200e-6)

    def _pending_exits(self) -> list[float]:
        """The cells still in the channel, as a purity or single-cell decision must see them now."""
        return self.tracker.predicted_exits_ms() if self.policy is not None else []

    def _sort_loop(self) -> None:
        s = self.tracker_settings
        reader = self._sort_reader
        ended = False  # the loop ran to its end: a failure must not be reported as a completed run
        try:
            if self.tracker is None:
                if not self._build_tracker():
                    if not self._stop.is_set() and self.ring.written == 0:
                        self.stop(FinishReason.ERRORED, f"camera: the {self.camera.info.backend} source ended "
                                                        "without delivering a frame")
                    ended = True
                    return
            live = self.lossless is False and self.tracker.kernels == "numba" and realtime.AVAILABLE
            while True:
                done = self._camera_done.is_set()
                if live:
                    # the kernel waits for frames itself, without the GIL
                    n, behind = self._track_live()
                    if behind:
                        self._track(reader.read(s.batch_frames))  # the batch way counts the frames lost
                    elif n == 0 and not reader.pending and (done or self._stop.is_set()):
                        break
                    if self.autostop.events and self._cells >= self.autostop.events:
                        self.stop(FinishReason.COMPLETED, f"auto-stop after {self._cells} events")
                        break
                    continue
                if not reader.pending:
                    if done or self._stop.is_set():
                        break
                    reader.wait(0.05, poll_s=20e-6)
                    continue
                if self.lossless and reader.pending < s.batch_frames and not done and not self._stop.is_set():
                    # fixed batch boundaries make replays reproducible (background updates per batch)
                    time.sleep(100e-6)
                    continue
                self._track(reader.read(s.batch_frames))
                if self.autostop.events and self._cells >= self.autostop.events:
                    self.stop(FinishReason.COMPLETED, f"auto-stop after {self._cells} events")
                    break
            if self.finish_reason is not FinishReason.ERRORED:
                tail = self.tracker.flush()
                if tail:
                    self._n_queued += 1
                    self._decide_q.put((tail, [], False, None))
            ended = True
        finally:
            self._decide_q.put(None)  # tells the decide thread that no more cells come
            if ended and not self._stop.is_set():
                self.stop(FinishReason.COMPLETED, "the source ended")

    def _decide_loop(self) -> None:
        """Classify, decide and fire, beside tracking: the model's call releases the GIL, so the
        tracker goes on with the next frames meanwhile and a burst of cells does not hold it up."""
        try:
            while True:
                item = self._decide_q.get()
                if item is None:
                    break
                events, pending, live, exits = item
                with self._handle_lock:
                    self._handle(events, live=live, pending=pending, exits=exits)
                self._n_decided += 1
        finally:
            self._queue.put(None)  # tells storage that no more records come

    def _handle(self, events: list[CellEvent], live: bool = True,
                pending: list[float] | Callable[[], list[float]] | None = None, exits: list[int] | None = None,
                complete: Callable[[list[CellEvent]], list[CellEvent]] | None = None) -> None:
        """Classify, decide and fire ``events``, then record them. ``pending``: predicted exits of
        the cells still in view (or a function giving them, called only if a decision needs
        them); ``complete`` adds what the records need but the decision does not (snapshots)."""
        limit = self.autostop.events
        if limit and self._cells + len(events) > limit:
            # auto-stop by count: that many cells, not the rest of the batch that reached it
            # (cells that finish together, and those still in view when the run stops)
            events = events[:max(0, limit - self._cells)]
            if exits is not None:
                exits = exits[:len(events)]
            if not events:
                return
        if self.classifier is not None:
            probs = self.classifier.classify(events)
        else:
            probs = np.zeros((len(events), 0), np.float32)
        policy, gen = self._policy_gen
        if gen != self._estimates_gen:
            self._estimates_gen = gen
            self._counters.restart_estimates()
        decisions: list[Decision | None] = [None] * len(events)
        if policy is not None and probs.shape[1]:
            # targets first, so cells finishing in the same batch see each other as neighbours
            targets = [policy.target(ev, p) for ev, p in zip(events, probs)]
            batch = [(ev.features.get("exit_time_ms", math.nan), tg[0]) for ev, tg in zip(events, targets)]
            self._forget_neighbours(batch, max(policy.settings.window_for(ev) for ev in events))
            coincidences = policy.settings.mode != "yield"  # yield fires regardless of neighbours
            for i, (ev, p) in enumerate(zip(events, probs)):
                near = ()
                if coincidences and targets[i][0]:
                    if callable(pending):
                        pending = pending() if live else []
                    near = coincidence_neighbours(batch[i][0], policy.settings.window_for(ev), decided=self._neighbours,
                                                  batch=batch, self_index=i, pending=(pending or []) if live else [])
                decisions[i] = policy.decide(ev, p, near, target=targets[i])
            self._neighbours.extend(batch)
        fires: list[Any] = [None] * len(events)
        for i, (ev, p, decision) in enumerate(zip(events, probs, decisions)):
            if decision is not None:
                if decision.fire and live:
                    decision, fires[i] = self._fire(ev, decision, exits[i] if exits is not None else None)
                elif decision.fire and self.trigger is not None:  # flushed at the end of a run: past the junction
                    # (without a trigger, a run records the cells the policy wants as fired, these too)
                    decision = Decision(decision.event_index, False, Reason.LATE, decision.predicted,
                                        decision.probability, decision.is_target, "decided after the run ended",
                                        decision.window_ms)
                    self._late += 1
                decisions[i] = decision
                self._counters.add(decision, policy.p_target(p) if policy is not None else 0.0,
                                   ev.features.get("exit_time_ms", math.nan))
            emit_host = ev.extra.get("emit_host_ns", 0) if ev.extra else 0
            if emit_host and live:
                now = time.monotonic_ns()
                self._latencies.add((now - emit_host) / 1000.0)
                if ev.exit_host_ns > 0:
                    self._latencies_exit.add((now - ev.exit_host_ns) / 1000.0)
        if complete is not None:
            events = complete(events)
        self._cells += len(events)
        self._queue.put(self._admit([CellRecord(ev, p, d, f) for ev, p, d, f in zip(events, probs, decisions, fires)]))
        if self.lossless:
            # a finite source at full speed may outrun the event file: wait for it rather than
            # hold every record in memory (a live run never waits on storage)
            while self._queue.qsize() > _LOSSLESS_BACKLOG and not self._storage_done.is_set():
                time.sleep(0.001)

    def _admit(self, records: list[CellRecord]) -> tuple[list[CellRecord], int]:
        """Records for storage with their size: every record goes, with its ROI image only while
        the event file keeps up. Past the backlog limit the run stops (with an error that says
        why) rather than let the process grow; what is queued is still written."""
        size = sum(map(_record_bytes, records))
        limit = self.max_backlog_bytes
        if limit:
            behind = self._bytes_queued - self._bytes_stored
            if behind + size > limit // 2:
                shed = sum(r.event.snapshot is not None for r in records)
                if shed:
                    if not self._images_shed:
                        log.warning("the event file is %.0f MB behind: cells are recorded without their ROI image "
                                    "until it catches up (features, crops and decisions are kept)", behind / 2**20)
                    self._images_shed += shed
                    records = [_without_snapshot(r) for r in records]
                    size = sum(map(_record_bytes, records))
            if behind + size > limit and not self._stop.is_set():
                self.stop(FinishReason.ERRORED,
                          f"the event file fell {behind / 2**20:.0f} MB behind the cells (output.max_backlog_mb = "
                          f"{limit / 2**20:g}): the writer cannot keep up (a slow disk?); the run stopped so that "
                          "no record is lost")
        self._bytes_queued += size
        return records, size

    def _forget_neighbours(self, batch: list[tuple[float, bool]], window_ms: float) -> None:
        """Drop decided cells that exited too long before this batch to matter (cells are decided
        roughly in exit order), so the neighbour search stays a few entries long at any cell rate."""
        exits = [t for t, _ in batch if t == t]
        if not exits or not self._neighbours:
            return
        horizon = min(exits) - 2.0 * window_ms - 20.0  # 20 ms: slack for cells decided out of exit order
        while self._neighbours and not (self._neighbours[0][0] >= horizon):  # NaN exits go too
            self._neighbours.popleft()

    def _fire(self, ev: CellEvent, decision: Decision, exit_ns: int | None = None) -> tuple[Decision, Any]:
        """Send the pulse for a cell the policy wants; the decision says if it could not be."""
        if self.trigger is None:
            return decision, None
        timing = self.timing
        v = ev.features.get("v_after_mm_s", math.nan)
        if exit_ns is None:
            exit_ns = self._exit_host_ns(ev)
        ease = ev.extra.get("exit_easing_ms", 0.0) if ev.extra else 0.0
        # speed and easing are on the camera clock: a recording replayed in real time at twice its
        # speed brings its cells to the junction in half the host time (the rate is the sort
        # thread's copy: the clock map has one owner)
        at = (fire_time_ns(exit_ns, v, timing, ease, self._clock_rate) if timing is not None
              else time.monotonic_ns())
        width = timing.pulse_width_us if timing is not None else 100.0
        rec = self.trigger.fire(FireRequest(ev.index, at, width))
        if getattr(rec, "late", False):
            self._late += 1
            return Decision(decision.event_index, False, Reason.LATE, decision.predicted, decision.probability,
                            decision.is_target, "fire time already past", decision.window_ms), rec
        if getattr(rec, "refused", False):
            # this cell's request, not the device: a fire time seconds ahead (a cell that nearly
            # stopped past the exit) or a width out of range. The trigger stays in service
            if not self._refused:
                log.warning("trigger refused a request: %s", rec.error)
            self._refused += 1
            return Decision(decision.event_index, False, Reason.REFUSED, decision.predicted, decision.probability,
                            decision.is_target, rec.error, decision.window_ms), rec
        if not getattr(rec, "ok", True):
            self._trigger_failed += 1
            if self._trigger_ok:
                log.error("trigger unavailable: %s", getattr(rec, "error", "?"))
                self._errors.append(f"trigger: {getattr(rec, 'error', 'unavailable')}")
            self._trigger_ok = False
            return Decision(decision.event_index, False, Reason.TRIGGER_UNAVAILABLE, decision.predicted,
                            decision.probability, decision.is_target, getattr(rec, "error", ""),
                            decision.window_ms), rec
        self._trigger_ok = True
        return decision, rec

    def _exit_host_ns(self, ev: CellEvent) -> int:
        """Host time of the cell's sub-frame exit from the constriction.

        With a camera clock, the exit time is mapped through the clock fit (free of transfer
        jitter); with host timestamps it is already on the host clock. Falls back to the host
        arrival of the exit frame.
        """
        t_ms = ev.features.get("exit_time_ms", math.nan)
        t0 = self.tracker.t0_ns if self.tracker is not None else None
        if t0 is None or not math.isfinite(t_ms):
            return ev.exit_host_ns
        cam_ns = int(t0 + t_ms * 1e6)
        if self._clock is None:  # host timestamps, or an unpaced source's clock (no map)
            return ev.exit_host_ns if self.ring.camera_clock else cam_ns
        if self._clock.n < MIN_SAMPLES:  # a map that just started (or restarted): the frame's arrival
            return ev.exit_host_ns
        return self._clock.to_host_ns(cam_ns, refit=False)  # _track_live refits after the decision

    def _storage_loop(self) -> None:
        try:
            self._storage_work()
        finally:
            self._storage_done.set()

    def _storage_work(self) -> None:
        sink = self.sink
        while True:
            try:
                item = self._queue.get(timeout=TRIGGER_POLL_S)
            except queue.Empty:
                item = ()
            if item is None:
                break
            if item:
                records, size = item
                if sink is not None:
                    sink.write(records)
                self._bytes_stored += size
                # kept for plots and summaries without their ROI images (~90 kB a cell): bounded
                # in count and small per record, so memory stays flat at any cell rate
                self._recent.extend(_without_snapshot(r) for r in records)
            self._service_trigger(sink)
            if sink is None:
                continue
            while self._file_notes and hasattr(sink, "log"):
                sink.log(self._file_notes.popleft())
            shed = self._images_shed
            if shed != self._shed_noted and hasattr(sink, "log"):
                # the file's log says when its cells began to go without images, and how many had
                # each time the writer caught up again (the total is also a counter at the end)
                behind = self._bytes_queued - self._bytes_stored
                if not self._shed_noted or behind < self.max_backlog_bytes // 4:
                    sink.log(f"{shed} cells so far recorded without their ROI image: the event file fell "
                             f"{behind / 2**20:.0f} MB behind (output.max_backlog_mb = "
                             f"{self.max_backlog_bytes / 2**20:g})")
                    self._shed_noted = shed
            if not item and hasattr(sink, "flush_if_due"):
                sink.flush_if_due()
        self._service_trigger(sink, poll=False)
        while self._file_notes and sink is not None and hasattr(sink, "log"):
            sink.log(self._file_notes.popleft())

    def _service_trigger(self, sink, poll: bool = True) -> None:
        """Off the sort path: collect the trigger's acks (into the file, if there is one: without
        it they must still be drained, or they pile up for the whole run and missing ones are
        never counted) and let the device be polled (error queue, clock sync while nothing fires)."""
        trig = self.trigger
        if trig is None:
            return
        if poll and getattr(trig, "poll_during_run", False):
            now = time.monotonic()
            if now >= self._next_trigger_poll:
                self._next_trigger_poll = now + TRIGGER_POLL_S
                trig.poll()
        if hasattr(trig, "drain_acks"):
            acks = trig.drain_acks()
            if acks and sink is not None and hasattr(sink, "add_acks"):
                sink.add_acks(acks)
        if hasattr(trig, "drain_reports"):
            reports = trig.drain_reports()
            if reports and sink is not None and hasattr(sink, "add_device_reports"):
                sink.add_device_reports(reports)
        self.log_test_pulses(sink)

    def log_test_pulses(self, sink) -> None:
        """Write the test pulses fired through the run's trigger since the last call into the
        file's log (``sink``; None: only this process's log). The storage thread calls it, and the
        run's close once more after the last pulses settled."""
        drain = getattr(self.trigger, "drain_test_pulses", None)
        for rec in drain() if drain is not None else ():
            line = operator_pulse_line(rec, self._t_start)
            log.info("%s", line.replace("\n", " "))
            if sink is not None and hasattr(sink, "log"):
                sink.log(line)

    def _recorder_loop(self) -> None:
        rec, reader = self.recorder, self._rec_reader
        while True:
            if reader.pending:
                self._frames_recorded += rec.write_from_ring(reader, 512)
            elif self._camera_done.is_set() or self._stop.is_set():
                break
            else:
                if hasattr(rec, "maybe_flush"):  # a stalled camera must not keep frames unflushed
                    rec.maybe_flush()
                reader.wait(0.05, poll_s=200e-6)

    def storage_progress(self) -> tuple[int, int, int]:
        """(record batches waiting for storage, bytes of records handed to the sink, bytes the
        sink has written): while any of them changes, storage is moving."""
        sink = self.sink
        return (self._queue.qsize(), self._bytes_stored,
                int(getattr(sink, "bytes_written", 0) or 0) if sink is not None else 0)

    # -- status ----------------------------------------------------------------------------------
    def _measured_s(self) -> float:
        """Seconds measured by the frames' own times: counted for an auto-stop duration and for
        finite sources (replay, synthetic); NaN for a live camera without one."""
        m = self._measured
        counted = m is not None and (self.autostop.seconds or self.camera.info.backend in ("replay", "synthetic"))
        return m.ns / 1e9 if counted else math.nan

    def status(self) -> Status:
        now = time.monotonic()
        ring = self.ring
        frames_in = ring.written if ring is not None else 0
        lat_p50, lat_p99, lat_max = self._latencies.summary()
        exit_p50, exit_p99, _ = self._latencies_exit.summary()
        c = self._counters
        end = self._t_end or now
        elapsed = end - self._t_start if self._t_start else 0.0
        # a finished run's rates are its averages (the recent rates would decay towards 0 after it)
        whole = bool(self._t_end) and elapsed > 0

        def rate(r: _Rate, count: int) -> float:
            return count / elapsed if whole else r.update(now, count)

        sink = self.sink
        ts = self.tracker.stats if self.tracker is not None else None
        gain, flicker = self.tracker.light if self.tracker is not None else (math.nan, math.nan)
        return Status(
            state=self.state,
            finish_reason=self.finish_reason,
            message=self.message,
            elapsed_s=elapsed,
            measured_s=self._measured_s(),
            autostop_s=self.autostop.seconds,
            autostop_clock=self._clock_name() if self.autostop.seconds else "",
            frames_in=frames_in,
            fps_in=rate(self._rate_in, frames_in),
            frames_processed=self._frames_processed,
            fps_processed=rate(self._rate_proc, self._frames_processed),
            missed={r.name: r.missed + max(0, r.pending - (ring.capacity - ring.guard)) for r in ring.readers}
            if ring else {},  # frames a reader has not read yet but already lost count as missed now
            overrun={r.name: r.overrun for r in ring.readers} if ring else {},
            camera_dropped=(ring.camera_dropped if ring else 0) + int(getattr(self.camera, "skipped", 0)),
            camera_reconnects=int(getattr(self.camera, "reconnects", 0) or 0),
            failed_buffers=self.camera.failed_buffers,
            cells=self._cells,
            cells_per_s=rate(self._rate_cells, self._cells),
            class_counts=dict(c.per_class),
            fired=c.fired,
            not_fired=dict(c.not_fired),
            late=self._late,
            trigger_failed=self._trigger_failed,
            purity_estimate=c.purity_estimate,
            recovery_estimate=c.recovery_estimate,
            swept=c.swept,
            sorted_purity_estimate=c.sorted_purity_estimate,
            sorted_recovery_estimate=c.sorted_recovery_estimate,
            latency_p50_us=lat_p50,
            latency_p99_us=lat_p99,
            latency_max_us=lat_max,
            latency_from_exit_p50_us=exit_p50,
            latency_from_exit_p99_us=exit_p99,
            decide_queue=max(0, self._n_queued - self._n_decided),
            decide_waits=self._decide_waits,
            storage_queue=self._queue.qsize(),
            storage_backlog_mb=max(0, self._bytes_queued - self._bytes_stored) / 2**20,
            images_shed=self._images_shed,
            file_bytes=int(getattr(sink, "bytes_written", 0) or 0) if sink is not None else 0,
            frames_recorded=self._frames_recorded,
            trigger_ok=self._trigger_ok and not getattr(self.trigger, "faulted", False),
            errors=tuple(self._errors),
            startup_frames=self._startup_skipped,
            tracks_lost=ts.lost_tracks if ts else 0,
            tracks_overflow=ts.track_overflow if ts else 0,
            snapshots_lost=ts.snapshots_lost if ts else 0,
            paces_unlearned=ts.paces_unlearned if ts else 0,
            light_gain=gain,
            light_flicker=flicker,
            blocked_s=self.tracker.blocked_s if self.tracker is not None else math.nan,
            clock_resets=self._clock.resets if self._clock is not None else 0,
            device_refused=int(getattr(self.trigger, "device_refused", 0) or 0),
            device_late=int(getattr(self.trigger, "device_late", 0) or 0),
            unacked=int(getattr(self.trigger, "unacked", 0) or 0),
            late_acks=int(getattr(self.trigger, "late_acks", 0) or 0),
            device_errors=int(getattr(self.trigger, "device_errors", 0) or 0),
            test_pulses=int(getattr(self.trigger, "test_fired", 0) or 0),
            test_acked=int(getattr(self.trigger, "test_acked", 0) or 0),
            test_unacked=int(getattr(self.trigger, "test_unacked", 0) or 0),
            test_refused=int(getattr(self.trigger, "test_refused", 0) or 0),
            **self._cpu(now, elapsed if whole else 0.0),
        )

    def _children(self) -> tuple[tuple[str, Any], ...]:
        return ("writer process", self.sink), ("recorder process", self.recorder)

    def _cpu(self, now: float, whole_s: float = 0.0) -> dict[str, dict[str, float]]:
        """CPU seconds per worker and the cores each used lately (``whole_s`` > 0: on average over
        a finished run of that length)."""
        pid = os.getpid()
        used: dict[str, float] = {}
        for name, tid in list(self._tids.items()):
            v = self._cpu_final.get(name)
            v = realtime.cpu_seconds(pid, tid) if v is None else v
            if v is not None:
                used[name] = v
        for name, owner in self._children():
            child = getattr(owner, "child_pid", None)
            v = realtime.cpu_seconds(child) if child else None
            if v is not None:  # the last reading stays once the child is gone
                self._cpu_children[name] = max(0.0, v - self._cpu_child_base.get(name, 0.0))
        used.update(self._cpu_children)
        cores = {k: round(v / whole_s if whole_s else self._cpu_rates.setdefault(k, _Rate()).update(now, v), 3)
                 for k, v in used.items()}
        return {"cpu_s": used, "cpu_cores": cores}
