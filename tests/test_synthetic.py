"""The synthetic microfluidic camera: determinism, truth that matches the pixels, channel geometry,
faults, the camera contract and settings validation."""

import dataclasses
import math
import time

import numpy as np
import pytest

from acquisition.camera import CameraState, make_camera
from acquisition.synthetic import (
    ClassSpec,
    SyntheticCamera,
    SyntheticSettings,
    TruthRecord,
    read_truth_csv,
    render_frames,
    simulate_truth,
    write_truth_csv,
)
from mimlsort.errors import ConfigError, StateError
from mimlsort.settings import from_mapping

#: a cell without texture, nucleus, granules or rim, imaged without noise: its darkness is
#: exactly coverage x body darkness, so the true ellipse can be read back from the pixels
PLAIN = ClassSpec("plain", diameter_um=14.0, diameter_sd_um=1.0, di=0.72, di_sd=0.05, darkness=30.0,
                  edge_darkness=0.0, texture_contrast=0.0, granules=0.0, nucleus_fraction=0.0, appearance_sd=0.0)
CLEAN = dict(noise_sd=0.0, fixed_pattern_sd=0.0, illumination_gradient=0.0, exposure_us=0.0, debris_per_second=0.0,
             doublet_fraction=0.0, classes=(PLAIN,))


def test_same_seed_same_frames_and_truth_other_seed_differs():
    s = SyntheticSettings(seed=11, cells_per_second=120)
    f1, t1 = render_frames(s, 400)
    f2, t2 = render_frames(s, 400)
    assert np.array_equal(f1, f2)
    assert t1 == t2 and len(t1) > 0
    f3, t3 = render_frames(dataclasses.replace(s, seed=12), 400)
    assert not np.array_equal(f1, f3)
    assert t1 != t3


def test_camera_frames_match_render_frames_and_truth_grows():
    s = SyntheticSettings(seed=4, cells_per_second=100)
    frames, truth = render_frames(s, 300)
    with SyntheticCamera(s) as cam:
        cam.start()
        got = [cam.read() for _ in range(300)]
        assert [f.frame_id for f in got] == list(range(300))
        assert [f.timestamp_ns for f in got] == [round(i * 1e9 / s.fps) for i in range(300)]
        assert all(f.camera_clock for f in got)
        assert np.array_equal(np.stack([f.image for f in got]), frames)
        assert cam.truth == truth
        # truth holds the objects that came into view so far, in order of appearance
        assert all(t.first_frame < 300 for t in cam.truth)
        firsts = [t.first_frame for t in cam.truth]
        assert firsts == sorted(firsts)


def test_truth_is_consistent_and_follows_the_class_specs():
    s = SyntheticSettings(seed=21, duration_s=12.0, cells_per_second=40)
    truth = simulate_truth(s)
    cells = [t for t in truth if t.kind == "cell"]
    assert len(cells) > 300
    for t in cells:
        assert t.entry_ms < t.exit_ms
        assert t.transit_ms == pytest.approx(t.exit_ms - t.entry_ms)
        assert t.birth_ms < t.entry_ms
        assert t.di_rest < t.di_max <= 0.9
        assert t.v_max_mm_s > t.v_before_mm_s > 0
        assert t.dir_per_ms > 0
        assert 6.0 <= t.diameter_um <= 0.9 * s.channel_width_um
        # area conserved, DI from the semi-axes
        assert t.major_um * t.minor_um == pytest.approx((t.diameter_um / 2) ** 2)
        assert (t.major_um - t.minor_um) / (t.major_um + t.minor_um) == pytest.approx(t.di_max)
    spec = {c.name: c for c in s.classes}
    n = len(cells)
    for name, c in spec.items():
        mine = [t for t in cells if t.cls == name]
        p = c.fraction / sum(x.fraction for x in s.classes)
        assert abs(len(mine) / n - p) < 4 * math.sqrt(p * (1 - p) / n)
        di = np.array([t.di_max for t in mine])
        assert abs(di.mean() - c.di) < 4 * c.di_sd / math.sqrt(len(mine)) + 0.01  # + the clip at 0.9
        d = np.array([t.diameter_um for t in mine])
        assert abs(d.mean() - c.diameter_um) < 4 * c.diameter_sd_um / math.sqrt(len(mine)) + 0.2
    hct = np.median([t.transit_ms for t in cells if t.cls == "hct116"])
    wbc = np.median([t.transit_ms for t in cells if t.cls == "wbc"])
    assert hct < wbc  # the paper's HCT116 pass faster
    assert set(spec) == {t.cls for t in cells}
    # the same run through the camera sees the same objects
    seen = render_frames(dataclasses.replace(s, duration_s=0.0), 800)[1]
    assert seen == truth[: len(seen)]


