"""``mimlsort bench camera``: frames/s a camera backend delivers into the ring and the tracker
consumes, with every lost frame accounted for.

On ``basler`` the pylon emulator plays a simulated channel from image files (``ImageFileMode``)
at 256x96. The camera thread grabs into the ring; the tracker thread tracks batches. At the end
the sensor is stopped and the queue drained into the ring, so the emulator's own
``Statistic_Total_Buffer_Count`` (summed over grab sessions, see ``BaslerCamera.grab_restarts``)
must equal what we account for:

    delivered into the ring + camera-side drops (frame-id gaps: skipped images + failed + lost,
    including the frames a grab session pylon ended held) + first frame id (frames before the
    first one we saw) + frames discarded at stop + empty buffers pylon cancelled when it ended
    a grab session (they are in its total, but no frames)

and on the ring side, frames tracked + missed by the tracker = delivered. ``unexplained`` is the
difference; it must be 0.

How the emulator reaches 5,000+ frames/s (measured on this 2-core machine, the grab loop alone):

* Frame-rate limit off (``fps = 0``, AcquisitionFrameRateEnable false). AcquisitionFrameRateAbs
  stops at 5,000 and the emulator adds its own production time to every period, so a limit
  delivers ~1/(1/fps + t): 4,400-4,600 frames/s for its test image, ~4,000 from image files at
  5,000 requested. Without the limit and with ExposureTimeAbs below 1 ms (from 1 ms on it sleeps
  in whole milliseconds: 1,000 µs gives ~860 frames/s) it makes frames as fast as it reads and
  decodes the files. Nothing paces it in between: DeviceLinkThroughputLimit, GevSCPD and
  GevSCFTD change nothing, and software triggers from a host thread at 5,500/s gave
  3,800-4,400 frames/s (overlapping triggers vanish without a count).
* BMP files. The emulator opens and decodes one file per frame in its own thread
  (``CamEmuImageAcqu``); PNGs written with OpenCV's adaptive row filters are un-filtered byte by
  byte (the "average" filter's loop dominated its profile): ~4,700 frames/s; unfiltered PNG
  ~7,300-8,400, BMP ~9,500-11,000, uncompressed TIFF ~6,700, compressed PNG 1,700-2,500. The
  number of files (16 to 2,000) makes no difference; the frames arrive pixel-exact.
* So above 5,000 frames/s the rate is the emulator's own free-run speed, which on 2 cores
  depends on the CPU the pipeline and everything else leave it (4,500-10,000+ here). The camera
  never waits for the host (``latest`` images): when it outruns the grab loop, the frames it
  drops are counted (``skipped_images``). The bench measures whether the pipeline keeps up with
  that, not with a fixed rate; ``emulator_fps`` is what was offered. After a grab session pylon
  ended (``grab_restarts``) the emulator plays its files from the first again.

The tracker is imported inside the function: this is a composition benchmark, and the
acquisition package itself does not depend on tracking.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from mimlsort.errors import ConfigError

WIDTH, HEIGHT = 256, 96
PIXEL_SIZE_UM = 0.68


def channel_frames(n: int, width: int = WIDTH, height: int = HEIGHT, fps: float = 5000.0, seed: int = 1):
    """``n`` frames of a simulated channel (``acquisition.synthetic`` when it is installed, else
    dark ellipses drifting over a flat background) and the synthetic truth (or ``None``)."""
    try:
        from acquisition.synthetic import SyntheticCamera, SyntheticSettings
    except ImportError:
        SyntheticCamera = None
    if SyntheticCamera is not None:
        settings = SyntheticSettings(width=width, height=height, fps=fps, duration_s=n / fps,
                                     pixel_size_um=PIXEL_SIZE_UM, seed=seed)
        frames = np.empty((n, height, width), np.uint8)
        with SyntheticCamera(settings) as cam:
            cam.start()
            k = 0
            while k < n:
                f = cam.read(1.0)
                if f is None:
                    break
                frames[k] = f.image
                k += 1
            cam.stop()
            return frames[:k], list(cam.truth)
    # a channel the tracker's geometry detection accepts: dark walls, a bright lumen that narrows
    # in the middle third (the constriction), one dark ellipse after another drifting through
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    bg = np.full((height, width), 60, np.uint8)
    mid = height / 2
    half = np.where((xx > width / 3) & (xx < 2 * width / 3), height * 0.2, height * 0.35)
    bg[np.abs(yy - mid) <= half] = 190
    frames = np.empty((n, height, width), np.uint8)
    x = -20.0
    for k in range(n):
        x = x + 2.0 if x < width + 20 else -20.0
        f = bg.copy()
        f[((xx - x) / 7.0) ** 2 + ((yy - mid) / 6.0) ** 2 <= 1.0] = 110
        frames[k] = f + rng.integers(0, 3, (height, width), dtype=np.uint8)
    return frames, None


IMAGE_FORMATS = ("bmp", "png", "tif")


def write_images(frames: np.ndarray, folder: str | Path, fmt: str = "bmp") -> Path:
    """Write frames as ``f000000.<fmt>``... (the pylon emulator plays a folder in name order).

    All three are lossless and uncompressed, the forms the emulator decodes fastest: BMP, PNG
    without row filters (level 0), TIFF without compression.
    """
    import cv2

    if fmt not in IMAGE_FORMATS:
        raise ConfigError("bench.image_format", f"must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
    params = {"bmp": (),
              "png": (cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE),
              "tif": (cv2.IMWRITE_TIFF_COMPRESSION, 1)}[fmt]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(frames):
        path = folder / f"f{k:06d}.{fmt}"
        if not cv2.imwrite(str(path), f, params):
            raise OSError(f"cannot write {path}")
    return folder


def write_pngs(frames: np.ndarray, folder: str | Path) -> Path:
    """Write frames as unfiltered, uncompressed ``f000000.png``... (see :func:`write_images`)."""
    return write_images(frames, folder, "png")


def _thread_cpu() -> dict[str, tuple[str, float]]:
    """CPU seconds (user + system) of every thread of this process by thread id, with its name;
    empty where /proc is not there. pylon's emulator works in its own threads, which
    ``time.thread_time`` of ours cannot see."""
    out: dict[str, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def bench_camera(backend: str = "basler", seconds: float = 5.0, images: int = 2000, fps: float = 0.0,
                 image_format: str = "bmp", buffers: int = 256) -> dict:
    """Run camera → ring → tracker for ``seconds``; figures, the loss accounting and where the CPU went.

    The emulator cycles through ``images`` simulated frames written as ``image_format`` files;
    ``fps`` 0 runs it without a frame-rate limit (its only way past 5,000 frames/s, see the
    module notes), else with that limit (at most 5,000)."""
    if backend != "basler":
        raise ConfigError("bench.backend", f"bench camera runs on basler (the pylon emulator plays a channel), got {backend!r}")
    from tracking.tracker import Tracker, TrackerSettings

    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-", dir=shm) as tmp:  # RAM: thousands of small files
        from acquisition.basler import BaslerCamera

        frames, _ = channel_frames(images)
        folder = write_images(frames, Path(tmp) / "frames", image_format)
        # exposure below 1 ms: the emulator sleeps for exposures of 1 ms and more
        cam = BaslerCamera(dict(transport="BaslerCamEmu", width=WIDTH, height=HEIGHT, exposure_us=100.0,
                                fps=fps, pixel_size_um=PIXEL_SIZE_UM, buffers=buffers,
                                features={"TestImageSelector": "Off", "ImageFilename": str(folder),
                                          "ImageFileMode": "On"}))
        settings = TrackerSettings()
        with cam:
            info = cam.info
            ring = info.make_ring(8192)
            ring.images.fill(0)  # fault the pages in now: the first lap would cost the grab thread ~10 µs a frame
            ring.camera_clock = info.camera_clock
            reader = ring.reader("tracker")
            stop = threading.Event()
            camera_done = threading.Event()
            errors: list[BaseException] = []
            tracked = [0, 0]  # frames, events
            cpu = {"camera": 0.0, "tracker": 0.0}

            def camera_loop() -> None:
                c0 = time.thread_time()
                try:
                    while not stop.is_set():
                        cam.grab_into(ring, timeout_s=0.5)
                    cpu["camera"] = time.thread_time() - c0  # the steady state, without the drain
                    cam.set_feature("AcquisitionStop")  # then drain what the sensor already sent
                    while cam.grab_into(ring, timeout_s=0.1):
                        pass
                    cam.stop()
                except BaseException as e:  # reported by the main thread
                    errors.append(e)
                finally:
                    camera_done.set()

            def tracker_loop() -> None:
                c0 = time.thread_time()
                try:
                    tracker = None
                    while tracker is None:
                        if reader.pending >= settings.background_frames:
                            b = reader.read(settings.background_frames)
                            tracker = Tracker.from_frames(ring.images[b.slots], info.pixel_size_um, settings,
                                                          t0_ns=int(b.timestamps_ns[0]), bit_depth=info.bit_depth)
                            tracked[1] += len(tracker.process_batch(ring, b))
                            tracked[0] += len(b)
                            reader.release(b)
                        elif camera_done.is_set():
                            return
                        else:
                            time.sleep(0.001)
                    while True:
                        if not reader.pending:
                            if camera_done.is_set() and not reader.pending:
                                break
                            reader.wait(0.05, poll_s=50e-6)
                            continue
                        b = reader.read(settings.batch_frames)
                        tracked[1] += len(tracker.process_batch(ring, b))
                        tracked[0] += len(b)
                        reader.release(b)
                    tracked[1] += len(tracker.flush())
                except BaseException as e:  # reported by the main thread
                    errors.append(e)
                finally:
                    cpu["tracker"] = time.thread_time() - c0

            # compile the kernels before the clock starts
            warm = Tracker.from_frames(frames[: settings.background_frames], info.pixel_size_um, settings, t0_ns=0,
                                       bit_depth=info.bit_depth)
            warm.process_frames(frames[: 2 * settings.batch_frames], fps=5000.0)

            threads = [threading.Thread(target=camera_loop, name="camera"), threading.Thread(target=tracker_loop, name="tracker")]
            cpu_before, p0 = _thread_cpu(), time.process_time()
            cam.start()
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            time.sleep(seconds)
            stop.set()
            cpu_after, p1 = _thread_cpu(), time.process_time()  # before the drain and the stop
            camera_done.wait(30.0)
            t_cam = time.perf_counter() - t0
            for t in threads:
                t.join(60.0)
            t_all = time.perf_counter() - t0
            if errors:
                raise errors[0]

            n = max(ring.written, 1)
            emulator_cpu = sum(c - cpu_before.get(tid, (name, 0.0))[1]
                               for tid, (name, c) in cpu_after.items() if name.startswith("CamEmu"))
            res = {
                "backend": backend,
                "device": f"{info.model} {info.serial}",
                "roi": f"{info.width}x{info.height}",
                "images": f"{len(frames)} {image_format} files",
                "frame_rate_limit": fps or "off (free run)",
                "seconds": round(t_cam, 3),
                "frames_delivered": ring.written,
                "fps_delivered": round(ring.written / t_cam, 1),
                "frames_tracked": tracked[0],
                "fps_tracked": round(tracked[0] / t_all, 1),
                "events": tracked[1],
                "camera_dropped": ring.camera_dropped,
                "skipped_images": cam.skipped_images,
                "failed_buffers": cam.failed_buffers,
                "grab_errors": cam.grab_errors,
                "grab_restarts": cam.grab_restarts,
                "lost_at_restart": cam.lost_at_restart,
                "cancelled_at_restart": cam.cancelled_at_restart,
                "timeouts": cam.timeouts,
                "ring_missed": reader.missed,
                "ring_overrun": reader.overrun,
                "ring_unexplained": ring.written - tracked[0] - reader.missed,
                # CPU while running (µs per delivered frame): the grab loop, the tracker, the
                # emulator's image thread, and the process as a whole (pylon's other threads too)
                "cpu_grab_us_per_frame": round(cpu["camera"] / n * 1e6, 1),
                "cpu_tracker_us_per_frame": round(cpu["tracker"] / n * 1e6, 1),
                # NaN after a grab restart: pylon ends the emulator's thread with the session
                "cpu_emulator_us_per_frame": (round(emulator_cpu / n * 1e6, 1) if cpu_after and not cam.grab_restarts
                                              else math.nan),
                "cpu_process_cores": round((p1 - p0) / seconds, 2),
            }
            stats = cam.statistics_at_stop
            total = stats.get("total_buffer_count", -1)
            first = _first_block_id(ring)
            accounted = ring.written + ring.camera_dropped + first + cam.discarded_at_stop + cam.cancelled_at_restart
            res.update({
                "emulator_total": total,
                "emulator_fps": round(total / t_cam, 1) if total >= 0 else math.nan,
                "emulator_failed": stats.get("failed_buffer_count", -1),
                "first_frame_id": first,
                "discarded_at_stop": cam.discarded_at_stop,
                "unexplained": total - accounted if total >= 0 else math.nan,
            })
            return res


def _first_block_id(ring) -> int:
    """The id of the first frame the ring received: frames before it were lost before the first grab.

    The ring keeps ids only for its last ``capacity`` frames; the first id is recovered from the
    newest one, the frames written and the gaps counted.
    """
    newest = ring.newest()
    if newest is None:
        return 0
    return int(newest.frame_id) - (ring.written - 1) - ring.camera_dropped
