"""The camera contract, run against every backend that works on this machine.

synthetic and replay join when their modules are installed; basler runs on the pylon camera
emulator (its own transport layer, no network discovery) and genicam on the ``viky.cti`` GenTL
producer from the genicam wheel. Each backend is built by a factory that returns a closed camera
and the frame geometry it was asked for.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from acquisition.camera import Camera, CameraState, make_camera
from mimlsort.errors import ConfigError, StateError

W, H = 256, 96


def _synthetic(tmp_path):
    pytest.importorskip("acquisition.synthetic", reason="acquisition.synthetic not written yet")
    return make_camera("synthetic", {"width": W, "height": H, "duration_s": 0.05, "fps": 2000.0}), (H, W)


def _replay(tmp_path):
    pytest.importorskip("acquisition.replay", reason="acquisition.replay not written yet")
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for k in range(40):
        cv2.imwrite(str(tmp_path / f"img{k:04d}.png"), rng.integers(0, 255, (H, W), dtype=np.uint8))
    return make_camera("replay", {"path": str(tmp_path), "fps": 1000.0, "pixel_size_um": 0.5}), (H, W)


def _basler(tmp_path):
    os.environ.setdefault("PYLON_CAMEMU", "1")
    if importlib.util.find_spec("pypylon") is None:  # not importorskip: see acquisition.basler._pylon
        pytest.skip("pypylon not installed (mimlsort[basler])")
    return make_camera("basler", {"transport": "BaslerCamEmu", "width": W, "height": H, "exposure_us": 100.0,
                                  "fps": 2000.0, "buffers": 16}), (H, W)


def _genicam(tmp_path):
    if importlib.util.find_spec("harvesters") is None:
        pytest.skip("harvesters not installed (mimlsort[genicam])")
    from acquisition.genicam import viky_cti

    if viky_cti() is None:
        pytest.skip("the genicam wheel ships no viky.cti here")
    return make_camera("genicam", {"cti": viky_cti(), "serial": "0", "width": W, "height": 128, "fps": 200.0}), (128, W)


BACKENDS = {"synthetic": _synthetic, "replay": _replay, "basler": _basler, "genicam": _genicam}


@pytest.fixture(params=sorted(BACKENDS))
def camera(request, tmp_path):
    cam, shape = BACKENDS[request.param](tmp_path)
    yield cam, shape
    cam.close()


def test_open_describes_the_frames(camera):
    cam, shape = camera
    assert isinstance(cam, Camera) and cam.state is CameraState.CLOSED
    with pytest.raises(StateError):
        _ = cam.info
    with cam:
        info = cam.info
        assert (info.height, info.width) == shape
        assert info.dtype in ("uint8", "uint16") and 8 <= info.bit_depth <= 16
        assert info.backend == cam.backend
        ring = info.make_ring(8)
        assert ring.images.shape == (8, *shape) and ring.images.dtype == np.dtype(info.dtype)
    assert cam.state is CameraState.CLOSED


def test_state_machine_refuses_out_of_order_calls(camera):
    cam, _ = camera
    with pytest.raises(StateError):
        cam.start()
    cam.open()
    with pytest.raises(StateError):
        cam.open()
    ring = cam.info.make_ring(8)
    with pytest.raises(StateError):
        cam.grab_into(ring)
    cam.start()
    with pytest.raises(StateError):
        cam.start()
    cam.close()
    cam.close()  # idempotent
    assert cam.state is CameraState.CLOSED


def test_frames_go_into_the_ring_in_order(camera):
    cam, shape = camera
    with cam:
        ring = cam.info.make_ring(64)
        cam.start()
        got = 0
        for _ in range(30):
            got += cam.grab_into(ring, timeout_s=2.0)
        cam.stop()
    assert got == 30 and ring.written == 30 and cam.delivered == 30
    ids = ring.frame_ids[:30]
    assert np.all(np.diff(ids) >= 1), ids
    assert ring.camera_dropped == int(np.sum(np.diff(ids) - 1))
    ts = ring.timestamps_ns[:30]
    assert np.all(np.diff(ts) >= 0)
    frame = ring.newest()
    assert frame.image.shape == shape and frame.frame_id == ids[-1]
    assert ring.images[:30].std() > 0  # real content, not an untouched buffer


def test_restart_after_stop_and_read(camera):
    cam, shape = camera
    with cam:
        cam.start()
        f1 = cam.read(timeout_s=2.0)
        cam.stop()
        cam.start()
        f2 = cam.read(timeout_s=2.0)
        cam.stop()
    assert f1 is not None and f2 is not None
    assert f1.image.shape == shape and f2.image.dtype == f1.image.dtype
    assert f1.camera_clock == cam.info.camera_clock


def test_apply_reports_and_rejects_unknown_settings(camera):
    cam, _ = camera
    with cam:
        assert cam.apply({}) == {}
        with pytest.raises(ConfigError) as e:
            cam.apply({"no_such_feature": 1})
        assert "no_such_feature" in str(e.value)


@pytest.mark.parametrize("backend", ["replay", "basler", "genicam"])
def test_a_camera_mounted_across_the_flow_delivers_turned_frames(backend, tmp_path):
    cam, (h, w) = BACKENDS[backend](tmp_path)
    turned = type(cam)(cam.settings, flow_direction="top-to-bottom")
    with turned:
        assert (turned.info.height, turned.info.width) == (w, h)
        assert (turned.sensor_info.height, turned.sensor_info.width) == (h, w)
        ring = turned.info.make_ring(16)
        turned.start()
        got = sum(turned.grab_many_into(ring, 4, timeout_s=2.0) for _ in range(8))
        frame = turned.read(timeout_s=2.0)
    assert got >= 8 and ring.images.shape[1:] == (w, h) and ring.images[:got].std() > 0
    assert frame is not None and frame.image.shape == (w, h)