def test_pixels_match_the_truth():
    """Moments of the rendered darkness give back the true DI, diameter and crossing times."""
    s = SyntheticSettings(seed=3, cells_per_second=25, **CLEAN)
    n = 1200
    frames, truth = render_frames(s, n)
    with SyntheticCamera(s) as cam:
        bg = cam.background.astype(np.float64)
        lay = cam.layout
    frame_ms = 1000.0 / s.fps
    cells = [t for t in truth if t.kind == "cell" and t.queued_ms == 0 and t.last_frame < n]
    assert len(cells) >= 3
    yy, xx = np.mgrid[: s.height, : s.width].astype(np.float64)

    def ellipse(img):
        w = np.clip((bg - img) / PLAIN.darkness, 0, 1)
        m = w.sum()
        cx, cy = (w * xx).sum() / m, (w * yy).sum() / m
        mxx = (w * (xx - cx) ** 2).sum() / m + 1 / 12
        myy = (w * (yy - cy) ** 2).sum() / m + 1 / 12
        a, b = 2 * math.sqrt(mxx), 2 * math.sqrt(myy)
        return m, cx, (a - b) / (a + b)

    checked = {"di": 0, "diameter": 0, "entry": 0}
    for t in cells:
        centre = int(round(0.5 * (t.entry_ms + t.exit_ms) / frame_ms))
        others = [o for o in truth if o is not t and o.first_frame <= centre <= o.last_frame]
        if others:
            continue
        _, _, di = ellipse(frames[centre].astype(np.float64))
        assert di == pytest.approx(t.di_max, abs=0.004)
        checked["di"] += 1
        # upstream, at rest: the area gives the diameter
        f_rest = t.first_frame + int(0.45 * (int(t.entry_ms / frame_ms) - t.first_frame))
        if any(o is not t and o.first_frame <= f_rest <= o.last_frame for o in truth):
            continue
        area, cx, _ = ellipse(frames[f_rest].astype(np.float64))
        if cx < t.diameter_um / s.pixel_size_um / 2 + 2:
            continue  # still partly outside the ROI
        assert 2 * math.sqrt(area / math.pi) * s.pixel_size_um == pytest.approx(t.diameter_um, rel=0.01)
        checked["diameter"] += 1
        # the centroid crosses the constriction's start at the true entry time
        f_in = int(t.entry_ms / frame_ms)
        if not any(o is not t and o.first_frame <= f_in + 1 and o.last_frame >= f_in for o in truth):
            _, xa, _ = ellipse(frames[f_in].astype(np.float64))
            _, xb, _ = ellipse(frames[f_in + 1].astype(np.float64))
            assert xa < lay.constriction_x0 <= xb
            t_cross = (f_in + (lay.constriction_x0 - xa) / (xb - xa)) * frame_ms
            assert t_cross == pytest.approx(t.entry_ms, abs=0.1 * frame_ms)
            checked["entry"] += 1
    assert min(checked.values()) >= 2, checked


def test_walls_are_darker_than_the_lumen_and_the_constriction_narrows_it():
    s = SyntheticSettings()
    with SyntheticCamera(s) as cam:
        bg = cam.background.astype(np.float64)
        lay = cam.layout
    x0, x1 = int(math.ceil(lay.constriction_x0)), int(lay.constriction_x1)
    up = slice(2, max(3, x0 - 4))
    lumen = bg[int(lay.center_y), up].mean()
    wall = bg[2, up].mean()
    assert lumen > wall + 20
    # a row inside the wide channel but outside the gap: lumen upstream, wall in the constriction
    row = int(round(0.5 * (lay.channel_y0 + lay.gap_y0)))
    assert bg[row, up].mean() > bg[row, x0 + 2:x1 - 2].mean() + 20
    # the centre row stays lumen through the constriction
    assert bg[int(lay.center_y), x0 + 2:x1 - 2].mean() > wall + 20
    # a dark line runs along the walls
    col = bg[:, 10]
    edge = col[int(lay.channel_y0) - 2:int(lay.channel_y0) + 3].min()
    assert edge < wall - 10
    assert lay.constriction_x1 - lay.constriction_x0 == pytest.approx(s.constriction_length_um / s.pixel_size_um)
    assert lay.channel_y1 - lay.channel_y0 == pytest.approx(s.channel_width_um / s.pixel_size_um)


