"""Event files: dclab opens them with zero violations, they survive SIGKILL, errors name the path."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app.records import CellRecord
from app.sorting import Decision, Reason
from app.storage import (REASON_CODES, EventWriter, RunMeta, read_events, score_codes, sha256_file,
                         userdef_mapping, wrap_bytes)
from mimlsort.errors import ConfigError, DataFormatError, DeviceError, StateError
from tracking.events import CellEvent, Quality
from tracking.features import FEATURES, MIML_FEATURES

ROOT = Path(__file__).resolve().parents[1]
W, H = 256, 96
PX = 0.5
CROP = 48
CLASSES = ("hct116", "wbc")


try:  # the tracker's snapshot (full ROI frame at max DI); the writer also reads it from ``extra``
    from tracking.events import Snapshot

    SNAPSHOT_FIELD = "snapshot" in CellEvent.__dataclass_fields__
except ImportError:
    SNAPSHOT_FIELD = False

    @dataclass(frozen=True)
    class Snapshot:
        image: np.ndarray
        background: np.ndarray
        mask: np.ndarray
        frame_id: int
        pos_x_px: float
        pos_y_px: float


def snap_of(ev):
    return getattr(ev, "snapshot", None) or ev.extra.get("snapshot")


def with_snapshot(ev: CellEvent, snap) -> CellEvent:
    from dataclasses import replace

    if SNAPSHOT_FIELD:
        return replace(ev, snapshot=snap)
    return replace(ev, extra={**ev.extra, "snapshot": snap})


def _background() -> np.ndarray:
    x = np.arange(W)
    bg = 110 + 8 * np.sin(x / 17.0)[None, :] + np.zeros((H, 1))
    bg[:20] = bg[-20:] = 60  # channel walls
    return bg.astype(np.uint8)


def make_records(n: int, *, seed: int = 0, snapshot: bool = True, start: int = 0) -> list[CellRecord]:
    """Realistic records: two populations (stiff hct116, soft wbc), frames with a dark elliptic cell."""
    rng = np.random.default_rng(seed)
    bg = _background()
    yy, xx = np.mgrid[:H, :W]
    out = []
    for i in range(start, start + n):
        soft = rng.random() < 0.4
        di = float(np.clip(rng.normal(0.35 if soft else 0.18, 0.04), 0.01, 0.9))
        tt = float(rng.gamma(9, 0.12 if soft else 0.2))
        v = float(rng.normal(28 if soft else 22, 2))
        cx, cy = float(rng.uniform(90, 170)), float(rng.uniform(40, 56))
        a, b = 9 * (1 + di) ** 0.5, 9 / (1 + di) ** 0.5
        mask = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
        img = bg.copy()
        img[mask] = (img[mask] * 0.7 + rng.normal(0, 2, mask.sum())).clip(0, 255).astype(np.uint8)
        x0, y0 = int(cx) - CROP // 2, int(cy) - CROP // 2
        first = np.ascontiguousarray(img[y0:y0 + CROP, x0 - 6:x0 - 6 + CROP])
        last = np.ascontiguousarray(img[y0:y0 + CROP, x0:x0 + CROP])
        exit_ms = 2.0 * i + 1.0
        feats = {"di": di, "di_entry": di * 0.5, "di_exit": di * 0.7, "transit_time_ms": tt, "v_max_mm_s": v,
                 "v_before_mm_s": v * 0.4, "v_after_mm_s": v * 0.6, "dir_per_ms": di / tt,
                 "diameter_um": float(rng.normal(12, 1)), "deform": di * 0.4, "area_um": float(rng.normal(110, 12)),
                 "bright_avg": float(img[mask].mean()), "bright_sd": float(img[mask].std()),
                 "bg_off": float(rng.normal(0, 2)), "entry_time_ms": exit_ms - tt, "exit_time_ms": exit_ms,
                 "pos_y_um": cy * PX}
        quality = Quality.DOUBLET if i % 11 == 5 else Quality.OK
        ev = CellEvent(i, 1000 + i, feats, first, last, PX, 10 * i, 10 * i + 6, 10**9 + i * 10**6, quality)
        if snapshot:
            ev = with_snapshot(ev, Snapshot(img, bg, mask, 10 * i + 3, cx, cy))
        p_h = float(np.clip(rng.normal(0.25 if soft else 0.8, 0.15), 0.0, 1.0))
        probs = np.array([p_h, 1 - p_h], np.float32)
        k = int(np.argmax(probs))
        target = k == 0 and probs[0] >= 0.5 and quality == Quality.OK
        reason = Reason.FIRED if target else (Reason.NOT_TARGET if k else Reason.QUALITY)
        if target and i % 7 == 3:
            target, reason = True, Reason.COINCIDENCE
        fired = reason is Reason.FIRED
        # a target's coincidence window reaches its neighbours 2 ms on either side: its pulse sweeps them along
        d = Decision(i, fired, reason, CLASSES[k], float(probs[k]), target, "" if fired else f"cell {i}",
                     2.5 if target else math.nan)
        fire = FireLike(i, 5 * 10**9 + i, 5 * 10**9 + i + 20_000, 850.0, 200.0, False, True, "", "log") \
            if fired else None
        out.append(CellRecord(ev, probs, d, fire))
    return out


@dataclass(frozen=True)
class FireLike:
    """Field-for-field what hardware.trigger.FireRecord carries (the writer reads it by getattr)."""

    event_index: int
    scheduled_ns: int
    sent_ns: int
    delay_us: float
    width_us: float
    late: bool
    ok: bool
    error: str
    device: str


@dataclass(frozen=True)
class AckLike:
    event_index: int
    device_time_us: float
    host_ns: int


def make_meta(**kw) -> RunMeta:
    base = dict(pixel_size_um=PX, fps=5000.0, roi=(W, H), sample="hct116 vs wbc", run_index=3, operator="tester",
                class_names=CLASSES, channel_width_um=20.0, flow_rate_ul_s=0.04, camera="synthetic",
                config_toml='[camera]\nbackend = "synthetic"\n\n[sorting]\nthreshold = 0.5  # ' + "x" * 150 + "\n",
                model_spec_json=json.dumps({"classes": list(CLASSES), "note": "é" * 80}),
                model_sha256="ab" * 32, model_name="miml-mini.onnx")
    base.update(kw)
    return RunMeta(**base)


def dclab_check(path):
    dclab = pytest.importorskip("dclab")
    from dclab.rtdc_dataset.check import check_dataset

    return dclab, check_dataset(str(path))


# ---------------------------------------------------------------------------------------------


def test_dclab_opens_complete_file_with_zero_violations(tmp_path):
    path = tmp_path / "run.rtdc"
    records = make_records(40)
    with EventWriter(path, meta=make_meta()) as w:
        w.log("run started")
        w.write(records[:15])
        w.note_counters({"camera_dropped": 2, "missed_sort": 0})
        w.write(records[15:])
        w.add_acks([AckLike(r.event.index, 123.5, 77) for r in records if r.decision.fire])
    dclab, (violations, alerts, _info) = dclab_check(path)
    assert violations == []
    # the only alerts allowed: flow-rate split unknown (not given in the meta)
    assert all("flow rate s" in a for a in alerts), alerts
    with dclab.new_dataset(str(path)) as ds:
        assert len(ds) == 40
        for feat in ("index", "frame", "time", "pos_x", "pos_y", "deform", "area_um", "bright_avg", "bright_sd",
                     "image", "mask", "ml_score_hct", "ml_score_wbc", "userdef0"):
            assert feat in ds.features_innate, feat
        assert np.array_equal(ds["index"], np.arange(1, 41))
        assert np.allclose(ds["deform"], [r.event.features["deform"] for r in records])
        assert np.allclose(ds["ml_score_hct"], [r.probabilities[0] for r in records], atol=1e-6)
        # dclab's own ancillary ml_class (sorted codes: hct=0, wbc=1) agrees with the argmax
        assert np.array_equal(ds["ml_class"], [int(np.argmax(r.probabilities)) for r in records])
        slots = {v: k for k, v in userdef_mapping(FEATURES).items()}
        assert np.allclose(ds[slots["di"]], [r.event.features["di"] for r in records])
        assert np.array_equal(ds[slots["fired"]], [int(r.decision.fire) for r in records])
        assert ds.config["user"][slots["di"]].startswith("di")
        assert ds.config["user"]["ml_score_hct"] == "hct116"
        rec = records[7]
        snap = snap_of(rec.event)
        assert np.array_equal(ds["image"][7], snap.image)
        assert np.array_equal(ds["mask"][7], snap.mask)
        assert np.array_equal(ds["image_bg"][7], snap.background)  # through dclab's internal basin
        assert "image_bg" in ds.features and ds.h5file["basin_events/image_bg"].shape[0] == 1
        assert ds["pos_x"][7] == pytest.approx(snap.pos_x_px * PX)
        assert ds["frame"][7] == snap.frame_id
        assert ds.config["experiment"]["run index"] == 3 and ds.config["imaging"]["roi size x"] == W
        assert any("run started" in line for line in ds.logs["mimlsort-run"])
        assert all(len(line.encode()) <= 100 for name in ds.logs for line in ds.logs[name])


@pytest.mark.parametrize("images, codec", [(True, "zstd"), (False, "zstd"), (True, None)])
def test_image_compression_choices_keep_the_file_valid_and_the_pixels(tmp_path, images, codec):
    import h5py

    path = tmp_path / "run.rtdc"
    records = make_records(20)
    with EventWriter(path, meta=make_meta(), compression=codec, compress_images=images) as w:
        w.write(records)
    _dclab, (violations, _alerts, _info) = dclab_check(path)
    assert violations == []
    with h5py.File(path, "r") as h5:
        filtered = {name: bool(h5[name]._filters) for name in ("events/image", "events/mask", "basin_events/image_bg",
                                                                "mimlsort/events/first_crop")}
        assert filtered == {"events/image": bool(codec) and images, "events/mask": bool(codec),
                            "basin_events/image_bg": bool(codec), "mimlsort/events/first_crop": bool(codec) and images}
        assert np.array_equal(h5["events/image"][:], np.stack([snap_of(r.event).image for r in records]))
        assert np.array_equal(h5["events/mask"][:] > 0, np.stack([snap_of(r.event).mask for r in records]))
        assert np.array_equal(h5["mimlsort/events/last_crop"][:], np.stack([r.event.last_crop for r in records]))


def test_read_back_everything(tmp_path):
    path = tmp_path / "run.rtdc"
    records = make_records(25, seed=3)
    meta = make_meta()
    with EventWriter(path, meta=meta) as w:
        w.write(records)
        w.note_counters({"camera_dropped": np.int64(4), "missed": {"sort": 0}})
        w.add_acks([AckLike(2, 10.0, 5), AckLike(9, 11.5, 6)])
    f, run = read_events(path, crops=True)
    assert run.complete and run.n_events == 25 and run.error == ""
    assert run.meta == meta.__class__(**{**_fields(meta), "started": run.meta.started,
                                        "run_identifier": run.meta.run_identifier})
    assert run.meta.config_toml == meta.config_toml and run.meta.model_spec_json == meta.model_spec_json
    assert run.counters == {"camera_dropped": 4, "missed": {"sort": 0}}
    assert list(run.acks["event_index"]) == [2, 9] and run.acks["device_time_us"][1] == 11.5
    for name in FEATURES:
        assert np.allclose(f[name], [r.event.features[name] for r in records], equal_nan=True), name
    assert np.array_equal(f["event_index"], [r.event.index for r in records])
    assert np.array_equal(f["quality"], [int(r.event.quality) for r in records])
    assert np.array_equal(f["fired"], [int(r.decision.fire) for r in records])
    assert [run.reasons[c] for c in f["reason"]] == [r.decision.reason.value for r in records]
    assert list(f["decision_detail"]) == [r.decision.detail for r in records]
    assert np.array_equal(f["probabilities"], np.stack([r.probabilities for r in records]))
    assert np.array_equal(f["first_crop"], np.stack([r.event.first_crop for r in records]))
    assert np.array_equal(f["last_crop"], np.stack([r.event.last_crop for r in records]))
    fired = [r for r in records if r.fire is not None]
    assert fired, "the fixture must fire some cells"
    sent = f["fire_sent_ns"][f["fired"] == 1]
    assert np.array_equal(sent, [r.fire.sent_ns for r in fired])
    assert set(f["fire_device"][f["fired"] == 1]) == {"log"}
    assert np.all(f["fire_sent_ns"][f["fired"] == 0] == -1)
    # cells without a fire record: nothing scheduled, no delay, width, error or device
    none = np.array([r.fire is None for r in records])
    assert none.any()
    assert np.all(f["fire_scheduled_ns"][none] == -1) and np.all(np.isnan(f["fire_delay_us"][none]))
    assert np.all(np.isnan(f["fire_width_us"][none])) and not f["fire_late"][none].any() and not f["fire_ok"][none].any()
    assert set(f["fire_error"][none]) == {""} and set(f["fire_device"][none]) == {""}
    assert np.array_equal(f["fire_width_us"][~none], [r.fire.width_us for r in records if r.fire is not None])


def _fields(meta):
    from dataclasses import fields

    return {x.name: getattr(meta, x.name) for x in fields(meta)}


def test_each_distinct_background_is_stored_once(tmp_path):
    path = tmp_path / "bg.rtdc"
    records = make_records(9)
    changed = []
    for i, r in enumerate(records):
        s = snap_of(r.event)
        bg = s.background if i < 4 else (s.background + 3).astype(np.uint8)  # the background was updated
        changed.append(CellRecord(with_snapshot(r.event, Snapshot(s.image, bg.copy(), s.mask, s.frame_id,
                                                                     s.pos_x_px, s.pos_y_px)),
                                  r.probabilities, r.decision, r.fire))
    # the running background's usual step (one grey level in a few pixels) is not stored again
    s = snap_of(changed[1].event)
    nudged = s.background.copy()
    nudged[::7, ::5] = np.minimum(nudged[::7, ::5], 254) + 1
    changed[1] = CellRecord(with_snapshot(changed[1].event, Snapshot(s.image, nudged, s.mask, s.frame_id, s.pos_x_px,
                                                                     s.pos_y_px)), changed[1].probabilities,
                            changed[1].decision, changed[1].fire)
    with EventWriter(path, meta=make_meta(), max_buffered=3) as w:
        w.write(changed[:2])
        w.write(changed[2:])
    dclab, (violations, _a, _i) = dclab_check(path)
    assert violations == []
    with dclab.new_dataset(str(path)) as ds:
        assert ds.h5file["basin_events/image_bg"].shape[0] == 2
        assert list(ds["basinmap0"]) == [0] * 4 + [1] * 5
        for i, r in enumerate(changed):
            stored = ds["image_bg"][i].astype(int)
            assert np.abs(stored - snap_of(r.event).background).max() <= 1
            assert np.array_equal(stored, snap_of(changed[0 if i < 4 else 4].event).background)


def test_a_slow_run_does_not_bloat_the_file(tmp_path):
    """One cell per flush (a slow sample, a weekend): SWMR never reuses the space of the image
    chunks each flush rewrites, so chunks must fit the rate (the file was 10x its data)."""
    import h5py

    path = tmp_path / "slow.rtdc"
    records = make_records(40)
    with EventWriter(path, meta=make_meta()) as w:
        for r in records:
            w.write([r])
            w.flush()
    with h5py.File(path, "r") as h:
        held = []
        h.visititems(lambda _n, o: held.append(o.id.get_storage_size()) if isinstance(o, h5py.Dataset) else None)
        assert h["events/image"].chunks[0] == 1
    assert path.stat().st_size < 1.3 * sum(held)


def test_image_chunks_fit_a_fast_run_whose_first_cells_come_when_a_flush_is_due(tmp_path):
    """The chunk size comes from the rate of the first cells; a flush already due when the first
    cell came had measured one cell and sized every image chunk for a slow run (~30% slower)."""
    import time

    import h5py

    from app.storage import _IMAGE_CHUNK_BYTES

    path = tmp_path / "fast.rtdc"
    records = make_records(64)
    with EventWriter(path, meta=make_meta(), flush_interval_s=0.3) as w:
        time.sleep(0.35)  # no cell yet; a flush is due
        t_end = time.monotonic() + 0.6
        i = 0
        while time.monotonic() < t_end:  # ~800 cells/s, in batches as the storage thread hands them
            w.write(records[i % 60:i % 60 + 4])
            i += 4
            time.sleep(0.005)
    with h5py.File(path, "r") as h:
        image = h["events/image"]
        full = max(1, _IMAGE_CHUNK_BYTES // (image.shape[1] * image.shape[2]))
        assert image.chunks[0] == min(full, 64), image.chunks


def test_counters_longer_than_a_log_line_go_whole_to_their_log(tmp_path):
    import h5py

    path = tmp_path / "counters.rtdc"
    counters = {f"counter_{i}": 1000 + i for i in range(20)}  # several 100-byte log lines
    with EventWriter(path, meta=make_meta()) as w:
        w.write(make_records(2))
        w.note_counters(counters)
    with h5py.File(path, "r") as h:
        text = b"".join(h["logs/mimlsort-counters"][:]).decode()
        run_log = b"".join(h["logs/mimlsort-run"][:]).decode()
    assert all(f"{k}={v}" in text for k, v in counters.items()), text
    assert "counter_" not in run_log


def test_a_lost_roi_frame_does_not_change_the_layout(tmp_path):
    path = tmp_path / "lost.rtdc"
    records = make_records(5)
    first = records[0]
    from dataclasses import replace

    lost = CellRecord(replace(first.event, extra={}, **({"snapshot": None} if SNAPSHOT_FIELD else {})),
                      first.probabilities, first.decision, first.fire)
    with EventWriter(path, meta=make_meta(event_images="roi")) as w:
        w.write([lost])  # the very first event lost its ROI frame (ring overwrote it)
        w.write(records[1:])
    dclab, (violations, _a, _i) = dclab_check(path)
    assert violations == []
    with dclab.new_dataset(str(path)) as ds:
        assert ds["image"].shape == (5, H, W) and np.count_nonzero(ds["mask"][0]) == 9  # a placeholder
        assert np.array_equal(ds["image"][3], snap_of(records[3].event).image)
        # flagged where DCscope users gate (the quality userdef slot), the other cells not
        slot = {v: k for k, v in userdef_mapping(FEATURES).items()}["quality"]
        q = np.asarray(ds[slot], np.int64)
        assert q[0] & int(Quality.NO_ROI_IMAGE) and not (q[1:] & int(Quality.NO_ROI_IMAGE)).any()
        # dclab's contour features compute for every event: an empty mask had no contour, and
        # volume, tilt and the inertia ratios then failed for the whole file (IndexError)
        for feat in ("volume", "inert_ratio_cvx", "inert_ratio_prnc", "inert_ratio_raw", "tilt", "bright_perc_10",
                     "bright_perc_90"):
            assert feat in ds.features and len(ds[feat]) == 5
    f, run = read_events(path)
    assert run.counters == {"events_without_roi_frame": 1}
    assert f["quality"][0] & int(Quality.NO_ROI_IMAGE) and not (f["quality"][1:] & int(Quality.NO_ROI_IMAGE)).any()
    with pytest.raises(DataFormatError, match=r"event 0: image is \(48, 48\) px"):
        with EventWriter(tmp_path / "bad.rtdc", meta=make_meta()) as w:
            r = records[0]
            s = snap_of(r.event)
            small = Snapshot(s.image[:48, :48], s.background[:48, :48], s.mask[:48, :48], 1, 1.0, 1.0)
            w.write([CellRecord(with_snapshot(r.event, small), r.probabilities, r.decision, None)])


def test_a_lost_roi_frame_of_a_cell_that_never_left_keeps_dclabs_contour_features(tmp_path):
    # an overloaded run (helper audit: 19 of 25 cells without their ROI frame) writes cells that
    # never left the constriction (INCOMPLETE, no exit, so no pos_y_um) with a placeholder mask:
    # dclab's volume centres each contour on pos_y and failed for the whole file (AssertionError),
    # and with it export.tsv/hdf5 and its filters
    from dataclasses import replace

    records = make_records(4)
    first = records[0]
    ev = replace(first.event, quality=Quality.INCOMPLETE, exit_frame=-1,
                 features={**first.event.features, "pos_y_um": math.nan, "exit_time_ms": math.nan},
                 extra={}, **({"snapshot": None} if SNAPSHOT_FIELD else {}))
    path = tmp_path / "lost_incomplete.rtdc"
    with EventWriter(path, meta=make_meta(event_images="roi")) as w:
        w.write([CellRecord(ev, first.probabilities, first.decision, None), *records[1:]])
    dclab, (violations, _a, _i) = dclab_check(path)
    assert violations == []
    with dclab.new_dataset(str(path)) as ds:
        volume = np.asarray(ds["volume"])
        assert len(volume) == 4 and np.isfinite(volume[1:]).all()
        assert np.isfinite(ds["pos_y"]).all()
        ds.export.tsv(tmp_path / "all.tsv", features=ds.features_scalar, filtered=False)


def test_crops_stand_in_for_missing_roi_frames(tmp_path):
    path = tmp_path / "crops.rtdc"
    records = make_records(6, snapshot=False)
    with EventWriter(path, meta=make_meta()) as w:
        w.write(records)
    dclab, (violations, _a, _i) = dclab_check(path)
    assert violations == []
    with dclab.new_dataset(str(path)) as ds:
        assert ds["image"].shape == (6, CROP, CROP)
        assert np.array_equal(ds["image"][2], records[2].event.last_crop)
        assert "mask" not in ds.features_innate
        assert ds.config["imaging"]["roi size x"] == CROP and ds.config["user"]["camera roi"] == f"{W}x{H}"
        assert np.all(np.isnan(ds["pos_x"]))


def test_sixteen_bit_frames_are_stored_as_eight_bit(tmp_path):
    path = tmp_path / "deep.rtdc"
    records = make_records(3)
    deep = []
    for r in records:
        s = snap_of(r.event)
        s16 = Snapshot((s.image.astype(np.uint16) << 4), (s.background.astype(np.uint16) << 4), s.mask,
                       s.frame_id, s.pos_x_px, s.pos_y_px)
        deep.append(CellRecord(with_snapshot(r.event, s16), r.probabilities, r.decision, r.fire))
    with EventWriter(path, meta=make_meta(bit_depth=12)) as w:
        w.write(deep)
    dclab, (violations, _a, _i) = dclab_check(path)
    assert violations == []
    with dclab.new_dataset(str(path)) as ds:
        assert ds["image"].dtype == np.uint8
        assert np.array_equal(ds["image"][1], snap_of(records[1].event).image)


def test_run_without_model_or_cells(tmp_path):
    path = tmp_path / "empty.rtdc"
    with EventWriter(path, meta=make_meta(class_names=(), model_spec_json="", model_sha256="")) as w:
        w.log("nothing came")
    dclab, (violations, alerts, _i) = dclab_check(path)
    assert violations == []
    assert any("does not contain any events" in a for a in alerts)
    f, run = read_events(path)
    assert run.n_events == 0 and run.complete
    assert all(len(a) == 0 for a in f.values()) and {"di", "fired", "reason", "predicted"} <= set(f)
    # probabilities without classes: K = 0 columns
    path2 = tmp_path / "nomodel.rtdc"
    recs = [CellRecord(r.event, np.zeros(0, np.float32), None, None) for r in make_records(4)]
    with EventWriter(path2, meta=make_meta(class_names=())) as w:
        w.write(recs)
    assert dclab_check(path2)[1][0] == []
    f, run = read_events(path2)
    assert f["probabilities"].shape == (4, 0) and set(f["reason"]) == {0} and set(f["predicted"]) == {-1}


def test_close_after_an_exception_leaves_a_complete_file(tmp_path):
    path = tmp_path / "err.rtdc"
    records = make_records(12)
    with pytest.raises(RuntimeError, match="camera exploded"):
        with EventWriter(path, meta=make_meta(), flush_interval_s=1000) as w:
            w.write(records)  # buffered only: close() must still write them
            raise RuntimeError("camera exploded")
    dclab, (violations, _a, _i) = dclab_check(path)
    assert violations == []
    f, run = read_events(path)
    assert run.complete and run.n_events == 12
    assert "camera exploded" in run.error and any("camera exploded" in line for line in run.run_log)


def test_time_based_flush_makes_rows_visible_to_readers(tmp_path):
    path = tmp_path / "live.rtdc"
    records = make_records(10)
    with EventWriter(path, meta=make_meta(), flush_interval_s=1000, max_buffered=4) as w:
        w.write(records[:3])
        assert w.events_written == 0  # below both limits: still buffered
        w.write(records[3:5])  # the buffer limit forces a flush
        assert w.events_written == 5
        f, run = read_events(path)  # a reader while the writer is open (SWMR)
        assert run.n_events == 5 and not run.complete
        w.flush_interval_s = 1e-9
        w.write(records[5:6])
        assert w.events_written == 6
        assert w.flush_if_due() and w.bytes_written == os.path.getsize(path)
    assert read_events(path)[1].n_events == 6


_CHILD = textwrap.dedent("""
    import sys, time
    from tests.test_storage import make_records, make_meta
    from app.storage import EventWriter
    w = EventWriter(sys.argv[1], meta=make_meta(), flush_interval_s=1000, max_buffered=10**6)
    recs = make_records(50, seed=1)
    w.write(recs[:20]); w.flush()
    w.write(recs[20:30]); w.flush()
    print("flushed", w.events_written, flush=True)
    w.write(recs[30:])  # buffered, never flushed: lost by the kill
    w.log("this line is not flushed")
    print("buffered", flush=True)
    time.sleep(60)
