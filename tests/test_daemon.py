"""The headless daemon and replay as a user runs them: real processes, real signals, real files
that dclab opens."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from app.config import bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "demo" if bundled_model_path().is_file() else "none"


def write_config(path: Path, folder: Path, *, seconds: float = 0.0, model: str = MODEL, extra: str = "",
                 output_extra: str = "") -> Path:
    path.write_text(f"""
[camera]
backend = "synthetic"
[camera.synthetic]
duration_s = {seconds}
realtime = true
cells_per_second = 80.0
seed = 5
[model]
path = "{model}"
[trigger]
backend = "null"
[output]
folder = "{folder}"
sample = "daemon-test"
{output_extra}
[daemon]
status_interval_s = 0.5
{extra}
""")
    return path


def mimlsort(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_complete(path: Path, timeout: float) -> bool:
    """Whether the event file at ``path`` is closed complete within ``timeout`` seconds."""
    import h5py

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with h5py.File(path, "r", locking=False) as h5:
                if h5["mimlsort"].attrs.get("complete", False):
                    return True
        except (OSError, KeyError):
            pass
    return False


def wait_for_events(folder: Path, timeout: float = 120.0) -> Path:
    """The event file, once its first flush holds events."""
    from app.storage import read_events

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*.rtdc"))
        if files:
            try:
                feats, _ = read_events(files[0])
                if feats and len(next(iter(feats.values()))) > 0:
                    return files[0]
            except Exception:  # not flushed yet
                pass
        time.sleep(0.2)
    raise AssertionError(f"no events flushed in {folder} within {timeout} s")


def dclab_violations(path: Path) -> list[str]:
    from dclab.rtdc_dataset.check import check_dataset

    viol, _alerts, _info = check_dataset(path)
    return viol


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_with_complete_file(tmp_path, sig):
    import dclab

    cfg = write_config(tmp_path / "run.toml", tmp_path / "out")
    p = mimlsort("run", "--config", str(cfg))
    try:
        path = wait_for_events(tmp_path / "out")
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "canceled" in err and "stopped by" in err
    assert dclab_violations(path) == []
    with dclab.new_dataset(path) as ds:
        assert len(ds) > 0
        assert np.isfinite(ds["deform"][:]).mean() > 0.8  # NaN only for passages not seen whole
    log = (tmp_path / "out" / "mimlsort.log").read_text()
    assert log.count("run started;") == 1 and f"stopped by {sig.name}" in log
    # the log file ends as the terminal does: the last status line, how the run ended, its report
    last = log.strip().splitlines()
    assert "finished" in last[-3] and f"run canceled: stopped by {sig.name}; events in" in last[-2], last[-3:]
    said = f"report: {path.with_name(path.stem + '_report') / 'report.md'}"
    assert last[-1].endswith(said) and said in err, last[-3:]
    # a finished run's rates are its averages, not the recent rates decaying after its end
    fps_in = float(last[-3].split(" in ")[1].split("fps")[0])
    assert 3000 < fps_in < 5000, last[-3]  # the synthetic camera's 4 kHz


def test_sigkill_leaves_a_readable_file(tmp_path):
    """The daemon and its event writer child killed together (kill -9 of the process group, as an
    OOM kill or a power-cut-like end would leave it): the file holds every event flushed before."""
    import dclab

    from app.storage import read_events

    cfg = write_config(tmp_path / "run.toml", tmp_path / "out")
    p = mimlsort("run", "--config", str(cfg), start_new_session=True)
    try:
        path = wait_for_events(tmp_path / "out")
        time.sleep(1.5)  # more events, at least one more flush
        flushed = read_events(path)[1].n_events  # what a reader sees now
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
    finally:
        p.kill()
    assert flushed > 0
    feats, stored = read_events(path)
    assert not stored.complete and stored.n_events >= flushed
    with dclab.new_dataset(path) as ds:
        n = len(ds)
        assert n == stored.n_events
        assert ds["deform"].shape[0] == n and ds["image"].shape[0] == n
    assert dclab_violations(path) == []


def test_bad_configuration_exits_2_naming_the_key(tmp_path):
    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", extra="[sorting]\nthreshold = 1.5\n")
    p = mimlsort("run", "--config", str(cfg))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert "sorting.threshold" in err and "1.5" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_over_http_on_loopback_and_autostop(tmp_path):
    from app.config import load_config
    from app.daemon import run_daemon
    from app.session import with_changes

    port = _free_port()
    cfg = load_config(write_config(tmp_path / "run.toml", tmp_path / "out"))
    # output.compression reaches the writer process: frames plain, masks compressed
    cfg = with_changes(cfg, daemon={"http_port": port}, autostop={"seconds": 3.0}, output={"compression": "masks"})
    seen: list[dict] = []

    def poll():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(st.get("state") != "starting" for st in seen) < 3:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
                    seen.append(json.loads(r.read()))
            except OSError:
                pass
            time.sleep(0.3)

    th = threading.Thread(target=poll)
    th.start()
    with open(os.devnull, "w") as devnull:
        code, run = run_daemon(cfg, out=devnull)
    th.join()
    assert code == 0 and run.status().finish_reason.value == "completed"
    assert seen, "no status was served"
    # served from before the camera opens ("starting": a kernel compile can take a minute)
    assert all(st == {"state": "starting"} for st in seen[:next(i for i, st in enumerate(seen) if st["state"] != "starting")])
    assert {"state", "fps_in", "cells", "missed", "latency_p99_us"} <= set(seen[-1])
    assert seen[-1]["state"] in ("running", "stopping", "finished")
    # CPU per worker thread and of the event writer's process (a real child)
    cpu = seen[-1]["cpu_s"]
    assert {"camera", "sort", "storage", "writer process"} <= set(cpu) <= {"camera", "sort", "decide", "storage", "writer process"}
    assert cpu["sort"] > 0 and cpu["writer process"] > 0
    assert set(seen[-1]["cpu_cores"]) == set(cpu)
    import h5py

    with h5py.File(run.events_path, "r") as h5:
        assert h5["events/image"].shape[0] > 0 and not h5["events/image"]._filters and h5["events/mask"]._filters
    assert dclab_violations(run.events_path) == []


def _simulate(tmp_path: Path) -> Path:
    rec = tmp_path / "rec.rtdc"
    p = mimlsort("simulate", "--out", str(rec), "--seconds", "0.6", "--seed", "8", "--cells-per-second", "60")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return rec


def test_replay_is_deterministic(tmp_path):
    from app.storage import read_events

    rec = _simulate(tmp_path)
    cfg = tmp_path / "sort.toml"  # a wide purity window: decisions that depend on the cells around
    # a ring shorter than the recording: the camera laps it while cells wait for their event image
    cfg.write_text('[sorting]\nmode = "purity"\nwindow_ms = 20.0\n[camera]\nring_capacity = 512\n'
                   '[tracking]\nbatch_frames = 64\n')
    outs = []
    for k in range(2):
        out = tmp_path / f"events{k}.rtdc"
        p = mimlsort("replay", str(rec), "--out", str(out), "--model", MODEL, "--max-speed", "--config", str(cfg))
        _o, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        f, stored = read_events(out)
        outs.append(f)
    a, b = outs
    assert len(a["deform"]) > 0
    # as fast as the frames can be read there is no time to be late in: the cells the policy wants
    # are the sorted ones (they all came "late" by the host clock, some not, from one replay to the next)
    if MODEL != "none":
        reasons = {stored.reasons[r] for r in a["reason"]}
        assert a["fired"].sum() > 0 and "late" not in reasons
        assert "aborted by coincidence" in reasons, reasons
    varying = {"exit_host_ns", "decision_detail"} | {k for k in a if k.startswith("fire_")}  # host clock
    assert {"exit_frame", "deform", "di", "transit_time_ms", "probabilities", "fired", "reason"} <= set(a)
    for key in sorted(set(a) - varying):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # what dclab shows too: the event images were taken from frames the camera had not yet
    # overwritten in one replay and had in the other (a blank image, another frame's time)
    import h5py

    with h5py.File(tmp_path / "events0.rtdc", "r") as h0, h5py.File(tmp_path / "events1.rtdc", "r") as h1:
        assert set(h0["events"]) == set(h1["events"])
        for key in sorted(h0["events"]):
            np.testing.assert_array_equal(h0["events"][key][:], h1["events"][key][:], err_msg=f"events/{key}")
    assert stored.counters["snapshots_lost"] == 0 and stored.counters["frames_processed"] > 512


def test_replay_config_error_comes_without_a_progress_bar_and_the_bar_ends_before_the_last_words(tmp_path):
    rec = _simulate(tmp_path)
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[sorting]\ntarget_classes = ["nope"]\n')
    p = mimlsort("replay", str(rec), "--out", str(tmp_path / "bad.rtdc"), "--model", "demo", "--config", str(cfg))
    _o, err = p.communicate(timeout=180)
    assert p.returncode == 2 and "sorting.target_classes" in err
    assert "frame/s" not in err and "0%" not in err, err  # refused before the run: no empty bar
    out = tmp_path / "events.rtdc"
    p = mimlsort("replay", str(rec), "--out", str(out), "--model", MODEL)
    _o, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    done = next(i for i, line in enumerate(lines) if line.startswith("run completed"))
    assert any("100%" in line for line in lines[:done]) and not any("frame/s" in line for line in lines[done:]), lines
    # the sample report, as `mimlsort run` writes it (output.report is on by default): replay never wrote it
    assert f"report: {tmp_path / 'events_report' / 'report.md'}" in err, err[-2000:]
    assert (tmp_path / "events_report" / "report.html").is_file()


def test_replay_takes_realtime_from_its_configuration_and_its_bar_counts_every_frame_read(tmp_path):
    """With neither --realtime nor --max-speed, the configuration's camera.replay.realtime decides
    (it was ignored: the replay ran at full speed, silently). A real-time replay's bar ended at
    ~95%: the frames of the background estimate were not counted as read."""
    from app.storage import read_events

    rec = _simulate(tmp_path)
    cfg = tmp_path / "rt.toml"
    cfg.write_text('[camera.replay]\nrealtime = true\n[sorting]\nmode = "yield"\nthreshold = 0.0\n')
    out = tmp_path / "events.rtdc"
    p = mimlsort("replay", str(rec), "--out", str(out), "--model", MODEL, "--config", str(cfg))
    _o, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    f, stored = read_events(out)
    assert stored.counters["startup_frames"] > 0  # a live run: the background is estimated first
    if MODEL != "none":  # in real time the null trigger schedules the pulses (full speed has none)
        assert f["fired"].sum() > 0 and (f["fire_scheduled_ns"][f["fired"] == 1] > 0).all()
    bar = [line for line in err.replace("\r", "\n").splitlines() if "frame" in line and "%|" in line]
    assert bar and bar[-1].lstrip().startswith("100%"), bar[-3:]


def test_a_replay_of_a_looping_configuration_plays_the_recording_once_and_says_so(tmp_path):
    """camera.replay.loop = true (the GUI's simulated live camera) made `mimlsort replay` run until
    Ctrl-C, its bar without an end."""
    rec = _simulate(tmp_path)
    cfg = tmp_path / "loop.toml"
    cfg.write_text("[camera.replay]\nloop = true\n[output]\nreport = false\n")
    out = tmp_path / "events.rtdc"
    p = mimlsort("replay", str(rec), "--out", str(out), "--model", "none", "--config", str(cfg))
    try:
        _o, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, err[-2000:]
    assert "camera.replay.loop = true" in err and "`mimlsort replay` plays the recording once" in err, err[-2000:]
    bar = [line for line in err.replace("\r", "\n").splitlines() if "frame" in line and "%|" in line]
    assert bar and bar[-1].lstrip().startswith("100%"), bar[-3:]
    assert out.is_file() and not (tmp_path / "events_report").exists()  # output.report = false


@pytest.mark.parametrize("given_empty", [False, True])
def test_a_replay_stopped_before_its_first_tracked_frame_leaves_no_file_that_blocks_its_rerun(tmp_path, given_empty):
    """Ctrl-C while a real-time replay still gathered its background (the wrong options seen at
    the start) left an event file without an event, exit code 0, and the rerun with the same
    --out was refused: "exists and holds a measurement". An empty file given as --out
    (`mktemp --suffix .rtdc`) was left holding the run's header (108 kB) and refused the rerun
    alike: it is emptied again."""
    rec = tmp_path / "rec.rtdc"
    done = subprocess.run([sys.executable, "-m", "app.cli", "simulate", "--out", str(rec), "--seconds", "4",
                           "--fps", "200", "--seed", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cfg = tmp_path / "slow.toml"
    cfg.write_text("[tracking]\nbackground_frames = 760\n")  # ~4 s of frames at 200 fps before any is tracked
    out = tmp_path / "events.rtdc"
    if given_empty:
        out.write_bytes(b"")
    p = mimlsort("replay", str(rec), "--out", str(out), "--model", "none", "--realtime", "--config", str(cfg))
    try:
        deadline = time.monotonic() + 120
        for line in p.stderr:
            if "run started; events" in line or time.monotonic() > deadline:
                break
        p.send_signal(signal.SIGINT)
        _o, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err[-2000:]
    assert "stopped by SIGINT" in err, err[-2000:]
    if given_empty:
        assert f"{out} emptied again" in err and out.stat().st_size == 0, err[-2000:]
    else:
        assert f"{out} removed" in err and not out.exists(), err[-2000:]


def test_replay_finishes_while_nobody_reads_its_progress_bar(tmp_path):
    """The progress bar was drawn by the main thread: with stderr blocked (a paused terminal) the
    replay stood still at its first redraw and a SIGTERM could not stop it. Now the console's
    thread draws it, and the bar's text still comes out once stderr is read."""
    import fcntl

    rec = _simulate(tmp_path)
    out = tmp_path / "events.rtdc"
    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
    try:
        while True:  # full before the replay writes anything: its first write would block
            os.write(w, b"x" * 512)
    except BlockingIOError:
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, 0)  # the child must block, not fail, on the full pipe
    p = subprocess.Popen([sys.executable, "-m", "app.cli", "replay", str(rec), "--out", str(out), "--model", MODEL,
                          "--realtime"], cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                         stdout=subprocess.DEVNULL, stderr=w)
    os.close(w)
    try:
        assert wait_complete(out, 120), "the replay did not finish its event file while stderr was blocked"
        err = b""
        with open(r, "rb", closefd=False) as fh:
            fcntl.fcntl(r, fcntl.F_SETFL, os.O_NONBLOCK)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    err += fh.read() or b""
                except BlockingIOError:
                    pass
                if p.poll() is not None and not err.endswith(b"x"):
                    try:
                        err += fh.read() or b""
                    except BlockingIOError:
                        pass
                    break
                time.sleep(0.05)
        assert p.wait(timeout=30) == 0
        text = err.lstrip(b"x").decode()
        assert "frame" in text and "cells=" in text, text[-2000:]  # the bar, drawn by the console's thread
        from app.storage import read_events

        feats, _ = read_events(out)
        assert len(feats["deform"]) > 0
    finally:
        p.kill()
        os.close(r)