def test_cells_are_darker_than_the_lumen():
    s = SyntheticSettings(seed=5, cells_per_second=100, debris_per_second=0)
    frames, truth = render_frames(s, 500)
    with SyntheticCamera(s) as cam:
        bg = cam.background.astype(np.int32)
    t = next(t for t in truth if t.first_frame + 40 < 500)
    f = t.first_frame + 40
    diff = frames[f].astype(np.int32) - bg
    assert diff.min() < -15
    assert np.median(np.abs(diff)) <= 2  # elsewhere only noise (sd 2)
    assert (diff > 10).mean() < 1e-3  # nothing brighter than the lumen


def test_dropped_frames_are_frame_id_gaps_the_ring_counts():
    s = SyntheticSettings(seed=2, duration_s=0.25, drop_rate=0.1, cells_per_second=10)
    with SyntheticCamera(s) as cam:
        ring = cam.info.make_ring(2048)
        cam.start()
        while cam.grab_into(ring):
            pass
        assert cam.exhausted
        ids = ring.frame_ids[: ring.written]
    total = s.frame_count
    assert ring.written == cam.delivered < total
    assert ring.camera_dropped == total - cam.delivered - (total - 1 - int(ids[-1]))
    assert ring.camera_dropped > 0
    assert np.all(np.diff(ids) >= 1)
    assert cam.failed_buffers == 0


def test_failed_buffers_are_counted():
    s = SyntheticSettings(seed=2, duration_s=0.25, failed_rate=0.05, cells_per_second=10)
    with SyntheticCamera(s) as cam:
        ring = cam.info.make_ring(2048)
        cam.start()
        while cam.grab_into(ring):
            pass
    assert cam.failed_buffers > 0
    assert cam.delivered + cam.failed_buffers == s.frame_count
    assert cam.timeouts == 0


def test_wrapping_frame_counter():
    s = SyntheticSettings(seed=2, duration_s=0.15, id_bits=8, cells_per_second=10)
    with SyntheticCamera(s) as cam:
        assert cam.info.id_modulus == 256
        ring = cam.info.make_ring(1024)
        cam.start()
        while cam.grab_into(ring):
            pass
    ids = ring.frame_ids[: ring.written]
    assert ids.max() == 255 and ring.written == 600
    assert ring.camera_dropped == 0


def test_flicker_changes_frame_brightness():
    base = SyntheticSettings(seed=2, cells_per_second=0, debris_per_second=0)
    steady, _ = render_frames(base, 200)
    flick, _ = render_frames(dataclasses.replace(base, flicker=0.05), 200)
    assert flick.mean(axis=(1, 2)).std() > 5 * steady.mean(axis=(1, 2)).std()


def test_the_lamp_scales_the_whole_frame_and_is_refused_outside_its_range():
    base = SyntheticSettings(seed=2, cells_per_second=0, debris_per_second=0, noise_sd=0.0)
    steady, _ = render_frames(base, 20)
    dim, _ = render_frames(dataclasses.replace(base, lamp=0.5), 20)
    assert np.abs(dim.astype(float) - 0.5 * steady).max() <= 1.0  # walls and channel alike
    with pytest.raises(ConfigError, match="lamp"):
        SyntheticSettings(lamp=0.0)