""")


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".venv" / "numba-cache"))
    return env


def test_sigkill_leaves_a_readable_file_with_every_flushed_event(tmp_path):
    path = tmp_path / "killed.rtdc"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], cwd=ROOT, env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().split()
        second = proc.stdout.readline().strip()
        assert first == ["flushed", "30"] and second == "buffered", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    records = make_records(50, seed=1)[:30]
    dclab, (violations, alerts, _info) = dclab_check(path)
    assert violations == [] and any("SWMR" in a for a in alerts)
    with dclab.new_dataset(str(path)) as ds:  # dclab falls back to SWMR reading by itself
        assert len(ds) == 30
        assert np.allclose(ds["deform"][:], [r.event.features["deform"] for r in records])
        assert np.array_equal(ds["image"][29], snap_of(records[29].event).image)
        assert np.array_equal(ds["image_bg"][29], snap_of(records[29].event).background)
    f, run = read_events(path)
    assert run.n_events == 30 and not run.complete
    assert np.array_equal(f["event_index"], np.arange(30))
    assert not any("not flushed" in line for line in run.run_log)


_CHILD_STREAM = textwrap.dedent("""
    import sys
    from tests.test_storage import make_records, make_meta
    from app.storage import EventWriter
    recs = make_records(200, seed=1)
    w = EventWriter(sys.argv[1], meta=make_meta(), flush_interval_s=0.03)
    print("go", flush=True)
    k = 0
    while True:  # flushing every 30 ms: a kill lands in the middle of a flush now and then
        w.write(recs[k % 200: k % 200 + 4])
        k += 4
