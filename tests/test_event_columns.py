"""dclab's columns of an event file describe the event image they sit beside: ``time`` is that
frame's time, ``area_um``/``bright_*`` the cell in that frame (mimlsort's rest-shape values stay in
/mimlsort/events), brightness in the stored 8-bit image's grey levels whatever the camera's depth."""

from __future__ import annotations

import numpy as np
import pytest

from app.config import config_from_mapping


@pytest.fixture(scope="module")
def tracked_file(tmp_path_factory):
    from app.session import build_run

    folder = tmp_path_factory.mktemp("columns")
    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.6, "realtime": False, "seed": 6,
                                                          "cells_per_second": 60.0}},
        "model": {"path": "none"},
        "output": {"folder": str(folder), "report": False, "writer": "thread"},
    })
    with build_run(cfg, lossless=True) as run:
        assert run.wait(120)
    return next(folder.glob("*.rtdc"))


def test_time_is_the_event_frames_time(tracked_file):
    import dclab

    with dclab.new_dataset(tracked_file) as ds:
        fps = ds.config["imaging"]["frame rate"]
        t, frame = ds["time"][:], ds["frame"][:]
        assert len(t) >= 10
        # one time base: the frame's own time, not the exit several frames later
        np.testing.assert_allclose((t - t[0]) * fps, frame - frame[0], atol=0.05)


def test_area_and_brightness_are_the_event_images(tracked_file):
    import cv2
    import dclab

    from app.storage import read_events

    feats, _ = read_events(tracked_file)
    with dclab.new_dataset(tracked_file) as ds:
        px = ds.config["imaging"]["pixel size"]
        n = len(ds)
        hull_err, bright_err = [], []
        for i in range(n):
            mask = ds["mask"][i] > 0
            if not mask.any():
                continue
            cnts, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            hull = cv2.convexHull(np.concatenate(cnts))
            hull_err.append(ds["area_um"][i] / (cv2.contourArea(hull) * px * px) - 1)
            bright_err.append(ds["bright_avg"][i] - ds["image"][i][mask].mean())
        assert len(hull_err) >= 10
        assert np.median(np.abs(bright_err)) < 0.5, bright_err
        assert np.median(np.abs(hull_err)) < 0.002, hull_err
        # mimlsort's own area_um (at rest, upstream) is kept beside them, and differs
        assert not np.allclose(ds["area_um"][:], feats["area_um"], rtol=1e-3)


def test_brightness_of_a_12_bit_camera_is_in_the_stored_images_grey_levels(tmp_path):
    import dclab

    from app.records import CellRecord
    from app.storage import EventWriter, RunMeta
    from tracking.events import CellEvent, Quality, Snapshot
    from tracking.features import FEATURES

    img = np.full((20, 40), 1600, np.uint16)  # 12-bit grey 1600 = 8-bit 100
    mask = np.zeros(img.shape, bool)
    mask[5:15, 10:20] = True
    snap = Snapshot(image=img, background=img, mask=mask, frame_id=7, pos_x_px=15.0, pos_y_px=10.0)
    feats = {name: 1.0 for name in FEATURES}
    crop = np.zeros((8, 8), np.uint16)
    ev = CellEvent(0, 0, feats, crop, crop, 0.5, 5, 9, 0, Quality.OK,
                   extra={"image_bright_avg": 1600.0, "image_bright_sd": 32.0, "image_time_ms": 1.75,
                          "image_bg_off": -48.0},
                   snapshot=snap)
    meta = RunMeta(pixel_size_um=0.5, fps=4000.0, roi=(40, 20), bit_depth=12)
    with EventWriter(tmp_path / "e.rtdc", meta=meta) as w:
        w.write([CellRecord(ev, np.zeros(0, np.float32), None, None)])
    with dclab.new_dataset(tmp_path / "e.rtdc") as ds:
        assert ds["image"][0][mask].mean() == 100
        assert ds["bright_avg"][0] == pytest.approx(100.0) and ds["bright_sd"][0] == pytest.approx(2.0)
        assert ds["bg_off"][0] == pytest.approx(-3.0)  # dclab adds it to the stored 8-bit image_bg
        assert ds["time"][0] == pytest.approx(0.00175)
        assert ds.config["user"]["camera bit depth"] == 12


