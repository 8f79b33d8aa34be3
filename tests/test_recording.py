"""Raw recording to .rtdc: bit-exact round trip through replay, dclab compatibility, drop
accounting, and a file that survives SIGKILL up to its last flush."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import acquisition.recording as recording
from acquisition.frame import FrameRing
from acquisition.recording import RawRecorder, RecorderSettings, bench_recording
from acquisition.replay import ReplayCamera, ReplaySettings
from mimlsort.errors import ConfigError, DataFormatError, StateError

REPO = Path(__file__).resolve().parents[1]

#: what a real setup knows and passes in; with it dclab's checker must find nothing to complain about
FULL_METADATA = {
    "experiment:sample": "test sample",
    "imaging:flash device": "LED",
    "imaging:flash duration": 2.0,
    "setup:channel width": 20.0,
    "setup:flow rate sample": 0.015,
    "setup:flow rate sheath": 0.045,
    "setup:medium": "CellCarrierB",
    "setup:identifier": "mimlsort-test",
}


def pattern(frame_id: int, h: int, w: int, dtype) -> np.ndarray:
    """A frame whose every pixel depends on its id, so misplaced or torn frames show."""
    rng = np.random.default_rng(frame_id)
    hi = 4096 if np.dtype(dtype) == np.uint16 else 256
    return rng.integers(0, hi, (h, w)).astype(dtype)


def stamp(frame_id: int) -> int:
    # a camera clock far from zero, with jittered intervals: exactness must not depend on luck
    return 1_700_000_000_000_000 + frame_id * 250_000 + (frame_id * 7919) % 997


def record(path, n, *, h=24, w=40, dtype=np.uint8, batch=13, capacity=64, settings=None, metadata=None, ids=None):
    ring = FrameRing(capacity, h, w, dtype)
    reader = ring.reader("recorder")
    ids = list(range(n)) if ids is None else ids
    settings = settings or RecorderSettings(overwrite=True)
    with RawRecorder(path, w, h, dtype, pixel_size_um=0.5, fps=4000.0, metadata=metadata or FULL_METADATA,
                     settings=settings) as rec:
        for fid in ids:
            ring.push(pattern(fid, h, w, dtype), fid, stamp(fid))
            if reader.pending >= batch:
                rec.write_from_ring(reader, batch)
        while reader.pending:
            rec.write_from_ring(reader, batch)
    return rec, ring, reader


def replay_all(path, **kw):
    with ReplayCamera(ReplaySettings(path=str(path), **kw)) as cam:
        cam.start()
        frames = []
        while (f := cam.read(timeout_s=0.1)) is not None:
            frames.append(f)
        return cam.info, frames


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_replay_returns_exactly_what_was_recorded(tmp_path, compression, dtype):
    path = tmp_path / "rec.rtdc"
    # chunk of 16 frames at 24x40: batches of 13 cross chunk borders, the ring wraps
    settings = RecorderSettings(compression=compression, chunk_bytes=16 * 24 * 40 * np.dtype(dtype).itemsize,
                                overwrite=True)
    rec, _, _ = record(path, 150, dtype=dtype, settings=settings)
    assert rec.chunk_frames == 16
    assert rec.frames_written == rec.flushed_frames == 150
    info, frames = replay_all(path)
    assert info.frame_count == 150 and info.dtype == np.dtype(dtype).name
    assert (info.width, info.height, info.fps, info.pixel_size_um) == (40, 24, 4000.0, 0.5)
    assert [f.frame_id for f in frames] == list(range(150))
    assert [f.timestamp_ns for f in frames] == [stamp(i) for i in range(150)]
    for f in frames:
        np.testing.assert_array_equal(f.image, pattern(f.frame_id, 24, 40, dtype))


def test_dclab_opens_the_file_and_its_checker_finds_nothing(tmp_path):
    dclab = pytest.importorskip("dclab")
    from dclab.rtdc_dataset import check_dataset

    path = tmp_path / "rec.rtdc"
    rec, _, _ = record(path, 40)
    assert rec.missing_metadata == ()
    violations, alerts, _info = check_dataset(str(path))
    assert violations == []
    assert alerts == []
    with dclab.new_dataset(path) as ds:
        assert len(ds) == 40
        np.testing.assert_array_equal(ds["frame"], np.arange(40))
        np.testing.assert_array_equal(ds["image"][7], pattern(7, 24, 40, np.uint8))
        assert ds.config["imaging"]["pixel size"] == 0.5
        assert ds.config["imaging"]["roi size x"] == 40
        assert ds.config["setup"]["flow rate"] == pytest.approx(0.06)
        assert ds.config["user"]["recorder dropped frames"] == 0
        assert any("recording closed: 40 frames" in line for line in ds.logs["mimlsort-recorder"])


def test_without_setup_metadata_only_the_unknown_keys_are_missing(tmp_path):
    pytest.importorskip("dclab")
    from dclab.rtdc_dataset import check_dataset

    path = tmp_path / "rec.rtdc"
    rec, _, _ = record(path, 5, metadata={"experiment:sample": "bare"})
    assert "setup:channel width" in rec.missing_metadata and "imaging:pixel size" not in rec.missing_metadata
    violations, _alerts, _ = check_dataset(str(path))
    missing = {f"{v.split('[')[1].split(']')[0]}:{v.split(chr(39))[1]}" for v in violations}
    assert all(v.startswith("Metadata: Missing key") for v in violations)
    assert missing == set(rec.missing_metadata)


def test_a_recorder_that_falls_behind_counts_and_logs_what_it_lost(tmp_path):
    path = tmp_path / "rec.rtdc"
    h, w = 8, 8
    ring = FrameRing(16, h, w, np.uint8, guard=2)
    reader = ring.reader("recorder")
    ids = list(range(40)) + list(range(45, 50))  # the camera skipped 40..44
    with RawRecorder(path, w, h, np.uint8, pixel_size_um=1.0, fps=100.0, metadata=FULL_METADATA,
                     settings=RecorderSettings(overwrite=True)) as rec:
        for fid in ids:
            ring.push(pattern(fid, h, w, np.uint8), fid, stamp(fid))
        rec.write_from_ring(reader, 100)
    assert reader.missed == len(ids) - (16 - 2)
    assert rec.dropped == reader.missed
    assert rec.frames_written == 14
    assert rec.camera_dropped == 5
    import h5py

    with h5py.File(path) as f:
        assert int(f.attrs["user:recorder dropped frames"]) == reader.missed
        assert int(f.attrs["user:camera dropped frames"]) == 5
        assert int(f.attrs["experiment:event count"]) == 14
        logs = [s.decode() if isinstance(s, bytes) else s for s in f["logs/mimlsort-recorder"][:]]
    assert any(f"{reader.missed} frames lost" in line for line in logs)
    assert all(len(line) <= recording.LOG_LINE_MAX for line in logs)
    _, frames = replay_all(path)
    assert [f.frame_id for f in frames] == ids[-14:]
    for f in frames:
        np.testing.assert_array_equal(f.image, pattern(f.frame_id, h, w, np.uint8))


def test_frames_overwritten_while_being_copied_are_dropped_not_stored(tmp_path, monkeypatch):
    path = tmp_path / "rec.rtdc"
    h, w = 6, 6
    ring = FrameRing(8, h, w, np.uint8, guard=2)
    reader = ring.reader("recorder")
    for fid in range(6):
        ring.push(pattern(fid, h, w, np.uint8), fid, stamp(fid))
    gather = recording._gather

    def gather_while_the_producer_runs(images, first, out):
        gather(images, first, out)
        for fid in range(6, 9):  # the camera thread writes on meanwhile and laps the oldest slots
            ring.push(pattern(fid, h, w, np.uint8), fid, stamp(fid))

    monkeypatch.setattr(recording, "_gather", gather_while_the_producer_runs)
    with RawRecorder(path, w, h, np.uint8, pixel_size_um=1.0, fps=100.0, metadata=FULL_METADATA,
                     settings=RecorderSettings(overwrite=True)) as rec:
        n = rec.write_from_ring(reader, 6)
    assert reader.overrun > 0
    assert n == 6 - reader.overrun
    assert rec.dropped == reader.overrun
    _, frames = replay_all(path)
    assert [f.frame_id for f in frames] == list(range(reader.overrun, 6))
    for f in frames:
        np.testing.assert_array_equal(f.image, pattern(f.frame_id, h, w, np.uint8))


def test_an_error_inside_the_recording_still_closes_a_complete_file(tmp_path):
    path = tmp_path / "rec.rtdc"
    with pytest.raises(RuntimeError, match="pump failed"):
        with RawRecorder(path, 8, 4, np.uint8, pixel_size_um=1.0, fps=10.0,
                         settings=RecorderSettings(overwrite=True)) as rec:
            rec.write(np.stack([pattern(i, 4, 8, np.uint8) for i in range(3)]), [0, 1, 2], [stamp(i) for i in range(3)])
            raise RuntimeError("pump failed")
    assert not rec.is_open
    _, frames = replay_all(path)
    assert [f.frame_id for f in frames] == [0, 1, 2]
    import h5py

    with h5py.File(path) as f:
        logs = [s.decode() if isinstance(s, bytes) else s for s in f["logs/mimlsort-recorder"][:]]
    assert any("ended by an error: RuntimeError: pump failed" in line for line in logs)


def test_a_nearly_full_disk_stops_the_recording_with_a_complete_file(tmp_path):
    """A write that fails on a full disk can leave an HDF5 file that does not open: the recorder
    stops first, naming the file, and closes it complete."""
    import dataclasses

    import h5py

    from mimlsort.errors import DeviceError

    path = tmp_path / "full.rtdc"
    ring = FrameRing(64, 24, 40, np.uint8)
    reader = ring.reader("recorder")
    rec = RawRecorder(path, 40, 24, np.uint8, pixel_size_um=0.5, fps=4000.0, metadata=FULL_METADATA,
                      settings=RecorderSettings(overwrite=True)).open()
    for fid in range(10):
        ring.push(pattern(fid, 24, 40, np.uint8), fid, stamp(fid))
    rec.write_from_ring(reader)
    rec.flush()
    rec.settings = dataclasses.replace(rec.settings, min_free_mb=2.0**40)  # more than any disk has
    with pytest.raises(DeviceError, match=r"full\.rtdc: disk nearly full.*holds the 10 frames"):
        rec.flush()
    ring.push(pattern(10, 24, 40, np.uint8), 10, stamp(10))
    with pytest.raises(DeviceError, match="disk nearly full"):
        rec.write_from_ring(reader)
    rec.close()
    with h5py.File(path, "r") as f:
        assert f["events/image"].shape[0] == 10
        assert b"disk nearly full" in b"".join(f["logs/mimlsort-recorder"][:])  # long lines are wrapped


def test_an_empty_recording_is_a_valid_file(tmp_path):
    path = tmp_path / "empty.rtdc"
    with RawRecorder(path, 16, 8, "uint16", bit_depth=12, pixel_size_um=1.0, fps=10.0,
                     settings=RecorderSettings(overwrite=True)):
        pass
    from acquisition.replay import open_source

    src = open_source(path)  # a recording replay reads (which refuses to play it: nothing to play)
    assert src.n == 0 and src.bit_depth == 12 and src.dtype == "uint16"
    with pytest.raises(DataFormatError, match="holds no frames \\(an empty recording\\)"):
        replay_all(path)


def test_bad_use_gives_clear_errors(tmp_path):
    path = tmp_path / "rec.rtdc"
    path.write_bytes(b"precious")
    with pytest.raises(DataFormatError, match="rec.rtdc: exists; refusing to overwrite"):
        RawRecorder(path, 8, 8).open()
    assert path.read_bytes() == b"precious"
    with RawRecorder(path, 8, 8, overwrite=True) as rec:
        assert rec.settings.overwrite
    assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    with pytest.raises(ConfigError, match="^compression:"):
        RecorderSettings(compression="lz4")
    with pytest.raises(ConfigError, match="^flush_interval_s:"):
        RecorderSettings(flush_interval_s=5.0)
    with pytest.raises(ConfigError, match="recording.dtype"):
        RawRecorder(tmp_path / "f.rtdc", 8, 8, "float32")
    rec = RawRecorder(tmp_path / "x.rtdc", 8, 8, settings=RecorderSettings(overwrite=True))
    with pytest.raises(StateError):
        rec.write(np.zeros((1, 8, 8), np.uint8), [0], [0])
    with rec:
        with pytest.raises(DataFormatError, match=r"x.rtdc: frame 3: image shape \(8, 9\)"):
            rec.write(np.zeros((1, 8, 9), np.uint8), [3], [0])
        with pytest.raises(DataFormatError, match="dtype uint16"):
            rec.write(np.zeros((1, 8, 8), np.uint16), [3], [0])
        with pytest.raises(DataFormatError, match="ring holds 9x8"):
            rec.write_from_ring(FrameRing(4, 8, 9).reader("r"))
        assert rec.frames_written == 0


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from acquisition.frame import FrameRing
    from acquisition.recording import RawRecorder, RecorderSettings
    from tests.test_recording import pattern, stamp, FULL_METADATA

    path = sys.argv[1]
    h, w = 16, 24
    ring = FrameRing(64, h, w, np.uint8)
    reader = ring.reader("recorder")
    settings = RecorderSettings(flush_interval_s=0.05, chunk_bytes=4096, compression=sys.argv[2], overwrite=True)
    rec = RawRecorder(path, w, h, np.uint8, pixel_size_um=0.5, fps=4000.0, metadata=FULL_METADATA, settings=settings)
    rec.open()
    fid, flushed = 0, 0
    while True:
        for _ in range(5):
            ring.push(pattern(fid, h, w, np.uint8), fid, stamp(fid))
            fid += 1
        rec.write_from_ring(reader, 64)
        if rec.flushed_frames != flushed:
            flushed = rec.flushed_frames
            print(flushed, flush=True)
        time.sleep(0.002)
""")


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_killed_recorder_leaves_a_readable_file_up_to_its_last_flush(tmp_path, compression):
    dclab = pytest.importorskip("dclab")
    path = tmp_path / "killed.rtdc"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), compression], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60.0, proc.kill)  # a child that never prints must not hang the suite
    watchdog.start()
    try:
        flushed = []
        for line in proc.stdout:  # the child prints after every flush; kill it after a few
            flushed.append(int(line))
            if len(flushed) >= 4:
                break
        assert len(flushed) >= 4, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    last = flushed[-1]
    with dclab.new_dataset(path) as ds:
        n = len(ds)
        assert n >= last  # later flushes may have happened before the kill landed
        np.testing.assert_array_equal(ds["frame"], np.arange(n))
    info, frames = replay_all(path)
    assert len(frames) == n
    for f in frames:
        assert f.timestamp_ns == stamp(f.frame_id)
        np.testing.assert_array_equal(f.image, pattern(f.frame_id, 16, 24, np.uint8))