""")


def test_sigkill_at_any_moment_of_a_busy_writer_leaves_a_readable_file(tmp_path):
    """Killed at random moments while it writes and flushes (in the middle of a flush too): every
    file opens, and holds a gapless run of the events it was given (40 such kills ad hoc in
    session 16: all readable)."""
    import random

    rng = random.Random(16)
    for i in range(4):
        path = tmp_path / f"busy{i}.rtdc"
        proc = subprocess.Popen([sys.executable, "-c", _CHILD_STREAM, str(path)], cwd=ROOT, env=_child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "go", proc.stderr.read()
            time.sleep(rng.uniform(0.3, 1.2))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
            proc.stderr.close()
        f, run = read_events(path)
        assert not run.complete and run.n_events > 0
        assert np.array_equal(f["event_index"], np.arange(run.n_events) % 200)  # the records, cycled


_CHILD_EARLY = textwrap.dedent("""
    import sys, time
    from tests.test_storage import make_meta
    from app.storage import EventWriter
    w = EventWriter(sys.argv[1], meta=make_meta(), flush_interval_s=1000)
    w.log("waiting for the first cell")
    w.flush()
    print("ready", flush=True)
    time.sleep(60)
""")


def test_sigkill_before_the_first_cell_leaves_a_readable_file(tmp_path):
    path = tmp_path / "early.rtdc"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD_EARLY, str(path)], cwd=ROOT, env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    dclab, (violations, _alerts, _info) = dclab_check(path)
    assert violations == []
    f, run = read_events(path)
    assert run.n_events == 0 and not run.complete and run.run_log == ("waiting for the first cell",)


_CHILD_FULL = textwrap.dedent("""
    import resource, signal, sys
    from tests.test_storage import make_records, make_meta
    from app.storage import EventWriter
    from mimlsort.errors import DeviceError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    w = EventWriter(sys.argv[1], meta=make_meta(), compression=None, max_buffered=5)
    recs = make_records(400, seed=2, snapshot=True)
    try:
        for i in range(0, 400, 5):
            w.write(recs[i:i + 5])
        print("NOERROR", flush=True)
    except DeviceError as err:
        print("ERROR", w.events_written, err, flush=True)
    # a full disk still lets close() extend the file sparsely to its recorded end; the file-size
    # limit that stands in for the full disk here would not, so lift it as space being freed would
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    w.close()
    print("CLOSED", flush=True)
