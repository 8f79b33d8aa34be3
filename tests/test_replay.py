"""The replay camera on real RT-DC files and on TIFF, PNG-folder, AVI and .rtdc fixtures written
here: ids, times, pixels, options, and a clear error for every kind of bad input."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from acquisition.camera import make_camera
from acquisition.frame import FrameRing
from acquisition.replay import ReplayCamera, ReplaySettings
from mimlsort.errors import ConfigError, DataFormatError

h5py = pytest.importorskip("h5py")
import hdf5plugin  # noqa: E402  (registers the filters the real files use)

REPO = Path(__file__).resolve().parents[1]
RTDC_DIR = REPO.parent / "shared" / "data" / "rtdc"
REAL = sorted(p for p in RTDC_DIR.glob("*.rtdc") if p.name != "M001_data.rtdc") if RTDC_DIR.is_dir() else []  # (that one is empty)
needs_real = pytest.mark.skipif(not REAL, reason=f"real RT-DC data not found at {RTDC_DIR}")


def frames_of(settings, timeout_s=0.1):
    with ReplayCamera(settings) as cam:
        cam.start()
        out = []
        while (f := cam.read(timeout_s)) is not None:
            out.append(f)
        assert cam.exhausted
        return cam.info, out


def stack(n, h=20, w=30, dtype=np.uint8, seed=0):
    hi = 65536 if np.dtype(dtype) == np.uint16 else 256
    return np.random.default_rng(seed).integers(0, hi, (n, h, w)).astype(dtype)


def write_rtdc(path, images, frame=None, time=None, attrs=None, **ds_kw):
    with h5py.File(path, "w") as f:
        ev = f.create_group("events")
        ev.create_dataset("image", data=images, **ds_kw)
        if frame is not None:
            ev.create_dataset("frame", data=frame)
        if time is not None:
            ev.create_dataset("time", data=time)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


# -- real RT-DC recordings -----------------------------------------------------------------------
@needs_real
@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_rtdc_files_replay_every_distinct_frame_with_ids_and_times(path):
    with h5py.File(path) as f:
        ev = f["events"]
        images = ev["image"][:]
        frame = ev["frame"][:].astype(np.int64) if "frame" in ev else None
        time = ev["time"][:] if "time" in ev else None
        attrs = dict(f.attrs)
    keep = np.arange(len(images))
    if frame is not None and len(frame) > 1:
        keep = keep[np.r_[True, frame[1:] != frame[:-1]]]
    info, frames = frames_of(ReplaySettings(path=str(path)))
    assert info.frame_count == len(keep) == len(frames)
    assert (info.height, info.width) == images.shape[1:]
    assert info.pixel_size_um == pytest.approx(float(attrs["imaging:pixel size"]))
    if "imaging:frame rate" in attrs:
        assert info.fps == pytest.approx(float(attrs["imaging:frame rate"]))
    for f, row in zip(frames, keep):
        np.testing.assert_array_equal(f.image, images[row])
        if frame is not None:
            assert f.frame_id == frame[row]
        if time is not None:
            assert f.timestamp_ns == round(float(time[row]) * 1e9)
        else:
            assert f.timestamp_ns == round(f.frame_id * 1e9 / info.fps)
    ids = [f.frame_id for f in frames]
    assert ids == sorted(set(ids))


@needs_real
def test_events_of_one_frame_play_once_unless_asked_otherwise():
    path = RTDC_DIR / "dcnum_thresh_example.rtdc"
    with h5py.File(path) as f:
        n_events = len(f["events/frame"])
        n_frames = len(np.unique(f["events/frame"][:]))
    assert n_frames < n_events
    assert frames_of(ReplaySettings(path=str(path)))[0].frame_count == n_frames
    info, frames = frames_of(ReplaySettings(path=str(path), skip_duplicate_frames=False))
    assert info.frame_count == len(frames) == n_events


@needs_real
def test_frame_rate_is_derived_from_frames_and_times_when_the_metadata_lacks_it():
    path = RTDC_DIR / "cytoshot-test-data.rtdc"
    with h5py.File(path) as f:
        assert "imaging:frame rate" not in f.attrs
        frame, time = f["events/frame"][:], f["events/time"][:]
    info, _ = frames_of(ReplaySettings(path=str(path)))
    assert info.fps == pytest.approx((frame[-1] - frame[0]) / (time[-1] - time[0]))


@needs_real
def test_an_empty_recording_is_refused_naming_the_file():
    # it opened and ended at once: the run "errored: the replay source ended without delivering
    # a frame", and the GUI had made an event file for it
    path = RTDC_DIR / "M001_data.rtdc"
    with pytest.raises(DataFormatError, match=f"{path}: holds no frames \\(an empty recording\\)"):
        frames_of(ReplaySettings(path=str(path)))


@needs_real
def test_replay_feeds_a_ring_which_counts_the_gaps_between_recorded_frames():
    path = RTDC_DIR / "2020-10_image_bg.rtdc"
    with h5py.File(path) as f:
        frame = f["events/frame"][:].astype(np.int64)
    cam = make_camera("replay", {"path": str(path)})
    with cam:
        ring = cam.info.make_ring(8)
        reader = ring.reader("t")
        cam.start()
        while cam.grab_into(ring, timeout_s=0.1):
            pass
    assert ring.camera_dropped == int(np.sum(np.diff(frame) - 1))
    assert reader.read(10).frame_ids.tolist() == frame.tolist()
    assert cam.delivered == len(frame) and cam.timeouts == 0


# -- fixtures written here -----------------------------------------------------------------------
def test_multipage_tiff_uint16_is_bit_exact_and_needs_pixel_size_and_fps(tmp_path):
    path = tmp_path / "stack.tif"
    imgs = stack(7, dtype=np.uint16)
    assert cv2.imwritemulti(str(path), list(imgs))
    with pytest.raises(ConfigError, match=r"camera\.replay\.pixel_size_um.*pixel size or frame rate.*--pixel-size and --fps"):
        ReplayCamera(ReplaySettings(path=str(path))).open()
    with pytest.raises(ConfigError, match=r"frame rate; set fps"):
        ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=0.5)).open()
    info, frames = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=200.0))
    assert (info.dtype, info.bit_depth, info.frame_count) == ("uint16", 16, 7)
    assert [f.frame_id for f in frames] == list(range(7))
    assert [f.timestamp_ns for f in frames] == [i * 5_000_000 for i in range(7)]
    for f, img in zip(frames, imgs):
        np.testing.assert_array_equal(f.image, img)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_an_uncompressed_tiff_is_read_where_its_pages_lie(tmp_path, monkeypatch, dtype):
    # OpenCV reads pages from i0 by walking the i0 before it, at every block: 4,000 pages played
    # at 600 frames/s at the start and 70 at the end. Plain pages are read at their offsets
    path = tmp_path / "plain.tif"
    imgs = stack(200, dtype=dtype, seed=21)
    assert cv2.imwritemulti(str(path), list(imgs), [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    _plays_without_opencvs_page_walk(monkeypatch, path, imgs)


def _spy_on_opencv_pages(monkeypatch) -> list[int]:
    """The first page of each block replay asks OpenCV for (its page walk is what slows down)."""
    starts = []
    real = cv2.imreadmulti

    def imreadmulti(name, start=0, count=1, **kw):
        starts.append(start)
        return real(name, start=start, count=count, **kw)

    monkeypatch.setattr(cv2, "imreadmulti", imreadmulti)
    return starts


def _plays_without_opencvs_page_walk(monkeypatch, path, imgs) -> None:
    """The TIFF at ``path`` replays ``imgs`` exactly, OpenCV asked for its first page only (for
    its size and dtype)."""
    starts = _spy_on_opencv_pages(monkeypatch)
    _, frames = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=200.0))
    assert len(frames) == len(imgs)
    for f, img in zip(frames, imgs):
        np.testing.assert_array_equal(f.image, img)
    assert max(starts) == 0, starts


def _coded_tiff(path, imgs, writer):
    if writer == "opencv":  # LZW with the horizontal predictor: what cv2.imwritemulti writes by default
        assert cv2.imwritemulti(str(path), list(imgs))
        return
    from PIL import Image

    pages = [Image.fromarray(img) for img in imgs]
    pages[0].save(path, save_all=True, append_images=pages[1:], compression=writer)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("writer", ["opencv", "tiff_lzw", "tiff_adobe_deflate", "packbits"])
def test_a_compressed_tiff_is_decoded_from_its_strips(tmp_path, monkeypatch, writer, dtype):
    # through OpenCV's page walk a replay of 6,000 LZW pages (its default) slowed to 45 frames/s
    # by page 5,000; decoded from their strips they play as the first did (2,000+ frames/s)
    path = tmp_path / "coded.tif"
    imgs = stack(150, h=37, w=53, dtype=dtype, seed=22)
    imgs[:, :, :20] //= 64  # runs and repeats for the coders, beside noise
    _coded_tiff(path, imgs, writer)
    _plays_without_opencvs_page_walk(monkeypatch, path, imgs)


def test_a_damaged_strip_plays_the_pages_before_it_and_names_its_page(tmp_path):
    from acquisition.replay import _tiff_directories

    path = tmp_path / "coded.tif"
    imgs = stack(100, h=32, w=48, seed=9)
    assert cv2.imwritemulti(str(path), list(imgs))
    data = bytearray(path.read_bytes())
    page, tags, _ = next(d for d in _tiff_directories(path, (273, 279)) if d[0] == 70)
    at, count = tags[273][0], tags[279][0]
    data[at:at + count] = b"\xff" * count  # no LZW stream starts so
    path.write_bytes(bytes(data))
    got = []
    with ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=100.0)) as cam:
        cam.start()
        with pytest.raises(DataFormatError, match=r"coded\.tif: frame 70: cannot be decoded \(strip 0: its LZW data"):
            while (f := cam.read()) is not None:
                got.append(f.image.copy())
    assert len(got) == 70
    for a, b in zip(got, imgs):
        np.testing.assert_array_equal(a, b)


def _plain_tiff(path, pages, tags, order="<"):
    """A TIFF of uncompressed grey ``pages`` (8- or 16-bit), one strip each, in byte ``order``
    ("<" little-endian, ">" big-endian, as ImageJ saves), with ``tags`` ({tag: SHORT value})
    added to every page's directory."""
    import struct

    out = bytearray((b"II*\0" if order == "<" else b"MM\0*") + b"\0\0\0\0")
    link = 4  # where the next directory's offset goes
    for img in pages:
        h, w = img.shape
        data_at = len(out)
        out += img.astype(np.dtype(img.dtype).newbyteorder(order)).tobytes()
        entries = {256: (3, w), 257: (3, h), 258: (3, 8 * img.itemsize), 259: (3, 1), 262: (3, 1), 273: (4, data_at),
                   277: (3, 1), 278: (3, h), 279: (4, img.nbytes), **{t: (3, v) for t, v in tags.items()}}
        out += b"\0" * (len(out) % 2)
        out[link:link + 4] = struct.pack(order + "I", len(out))
        out += struct.pack(order + "H", len(entries))
        for tag in sorted(entries):
            typ, v = entries[tag]
            out += struct.pack(order + "HHI", tag, typ, 1) + struct.pack(order + ("H2x" if typ == 3 else "I"), v)
        link = len(out)
        out += b"\0\0\0\0"
    path.write_bytes(bytes(out))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_big_endian_tiff_as_imagej_saves_it_is_read_where_its_pages_lie(tmp_path, monkeypatch, dtype):
    # ImageJ saves stacks big-endian: its 16-bit pages went through OpenCV's page walk (quadratic
    # in the length); read at their offsets, they are swapped to the machine's order
    path = tmp_path / "imagej.tif"
    imgs = stack(70, dtype=dtype, seed=23)
    _plain_tiff(path, imgs, {}, order=">")
    ok, decoded = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
    assert ok and all(np.array_equal(d, i) for d, i in zip(decoded, imgs))  # the writer is right
    _plays_without_opencvs_page_walk(monkeypatch, path, imgs)