def test_doublets_debris_and_stuck_cells_appear_when_enabled():
    on = SyntheticSettings(seed=8, duration_s=3.0, cells_per_second=30, doublet_fraction=0.3, stuck_fraction=0.3,
                           debris_per_second=20, stuck_ms=(10.0, 30.0))
    truth = simulate_truth(on)
    kinds = {k: [t for t in truth if t.kind == k] for k in ("cell", "doublet", "debris")}
    assert all(kinds.values())
    for d in kinds["doublet"]:
        assert "+" in d.cls and math.isnan(d.di_max) and d.entry_ms < d.exit_ms
    lo, hi = on.debris_diameter_um
    assert all(lo <= d.diameter_um <= hi and d.di_max == 0 for d in kinds["debris"])
    stuck = [t for t in kinds["cell"] if t.stuck_ms > 0]
    free = [t for t in kinds["cell"] if t.stuck_ms == 0 and t.queued_ms == 0]
    assert stuck and all(10.0 <= t.stuck_ms <= 30.0 for t in stuck)
    # a stuck cell stays in view longer by its stuck time
    in_view = lambda ts: np.median([(t.last_frame - t.first_frame) / on.fps * 1000 - t.stuck_ms for t in ts])
    assert np.median([(t.last_frame - t.first_frame) / on.fps * 1000 for t in stuck]) > in_view(free) + 5
    off = dataclasses.replace(on, doublet_fraction=0.0, stuck_fraction=0.0, debris_per_second=0.0)
    truth = simulate_truth(off)
    assert {t.kind for t in truth} == {"cell"} and all(t.stuck_ms == 0 for t in truth)


def test_doublets_and_several_cells_are_rendered():
    s = SyntheticSettings(seed=9, cells_per_second=150, doublet_fraction=0.5, debris_per_second=0)
    frames, truth = render_frames(s, 400)
    counts = np.zeros(400, int)
    for t in truth:
        counts[max(0, t.first_frame):min(399, t.last_frame) + 1] += 1
    assert counts.max() >= 3
    d = next(t for t in truth if t.kind == "doublet" and t.first_frame + 60 < 400)
    with SyntheticCamera(s) as cam:
        bg = cam.background.astype(np.int32)
    dark = (bg - frames[d.first_frame + 60].astype(np.int32)) > 10
    assert dark.sum() > 2 * math.pi * (6.0 / s.pixel_size_um) ** 2 * 0.8  # two cells' worth of pixels


def test_camera_contract_and_misuse():
    cam = SyntheticCamera(SyntheticSettings(duration_s=0.01))
    with pytest.raises(StateError):
        cam.info
    with pytest.raises(StateError):
        cam.start()
    info = cam.open()
    assert (info.width, info.height, info.dtype, info.fps, info.camera_clock) == (256, 96, "uint8", 4000.0, True)
    assert info.frame_count == 40 and info.pixel_size_um == 0.5
    with pytest.raises(StateError):
        cam.open()
    ring = info.make_ring(64)
    with pytest.raises(StateError):
        cam.grab_into(ring)
    cam.start()
    with pytest.raises(StateError):
        cam.start()
    n = 0
    while cam.grab_into(ring):
        n += 1
    assert n == 40 and cam.exhausted and cam.delivered == 40 and cam.timeouts == 0
    assert not cam.grab_into(ring)  # stays exhausted
    cam.stop()
    assert cam.state is CameraState.OPEN
    cam.close()
    assert cam.state is CameraState.CLOSED
    cam.close()  # idempotent
    with SyntheticCamera() as c2:
        assert c2.state is CameraState.OPEN
        c2.start()
        assert c2.read() is not None
    assert c2.state is CameraState.CLOSED
    # reopening starts the run again
    with cam:
        cam.start()
        assert cam.read().frame_id == 0 and not cam.exhausted


def test_registry_and_settings_from_mapping():
    cam = make_camera("synthetic", {"fps": 2000.0, "seed": 3,
                                    "classes": [{"name": "a"}, {"name": "b", "fraction": 2.0}]})
    assert isinstance(cam, SyntheticCamera)
    assert cam.settings.fps == 2000.0 and [c.name for c in cam.settings.classes] == ["a", "b"]


@pytest.mark.parametrize("changes, key", [
    ({"fps": 0.0}, "fps"),
    ({"pixel_size_um": -1.0}, "pixel_size_um"),
    ({"height": 40}, "channel_width_um"),
    ({"constriction_gap_um": 40.0}, "constriction_gap_um"),
    ({"constriction_length_um": 200.0}, "constriction_length_um"),
    ({"drop_rate": 0.9}, "drop_rate"),
    ({"debris_diameter_um": (3.0, 1.0)}, "debris_diameter_um"),
    ({"classes": ()}, "classes"),
    ({"classes": (ClassSpec("a"), ClassSpec("a"))}, "classes"),
    ({"classes": (ClassSpec("big", diameter_um=40.0),)}, "classes[0].diameter_um"),
    ({"id_bits": 4}, "id_bits"),
])
def test_bad_settings_name_their_key(changes, key):
    with pytest.raises(ConfigError) as e:
        dataclasses.replace(SyntheticSettings(), **changes)
    assert e.value.key == key


