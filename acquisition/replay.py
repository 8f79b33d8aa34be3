"""The ``replay`` camera: recordings played back frame by frame, with their frame ids and times.

Sources (chosen by what the path is):

- ``.rtdc`` / ``.h5`` / ``.hdf5``: RT-DC files, ``events/image`` with ``events/frame`` and
  ``events/time`` (every-frame recordings of mimlsort, dcnum and CytoShot). Event files of
  ShapeIn/dcnum hold one image per *event*; several events of one frame repeat that frame's image,
  so consecutive events with the same frame id are played once (``skip_duplicate_frames``).
- ``.tif`` / ``.tiff``: multi-page TIFF, one page per frame.
- a folder: one image per file (png, tif, bmp, jpg), in natural name order (``img2`` before
  ``img10``); hidden files (``._img1.png``, macOS's twins on foreign disks) are left out. When
  every name ends in a number, those numbers are the frame ids (so gaps show as drops); otherwise
  frames are numbered from 0.
- anything else OpenCV's video reader opens (AVI, MKV, MP4 …); colour video becomes grey.

Frames are uint8 or uint16. Pixel size and frame rate come from the file when it says (RT-DC
metadata; a video container's frame rate; an RT-DC file's frame ids and times), else from the
settings, else opening fails with a ConfigError that says what to pass. Frame times are the
recording's: RT-DC ``time`` (plus mimlsort's ``user:time offset ns``), otherwise ``frame id / fps``;
``CameraInfo.camera_clock`` is True because they are the source's clock, not the host's.

Every problem with the content (unreadable file, truncated data, a frame of another size or
dtype) is a DataFormatError that names the file and the frame.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acquisition import _runs as runs
from acquisition.camera import Camera, CameraInfo, CameraState, GrabResult
from acquisition.frame import FrameRing
from mimlsort import realtime
from mimlsort.errors import ConfigError, DataFormatError, StateError
from mimlsort.inputs import attr_number, check_input, looked_for, open_hdf5, permission_denied
from mimlsort.settings import require

log = logging.getLogger(__name__)

RTDC_SUFFIXES = (".rtdc", ".h5", ".hdf5")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
#: names of video files (anything else that is no RT-DC, TIFF or image is tried as a video too)
VIDEO_SUFFIXES = (".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".wmv", ".mpg", ".mpeg", ".ogv")

#: frames read from the file per block (one HDF5 read / one TIFF call), then handed out one by one
BLOCK_FRAMES = 64


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """``start_frame``/``stop_frame`` index frames in play order (after duplicate skipping), stop
    exclusive. ``realtime`` paces frames at the recorded times divided by ``speed``; otherwise they
    come as fast as they are asked for. ``loop`` starts over at the end, with frame ids and times
    continuing to increase (so that trackers and rings see one continuous stream)."""

    path: str = ""  # recording: .rtdc, multi-page .tif, video (.avi …) or a folder of images
    pixel_size_um: float | None = None  # µm per pixel, used when the recording does not say
    fps: float | None = None  # frame rate, used when the recording does not say (and over a video container's rate)
    loop: bool = False  # start over at the end (ids and times keep increasing)
    realtime: bool = False  # pace frames at their recorded times instead of as fast as asked for
    speed: float = 1.0  # realtime: playback speed factor (2 = twice as fast)
    start_frame: int = 0  # first frame to play (index in play order)
    stop_frame: int | None = None  # play up to this frame (exclusive); unset: to the end
    skip_duplicate_frames: bool = True  # .rtdc event files: play a frame shared by several events once
    bit_depth: int = 0  # bits the grey levels use (a 12-bit camera's TIFFs: 12); 0: what the recording says, else its dtype's (16 for uint16)

    def __post_init__(self) -> None:
        # finite: an infinite frame rate gave transit times of 0 and speeds of 4e9 mm/s
        require(self.pixel_size_um is None or 0 < self.pixel_size_um < math.inf, "pixel_size_um",
                f"must be > 0 and finite, got {self.pixel_size_um}")
        require(self.fps is None or 0 < self.fps < math.inf, "fps", f"must be > 0 and finite, got {self.fps}")
        require(0 < self.speed < math.inf, "speed", f"must be > 0 and finite, got {self.speed}")
        require(self.bit_depth == 0 or 8 <= self.bit_depth <= 16, "bit_depth",
                f"must be 0 (the recording's) or 8..16, got {self.bit_depth}")
        require(self.start_frame >= 0, "start_frame", f"must be >= 0, got {self.start_frame}")
        require(self.stop_frame is None or self.stop_frame > self.start_frame, "stop_frame",
                f"must be > start_frame ({self.start_frame}), got {self.stop_frame}")


# -- sources ----------------------------------------------------------------------------------------
class _Source:
    """One recording, random access by play index in blocks.

    Subclasses set ``n``, ``height``, ``width``, ``dtype`` and optionally ``fps``,
    ``pixel_size_um``, ``bit_depth``, ``frame_ids`` (int64[n]) and ``times_ns`` (int64[n]), and
    implement :meth:`read_block`.
    """

    kind = "?"
    sequential = False  # True when only forward reading is efficient (video)
    #: the recording's frame rate is a playback rate its container carries (video), not the
    #: camera's: a high-speed camera's AVI often says 25, 30 or 100 fps. A given one wins
    nominal_fps = False

    def __init__(self, path: Path):
        self.path = path
        self.n = 0
        self.height = self.width = 0
        self.dtype = np.dtype(np.uint8)
        self.bit_depth = 0
        self.fps: float | None = None
        self.pixel_size_um: float | None = None
        self.frame_ids: np.ndarray | None = None
        self.times_ns: np.ndarray | None = None
        self.model = ""
        self.metadata: dict[str, Any] = {}  # the recording's own "section:key" metadata, if it has any

    def read_block(self, i0: int, out: np.ndarray) -> int:
        """Fill ``out`` (k, H, W) with frames ``i0 .. i0+k-1`` in play order; returns how many it
        filled: fewer where the source learns its true end while reading (then ``n`` is reduced
        to it), or stops before a damaged frame (the next read starting there raises)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def error(self, frame: int | str, problem: str) -> DataFormatError:
        return DataFormatError(f"{self.path}: frame {frame}: {problem}")

    def check_frame(self, index: int, img: np.ndarray) -> np.ndarray:
        """``img`` as a 2-D array of the recording's dtype and shape, or a DataFormatError."""
        img = _to_grey(img, lambda p: self.error(index, p))
        if img.shape != (self.height, self.width):
            raise self.error(index, f"size {img.shape[1]}x{img.shape[0]} differs from the first frame's "
                                    f"{self.width}x{self.height} (WxH)")
        if img.dtype != self.dtype:
            raise self.error(index, f"dtype {img.dtype} differs from the first frame's {self.dtype}")
        return img


