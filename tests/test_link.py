"""The linking kernel on hand-made blob tables (no segmentation involved)."""

import numpy as np
import pytest

from tracking import link as L
from tracking.blobs import B_AREA, B_HULL_AREA, B_MAJOR, B_MINOR, B_X, B_XMAX, B_XMIN, B_Y, B_YMAX, B_YMIN, N_BLOB_FIELDS


class Harness:
    def __init__(self, kernels, x0=100.0, x1=150.0, width=256, height=64, tracks=8, hist=128, crop=16):
        self.link = L.link_batch if kernels == "numba" else L.link_batch.py_func
        self.flush_k = L.flush_tracks if kernels == "numba" else L.flush_tracks.py_func
        self.pi = np.array([2, crop, 0], np.int64)
        self.pf = np.array([x0, x1, x1 + 20, 3.0, 40.0, 6.0, 1.0, 3.0, x1 + 30, width - 16, x0 - 40, 1.0], np.float64)
        self.si = np.zeros((tracks, L.N_SI), np.int64)
        self.sf = np.zeros((tracks, L.N_SF), np.float64)
        self.motion = np.zeros((L.N_M, L.motion_bins(width)), np.float64)
        self.hist = np.zeros((tracks, hist, L.N_H_EXTRA + N_BLOB_FIELDS))
        self.crops = np.zeros((tracks, 2, crop, crop), np.uint8)
        self.done_i = np.zeros((2 * tracks, L.N_SI), np.int64)
        self.done_hist = np.zeros((2 * tracks, hist, L.N_H_EXTRA + N_BLOB_FIELDS))
        self.done_crops = np.zeros((2 * tracks, 2, crop, crop), np.uint8)
        self.done_n = np.zeros(2 * tracks, np.int64)
        self.done_f = np.zeros((2 * tracks, L.N_DF), np.float64)
        self.counters = np.zeros(L.N_C, np.int64)
        self.images = np.zeros((1, height, width), np.uint8)
        self.fill = np.zeros((height, width), np.uint8)
        self.done = []

    def run(self, frames):
        """frames: list of lists of (x, y) blob centres; frame i at t = i ms."""
        n = len(frames)
        blobs = np.zeros((n, 8, N_BLOB_FIELDS))
        counts = np.zeros(n, np.int32)
        for i, fr in enumerate(frames):
            counts[i] = len(fr)
            for j, (x, y) in enumerate(fr):
                blobs[i, j, B_X], blobs[i, j, B_Y] = x, y
                blobs[i, j, B_XMIN], blobs[i, j, B_XMAX] = x - 5, x + 5
                blobs[i, j, B_YMIN], blobs[i, j, B_YMAX] = y - 5, y + 5
                blobs[i, j, B_AREA] = blobs[i, j, B_HULL_AREA] = 80.0
                blobs[i, j, B_MAJOR], blobs[i, j, B_MINOR] = 6.0, 4.0
        ids = np.arange(n, dtype=np.int64)
        processed, n_done = self.link(self.images, np.zeros(n, np.int64), ids, ids.astype(np.float64), ids * 10,
                                      self.fill, blobs, counts, self.pi, self.pf, self.si, self.sf, self.motion, self.hist,
                                      self.crops, self.done_i, self.done_hist, self.done_crops, self.done_n,
                                      self.done_f, self.counters)
        assert processed == n
        self._take(n_done)

    def flush(self):
        self._take(self.flush_k(self.si, self.hist, self.crops, self.done_i, self.done_hist, self.done_crops,
                                self.done_n, self.done_f, self.motion, self.pf, self.counters))

    def _take(self, n_done):
        for d in range(n_done):
            h = self.done_hist[d, : self.done_n[d]].copy()
            self.done.append((self.done_i[d].copy(), h))


@pytest.fixture(params=["numba", "python"])
def harness(request):
    return Harness(request.param)


def test_two_cells_at_different_speeds_keep_their_identity(harness):
    # cell A: 10 px/ms starting at x=20; cell B starts later at x=10, 6 px/ms, other y
    frames = []
    for i in range(40):
        fr = []
        xa = 20 + 10 * i
        if xa < 250:
            fr.append((xa, 30.0))
        xb = 10 + 6 * (i - 5)
        if i >= 5 and xb < 250:
            fr.append((xb, 34.0))
        frames.append(fr)
    harness.run(frames)
    harness.flush()
    assert len(harness.done) == 2
    by_y = sorted(harness.done, key=lambda d: d[1][0, L.N_H_EXTRA + B_Y])
    for (info, h), speed in zip(by_y, (10, 6)):
        x = h[:, L.N_H_EXTRA + B_X]
        t = h[:, L.H_T]
        assert np.allclose(np.diff(x) / np.diff(t), speed)  # never jumped to the other cell
        assert info[L.SI_HAS_FIRST] == 1 and info[L.SI_HAS_LAST] == 1
        assert info[L.SI_ENTRY_FRAME] >= 0 and info[L.SI_EXIT_FRAME] > info[L.SI_ENTRY_FRAME]
        # emitted at the emission line (x1 + 20 = 170), not at the ROI end
        assert x[-1] >= 170 and x[-2] < 170
    assert harness.counters[L.C_EMITTED] == 2


