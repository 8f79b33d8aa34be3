"""Frames and the ring buffer that carries them from the camera thread to every consumer.

One producer (the camera thread) writes into a preallocated ``(capacity, H, W)`` array and never
waits. Each consumer holds a :class:`RingReader` with its own cursor; a reader that falls more than
``capacity - guard`` frames behind skips ahead and counts what it skipped in ``missed``. Camera-side
drops (gaps in ``frame_id``, with counter wrap) are counted once, at the producer.

Synchronisation relies on the GIL making the single integer store of ``_write_seq`` atomic: the
producer fills a slot completely before publishing it, and readers only look at published slots.
A reader that holds a batch while the producer laps it detects that afterwards in
:meth:`RingReader.release` and counts the damaged frames in ``overrun``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from mimlsort import realtime
from mimlsort.errors import ConfigError, StateError


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera frame.

    ``image`` is a view of a ring slot (valid until the producer laps it) or an owned array.
    ``timestamp_ns`` is on the camera clock when ``camera_clock`` is true, otherwise the host's
    ``time.monotonic_ns()`` at arrival. ``host_ns`` is always the host's monotonic arrival time.
    """

    image: np.ndarray
    frame_id: int
    timestamp_ns: int
    host_ns: int
    camera_clock: bool = False


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """Consecutive frames handed to a reader: ring sequence numbers ``seq0 .. seq0+n-1``.

    ``slots`` index ``ring.images``; the metadata arrays are copies, safe to keep.
    """

    seq0: int
    slots: np.ndarray  # int64[n]
    frame_ids: np.ndarray  # int64[n]
    timestamps_ns: np.ndarray  # int64[n]
    host_ns: np.ndarray  # int64[n]

    def __len__(self) -> int:
        return int(self.slots.shape[0])


class FrameRing:
    """Preallocated frame ring: one producer that never blocks, any number of readers.

    ``id_modulus`` is the camera's frame-counter range: the number of distinct ids it cycles
    through (``65535`` for a GigE Vision 1.x BlockID, which runs 1..65535 and skips 0; ``2**32``
    for a 32-bit counter that includes 0; ``0`` for a counter that does not wrap); gaps are
    computed modulo it.
    """

    def __init__(
        self,
        capacity: int,
        height: int,
        width: int,
        dtype: np.dtype | type = np.uint8,
        *,
        guard: int = 2,
        id_modulus: int = 0,
        shared: bool = False,
    ):
        if capacity < 4:
            raise ConfigError("ring.capacity", f"must be >= 4, got {capacity}")
        if not 0 < guard < capacity:
            raise ConfigError("ring.guard", f"must be in [1, capacity), got {guard}")
        self.capacity = int(capacity)
        self.guard = int(guard)
        self.id_modulus = int(id_modulus)
        #: the file behind ``images`` when shared with another process (a tmpfs file other
        #: processes map read-only; see :meth:`unlink_shared`), else None
        self.shared_path: str | None = None
        self._shared_fd: int | None = None
        if shared:
            import tempfile

            folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
            fd, path = tempfile.mkstemp(prefix="mimlsort-ring-", dir=folder)
            self.images = np.memmap(path, dtype=dtype, mode="w+", shape=(capacity, height, width))
            if os.path.isdir(f"/proc/{os.getpid()}/fd"):
                # Linux: the name goes at once and the other process opens the file through our
                # descriptor, so a run killed before that process attached (while the kernels
                # load, a minute on a first run) leaves no ring in /dev/shm holding memory
                os.unlink(path)
                self._shared_fd = fd
                self.shared_path = f"/proc/{os.getpid()}/fd/{fd}"
            else:
                os.close(fd)
                self.shared_path = path
        else:
            self.images = np.empty((capacity, height, width), dtype=dtype)
        self.images.fill(0)  # touch every page now: first-lap page faults would cost the grab thread
        self.frame_ids = np.zeros(capacity, dtype=np.int64)
        self.timestamps_ns = np.zeros(capacity, dtype=np.int64)
        self.host_ns = np.zeros(capacity, dtype=np.int64)
        self.camera_clock = False
        # frames published so far, in an array so that kernels can publish and wait without the GIL
        self._seq = np.zeros(1, np.int64)
        self._last_id: int | None = None
        self.camera_dropped = 0  # frames the camera counter skipped
        self._readers: list[RingReader] = []

    def unlink_shared(self) -> None:
        """Remove the shared file's name (idempotent); mappings already made stay valid."""
        path, self.shared_path = self.shared_path, None
        fd, self._shared_fd = self._shared_fd, None
        if fd is not None:  # the name is long gone: only our descriptor still opens it
            os.close(fd)
        elif path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- producer side ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def _write_seq(self) -> int:
        return int(self._seq[0])

    @property
    def written(self) -> int:
        """Frames published since the ring was made."""
        return int(self._seq[0])

    def next_slot(self) -> np.ndarray:
        """The array the next frame must be written into (zero-copy grab), then :meth:`commit`."""
        return self.images[self._write_seq % self.capacity]

    def commit(self, frame_id: int, timestamp_ns: int, host_ns: int | None = None) -> None:
        """Publish the frame written into :meth:`next_slot`."""
        slot = self._write_seq % self.capacity
        self.frame_ids[slot] = frame_id
        self.timestamps_ns[slot] = timestamp_ns
        self.host_ns[slot] = time.monotonic_ns() if host_ns is None else host_ns
        if self._last_id is not None:
            self.camera_dropped += self._gap(self._last_id, frame_id)
        self._last_id = frame_id
        self._seq[0] += 1  # publish last: readers never see a half-written slot

    def push(self, image: np.ndarray, frame_id: int, timestamp_ns: int, host_ns: int | None = None) -> None:
        """Copy ``image`` into the next slot and publish it."""
        np.copyto(self.next_slot(), image, casting="same_kind")
        self.commit(frame_id, timestamp_ns, host_ns)

    def _gap(self, last: int, new: int) -> int:
        delta = new - last
        if self.id_modulus:
            delta %= self.id_modulus
        # A non-increasing id without a modulus means the camera restarted its counter: no drop.
        return delta - 1 if delta > 1 else 0

    def note_restart(self) -> None:
        """The camera's frame counter starts again (a camera reopened after it disappeared): the
        next id is not compared with the last one, which with ``id_modulus`` would count a jump
        of almost a whole counter range (2**32 frames) as dropped."""
        self._last_id = None

    def note_camera_drops(self, n: int) -> None:
        """Count drops a camera reports by other means than frame-id gaps."""
        self.camera_dropped += int(n)

    # -- reader side -----------------------------------------------------------------------------
    def reader(self, name: str, *, from_start: bool = False) -> "RingReader":
        """A new reader whose cursor starts at the newest frame (or the oldest still held)."""
        start = max(0, self._write_seq - self.capacity + self.guard) if from_start else self._write_seq
        r = RingReader(self, name, start)
        self._readers.append(r)
        return r

    @property
    def readers(self) -> tuple["RingReader", ...]:
        return tuple(self._readers)

    def frame(self, seq: int) -> Frame:
        """The published frame with ring sequence number ``seq`` (a view of its slot)."""
        if not (self._write_seq - self.capacity <= seq < self._write_seq):
            raise StateError(f"frame seq {seq} is not in the ring (holds {self._write_seq - self.capacity}..{self._write_seq - 1})")
        s = seq % self.capacity
        return Frame(self.images[s], int(self.frame_ids[s]), int(self.timestamps_ns[s]), int(self.host_ns[s]), self.camera_clock)

    def newest(self) -> Frame | None:
        """The newest published frame (for previews), or None before the first."""
        return self.frame(self._write_seq - 1) if self._write_seq else None