def test_bad_class_and_unknown_keys_from_a_table():
    with pytest.raises(ConfigError) as e:
        from_mapping(SyntheticSettings, {"classes": [{"name": "x", "di": 1.2}]}, "camera.synthetic")
    assert e.value.key == "camera.synthetic.classes[0].di"
    with pytest.raises(ConfigError) as e:
        make_camera("synthetic", {"frame_rate": 100})
    assert e.value.key == "camera.synthetic.frame_rate"
    with pytest.raises(ConfigError) as e:
        ClassSpec("x", rest_di=0.8, di=0.7)
    assert e.value.key == "rest_di"


def test_live_changes_and_refusals():
    with SyntheticCamera(SyntheticSettings(seed=1)) as cam:
        assert cam.apply({"cells_per_second": 5.0, "noise_sd": 0.0}) == {"cells_per_second": 5.0, "noise_sd": 0.0}
        assert cam.settings.cells_per_second == 5.0
        with pytest.raises(ConfigError) as e:
            cam.apply({"width": 128})
        assert e.value.key == "camera.synthetic.width"
        with pytest.raises(ConfigError) as e:
            cam.apply({"drop_rate": 2.0})
        assert e.value.key == "camera.synthetic.drop_rate"
        with pytest.raises(ConfigError) as e:
            cam.apply({"cells_per_second": "many"})
        assert e.value.key == "camera.synthetic.cells_per_second"
        assert cam.settings.cells_per_second == 5.0  # a refused change leaves the settings alone
        cam.start()
        f = cam.read()
        # no noise now: the frame equals the background where nothing is in view
        assert np.array_equal(f.image[:, :3], cam.background[:, :3])


def test_realtime_paces_frames_and_times_out():
    s = SyntheticSettings(fps=2000.0, realtime=True, cells_per_second=0, debris_per_second=0)
    with SyntheticCamera(s) as cam:
        ring = cam.info.make_ring(64)
        cam.start()
        t0 = time.monotonic()
        for _ in range(40):
            assert cam.grab_into(ring, timeout_s=1.0)
        assert time.monotonic() - t0 >= 38 / 2000  # paced by the frame period, not as fast as possible
    slow = dataclasses.replace(s, fps=1.0)
    with SyntheticCamera(slow) as cam:
        ring = cam.info.make_ring(8)
        cam.start()
        assert cam.grab_into(ring, timeout_s=0.5)  # frame 0 is due at once
        assert not cam.grab_into(ring, timeout_s=0.01)
        assert cam.timeouts == 1 and not cam.exhausted


def test_truth_csv_round_trip(tmp_path):
    s = SyntheticSettings(seed=8, duration_s=0.5, doublet_fraction=0.5, debris_per_second=20)
    truth = simulate_truth(s)
    assert any(math.isnan(t.di_max) for t in truth)
    p = tmp_path / "truth.csv"
    write_truth_csv(truth, p)
    back = read_truth_csv(p)
    assert len(back) == len(truth)
    for a, b in zip(truth, back):
        for f in dataclasses.fields(TruthRecord):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if isinstance(va, float):
                assert (math.isnan(va) and math.isnan(vb)) or vb == pytest.approx(va, rel=1e-8)
            else:
                assert va == vb


def test_realtime_consumer_that_falls_behind_loses_frames_as_gaps():
    s = SyntheticSettings(fps=20000.0, realtime=True, max_lag_frames=16, cells_per_second=0, debris_per_second=0)
    with SyntheticCamera(s) as cam:
        ring = cam.info.make_ring(64)
        cam.start()
        assert cam.grab_into(ring, timeout_s=1.0)
        time.sleep(0.02)  # 400 frame periods away: the camera's 16 buffers overflow
        assert cam.grab_into(ring, timeout_s=1.0)
    ids = ring.frame_ids[:2]
    assert ids[1] - ids[0] > 16
    assert ring.camera_dropped == ids[1] - ids[0] - 1