def _serial_yield_config(tmp_path: Path, port: str, seconds: float, timing: str = "") -> Path:
    """A run firing the serial trigger at ``port`` for every cell (yield mode, threshold 0)."""
    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", seconds=seconds)
    cfg.write_text(cfg.read_text().replace('[trigger]\nbackend = "null"', f"""[trigger]
backend = "serial"
[trigger.serial]
port = "{port}"
compensate_transmission = false
[trigger.timing]
{timing}
[sorting]
mode = "yield"
threshold = 0.0"""))
    return cfg


def test_a_trigger_lost_mid_run_ends_the_daemon_with_its_own_exit_code(tmp_path):
    """The trigger device gone mid-run (the emulator process killed, as a pulled USB cable): the run
    goes on to its end deciding cells as 'trigger unavailable', and the exit code (3) and the last
    words say that cells were not sorted — a script must not take the run for a good sort."""
    pytest.importorskip("serial")
    from tests.sim.trigger_emulator import emulated_port

    with emulated_port(tmp_path / "device.tsv") as emu:
        cfg = _serial_yield_config(tmp_path, emu.port, 4.0)
        p = mimlsort("run", "--config", str(cfg))
        try:
            wait_for_events(tmp_path / "out")
            os.kill(emu.process.pid, signal.SIGKILL)
            out, err = p.communicate(timeout=120)
        finally:
            p.kill()
    assert p.returncode == 3, err[-3000:]
    assert "the trigger failed during the run" in err and "were not sorted" in err