""")


def test_disk_full_raises_device_error_and_keeps_the_file_readable(tmp_path):
    path = tmp_path / "full.rtdc"
    out = subprocess.run([sys.executable, "-c", _CHILD_FULL, str(path), str(2_000_000)], cwd=ROOT,
                         env=_child_env(), capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert lines and lines[0].startswith("ERROR"), out.stdout + out.stderr
    written = int(lines[0].split()[1])
    assert str(path) in lines[0] and written > 0
    assert lines[-1] == "CLOSED"
    f, run = read_events(path)
    assert run.n_events >= written and not run.complete
    dclab = pytest.importorskip("dclab")
    expected = [r.event.features["deform"] for r in make_records(400, seed=2)[:written]]
    assert np.allclose(f["deform"][:written], expected)
    with dclab.new_dataset(str(path)) as ds:
        assert len(ds) >= written
        assert np.allclose(ds["deform"][:written], expected)


def test_low_disk_space_stops_cleanly_with_a_complete_file(tmp_path):
    path = tmp_path / "low.rtdc"
    records = make_records(10)
    w = EventWriter(path, meta=make_meta(), flush_interval_s=1000)
    w.write(records[:4])
    w.flush()
    w.min_free_bytes = 2**62  # more than any disk has
    w.write(records[4:])
    with pytest.raises(DeviceError, match=r"low\.rtdc: disk nearly full.*holds the 4 events"):
        w.flush()
    with pytest.raises(DeviceError, match="disk nearly full"):
        w.write(records[:1])
    w.close()
    assert dclab_check(path)[1][0] == []
    f, run = read_events(path)
    assert run.complete and run.n_events == 4 and "disk nearly full" in run.error


def mounted_tmpfs(folder: Path, size: str):
    """``folder`` (made here) as a file system of its own of ``size`` (tmpfs: needs root; the test
    is skipped elsewhere), unmounted after the test: a generator for a fixture to yield from."""
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                              text=True, timeout=30)
    except OSError as err:
        pytest.skip(f"mount: {err}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB file system of its own, which a test can fill."""
    yield from mounted_tmpfs(tmp_path / "small", "4m")


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:  # ENOSPC: full
            pass