def _to_grey(img: np.ndarray | None, err) -> np.ndarray:
    if img is None:
        raise err("cannot be decoded (corrupt or truncated)")
    if img.dtype not in (np.uint8, np.uint16):
        raise err(f"dtype {img.dtype} is not supported (uint8 or uint16)")
    if img.ndim == 3:
        if img.shape[2] == 1:
            return img[:, :, 0]
        if img.shape[2] in (3, 4):
            b = img[:, :, 0]
            # grey stored as colour (most codecs and many TIFF/PNG writers): take one channel
            # unchanged rather than re-weighting it, so grey content stays bit-exact
            if np.array_equal(b, img[:, :, 1]) and np.array_equal(b, img[:, :, 2]):
                return np.ascontiguousarray(b)
            import cv2

            code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            return cv2.cvtColor(img, code)
    if img.ndim != 2:
        raise err(f"shape {img.shape} is not an image")
    return img


class _RtdcSource(_Source):
    kind = "rtdc"

    def __init__(self, path: Path, skip_duplicates: bool):
        super().__init__(path)
        import hdf5plugin  # noqa: F401  (registers the Zstd/LZ4 filters before h5py reads)
        import h5py

        if _held_by_a_writer(path):
            # its last flush is all a reader sees: a recording in progress replayed as a complete,
            # shorter one ("completed: the source ended"), its later frames never tracked
            raise DataFormatError(f"{path}: still open for writing by another program (a recording in progress?): "
                                  f"its frames are not all in the file yet; replay it once its recorder has closed it")
        try:
            self.h5 = open_hdf5(path)
        except OSError as err:
            raise DataFormatError(f"{path}: {_hdf5_refusal(err)}") from err
        try:
            self._setup(skip_duplicates)
        except BaseException:
            self.h5.close()
            raise

    def _setup(self, skip_duplicates: bool) -> None:
        import h5py

        path, h5 = self.path, self.h5
        ev = h5.get("events")
        img = ev.get("image") if isinstance(ev, h5py.Group) else None
        if not isinstance(img, h5py.Dataset):
            raise DataFormatError(f"{path}: no events/image dataset (the file holds no frames to replay)")
        if img.ndim != 3:
            raise DataFormatError(f"{path}: events/image has shape {img.shape}, expected (frames, height, width)")
        if img.dtype.kind != "u" or img.dtype.itemsize not in (1, 2):
            raise DataFormatError(f"{path}: events/image has dtype {img.dtype}; replay reads uint8 or uint16")
        self.img = img
        n_all, self.height, self.width = (int(v) for v in img.shape)
        self.dtype = np.dtype(np.uint8 if img.dtype.itemsize == 1 else np.uint16)  # native byte order
        attrs = h5.attrs

        def scalar(name: str) -> np.ndarray | None:
            ds = ev.get(name)
            if ds is None:
                return None
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.shape[0] != n_all:
                raise DataFormatError(f"{path}: events/{name} has shape {getattr(ds, 'shape', None)}, "
                                      f"expected ({n_all},) like events/image")
            try:
                a = ds[:]
            except OSError as err:
                raise DataFormatError(f"{path}: events/{name} cannot be read ({err})") from err
            if a.dtype.kind in "iu":
                return a.astype(np.int64)  # integer ids stay exact (no float round trip)
            if a.dtype.kind != "f":
                raise DataFormatError(f"{path}: events/{name} has dtype {a.dtype}, expected numbers")
            a = a.astype(np.float64)
            bad = np.flatnonzero(~np.isfinite(a))
            if bad.size:
                raise DataFormatError(f"{path}: frame {int(bad[0])}: events/{name} is {a[bad[0]]}")
            return a

        frames = scalar("frame")
        times = scalar("time")
        if frames is not None and frames.dtype.kind == "f":
            bad = np.flatnonzero(frames != np.round(frames))
            if bad.size:
                raise DataFormatError(f"{path}: frame {int(bad[0])}: events/frame is {frames[bad[0]]}, not a whole number")
        fps = _attr_float(attrs, "imaging:frame rate", path)
        if fps is None and frames is not None and times is not None and n_all >= 2:
            # CytoShot files may lack the frame rate; their frame ids and times say it
            df = float(frames[-1] - frames[0])
            dt = float(times[-1] - times[0])
            if df > 0 and dt > 0:
                fps = float(df / dt)
                log.info("%s: no imaging:frame rate; %.6g fps from events/frame and events/time", path, fps)
        self.fps = fps
        self.pixel_size_um = _attr_float(attrs, "imaging:pixel size", path)
        keep = np.arange(n_all)
        if skip_duplicates and frames is not None and n_all > 1:
            keep = keep[np.concatenate(([True], frames[1:] != frames[:-1]))]
        self.rows = keep
        self.n = int(keep.size)
        if frames is not None:
            self.frame_ids = frames[keep].astype(np.int64)
        if times is not None:
            offset = _attr_int(attrs, "user:time offset ns", path, -2**62, 2**62)
            # round, not truncate: float seconds * 1e9 lands within 1e-3 ns of the stored integer
            self.times_ns = offset + np.round(times[keep].astype(np.float64) * 1e9).astype(np.int64)
        self.bit_depth = _attr_int(attrs, "user:bit depth", path, 0, 8 * self.dtype.itemsize) or 8 * self.dtype.itemsize
        self.model = str(_attr_str(attrs, "setup:software version") or "rtdc")
        self.metadata = {str(k): v for k, v in attrs.items()}
        self._contiguous = bool(self.n == 0 or (keep[-1] - keep[0] + 1 == self.n))
        self._fd = -1  # the file, for frames stored as plain bytes in it (read with preadv, not h5py)
        self._offsets = self._frame_offsets()
        if self._offsets is not None:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def _frame_offsets(self) -> np.ndarray | None:
        """The file offset of every stored frame when ``events/image`` holds them as plain bytes
        (no filters, native byte order, whole frames per chunk, all of it written): a block is then
        read with one ``preadv`` per contiguous run, which releases the GIL — h5py holds it through
        every read (in ``bench sorting``, 8 kHz, ~0.2 core of GIL time beside the sort path). None
        otherwise: h5py reads them (compressed recordings, other layouts)."""
        import h5py

        img = self.img
        if self.n == 0 or img.dtype.newbyteorder("=") != img.dtype or not hasattr(os, "preadv"):
            return None
        try:
            dcpl = img.id.get_create_plist()
            if dcpl.get_nfilters() or dcpl.get_external_count():
                return None
            n_all, h, w = img.shape
            frame = h * w * img.dtype.itemsize
            layout = dcpl.get_layout()
            if layout == h5py.h5d.CONTIGUOUS:
                start = img.id.get_offset()
                if start is None:
                    return None  # never written
                # (this and the chunks' offsets are file positions, a user block included)
                offsets = start + np.arange(n_all, dtype=np.int64) * frame
            elif layout == h5py.h5d.CHUNKED:
                rows = img.chunks[0]
                if tuple(img.chunks[1:]) != (h, w):
                    return None
                offsets = np.full(n_all, -1, np.int64)
                for k in range(img.id.get_num_chunks()):
                    info = img.id.get_chunk_info(k)
                    r0 = int(info.chunk_offset[0])
                    r1 = min(r0 + rows, n_all)
                    if info.size != rows * frame:
                        return None
                    offsets[r0:r1] = info.byte_offset + np.arange(r1 - r0, dtype=np.int64) * frame
                if (offsets < 0).any():
                    return None  # a chunk was never written: h5py gives its fill value
            else:
                return None
        except (OSError, ValueError, RuntimeError, AttributeError):
            return None  # an HDF5 build without these calls, or damage: h5py reads it and says so
        if int(offsets.max()) + frame > os.path.getsize(self.path):
            return None  # truncated: h5py's read names the first frame it cannot read
        return offsets

    def read_block(self, i0: int, out: np.ndarray) -> int:
        k = out.shape[0]
        rows = self.rows[i0:i0 + k]
        if self._fd >= 0:
            return self._read_plain(i0, rows, out)
        try:
            if self._contiguous:
                self.img.read_direct(out, np.s_[int(rows[0]):int(rows[-1]) + 1], np.s_[0:k])
            else:
                out[:] = self.img[rows]
        except (OSError, ValueError) as err:
            # frame by frame: hand out the good frames before the damaged one, and name it
            for j, r in enumerate(rows):
                try:
                    self.img.read_direct(out, np.s_[int(r):int(r) + 1], np.s_[j:j + 1])
                except (OSError, ValueError) as err2:
                    if j:
                        return j
                    raise self.error(i0, f"events/image cannot be read (corrupt or truncated file: {err2})") from err2
            raise self.error(f"{i0}..{i0 + k - 1}", f"events/image cannot be read ({err})") from err
        return k

    def _read_plain(self, i0: int, rows: np.ndarray, out: np.ndarray) -> int:
        return _pread_frames(self._fd, self._offsets[rows], out, self.error, i0, "events/image ")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.h5.close()