def test_a_pulse_log_on_a_full_disk_ends_the_run_as_a_trigger_failure_naming_the_file(tmp_path):
    """The log trigger's file on a full disk (/dev/full): the run said "No space left on device"
    without naming the file, and closing the trigger raised the same error again, so the run ended
    "closing failed" with exit code 1 instead of the trigger's 3."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", seconds=1.0)
    cfg.write_text(cfg.read_text().replace('[trigger]\nbackend = "null"', """[trigger]
backend = "log"
[trigger.log]
path = "/dev/full"
flush_s = 0.0
[sorting]
mode = "yield"
threshold = 0.0"""))
    p = mimlsort("run", "--config", str(cfg))
    try:
        out, err = p.communicate(timeout=180)
    finally:
        p.kill()
    assert p.returncode == 3, err[-3000:]
    assert "trigger.log.path: cannot write /dev/full: No space left on device" in err, err[-3000:]
    assert "the trigger failed during the run" in err and "closing failed" not in err, err[-3000:]


def test_pulses_the_device_refused_end_the_daemon_with_the_trigger_exit_code(tmp_path):
    """A device whose pulse queue holds one pulse, with a long way to the junction: most commands
    are refused (ERR 3). Those cells were recorded as fired and not sorted; the run ended
    "completed" with exit code 0, and its last words said "did not output 0 pulse(s)" of others."""
    pytest.importorskip("serial")
    from tests.sim.trigger_emulator import emulated_port

    with emulated_port(tmp_path / "device.tsv", "--queue", "1") as emu:
        cfg = _serial_yield_config(tmp_path, emu.port, 2.0, timing="distance_to_junction_um = 400.0\noffset_us = 7000.0")
        p = mimlsort("run", "--config", str(cfg))
        try:
            out, err = p.communicate(timeout=180)
        finally:
            p.kill()
        refused = [e for e in emu.records("err") if e[1] == "3"]
    assert len(refused) > 3
    assert p.returncode == 3, err[-3000:]
    assert f"the trigger device reported {len(refused)} error(s), did not output {len(refused)} pulse(s)" in err, err[-2000:]
    assert "did not confirm" not in err  # none went unanswered: refused ones are not also "unacked"


def test_a_status_port_in_use_is_refused_before_the_run_opens_anything(tmp_path):
    """A second daemon on the same daemon.http_port opened the camera and trigger, started, then
    failed with a bare 'Address already in use' and left an empty event file."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path / "run.toml", tmp_path / "out", seconds=1.0, extra=f"http_port = {port}")
        p = mimlsort("run", "--config", str(cfg))
        out, err = p.communicate(timeout=120)
        # the port given on the command line is named as the option, without the file
        q = mimlsort("run", "--config", str(cfg), "--http-port", str(port))
        _, err_option = q.communicate(timeout=120)
    assert p.returncode == 2, err
    # the file as the validation names it: a key alone left the operator to guess which file
    assert f"daemon.http_port: cannot serve the status on 127.0.0.1:{port}: Address already in use (in {cfg})" in err
    assert "opened synthetic camera" not in err and not list((tmp_path / "out").glob("*.rtdc"))
    assert not (tmp_path / "out").exists()  # nor the output folder and an empty mimlsort.log
    assert q.returncode == 2, err_option
    assert f"error: --http-port: cannot serve the status on 127.0.0.1:{port}: Address already in use\n" in err_option
    assert not (tmp_path / "out").exists()