@pytest.mark.parametrize("tags", [{274: 2}, {274: 3}, {266: 2}], ids=["mirrored", "turned", "bits-reversed"])
def test_an_uncompressed_tiff_plays_its_pages_as_opencv_decodes_them(tmp_path, tags):
    # OpenCV mirrors or turns a page by its Orientation and reverses its bits for FillOrder 2: read
    # at their offsets, the plain bytes of such pages replayed mirrored (the flow reversed) or as noise
    path = tmp_path / "odd.tif"
    imgs = stack(3, seed=22)
    _plain_tiff(path, imgs, tags)
    ok, decoded = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
    assert ok and len(decoded) == 3 and not np.array_equal(decoded[0], imgs[0])
    _, frames = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=200.0))
    assert len(frames) == 3
    for f, img in zip(frames, decoded):
        np.testing.assert_array_equal(f.image, img)
    _plain_tiff(path, imgs, {})  # the writer itself: plain pages play as written
    _, frames = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=200.0))
    for f, img in zip(frames, imgs):
        np.testing.assert_array_equal(f.image, img)


def test_tiff_pages_of_another_size_or_an_unsupported_dtype_are_named(tmp_path):
    path = tmp_path / "mixed.tif"
    imgs = list(stack(3, seed=15))
    imgs[2] = imgs[2][:10]
    assert cv2.imwritemulti(str(path), imgs)
    with ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=200.0)) as cam:
        cam.start()
        assert [cam.read().frame_id for _ in range(2)] == [0, 1]  # the pages before it play first
        with pytest.raises(DataFormatError, match=r"mixed\.tif: frame 2: size 30x10 differs"):
            cam.read()
    path = tmp_path / "float.tif"
    assert cv2.imwritemulti(str(path), list(stack(2, seed=16).astype(np.float32)))
    with pytest.raises(DataFormatError, match=r"float\.tif: frame 0: dtype float32 is not supported"):
        ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=200.0)).open()


