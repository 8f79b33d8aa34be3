"""The run configuration: the commented default loads back to the defaults, errors name the key,
vendor tables are checked against their backend's own settings, the GUI/daemon round trip."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import RunConfig, config_from_mapping, default_config_text, load_config, save_config
from mimlsort.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_text_is_valid_toml_and_loads_back_to_the_defaults(tmp_path):
    p = tmp_path / "default.toml"
    p.write_text(default_config_text())
    cfg = load_config(p)
    d = RunConfig()
    for section in ("tracking", "model", "sorting", "output", "autostop", "daemon"):
        assert getattr(cfg, section) == getattr(d, section), section
    assert cfg.camera.synthetic == d.camera.synthetic and cfg.trigger.timing == d.trigger.timing
    text = p.read_text()
    assert "# frame rate" in text  # comments come from the settings classes
    for table in ("[camera.basler]", "[camera.genicam]", "[trigger.serial]", "[trigger.visa]"):
        assert table in text, table


def test_cli_prints_the_default_and_checks_files(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app.cli", "config", "--default"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "[sorting]" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[tracking]\nmin_area_um = -3\n")
    out = subprocess.run([sys.executable, "-m", "app.cli", "config", "--check", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "tracking.min_area_um" in out.stderr and str(bad) in out.stderr


@pytest.mark.parametrize("data, key", [
    ({"sorting": {"threshold": 1.5}}, "sorting.threshold"),
    ({"camera": {"backend": "nikon"}}, "camera.backend"),
    ({"camera": {"synthetic": {"fps": -1}}}, "camera.synthetic.fps"),
    # under half a frame is 0 frames, an endless run's count: the daemon ran until a signal
    ({"camera": {"synthetic": {"duration_s": 0.0001}}},
     "camera.synthetic.duration_s: must be 0 (endless) or at least one frame (0.00025 s at 4000 fps), got 0.0001"),
    ({"trigger": {"backend": "serial", "serial": {"baudrate": "fast"}}}, "trigger.serial.baudrate"),
    ({"trigger": {"timing": {"pulse_width_us": 0}}}, "trigger.timing.pulse_width_us"),
    ({"model": {"provider": "gpu"}}, "model.provider"),
    ({"autostop": {"events": -1}}, "autostop.events"),
    ({"daemon": {"http_port": 70000}}, "daemon.http_port"),
    ({"output": {"stop_timeout_s": -1}}, "output.stop_timeout_s"),
    ({"output": {"compression": "lz4"}}, "output.compression"),
    ({"output": {"max_backlog_mb": -1}}, "output.max_backlog_mb"),
    ({"output": {"sample": "x" * 300}}, "output.sample"),
    ({"output": {"sample": ".."}}, "output.sample"),  # a hidden ".._<time>.rtdc"
    ({"bogus": {}}, "bogus"),
    # NaN fails every comparison, so range checks alone let it through; infinity is no threshold
    ({"tracking": {"threshold": float("nan")}}, "tracking.threshold"),
    ({"tracking": {"threshold": float("inf")}}, "tracking.threshold"),
    ({"sorting": {"window_ms": float("nan")}}, "sorting.window_ms"),
    ({"camera": {"synthetic": {"classes": [{"di": 0.1}]}}}, "camera.synthetic.classes[0].name"),
    # walls the wrong way round: the run failed with "geometry.channel: y-range must satisfy …" in pixels
    ({"tracking": {"geometry": {"channel_top_um": 40.0, "channel_bottom_um": 8.0}}},
     "tracking.geometry.channel_bottom_um: must be > channel_top_um (40.0)"),
])
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        config_from_mapping(data)
    assert str(e.value).startswith(key), str(e.value)


def test_vendor_camera_table_checked_when_selected():
    with pytest.raises(ConfigError, match=r"^camera\.basler\.no_such_feature"):
        config_from_mapping({"camera": {"backend": "basler", "basler": {"no_such_feature": 1}}})
    # not selected: kept as data, not checked
    cfg = config_from_mapping({"camera": {"basler": {"no_such_feature": 1}}})
    assert cfg.camera.basler == {"no_such_feature": 1}


def test_save_and_load_round_trip(tmp_path):
    cfg = config_from_mapping({"sorting": {"threshold": 0.8, "mode": "yield",
                                           "polygon_gates": [{"x": "transit_time_ms", "y": "di",
                                                              "points": [[0, 0], [1, 0], [1, 1]]}]},
                               "output": {"sample": "blood-1"}, "trigger": {"backend": "serial"}})
    p = tmp_path / "run.toml"
    save_config(cfg, p)
    assert load_config(p) == cfg


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("[camera\nbackend=1")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize("data, message", [
    ({"model": {"path": "/nonexistent/m.onnx"}}, "model.path: no model file at /nonexistent/m.onnx"),
    ({"camera": {"backend": "replay"}}, "camera.replay.path: no recording given"),
    ({"camera": {"backend": "replay", "replay": {"path": "/nonexistent.rtdc"}}}, "/nonexistent.rtdc does not exist"),
    ({"trigger": {"backend": "serial"}}, "trigger.serial.port: not given"),
    ({"trigger": {"backend": "visa"}}, "trigger.visa.resource: not given"),
    # said "valid" (an auditor's findings): a port that is not there, an output line the camera
    # does not have, a delay the serial protocol cannot carry (sent as 10 s: the pulse came early),
    # a log file in a folder that cannot be made (the run failed with exit 1, naming no key)
    ({"trigger": {"backend": "serial", "serial": {"port": "/dev/mimlsort-no-such-tty"}}},
     "trigger.serial.port: /dev/mimlsort-no-such-tty: no such device"),
    ({"trigger": {"backend": "camera-line"}}, "trigger.backend: camera-line fires the camera's own output line"),
    ({"trigger": {"backend": "serial", "serial": {"port": "/dev/null"}, "timing": {"max_delay_us": 30e6}}},
     "trigger.timing.max_delay_us: 3e+07 µs is more than the serial protocol carries"),
    ({"daemon": {"log_file": "/dev/null/x.log"}}, "daemon.log_file: /dev/null: cannot be made"),
    ({"trigger": {"backend": "log", "log": {"path": "/dev/null/pulses.csv"}}},
     "trigger.log.path: /dev/null: cannot be made"),
    ({"trigger": {"backend": "visa", "visa": {"resource": "USB0::1::2::3::INSTR", "library": "/nonexistent.yaml@sim"}}},
     "trigger.visa.library: /nonexistent.yaml: no such instrument definition"),
    # a constriction or wall beyond the synthetic camera's image passed, and the run failed on its first frames
    ({"tracking": {"geometry": {"constriction_start_um": 200.0, "constriction_end_um": 240.0}}},
     "tracking.geometry.constriction_start_um: 200 µm lies outside the ROI (256 px × 0.5 µm/px = 128 µm; "
     "the synthetic camera's image 256x96 px)"),
    ({"camera": {"synthetic": {"height": 80}}, "tracking": {"geometry": {"channel_bottom_um": 45.0}}},
     "tracking.geometry.channel_bottom_um: 45 µm lies outside the ROI (80 px × 0.5 µm/px = 40 µm; "
     "the synthetic camera's image 256x80 px)"),
    ({"camera": {"pixel_size_um": 0.25}, "tracking": {"geometry": {"constriction_end_um": 70.0}}},
     "tracking.geometry.constriction_end_um: 70 µm lies outside the ROI (256 px × 0.25 µm/px = 64 µm"),
])
def test_preflight_finds_what_a_run_would_refuse_at_its_start(data, message, tmp_path):
    # valid as a configuration, but a run would stop at once: `config --check` must say so
    from app.session import preflight

    cfg = config_from_mapping({**data, "output": {"folder": str(tmp_path / "runs")}})
    with pytest.raises(Exception) as e:
        preflight(cfg)
    assert message in str(e.value)


def test_preflight_of_a_runnable_configuration_says_what_it_checked(tmp_path):
    from app.session import preflight

    checked = preflight(config_from_mapping({"output": {"folder": str(tmp_path / "runs")}}))
    assert any(c.startswith("model miml-mini-demo.onnx") for c in checked)
    assert any(str(tmp_path / "runs") in c for c in checked)
    assert not (tmp_path / "runs").exists()  # a check makes nothing


def test_preflight_refuses_what_the_model_makes_impossible(tmp_path):
    """config --check said "valid" for target classes the model lacks and a tracker crop smaller
    than its field, which the run then refused."""
    from app.session import preflight

    out = {"output": {"folder": str(tmp_path / "runs")}}
    with pytest.raises(ConfigError, match=r"sorting\.target_classes.*\['foo'\] not among the model's classes"):
        preflight(config_from_mapping({**out, "sorting": {"target_classes": ["foo"]}}))
    with pytest.raises(ConfigError, match=r"tracking\.crop_size_um.*smaller than the .* field"):
        preflight(config_from_mapping({**out, "tracking": {"crop_size_um": 10.0}}))


def test_preflight_refuses_a_trigger_whose_driver_or_device_is_missing(tmp_path, monkeypatch):
    """NI-DAQmx not installed, or a DAQ device the driver does not know: `config --check` said
    "valid" and the run exited 2 at its start. Nothing is opened (the driver lists its devices)."""
    from app.session import preflight
    from mimlsort.errors import BackendUnavailable, DeviceError

    data = {"output": {"folder": str(tmp_path / "runs")}, "model": {"path": "none"},
            "trigger": {"backend": "nidaqmx", "nidaqmx": {"device": "Dev2"}}}
    try:
        import nidaqmx  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailable, match="the nidaqmx trigger needs NI-DAQmx"):
            preflight(config_from_mapping(data))
    from tests.test_triggers import _fake_nidaqmx

    _fake_nidaqmx(monkeypatch)  # NI's package and driver, with one device: Dev1
    with pytest.raises(DeviceError, match=r"^trigger\.nidaqmx\.device: 'Dev2' not found \(present: Dev1\)"):
        preflight(config_from_mapping(data))
    data["trigger"]["nidaqmx"]["device"] = "Dev1"
    assert any(c.startswith("trigger nidaqmx") for c in preflight(config_from_mapping(data)))
    _fake_nidaqmx(monkeypatch, driver=False)
    with pytest.raises(BackendUnavailable, match="NI-DAQmx driver not found"):
        preflight(config_from_mapping(data))


def test_preflight_refuses_a_visa_library_that_does_not_load(tmp_path):
    # only a missing pyvisa-sim file was refused: a VISA library that is not there (the default
    # one on a machine without NI-VISA) passed, and the run exited 2 at its start
    pytest.importorskip("pyvisa", reason="pyvisa not installed (mimlsort[visa])")
    from app.session import preflight
    from mimlsort.errors import BackendUnavailable

    visa = {"resource": "USB0::0x0957::0x2C07::MY00000000::INSTR", "library": str(tmp_path / "libvisa.so")}
    data = {"output": {"folder": str(tmp_path / "runs")}, "model": {"path": "none"},
            "trigger": {"backend": "visa", "visa": visa}}
    with pytest.raises(BackendUnavailable, match=r"^trigger\.visa\.library: no VISA implementation"):
        preflight(config_from_mapping(data))
    pytest.importorskip("pyvisa_sim", reason="pyvisa-sim not installed (mimlsort[visa])")
    visa["library"] = f"{Path(__file__).parent / 'sim' / 'function_generator.yaml'}@sim"
    assert any(c.startswith("trigger visa at USB0") for c in preflight(config_from_mapping(data)))


@pytest.mark.parametrize("backend, width", [("log", 0.5), ("serial", 0.5), ("camera-line", 50.0)])
def test_a_pulse_width_the_trigger_cannot_make_is_refused_at_load(backend, width):
    # it passed `config --check`, and the run refused every pulse ("refused: width 0.5 µs outside
    # [1, 1e+06]"): fired 0, exit 0
    data = {"trigger": {"backend": backend, "timing": {"pulse_width_us": width}}}
    with pytest.raises(ConfigError, match=r"^trigger\.timing\.pulse_width_us: the .* trigger makes pulses of"):
        config_from_mapping(data)
    data["trigger"]["timing"]["pulse_width_us"] = 200.0
    assert config_from_mapping(data).trigger.timing.pulse_width_us == 200.0


@pytest.mark.parametrize("key, value", [("handshake_timeout_s", float("inf")), ("write_timeout_s", float("inf")),
                                        ("write_timeout_s", 1e12)])
def test_serial_timeouts_must_end(key, value):
    # inf passed: the handshake with a board that never answers looped for ever, and a write to a
    # device that stopped reading raised OverflowError inside pyserial instead of timing out
    with pytest.raises(ConfigError, match=rf"^trigger\.serial\.{key}: must be in"):
        config_from_mapping({"trigger": {"backend": "serial", "serial": {key: value}}})


@pytest.mark.parametrize("backend", ["basler", "genicam", "ximea"])
@pytest.mark.parametrize("delay", [float("inf"), 1e12])
def test_a_camera_reconnect_delay_must_end(backend, delay):
    # inf passed: a lost camera's reconnect died in time.sleep (OverflowError); 1e12 slept for ever
    with pytest.raises(ConfigError, match=rf"^camera\.{backend}\.reconnect_delay_s: must be in"):
        config_from_mapping({"camera": {"backend": backend, backend: {"reconnect_delay_s": delay}}})


@pytest.mark.parametrize("key, value", [("frequency_hz", float("inf")), ("high_v", float("inf")),
                                        ("low_v", -float("inf")), ("poll_interval_s", float("inf"))])
def test_visa_levels_and_rates_must_be_finite(key, value):
    # inf passed: the burst's cycle count (width × inf) raised OverflowError when the instrument was
    # configured, and ":VOLT:HIGH inf" went to the instrument
    with pytest.raises(ConfigError, match=rf"^trigger\.visa\.{key}: must be finite"):
        config_from_mapping({"trigger": {"backend": "visa", "visa": {key: value}}})


@pytest.mark.parametrize("key, value", [("min_low_time_us", -1.0), ("min_low_time_us", float("inf")),
                                        ("arm_ahead_us", float("inf"))])
def test_nidaqmx_times_are_checked_at_load(key, value):
    # passed `config --check`: the low time went to NI-DAQmx only when the run opened the counter;
    # an infinite arm-ahead killed the scheduler thread as it started
    with pytest.raises(ConfigError, match=rf"^trigger\.nidaqmx\.{key}: must be"):
        config_from_mapping({"trigger": {"backend": "nidaqmx", "nidaqmx": {key: value}}})


@pytest.mark.parametrize("value", [-1.0, float("inf")])
def test_log_trigger_flush_interval_is_checked(value):
    # inf passed, and the pulse log was flushed only when the trigger closed
    with pytest.raises(ConfigError, match=r"^trigger\.log\.flush_s: must be finite and >= 0"):
        config_from_mapping({"trigger": {"backend": "log", "log": {"flush_s": value}}})


def test_daemon_status_interval_must_be_finite():
    # inf passed, and `mimlsort run` printed no periodic status line for the whole run
    with pytest.raises(ConfigError, match=r"^daemon\.status_interval_s: must be > 0 and finite"):
        config_from_mapping({"daemon": {"status_interval_s": float("inf")}})


@pytest.mark.parametrize("key", ["granules", "speed_factor", "fraction", "darkness", "relax_ms"])
def test_simulated_cell_class_values_must_be_finite(key):
    # inf passed, and the run died in the camera ("ValueError: lam value too large", "cannot convert
    # float NaN to integer") naming no key; fraction = inf ran with a silently wrong class mix
    classes = [{"name": "a", key: float("inf")}, {"name": "b"}]
    with pytest.raises(ConfigError, match=rf"^camera\.synthetic\.classes\[0\]\.{key}: must be finite"):
        config_from_mapping({"camera": {"synthetic": {"classes": classes}}})


def test_default_text_explains_the_simulated_cell_classes():
    # the [[camera.synthetic.classes]] keys were printed bare: "darkness = 28.0", units unsaid
    text = default_config_text()
    block = text[text.index("[[camera.synthetic.classes]]"):]
    assert "\ndarkness = 28.0  # grey levels the cell body is darker than the lumen\n" in block
    assert "\nname = \"hct116\"  # class name" in block


@pytest.mark.parametrize("section, key, top", [
    ("camera", "ring_capacity", 1 << 20),
    ("camera", "synthetic.max_lag_frames", 1 << 20),
    ("tracking", "max_blobs", 1024),
    ("tracking", "max_tracks", 1024),
    ("tracking", "max_history", 65536),
    ("tracking", "max_gap_frames", 1000),
    ("tracking", "batch_frames", 65536),
    ("tracking", "background_frames", 65536),
    ("autostop", "events", 10**12),
])
def test_integer_keys_have_an_upper_end_that_is_named(section, key, top):
    # 10**30 passed all of them, then failed mid-start ("Maximum allowed dimension exceeded", a numba
    # TypingError, an OverflowError) or in the event file's creation (autostop.events: a TypeError)
    from app.session import with_changes

    assert with_changes(RunConfig(), **{section: {key: top}}) is not None  # the end itself is allowed
    for big in (top + 1, 10**30):
        with pytest.raises(ConfigError, match=rf"^{section}\.{key}: must be in \[\d+, {top}\]"):
            with_changes(RunConfig(), **{section: {key: big}})
    # and `config --default` says it on the key's line
    name = key.split(".")[-1]
    line = next(t for t in default_config_text().splitlines() if t.startswith(f"{name} = "))
    assert (str(top) if top < 10**9 else f"10**{len(str(top)) - 1}") in line, line


@pytest.mark.parametrize("data, key", [
    ({"camera": {"synthetic": {"seed": 10**30}}}, "camera.synthetic.seed"),
    ({"camera": {"backend": "basler", "basler": {"width": 10**30}}}, "camera.basler.width"),
    ({"trigger": {"backend": "serial", "serial": {"port": "/dev/null", "baudrate": 2**63}}}, "trigger.serial.baudrate"),
])
def test_an_integer_no_64_bit_key_can_hold_is_refused_naming_the_key(data, key):
    # keys without a range of their own: the vendor SDK or numpy met a Python int beyond 64 bits
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must fit in 64 bits"):
        config_from_mapping(data)


def test_preflight_refuses_an_output_folder_that_takes_no_files_even_for_root(tmp_path):
    # access() grants root every folder, but sysfs takes no file from anyone: `config --check`
    # said "valid" and the run was refused at its start
    import tempfile

    from app.session import preflight

    folder = Path("/sys/kernel")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
        pytest.skip(f"{folder} takes files here")
    except OSError:
        pass
    with pytest.raises(ConfigError) as e:
        preflight(config_from_mapping({"output": {"folder": str(folder)}}))
    assert str(e.value).startswith("output.folder: /sys/kernel: cannot be made or written"), e.value


def test_preflight_checks_the_vendor_cameras_sdk_and_producer_without_opening_it(tmp_path, monkeypatch):
    # `config --check` said "valid" for a genicam .cti that did not exist and for a ximea camera on a
    # machine without xiAPI; the run then refused both at its start
    import importlib.util

    from app.session import preflight
    from mimlsort.errors import BackendUnavailable

    out = {"output": {"folder": str(tmp_path / "runs")}, "model": {"path": "none"}}
    if importlib.util.find_spec("harvesters") is not None:
        monkeypatch.delenv("GENICAM_GENTL64_PATH", raising=False)
        with pytest.raises(ConfigError, match=r"^camera\.genicam\.cti: no such GenTL producer file: .*nope\.cti"):
            preflight(config_from_mapping({**out, "camera": {"backend": "genicam",
                                                             "genicam": {"cti": str(tmp_path / "nope.cti")}}}))
        doc = tmp_path / "vendor.cti"
        doc.write_text("not a library\n")
        with pytest.raises(ConfigError, match=r"^camera\.genicam\.cti: .*vendor\.cti is not a GenTL producer"):
            preflight(config_from_mapping({**out, "camera": {"backend": "genicam", "genicam": {"cti": str(doc)}}}))
        checked = preflight(config_from_mapping({**out, "camera": {"backend": "genicam"}}))
        assert any("viky.cti (the genicam wheel's simulated test camera)" in c for c in checked), checked
    if importlib.util.find_spec("ximea") is None:
        with pytest.raises(BackendUnavailable, match="xiAPI"):
            preflight(config_from_mapping({**out, "camera": {"backend": "ximea"}}))