def test_python_kernel_path_draws_the_same_frames():
    s = SyntheticSettings(seed=6, width=96, height=48, pixel_size_um=1.0, channel_width_um=30.0,
                          constriction_gap_um=5.0, constriction_start_um=30.0, constriction_length_um=30.0,
                          cells_per_second=300.0, flicker=0.05)
    frames = {}
    for kernels in ("numba", "python"):
        with SyntheticCamera(s, kernels=kernels) as cam:
            cam.start()
            frames[kernels] = np.stack([cam.read().image for _ in range(60)])
    assert np.array_equal(frames["numba"], frames["python"])
    assert (frames["numba"][-1].astype(int) - frames["numba"][0]).min() < -10  # cells came into view
    with pytest.raises(ConfigError):
        SyntheticCamera(s, kernels="cuda")


def test_kernel_and_python_path_agree_on_awkward_sprites():
    """The numba renderer and its pure-Python path (``py_func``) give the same pixels for sprites
    cut by the frame border, taller than wide, tiny, heavily blurred, under flicker."""
    from acquisition import _render as rk

    rng = np.random.default_rng(5)
    h, w = 40, 72
    bg = rng.integers(0, 256, (h, w)).astype(np.int16)
    noise = rng.integers(-50, 50, 1 << 13).astype(np.int16)
    n_sp = 4
    sp_i = np.array([(0, 1, k, k) for k in range(n_sp)], np.int64)
    changed = 0
    for trial in range(16):
        tex = rng.uniform(-5.0, 60.0, (n_sp, 48, 48)).astype(np.float32)
        sp_f = np.column_stack([rng.uniform(0.0, 12.0, n_sp), rng.uniform(0.3, 3.0, n_sp)])
        traj = np.column_stack([rng.uniform(-20.0, w + 20.0, n_sp), rng.uniform(-12.0, h + 12.0, n_sp),
                                rng.uniform(0.4, 22.0, n_sp), rng.uniform(0.4, 14.0, n_sp),
                                rng.choice([0.0, 0.03, 1.5, 12.0], n_sp)])
        traj[0, :2] = (float(rng.integers(0, w)), float(rng.integers(0, h)))  # centre on a pixel centre
        gain = 1.0 if trial % 2 else float(rng.uniform(0.7, 1.4))
        off = int(rng.integers(0, 1 << 12))
        out_nb = np.empty((h, w), np.uint8)
        out_py = np.empty((h, w), np.uint8)
        drawn = rk.render_frame(out_nb, bg, noise, off, gain, sp_i, sp_f, n_sp, traj, tex, 0)
        assert rk.render_frame.py_func(out_py, bg, noise, off, gain, sp_i, sp_f, n_sp, traj, tex, 0) == drawn == n_sp
        assert np.array_equal(out_nb, out_py), f"trial {trial}"
        empty = np.empty((h, w), np.uint8)
        rk.render_frame(empty, bg, noise, off, gain, sp_i, sp_f, 0, traj, tex, 0)
        changed += int((empty != out_nb).sum())
    assert changed > 1000  # the sprites were drawn, not all off-frame