def test_png_folder_plays_in_natural_order_with_ids_from_the_names(tmp_path):
    imgs = stack(4, seed=1)
    numbers = [2, 9, 10, 12]  # 3..8 and 11 were not saved: the ids keep those gaps
    for n, img in zip(numbers, imgs):
        assert cv2.imwrite(str(tmp_path / f"frame_{n}.png"), img)
    (tmp_path / "notes.txt").write_text("not an image")
    info, frames = frames_of(ReplaySettings(path=str(tmp_path), pixel_size_um=1.0, fps=100.0))
    assert info.frame_count == 4
    assert [f.frame_id for f in frames] == numbers
    for f, img in zip(frames, imgs):
        np.testing.assert_array_equal(f.image, img)


def test_a_recording_whose_name_says_another_format_plays_as_what_it_holds(tmp_path):
    # an RT-DC recording renamed .avi was "not a recording replay can read" (reanalyze, which
    # reads it whatever its name, sent the user back to replay it); a TIFF stack named .png was
    # "a single image"
    imgs = stack(5, seed=9)
    rtdc = tmp_path / "rec.avi"
    write_rtdc(rtdc, imgs, attrs={"imaging:pixel size": 0.5, "imaging:frame rate": 1000.0})
    tif = tmp_path / "rec.png"
    assert cv2.imwritemulti(str(tmp_path / "rec.tif"), list(imgs))
    (tmp_path / "rec.tif").rename(tif)
    for path in (rtdc, tif):
        info, frames = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=1000.0))
        assert info.frame_count == 5, path
        for f, img in zip(frames, imgs):
            np.testing.assert_array_equal(f.image, img)


def test_image_folder_without_numbered_names_counts_from_zero(tmp_path):
    imgs = stack(3, seed=2)
    for name, img in zip(["a.bmp", "b.bmp", "c.bmp"], imgs):
        assert cv2.imwrite(str(tmp_path / name), img)
    _, frames = frames_of(ReplaySettings(path=str(tmp_path), pixel_size_um=1.0, fps=100.0))
    assert [f.frame_id for f in frames] == [0, 1, 2]
    np.testing.assert_array_equal(frames[2].image, imgs[2])


def test_grey_stored_as_colour_comes_back_grey_and_exact(tmp_path):
    imgs = stack(2, seed=3)
    for i, img in enumerate(imgs):
        assert cv2.imwrite(str(tmp_path / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    _, frames = frames_of(ReplaySettings(path=str(tmp_path), pixel_size_um=1.0, fps=100.0))
    assert frames[1].image.shape == (20, 30)
    np.testing.assert_array_equal(frames[1].image, imgs[1])


def test_a_frame_of_another_size_names_the_file_and_frame(tmp_path):
    imgs = stack(3, seed=4)
    for i, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), img if i != 2 else img[:, :20])
    with ReplayCamera(ReplaySettings(path=str(tmp_path), pixel_size_um=1.0, fps=100.0)) as cam:
        cam.start()
        assert [cam.read().frame_id for _ in range(2)] == [0, 1]
        with pytest.raises(DataFormatError, match=r"frame 2 \(img2\.png\): size 20x20 differs .* 30x20"):
            cam.read()


