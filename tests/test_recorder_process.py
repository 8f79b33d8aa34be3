"""The raw recorder in a child process reading the ring through shared memory: same file as in-process."""

from __future__ import annotations

import os
from dataclasses import replace

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest

from acquisition.frame import FrameRing
from acquisition.recorder_process import RawRecorderProcess
from acquisition.recording import RawRecorder
from acquisition.synthetic import SyntheticCamera, SyntheticSettings
from app.pipeline import FinishReason, Pipeline
from mimlsort.errors import DeviceError

SIM = SyntheticSettings(duration_s=0.3, realtime=False, seed=5)


def _record(path, cls):
    cam = SyntheticCamera(SIM)
    cam.open()
    info = cam.info
    rec = cls(path, info.width, info.height, info.dtype, pixel_size_um=info.pixel_size_um, fps=info.fps)
    rec.__enter__()
    p = Pipeline(cam, recorder=rec, lossless=True)
    p.start()
    assert p.wait(60)
    rec.close()
    return p


def test_the_child_process_records_the_same_frames_and_leaves_no_shared_file(tmp_path):
    p_thread = _record(tmp_path / "thread.rtdc", RawRecorder)
    p_proc = _record(tmp_path / "process.rtdc", RawRecorderProcess)
    assert p_proc.finish_reason is FinishReason.COMPLETED
    assert p_proc.ring.shared_path is None  # unlinked once the child had mapped it
    with h5py.File(tmp_path / "thread.rtdc") as a, h5py.File(tmp_path / "process.rtdc") as b:
        n = len(a["events/image"])
        assert n == len(b["events/image"]) == p_proc.status().frames_in > 0
        assert np.array_equal(a["events/image"][:], b["events/image"][:])
        assert np.array_equal(a["events/frame"][:], b["events/frame"][:])
        assert np.array_equal(a["events/time"][:], b["events/time"][:])


def test_the_shared_ring_opens_by_its_path_until_the_child_has_mapped_it(tmp_path):
    cam = SyntheticCamera(replace(SIM, duration_s=0.05))
    cam.open()
    ring = cam.info.make_ring(64, shared=True)
    path = ring.shared_path
    assert path and os.path.exists(path)
    rec = RawRecorderProcess(tmp_path / "r.rtdc", ring.images.shape[2], ring.images.shape[1], ring.images.dtype,
                             pixel_size_um=0.5, fps=1000.0)
    reader = ring.reader("recorder")
    for i in range(10):
        ring.push(np.full(ring.images.shape[1:], i, ring.images.dtype), i, i * 1_000_000)
    assert rec.write_from_ring(reader) == 10
    assert ring.shared_path is None and not os.path.exists(path)
    rec.close()
    cam.close()
    with h5py.File(tmp_path / "r.rtdc") as f:
        assert [int(f["events/image"][i, 0, 0]) for i in range(10)] == list(range(10))


@pytest.mark.skipif(not os.path.isdir("/dev/shm") or not os.path.isdir("/proc/self/fd"), reason="Linux tmpfs")
def test_a_shared_ring_has_no_name_in_dev_shm_even_before_a_child_maps_it():
    """A run killed before its recorder child attached (while the kernels load) left a ring of
    ~100 MB in /dev/shm until the next reboot."""
    before = set(os.listdir("/dev/shm"))
    ring = FrameRing(64, 96, 256, shared=True)
    assert set(os.listdir("/dev/shm")) == before
    with open(ring.shared_path, "rb") as fh:  # what the child opens: the same memory
        ring.push(np.full((96, 256), 7, np.uint8), 0, 0)
        assert fh.read(1) == b"\x07"
    path = ring.shared_path
    ring.unlink_shared()
    assert not os.path.exists(path)


def test_a_dead_recorder_process_is_a_device_error_naming_the_file(tmp_path):
    cam = SyntheticCamera(replace(SIM, duration_s=0.05))
    cam.open()
    ring = cam.info.make_ring(64, shared=True)
    rec = RawRecorderProcess(tmp_path / "gone.rtdc", ring.images.shape[2], ring.images.shape[1], ring.images.dtype,
                             pixel_size_um=0.5, fps=1000.0)
    reader = ring.reader("recorder")
    ring.push(np.zeros(ring.images.shape[1:], ring.images.dtype), 0, 0)
    rec.write_from_ring(reader)
    rec._proc.kill()  # no public way to crash the child
    rec._proc.wait(10)
    ring.push(np.zeros(ring.images.shape[1:], ring.images.dtype), 1, 1000)
    with pytest.raises(DeviceError, match="gone.rtdc.*recorder process"):
        rec.write_from_ring(reader)
    with pytest.raises(DeviceError):
        rec.close()
    ring.unlink_shared()
    cam.close()