def test_object_kernels_match_the_numpy_expressions():
    """The per-object kernels compute exactly (bit for bit) what these NumPy expressions do, so a
    seed gives the same scene as before they existed."""
    from acquisition import _render as rk

    rng = np.random.default_rng(8)
    g = np.linspace(-1.0, 1.0, 48)
    field_ = rng.normal(0.0, 1.0, (48, 48))
    body, mean, sd, contrast = 21.3, float(field_.mean()), float(field_.std()), 3.7
    ca, cb, rad, ncon = rng.uniform(-0.3, 0.3, 3), rng.uniform(-0.3, 0.3, 3), 0.37, -5.1
    gran = rng.uniform(0.0, 9.0, (48, 48))
    ref = np.full((48, 48), body)
    ref += (field_ - mean) / sd * contrast
    nuc = np.zeros((48, 48))
    for a_, b_ in zip(ca, cb):
        dist = np.sqrt((g[:, None] - b_) ** 2 + (g[None, :] - a_) ** 2)
        np.maximum(nuc, np.clip((rad - dist) * 10.0 + 0.5, 0.0, 1.0), out=nuc)
    ref += nuc * ncon
    ref += gran
    ref = np.maximum(ref, body / 3.0).astype(np.float32)
    got = np.empty((48, 48), np.float32)
    rk.assemble_texture(got, body, field_, mean, sd, contrast, (g[None, :] - cb[:, None]) ** 2,
                        (g[None, :] - ca[:, None]) ** 2, rad, ncon, gran, body / 3.0)
    assert np.array_equal(got, ref)
    none = np.zeros((0, 0))
    rk.assemble_texture(got, body, field_, 0.0, 0.0, 0.0, none, none, 0.0, 0.0, none, body / 3.0)
    assert np.array_equal(got, np.full((48, 48), body, np.float32))

    x = np.arange(-9.0, 300.0, 0.25)
    x0, x1, R, ramp, v_up, v_c, v_down = 87.5, 167.5, 13.1, 6.0, 6.2, 41.0, 10.3

    def smooth(z):
        z = np.minimum(np.maximum(z, 0.0), 1.0)
        return z * z * (3.0 - 2.0 * z)

    s_ref = smooth((x - (x0 - R)) / max(R + ramp, 1e-6))
    v_ref = np.where(x <= x1, v_up + (v_c - v_up) * s_ref, v_c + (v_down - v_c) * smooth((x - x1) / max(R, 1.0)))
    s_got, v_got = np.empty_like(x), np.empty_like(x)
    rk.squeeze_profile(x, x0 - R, max(R + ramp, 1e-6), x1, max(R, 1.0), v_up, v_c, v_down, s_got, v_got)
    assert np.array_equal(s_got, s_ref) and np.array_equal(v_got, v_ref)
    t_ref = 12.5 + np.concatenate(([0.0], np.cumsum(np.diff(x) / (0.5 * (v_ref[1:] + v_ref[:-1])))))
    t_got = np.empty_like(x)
    rk.time_grid(x, v_ref, 12.5, t_got)
    assert np.array_equal(t_got, t_ref)
    z = np.empty_like(x)
    rk.smoothstep_ramp(x, 40.0, 20.0, z)
    assert np.array_equal(z, smooth((x - 40.0) / 20.0))
    centres, sig = rng.uniform(-1.0, 1.0, 7), 0.23
    e = np.empty((7, 48))
    rk.gauss_exponents(g, centres, 2 * sig * sig, e)
    assert np.array_equal(e, -((g[None, :] - centres[:, None]) ** 2) / (2 * sig * sig))
    di_ref = 0.02 + (0.71 - 0.02) * s_ref
    k_ref = np.sqrt((1.0 + di_ref) / (1.0 - di_ref))
    di_got, a_got = np.empty_like(x), np.empty_like(x)
    rk.squeezed_shape(s_ref, 0.02, 0.71 - 0.02, R, di_got, a_got)
    assert np.array_equal(di_got, di_ref) and np.array_equal(a_got, R * k_ref)
    traj = np.zeros((x.size, rk.N_T))
    rk.semi_axes(di_ref, R, traj)
    assert np.array_equal(traj[:, rk.T_A], R * k_ref) and np.array_equal(traj[:, rk.T_B], R / k_ref)
    xm, vm = 0.5 * (x[1:] + x[:-1]), (x[1:] - x[:-1]) / (t_ref[1:] - t_ref[:-1])
    assert rk.max_speed_between(x, t_ref, x0, x1) == vm[(xm >= x0) & (xm <= x1)].max()
    assert math.isnan(rk.max_speed_between(x, t_ref, 1e6, 2e6))


def test_exposure_blurs_moving_cells_along_the_flow():
    base = SyntheticSettings(seed=3, cells_per_second=25, **CLEAN)
    sharp, truth = render_frames(base, 700)
    blurred, _ = render_frames(dataclasses.replace(base, exposure_us=400.0), 700)
    with SyntheticCamera(base) as cam:
        bg = cam.background.astype(np.float64)
    t = next(t for t in truth if t.kind == "cell" and t.exit_ms * base.fps / 1000 < 690)
    f = int(round(0.5 * (t.entry_ms + t.exit_ms) * base.fps / 1000))  # in the constriction, fast
    d_sharp = bg - sharp[f]
    d_blur = bg - blurred[f]
    partial = lambda d: int(((d > 3) & (d < 0.9 * PLAIN.darkness)).sum())
    assert partial(d_blur) > 1.5 * partial(d_sharp)
    assert d_blur.sum() == pytest.approx(d_sharp.sum(), rel=0.03)  # blur moves darkness, keeps it


