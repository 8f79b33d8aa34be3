"""The live tracking kernel (tracking/live.py) against the batch path it stands in for."""

import threading
import time

import numpy as np
import pytest

from acquisition.synthetic import SyntheticCamera, SyntheticSettings
from mimlsort import realtime
from tracking.tracker import Tracker, TrackerSettings

pytestmark = pytest.mark.skipif(not realtime.AVAILABLE, reason="the live kernel needs Linux's clock_gettime/nanosleep")

FLOW = dict(flow_speed_mm_s=20.0, constriction_speed_mm_s=60.0, exit_speed_mm_s=30.0)


def _recorded(seconds=0.6, cps=200.0, flicker=0.0):
    s = SyntheticSettings(seed=4, fps=8000.0, duration_s=seconds, cells_per_second=cps, doublet_fraction=0.1,
                          debris_per_second=20.0, flicker=flicker, **FLOW)
    with SyntheticCamera(s) as cam:
        ring = cam.info.make_ring(s.frame_count + 8)
        cam.start()
        while cam.grab_many_into(ring, 256, 0.5) or not cam.exhausted:
            pass
    return s, ring


def _key(e):
    snap = e.snapshot
    return (e.index, e.track_id, e.entry_frame, e.exit_frame, e.exit_host_ns, int(e.quality),
            tuple(np.nan_to_num(list(e.features.values()), nan=-1.0)), e.first_crop.tobytes(), e.last_crop.tobytes(),
            e.extra["emit_host_ns"], None if snap is None else (snap.image.tobytes(), snap.mask.tobytes()))


@pytest.mark.parametrize("flicker", [0.0, 0.1])
def test_live_kernel_gives_the_events_of_single_frame_batches(flicker):
    # (with a flickering lamp, both correct each frame by its light: the background's rows scaled,
    # the update learning frames divided by it)
    s, ring = _recorded(flicker=flicker)

    def tracker():
        return Tracker.from_frames(ring.images[:64], s.pixel_size_um, TrackerSettings(),
                                   t0_ns=int(ring.timestamps_ns[0]))

    batch = tracker()
    ev_batch = []
    r = ring.reader("batch", from_start=True)
    while r.pending:
        ev_batch += batch.process_batch(ring, r.read(1))
    ev_batch += batch.flush()
    assert len(ev_batch) > 50
    assert (np.nanstd([e.features["bg_off"] for e in ev_batch]) > 2.0) == (flicker > 0)
    # behind_ok: the whole recording is waiting here; with no limit the kernel returns at every
    # finished cell, with the default it goes on and returns several cells at once
    for behind_ok in (1 << 40, 4):
        live = tracker()
        ev_live = []
        r = ring.reader(f"live {behind_ok}", from_start=True)
        returns = 0
        while r.pending:
            n, evs, behind = live.track_live(ring, r, max_frames=100, timeout_s=0.0, behind_ok=behind_ok)
            assert not behind and n <= 100
            ev_live += evs
            returns += 1
        ev_live += live.flush()
        assert batch.stats == live.stats
        assert np.array_equal(batch.background.image, live.background.image)
        assert r.consumed == ring.written and r.overrun == 0
        if behind_ok > 1000:
            assert [_key(e) for e in ev_batch] == [_key(e) for e in ev_live]
            assert returns < ring.written / 10  # back in Python per finished cell or per 100 frames
        else:
            # harvested later, the snapshots carry a later background model (and its mask); the
            # measurements are the same
            assert [_key(e)[:-1] for e in ev_batch] == [_key(e)[:-1] for e in ev_live]
            assert returns < len(ev_batch) / 2


def test_deferred_snapshots_are_those_taken_at_once_and_count_as_lost_when_not_taken():
    s, ring = _recorded(seconds=0.4)

    def run(defer, take):
        t = Tracker.from_frames(ring.images[:64], s.pixel_size_um, TrackerSettings(), t0_ns=int(ring.timestamps_ns[0]))
        r = ring.reader(f"{defer} {take}", from_start=True)
        out = []
        while r.pending:
            _, evs, _ = t.track_live(ring, r, max_frames=100, timeout_s=0.0, behind_ok=1 << 40, defer_snapshots=defer)
            if defer:
                assert all(e.snapshot is None for e in evs)
            out += t.with_snapshots(evs) if take else evs
        return t, out

    _, now = run(False, False)
    _, later = run(True, True)
    with_snap = sum(e.snapshot is not None for e in now)
    assert len(now) > 20 and with_snap > 0.8 * len(now)
    assert [_key(e) for e in now] == [_key(e) for e in later]
    lost, skipped = run(True, False)
    assert all(e.snapshot is None for e in skipped)
    # snapshots not taken are dropped at the next tracking call (here: flush) and counted
    lost.flush()
    assert lost.stats.snapshots_lost == with_snap


def test_live_kernel_waits_for_frames_and_reports_a_reader_left_behind():
    s, src = _recorded(seconds=0.1, cps=0.0)
    t = Tracker.from_frames(src.images[:64], s.pixel_size_um, TrackerSettings(), t0_ns=0)
    ring = type(src)(16, src.images.shape[1], src.images.shape[2], src.images.dtype)
    r = ring.reader("sort")
    t0 = time.monotonic()
    assert t.track_live(ring, r, timeout_s=0.03) == (0, [], False)  # nothing came: returns after the timeout
    assert 0.025 <= time.monotonic() - t0 < 1.0

    def camera():
        for i in range(5):
            time.sleep(0.005)
            ring.push(src.images[i], i, int(src.timestamps_ns[i]))

    th = threading.Thread(target=camera)
    th.start()
    got = 0
    deadline = time.monotonic() + 5.0
    while got < 5 and time.monotonic() < deadline:  # frames tracked as they are published
        got += t.track_live(ring, r, max_frames=5 - got, timeout_s=0.5)[0]
    th.join()
    assert got == 5 and r.cursor == 5
    for i in range(5, 40):  # the camera laps the reader
        ring.push(src.images[i], i, int(src.timestamps_ns[i]))
    n, evs, behind = t.track_live(ring, r, timeout_s=0.0)
    assert (n, behind) == (0, True)
    b = r.read(8)  # the batch way counts what was lost
    assert r.missed == 40 - 5 - (16 - ring.guard) and len(b) == 8