def test_a_disk_filled_by_another_program_after_the_space_check_leaves_a_readable_file(small_disk):
    """The writer stopped at "disk nearly full", and another program took the rest before the run
    closed the file: marking the file complete then failed half-way (ENOSPC), and left a file that
    neither h5py nor dclab could open, with the events flushed before it."""
    path = small_disk / "filled.rtdc"
    records = make_records(10)
    w = EventWriter(path, meta=make_meta(), flush_interval_s=1000, min_free_bytes=2**20)
    w.write(records[:4])
    w.flush()
    _fill(small_disk)
    w.write(records[4:])
    with pytest.raises(DeviceError, match="disk nearly full"):
        w.flush()
    w.close()
    assert dclab_check(path)[1][0] == []
    f, run = read_events(path)
    assert run.n_events == 4 and not run.complete
    assert np.allclose(f["deform"], [r.event.features["deform"] for r in records[:4]])


def test_a_disk_already_nearly_full_refuses_the_file_before_the_run(tmp_path):
    path = tmp_path / "full.rtdc"
    with pytest.raises(DeviceError, match=r"full\.rtdc: disk nearly full .*free some space"):
        EventWriter(path, meta=make_meta(), min_free_bytes=2**62)
    assert not path.exists()


def test_errors_name_the_path(tmp_path):
    meta = make_meta()
    with pytest.raises(DeviceError, match="nowhere"):
        EventWriter(tmp_path / "nowhere" / "x.rtdc", meta=meta)
    with pytest.raises(DataFormatError, match=r"\.rtdc"):
        EventWriter(tmp_path / "x.h5", meta=meta)
    (tmp_path / "exists.rtdc").write_bytes(b"")
    with pytest.raises(DataFormatError, match="exists.rtdc"):
        EventWriter(tmp_path / "exists.rtdc", meta=meta)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DeviceError, match="file"):
        EventWriter(blocker / "y.rtdc", meta=meta)
    with pytest.raises(DataFormatError, match="no such file"):
        read_events(tmp_path / "missing.rtdc")
    (tmp_path / "junk.rtdc").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataFormatError, match="junk.rtdc"):
        read_events(tmp_path / "junk.rtdc")
    w = EventWriter(tmp_path / "ok.rtdc", meta=meta)
    good, bad = make_records(2)
    with pytest.raises(DataFormatError, match="event 1: 3 probabilities for 2 classes"):
        w.write([good, CellRecord(bad.event, np.ones(3, np.float32), bad.decision, None)])
    w.write([])  # the bad record left no partial row behind: the file stays consistent
    w.close()
    f, run = read_events(tmp_path / "ok.rtdc")
    assert run.n_events == 1 and f["event_index"][0] == good.event.index
    with pytest.raises(StateError):
        w.write([])


