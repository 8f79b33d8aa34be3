"""Raw recording of every camera frame to an RT-DC (``.rtdc``, HDF5) file.

Layout (what dclab, DCscope and dcnum read for every-frame recordings): ``events/image`` (N, H, W)
chunked, ``events/frame`` (camera frame id), ``events/time`` (s since the first frame),
``events/index`` (1-based, as dclab requires), metadata as root attributes ``section:key``,
log lines under ``logs/``. mimlsort's own values live in the free-form ``user`` section:

- ``user:time offset ns``: timestamp of the first frame, so that ``offset + round(time * 1e9)`` gives
  back every frame's timestamp in ns exactly (float64 seconds are exact to the ns for ~10 days);
- ``user:camera clock``: whether timestamps are on the camera's clock (else host monotonic time);
- ``user:bit depth``: significant bits per pixel (e.g. 12 for a 12-bit camera in uint16);
- ``user:recorder dropped frames``: frames the recorder lost because it fell behind the ring (or the
  producer overwrote them while it copied them); ``user:camera dropped frames``: frame-id gaps the
  ring saw. Both are counters updated at every flush, and every new loss is a line in
  ``logs/mimlsort-recorder``.

Crash safety: the file is flushed (HDF5 metadata and chunk cache) at least every
``flush_interval_s``; between flushes only raw chunk data reaches the disk, so a killed process
leaves the file as it was at the last flush plus unreferenced bytes. Uncompressed chunks are
rewritten in place; compressed chunks move when they grow, so compressed files are created with the
"aggregate" file-space strategy, which never reuses freed space: a chunk the last flushed index
points to is never overwritten before the next flush. The recorder has no thread of its own (one
owner per file): whoever owns it calls ``write_from_ring`` or ``maybe_flush`` regularly, also while
no frames arrive, and the flush happens there.

Speed (256x96 uint8, ``mimlsort bench recording``): uncompressed, ~27,000 frames/s (660 MB/s) on
this 2-core machine when it is quiet (20,000-50,000 across runs; 10,000-14,000 under a load of 7);
whole chunks go to the file with ``write_direct_chunk``, bypassing HDF5's chunk cache (one copy
less, ~30% faster). Camera noise makes frames compress poorly (Zstd level 1: 1.43x at ~14,000-
17,000 frames/s), so the default is no compression and Zstd is an option for archives.
Zstd chunks carry a Fletcher-32 checksum: without it a damaged Zstd chunk decodes to wrong pixels
silently. LZ4 is not offered: it gained 2% on such frames, and hdf5plugin's LZ4 filter crashes the
process (segfault) on a damaged chunk.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from acquisition.frame import RingReader
from mimlsort.provenance import software_version
from mimlsort.errors import ConfigError, DataFormatError, DeviceError, MimlsortError, StateError
from mimlsort.settings import require

log = logging.getLogger(__name__)

#: dclab's checker flags longer log lines
LOG_LINE_MAX = 100

#: metadata keys dclab's checker requires; those we cannot know are left to the caller
REQUIRED_METADATA = (
    "experiment:date", "experiment:event count", "experiment:run index", "experiment:sample", "experiment:time",
    "imaging:flash device", "imaging:flash duration", "imaging:frame rate", "imaging:pixel size",
    "imaging:roi position x", "imaging:roi position y", "imaging:roi size x", "imaging:roi size y",
    "setup:channel width", "setup:chip region", "setup:flow rate", "setup:medium",
)


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    """How a raw recording is written.

    ``chunk_bytes`` sets frames per HDF5 chunk (about 1 MiB: large enough for throughput, small
    enough that dclab reading one event decompresses little). ``overwrite`` must be set to replace
    an existing file: losing a recording by mistake is worse than an error.
    """

    compression: Literal["none", "zstd"] = "none"
    zstd_level: int = 1
    chunk_bytes: int = 1 << 20
    flush_interval_s: float = 1.0
    overwrite: bool = False
    # stop recording (a clean, complete file) below this much free disk: a failed HDF5 write leaves
    # a file that may not open; more than the event writer's 256 MiB, so the run's event file,
    # usually on the same disk, still has room to close
    min_free_mb: float = 512.0

    def __post_init__(self) -> None:
        require(self.compression in ("none", "zstd"), "compression",
                f"must be 'none' or 'zstd', got {self.compression!r}")
        require(1 <= self.zstd_level <= 22, "zstd_level", f"must be in [1, 22], got {self.zstd_level}")
        require(self.chunk_bytes >= 4096, "chunk_bytes", f"must be >= 4096, got {self.chunk_bytes}")
        require(self.min_free_mb >= 0, "min_free_mb", f"must be >= 0 (0: no check), got {self.min_free_mb}")
        require(0 < self.flush_interval_s <= 1.0, "flush_interval_s",
                f"must be in (0, 1] s (a killed process must leave at most 1 s unflushed), got {self.flush_interval_s}")


def _h5():
    # hdf5plugin registers the LZ4/Zstd filters with HDF5; it must be imported before h5py opens
    # any compressed file.
    import hdf5plugin
    import h5py

    return h5py, hdf5plugin


class RawRecorder:
    """Writes frames to a new ``.rtdc`` file; a context manager (``with`` opens and closes).

    ``metadata`` maps ``"section:key"`` to values (``{"setup:channel width": 20.0}``); they override
    what the recorder derives. Required dclab keys nobody supplied are listed in
    :attr:`missing_metadata` and logged once. ``camera_clock`` (whether timestamps are on the
    camera's clock) is taken from the ring when not given.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        dtype: Any = "uint8",
        *,
        pixel_size_um: float = 0.0,
        fps: float = 0.0,
        metadata: dict[str, Any] | None = None,
        bit_depth: int | None = None,
        camera_clock: bool | None = None,
        settings: RecorderSettings | None = None,
        overwrite: bool | None = None,
    ):
        self.path = Path(path)
        self.settings = settings or RecorderSettings()
        if overwrite is not None:  # shorthand for the one setting most callers want to give
            self.settings = dataclasses.replace(self.settings, overwrite=bool(overwrite))
        self.dtype = np.dtype(dtype)
        require(self.dtype in (np.dtype(np.uint8), np.dtype(np.uint16)), "recording.dtype",
                f"must be uint8 or uint16, got {self.dtype}")
        require(int(width) > 0 and int(height) > 0, "recording.roi", f"width and height must be > 0, got {width}x{height}")
        self.width, self.height = int(width), int(height)
        self.bit_depth = int(bit_depth) if bit_depth else 8 * self.dtype.itemsize
        require(1 <= self.bit_depth <= 8 * self.dtype.itemsize, "recording.bit_depth",
                f"must be in [1, {8 * self.dtype.itemsize}] for {self.dtype}, got {self.bit_depth}")
        require(pixel_size_um >= 0 and fps >= 0, "recording", f"pixel size and fps must be >= 0, got {pixel_size_um}, {fps}")
        self.pixel_size_um = float(pixel_size_um)
        self.fps = float(fps)
        self.metadata = dict(metadata or {})
        for key in self.metadata:
            require(isinstance(key, str) and key.count(":") == 1, f"recording.metadata.{key}",
                    "keys must look like 'section:key'")
        self._camera_clock = camera_clock
        frame_bytes = self.width * self.height * self.dtype.itemsize
        # a power of two, so that chunks line up with the power-of-two batches readers take
        self.chunk_frames = 1 << max(0, (self.settings.chunk_bytes // frame_bytes).bit_length() - 1)
        self.frames_written = 0
        self.flushed_frames = 0  # frames a killed process would leave in the file
        self.dropped = 0  # frames lost by the recorder (ring overtook it)
        self.camera_dropped = 0  # frame-id gaps the ring counted
        self.missing_metadata: tuple[str, ...] = ()
        self._dropped_logged = 0
        self._noted_camera_drops = 0
        self._t0_ns: int | None = None
        self._failed: DeviceError | None = None  # the disk ran nearly full: no more frames
        self._file = None
        self._ds: dict[str, Any] = {}
        self._log_ds = None
        self._staging = np.empty((0, self.height, self.width), self.dtype)
        self._direct = self.settings.compression == "none"
        self._pending = np.empty((self.chunk_frames, self.height, self.width), self.dtype)
        self._last_flush = 0.0
        self._last_id: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._file is not None

    def open(self) -> "RawRecorder":
        if self._file is not None:
            raise StateError(f"{self.path}: recorder is already open")
        if self.path.exists() and not self.settings.overwrite:
            raise DataFormatError(f"{self.path}: exists; refusing to overwrite a recording "
                                  "(choose another name, or pass overwrite=True)")
        h5py, hdf5plugin = _h5()
        comp = self.settings.compression
        file_kw: dict[str, Any] = {}
        if comp != "none":
            file_kw["fs_strategy"] = "aggregate"  # see module docstring: freed chunks never reused
        chunk_nbytes = self.chunk_frames * self.width * self.height * self.dtype.itemsize
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = h5py.File(self.path, "w", rdcc_nbytes=max(4 << 20, 4 * chunk_nbytes), rdcc_nslots=1021, **file_kw)
        except OSError as err:
            raise MimlsortError(f"{self.path}: cannot create the recording: {err}") from err
        self._file = f
        try:
            filt: dict[str, Any] = {}
            if comp == "zstd":
                filt = dict(hdf5plugin.Zstd(clevel=self.settings.zstd_level), fletcher32=True)
            ev = f.create_group("events")
            img = ev.create_dataset("image", shape=(0, self.height, self.width), maxshape=(None, self.height, self.width),
                                    dtype=self.dtype, chunks=(self.chunk_frames, self.height, self.width), **filt)
            # HDF5 image attributes dclab checks (fixed-length ASCII strings)
            img.attrs.create("CLASS", np.bytes_("IMAGE"))
            img.attrs.create("IMAGE_VERSION", np.bytes_("1.2"))
            img.attrs.create("IMAGE_SUBCLASS", np.bytes_("IMAGE_GRAYSCALE"))
            self._ds["image"] = img
            for name, dt in (("frame", np.int64), ("time", np.float64), ("index", np.int64)):
                self._ds[name] = ev.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(8192,), **filt)
            self._log_ds = f.create_group("logs").create_dataset(
                "mimlsort-recorder", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(64,))
            self._write_metadata()
            self._log(f"recording started: {self.width}x{self.height} {self.dtype} ({self.bit_depth} bit), "
                      f"compression {comp}, {self.chunk_frames} frames/chunk")
            f.flush()
        except BaseException:
            f.close()
            self._file = None
            raise
        self._last_flush = time.monotonic()
        log.info("recording to %s (%dx%d %s, compression %s)", self.path, self.width, self.height, self.dtype, comp)
        return self

    def close(self) -> None:
        """Write the final counters and close the file complete (idempotent)."""
        f = self._file
        if f is None:
            return
        try:
            self._write_pending()
            self._log_drops()
            self._log(f"recording closed: {self.frames_written} frames, {self.dropped} dropped by the recorder, "
                      f"{self.camera_dropped} dropped by the camera")
            self._update_counters()
        finally:
            self._file = None
            f.close()
        self.flushed_frames = self.frames_written
        log.info("closed %s: %d frames (%d dropped by the recorder)", self.path, self.frames_written, self.dropped)

    def __enter__(self) -> "RawRecorder":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self._file is not None:
            try:
                self._log(f"recording ended by an error: {type(exc).__name__}: {exc}")
            except Exception:  # the file may be what failed; closing it is what matters now
                log.exception("could not log the error into %s", self.path)
        self.close()

    # -- writing ---------------------------------------------------------------------------------
    def write(self, images: np.ndarray, frame_ids: np.ndarray, timestamps_ns: np.ndarray) -> int:
        """Append frames (N, H, W) with their ids and timestamps (ns); returns N."""
        self._require_open()
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        frame_ids = np.atleast_1d(np.asarray(frame_ids, dtype=np.int64))
        timestamps_ns = np.atleast_1d(np.asarray(timestamps_ns, dtype=np.int64))
        n = images.shape[0]
        where = f"{self.path}: frame {int(frame_ids[0]) if frame_ids.size else self.frames_written}"
        if images.ndim != 3 or images.shape[1:] != (self.height, self.width):
            raise DataFormatError(f"{where}: image shape {images.shape[1:]} does not match the recording's "
                                  f"{self.height}x{self.width} (HxW)")
        if images.dtype != self.dtype:
            raise DataFormatError(f"{where}: image dtype {images.dtype} does not match the recording's {self.dtype}")
        if frame_ids.shape != (n,) or timestamps_ns.shape != (n,):
            raise DataFormatError(f"{where}: {n} images but {frame_ids.size} frame ids and {timestamps_ns.size} timestamps")
        if n:
            self._append(images, frame_ids, timestamps_ns)
        self.maybe_flush()
        return n

    def write_from_ring(self, reader: RingReader, max_frames: int | None = None) -> int:
        """Copy up to ``max_frames`` pending frames of ``reader`` into the file; returns frames written.

        Frames the reader missed (it fell more than the ring's capacity behind) or that the producer
        overwrote while they were being copied are not written; they are counted in
        :attr:`dropped` and logged. Call this often (also with nothing pending): it flushes.
        """
        self._require_open()
        ring = reader.ring
        if ring.images.shape[1:] != (self.height, self.width) or ring.images.dtype != self.dtype:
            raise DataFormatError(
                f"{self.path}: the ring holds {ring.images.shape[2]}x{ring.images.shape[1]} {ring.images.dtype} frames, "
                f"the recording was opened for {self.width}x{self.height} {self.dtype}")
        if self._camera_clock is None:
            self._camera_clock = bool(ring.camera_clock)
        missed0 = reader.missed
        batch = reader.read(ring.capacity if max_frames is None else max_frames)
        lost = reader.missed - missed0
        n = len(batch)
        written = 0
        if n:
            if self._staging.shape[0] < n:
                self._staging = np.empty((max(n, 2 * self._staging.shape[0]), self.height, self.width), self.dtype)
            buf = self._staging[:n]
            _gather(ring.images, int(batch.slots[0]), buf)
            # frames the producer overwrote while we copied are torn: drop them, never store them
            damaged = reader.release(batch)
            lost += damaged
            if damaged < n:
                self._append(buf[damaged:], batch.frame_ids[damaged:], batch.timestamps_ns[damaged:])
                written = n - damaged
        self.dropped += lost
        self.camera_dropped = int(ring.camera_dropped) + self._noted_camera_drops
        self.maybe_flush()
        return written

    def maybe_flush(self) -> bool:
        """Flush if the flush interval has passed; True if it flushed."""
        if time.monotonic() - self._last_flush >= self.settings.flush_interval_s:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Make everything written so far durable against a killed process."""
        self._require_open()
        self._write_pending()
        self._log_drops()
        self._update_counters()
        self._file.flush()
        self.flushed_frames = self.frames_written
        self._last_flush = time.monotonic()
        self._check_space()

    def _check_space(self) -> None:
        limit = self.settings.min_free_mb * 2**20
        if not limit:
            return
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return
        if free < limit:
            self._failed = DeviceError(
                f"{self.path}: disk nearly full ({free / 2**20:.0f} MiB free, need {limit / 2**20:.0f} MiB: "
                f"min_free_mb); stopped recording, the file holds the {self.frames_written} frames written so far")
            self._log(str(self._failed))  # the file's own log keeps it
            raise self._failed  # not logged here: whoever catches it says it (the run's "run stopping")

    def note_camera_drops(self, n: int) -> None:
        """Count frames the camera lost that the ring did not see (e.g. SDK skip counters)."""
        self._noted_camera_drops += int(n)
        self.camera_dropped += int(n)

    # -- internals -------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._file is None:
            raise StateError(f"{self.path}: recorder is not open")
        if self._failed is not None:
            raise self._failed

    def _append(self, images: np.ndarray, frame_ids: np.ndarray, timestamps_ns: np.ndarray) -> None:
        if self._t0_ns is None:
            self._t0_ns = int(timestamps_ns[0])
            self._file.attrs.modify("user:time offset ns", np.int64(self._t0_ns))
        n0 = self.frames_written
        n1 = n0 + images.shape[0]
        ds = self._ds
        try:
            for name in ("image", "frame", "time", "index"):
                ds[name].resize(n1, axis=0)
            if self._direct:
                self._write_chunks(images, n0)
            else:
                ds["image"][n0:n1] = images
            ds["frame"][n0:n1] = frame_ids
            # float64 seconds since the first frame: exact back to the ns (see module docstring)
            ds["time"][n0:n1] = (timestamps_ns - self._t0_ns) / 1e9
            ds["index"][n0:n1] = np.arange(n0 + 1, n1 + 1, dtype=np.int64)
        except OSError as err:
            raise MimlsortError(f"{self.path}: writing frames {n0}..{n1 - 1} failed: {err}") from err
        self.frames_written = n1
        self._last_id = int(frame_ids[-1])

    def _write_chunks(self, images: np.ndarray, pos: int) -> None:
        """Uncompressed images go to the file as whole chunks, bypassing HDF5's chunk cache (one
        copy less); the incomplete last chunk waits in ``_pending`` until it fills or a flush
        writes it as it is."""
        c = self.chunk_frames
        dset = self._ds["image"].id
        pend = self._pending
        i, k = 0, images.shape[0]
        while i < k:
            off = pos % c
            if off == 0 and k - i >= c:
                block = np.ascontiguousarray(images[i:i + c])
                dset.write_direct_chunk((pos, 0, 0), block)
                i += c
                pos += c
                continue
            take = min(c - off, k - i)
            pend[off:off + take] = images[i:i + take]
            i += take
            pos += take
            if off + take == c:
                dset.write_direct_chunk((pos - c, 0, 0), pend)

    def _write_pending(self) -> None:
        if not self._direct:
            return
        n = self.frames_written
        p = n % self.chunk_frames
        if p:
            # through the chunk cache: HDF5 fills the rest of the chunk; the direct write that
            # completes it later replaces the whole chunk in place
            self._ds["image"][n - p:n] = self._pending[:p]

    def _log(self, text: str) -> None:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} {text}"
        lines = [line[i:i + LOG_LINE_MAX] for i in range(0, len(line), LOG_LINE_MAX)]
        ds = self._log_ds
        n = ds.shape[0]
        ds.resize(n + len(lines), axis=0)
        ds[n:] = lines

    def _log_drops(self) -> None:
        # one line per flush at most, so that a recorder far behind does not flood its own log
        new = self.dropped - self._dropped_logged
        if new:
            log.warning("%s: recorder fell behind, %d frames lost (%d in all)", self.path, new, self.dropped)
            self._log(f"recorder fell behind: {new} frames lost before frame id {self._last_id} ({self.dropped} in all)")
            self._dropped_logged = self.dropped

    def _update_counters(self) -> None:
        a = self._file.attrs
        # modify in place (same type and shape): no attribute churn in the object header per flush
        a.modify("experiment:event count", np.int64(self.frames_written))
        a.modify("user:recorder dropped frames", np.int64(self.dropped))
        a.modify("user:camera dropped frames", np.int64(self.camera_dropped))
        a.modify("user:camera clock", bool(self._camera_clock))

    def _write_metadata(self) -> None:
        now = _dt.datetime.now()
        meta: dict[str, Any] = {
            "experiment:date": now.strftime("%Y-%m-%d"),
            "experiment:time": now.strftime("%H:%M:%S"),
            "experiment:timestamp": now.timestamp(),
            "experiment:event count": np.int64(0),
            "experiment:run index": np.int64(1),
            "experiment:run identifier": f"mimlsort-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}",
            "imaging:roi size x": np.int64(self.width),
            "imaging:roi size y": np.int64(self.height),
            # a camera without ROI offsets (or one that does not say) reads from the sensor's origin
            "imaging:roi position x": np.int64(0),
            "imaging:roi position y": np.int64(0),
            "setup:chip region": "channel",
            # with the commit, as the event files: the simulator's frames and the recorder's
            # layout change between commits of one version too
            "setup:software version": software_version(),
            "setup:module composition": "mimlsort",
            "setup:identifier": "mimlsort",
            "user:bit depth": np.int64(self.bit_depth),
            "user:time offset ns": np.int64(0),
            "user:camera clock": bool(self._camera_clock),
            "user:recorder dropped frames": np.int64(0),
            "user:camera dropped frames": np.int64(0),
        }
        if self.pixel_size_um > 0:
            meta["imaging:pixel size"] = self.pixel_size_um
        if self.fps > 0:
            meta["imaging:frame rate"] = self.fps
        meta.update(self.metadata)
        if "setup:flow rate" not in meta and "setup:flow rate sample" in meta and "setup:flow rate sheath" in meta:
            meta["setup:flow rate"] = float(meta["setup:flow rate sample"]) + float(meta["setup:flow rate sheath"])
        meta.setdefault("experiment:sample", "unknown")
        for key, value in meta.items():
            self._file.attrs[key] = value
        self.missing_metadata = tuple(k for k in REQUIRED_METADATA if k not in meta)
        if self.missing_metadata:
            log.info("%s: metadata not known to the recorder (pass them in metadata=): %s",
                     self.path, ", ".join(self.missing_metadata))


def _gather(images: np.ndarray, first_slot: int, out: np.ndarray) -> None:
    """Copy ``len(out)`` consecutive ring slots starting at ``first_slot`` (wrapping) into ``out``.

    Two slice copies instead of a fancy-index gather: half the time per frame.
    """
    n = out.shape[0]
    k = min(n, images.shape[0] - first_slot)
    out[:k] = images[first_slot:first_slot + k]
    if k < n:
        out[k:] = images[:n - k]


# -- benchmark ------------------------------------------------------------------------------------
def _bench_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Camera-like frames: channel walls, an illumination gradient, shot noise and moving cells.

    Noise matters: it is what makes real frames compress poorly, so smooth test images would
    flatter compression.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = 110.0 + 30.0 * xx / width
    wall = max(2, height // 5)
    bg[:wall] = 55.0
    bg[-wall:] = 55.0
    out = np.empty((n, height, width), np.uint8)
    for i in range(n):
        f = bg + rng.normal(0.0, 2.5, (height, width)).astype(np.float32)
        for k in range(3):
            cx = (i * 7 + k * width // 3) % width
            inside = ((xx - cx) / 9.0) ** 2 + ((yy - height / 2) / 7.0) ** 2 < 1.0
            f[inside] -= 35.0
        out[i] = np.clip(f, 0, 255)
    return out


def _bench_one(directory: str, n_frames: int, compression: str, pool: np.ndarray) -> dict[str, float]:
    from acquisition.frame import FrameRing

    _, height, width = pool.shape
    batch = 256
    ring = FrameRing(4 * batch, height, width, np.uint8)
    reader = ring.reader("recorder")
    path = Path(directory) / f"bench-{compression}.rtdc"
    spent = 0.0
    written = 0
    rec = RawRecorder(path, width, height, "uint8", pixel_size_um=0.34, fps=4000.0,
                      settings=RecorderSettings(compression=compression, overwrite=True))
    t = time.perf_counter()
    rec.open()
    spent += time.perf_counter() - t
    seq = 0
    while seq < n_frames:
        k = min(batch, n_frames - seq)
        for j in range(k):  # the producer's work is not the recorder's: outside the timed part
            ring.push(pool[(seq + j) % len(pool)], seq + j, (seq + j) * 250_000)
        seq += k
        t = time.perf_counter()
        written += rec.write_from_ring(reader, batch)
        spent += time.perf_counter() - t
    t = time.perf_counter()
    rec.close()
    spent += time.perf_counter() - t
    size = path.stat().st_size
    path.unlink()
    raw_mb = written * height * width / 1e6
    return {
        "frames_per_s": written / spent,
        "mb_per_s": raw_mb / spent,
        "file_mb": size / 1e6,
        "ratio": raw_mb * 1e6 / size,
        "dropped": rec.dropped,
    }


def bench_recording(n_frames: int | None = None) -> dict[str, Any]:
    """Frames/s and MB/s of ring -> ``.rtdc`` for 256x96 uint8 frames, per compression choice.

    The flat dict leads with the default (uncompressed) figures; ``zstd_*`` gives the alternative
    on the same frames. Files go to a temporary folder that is removed afterwards.
    """
    n = int(n_frames or 20_000)
    if n < 1:
        raise ConfigError("bench.frames", f"must be >= 1, got {n}")
    pool = _bench_frames(256, 96, 256)
    out: dict[str, Any] = {"frames": n, "width": 256, "height": 96, "compression": "none"}
    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-") as d:
        for comp in ("none", "zstd"):
            res = _bench_one(d, n, comp, pool)
            prefix = "" if comp == "none" else f"{comp}_"
            for k, v in res.items():
                out[prefix + k] = round(v, 2) if isinstance(v, float) else v
    return out