@pytest.mark.parametrize("odd", ["size", "dtype"])
def test_a_tiff_page_of_another_kind_plays_the_pages_before_it(tmp_path, odd):
    # the pages of the block before it were lost with it: 200 whole pages, then one of another
    # size, replayed as 192 frames (three blocks of 64)
    imgs = stack(80, seed=27)
    bad = imgs[70][:, :20] if odd == "size" else imgs[70].astype(np.uint16)
    path = tmp_path / "odd.tif"
    assert cv2.imwritemulti(str(path), [*imgs[:70], bad, *imgs[71:]], [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    with ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=1.0, fps=100.0)) as cam:
        cam.start()
        got = [cam.read() for _ in range(70)]
        np.testing.assert_array_equal(np.stack([f.image for f in got]), imgs[:70])
        with pytest.raises(DataFormatError, match=rf"odd\.tif: frame 70: {odd}"):
            cam.read()


def test_a_corrupt_image_file_names_the_file_and_frame(tmp_path):
    imgs = stack(3, seed=5)
    for i, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), img)
    (tmp_path / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    with ReplayCamera(ReplaySettings(path=str(tmp_path), pixel_size_um=1.0, fps=100.0)) as cam:
        cam.start()
        # the frames before it play first (they were lost with the rest of the block read)
        np.testing.assert_array_equal(cam.read().image, imgs[0])
        with pytest.raises(DataFormatError, match=r"frame 1 \(img1\.png\): cannot be decoded"):
            cam.read()


def write_avi(path, imgs, fourcc, fps=250.0):
    h, w = imgs.shape[1:]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h), isColor=False)
    if not writer.isOpened():
        pytest.skip(f"OpenCV here cannot write {fourcc} AVI")
    for img in imgs:
        writer.write(img)
    writer.release()


def test_an_mp4_cut_short_is_said_to_be_a_damaged_video(tmp_path):
    # it lacks the index written at its end ("moov atom not found"), and was "not a recording
    # replay can read (no RT-DC, TIFF, image folder, or video OpenCV opens)"
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    write_avi(whole, stack(60, h=32, w=48, seed=28), "mp4v")
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(DataFormatError, match=r"cut\.mp4: OpenCV cannot open this video: it is damaged, or cut "
                                              r"short .*copy it again"):
        ReplayCamera(ReplaySettings(path=str(cut), pixel_size_um=0.5, fps=1000.0)).open()


def test_the_frames_after_a_corrupt_video_frame_play_from_a_start_frame_past_it(tmp_path):
    # a replay stops at a corrupt frame, naming it; start_frame past it ran into the same frame
    # on the way there, so the frames after it could not be replayed at all
    imgs = stack(40, h=48, w=64, seed=29)
    whole, bad = tmp_path / "whole.avi", tmp_path / "bad.avi"
    write_avi(whole, imgs, "MJPG")
    data = bytearray(whole.read_bytes())
    jpegs = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    assert len(jpegs) == 40
    data[jpegs[25]:jpegs[25] + 400] = b"\x55" * 400  # frame 25 is no JPEG any more
    bad.write_bytes(bytes(data))
    with ReplayCamera(ReplaySettings(path=str(bad), pixel_size_um=0.5)) as cam:
        cam.start()
        assert [cam.read().frame_id for _ in range(25)] == list(range(25))
        with pytest.raises(DataFormatError, match=r"bad\.avi: frame 25: cannot be decoded \(corrupt frame\); the "
                                                  r"frames after it play with camera\.replay\.start_frame = 26"):
            cam.read()
    _, reference = frames_of(ReplaySettings(path=str(whole), pixel_size_um=0.5))
    for start in (26, 30):
        info, frames = frames_of(ReplaySettings(path=str(bad), pixel_size_um=0.5, start_frame=start))
        assert [f.frame_id for f in frames] == list(range(start, 40))
        for f, ref in zip(frames, reference[start:]):
            np.testing.assert_array_equal(f.image, ref.image)


def test_ffv1_avi_is_lossless_and_says_its_frame_rate(tmp_path):
    path = tmp_path / "rec.avi"
    imgs = stack(12, h=32, w=48, seed=6)
    write_avi(path, imgs, "FFV1")
    info, frames = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.34))
    assert (info.fps, info.frame_count, info.width, info.height) == (250.0, 12, 48, 32)
    assert [f.frame_id for f in frames] == list(range(12))
    assert frames[3].timestamp_ns == 12_000_000
    for f, img in zip(frames, imgs):
        np.testing.assert_array_equal(f.image, img)


def test_a_given_frame_rate_wins_over_a_video_containers_playback_rate(tmp_path, caplog):
    # a high-speed camera's AVI said 100 fps; the --fps 4000 given was ignored (a warning), and
    # every transit time came out 40× too long: no cell passed as complete and unflagged
    import logging

    path = tmp_path / "rec.avi"
    write_avi(path, stack(6, h=32, w=48, seed=6), "FFV1", fps=100.0)
    info, frames = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.34, fps=4000.0))
    assert info.fps == 4000.0 and frames[4].timestamp_ns == 1_000_000
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        info, _ = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.34))
    assert info.fps == 100.0 and "give the camera's frame rate" in caplog.text  # the container's, said so