def test_the_log_file_may_be_in_a_subfolder_and_a_bad_one_names_the_key(tmp_path):
    # `daemon.log_file = "logs/run.log"` failed with a bare "No space…/No such file" and exit 1
    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", seconds=0.3, extra='log_file = "logs/run.log"')
    p = mimlsort("run", "--config", str(cfg))
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    assert "run completed" in (tmp_path / "out" / "logs" / "run.log").read_text()
    # a bad one: test_a_log_file_refused_at_the_start_names_the_file_and_leaves_no_output_folder


def test_a_log_file_under_the_home_folder_is_taken_from_there(tmp_path):
    # "~/logs/run.log" made a folder named "~" in the output folder; `config --check` checked the same
    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", seconds=0.3, extra='log_file = "~/logs/run.log"')
    env = dict(os.environ, PYTHONUNBUFFERED="1", HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-m", "app.cli", "run", "--config", str(cfg)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "run completed" in (tmp_path / "home" / "logs" / "run.log").read_text()
    assert not (tmp_path / "out" / "~").exists()


def test_a_log_file_refused_at_the_start_names_the_file_and_leaves_no_output_folder(tmp_path):
    # the output folder was made, then the log file refused: the run exited 2 naming the key
    # alone, and left the empty folder
    (tmp_path / "plain").write_text("")
    out = tmp_path / "out" / "day1"
    cfg = write_config(tmp_path / "run.toml", out, seconds=0.3,
                       extra=f'log_file = "{tmp_path / "plain" / "run.log"}"')
    p = mimlsort("run", "--config", str(cfg))
    _, err = p.communicate(timeout=180)
    assert p.returncode == 2, err
    assert f"error: daemon.log_file: {tmp_path / 'plain' / 'run.log'}: cannot be written: " in err, err
    assert err.rstrip().endswith(f"(in {cfg})"), err
    assert not (tmp_path / "out").exists()
    # `config --check` says the same thing of the same key and file
    p = mimlsort("config", "--check", str(cfg))
    _, err = p.communicate(timeout=180)
    assert p.returncode == 2 and f"error: daemon.log_file: {tmp_path / 'plain'}: cannot be made or written" in err, err
    assert err.rstrip().endswith(f"(in {cfg})"), err


def _unwritable_folder() -> Path:
    """An existing folder nobody may create files in, root included (sysfs)."""
    import tempfile

    folder = Path("/sys/kernel")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return folder
    pytest.skip(f"{folder} takes files here")


def test_an_output_folder_that_cannot_be_written_is_named_as_the_output_folder(tmp_path):
    # an existing folder that takes no files (a read-only mount, sysfs): the run's log file is made
    # there first, and the error named daemon.log_file, a key the configuration did not set
    folder = _unwritable_folder()
    cfg = write_config(tmp_path / "run.toml", folder, seconds=0.3)
    p = mimlsort("run", "--config", str(cfg))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, err
    assert f"error: output.folder: {folder}: cannot write there" in err and err.rstrip().endswith(f"(in {cfg})"), err
    assert "daemon.log_file" not in err, err
    # the folder given on the command line is named as the option, and no file
    p = mimlsort("run", "--config", str(cfg), "--out-dir", str(folder))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and f"error: --out-dir: {folder}: cannot write there" in err and str(cfg) not in err, err
    p = mimlsort("config", "--check", str(cfg))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and f"error: output.folder: {folder}: cannot be made or written" in err, err
    assert err.rstrip().endswith(f"(in {cfg})"), err


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_writer_that_hangs_does_not_keep_the_daemon_from_ending(tmp_path):
    # the event writer child stops answering (SIGSTOP: as a process stuck in the kernel on a dead
    # network disk). A SIGTERM must still end the daemon: past output.stop_timeout_s without
    # progress the writer is abandoned, the exit code says so, the file keeps what it flushed
    import dclab

    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", output_extra="stop_timeout_s = 2.0")
    p = mimlsort("run", "--config", str(cfg))
    writer = None
    try:
        path = wait_for_events(tmp_path / "out")
        time.sleep(1.2)  # another flush
        writers = [c for c in _children(p.pid) if b"app.writer_process" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(writers) == 1, writers
        writer = writers[0]
        os.kill(writer, signal.SIGSTOP)
        time.sleep(1.0)  # the run goes on; records queue for the writer
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=90)
        took = time.monotonic() - t0
    finally:
        p.kill()
        if writer is not None:
            try:
                os.kill(writer, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert p.returncode == 1, err
    assert "abandoned" in err and "stop_timeout_s" in err
    # said as the run's end and in its own line; "closing failed: event file: … abandoned" said it a third time
    assert "closing failed" not in err and "closing the event file failed" not in err, err[-3000:]
    assert took < 60
    with dclab.new_dataset(path) as ds:
        assert len(ds) > 0


def test_a_terminal_nobody_reads_neither_stalls_sorting_nor_stops_sigterm(tmp_path):
    """stderr into a pipe that is never read (a terminal paused with Ctrl-S, a stuck `| tee`): the
    log trigger's pulse lines, warnings and status lines used to block the sort thread and the
    main thread, which then never closed the files after SIGTERM."""
    import fcntl

    cfg = write_config(tmp_path / "run.toml", tmp_path / "out")
    cfg.write_text(cfg.read_text().replace('backend = "null"', 'backend = "log"')  # a line per pulse
                   .replace("status_interval_s = 0.5", "status_interval_s = 0.05"))
    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ: a small pipe fills within the first second
    p = subprocess.Popen([sys.executable, "-m", "app.cli", "run", "--config", str(cfg)], cwd=ROOT,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.DEVNULL, stderr=w)
    os.close(w)
    try:
        path = wait_for_events(tmp_path / "out")
        time.sleep(2.0)  # the pipe is full by now: every write to stderr would block
        p.send_signal(signal.SIGTERM)
        assert wait_complete(path, 30), "SIGTERM did not close the event file while stderr was blocked"
        # the run's log file is written by a thread of its own: the blocked terminal did not stop it
        assert "SIGTERM: stopping the run" in (tmp_path / "out" / "mimlsort.log").read_text()
        with open(r, "rb", closefd=False) as fh:  # now read it: the process says its last words and ends
            fcntl.fcntl(r, fcntl.F_SETFL, os.O_NONBLOCK)
            deadline = time.monotonic() + 30
            err = b""
            while p.poll() is None and time.monotonic() < deadline:
                try:
                    err += fh.read() or b""
                except BlockingIOError:
                    pass
                time.sleep(0.05)
        assert p.returncode == 0
        from app.storage import read_events

        feats, run = read_events(path)
        # the sort path did not wait for the terminal (it missed 13,000 frames of ~20,000 then)
        assert run.n_events > 0 and run.counters.get("missed_sort", 0) < 0.02 * run.counters["frames_in"]
    finally:
        p.kill()
        os.close(r)


def test_a_signal_while_the_run_starts_ends_it_cleanly(tmp_path):
    """SIGTERM during the model load and camera open (before, the process died with status 143
    and left an empty, unfinished event file; SIGINT gave a traceback)."""
    import dclab

    for sig in (signal.SIGTERM, signal.SIGINT):
        cfg = write_config(tmp_path / "run.toml", tmp_path / sig.name)
        p = mimlsort("run", "--config", str(cfg))
        deadline = time.monotonic() + 60
        while not list((tmp_path / sig.name).glob("*.rtdc")) and time.monotonic() < deadline:
            time.sleep(0.01)  # the event writer has just been started: the run is being built
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "Traceback" not in err and "stopped by" in err
        paths = list((tmp_path / sig.name).glob("*.rtdc"))
        assert len(paths) == 1
        with dclab.new_dataset(paths[0]) as ds:
            assert ds.h5file["mimlsort"].attrs["complete"]


def test_the_daemon_writes_the_sample_report(tmp_path):
    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", seconds=1.5)
    p = mimlsort("run", "--config", str(cfg))
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    events = sorted((tmp_path / "out").glob("*.rtdc"))[0]
    report = events.with_name(events.stem + "_report") / "report.md"
    assert report.is_file() and "report:" in err


def test_the_status_server_answers_while_the_report_is_written_and_says_it_failed(tmp_path):
    """The status server closed before the sample report was written: a client polling it saw the
    connection refused while the daemon was at work. A report that failed was said on stderr
    only: neither the log file nor the status said it."""
    import io

    from app.cli_run import _report
    from app.config import load_config
    from app.daemon import run_daemon
    from app.session import with_changes

    port = _free_port()
    folder = tmp_path / "out"
    cfg = load_config(write_config(tmp_path / "run.toml", folder, seconds=0.3, model="none"))
    cfg = with_changes(cfg, daemon={"http_port": port}, camera={"synthetic.realtime": False})
    events = folder / "ev.rtdc"
    mine = folder / "ev_report" / "report.md"  # a user's own notes where the report would go
    mine.parent.mkdir(parents=True)
    mine.write_text("my notes\n")
    served, seen_after = [], []

    def status() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            return json.loads(r.read())

    def report(path: Path):
        served.append(status())
        return _report(path)

    def poll():
        while not seen_after:
            try:
                st = status()
            except OSError:
                st = {}
            if "report" in st:
                seen_after.append(st)
            time.sleep(0.01)

    class SlowTerminal(io.StringIO):
        """Takes the report's line once the poller has seen the end: the daemon's console waits
        for its terminal before the daemon is done."""

        def write(self, text: str) -> int:
            if "the report could not be written" in text:
                th.join(10)
            return super().write(text)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out = SlowTerminal()
    code, run = run_daemon(cfg, events_path=events, out=out, report=report)
    th.join(10)
    assert code == 0 and run.status().cells > 0
    assert served and served[0]["state"] == "reporting" and served[0]["cells"] == run.status().cells
    assert seen_after and seen_after[0]["state"] == "finished" and seen_after[0]["report"] == "failed"
    assert "report.md: exists" in seen_after[0]["report_message"]
    assert mine.read_text() == "my notes\n"
    for text in (out.getvalue().splitlines()[-1], (folder / "mimlsort.log").read_text().splitlines()[-1]):
        assert "the report could not be written" in text and "report.md: exists" in text, text
        assert f"`mimlsort report {events}` writes it" in text
    with pytest.raises(OSError):  # and closed once the daemon is done
        status()


def test_the_served_status_counts_the_frames_missed_as_the_line_and_the_file_do(tmp_path):
    """The status line, the GUI and the benches say "missed" for the frames a reader skipped plus
    those it lost to overruns; the JSON had only the two per-reader tables, so a client reading
    "missed" counted fewer frames than the line beside it said."""
    import h5py

    from app.config import load_config
    from app.daemon import run_daemon
    from app.session import with_changes

    port = _free_port()
    cfg = load_config(write_config(tmp_path / "run.toml", tmp_path / "out", model="none"))
    # a ring the tracker cannot keep up with: frames are missed and overrun
    cfg = with_changes(cfg, daemon={"http_port": port}, autostop={"seconds": 0.3}, output={"report": False},
                       camera={"ring_capacity": 64, "synthetic.fps": 30000.0})
    served: list[dict] = []

    def report(path: Path):  # asked while the daemon still serves its final status
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            served.append(json.loads(r.read()))
        return True, "status read"

    with open(os.devnull, "w") as devnull:
        code, run = run_daemon(cfg, out=devnull, report=report)
    st = run.status()
    assert code == 0 and served and st.frames_missed > 0
    assert served[0]["frames_missed"] == st.frames_missed == sum(st.missed.values()) + sum(st.overrun.values())
    assert f"missed {served[0]['frames_missed']} " in st.line()
    with h5py.File(run.events_path, "r") as h5:
        counters = json.loads(h5["mimlsort"].attrs["counters"])
    assert counters["missed_sort"] + counters["overrun_sort"] == served[0]["frames_missed"]


def test_a_short_runs_cores_leave_out_the_writers_startup(tmp_path):
    """The event writer child imports h5py and creates the file before the run starts (~0.3 s of
    CPU): counted in, a 0.3 s run's final line gave the single-threaded writer over a core."""
    import re

    cfg = tmp_path / "short.toml"
    cfg.write_text(f'[camera.synthetic]\nduration_s = 0.3\n[model]\npath = "none"\n'
                   f'[output]\nfolder = "{tmp_path}"\nreport = false\n[daemon]\nlog_file = ""\n')
    p = mimlsort("run", "--config", str(cfg))
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    cores = re.findall(r"writer process=([0-9.]+)", out + err)
    assert cores and float(cores[-1]) < 1.0, (out + err)[-1500:]


def test_a_run_without_an_event_file_says_so_and_names_no_file(tmp_path):
    import io

    from app.config import load_config
    from app.daemon import run_daemon

    folder = tmp_path / "out"
    cfg = load_config(write_config(tmp_path / "run.toml", folder, seconds=0.3, model="none",
                                   output_extra="write_events = false\nreport = false"))
    out = io.StringIO()
    code, run = run_daemon(cfg, out=out)
    assert code == 0 and run.events_path is None
    log_text = (folder / "mimlsort.log").read_text()
    # it said "events -> None": a path that does not exist
    assert "None" not in log_text and "no event file written (output.write_events = false)" in log_text
    assert "no event file written" in out.getvalue().splitlines()[-1]
    assert not list(folder.glob("*.rtdc"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_report_ends_it_and_keeps_the_runs_exit_code(tmp_path, sig):
    """The run has ended and its file is closed; the report is being drawn. SIGTERM was ignored
    there (a service manager's stop waited for the whole report) and Ctrl-C turned the completed
    run into exit code 130 and left a report folder without a report in it."""
    from app.storage import read_events

    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", seconds=0.5, extra='log_file = ""')
    p = mimlsort("run", "--config", str(cfg))
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out").glob("*_report")) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.005)  # the report folder is made after the event file is read, before the figures
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err[-2000:]
    events = sorted((tmp_path / "out").glob("*.rtdc"))[0]
    assert f"the report was interrupted ({sig.name})" in err, err[-2000:]
    assert "Traceback" not in err and read_events(events)[1].complete
    assert not list((tmp_path / "out").glob("*_report"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_process_winds_down_keeps_the_commands_exit_code(tmp_path, sig):
    """A second Ctrl-C (or a service manager's SIGTERM) after the replay has said how it ended,
    while the process exits (~0.5 s here): the command line had given Python's handlers back, and
    the process ended killed by the signal instead of with the replay's exit code 0."""
    rec = tmp_path / "rec.rtdc"
    done = subprocess.run([sys.executable, "-m", "app.cli", "simulate", "--out", str(rec), "--seconds", "0.3",
                           "--seed", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    p = mimlsort("replay", str(rec), "--out", str(tmp_path / "ev.rtdc"), "--model", "none")
    try:
        deadline = time.monotonic() + 120
        for line in p.stderr:  # the replay's last line: the command has returned its code
            if " frames -> " in line or time.monotonic() > deadline:
                break
        time.sleep(0.05)
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 0, err[-2000:]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device whose writes fail: disk full)")
def test_a_log_file_that_cannot_be_written_is_said_once_and_the_run_keeps_its_exit_code(tmp_path):
    """The log file's disk is full: every record printed a "--- Logging error ---" traceback, and
    the completed run ended with exit code 1 and "error: No space left on device", naming no file;
    then the line named the file but not the key that chose it."""
    import dclab

    cfg = tmp_path / "full.toml"
    cfg.write_text(f'[camera.synthetic]\nduration_s = 0.3\n[model]\npath = "none"\n'
                   f'[output]\nfolder = "{tmp_path / "out"}"\nreport = false\n[daemon]\nlog_file = "/dev/full"\n')
    p = mimlsort("run", "--config", str(cfg))
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-2000:]
    assert "Logging error" not in err and "Traceback" not in err, err[-2000:]
    assert err.count("the log file /dev/full (daemon.log_file) cannot be written (No space left on device)") == 1, \
        err[-2000:]
    assert "run completed" in err
    with dclab.new_dataset(sorted((tmp_path / "out").glob("*.rtdc"))[0]) as ds:
        assert len(ds) > 0


def test_the_files_of_a_killed_run_open_in_reanalyze_replay_and_track(tmp_path):
    """kill -9 of the daemon's process group leaves its event file and raw recording with every
    flushed event and frame, which dclab and `mimlsort report` opened; reanalyze, replay, track
    and train refused both ("file is already open for write … h5clear"), and replay and track
    took the event file for something else than an event file."""
    from acquisition.replay import event_file_sign
    from app.config import load_config
    from app.reanalyze import reanalyze
    from app.session import with_changes

    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", model="none", output_extra="record_raw = true")
    p = mimlsort("run", "--config", str(cfg), start_new_session=True)
    try:
        events = wait_for_events(tmp_path / "out")
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
    finally:
        p.kill()
    raw = next((tmp_path / "out").glob("*_raw.rtdc"))
    assert "event writer" in event_file_sign(events)
    res = reanalyze(events, tmp_path / "again.rtdc")
    assert res.events_out > 0
    replay = with_changes(load_config(cfg), camera={"backend": "replay", "replay.path": str(raw)})
    with replay.camera.make_camera() as cam:
        assert cam.info.frame_count > 0


def test_a_run_refused_at_its_start_says_why_in_its_log_file(tmp_path):
    """An unattended run whose model is not there: stderr said why (exit code 2), and the log file
    in the output folder ended with the line before, not a word of it."""
    cfg = write_config(tmp_path / "run.toml", tmp_path / "out", model=str(tmp_path / "gone.onnx"))
    p = mimlsort("run", "--config", str(cfg))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "model.path" in err, err[-2000:]
    last = (tmp_path / "out" / "mimlsort.log").read_text().strip().splitlines()[-1]
    assert "ERROR" in last and "run not started: model.path: no model file at" in last and "gone.onnx" in last, last
    assert last.endswith(f"(in {cfg})") and f"error: model.path: no model file at {tmp_path / 'gone.onnx'}" in err, err


@pytest.fixture
def disk_260m(tmp_path):
    """A file system of its own with just over the event writer's 256 MiB of headroom: a few MiB
    written beside the run's file make its next flush "disk nearly full"."""
    from tests.test_storage import mounted_tmpfs

    yield from mounted_tmpfs(tmp_path / "disk", "260m")


def test_the_event_writers_error_names_its_file_once_wherever_it_is_read(tmp_path, disk_260m):
    """The writer child's error went through the parent's log as "P: P: disk nearly full", and the
    run's end said it again as "closing failed: event file: P: …" although the file closed complete.
    Then stderr still said it five times: the child's line, the parent's, "storage worker failed",
    "run stopping" and "run errored"; now once as the cause and once in the run's end."""
    from app.storage import read_events

    out = disk_260m / "out"
    cfg = write_config(tmp_path / "run.toml", out, seconds=120.0, model="none", output_extra="report = false")
    p = mimlsort("run", "--config", str(cfg))
    try:
        events = wait_for_events(out)
        (disk_260m / "filler").write_bytes(b"\0" * (8 << 20))  # 252 MiB free: under the writer's 256
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, err[-3000:]
    where = str(events)
    said = [line for line in err.splitlines() + (out / "mimlsort.log").read_text().splitlines()
            if "disk nearly full" in line]
    # "run errored: …; events in P" ends by saying where the file is, as every run's end does
    assert said and all(line.split("; events in ")[0].count(where) == 1 for line in said), "\n".join(said)
    assert "closing failed" not in err and "closing the event file failed" not in err, err[-3000:]
    assert f"run errored: storage: {where}: disk nearly full (" in err, err[-3000:]
    for text in (err, (out / "mimlsort.log").read_text()):
        lines = [line for line in text.splitlines() if "disk nearly full" in line]
        assert len(lines) == 2 and "ERROR app.pipeline: run stopping: storage: " in lines[0], "\n".join(lines)
        assert "run errored: storage: " in lines[1], "\n".join(lines)
    _, run = read_events(events)
    assert run.complete and run.error.count(where) == 1 and "disk nearly full" in run.error, run.error
    # the file's own log takes no line once its writer stopped for the disk: its error attribute says it
    assert all(line.count(where) <= 1 for line in run.run_log), run.run_log


@pytest.fixture
def disk_600m(tmp_path):
    """A file system of its own with room over the raw recorder's 512 MiB of headroom, and the
    event writer's 256: filling it to 400 MiB free stops the recording, not the event file."""
    from tests.test_storage import mounted_tmpfs

    yield from mounted_tmpfs(tmp_path / "disk", "600m")


def test_the_raw_recorders_full_disk_is_said_once_as_the_cause_and_once_in_the_end(tmp_path, disk_600m):
    """The recorder said its "disk nearly full" in a log line and then raised it, and the parent of
    its child logged it again as "P: P: disk nearly full": four lines on stderr for one cause. Now
    once as "run stopping: recorder: P: …" and once in the run's end, naming the file once; the
    event file, whose writer did not fail, closes complete and readable by dclab."""
    import dclab

    from app.storage import read_events

    out = disk_600m / "out"
    cfg = write_config(tmp_path / "run.toml", out, seconds=120.0, model="none",
                       output_extra="report = false\nrecord_raw = true")
    p = mimlsort("run", "--config", str(cfg))
    try:
        events = wait_for_events(out)
        raw = next(out.glob("*_raw.rtdc"))
        free = shutil.disk_usage(disk_600m).free
        (disk_600m / "filler").write_bytes(b"\0" * (free - (400 << 20)))  # under 512 MiB, over 256
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    where = str(raw)
    logged = (out / "mimlsort.log").read_text()
    for text in (err, logged):
        lines = [line for line in text.splitlines() if "disk nearly full" in line]
        assert len(lines) == 2, "\n".join(lines)
        assert f"ERROR app.pipeline: run stopping: recorder: {where}: disk nearly full (" in lines[0], lines
        assert f"run errored: recorder: {where}: disk nearly full (" in lines[1], lines
        assert all(line.split("; events in ")[0].count(where) == 1 for line in lines), lines
    assert "closing failed" not in err, err[-3000:]
    assert p.returncode == 1, err[-3000:]
    _, run = read_events(events)
    assert run.complete, run
    assert not dclab_violations(events)
    with dclab.new_dataset(events) as ds:
        assert len(ds) > 0
    # exit code 1 and status "errored"; the event file's error attribute says the recorder's cause
    assert run.error.startswith(f"recorder: {where}: disk nearly full (") and run.error.count(where) == 1, run.error
    with dclab.new_dataset(raw) as ds:  # the recording too holds its frames, closed readable
        assert len(ds) > 0
        text = "".join("".join(ds.logs[name]) for name in ds.logs)  # long lines are cut at 100 characters
        assert text.count("disk nearly full") == 1, text  # its own log keeps the line
