"""Bad input on the command line: what the user recorded is never overwritten, outputs that cannot
be written are named before the work starts, damaged or empty files are named, and a run that
cannot track ends with an error, not as "completed"."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.cli import main
from mimlsort.outputs import check_output_file, holds_hdf5
from mimlsort.errors import DataFormatError

h5py = pytest.importorskip("h5py")
import hdf5plugin  # noqa: E402,F401

SHARED_RTDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "rtdc"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A short recording and the event file of its replay."""
    d = tmp_path_factory.mktemp("inputs")
    rec, ev = d / "rec.rtdc", d / "ev.rtdc"
    assert main(["simulate", "--out", str(rec), "--seconds", "0.3", "--seed", "3"]) == 0
    assert main(["replay", str(rec), "--out", str(ev), "--model", "none"]) == 0
    return rec, ev


def test_the_output_check_itself(tmp_path):
    h5 = tmp_path / "run.data"  # an HDF5 file whatever its name
    with h5py.File(h5, "w") as f:
        f["x"] = 1
    assert holds_hdf5(h5)
    with pytest.raises(DataFormatError, match=r"run\.data: exists and holds a measurement"):
        check_output_file(h5)
    csv = tmp_path / "cells.csv"
    csv.write_text("a,b\n")
    assert not holds_hdf5(csv)
    assert check_output_file(csv, header="a,b") == csv  # a table of the command's own may be written again
    # any other file is not (a model, a ground truth, notes: a typo in --csv replaced them)
    with pytest.raises(DataFormatError, match=r"cells\.csv: exists and is not a table this command wrote"):
        check_output_file(csv, header="cell,event_index")
    with pytest.raises(DataFormatError, match="not a table this command wrote"):
        check_output_file(csv)
    (tmp_path / "empty.csv").write_text("")
    assert check_output_file(tmp_path / "empty.csv")  # nothing to lose
    with pytest.raises(DataFormatError, match="is also this command's input"):
        check_output_file(csv, inputs=(tmp_path / "." / "cells.csv",))
    with pytest.raises(DataFormatError, match="is a folder"):
        check_output_file(tmp_path)
    assert check_output_file(tmp_path / "new" / "deeper" / "x.csv").parent.is_dir()


def test_no_command_overwrites_a_recording_or_event_file(files, tmp_path, capsys):
    rec, ev = files
    before = {p: digest(p) for p in (rec, ev)}
    assert main(["track", str(rec), "--out", str(rec)]) == 2
    assert "is also this command's input" in capsys.readouterr().err
    assert main(["track", str(rec), "--out", str(ev)]) == 2
    assert main(["export", str(ev), "--csv", str(ev)]) == 2
    assert main(["export", str(ev), "--csv", str(rec)]) == 2
    assert main(["simulate", "--out", str(rec), "--seconds", "0.1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    new = tmp_path / "new.rtdc"
    assert main(["simulate", "--out", str(new), "--truth", str(ev), "--seconds", "0.1"]) == 2
    assert not new.exists()  # refused before the simulation ran
    assert main(["replay", str(rec), "--out", str(ev), "--model", "none"]) == 2
    assert {p: digest(p) for p in (rec, ev)} == before
    out = tmp_path / "cells.csv"  # a table of our own may be written again
    assert main(["export", str(ev), "--csv", str(out)]) == 0
    assert main(["export", str(ev), "--csv", str(out)]) == 0
    # not another file: a model, the simulator's truth, a tracking table
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07\x12\x07pytorch")
    truth, table = tmp_path / "truth.csv", tmp_path / "track.csv"
    assert main(["simulate", "--out", str(tmp_path / "s.rtdc"), "--truth", str(truth), "--seconds", "0.1"]) == 0
    assert main(["track", str(rec), "--out", str(table)]) == 0
    kept = {p: digest(p) for p in (model, truth, table)}
    capsys.readouterr()
    assert main(["export", str(ev), "--csv", str(model)]) == 2
    assert "not a table this command wrote" in capsys.readouterr().err
    assert main(["export", str(ev), "--csv", str(truth)]) == 2
    assert main(["simulate", "--out", str(tmp_path / "s2.rtdc"), "--truth", str(model), "--seconds", "0.1"]) == 2
    assert main(["track", str(rec), "--out", str(truth)]) == 2
    assert main(["replay", str(rec), "--out", str(model), "--model", "none"]) == 2
    assert {p: digest(p) for p in (model, truth, table)} == kept
    # each command's own table is its to replace, also one written before a column was added
    lines = truth.read_text().splitlines()
    truth.write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines) + "\n")
    assert main(["simulate", "--out", str(tmp_path / "s3.rtdc"), "--truth", str(truth), "--seconds", "0.1"]) == 0
    assert main(["track", str(rec), "--out", str(table)]) == 0