def test_mjpg_avi_replays_every_frame_close_to_the_original(tmp_path):
    path = tmp_path / "rec.avi"
    yy, xx = np.mgrid[0:32, 0:48]
    imgs = np.stack([((xx * 4 + yy * 2 + 9 * i) % 200 + 20).astype(np.uint8) for i in range(6)])
    write_avi(path, imgs, "MJPG")
    _, frames = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.34))
    assert len(frames) == 6 and frames[0].image.shape == (32, 48) and frames[0].image.dtype == np.uint8
    for f, img in zip(frames, imgs):
        assert np.mean(np.abs(f.image.astype(int) - img)) < 6  # lossy, but the same picture


def test_a_truncated_video_plays_its_frames_then_names_the_frame_where_it_breaks(tmp_path):
    # the frames decoded before the break in the block being read were dropped with the error:
    # a replay of a cut AVI tracked 960 of its 999 whole frames
    path = tmp_path / "rec.avi"
    imgs = stack(60, h=32, w=48, seed=7)
    write_avi(path, imgs, "FFV1")
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    got = []
    with ReplayCamera(ReplaySettings(path=str(cut), pixel_size_um=0.34)) as cam:
        cam.start()
        with pytest.raises(DataFormatError, match=r"cut\.avi: frame (\d+): .*says it holds 60 frames") as err:
            while (f := cam.read()) is not None:
                got.append(f.image.copy())
    assert 0 < len(got) == int(err.value.args[0].split("frame ")[1].split(":")[0])
    for a, b in zip(got, imgs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("keep", [0.55, 0.99])
def test_a_truncated_tiff_plays_its_whole_pages_then_names_the_page_where_it_breaks(tmp_path, caplog, keep):
    # it played as a shorter recording without a word: OpenCV counts the pages it can reach
    imgs = stack(10, h=32, w=48, seed=8)
    path = tmp_path / "rec.tif"
    assert cv2.imwritemulti(str(path), list(imgs))
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * keep)])
    whole = cv2.imcount(str(cut))
    assert 0 < whole < 10
    with ReplayCamera(ReplaySettings(path=str(cut), pixel_size_um=0.5, fps=100.0)) as cam:
        assert f"cut.tif: truncated TIFF: page {whole} is not whole" in caplog.text
        cam.start()
        got = []
        with pytest.raises(DataFormatError, match=rf"cut\.tif: frame {whole}: the file is truncated: this page is not "
                                                  rf"whole \(.*\); the {whole} pages before it are"):
            while (f := cam.read()) is not None:
                got.append(f.image.copy())
    assert len(got) == whole  # the whole pages first, as they were recorded
    for a, b in zip(got, imgs):
        np.testing.assert_array_equal(a, b)


def test_something_that_is_no_recording_is_a_data_format_error(tmp_path):
    path = tmp_path / "noise.avi"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    with pytest.raises(DataFormatError, match="noise.avi"):
        ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=1.0, fps=1.0)).open()
    with pytest.raises(ConfigError, match=r"camera\.replay\.path: .*does not exist"):
        ReplayCamera(ReplaySettings(path=str(tmp_path / "missing.rtdc"))).open()
    with pytest.raises(ConfigError, match=r"camera\.replay\.path: no recording"):
        ReplayCamera().open()
    cv2.imwrite(str(tmp_path / "one.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataFormatError, match=r"one\.png: a single image, not a recording.*folder of images"):
        ReplayCamera(ReplaySettings(path=str(tmp_path / "one.png"), pixel_size_um=1.0, fps=1.0)).open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="holds no images"):
        ReplayCamera(ReplaySettings(path=str(tmp_path / "empty"), pixel_size_um=1.0, fps=1.0)).open()


# -- .rtdc fixtures and their failure modes ------------------------------------------------------
RTDC_ATTRS = {"imaging:pixel size": 0.25, "imaging:frame rate": 1000.0}


def test_rtdc_options_start_stop_and_loop_continue_ids_and_times(tmp_path):
    path = tmp_path / "r.rtdc"
    imgs = stack(10, seed=8)
    write_rtdc(path, imgs, frame=np.arange(100, 110), time=np.arange(10) / 1000.0, attrs=RTDC_ATTRS)
    info, frames = frames_of(ReplaySettings(path=str(path), start_frame=2, stop_frame=5))
    assert info.frame_count == 3 and [f.frame_id for f in frames] == [102, 103, 104]
    np.testing.assert_array_equal(frames[0].image, imgs[2])
    with ReplayCamera(ReplaySettings(path=str(path), start_frame=7, loop=True)) as cam:
        assert cam.info.frame_count == -1
        cam.start()
        got = [cam.read() for _ in range(7)]
    assert [f.frame_id for f in got] == [107, 108, 109, 110, 111, 112, 113]
    assert [f.timestamp_ns for f in got] == [t * 1_000_000 for t in (7, 8, 9, 10, 11, 12, 13)]
    np.testing.assert_array_equal(got[3].image, imgs[7])
    with pytest.raises(ConfigError, match="start_frame"):
        ReplayCamera(ReplaySettings(path=str(path), start_frame=11)).open()


def test_realtime_pacing_makes_a_grab_wait_for_the_next_frame_time(tmp_path):
    path = tmp_path / "slow.rtdc"
    write_rtdc(path, stack(3, seed=9), frame=np.arange(3), time=np.array([0.0, 30.0, 60.0]), attrs=RTDC_ATTRS)
    with ReplayCamera(ReplaySettings(path=str(path), realtime=True)) as cam:
        cam.start()
        assert cam.read(timeout_s=0.01).frame_id == 0
        assert cam.read(timeout_s=0.01) is None  # the next frame is due 30 s later
        assert cam.timeouts == 1 and not cam.exhausted
    with ReplayCamera(ReplaySettings(path=str(path), realtime=True, speed=1e6)) as cam:
        cam.start()
        assert [cam.read(timeout_s=1.0).frame_id for _ in range(3)] == [0, 1, 2]


def test_rtdc_without_frame_or_time_numbers_frames_and_times_them_by_fps(tmp_path):
    path = tmp_path / "bare.rtdc"
    write_rtdc(path, stack(4, seed=10), attrs=RTDC_ATTRS)
    _, frames = frames_of(ReplaySettings(path=str(path)))
    assert [(f.frame_id, f.timestamp_ns) for f in frames] == [(i, i * 1_000_000) for i in range(4)]


def test_file_values_win_over_settings(tmp_path):
    path = tmp_path / "r.rtdc"
    write_rtdc(path, stack(2, seed=11), attrs=RTDC_ATTRS)
    info, _ = frames_of(ReplaySettings(path=str(path), pixel_size_um=0.9, fps=50.0))
    assert (info.pixel_size_um, info.fps) == (0.25, 1000.0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_rtdc(p, stack(3).astype(np.float32), attrs=RTDC_ATTRS), "dtype float32"),
        (lambda p: write_rtdc(p, stack(1)[0], attrs=RTDC_ATTRS), r"shape \(20, 30\)"),
        (lambda p: write_rtdc(p, stack(3), frame=np.arange(2), attrs=RTDC_ATTRS), r"events/frame has shape \(2,\)"),
        (lambda p: write_rtdc(p, stack(3), frame=np.array([1.0, 2.5, 3.0]), attrs=RTDC_ATTRS),
         r"frame 1: events/frame is 2\.5"),
        (lambda p: write_rtdc(p, stack(3), time=np.array([0.0, np.nan, 1.0]), attrs=RTDC_ATTRS),
         "frame 1: events/time is nan"),
        (lambda p: h5py.File(p, "w").close(), "no events/image"),
        (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100), "not a readable HDF5"),
    ],
    ids=["float-images", "2d-images", "short-frame", "fractional-frame", "nan-time", "no-images", "garbage"],
)
def test_bad_rtdc_files_give_data_format_errors(tmp_path, make, message):
    path = tmp_path / "bad.rtdc"
    make(path)
    with pytest.raises(DataFormatError, match=message) as err:
        ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=1.0, fps=1.0)).open()
    assert "bad.rtdc" in str(err.value)