def test_a_flickering_lamps_offset_is_each_events_bg_off(tmp_path):
    # dclab adds bg_off to image_bg (bright_bc_*, bright_perc_*): it must be the event frame's
    # own offset, which under lamp flicker moves by grey levels from frame to frame
    import dclab

    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.4, "realtime": False, "seed": 6,
                                                          "cells_per_second": 80.0, "flicker": 0.05}},
        "model": {"path": "none"},
        "output": {"folder": str(tmp_path), "report": False, "writer": "thread"},
    })
    with build_run(cfg, lossless=True) as run:
        assert run.wait(120)
        st = run.status()
    # the operator sees it too: the status line and the GUI's status panel (5% reads 0.022)
    assert 0.015 < st.light_flicker < 0.06 and "lamp flicker" in st.line(), st.line()
    with dclab.new_dataset(next(tmp_path.glob("*.rtdc"))) as ds:
        assert len(ds) >= 10
        off = ds["bg_off"][:]
        err = []
        for i in range(len(ds)):
            image, bg = ds["image"][i].astype(float), ds["image_bg"][i].astype(float)
            empty = ds["mask"][i] == 0
            empty[:, :] &= np.abs(image - bg - off[i]) < 12  # the channel, not the cell's halo
            err.append(np.mean((image - bg)[empty]) - off[i])
        assert np.std(off) > 1.0, off  # the light moved (without flicker: sd 0.05)
        assert np.median(np.abs(err)) < 0.6, err  # (about 0.2 here)


@pytest.mark.parametrize("snapshots, images", [(True, "roi"), (False, "crop")])
def test_the_event_image_mode_comes_from_the_configuration(tmp_path, snapshots, images):
    # it was chosen from the first cells written: a run that fell behind at its start (their ROI
    # frames overwritten) wrote crops, no mask and no background for the whole run
    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.1, "realtime": False, "seed": 6}},
        "model": {"path": "none"},
        "tracking": {"snapshots": snapshots},
        "output": {"folder": str(tmp_path), "report": False, "writer": "thread"},
    })
    run = build_run(cfg, lossless=True)
    try:
        assert run.writer.meta.event_images == images
    finally:
        run.close()


def test_runs_of_a_day_in_a_folder_are_numbered(tmp_path):
    # every run said "run index 1": several measurements of a day all read "M1" in DCscope
    import time

    from app.session import run_index_of_day

    assert run_index_of_day(tmp_path) == 1
    today = time.strftime("%Y%m%d")
    for name in (f"blood_{today}-101010.rtdc", f"blood_{today}-101010_raw.rtdc", "blood_20200101-000000.rtdc",
                 f"beads_{today}-111111_2.rtdc"):
        (tmp_path / name).write_bytes(b"")
    assert run_index_of_day(tmp_path) == 3  # two event files of today; not the raw one, not another day's


def test_a_replayed_recording_is_dated_and_numbered_as_the_measurement(tmp_path):
    # a replay's event file said the replay's date, time and the output folder's run index: in
    # DCscope yesterday's measurement read as today's, "M1", beside its own raw recording's M4
    import dclab
    import h5py

    from acquisition.synthetic import SyntheticSettings
    from app.session import build_run
    from app.simdata import record_simulation

    rec = tmp_path / "rec.rtdc"
    record_simulation(SyntheticSettings(duration_s=0.3, cells_per_second=60.0, seed=3), rec)
    with h5py.File(rec, "a") as f:
        f.attrs.update({"experiment:date": "2024-03-05", "experiment:time": "14:15:16", "experiment:run index": 4})
    cfg = config_from_mapping({
        "camera": {"backend": "replay", "replay": {"path": str(rec)}},
        "model": {"path": "none"},
        "output": {"folder": str(tmp_path / "out"), "report": False, "writer": "thread"},
    })
    with build_run(cfg, lossless=True) as run:
        assert run.wait(120)
    with dclab.new_dataset(run.events_path) as ds:
        exp = ds.config["experiment"]
        assert (exp["date"], exp["time"], exp["run index"]) == ("2024-03-05", "14:15:16", 4)


def test_without_roi_frames_pos_x_is_the_cells_position_at_its_exit_frame(tmp_path):
    # with tracking.snapshots off every pos_x was NaN, though the tracker follows every cell
    import dclab

    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.4, "realtime": False, "seed": 6,
                                                          "cells_per_second": 80.0}},
        "model": {"path": "none"},
        "tracking": {"snapshots": False},
        "output": {"folder": str(tmp_path), "report": False, "writer": "thread"},
    })
    with build_run(cfg, lossless=True) as run:
        assert run.wait(120)
        g = run.pipeline.tracker.geometry
    with dclab.new_dataset(run.events_path) as ds:
        assert "exit frame" in ds.h5file.attrs["user:event columns"]
        pos_x, pos_y = ds["pos_x"][:], ds["pos_y"][:]
        exited = np.isfinite(pos_y)
        assert exited.sum() >= 10
        # the same rows as pos_y (the exit frame's): past the constriction's end, inside the ROI
        assert np.array_equal(np.isfinite(pos_x), exited)
        assert np.all(pos_x[exited] >= g.constriction_x1 * g.pixel_size_um)
        assert np.all(pos_x[exited] < g.width * g.pixel_size_um)