def test_outputs_that_cannot_be_written_are_named_first(files, tmp_path, capsys):
    rec, _ = files
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["run", "--out-dir", str(afile), "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{afile}: exists and is not a folder" in err and "Traceback" not in err
    assert main(["track", str(rec), "--out", str(afile / "x.csv")]) == 2
    assert "cannot create the folder for --out" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs sysfs, a folder even root cannot write to")
def test_a_replay_into_a_folder_it_cannot_write_names_out(files, capsys):
    # the run's log is made there first, and the error named daemon.log_file, a key never set
    rec, _ = files
    assert main(["replay", str(rec), "--out", "/sys/kernel/mimlsort-test.rtdc", "--model", "none"]) == 2
    err = capsys.readouterr().err
    assert "--out: /sys/kernel: cannot write there" in err and "daemon.log_file" not in err, err


def test_a_damaged_event_file_is_named_and_leaves_no_report_folder(files, tmp_path, capsys):
    _, ev = files
    bad = tmp_path / "bad.rtdc"
    shutil.copy(ev, bad)
    with open(bad, "r+b") as fh:
        fh.truncate(bad.stat().st_size // 2)
    assert main(["report", str(bad)]) == 2
    assert f"{bad}: event file damaged or incomplete" in capsys.readouterr().err
    assert not (tmp_path / "bad_report").exists()
    assert main(["export", str(bad), "--csv", str(tmp_path / "x.csv")]) == 2
    assert "damaged or incomplete" in capsys.readouterr().err
    nogroup = tmp_path / "nogroup.rtdc"
    shutil.copy(ev, nogroup)
    with h5py.File(nogroup, "a") as f:
        del f["mimlsort/events"]
    assert main(["report", str(nogroup)]) == 2
    assert "no /mimlsort/events group" in capsys.readouterr().err


def test_replay_pixel_size_option_reaches_a_tiff(files, tmp_path):
    rec, _ = files
    with h5py.File(rec, "r") as f:
        frames = f["events/image"][:400]
    tif = tmp_path / "stack.tif"  # TIFF says neither pixel size nor frame rate
    assert cv2.imwritemulti(str(tif), list(frames))
    out = tmp_path / "tif.rtdc"
    assert main(["replay", str(tif), "--pixel-size", "0.5", "--fps", "4000", "--out", str(out), "--model", "none"]) == 0
    with h5py.File(out, "r") as f:
        assert f.attrs["imaging:pixel size"] == pytest.approx(0.5)
        assert len(f["events/deform"]) > 0


@pytest.mark.parametrize("option", ["--pixel-size", "--fps"])
def test_replay_and_track_refuse_a_pixel_size_or_frame_rate_of_0(files, tmp_path, capsys, option):
    # 0 was taken for "not given": the recording's own value (or none) was used without a word
    rec, _ = files
    for cmd in (["replay", str(rec), "--out", str(tmp_path / "x.rtdc"), "--model", "none"],
                ["track", str(rec), "--out", str(tmp_path / "x.csv")]):
        assert main([*cmd, option, "0"]) == 2
        assert f"{option}: must be a finite number > 0, got 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_replay_pixel_size_option_over_a_recordings_own_is_said_once(files, tmp_path, caplog):
    # --pixel-size overrides what a recording says; the replay source warned (twice, at each open)
    # that the setting was "only for recordings that do not say", then the run warned that it was
    # used: three lines, the first two reading as if the option had been ignored
    rec, _ = files
    out = tmp_path / "px.rtdc"
    with caplog.at_level("WARNING"):
        assert main(["replay", str(rec), "--pixel-size", "0.6", "--out", str(out), "--model", "none"]) == 0
    lines = [r.getMessage() for r in caplog.records if "pixel" in r.getMessage()]
    assert lines == [f"0.6 µm/px (camera.pixel_size_um, which --pixel-size sets) is used, not the 0.5 µm/px {rec} states"]
    with h5py.File(out, "r") as f:
        assert f.attrs["imaging:pixel size"] == pytest.approx(0.6)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert main(["track", str(rec), "--pixel-size", "0.6", "--out", str(tmp_path / "t.csv")]) == 0
    assert [r.getMessage() for r in caplog.records if "pixel" in r.getMessage()] == lines


def test_a_replay_pixel_size_setting_a_recording_overrules_is_said_once(files, tmp_path, caplog):
    # camera.replay.pixel_size_um is for recordings that do not state theirs: one that does wins
    rec, _ = files
    cfg = tmp_path / "c.toml"
    cfg.write_text("[camera.replay]\npixel_size_um = 0.6\n")
    with caplog.at_level("WARNING"):
        assert main(["track", str(rec), "--config", str(cfg), "--out", str(tmp_path / "t.csv")]) == 0
    lines = [r.getMessage() for r in caplog.records if "pixel" in r.getMessage()]
    assert lines == [f"{rec} states 0.5 µm/px, which is used: camera.replay.pixel_size_um 0.6 is only for recordings "
                     "that do not state one (camera.pixel_size_um, or --pixel-size, overrides a recording's)"]


def test_a_run_that_cannot_track_ends_with_an_error(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[camera.synthetic]\nduration_s = 1.0\n'
                   '[tracking.geometry]\nconstriction_start_um = 1000\nconstriction_end_um = 2000\n'
                   '[output]\nreport = false\n')
    assert main(["run", "--config", str(cfg), "--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "run errored" in err and "tracking.geometry.constriction_start_um" in err and "outside the ROI" in err
    assert "run completed" not in err
    from app.storage import read_events

    (path,) = (tmp_path / "out").glob("*.rtdc")
    _, stored = read_events(path)  # the file says the run failed, not only its log
    assert stored.complete and "outside the ROI" in stored.error


def test_config_check_refuses_a_geometry_outside_the_replayed_recording(files, tmp_path, capsys):
    # `config --check` said "valid"; the run then failed on its first frames
    rec, _ = files
    cfg = tmp_path / "replay.toml"
    cfg.write_text(f'[camera]\nbackend = "replay"\n[camera.replay]\npath = "{rec}"\n[model]\npath = "none"\n'
                   f'[output]\nfolder = "{tmp_path / "out"}"\n[tracking.geometry]\nchannel_top_um = 50\n')
    assert main(["config", "--check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "tracking.geometry.channel_top_um: 50 µm lies outside the ROI (96 px × 0.5 µm/px = 48 µm" in err, err
    assert f"the recording's ({rec}) image 256x96 px" in err, err
    cfg.write_text(cfg.read_text().replace("channel_top_um = 50", "channel_top_um = 8"))
    assert main(["config", "--check", str(cfg)]) == 0


def test_runs_started_within_one_second_get_their_own_files(tmp_path, monkeypatch):
    # an operator who stops and starts again at once chose no name: no run is refused one
    import app.session as session
    from app.config import RunConfig

    monkeypatch.setattr(session.time, "strftime", lambda fmt: "20261124-020725")  # all in one second
    cfg = session.with_changes(RunConfig(), output={"sample": "s"})
    assert session.run_stem(cfg, tmp_path) == "s_20261124-020725"
    (tmp_path / "s_20261124-020725.rtdc").write_bytes(b"")
    assert session.run_stem(cfg, tmp_path) == "s_20261124-020725_2"
    (tmp_path / "s_20261124-020725_2_raw.rtdc").write_bytes(b"")  # a raw recording alone also takes the name
    assert session.run_stem(cfg, tmp_path) == "s_20261124-020725_3"


@pytest.mark.skipif(not (SHARED_RTDC / "M001_data.rtdc").is_file(), reason="../shared/data/rtdc not beside the repository")
def test_a_file_without_frames_is_named(tmp_path, capsys):
    empty = SHARED_RTDC / "M001_data.rtdc"  # a real RT-DC file that holds no events
    assert main(["track", str(empty), "--out", str(tmp_path / "t.csv")]) == 2
    assert f"{empty}: holds no frames" in capsys.readouterr().err
    assert main(["replay", str(empty), "--out", str(tmp_path / "r.rtdc")]) == 2  # refused before a run starts
    assert f"{empty}: holds no frames (an empty recording)" in capsys.readouterr().err
    assert not (tmp_path / "r.rtdc").exists()
    assert main(["reanalyze", str(empty), "--out", str(tmp_path / "a.rtdc")]) == 2
    assert "holds no events" in capsys.readouterr().err
    assert not (tmp_path / "a.rtdc").exists()


def test_the_command_line_leaves_the_signal_handlers_as_it_found_them(tmp_path):
    """run/replay ignore a second Ctrl-C once their files are closed; in-process callers (tests,
    notebooks) must get their Ctrl-C back when the command returns."""
    import signal

    from app.cli import main

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    rec = tmp_path / "rec.rtdc"
    assert main(["simulate", "--out", str(rec), "--seconds", "0.2", "--seed", "2"]) == 0
    assert main(["replay", str(rec), "--out", str(tmp_path / "ev.rtdc"), "--model", "none"]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_evaluate_takes_the_bundled_model_by_its_name(files, tmp_path, capsys):
    from app.config import bundled_model_path

    if not bundled_model_path().is_file():
        pytest.skip("the bundled demo model is not built (make model)")
    _, ev = files
    # "demo: no such model file", while replay and reanalyze take it
    assert main(["evaluate", "demo", f"{ev}=hct116", "--out", str(tmp_path / "e"), "--folds", "0"]) == 0
    assert "cells: accuracy" in capsys.readouterr().out


def test_a_recording_named_with_a_leading_dot_gives_a_plain_sample_name():
    from app.cli_run import _sample_name

    # output.sample may not begin with "." (a hidden file): the fallback from a folder ".imgs" failed
    assert _sample_name(".imgs") == "imgs" and _sample_name("../x") == "_x"


def test_a_bench_option_the_benchmark_does_not_take_is_refused(capsys):
    # `bench tracking --seconds 5` measured the default 20,000 frames without a word
    from app.cli import main

    assert main(["bench", "tracking", "--seconds", "5"]) == 2
    err = capsys.readouterr().err
    assert "bench tracking takes no --seconds" in err and "--frames" in err


@pytest.mark.skipif(not (SHARED_RTDC / "mask_contour_reference.rtdc").is_file(),
                    reason="../shared/data/rtdc not beside the repository")
def test_an_empty_file_given_as_out_is_written_and_another_suffix_is_refused_first(files, tmp_path, capsys):
    """An empty file made for the output (`mktemp --suffix .rtdc`), which the output check lets
    through as holding nothing: replay refused it once the run was built ("exists; refusing to
    overwrite a measurement"), and reanalysis did all its work and then said it "appeared while
    the reanalysis ran". Reanalysis also wrote its event file under any name (x.txt, which dclab
    does not open), where replay refuses a name without .rtdc."""
    import dclab

    rec, _ev = files
    src = SHARED_RTDC / "mask_contour_reference.rtdc"
    for command, inp in (("replay", rec), ("reanalyze", src)):
        out = tmp_path / f"{command}.rtdc"
        out.write_bytes(b"")
        args = [command, str(inp), "--out", str(out)] + (["--model", "none"] if command == "replay" else [])
        assert main(args) == 0, capsys.readouterr().err
        with dclab.new_dataset(out) as ds:
            assert len(ds) > 0
    for name in ("x.txt", "noext"):
        assert main(["reanalyze", str(src), "--out", str(tmp_path / name)]) == 2
        assert "event files must end in .rtdc" in capsys.readouterr().err
        assert not (tmp_path / name).exists()


def test_a_replay_as_fast_as_it_goes_states_the_recordings_duration(files):
    # `user:duration s` held the host's seconds of processing (0.13 s for a 0.3 s recording); the
    # processing time is kept apart, under its own name
    from dclab.rtdc_dataset.check import check_dataset

    rec, ev = files
    with h5py.File(rec, "r") as f:
        t = f["events/time"][:]
    with h5py.File(ev, "r") as f:
        assert f.attrs["user:duration s"] == pytest.approx(t[-1] - t[0], abs=1e-6)
        processing = f.attrs["user:processing time s"]
        assert processing == pytest.approx(f.attrs["user:counter run_s"]) and processing > 0
    assert check_dataset(ev)[0] == []


def test_a_replay_of_one_frame_states_it_measured_for_0_s(files, tmp_path):
    # the frames' own time of one frame is 0 s: the file stated no duration at all (before that,
    # the seconds it took to process), the one kind of run file without the key
    import dclab
    from dclab.rtdc_dataset.check import check_dataset

    rec, _ = files
    cfg = tmp_path / "one.toml"
    cfg.write_text("[camera.replay]\nstart_frame = 10\nstop_frame = 11\n[output]\nreport = false\n")
    ev = tmp_path / "one.rtdc"
    assert main(["replay", str(rec), "--out", str(ev), "--model", "none", "--config", str(cfg)]) == 0
    assert check_dataset(ev)[0] == []
    with dclab.new_dataset(ev) as ds:
        assert ds.config["user"]["counter frames_processed"] == 1
        assert ds.config["user"]["duration s"] == 0.0 and ds.config["user"]["processing time s"] > 0


@pytest.mark.parametrize("argv, said", [
    (["--seconds", "-1"], "--seconds: must be finite and >= 0 (0: no limit), got -1.0"),
    (["--events", "-3"], "--events: must be in [0, 1000000000000] (0: no limit), got -3"),
    (["--http-port", "70000"], "--http-port: must be in [0, 65535], got 70000"),
])
def test_a_bad_run_option_is_named_as_the_option(tmp_path, capsys, argv, said):
    # it was named by the configuration key it sets ("autostop.seconds: … got -1.0") although the
    # user had typed --seconds -1, and the configuration file named with --config holds no such key
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[output]\nfolder = "{tmp_path / "out"}"\n')
    assert main(["run", "--config", str(cfg), *argv]) == 2
    err = capsys.readouterr().err
    assert f"mimlsort run: error: {said}\n" == err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, said", [
    (["simulate", "--out", "{t}/s.rtdc", "--seconds", "0.0001"], "--seconds: must be 0 (endless) or at least one frame"),
    (["simulate", "--out", "{t}/s.rtdc", "--roi", "8x8"], "--roi: must be in [32, 4096] px, got 8"),
    (["demo", "--out", "{t}/demo", "--seconds", "0.0001"], "--seconds: must be 0 (endless) or at least one frame"),
])
def test_a_bad_simulation_option_is_named_as_the_option(tmp_path, capsys, argv, said):
    # named by the settings' key ("duration_s: …", "camera.synthetic.duration_s: …"), which neither
    # command has; and the refused demo left its empty --out folder
    assert main([a.format(t=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"error: {said}" in err, err
    assert list(tmp_path.iterdir()) == []