def test_a_truncated_rtdc_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "r.rtdc"
    write_rtdc(path, stack(50, seed=12), frame=np.arange(50), attrs=RTDC_ATTRS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    # a copy cut short was "not a readable HDF5/.rtdc file (Unable to synchronously open file
    # (truncated file: eof = …, sblock->base_addr = 0, stored_eof = …))"
    with pytest.raises(DataFormatError, match=rf"r\.rtdc: the file is cut short: it holds {len(data) * 2 // 3:,} of "
                                              rf"the {len(data):,} bytes .*copy it again"):
        ReplayCamera(ReplaySettings(path=str(path))).open()


@pytest.mark.parametrize("name", ["rec.rtdc", "rec.tif", "rec.avi", "rec"])
def test_an_empty_file_is_said_to_be_empty(tmp_path, name):
    # each reader had its own words: "file signature not found", "no pages", "no video OpenCV opens"
    path = tmp_path / name
    path.touch()
    with pytest.raises(DataFormatError, match=rf"{name}: the file is empty \(0 bytes\)"):
        ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=1000.0)).open()


def test_a_corrupt_compressed_chunk_names_the_first_frame_it_breaks(tmp_path):
    path = tmp_path / "z.rtdc"
    imgs = stack(40, seed=13)
    # as the recorder writes Zstd: with a checksum (without, Zstd decodes damage to wrong pixels)
    write_rtdc(path, imgs, frame=np.arange(40), attrs=RTDC_ATTRS, chunks=(8, 20, 30), fletcher32=True,
               **hdf5plugin.Zstd())
    with h5py.File(path) as f:
        chunk = f["events/image"].id.get_chunk_info(2)  # frames 16..23
    assert chunk.chunk_offset == (16, 0, 0)
    with open(path, "r+b") as fh:
        fh.seek(chunk.byte_offset + chunk.size // 2)
        fh.write(b"\xff" * 16)
    with ReplayCamera(ReplaySettings(path=str(path))) as cam:
        cam.start()
        for i in range(16):
            np.testing.assert_array_equal(cam.read().image, imgs[i])
        with pytest.raises(DataFormatError, match=r"z\.rtdc: frame 16: events/image cannot be read"):
            cam.read()


# -- frames stored as plain bytes are read with preadv (no h5py, no GIL) -------------------------
def _write_layout(path, imgs, layout):
    kw = {"userblock_size": 512} if layout.startswith("userblock") else {}
    with h5py.File(path, "w", **kw) as f:
        ev = f.create_group("events")
        n, h, w = imgs.shape
        if layout in ("contiguous", "userblock"):
            ev.create_dataset("image", data=imgs)
        elif layout in ("chunked", "uint16", "userblock chunked"):
            ev.create_dataset("image", data=imgs, chunks=(8, h, w))  # 45 frames: the last chunk is partial
        elif layout == "zstd":
            ev.create_dataset("image", data=imgs, chunks=(8, h, w), **hdf5plugin.Zstd())
        elif layout == "partial-frame chunks":
            ev.create_dataset("image", data=imgs, chunks=(8, h // 2, w))
        elif layout == "big-endian":
            ev.create_dataset("image", data=imgs.astype(imgs.dtype.newbyteorder(">")))
        elif layout == "unwritten chunk":
            ds = ev.create_dataset("image", shape=imgs.shape, dtype=imgs.dtype, chunks=(8, h, w))
            ds[:16] = imgs[:16]
            ds[24:] = imgs[24:]
        ev.create_dataset("frame", data=np.arange(n))
        for k, v in RTDC_ATTRS.items():
            f.attrs[k] = v


@pytest.mark.parametrize("layout, mapped", [
    ("contiguous", True), ("chunked", True), ("uint16", True), ("userblock", True), ("userblock chunked", True),
    ("zstd", False),
    ("partial-frame chunks", False), ("big-endian", False), ("unwritten chunk", False)])
def test_rtdc_frames_read_as_plain_bytes_equal_h5pys(tmp_path, layout, mapped):
    imgs = stack(45, dtype=np.uint16 if layout in ("uint16", "big-endian") else np.uint8, seed=21)
    path = tmp_path / "m.rtdc"
    _write_layout(path, imgs, layout)
    with h5py.File(path) as f:
        want = f["events/image"][:]
    if layout == "unwritten chunk":
        assert not want[16:24].any()  # HDF5's fill value where nothing was written
    with ReplayCamera(ReplaySettings(path=str(path))) as cam:
        src = cam._src
        assert (src._fd >= 0) is mapped
        cam.start()
        got = []
        while (f := cam.read(0.1)) is not None:
            got.append(f.image.copy())
    np.testing.assert_array_equal(np.stack(got), want.astype(want.dtype.newbyteorder("=")))
    assert src._fd == -1  # closed with the camera


def test_a_plain_rtdc_file_cut_short_while_playing_names_the_first_frame_lost(tmp_path):
    imgs = stack(40, seed=24)
    path = tmp_path / "cut.rtdc"
    write_rtdc(path, imgs, frame=np.arange(40), attrs=RTDC_ATTRS)
    with ReplayCamera(ReplaySettings(path=str(path))) as cam:
        src = cam._src
        assert src._fd >= 0
        cut = int(src._offsets[25]) + 100  # frame 25 is left incomplete
        os.truncate(path, cut)
        cam.start()
        for i in range(25):
            np.testing.assert_array_equal(cam.read().image, imgs[i])
        with pytest.raises(DataFormatError, match=r"cut\.rtdc: frame 25: events/image cannot be read \(the file ends early\)"):
            cam.read()


def test_plain_rtdc_event_files_still_play_a_shared_frame_once(tmp_path):
    imgs = stack(6, seed=22)
    path = tmp_path / "ev.rtdc"
    write_rtdc(path, imgs, frame=np.array([3, 3, 4, 7, 7, 7]), attrs=RTDC_ATTRS)
    info, frames = frames_of(ReplaySettings(path=str(path)))
    assert [f.frame_id for f in frames] == [3, 4, 7]
    for f, row in zip(frames, (0, 2, 3)):
        np.testing.assert_array_equal(f.image, imgs[row])


def test_the_recorders_own_files_are_read_as_plain_bytes(tmp_path):
    from acquisition.recording import RawRecorder

    imgs = stack(300, h=24, w=40, seed=23)
    path = tmp_path / "raw.rtdc"
    with RawRecorder(path, 40, 24, np.uint8, pixel_size_um=0.5, fps=1000.0) as rec:
        rec.write(imgs[:100], np.arange(100), np.arange(100) * 1_000_000)
        rec.write(imgs[100:], np.arange(100, 300), np.arange(100, 300) * 1_000_000)
    with ReplayCamera(ReplaySettings(path=str(path))) as cam:
        assert cam._src._fd >= 0
    info, frames = frames_of(ReplaySettings(path=str(path)))
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), imgs)


def test_settings_from_a_table_are_validated_with_their_key_path(tmp_path):
    with pytest.raises(ConfigError, match=r"^camera\.replay\.speed: must be > 0"):
        make_camera("replay", {"path": "x.rtdc", "speed": 0.0})
    with pytest.raises(ConfigError, match=r"^camera\.replay\.stop_frame:"):
        make_camera("replay", {"path": "x.rtdc", "start_frame": 5, "stop_frame": 5})
    with pytest.raises(ConfigError, match=r"^camera\.replay\.colour: unknown key"):
        make_camera("replay", {"path": "x.rtdc", "colour": True})
    ring = FrameRing(4, 20, 30)
    path = tmp_path / "r.rtdc"
    write_rtdc(path, stack(2, seed=14), attrs=RTDC_ATTRS)
    cam = make_camera("replay", {"path": str(path), "loop": False})
    with cam:
        cam.start()
        assert cam.grab_into(ring) and cam.grab_into(ring)
        assert not cam.grab_into(ring) and cam.exhausted and cam.timeouts == 0


def _grab_ring(settings, runs, max_frames=50, n_max=10_000):
    with ReplayCamera(settings) as cam:
        ring = FrameRing(n_max + 8, cam.info.height, cam.info.width, np.dtype(cam.info.dtype))
        cam.start()
        while ring.written < n_max:
            k = min(max_frames, n_max - ring.written)
            n = cam.grab_many_into(ring, k, 1.0) if runs else int(cam.grab_into(ring, 1.0))
            if n == 0 and cam.exhausted:
                break
        w = ring.written
        return (ring.images[:w].copy(), ring.frame_ids[:w].copy(), ring.timestamps_ns[:w].copy(), ring.camera_dropped,
                cam.delivered, cam.loops)


@pytest.mark.parametrize("loop", [False, True])
def test_runs_of_frames_without_the_gil_equal_frame_by_frame_grabs(tmp_path, loop, monkeypatch):
    import acquisition.replay as R

    monkeypatch.setattr(R, "BLOCK_FRAMES", 7)  # runs end at block boundaries: several of them here
    path = tmp_path / "gaps.rtdc"
    ids = np.r_[np.arange(0, 10), np.arange(13, 30)]  # a recorded drop of 3 frames
    write_rtdc(path, stack(len(ids), dtype=np.uint16, seed=3), frame=ids, time=ids / 1000.0, attrs=RTDC_ATTRS)
    s = ReplaySettings(path=str(path), start_frame=2, loop=loop)
    n_max = 60 if loop else 10_000
    one = _grab_ring(s, runs=False, n_max=n_max)
    many = _grab_ring(s, runs=True, n_max=n_max)
    for a, b in zip(one[:3], many[:3]):
        np.testing.assert_array_equal(a, b)
    assert one[3:] == many[3:] and one[3] >= 3 and len(one[0]) == (60 if loop else 25)


def test_runs_of_frames_are_paced_by_the_recorded_times(tmp_path):
    path = tmp_path / "paced.rtdc"
    write_rtdc(path, stack(20, seed=4), frame=np.arange(20), time=np.arange(20) * 0.002, attrs=RTDC_ATTRS)
    with ReplayCamera(ReplaySettings(path=str(path), realtime=True)) as cam:
        ring = FrameRing(32, cam.info.height, cam.info.width)
        cam.start()
        n = 0
        while n < 20:
            n += cam.grab_many_into(ring, 20 - n, timeout_s=1.0)
        # frame k is published no earlier than 2 ms x k after the first
        lag = ring.host_ns[:20] - ring.host_ns[0] - np.arange(20) * 2_000_000
        assert lag.min() >= -100_000 and ring.host_ns[19] - ring.host_ns[0] < 1_000_000_000
    path = tmp_path / "slow.rtdc"
    write_rtdc(path, stack(3, seed=9), frame=np.arange(3), time=np.array([0.0, 30.0, 60.0]), attrs=RTDC_ATTRS)
    with ReplayCamera(ReplaySettings(path=str(path), realtime=True)) as cam:
        ring = FrameRing(8, cam.info.height, cam.info.width)
        cam.start()
        assert cam.grab_many_into(ring, 3, timeout_s=0.01) == 1  # frame 1 is due 30 s later
        assert cam.timeouts == 0
        assert cam.grab_many_into(ring, 3, timeout_s=0.01) == 0
        assert cam.timeouts == 1 and not cam.exhausted


@pytest.mark.parametrize("change", ["reversed", "zero", "jump back"])
def test_times_that_do_not_increase_are_refused_naming_the_frame(tmp_path, change):
    # they gave transit times of 0 or below and speeds of 4e9 mm/s, exit 0
    path = tmp_path / "t.rtdc"
    time = np.arange(10) * 2.5e-4
    time = {"reversed": time[::-1].copy(), "zero": np.zeros(10), "jump back": np.r_[time[:6], time[6:] - 0.01]}[change]
    write_rtdc(path, stack(10), frame=np.arange(1, 11), time=time,
               attrs={"imaging:pixel size": 0.5, "imaging:frame rate": 4000.0})
    frame = {"reversed": 1, "zero": 1, "jump back": 6}[change]
    with pytest.raises(DataFormatError, match=rf"t\.rtdc: frame {frame} \(id {frame + 1}\) is timed .*must increase"):
        ReplayCamera(ReplaySettings(path=str(path))).open()


def test_an_infinite_frame_rate_is_refused():
    with pytest.raises(ConfigError, match=r"camera\.replay\.fps: must be > 0 and finite, got inf"):
        make_camera("replay", {"path": "x.tif", "fps": float("inf")})


def test_a_tiff_page_that_cannot_be_read_stops_the_replay_after_the_pages_before_it(tmp_path, monkeypatch):
    # an I/O error on the third page (a failing disk, a network share dropped: provoked by
    # failing os.preadv there, which a local file cannot do on demand)
    import errno

    import acquisition.replay as replay

    path = tmp_path / "plain.tif"
    imgs = stack(10, seed=24)
    _plain_tiff(path, imgs, {})  # a directory between pages: each page is its own read
    real, offsets = os.preadv, []

    def preadv(fd, buffers, offset):
        if offset not in offsets:
            offsets.append(offset)
        if offsets.index(offset) == 2:  # the third page, however often it is asked for
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(replay.os, "preadv", preadv)
    played = []
    with ReplayCamera(ReplaySettings(path=str(path), pixel_size_um=0.5, fps=200.0)) as cam:
        cam.start()
        with pytest.raises(DataFormatError, match=r"plain\.tif: frame 2: cannot be read \(\[Errno 5\]"):
            while (f := cam.read(0.1)) is not None:
                played.append(f.image.copy())
    assert len(played) == 2 and all(np.array_equal(a, b) for a, b in zip(played, imgs))


def test_hidden_files_in_an_image_folder_are_no_frames(tmp_path):
    # a folder copied by a Mac to a USB stick holds a "._" twin (AppleDouble, no image) of every
    # file; the first sorted first and stopped the replay at frame 0 as "corrupt or truncated"
    imgs = stack(3, seed=4)
    for i, img in enumerate(imgs):
        assert cv2.imwrite(str(tmp_path / f"img{i}.png"), img)
        (tmp_path / f"._img{i}.png").write_bytes(b"\x00\x05\x16\x07" + bytes(200))
    _, frames = frames_of(ReplaySettings(path=str(tmp_path), pixel_size_um=1.0, fps=100.0))
    assert [f.frame_id for f in frames] == [0, 1, 2]
    for f, img in zip(frames, imgs):
        np.testing.assert_array_equal(f.image, img)