def _hdf5_refusal(err: OSError) -> str:
    """Why HDF5 would not open a file, in words: a copy cut short read "not a readable HDF5/.rtdc
    file (Unable to synchronously open file (truncated file: eof = 59120160, sblock->base_addr =
    0, stored_eof = 98533600))"."""
    m = re.search(r"truncated file: eof = (\d+), sblock->base_addr = \d+, stored_eof = (\d+)", str(err))
    if m:
        have, want = int(m.group(1)), int(m.group(2))
        return (f"the file is cut short: it holds {have:,} of the {want:,} bytes its HDF5 header gives (a copy or "
                f"download that did not finish?); HDF5 cannot open it: copy it again from the original")
    return f"not a readable HDF5/.rtdc file ({err})"


def _held_by_a_writer(path: Path) -> bool:
    """Whether a process on this machine has the HDF5 file open for writing: HDF5 holds an
    exclusive ``flock`` on a file it writes (mimlsort's raw recorder, h5py's default), also while
    ``open_hdf5``, which takes no lock, reads it. False where that cannot be told (no ``fcntl``, a
    file system without locks, a writer that turned locking off or writes in SWMR mode)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False  # the open that follows says what is wrong
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # (releases the shared lock too)
    return False


def _attr_float(attrs: Any, key: str, path: Path) -> float | None:
    """The metadata number ``key`` > 0, or None where it is missing or 0 (the caller derives it
    or takes the settings'); one that is text, NaN, infinite or below 0 is said and passed over,
    so that the settings (--fps, --pixel-size) can stand in for it."""
    v = attrs.get(key)
    if v is None:
        return None
    f = attr_number(v)
    if f == 0:
        return None
    if not (0 < f < math.inf):
        text = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        log.warning("%s: '%s' is %r, not a number > 0: passed over (correct it in the file's metadata, or give "
                    "the value in the replay settings)", path, key, text)
        return None
    return f


def _event_file_sign(attrs: Any, ev: Any, frames: np.ndarray | None) -> str:
    """What shows an RT-DC file to hold one image per event (mimlsort's event writer, ShapeIn,
    dcnum, CytoShot), or "" for a recording of every frame (mimlsort's recorder, a raw CytoShot
    or dcnum input): those hold images, frame numbers and times, nothing segmented, and their
    frame numbers step by 1 with the odd gap where frames were dropped."""
    if "user:mimlsort format" in attrs:
        return "mimlsort's event writer wrote it"
    for name in ("mask", "contour", "pos_x"):
        if name in ev:
            return f"it holds events/{name} of segmented events"
    if "user:recorder dropped frames" in attrs and not any(str(k).startswith("pipeline:") for k in attrs):
        return ""  # mimlsort's recorder: every frame it got, however its camera numbered them (reanalyze's rule)
    if frames is not None and frames.size > 1 and frames.dtype == np.float32 and np.abs(frames).max() >= 2.0 ** 24:
        frames = None  # float32 ids this large collapse into repeats: they say nothing here
    if frames is not None and frames.size > 1:
        steps = np.diff(frames)
        if (steps == 0).any():
            return f"several images share frame {int(frames[1:][steps == 0][0])}"
        # a step of 2 throughout is a camera's or recorder's decimation, still frames to track;
        # events come as far apart as the cells (ShapeIn's shared file: 6 to 94 frames)
        step = float(np.median(steps))
        if step > 2:
            return f"its frame numbers step by {step:g} (median)"
    return ""


def event_file_sign(path: str | Path) -> str:
    """:func:`_event_file_sign` of the RT-DC file at ``path``, read before it is opened as a
    recording ("" for anything else); what opening checks next (times that must increase, a
    pixel size) is beside the point for a file that is no recording, and said first it hid this."""
    # before h5py reads: without the filters a Zstd-compressed column (CytoShot's, dcnum's) failed
    # to read, was taken for "no sign", and a command run in a fresh process tracked the event file
    import hdf5plugin  # noqa: F401
    import h5py

    from mimlsort.outputs import holds_hdf5

    path = Path(path)
    if not (path.is_file() and holds_hdf5(path)):
        return ""
    try:
        with open_hdf5(path) as f:
            ev = f.get("events")
            if not isinstance(ev, h5py.Group) or "image" not in ev or len(ev["image"]) == 0:
                return ""  # left to the opening to say what it lacks
            fr = ev.get("frame")
            frames = None
            if isinstance(fr, h5py.Dataset) and fr.ndim == 1 and fr.dtype.kind in "iuf":
                frames = fr[:]
                frames = frames.astype(np.int64) if frames.dtype.kind in "iu" else frames
            return _event_file_sign(dict(f.attrs), ev, frames)
    except OSError:
        return ""  # the opening says what is wrong with the file


def refuse_event_file(path: str | Path) -> None:
    """A DataFormatError when ``path`` is an event file: the tracker would take its images for
    consecutive frames and link the cells of different events into tracks that never were."""
    why = event_file_sign(path)
    if why:
        path = Path(path)
        raise DataFormatError(f"{path}: an event file ({why}), not a recording of every frame: tracking it would "
                              f"invent cells from images taken far apart; measure its events with `mimlsort reanalyze "
                              f"{path} --out EVENTS.rtdc`")


def _attr_int(attrs: Any, key: str, path: Path, lo: int, hi: int) -> int:
    """mimlsort's own whole-number attribute ``key`` (0 when absent), or a DataFormatError naming
    the file and key: a text, NaN or fractional value gave a bare ValueError from int()."""
    v = attrs.get(key)
    if v is None:
        return 0
    f = attr_number(v)
    if not (math.isfinite(f) and f == round(f) and lo <= f <= hi):
        text = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        raise DataFormatError(f"{path}: attribute '{key}' is {text!r}, not a whole number in {lo}..{hi}: "
                              f"correct or delete it (e.g. with h5py)")
    return int(v) if isinstance(v, (int, np.integer)) else int(f)


def _attr_str(attrs: Any, key: str) -> str | None:
    v = attrs.get(key)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return None if v is None else str(v)


class _TiffSource(_Source):
    kind = "tiff"

    def __init__(self, path: Path):
        super().__init__(path)
        import cv2

        self.cv2 = cv2
        try:
            self.n = int(cv2.imcount(str(path), cv2.IMREAD_UNCHANGED))
        except cv2.error as err:
            raise DataFormatError(f"{path}: not a readable TIFF ({err})") from err
        # OpenCV counts the pages whose directory it can reach and stops there without a word: a
        # file cut short replayed as a shorter recording. The pages before the break are played
        # (as a plain RT-DC file or a video cut short gives its frames), then the break is an error
        # naming the page, so the run ends errored and says the recording is incomplete
        self._broken: int | None = None
        brk = _tiff_break(path)
        if brk is not None:
            self._broken, self._why = brk
            self.n = self._broken + 1  # the broken page is where reading stops with the error
            log.warning("%s: truncated TIFF: page %d is not whole (%s); the %d pages before it play, then the "
                        "replay ends with an error", path, self._broken, self._why, self._broken)
        if self.n <= 0:
            raise DataFormatError(f"{path}: not a readable TIFF (no pages)")
        first = self._pages(0, 1)[0]
        first = _to_grey(first, lambda p: self.error(0, p))
        self.height, self.width = first.shape
        self.dtype = np.dtype(first.dtype)
        self.bit_depth = 8 * self.dtype.itemsize
        self.model = "tiff"
        # OpenCV reads a block from page i0 by walking the i0 pages before it, each block again:
        # a replay slowed down as it went (4,000 256x96 pages: 600 frames/s at the start, 70 at
        # the end; 37 s where the same frames as RT-DC take 0.3 s), quadratic in the length.
        # Pages stored as plain bytes are read where their directories say, as RT-DC's are
        self._fd, self._swap = -1, False
        pages = None if self._broken is not None else _tiff_grey_pages(path, self.n, self.height, self.width,
                                                                       self.dtype)
        self._offsets = None if pages is None else pages.plain_offsets(self.height * self.width * self.dtype.itemsize)
        # compressed pages (OpenCV writes LZW by default) are decoded from their strips: through
        # OpenCV they slowed down as the quadratic page walk does (45 frames/s by page 5,000)
        self._coded = pages if self._offsets is None else None
        if pages is not None:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            # ImageJ saves its stacks big-endian: 16-bit pages are swapped once read
            with open(path, "rb") as fh:
                order = "little" if fh.read(2) == b"II" else "big"
            self._swap = self.dtype.itemsize > 1 and order != sys.byteorder

    def _read_pages(self, i0: int, k: int) -> list[np.ndarray]:
        cv2 = self.cv2
        try:
            ok, pages = cv2.imreadmulti(str(self.path), start=i0, count=k, flags=cv2.IMREAD_UNCHANGED)
        except cv2.error as err:
            raise self.error(f"{i0}..{i0 + k - 1}", f"cannot be decoded ({err})") from err
        pages = list(pages) if ok else []
        if len(pages) < k:
            raise self.error(i0 + len(pages), f"cannot be decoded (corrupt or truncated; the file lists {self.n} pages)")
        return pages

    def _pages(self, i0: int, k: int) -> list[np.ndarray]:
        if self._broken is not None and i0 + k > self._broken:
            if i0 >= self._broken:
                raise self.error(self._broken, f"the file is truncated: this page is not whole ({self._why}); "
                                               f"the {self._broken} pages before it are")
            k = self._broken - i0
        return self._read_pages(i0, k)

    def read_block(self, i0: int, out: np.ndarray) -> int:
        if self._coded is not None:
            return self._read_coded(i0, out)
        if self._fd >= 0:
            return self._read_plain(i0, out)
        pages = self._pages(i0, out.shape[0])
        for j, page in enumerate(pages):
            try:
                out[j] = self.check_frame(i0 + j, page)
            except DataFormatError:
                if j:  # the pages before it play first (the block's were lost with it); the next read names it
                    return j
                raise
        return len(pages)

    def _read_plain(self, i0: int, out: np.ndarray) -> int:
        n = _pread_frames(self._fd, self._offsets[i0:i0 + out.shape[0]], out, self.error, i0, "")
        if self._swap:
            out[:n].byteswap(inplace=True)
        return n

    def _read_coded(self, i0: int, out: np.ndarray) -> int:
        from acquisition.tiffcodec import StripError, decode_strip, undo_predictor

        t = self._coded
        row = self.width * self.dtype.itemsize
        flat = out.reshape(out.shape[0], -1).view(np.uint8)
        for j in range(min(out.shape[0], self.n - i0)):
            page = i0 + j
            rps = t.rows_per_strip[page] * row
            try:
                for k, (at, count) in enumerate(zip(t.strips[page], t.counts[page])):
                    data = os.pread(self._fd, count, at)
                    if len(data) < count:
                        raise StripError("the file ends early")
                    decode_strip(t.compression[page], data, flat[j, k * rps:min((k + 1) * rps, flat.shape[1])])
            except (OSError, StripError) as err:
                if j:
                    return j  # the pages before it first, as a plain read does
                raise self.error(page, f"cannot be decoded (strip {k}: {err})") from err
            if self._swap:
                out[j].byteswap(inplace=True)
            if t.predictor[page] == 2:
                undo_predictor(out[j])
        return min(out.shape[0], self.n - i0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _pread_frames(fd: int, offsets: np.ndarray, out: np.ndarray, error, i0: int, what: str) -> int:
    """Frames ``out[j]`` read from ``offsets[j]`` of ``fd``, each run of adjacent frames in one
    ``preadv`` (no GIL); returns how many. At a read error or the file's end the frames before
    are handed out first; the next read starts at the damaged one and raises ``error(frame, why)``
    (``what``: the message's subject)."""
    k = len(offsets)
    flat = out.reshape(k, -1).view(np.uint8)
    frame = flat.shape[1]
    starts = [0, *(np.flatnonzero(np.diff(offsets) != frame) + 1).tolist(), k]
    for j, e in zip(starts[:-1], starts[1:]):
        try:
            got = os.preadv(fd, [flat[j:e]], int(offsets[j]))
        except OSError as err:
            got, why = 0, str(err)
        else:
            why = "the file ends early"  # (a TIFF's walk checked its length: it shrank since)
        if got < (e - j) * frame:
            done = j + got // frame
            if done:
                return done
            raise error(i0 + done, f"{what}cannot be read ({why})")
    return k


class _TiffCut(Exception):
    """A page of a TIFF that is not whole: ``page`` and why."""

    def __init__(self, page: int, why: str):
        super().__init__(why)
        self.page, self.why = page, why


class _TiffOdd(Exception):
    """A TIFF whose directories this walk cannot follow (no TIFF, an entry type it does not read,
    a loop): OpenCV decides."""


def _tiff_directories(path: Path, wanted: tuple[int, ...]):
    """(page, {tag: values}) of each page's directory along the file's chain, ``wanted`` tags
    only (SHORT, LONG or LONG8 values), with the file's size; :class:`_TiffCut` for a directory
    or value list past the end of the file, :class:`_TiffOdd` where the walk cannot go on."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            raise _TiffOdd
        e = "<" if head[:2] == b"II" else ">"
        magic = struct.unpack(e + "H", head[2:4])[0]
        if magic == 42:  # classic TIFF: 2-byte entry counts, 12-byte entries, 4-byte offsets
            off, cnt, ent, word = struct.unpack(e + "I", head[4:8])[0], "H", 12, "I"
        elif magic == 43 and len(head) == 16:  # BigTIFF: 8, 20, 8
            off, cnt, ent, word = struct.unpack(e + "Q", head[8:16])[0], "Q", 20, "Q"
        else:
            raise _TiffOdd
        csz, wsz = struct.calcsize(cnt), struct.calcsize(word)
        seen: set[int] = set()
        page = 0
        while off:
            if off in seen:
                raise _TiffOdd
            seen.add(off)
            if off + csz > size:
                raise _TiffCut(page, "its directory lies past the end of the file")
            fh.seek(off)
            m = struct.unpack(e + cnt, fh.read(csz))[0]
            if off + csz + m * ent + wsz > size:
                raise _TiffCut(page, "its directory is cut off")
            raw = fh.read(m * ent + wsz)
            tags: dict[int, tuple[int, ...]] = {}
            for j in range(m):
                t = raw[j * ent:(j + 1) * ent]
                tag, typ = struct.unpack(e + "HH", t[:4])
                if tag not in wanted:
                    continue
                fmt = {3: "H", 4: "I", 16: "Q"}.get(typ)
                if fmt is None:
                    raise _TiffOdd
                count = struct.unpack(e + word, t[4:4 + wsz])[0]
                nbytes = count * struct.calcsize(fmt)
                if nbytes <= wsz:
                    data = t[4 + wsz:4 + wsz + nbytes]
                else:
                    at = struct.unpack(e + word, t[4 + wsz:4 + 2 * wsz])[0]
                    if at + nbytes > size:
                        raise _TiffCut(page, "its list of pixel data lies past the end of the file")
                    fh.seek(at)
                    data = fh.read(nbytes)
                tags[tag] = struct.unpack(e + fmt * count, data)
            yield page, tags, size
            off = struct.unpack(e + word, raw[m * ent:m * ent + wsz])[0]
            page += 1


def _tiff_break(path: Path) -> tuple[int, str] | None:
    """(page, why) for the first page of a TIFF that is not whole: its directory or its pixel data
    end past the end of the file. None when every page the chain of directories lists is whole,
    or when this walk cannot tell (no TIFF, a compressed strip list of another type, a loop):
    OpenCV then decides as before."""
    try:
        for page, tags, size in _tiff_directories(path, (273, 279, 324, 325)):  # strip / tile offsets, byte counts
            offsets, counts = tags.get(273, tags.get(324, ())), tags.get(279, tags.get(325, ()))
            if any(o + c > size for o, c in zip(offsets, counts)):
                return page, "its pixel data end past the end of the file"
    except _TiffCut as cut:
        return cut.page, cut.why
    except _TiffOdd:
        return None
    return None


@dataclass(frozen=True, slots=True)
class _TiffPages:
    """Where each page of a TIFF of uniform grey pages keeps its strips, and how they are coded."""

    compression: tuple[int, ...]
    predictor: tuple[int, ...]
    rows_per_strip: tuple[int, ...]
    strips: tuple[tuple[int, ...], ...]
    counts: tuple[tuple[int, ...], ...]

    def plain_offsets(self, frame: int) -> np.ndarray | None:
        """Each page's offset when every page is plain bytes, its strips back to back."""
        if not hasattr(os, "preadv") or any(c != 1 for c in self.compression):
            return None
        for strips, counts in zip(self.strips, self.counts):
            if sum(counts) != frame or any(strips[i] + counts[i] != strips[i + 1] for i in range(len(strips) - 1)):
                return None
        return np.array([strips[0] for strips in self.strips], np.int64)


def _tiff_grey_pages(path: Path, n: int, height: int, width: int, dtype: np.dtype) -> _TiffPages | None:
    """The strips of each of the ``n`` pages of a TIFF when every one holds one grey sample of
    the first page's kind: ``dtype`` (BlackIsZero, unsigned, either byte order), ``width`` x
    ``height``, uncompressed or coded as :mod:`acquisition.tiffcodec` decodes (with or without
    the horizontal predictor). None otherwise (tiles, colour, pages that differ, another
    compression, an Orientation or FillOrder OpenCV applies, or a walk this cannot follow):
    OpenCV decodes those, and names what is wrong with a page."""
    from acquisition.tiffcodec import DECODED

    want = {256: (width,), 257: (height,), 258: (8 * dtype.itemsize,), 277: (1,)}
    # tags that may be left out, with the value a reader then takes
    default = {259: (1,), 262: (1,), 266: (1,), 274: (1,), 277: (1,), 278: (2**32 - 1,), 317: (1,), 339: (1,)}
    cols: tuple[list, ...] = ([], [], [], [], [])
    try:
        for page, tags, size in _tiff_directories(path, (256, 257, 258, 259, 262, 266, 273, 274, 277, 278, 279, 317,
                                                         322, 339)):
            if page >= n:
                return None
            if 322 in tags or any(tags.get(tag, default.get(tag)) != v for tag, v in want.items()):
                return None  # tiled, or not one grey sample of the first page's size and depth
            if tags.get(262, default[262]) != (1,) or tags.get(339, default[339]) != (1,):
                return None  # WhiteIsZero or a palette; signed or float samples
            if tags.get(266, default[266]) != (1,) or tags.get(274, default[274]) != (1,):
                # OpenCV reverses the bits of FillOrder 2 and mirrors or turns pages by their
                # Orientation (2: left-right, which reversed the flow): its frames, not the bytes
                return None
            (comp,), (pred,), (rps,) = (tags.get(t, default[t]) for t in (259, 317, 278))
            if comp not in DECODED or pred not in (1, 2) or (comp == 1 and pred != 1):
                return None
            strips, counts = tags.get(273, ()), tags.get(279, ())
            rps = min(max(rps, 1), height)
            if len(strips) != -(-height // rps) or len(strips) != len(counts):
                return None
            if any(o + c > size for o, c in zip(strips, counts)):
                return None
            for col, v in zip(cols, (comp, pred, rps, strips, counts)):
                col.append(v)
    except (_TiffCut, _TiffOdd):
        return None
    if len(cols[0]) != n:
        return None
    return _TiffPages(*(tuple(c) for c in cols))


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class _FolderSource(_Source):
    kind = "folder"

    def __init__(self, path: Path):
        super().__init__(path)
        import cv2

        self.cv2 = cv2
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        # hidden files are no frames: macOS leaves a "._" twin of every image it copies to a USB
        # stick or network share, which sorts first and stopped the replay at frame 0 as corrupt
        hidden = [p for p in files if p.name.startswith(".")]
        if hidden:
            files = [p for p in files if not p.name.startswith(".")]
            log.info("%s: %d hidden files left out (names beginning with '.', such as %s)", path, len(hidden),
                     min(hidden).name)
        if not files:
            raise DataFormatError(f"{path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files.sort(key=lambda p: _natural_key(p.name))
        self.files = files
        self.n = len(files)
        first = self._load(0)
        self.height, self.width = first.shape
        self.dtype = np.dtype(first.dtype)
        self.bit_depth = 8 * self.dtype.itemsize
        self.model = "image folder"
        numbers = [re.search(r"(\d+)$", p.stem) for p in files]
        if all(numbers):
            ids = np.array([int(m.group(1)) for m in numbers], dtype=np.int64)
            if self.n == 1 or np.all(np.diff(ids) > 0):
                self.frame_ids = ids

    def error(self, frame: int | str, problem: str) -> DataFormatError:
        name = self.files[frame].name if isinstance(frame, int) and 0 <= frame < len(self.files) else "?"
        return DataFormatError(f"{self.path}: frame {frame} ({name}): {problem}")

    def _load(self, i: int) -> np.ndarray:
        cv2 = self.cv2
        if not os.access(self.files[i], os.R_OK):  # OpenCV gives None, as for a corrupt file (~1 µs a file)
            raise self.error(i, permission_denied(self.files[i]))
        try:
            img = cv2.imread(str(self.files[i]), cv2.IMREAD_UNCHANGED)
        except cv2.error as err:
            raise self.error(i, f"cannot be decoded ({err})") from err
        return _to_grey(img, lambda p: self.error(i, p))

    def read_block(self, i0: int, out: np.ndarray) -> int:
        for j in range(out.shape[0]):
            try:
                out[j] = self.check_frame(i0 + j, self._load(i0 + j))
            except DataFormatError:
                if j:  # the images before it play first; the next read starts at it and says why
                    return j
                raise
        return out.shape[0]


class _VideoSource(_Source):
    kind = "video"
    sequential = True

    def __init__(self, path: Path):
        super().__init__(path)
        import cv2

        self.cv2 = cv2
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            self.cap.release()
            if path.suffix.lower() in VIDEO_SUFFIXES:
                # an MP4 whose recording or copy did not finish lacks the index written at its end
                # ("moov atom not found"): "not a recording replay can read" sent users looking
                # for another format
                raise DataFormatError(f"{path}: OpenCV cannot open this video: it is damaged, or cut short (an "
                                      f"MP4 or MOV whose recording or copy did not finish lacks the index written "
                                      f"at its end: copy it again, or repair it with a video tool), or in a coding "
                                      f"this OpenCV does not decode")
            raise DataFormatError(f"{path}: not a recording replay can read (no RT-DC, TIFF, image folder, "
                                  "or video OpenCV opens)")
        try:
            n = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
            fps = self.cap.get(cv2.CAP_PROP_FPS)
            ok, img = self.cap.read()
            if not ok:
                raise self.error(0, "cannot be decoded (empty, corrupt or truncated video)")
            first = _to_grey(img, lambda p: self.error(0, p))
        except BaseException:
            self.cap.release()
            raise
        self.height, self.width = first.shape
        self.dtype = np.dtype(first.dtype)
        self.bit_depth = 8 * self.dtype.itemsize
        self.n = int(n) if n and n > 0 else 0
        if self.n <= 0:
            self.cap.release()
            raise DataFormatError(f"{path}: the video does not say how many frames it holds")
        self.fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else None
        self.nominal_fps = True
        self.model = "video " + (self.cap.getBackendName() or "")
        self._next = 1  # index of the frame the next cap.read() returns
        self._failed: tuple[int, DataFormatError] | None = None  # where the video broke, said on the next read

    def _seek(self, i: int) -> bool:
        """Position so that the next read returns frame ``i``; False if the video ends before."""
        cv2 = self.cv2
        if i == self._next:
            return True
        if i < self._next:
            # rewinding by frame index is unreliable for inter-frame codecs: reopen and skip
            self.cap.release()
            self.cap = cv2.VideoCapture(str(self.path))
            self._next = 0
        while self._next < i:
            if self.cap.grab():
                self._next += 1
                continue
            # OpenCV moves past a frame it cannot decode: the frame was the video's end, or a
            # corrupt one, which a start_frame past it passes over (it stopped every replay there,
            # and the frames after it could not be replayed at all)
            bad = self._next
            self._next += 1
            if self._next == i:
                break  # the read of frame i says whether the video goes on
            if not self.cap.grab():
                self._next = bad
                self._ended(bad)
                return False
            self._next += 1
            log.warning("%s: frame %d cannot be decoded (corrupt); passed over on the way to frame %d", self.path,
                        bad, i)
        return True

    def _ended(self, i: int) -> None:
        """Reading frame ``i`` failed: a corrupt frame, a truncated file, or the true end of a
        video whose header only estimated its length (MKV, MP4 count from duration x fps)."""
        if self.cap.grab():  # a later frame decodes: frame i itself is bad
            raise self.error(i, f"cannot be decoded (corrupt frame); the frames after it play with "
                                f"camera.replay.start_frame = {i + 1} (--config)")
        short = self.n - i
        if short > max(3, self.n // 100):
            raise self.error(i, f"cannot be decoded: the video ends here but says it holds {self.n} frames "
                                "(truncated or corrupt file)")
        if short > 0:
            log.warning("%s: the video ends after %d frames; its header estimated %d", self.path, i, self.n)
        self.n = i

    def read_block(self, i0: int, out: np.ndarray) -> int:
        failed, self._failed = self._failed, None
        if failed is not None and failed[0] == i0:
            raise failed[1]
        if not self._seek(i0):
            return 0
        for j in range(out.shape[0]):
            ok, img = self.cap.read()
            if not ok:
                try:
                    self._ended(i0 + j)
                except DataFormatError as err:
                    if not j:
                        raise
                    # the frames before the break play first, as a TIFF's do; raising here lost
                    # them with the rest of the block (a cut AVI: 960 of its 999 whole frames)
                    self._failed = (i0 + j, err)
                return j
            out[j] = self.check_frame(i0 + j, img)
            self._next += 1
        return out.shape[0]

    def close(self) -> None:
        self.cap.release()


def _starts_as_tiff(path: Path) -> bool:
    """Whether ``path`` begins as a TIFF (classic or BigTIFF, either byte order) does."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
    except OSError:
        return False


def open_source(path: str | os.PathLike, skip_duplicates: bool = True) -> _Source:
    """The reader for the recording at ``path``, chosen by what it is."""
    p = Path(path)
    if not str(path):
        raise ConfigError("camera.replay.path", "no recording given")
    if not p.exists():
        raise ConfigError("camera.replay.path", f"{looked_for(p)} does not exist")
    check_input(p, folder=True, what="a recording")  # a named pipe blocked for ever; an unreadable file read as corrupt
    if p.is_dir():
        return _FolderSource(p)
    if p.stat().st_size == 0:
        # each reader had its own words for it ("file signature not found", "no pages", "no video
        # OpenCV opens"), none of which said that the file holds nothing
        raise DataFormatError(f"{p}: the file is empty (0 bytes): no frames to replay (a copy or a recording that "
                              f"never got its data?)")
    from mimlsort.outputs import holds_hdf5

    suffix = p.suffix.lower()
    # by what the file holds where its name says otherwise: an RT-DC recording renamed .avi was
    # "not a recording replay can read", while reanalyze, which reads it whatever its name, sent
    # the user back to replay it
    if suffix in RTDC_SUFFIXES or holds_hdf5(p):
        return _RtdcSource(p, skip_duplicates)
    if suffix in TIFF_SUFFIXES or _starts_as_tiff(p):
        return _TiffSource(p)
    if suffix in IMAGE_SUFFIXES:
        raise DataFormatError(f"{p}: a single image, not a recording (replay takes an RT-DC file, a TIFF stack, "
                              f"a video, or a folder of images: give {p.parent})")
    return _VideoSource(p)


# -- camera ---------------------------------------------------------------------------------------------
class ReplayCamera(Camera):
    """Plays a recording as a camera (see the module docstring for what it reads)."""

    backend = "replay"
    Settings = ReplaySettings

    @property
    def paced(self) -> bool:
        return bool(self.settings.realtime)


    @property
    def stated_pixel_size_um(self) -> float | None:
        """The pixel size the open recording states itself (None where it does not say)."""
        return self._src.pixel_size_um if self._src is not None else None

    @property
    def recorded_metadata(self) -> dict[str, Any]:
        """The open recording's own metadata (RT-DC ``"setup:flow rate"`` …; empty for video,
        TIFF and image folders), so a replay's event file describes the experiment recorded."""
        return dict(self._src.metadata) if self._src is not None else {}

    def __init__(self, settings: Any = None, *, flow_direction: str = "left-to-right"):
        super().__init__(settings, flow_direction=flow_direction)
        self._src: _Source | None = None
        self._block = np.empty((0, 0, 0), np.uint8)
        self._block_i0 = -1
        self.position = 0  # play index of the next frame (within start..stop)
        self.loops = 0
        self._res = np.zeros(runs.N_R, np.int64)
        self._max_level = 0  # the brightest grey level the stated bit depth allows (0: the dtype's, unchecked)
        self._depth_from = ""
        self._ts = realtime.scratch()

    # -- open / close ----------------------------------------------------------------------------
    def _do_open(self) -> CameraInfo:
        s = self.settings
        src = open_source(s.path, s.skip_duplicate_frames)
        try:
            info = self._configure(src)
        except BaseException:
            src.close()
            raise
        self._src = src
        return info

    def _configure(self, src: _Source) -> CameraInfo:
        s = self.settings
        turned = src.metadata.get("user:camera flow direction") or "left-to-right"
        turned = turned.decode(errors="replace") if isinstance(turned, bytes) else str(turned)
        if self.turns and turned != "left-to-right":
            # turned twice, the cells would flow the wrong way, and nothing would be tracked
            raise ConfigError("camera.flow_direction", f"{src.path} holds frames mimlsort turned already (cells flowed "
                              f"{turned} in the camera's image; here they flow left to right): leave "
                              f"camera.flow_direction at left-to-right, not {self.flow_direction}")
        if src.nominal_fps and src.fps is not None and s.fps is not None:
            if not math.isclose(src.fps, s.fps, rel_tol=1e-6):
                log.info("%s: its container says %g fps (a playback rate); the frame rate given, %g fps, is used",
                         src.path, src.fps, s.fps)
            fps = float(s.fps)
        else:
            fps = _pick(src.fps, s.fps, "fps", src.path)
            if src.nominal_fps and fps is not None and fps < 1000:
                log.warning("%s: the video's container says %g fps, used as the frame rate (times, speeds, transit); "
                            "a high-speed camera's video often carries a playback rate: give the camera's frame rate "
                            "(--fps, camera.replay.fps) if it recorded faster", src.path, fps)
        # the setting is for recordings that do not say: where both do, the run says which it
        # uses, in one line (`app.offline.pixel_size_in_use`), since camera.pixel_size_um overrides both
        px = src.pixel_size_um if src.pixel_size_um is not None else s.pixel_size_um
        missing = [key for key, v in (("pixel_size_um", px), ("fps", fps)) if v is None]
        if missing:
            what = {"pixel_size_um": ("pixel size", "--pixel-size"), "fps": ("frame rate", "--fps")}
            raise ConfigError(f"camera.replay.{missing[0]}",
                              f"{src.path} does not say its {' or '.join(what[m][0] for m in missing)}; "
                              f"set {' and '.join(missing)} in the replay settings "
                              f"({' and '.join(what[m][1] for m in missing)} on the command line)")
        if src.n == 0:
            raise DataFormatError(f"{src.path}: holds no frames (an empty recording): nothing to replay")
        stop = src.n if s.stop_frame is None else min(s.stop_frame, src.n)
        start = min(s.start_frame, stop)
        if s.start_frame > src.n:
            raise ConfigError("camera.replay.start_frame", f"{src.path} holds {src.n} frames, start_frame is {s.start_frame}")
        self._start, self._stop = start, stop
        ids = src.frame_ids if src.frame_ids is not None else np.arange(src.n, dtype=np.int64)
        if src.times_ns is not None:
            times = src.times_ns
        else:
            # frame id / fps: a recording's drops (id gaps) keep their place in time
            times = np.round(ids.astype(np.float64) * (1e9 / fps)).astype(np.int64)
        # times that stand still or run back gave transit times of 0 or below and speeds of 4e9 mm/s
        dt, did = np.diff(times[start:stop]), np.diff(ids[start:stop])
        bad = np.flatnonzero((dt < 0) | ((dt == 0) & (did != 0)))
        if bad.size:
            i = start + int(bad[0]) + 1
            raise DataFormatError(f"{src.path}: frame {i} (id {int(ids[i])}) is timed {times[i] / 1e6:.6g} ms, not after "
                                  f"the frame before it ({times[i - 1] / 1e6:.6g} ms): its times must increase")
        self._ids, self._times = ids, times
        self._fps = fps
        self._set_stop(stop)
        self.position = start
        self.loops = 0
        self._block = np.empty((min(BLOCK_FRAMES, max(1, stop - start)), src.height, src.width), src.dtype)
        self._block_i0 = -1
        self._block_n = 0
        if realtime.AVAILABLE:
            # load the grab loop's kernel now (an empty run), not while the first frames are due
            one = np.zeros(1, np.int64)
            runs.copy_run(self._block, 0, 0, 0, ids, times, 0, 0, np.empty((1, src.height, src.width), src.dtype), one,
                          one.copy(), one.copy(), one.copy(), True, 0, 0, 1.0, 0, self._ts, self._res.copy())
        log.info("replay %s (%s): %d frames %dx%d %s, %.6g fps, %.6g µm/px", src.path, src.kind, stop - start,
                 src.width, src.height, src.dtype, fps, px)
        return CameraInfo(
            backend=self.backend,
            model=src.model or src.kind,
            serial=str(src.path),
            width=src.width,
            height=src.height,
            dtype=src.dtype.name,
            bit_depth=self._bit_depth(src),
            fps=float(fps),
            pixel_size_um=float(px),
            camera_clock=True,
            id_modulus=0,
            frame_count=-1 if s.loop else stop - start,
            clock_rate=1.0 / s.speed if s.realtime else 0.0,
            offset=_roi_position(src.metadata),  # the recording's place on the sensor, into the replay's file
        )

    def _bit_depth(self, src) -> int:
        bits = 8 * src.dtype.itemsize
        want = self.settings.bit_depth
        if want and want > bits:
            raise ConfigError("camera.replay.bit_depth", f"is {want}, but {src.path} holds {src.dtype} frames "
                                                        f"({bits} bits)")
        depth = want or src.bit_depth or bits
        # grey levels above the range were taken as the stated depth's: thresholds scaled by it
        # 16x too low (a 12-bit camera's data shifted up to 16 bits) and 8-bit crops clipped white.
        # Checked on every block read (~0.6 µs a 256x96 frame, 0.3% of a replay's time), as a frame can break it anywhere
        self._max_level = (1 << depth) - 1 if depth < bits else 0
        self._depth_from = ("camera.replay.bit_depth (--bit-depth)" if want else "the file's user:bit depth")
        return depth

    def _set_stop(self, stop: int) -> None:
        self._stop = stop
        start = self._start
        if stop > start:
            # a loop continues ids and times one frame period after the last frame
            self._id_span = int(self._ids[stop - 1] - self._ids[start]) + 1
            self._t_span = int(self._times[stop - 1] - self._times[start]) + int(round(1e9 / self._fps))
        else:
            self._id_span = self._t_span = 0

    def _do_start(self) -> None:
        self.exhausted = self._stop <= self._start
        self._wall0: int | None = None

    def _do_close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

    # -- frames ----------------------------------------------------------------------------------
    def _do_grab(self, out: np.ndarray, timeout_s: float) -> GrabResult | None:
        while True:
            if self.exhausted:
                return None
            if self.position >= self._stop:
                if not self.settings.loop or self._stop <= self._start:
                    self.exhausted = True
                    return None
                self.position = self._start
                self.loops += 1
            i = self.position
            if self._block_i0 <= i < self._block_i0 + self._block_n or self._fill_block(i):
                break
            # the source ended before it said it would (video): _fill_block moved the stop here
        frame_id = int(self._ids[i]) + self.loops * self._id_span
        t_ns = int(self._times[i]) + self.loops * self._t_span
        if self.settings.realtime and not self._pace(t_ns, timeout_s):
            return None
        out[...] = self._block[i - self._block_i0]
        self.position = i + 1
        return GrabResult(frame_id, t_ns)

    def _do_grab_many(self, ring: FrameRing, max_frames: int, timeout_s: float) -> int | None:
        """Runs of frames copied, paced and published by one kernel without the GIL, up to the end
        of the block read from the source. The same frames, ids and times as :meth:`grab_into`."""
        if not realtime.AVAILABLE:
            return None
        if self.state is not CameraState.ACQUIRING:
            raise StateError(f"{self.backend} camera is not acquiring")
        s = self.settings
        deadline = time.monotonic_ns() + int(timeout_s * 1e9)
        res = self._res
        total = 0
        while total < max_frames and not self.exhausted:
            if self.position >= self._stop:
                if not s.loop or self._stop <= self._start:
                    self.exhausted = True
                    break
                self.position = self._start
                self.loops += 1
            i = self.position
            if not (self._block_i0 <= i < self._block_i0 + self._block_n) and not self._fill_block(i):
                continue  # the source ended early (video): _fill_block moved the stop
            t_off = self.loops * self._t_span
            if s.realtime and self._wall0 is None:
                self._wall0 = time.monotonic_ns() - int((int(self._times[i]) + t_off - self._times[self._start]) / s.speed)
            stop_at = min(self._block_i0 + self._block_n, self._stop, i + max_frames - total)
            runs.start_run(res, ring)
            runs.copy_run(self._block, self._block_i0, i, stop_at, self._ids, self._times, self.loops * self._id_span,
                          t_off, ring.images, ring.frame_ids, ring.timestamps_ns, ring.host_ns, ring._seq,
                          bool(s.realtime), self._wall0 or 0, int(self._times[self._start]), float(s.speed), deadline,
                          self._ts, res)
            n = runs.book_run(res, ring, self)
            self.position = int(res[runs.R_NEXT])
            total += n
            if res[runs.R_STOP] == runs.STOP_TIMEOUT:
                break
        if total == 0 and not self.exhausted:
            self.timeouts += 1
        return total

    def _fill_block(self, i: int) -> bool:
        k = min(self._block.shape[0], self._stop - i)
        got = self._src.read_block(i, self._block[:k])
        if self._max_level and got and int(self._block[:got].max()) > self._max_level:
            block = self._block[:got]
            j = int(np.flatnonzero(block.reshape(got, -1).max(axis=1) > self._max_level)[0])
            if j == 0:
                top = int(block[0].max())
                raise self._src.error(i, f"grey level {top} is above the {self._max_level.bit_length()}-bit range "
                                         f"(0..{self._max_level}) that {self._depth_from} states: give the bit depth "
                                         f"the frames use (16 where a camera's bits are shifted up to 16)")
            # the good frames before it still play; the next read starts at the bad frame and refuses it
            got = j
        self._block_i0, self._block_n = i, got
        if self._src.n < self._stop:
            self._set_stop(max(self._start, self._src.n))
        elif got == 0:  # a source must either deliver, end, or raise: never spin here
            raise self._src.error(i, "cannot be read")
        return got > 0

    def _pace(self, t_ns: int, timeout_s: float) -> bool:
        """Wait until the frame's recorded time (scaled by ``speed``) has come; False if that is
        further away than ``timeout_s`` (the grab then times out, as a camera's would)."""
        now = time.monotonic_ns()
        if self._wall0 is None:
            self._wall0 = now - int((t_ns - self._times[self._start]) / self.settings.speed)
        due = self._wall0 + int((t_ns - self._times[self._start]) / self.settings.speed)
        wait = (due - now) / 1e9
        if wait > timeout_s:
            time.sleep(max(0.0, timeout_s))
            return False
        if wait > 0:
            time.sleep(wait)
        return True


def _roi_position(meta: dict[str, Any]) -> tuple[int, int]:
    try:
        return int(meta.get("imaging:roi position x", 0)), int(meta.get("imaging:roi position y", 0))
    except (TypeError, ValueError):
        return 0, 0


def _pick(from_file: float | None, from_settings: float | None, key: str, path: Path) -> float | None:
    if from_file is not None:
        if from_settings is not None and not math.isclose(from_file, from_settings, rel_tol=1e-6):
            log.warning("%s says %s = %g; the setting %g is ignored", path, key, from_file, from_settings)
        return float(from_file)
    return None if from_settings is None else float(from_settings)
