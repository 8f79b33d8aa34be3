"""The experiment's metadata (flow, medium, channel, temperature) reach every file a run writes,
so dclab's derived quantities (Young's modulus) use the experiment's values, and values nobody
gave are named as placeholders rather than passing for measured ones."""

from __future__ import annotations

import pytest

from app.config import SetupConfig, config_from_mapping
from app.session import setup_meta
from mimlsort.errors import ConfigError


def _run_files(tmp_path, setup: dict):
    from app.session import build_run

    cfg = config_from_mapping({
        "camera": {"backend": "synthetic", "synthetic": {"duration_s": 0.3, "realtime": False, "seed": 2}},
        "model": {"path": "none"},
        "output": {"folder": str(tmp_path), "record_raw": True, "report": False, "sample": "setup-test"},
        "setup": setup,
    })
    with build_run(cfg, lossless=True) as run:  # entering starts it
        assert run.wait(120)
    return sorted(tmp_path.glob("*_raw.rtdc"))[0], sorted(p for p in tmp_path.glob("*.rtdc") if "_raw" not in p.name)[0]


def test_configured_setup_reaches_the_event_file_and_the_raw_recording(tmp_path):
    import dclab
    from dclab.rtdc_dataset.check import check_dataset

    raw, events = _run_files(tmp_path, {"flow_rate_sample_ul_s": 0.01, "flow_rate_sheath_ul_s": 0.03,
                                        "medium": "CellCarrierB", "temperature_c": 23.5, "operator": "Ada"})
    for path in (raw, events):
        viol, _alerts, _info = check_dataset(path)
        assert viol == [], (path.name, viol)
        with dclab.new_dataset(path) as ds:
            s = ds.config["setup"]
            assert (s["flow rate"], s["flow rate sample"], s["flow rate sheath"]) == pytest.approx((0.04, 0.01, 0.03))
            assert s["medium"] == "CellCarrierB" and s["temperature"] == 23.5
            assert s["channel width"] == 32.0  # the synthetic camera's channel, not a placeholder
            assert ds.config["user"]["operator"] == "Ada"
            assert "setup placeholders" not in ds.config["user"]
    # the recorder child (the default) said False: it never saw the ring's flag
    with dclab.new_dataset(raw) as ds:
        assert bool(ds.config["user"]["camera clock"]) is True


def test_values_nobody_gave_are_named_as_placeholders():
    from acquisition.synthetic import SyntheticSettings

    live = setup_meta(SetupConfig())
    assert live["flow_rate_ul_s"] == 0.04 and live["medium"] == "other"
    assert live["placeholders"] == ("channel width", "flow rate", "medium", "flash duration")
    sim = setup_meta(SetupConfig(medium="PBS"), synthetic=SyntheticSettings())
    assert sim["placeholders"] == ("flow rate",)
    # a replayed recording's values hold unless the configuration gives others
    rec = {"flow_rate_ul_s": 0.16, "flow_rate_sample_ul_s": 0.04, "flow_rate_sheath_ul_s": 0.12, "medium": "other",
           "channel_width_um": 30.0, "flash_duration_us": 3.0}
    replayed = setup_meta(SetupConfig(flow_rate_ul_s=0.2), recorded=rec)
    assert replayed["flow_rate_ul_s"] == 0.2 and "flow_rate_sample_ul_s" not in replayed  # the parts no longer add up
    assert replayed["channel_width_um"] == 30.0 and replayed["placeholders"] == ()


def test_a_flow_whose_parts_do_not_add_up_is_refused():
    with pytest.raises(ConfigError, match="setup.flow_rate_ul_s"):
        config_from_mapping({"setup": {"flow_rate_ul_s": 0.1, "flow_rate_sample_ul_s": 0.01,
                                       "flow_rate_sheath_ul_s": 0.03}})


def test_a_replayed_rtdc_keeps_its_experiment(tmp_path):
    """Replaying a recording writes its setup (and its placeholders) into the event file."""
    import dclab

    from acquisition.synthetic import SyntheticSettings
    from app.simdata import record_simulation

    rec = tmp_path / "rec.rtdc"
    record_simulation(SyntheticSettings(duration_s=0.2, realtime=False, seed=4, fps=4000.0), rec, sample="sim")
    from app.session import build_run

    cfg = config_from_mapping({"camera": {"backend": "replay", "replay": {"path": str(rec)}},
                               "model": {"path": "none"}, "setup": {"medium": "PBS"},
                               "output": {"folder": str(tmp_path / "out"), "report": False}})
    with build_run(cfg, lossless=True) as run:  # entering starts it
        assert run.wait(120)
    ev = sorted((tmp_path / "out").glob("*.rtdc"))[0]
    with dclab.new_dataset(ev) as ds:
        assert ds.config["setup"]["channel width"] == SyntheticSettings().channel_width_um  # not 20
        assert ds.config["setup"]["medium"] == "PBS"
        assert ds.config["user"]["setup placeholders"] == "flow rate"