def test_foreign_rtdc_is_refused_clearly():
    ref = Path("/work/shared/data/rtdc/mask_contour_reference.rtdc")
    if not ref.exists():
        pytest.skip("shared RT-DC reference data not present")
    with pytest.raises(DataFormatError, match="not a mimlsort event file"):
        read_events(ref)


def test_run_meta_validation_names_the_key():
    with pytest.raises(ConfigError, match="^pixel_size_um"):
        make_meta(pixel_size_um=0)
    with pytest.raises(ConfigError, match="^model_sha256"):
        make_meta(model_sha256="xyz")
    with pytest.raises(ConfigError, match="^feature_names"):
        make_meta(feature_names=("di", "nonsense"))
    with pytest.raises(ConfigError, match="^flow_rate_ul_s"):
        make_meta(flow_rate_ul_s=0.05, flow_rate_sample_ul_s=0.01, flow_rate_sheath_ul_s=0.03)
    with pytest.raises(ConfigError, match="^model_spec_json"):
        make_meta(model_spec_json="{not json")
    meta = make_meta()
    assert RunMeta.from_json(meta.to_json(), config_toml=meta.config_toml,
                             model_spec_json=meta.model_spec_json) == meta


def test_score_codes_are_dclab_names_unique_and_stable():
    import re

    names = ("HCT-116", "hct116", "WBC", "x", "T4", "T8", "a b c", "Ä")
    codes = score_codes(names)
    assert len(set(codes.values())) == len(names)
    assert all(re.fullmatch(r"[a-z0-9]{3}", c) for c in codes.values())
    assert codes["HCT-116"] == "hct" and codes["WBC"] == "wbc"
    assert score_codes(names) == codes