def test_bench_recording_reports_rates_for_each_compression():
    res = bench_recording(n_frames=300)
    assert res["compression"] == "none" and res["frames"] == 300
    for prefix in ("", "zstd_"):
        assert res[prefix + "frames_per_s"] > 0
        assert res[prefix + "mb_per_s"] > 0
        assert res[prefix + "file_mb"] > 0
        assert res[prefix + "dropped"] == 0
    assert res["zstd_ratio"] > res["ratio"]  # noise limits it, but Zstd must gain something
    assert all(isinstance(v, (int, float, str)) for v in res.values())


def test_a_synthetic_run_recorded_and_replayed_is_identical(tmp_path):
    synthetic = pytest.importorskip("acquisition.synthetic")
    settings = synthetic.SyntheticSettings(duration_s=0.05, fps=2000.0, seed=3)
    path = tmp_path / "sim.rtdc"
    originals = []
    with synthetic.SyntheticCamera(settings) as cam:
        info = cam.info
        ring = info.make_ring(64)
        reader = ring.reader("recorder")
        with RawRecorder(path, info.width, info.height, info.dtype, pixel_size_um=info.pixel_size_um, fps=info.fps,
                         metadata=FULL_METADATA, overwrite=True) as rec:
            cam.start()
            while cam.grab_into(ring, timeout_s=1.0):
                f = ring.newest()
                originals.append((f.frame_id, f.timestamp_ns, f.image.copy()))
                rec.write_from_ring(reader, 64)
            rec.write_from_ring(reader)
    assert rec.frames_written == len(originals) == 100 and rec.dropped == 0
    rinfo, frames = replay_all(path)
    assert (rinfo.width, rinfo.height, rinfo.fps, rinfo.pixel_size_um) == (info.width, info.height, 2000.0, info.pixel_size_um)
    assert rinfo.camera_clock
    assert [(f.frame_id, f.timestamp_ns) for f in frames] == [(i, t) for i, t, _ in originals]
    for f, (_, _, img) in zip(frames, originals):
        np.testing.assert_array_equal(f.image, img)


@pytest.mark.parametrize("compression, zstd", [("none", False), ("zstd", True)])
def test_output_raw_compression_selects_the_raw_recordings_compression(tmp_path, compression, zstd):
    # NOTES offered Zstd for archived raw recordings, and no configuration key or option reached it
    import hdf5plugin  # noqa: F401 - reads Zstd chunks
    import h5py

    from app.config import config_from_mapping
    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"synthetic": {"duration_s": 0.1, "seed": 3}},
        "model": {"path": "none"},
        "output": {"folder": str(tmp_path), "report": False, "record_raw": True, "raw_compression": compression},
    })
    with build_run(cfg) as run:
        assert run.wait(120)
    raw = next(tmp_path.glob("*_raw.rtdc"))
    with h5py.File(raw, "r") as h:
        images = h["events/image"]
        assert images.shape[0] == 400
        plist = images.id.get_create_plist()
        filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
        assert (32015 in filters) is zstd  # hdf5plugin's Zstd filter id