class RingReader:
    """A consumer's cursor into a :class:`FrameRing`, with its own loss counters."""

    def __init__(self, ring: FrameRing, name: str, start: int):
        self.ring = ring
        self.name = name
        self.cursor = start
        self.missed = 0  # frames skipped because this reader fell behind
        self.overrun = 0  # frames overwritten while this reader still held them
        self.consumed = 0
        self.skipped = 0  # frames passed over on purpose (skip_pending), not lost
        self._ts: np.ndarray | None = None  # the waiting kernel's timespec

    @property
    def pending(self) -> int:
        return self.ring._write_seq - self.cursor

    def read(self, max_frames: int) -> FrameBatch:
        """Up to ``max_frames`` consecutive unread frames (possibly none); never blocks."""
        ring = self.ring
        head = ring._write_seq
        oldest_safe = head - ring.capacity + ring.guard
        if self.cursor < oldest_safe:
            self.missed += oldest_safe - self.cursor
            self.cursor = oldest_safe
        n = max(0, min(max_frames, head - self.cursor))
        seqs = np.arange(self.cursor, self.cursor + n, dtype=np.int64)
        slots = seqs % ring.capacity
        batch = FrameBatch(
            self.cursor,
            slots,
            ring.frame_ids[slots],
            ring.timestamps_ns[slots],
            ring.host_ns[slots],
        )
        self.cursor += n
        self.consumed += n
        return batch

    def skip_pending(self) -> int:
        """Jump to the newest frame without reading what lies before it; returns how many frames
        were passed over (also added to ``skipped``). For a live consumer that must not work
        through a backlog it had no way to process, e.g. while it was being set up."""
        n = max(0, self.ring._write_seq - self.cursor)
        self.cursor += n
        self.skipped += n
        return n

    def advance(self, n: int) -> int:
        """Say the reader has read ``n`` frames from its cursor on in place (a kernel that reads
        the ring itself); returns how many of them the producer overwrote meanwhile (also added
        to ``overrun``)."""
        seq0 = self.cursor
        self.cursor += n
        self.consumed += n
        first_valid = self.ring._write_seq - self.ring.capacity
        damaged = max(0, min(n, first_valid - seq0 + 1))
        self.overrun += damaged
        return damaged

    def release(self, batch: FrameBatch) -> int:
        """Say the reader is done with ``batch``; returns how many of its frames were overwritten
        by the producer meanwhile (also added to ``overrun``)."""
        first_valid = self.ring._write_seq - self.ring.capacity
        damaged = max(0, min(len(batch), first_valid - batch.seq0 + 1))
        self.overrun += damaged
        return damaged

    def wait(self, timeout_s: float, poll_s: float = 50e-6) -> bool:
        """Sleep-poll until a frame is pending or the timeout passes; True if one is pending.

        The polling runs in a kernel without the GIL (where :mod:`mimlsort.realtime` is
        available): at 10 kHz a Python poll would take the GIL back at every wake-up."""
        if realtime.AVAILABLE:
            if self._ts is None:
                self._ts = realtime.scratch()
            return realtime.wait_counter(self.ring._seq, self.cursor + 1, int(timeout_s * 1e9), int(poll_s * 1e9),
                                           self._ts)
        deadline = time.monotonic() + timeout_s
        while self.pending <= 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
        return True