def test_userdef_mapping_puts_miml_features_first():
    m = userdef_mapping(FEATURES)
    assert len(m) == 10 and list(m.values())[: len(MIML_FEATURES)] == list(MIML_FEATURES)
    assert {"quality", "fired"} <= set(m.values())
    assert not set(m.values()) & {n for n, d in FEATURES.items() if d.rtdc}


def test_wrap_bytes_never_splits_a_character():
    lines = wrap_bytes("é" * 120 + "\nshort")
    assert all(len(b) <= 100 for b in lines)
    assert b"".join(lines[:-1]).decode("utf-8") == "é" * 120 and lines[-1] == b"short"


def test_reason_table_covers_every_reason():
    assert {r.value for r in Reason} <= set(REASON_CODES)


def test_sha256_file(tmp_path):
    import hashlib

    p = tmp_path / "m.onnx"
    p.write_bytes(b"model bytes" * 1000)
    assert sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_an_event_without_exit_frame_or_snapshot_gets_its_best_known_frame(tmp_path):
    from dataclasses import replace

    rec = make_records(1, snapshot=False)[0]
    ev = replace(rec.event, exit_frame=-1, entry_frame=17, extra={"emit_frame": 23})
    path = tmp_path / "noexit.rtdc"
    with EventWriter(path, meta=make_meta(event_images="crop")) as w:
        w.write([CellRecord(ev, rec.probabilities, rec.decision, rec.fire)])
    import h5py

    with h5py.File(path, "r") as f:
        assert int(f["events/frame"][0]) == 23