def test_entry_frame_is_first_frame_inside(harness):
    frames = [[(50 + 7 * i, 30.0)] for i in range(30)]
    harness.run(frames)
    info, h = harness.done[0]
    first_inside = next(i for i in range(30) if 50 + 7 * i >= 100)
    first_past = next(i for i in range(30) if 50 + 7 * i >= 150)
    assert info[L.SI_ENTRY_FRAME] == first_inside
    assert info[L.SI_EXIT_FRAME] == first_past


def test_track_never_reaching_constriction_is_lost_not_emitted(harness):
    frames = [[(10 + 2 * i, 30.0)] for i in range(10)] + [[] for _ in range(5)]
    harness.run(frames)
    assert harness.done == []
    assert harness.counters[L.C_LOST] == 1


def test_merge_marks_doublet(harness):
    # two cells converge into one blob: the lost track's prediction falls inside the merged blob
    frames = []
    for i in range(20):
        if i < 10:
            frames.append([(60 + 5 * i, 28.0), (70 + 5 * i, 32.0)])
        else:
            frames.append([(65 + 5 * i, 30.0)])
    harness.run(frames)
    harness.flush()
    assert harness.counters[L.C_MERGES] >= 1
    assert any(info[L.SI_FLAGS] & L.Q_DOUBLET for info, _ in harness.done)


def test_predicted_exits_extrapolate_active_tracks_moving_downstream():
    from tracking._pure import pure_python

    si = np.zeros((6, L.N_SI), np.int64)
    sf = np.zeros((6, L.N_SF), np.float64)
    x1 = 120.0
    rows = [  # state, x (px), vx (px/ms), t (ms)
        (L.ACTIVE, 100.0, 10.0, 5.0),   # upstream: exits 2 ms later
        (L.ACTIVE, 130.0, 20.0, 6.0),   # past the exit, not emitted: exited 0.5 ms before
        (L.ACTIVE, 90.0, 0.0, 7.0),     # standing still: no prediction
        (L.ACTIVE, 90.0, -3.0, 7.0),    # moving back: no prediction
        (L.ABSORB, 110.0, 10.0, 8.0),   # already emitted
        (L.FREE, 0.0, 0.0, 0.0),
    ]
    for k, (state, x, vx, t) in enumerate(rows):
        si[k, L.SI_STATE] = state
        sf[k, L.SF_X], sf[k, L.SF_VX], sf[k, L.SF_T] = x, vx, t
    for kernel in (L.predicted_exits, pure_python(L.predicted_exits)):
        out = np.full(6, np.nan)
        n = kernel(si, sf, np.zeros((L.N_M, 40)), x1, out)
        assert n == 2
        np.testing.assert_allclose(out[:n], [7.0, 5.5])
    small = np.zeros(1)
    assert L.predicted_exits(si, sf, np.zeros((L.N_M, 40)), x1, small) == 1  # never writes past its output


def _profile_x(t_ms, x_start, x0=100.0, x1=150.0, v=(5.0, 15.0, 7.0)):
    """x at t of a cell that starts at x_start and moves at v[0] px/ms before x0, v[1] inside
    [x0, x1) and v[2] after (as cells speed up into a constriction and slow down leaving it)."""
    x, left = x_start, t_ms
    for lo, hi, speed in ((-1e9, x0, v[0]), (x0, x1, v[1]), (x1, 1e9, v[2])):
        if x >= hi:
            continue
        need = (hi - x) / speed
        if need >= left:
            return x + left * speed
        x, left = hi, left - need
    return x


def test_cells_that_speed_up_and_slow_down_keep_one_track_once_the_profile_is_learned(harness):
    # one cell after another, each seen every 1 ms, each with its own speed scale; a constant
    # velocity prediction lands ~8 px ahead of a cell leaving the constriction (gate_back 3 px)
    frames = []
    scales = [1.0, 0.9, 1.1, 1.05, 0.95, 1.0, 1.1, 0.9, 1.0, 1.05]
    for c, k in enumerate(scales):
        start = 20.0 + 3.0 * c  # sub-frame phases differ from cell to cell
        for i in range(40):
            x = _profile_x(i * 1.0, start, v=(5.0 * k, 15.0 * k, 7.0 * k))
            if x > 250:
                break
            frames.append([(x, 30.0)])
        frames += [[], [], [], []]  # the view empties between cells
    harness.run(frames)
    harness.flush()
    done = harness.done
    assert len(done) == len(scales) and harness.counters[L.C_TRACKS] == len(scales)  # no cell split in two
    learned = done[2:]  # the first cells teach the profile
    for info, h in learned:
        assert info[L.SI_ENTRY_FRAME] >= 0 and info[L.SI_EXIT_FRAME] > info[L.SI_ENTRY_FRAME]
        x = h[:, L.N_H_EXTRA + B_X]
        assert np.all(np.diff(x) > 0) and x[-1] >= 170  # followed to the emission line
    assert harness.motion[L.M_N].sum() > 0
    # the profile holds the three speeds (ms per px) where every cell passed
    slow = harness.motion[L.M_SLOW]
    assert 1 / slow[int(60 / L.MOTION_BIN_PX)] == pytest.approx(5.0, rel=0.1)
    assert 1 / slow[int(125 / L.MOTION_BIN_PX)] == pytest.approx(15.0, rel=0.1)
    assert 1 / slow[int(200 / L.MOTION_BIN_PX)] == pytest.approx(7.0, rel=0.1)