def _grab_all(s: SyntheticSettings, runs: bool, max_frames: int = 64):
    with SyntheticCamera(s) as cam:
        ring = cam.info.make_ring(s.frame_count + 8)
        cam.start()
        while True:
            n = cam.grab_many_into(ring, max_frames, 0.5) if runs else int(cam.grab_into(ring, 0.5))
            if n == 0 and cam.exhausted:
                break
        w = ring.written
        return (ring.images[:w].copy(), ring.frame_ids[:w].copy(), ring.timestamps_ns[:w].copy(),
                ring.camera_dropped, cam.failed_buffers, cam.delivered, list(cam.truth))


def test_runs_of_frames_without_the_gil_equal_frame_by_frame_grabs():
    # drops, failed buffers, a wrapping 8-bit counter, flicker and a crowded channel: every
    # per-frame path of _do_grab has its counterpart in the kernel's loop
    s = SyntheticSettings(seed=5, fps=5000.0, duration_s=0.6, cells_per_second=300.0, debris_per_second=40.0,
                          doublet_fraction=0.2, drop_rate=0.02, failed_rate=0.01, id_bits=8, flicker=0.05)
    one = _grab_all(s, runs=False)
    for max_frames in (64, 7):
        many = _grab_all(s, runs=True, max_frames=max_frames)
        assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1])
        assert np.array_equal(one[2], many[2])
        assert one[3:6] == many[3:6] and one[3] > 0 and one[4] > 0  # drops and failed buffers occurred
        assert one[6] == many[6]


def test_pregenerated_scene_gives_the_same_frames_and_truth():
    s = SyntheticSettings(seed=6, fps=5000.0, duration_s=0.5, cells_per_second=300.0, debris_per_second=50.0,
                          doublet_fraction=0.1)
    lazy = _grab_all(s, runs=True)
    pre = _grab_all(dataclasses.replace(s, pregenerate=True), runs=True)
    assert np.array_equal(lazy[0], pre[0]) and lazy[6] == pre[6] and len(pre[6]) > 50
    with pytest.raises(ConfigError, match="pregenerate"):
        SyntheticSettings(duration_s=0, pregenerate=True)
    with SyntheticCamera(dataclasses.replace(s, pregenerate=True)) as cam:
        with pytest.raises(ConfigError, match="cells_per_second"):
            cam.apply({"cells_per_second": 10.0})
        assert cam.apply({"noise_sd": 1.0}) == {"noise_sd": 1.0}


def test_runs_of_frames_are_paced_and_time_out():
    s = SyntheticSettings(fps=2000.0, realtime=True, cells_per_second=0, debris_per_second=0)
    with SyntheticCamera(s) as cam:
        ring = cam.info.make_ring(256)
        cam.start()
        t0 = time.monotonic_ns()
        n = 0
        while n < 100:
            n += cam.grab_many_into(ring, 100 - n, timeout_s=1.0)
        # no frame is published before it is due (frame k at t0 + k periods)
        due = cam._t0_host + np.arange(100) * 500_000
        assert np.all(ring.host_ns[:100] >= due) and ring.host_ns[99] - t0 >= 98 * 500_000
    with SyntheticCamera(dataclasses.replace(s, fps=1.0)) as cam:
        ring = cam.info.make_ring(8)
        cam.start()
        assert cam.grab_many_into(ring, 4, timeout_s=0.5) == 1  # frame 0 is due at once, frame 1 in 1 s
        assert cam.timeouts == 0
        assert cam.grab_many_into(ring, 4, timeout_s=0.01) == 0
        assert cam.timeouts == 1 and not cam.exhausted


def test_an_endless_run_keeps_a_bounded_truth_and_a_finite_one_keeps_all():
    # a demo left running all day must not grow by every simulated object (~2 MB a minute)
    from acquisition.synthetic import TRUTH_KEPT_ENDLESS

    endless = SyntheticCamera(SyntheticSettings(duration_s=0.0, realtime=False, seed=1))
    finite = SyntheticCamera(SyntheticSettings(duration_s=0.05, realtime=False, seed=1))
    for cam in (endless, finite):
        with cam:
            ring = cam.info.make_ring(64)
            cam.start()
            for _ in range(100):
                if not cam.grab_into(ring):
                    break
    assert endless.truth.maxlen == TRUTH_KEPT_ENDLESS and len(endless.truth) > 0
    assert isinstance(finite.truth, list) and len(finite.truth) > 0