def test_a_value_that_cannot_be_stored_leaves_the_columns_consistent(tmp_path):
    from dataclasses import replace

    path = tmp_path / "bad_value.rtdc"
    good = make_records(4)
    bad = make_records(1, start=4)[0]
    feats = dict(bad.event.features, deform="not a number")
    bad = CellRecord(replace(bad.event, features=feats), bad.probabilities, bad.decision, bad.fire)
    w = EventWriter(path, meta=make_meta(), flush_interval_s=1000)
    w.write(good)
    w.flush()
    w.write([bad])
    with pytest.raises(Exception):
        w.flush()
    with pytest.raises(Exception):
        w.close()
    feats_read, run = read_events(path)
    assert run.n_events == 4
    assert {len(v) for v in feats_read.values()} == {4}


def test_io_failures_are_said_in_words_not_hdf5_stack_dumps(tmp_path):
    import errno

    from app.storage import _io_reason

    path = tmp_path / "x.rtdc"
    path.write_bytes(b"")
    assert _io_reason(OSError(errno.ENOSPC, "No space left on device"), path).startswith("the disk is full")
    assert "read-only file system" in _io_reason(OSError(errno.EROFS, "Read-only file system"), path)
    assert "is not writable" in _io_reason(OSError(errno.EACCES, "Permission denied"), path)
    # h5py's write failure as it comes: errno unset, the cause after a line break in HDF5's dump
    dump = OSError("[Errno None] Can't synchronously write data (file write failed: time = Tue Nov 24 09:25:53 2026\n"
                   ", filename = 'x.rtdc', file descriptor = 7, errno = 27, error message = 'File too large', "
                   "buf = 0x559d7a5c2f00, total write size = 65536, bytes this sub-write = 65536, bytes actually "
                   "written = 18446744073709551615, offset = 2097152)")
    assert dump.errno is None
    assert "reached the largest file" in _io_reason(dump, path)
    quota = OSError(str(dump).replace("errno = 27", "errno = 122").replace("File too large", "Disk quota exceeded"))
    assert _io_reason(quota, path).startswith("the disk quota is used up")
    eio = OSError(str(dump).replace("errno = 27", "errno = 5").replace("File too large", "Input/output error"))
    assert _io_reason(eio, path) == "Input/output error (errno 5)"
    assert _io_reason(OSError("Can't write data (some other failure)"), path) == "Can't write data (some other failure)"


def test_damaged_event_files_are_named_not_tracebacks(tmp_path):
    import h5py

    from inference.training.data import dataset_from_rtdc

    path = tmp_path / "ev.rtdc"
    with EventWriter(path, meta=make_meta()) as w:
        w.write(make_records(12))
    # one column cut short, as a writer killed mid-flush leaves it: read to the shortest (training
    # ended in an IndexError)
    short = tmp_path / "short.rtdc"
    short.write_bytes(path.read_bytes())
    with h5py.File(short, "a") as h:
        h["mimlsort/events/transit_time_ms"].resize((7,))
    ds = dataset_from_rtdc(short, "hct116")
    assert len(ds) <= 7 and any("reading 7" in n for n in ds.report.notes)
    # probabilities without one column per class
    bad = tmp_path / "bad.rtdc"
    bad.write_bytes(path.read_bytes())
    with h5py.File(bad, "a") as h:
        p = h["mimlsort/events/probabilities"][:, :1]
        del h["mimlsort/events/probabilities"]
        h["mimlsort/events/probabilities"] = p
    with pytest.raises(DataFormatError, match=r"bad\.rtdc: /mimlsort/events/probabilities is \(12, 1\)"):
        read_events(bad)


@pytest.mark.parametrize("counters", [{}, {"frames_in": 0, "run_s": 0.4}, {"frames_in": 1, "run_s": 0.4, "measured_s": 0.0}],
                         ids=["never-reported", "no-frame", "one-frame"])
def test_a_run_that_measured_nothing_states_a_duration_of_0_s(tmp_path, counters):
    # a replay of no frame, one frame, or a session that ended before the pipeline reported its
    # counters stated no `user:duration s` (before that, its processing time); every other run's
    # file has the key, and a script reading it failed on these alone
    path = tmp_path / "empty.rtdc"
    w = EventWriter(path, meta=make_meta(camera="replay rec.rtdc"))
    if counters:
        w.note_counters(counters)
    w.close()
    dclab, (violations, _alerts, _info) = dclab_check(path)
    assert violations == []
    with dclab.new_dataset(str(path)) as ds:
        assert len(ds) == 0 and ds.config["user"]["duration s"] == 0.0
        assert ds.config["user"]["processing time s"] > 0  # the host's time is its own key


def test_a_run_killed_before_its_counters_states_no_duration(tmp_path):
    # a run killed mid-way: its writer process closes the file with the cells it got and no
    # counters, and `user:duration s` said 0 for 324 cells over 4.2 s; its duration is not known
    path = tmp_path / "killed.rtdc"
    w = EventWriter(path, meta=make_meta())
    w.write(make_records(6))
    w.note_error("the run's process ended without closing the event file (killed?); it holds every event the run sent")
    w.close()
    dclab, (violations, _alerts, _info) = dclab_check(path)
    assert violations == []
    with dclab.new_dataset(str(path)) as ds:
        assert len(ds) == 6 and "duration s" not in ds.config["user"]
        assert ds.config["user"]["processing time s"] > 0
