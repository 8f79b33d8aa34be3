import time
import threading

import numpy as np
import pytest

from acquisition.frame import FrameRing
from mimlsort.errors import ConfigError, StateError


def fill(ring, start, n, value_of=lambda i: i % 251):
    for i in range(start, start + n):
        ring.push(np.full(ring.shape, value_of(i), np.uint8), frame_id=i, timestamp_ns=i * 1000)


def test_reader_gets_every_frame_in_order():
    ring = FrameRing(16, 4, 5)
    r = ring.reader("t")
    fill(ring, 0, 10)
    b = r.read(100)
    assert list(b.frame_ids) == list(range(10))
    assert [int(ring.images[s][0, 0]) for s in b.slots] == list(range(10))
    assert r.release(b) == 0
    assert r.missed == 0 and r.pending == 0


def test_slow_reader_counts_missed_and_skips_to_safe_frames():
    ring = FrameRing(8, 2, 2, guard=2)
    r = ring.reader("slow")
    fast = ring.reader("fast")
    fill(ring, 0, 20)
    b = r.read(100)
    # 20 written, capacity 8, guard 2: the oldest safe frame is seq 14
    assert r.missed == 14
    assert list(b.frame_ids) == list(range(14, 20))
    assert fast.read(3).frame_ids.tolist() == [14, 15, 16]  # each reader has its own cursor
    assert fast.missed == 14


def test_overrun_detected_when_producer_laps_a_held_batch():
    ring = FrameRing(8, 2, 2, guard=2)
    r = ring.reader("t")
    fill(ring, 0, 4)
    b = r.read(4)
    fill(ring, 4, 6)  # seq 8, 9 overwrote seq 0, 1; seq 2's slot is the next one written
    # conservative: the slot the producer may be writing right now counts as damaged too
    assert r.release(b) == 3
    assert r.overrun == 3


def test_camera_side_gaps_counted_with_wrap():
    ring = FrameRing(8, 1, 1, id_modulus=2**16)
    for fid in (65533, 65534, 65535, 0, 3, 4):  # wrap, then 1 and 2 missing
        ring.push(np.zeros((1, 1), np.uint8), fid, 0)
    assert ring.camera_dropped == 2


def test_counter_restart_without_modulus_is_not_a_drop():
    ring = FrameRing(8, 1, 1)
    for fid in (10, 11, 0, 1):
        ring.push(np.zeros((1, 1), np.uint8), fid, 0)
    assert ring.camera_dropped == 0


def test_gige_block_ids_wrap_from_65535_to_1_without_a_drop():
    ring = FrameRing(8, 1, 1, id_modulus=65535)  # GigE Vision 1.x: 1..65535, 0 is never used
    for fid in (65534, 65535, 1, 2, 4):
        ring.push(np.zeros((1, 1), np.uint8), fid, 0)
    assert ring.camera_dropped == 1


def test_a_camera_reopened_mid_run_restarts_its_counter_without_counting_drops():
    """A backend that reconnects a lost camera (its counter starts again at 1) tells the ring;
    with a modulus the restart was counted as almost 2**32 dropped frames."""
    from acquisition.camera import Camera, CameraInfo, GrabResult

    class Counter(Camera):  # a stand-in for a vendor camera that can be unplugged (none exists here)
        backend = "counter"

        class Settings:
            pass

        def __init__(self):
            super().__init__(self.Settings())
            self.next_id = 5000

        def _do_open(self):
            return CameraInfo("counter", "m", "s", 1, 1, "uint8", 8, 100.0, 1.0, True, id_modulus=2**32)

        def _do_start(self):
            pass

        def _do_stop(self):
            pass

        def _do_close(self):
            pass

        def _do_grab(self, out, timeout_s):
            self.next_id += 1
            return GrabResult(self.next_id, 0)

        def unplug_and_reopen(self):
            self.reconnects += 1
            self.next_id = 0

    with Counter() as cam:
        ring = cam.info.make_ring(64)
        cam.start()
        for _ in range(3):
            cam.grab_into(ring)
        cam.unplug_and_reopen()
        for _ in range(3):
            cam.grab_into(ring)
        assert ring.camera_dropped == 0
        cam.next_id += 2  # then two frames lost for real
        cam.grab_into(ring)
        assert ring.camera_dropped == 2


def test_zero_copy_slot_and_frame_view():
    ring = FrameRing(4, 3, 3, dtype=np.uint16)
    slot = ring.next_slot()
    slot[:] = 1234
    ring.commit(7, 99)
    f = ring.newest()
    assert f.frame_id == 7 and f.timestamp_ns == 99 and f.image.dtype == np.uint16 and int(f.image[1, 1]) == 1234
    with pytest.raises(StateError):
        ring.frame(5)


def test_bad_capacity_is_config_error():
    with pytest.raises(ConfigError, match="ring.capacity"):
        FrameRing(2, 4, 4)


def test_concurrent_producer_and_reader_account_for_every_frame():
    ring = FrameRing(64, 8, 8)
    r = ring.reader("c")
    n_total = 20000
    seen = []

    def produce():
        fill(ring, 0, n_total, value_of=lambda i: i % 256)

    th = threading.Thread(target=produce)
    th.start()
    while th.is_alive() or r.pending:
        b = r.read(32)
        for s, fid in zip(b.slots, b.frame_ids):
            seen.append((int(fid), int(ring.images[s][0, 0])))
        damaged = r.release(b)
        if damaged:  # the producer lapped the batch's first frames: their pixels are not trusted
            del seen[len(seen) - len(b): len(seen) - len(b) + damaged]
    th.join()
    ids = [f for f, _ in seen]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    # every frame was either seen, skipped (missed) or overwritten while held (overrun)
    assert len(ids) + r.missed + r.overrun == n_total
    # frames that were seen and not overrun carry their own pixels
    assert all(v == f % 256 for f, v in seen)


def test_wait_returns_when_another_thread_publishes_and_times_out_otherwise():
    ring = FrameRing(8, 4, 4)
    r = ring.reader("sort")
    t0 = time.monotonic()
    assert r.wait(0.05, poll_s=20e-6) is False
    waited = time.monotonic() - t0
    assert 0.045 <= waited < 1.0  # timed out, not returned at once and not hung

    def publish():
        time.sleep(0.02)
        ring.push(np.ones((4, 4), np.uint8), 0, 0)

    th = threading.Thread(target=publish)
    t0 = time.monotonic()
    th.start()
    assert r.wait(2.0, poll_s=20e-6) is True
    assert time.monotonic() - t0 < 1.0
    th.join()
    assert r.pending == 1 and r.wait(0.0) is True
