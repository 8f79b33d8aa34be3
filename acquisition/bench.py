"""``mimlsort bench camera``: frames/s a camera backend delivers into the ring and the tracker
consumes, with every lost frame accounted for.

On ``basler`` the pylon emulator plays a simulated channel (PNG files, ``ImageFileMode``) at
256x96 and up to its 5,000 fps limit. The camera thread grabs into the ring; the tracker thread
tracks batches. At the end the sensor is stopped and the queue drained into the ring, so the
emulator's own ``Statistic_Total_Buffer_Count`` must equal what we account for:

    delivered into the ring + camera-side drops (frame-id gaps: skipped images + failed + lost)
    + first frame id (frames before the first one we saw) + frames discarded at stop

and on the ring side, frames tracked + missed by the tracker = delivered. ``unexplained`` is the
difference; it must be 0.

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


def write_pngs(frames: np.ndarray, folder: str | Path) -> Path:
    """Write frames as ``f00000.png``... (the pylon emulator plays a folder in name order)."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(frames):
        # uncompressed: level 0 writes ~20x faster than the default and the emulator reads either
        if not cv2.imwrite(str(folder / f"f{k:06d}.png"), f, (cv2.IMWRITE_PNG_COMPRESSION, 0)):
            raise OSError(f"cannot write {folder / f'f{k:06d}.png'}")
    return folder


def bench_camera(backend: str = "basler", seconds: float = 5.0, images: int = 2000, fps: float = 5_000.0) -> dict:
    """Run camera → ring → tracker for ``seconds``; figures and the loss accounting.

    The emulator cycles through ``images`` simulated frames (file writing dominates the setup)."""
    if backend != "basler":
        raise ConfigError("bench.backend", f"bench camera runs on basler (the pylon emulator plays a channel), got {backend!r}")
    from tracking.tracker import Tracker, TrackerSettings

    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="mimlsort-bench-", dir=shm) as tmp:  # RAM: thousands of small files
        from acquisition.basler import BaslerCamera

        frames, _ = channel_frames(images)
        folder = write_pngs(frames, Path(tmp) / "frames")
        cam = BaslerCamera(dict(transport="BaslerCamEmu", width=WIDTH, height=HEIGHT, exposure_us=100.0,
                                fps=fps, pixel_size_um=PIXEL_SIZE_UM, buffers=256,
                                features={"TestImageSelector": "Off", "ImageFilename": str(folder),
                                          "ImageFileMode": "On"}))
        settings = TrackerSettings()
        with cam:
            info = cam.info
            ring = info.make_ring(8192)
            ring.camera_clock = info.camera_clock
            reader = ring.reader("tracker")
            stop = threading.Event()
            camera_done = threading.Event()
            errors: list[BaseException] = []
            tracked = [0, 0]  # frames, events

            def camera_loop() -> None:
                try:
                    while not stop.is_set():
                        cam.grab_into(ring, timeout_s=0.5)
                    cam.set_feature("AcquisitionStop")  # then drain what the sensor already sent
                    while cam.grab_into(ring, timeout_s=0.1):
                        pass
                    cam.stop()
                except BaseException as e:  # reported by the main thread
                    errors.append(e)
                finally:
                    camera_done.set()

            def tracker_loop() -> None:
                try:
                    tracker = None
                    while tracker is None:
                        if reader.pending >= settings.background_frames:
                            b = reader.read(settings.background_frames)
                            tracker = Tracker.from_frames(ring.images[b.slots], info.pixel_size_um, settings,
                                                          t0_ns=int(b.timestamps_ns[0]))
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

            # compile the kernels before the clock starts
            warm = Tracker.from_frames(frames[: settings.background_frames], info.pixel_size_um, settings, t0_ns=0)
            warm.process_frames(frames[: 2 * settings.batch_frames], fps=5000.0)

            cam.start()
            threads = [threading.Thread(target=camera_loop, name="camera"), threading.Thread(target=tracker_loop, name="tracker")]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            time.sleep(seconds)
            stop.set()
            camera_done.wait(30.0)
            t_cam = time.perf_counter() - t0
            for t in threads:
                t.join(60.0)
            t_all = time.perf_counter() - t0
            if errors:
                raise errors[0]

            res = {
                "backend": backend,
                "device": f"{info.model} {info.serial}",
                "roi": f"{info.width}x{info.height}",
                "seconds": round(t_cam, 3),
                "frames_delivered": ring.written,
                "fps_delivered": round(ring.written / t_cam, 1),
                "frames_tracked": tracked[0],
                "fps_tracked": round(tracked[0] / t_all, 1),
                "events": tracked[1],
                "camera_dropped": ring.camera_dropped,
                "skipped_images": cam.skipped_images,
                "failed_buffers": cam.failed_buffers,
                "timeouts": cam.timeouts,
                "ring_missed": reader.missed,
                "ring_overrun": reader.overrun,
                "ring_unexplained": ring.written - tracked[0] - reader.missed,
            }
            stats = cam.statistics_at_stop
            total = stats.get("total_buffer_count", -1)
            first = _first_block_id(ring)
            accounted = ring.written + ring.camera_dropped + first + cam.discarded_at_stop
            res.update({
                "emulator_total": total,
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
