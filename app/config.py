"""The run configuration: one TOML file → frozen, validated dataclasses.

Each package owns the settings of its part (``SyntheticSettings``, ``TrackerSettings``,
``SortSettings``, ``TimingSettings`` …); this module only composes them. Vendor backends (cameras,
trigger devices) keep their tables as plain data here and are validated against the backend's own
``Settings`` class when that backend is selected, so a missing vendor SDK never breaks loading a
configuration that does not use it. ``default_config_text()`` prints every key with its default and
the comment written beside the field in its settings class, so the commented default can never
drift from the code. The GUI saves the same file the daemon reads.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from acquisition.replay import ReplaySettings
from acquisition.synthetic import SyntheticSettings
from app.pipeline import AutoStop
from app.sorting import SortSettings
from hardware.timing import TimingSettings
from mimlsort.errors import ConfigError, DeviceSettingError, MimlsortError
from mimlsort.inputs import check_input
from mimlsort.settings import from_mapping, require, to_mapping
from tracking.tracker import TrackerSettings

#: vendor camera backends whose tables are validated only when selected
_VENDOR_CAMERAS = ("basler", "genicam", "ximea")
#: the smallest side of a vendor camera's ROI: the synthetic camera's smallest height, a few
#: cells' diameters at the usual 0.3-0.7 µm per pixel
_MIN_ROI_PX = 16
#: camera.ring_capacity's upper end (a 256x96 ROI: 24 GiB); the memory check at the start is the tighter one
MAX_RING_FRAMES = 1 << 20


def _backend_settings(kind: str, name: str, table: dict, key: str):
    """Validate ``table`` against backend ``name``'s own Settings class (imported on demand)."""
    if kind == "camera":
        from acquisition.camera import camera_class

        cls = camera_class(name)
    else:
        from hardware.trigger import trigger_class

        cls = trigger_class(name)
    try:
        return from_mapping(cls.Settings, table, key)
    except ConfigError:
        raise


@dataclass(frozen=True, slots=True)
class CameraConfig:
    backend: str = "synthetic"  # synthetic | replay | basler | genicam | ximea
    ring_capacity: int = 4096  # frames held in the ring (headroom before a slow reader misses frames); 64 to 1048576, and at most half the memory
    pixel_size_um: float = 0.0  # µm per pixel in the object plane; 0: what the camera/recording says
    # turned, never mirrored: a cell keeps its handedness, and the tracker, geometry, files and
    # preview all see the turned frames (RT-DC's convention), so nothing downstream knows of it
    flow_direction: str = "left-to-right"  # way cells move in the camera's image: left-to-right | right-to-left | top-to-bottom | bottom-to-top; frames are turned so that they move left to right
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    basler: dict = field(default_factory=dict)  # see `mimlsort config --default` with backend = "basler"
    genicam: dict = field(default_factory=dict)
    ximea: dict = field(default_factory=dict)

    def __post_init__(self):
        from acquisition.camera import BACKENDS

        require(self.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        require(64 <= self.ring_capacity <= MAX_RING_FRAMES, "ring_capacity",
                f"must be in [64, {MAX_RING_FRAMES}] frames, got {self.ring_capacity}")
        # finite: inf passed, and the run's decide worker stopped with "the crops' pixel size must be
        # known, got inf", naming no key
        require(0 <= self.pixel_size_um < math.inf, "pixel_size_um",
                f"must be finite and >= 0 (0: what the camera/recording says), got {self.pixel_size_um}")
        from acquisition.camera import FLOW_DIRECTIONS

        require(self.flow_direction in FLOW_DIRECTIONS, "flow_direction",
                f"must be one of {', '.join(FLOW_DIRECTIONS)}, got {self.flow_direction!r}")
        require(self.backend != "synthetic" or self.flow_direction == "left-to-right", "flow_direction",
                "the synthetic camera's cells flow left to right")
        if self.backend in _VENDOR_CAMERAS:
            try:
                _backend_settings("camera", self.backend, getattr(self, self.backend), self.backend)
            except ConfigError:
                raise
            except MimlsortError:  # SDK missing: validated when the camera is opened
                pass
            table = getattr(self, self.backend)
            for side in ("width", "height"):
                v = table.get(side, 0)
                # a ROI a few pixels across was valid, and the run failed with "detect_geometry:
                # background must be a 2-D image, got shape (1040, 1)", naming no key
                require(not isinstance(v, int) or v == 0 or v >= _MIN_ROI_PX, f"{self.backend}.{side}",
                        f"must be 0 (keep the camera's) or at least {_MIN_ROI_PX} px, got {v}: the tracker finds the "
                        f"channel's walls and constriction in the image and follows cells across it")

    def make_camera(self):
        """A closed camera of the selected backend, as configured."""
        from acquisition.camera import make_camera

        return make_camera(self.backend, self.backend_settings(), flow_direction=self.flow_direction)

    def backend_settings(self):
        """The selected backend's settings object (vendor tables validated now)."""
        v = getattr(self, self.backend)
        return _backend_settings("camera", self.backend, v, f"camera.{self.backend}") if isinstance(v, dict) else v


@dataclass(frozen=True, slots=True)
class ModelConfig:
    path: str = "demo"  # ONNX model file; "demo": the bundled demonstration model; "none": track only
    provider: str = "auto"  # auto (TensorRT > CUDA > CPU, whichever is installed) | cpu | cuda | tensorrt
    intra_op_threads: int = 1  # ONNX Runtime threads per inference (1 leaves the other core to tracking)

    def __post_init__(self):
        require(self.provider in ("auto", "cpu", "cuda", "tensorrt"), "provider",
                f"must be auto, cpu, cuda or tensorrt, got {self.provider!r}")
        # bounded: 100000 was valid, and ONNX Runtime started threads until the machine ran out of
        # memory (12,700 threads, 16 GB); more threads than cores only slow inference down
        require(1 <= self.intra_op_threads <= 256, "intra_op_threads",
                f"must be in [1, 256], got {self.intra_op_threads}")


@dataclass(frozen=True, slots=True)
class TriggerConfig:
    backend: str = "log"  # null | log | serial | visa | camera-line | nidaqmx
    timing: TimingSettings = field(default_factory=TimingSettings)
    null: dict = field(default_factory=dict)
    log: dict = field(default_factory=dict)
    serial: dict = field(default_factory=dict)
    visa: dict = field(default_factory=dict)
    camera_line: dict = field(default_factory=dict)
    nidaqmx: dict = field(default_factory=dict)

    def __post_init__(self):
        from hardware.trigger import TRIGGERS

        require(self.backend in TRIGGERS, "backend", f"must be one of {', '.join(TRIGGERS)}, got {self.backend!r}")
        try:
            self.backend_settings()
        except ConfigError as e:
            raise ConfigError(e.key.removeprefix("trigger."), e.problem) from None
        except MimlsortError:  # driver missing: reported when the trigger is opened
            pass
        # a width the backend cannot make passed `config --check`, and the run refused every
        # pulse ("refused: width 0.5 µs outside [1, 1e+06]": fired 0, exit 0)
        try:
            from hardware.trigger import trigger_class

            lo, hi = trigger_class(self.backend).width_range_us
        except MimlsortError:
            return
        w = self.timing.pulse_width_us
        require(lo <= w <= hi, "timing.pulse_width_us",
                f"the {self.backend} trigger makes pulses of {lo:g} to {hi:g} µs, got {w:g}")

    @property
    def table(self) -> dict:
        return getattr(self, self.backend.replace("-", "_"))

    def backend_settings(self):
        return _backend_settings("trigger", self.backend, self.table, f"trigger.{self.backend.replace('-', '_')}")


@dataclass(frozen=True, slots=True)
class OutputConfig:
    folder: str = "out/runs"  # where event files (.rtdc), raw recordings and reports go
    sample: str = "sample"  # sample name, stored in the file and used in file names
    record_raw: bool = False  # also record every raw frame (.rtdc); may lag, drops are counted
    # NOTES offered Zstd for archives, and nothing but the recording bench could select it
    raw_compression: str = "none"  # raw frames: "none" (fastest; camera noise leaves Zstd ~1.4x smaller) or "zstd" (level 1, ~2x the recorder's CPU; archives)
    write_events: bool = True  # write the event file (.rtdc)
    report: bool = True  # `mimlsort run`, `replay` and the GUI: write the sample report beside the event file when a run with cells ends (<events>_report/)
    recorder: str = "process"  # raw frames: "process" (a child process reads the ring through shared memory, off the GIL) or "thread"
    writer: str = "process"  # "process": a child process writes the event file, so HDF5 (it holds the GIL) never stalls sorting; "thread": in-process
    max_backlog_mb: float = 1024.0  # memory (MiB) records waiting for the event file may hold: past half, cells are recorded without their ROI image (counted, logged in the file); at the limit the run stops with an error instead of growing; 0 = unbounded
    stop_timeout_s: float = 60.0  # after a stop, how long a writer child may make no progress before it is abandoned (its file keeps what it flushed; the daemon exits 1, the GUI says so) so the run can end; 0 = wait for ever
    compression: str = "all"  # event file images: "all" zstd-compressed (smallest file); "masks": only masks and backgrounds (half the writer's CPU at high cell rates; camera noise leaves frames ~1.4x smaller at best); "none"

    def __post_init__(self):
        require(bool(self.folder), "folder", "must not be empty")
        require(self.recorder in ("process", "thread"), "recorder",
                f"must be 'process' or 'thread', got {self.recorder!r}")
        # finite: inf was valid, and the run ended in an OverflowError traceback (0 is unbounded)
        require(0 <= self.max_backlog_mb < math.inf, "max_backlog_mb",
                f"must be finite and >= 0 (0: unbounded), got {self.max_backlog_mb}")
        require(self.stop_timeout_s >= 0, "stop_timeout_s", f"must be >= 0 (0: wait for ever), got {self.stop_timeout_s}")
        require(self.writer in ("process", "thread"), "writer", f"must be 'process' or 'thread', got {self.writer!r}")
        require(self.raw_compression in ("none", "zstd"), "raw_compression",
                f"must be 'none' or 'zstd', got {self.raw_compression!r}")
        require(self.compression in ("all", "masks", "none"), "compression",
                f"must be 'all', 'masks' or 'none', got {self.compression!r}")
        require(bool(self.sample) and "/" not in self.sample, "sample", f"must be a plain name, got {self.sample!r}")
        # it begins the run's file names: ".." made a hidden ".._<time>.rtdc"
        require(not self.sample.startswith("."), "sample", f"must not begin with '.' (the run's files would be "
                                                           f"hidden), got {self.sample!r}")
        # file names hold it with a time stamp and a suffix, within the 255 bytes file systems allow
        require(len(self.sample.encode()) <= 200, "sample", f"must be at most 200 bytes long, got {len(self.sample.encode())}")


@dataclass(frozen=True, slots=True)
class SetupConfig:
    """The experiment as the files' dclab metadata describe it (``setup:…``, ``imaging:flash …``).

    dclab requires the channel width, the flow rate and the medium, and its Young's modulus depends
    on them and the temperature. A value not given here comes from a replayed recording or the
    synthetic camera; failing those, mimlsort's placeholder is written and named in the file
    (``user:setup placeholders``)."""

    channel_width_um: float = 0.0  # channel the cells flow in, µm; 0: the synthetic camera's or a replayed recording's, else 20 (placeholder)
    flow_rate_sample_ul_s: float = 0.0  # sample flow, µL/s; 0: not given
    flow_rate_sheath_ul_s: float = 0.0  # sheath flow, µL/s; 0: not given
    flow_rate_ul_s: float = 0.0  # total flow, µL/s; 0: sample + sheath (either may be 0), else a replayed recording's, else 0.04 (placeholder)
    medium: str = ""  # e.g. "CellCarrierB", "PBS"; "": a replayed recording's, else "other" (placeholder)
    temperature_c: float = 0.0  # temperature of the chip, °C; 0: not recorded
    chip_identifier: str = ""  # the chip's label, if it has one
    flash_device: str = ""  # illumination, e.g. "LED (460 nm)"; "": a replayed recording's ("simulated" for the synthetic camera), else "LED"
    flash_duration_us: float = 0.0  # exposure time, µs; 0: the synthetic camera's, a replayed recording's or, while flash_device is "" (a continuously lit sample), a vendor camera's exposure; else 2 (placeholder)
    operator: str = ""  # who ran the experiment

    def __post_init__(self):
        for name in ("channel_width_um", "flow_rate_sample_ul_s", "flow_rate_sheath_ul_s", "flow_rate_ul_s",
                     "flash_duration_us"):
            v = getattr(self, name)
            require(0 <= v < 1e6, name, f"must be >= 0 (0: not given), got {v}")
        require(-50 < self.temperature_c < 150, "temperature_c", f"must be a temperature in °C, got {self.temperature_c}")
        total, parts = self.flow_rate_ul_s, (self.flow_rate_sample_ul_s, self.flow_rate_sheath_ul_s)
        if total and all(parts):
            require(abs(sum(parts) - total) <= 1e-6 * total, "flow_rate_ul_s",
                    f"must be flow_rate_sample_ul_s + flow_rate_sheath_ul_s = {sum(parts):g}, got {total:g}")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    status_interval_s: float = 1.0  # one status line per interval
    http_port: int = 0  # > 0: serve status JSON at http://127.0.0.1:PORT/status (loopback only)
    log_file: str = "mimlsort.log"  # the run's log: a relative path is taken from the output folder (--out-dir where given), not the current folder; an absolute path (or ~/...) as it is, e.g. /var/log/mimlsort/run.log; "" for none

    def __post_init__(self):
        # finite: inf passed, and the daemon printed no periodic status line for the whole run
        require(0 < self.status_interval_s < math.inf, "status_interval_s",
                f"must be > 0 and finite, got {self.status_interval_s}")
        require(0 <= self.http_port <= 65535, "http_port", f"must be in [0, 65535], got {self.http_port}")

    def log_path(self, folder: str | Path) -> Path | None:
        """The run's log file in a run whose output folder is ``folder``; None for none. "~/run.log"
        was a folder named "~" in the output folder."""
        return Path(folder) / Path(self.log_file).expanduser() if self.log_file else None


@dataclass(frozen=True, slots=True)
class RunConfig:
    camera: CameraConfig = field(default_factory=CameraConfig)
    tracking: TrackerSettings = field(default_factory=TrackerSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    sorting: SortSettings = field(default_factory=SortSettings)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    setup: SetupConfig = field(default_factory=SetupConfig)
    autostop: AutoStop = field(default_factory=AutoStop)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)


#: the configuration's tables: a key in one of them can be named with the file it was read from
_TABLES = frozenset(f.name for f in dataclasses.fields(RunConfig))


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run configuration; errors name the file and the key."""
    path = check_input(path, what="a configuration file")  # a named pipe blocked the read for ever
    try:
        # utf-8-sig: Windows Notepad begins a UTF-8 file with a byte order mark, which TOML does
        # not allow ("not valid TOML: Invalid statement (at line 1, column 1)")
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError("", f"{path}: no such configuration file") from None
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise ConfigError("", f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at line {line}): save it "
                              f"as UTF-8, as TOML requires") from None
    except OSError as e:
        raise ConfigError("", f"{path}: cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path}: not valid TOML: {e}") from None
    return config_from_mapping(data, source=str(path))


def config_from_mapping(data: dict, source: str = "") -> RunConfig:
    try:
        return from_mapping(RunConfig, data)
    except ConfigError as e:
        raise ConfigError(e.key, f"{e.problem} (in {source})" if source else e.problem) from None


def located(err: ConfigError | DeviceSettingError, source: str | Path | None,
            options: Mapping[str, str | None] | None = None) -> ConfigError | DeviceSettingError:
    """``err``, found once the configuration was loaded (a run's start, ``config --check``), naming
    where its key was set as validation names it: the command-line option that set the key in its
    place (``--http-port: …``), else the configuration file ``source`` after the problem
    (``daemon.http_port: … (in RUN.toml)``). ``options`` maps a key, or a table of keys, to the
    option that set it; None: set on the command line by no single option, left as it is. An
    error of no configuration key, or one that names the file already, is returned unchanged."""
    for key, option in (options or {}).items():
        if err.key == key or err.key.startswith(key + "."):
            return err if option is None else type(err)(option, err.problem)
    if not source or err.key.split(".", 1)[0] not in _TABLES or err.problem.endswith(f"(in {source})"):
        return err
    return type(err)(err.key, f"{err.problem} (in {source})")


def config_to_toml(cfg: RunConfig) -> str:
    return tomli_w.dumps(to_mapping(cfg))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(config_to_toml(cfg), encoding="utf-8")


_COMMENT = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=[^#]*)?#\s*(.+)$")


def _field_comments(cls: type) -> dict[str, str]:
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = _COMMENT.match(line)
        if m:
            out.setdefault(m.group(1), m.group(2).strip())
    return out


def _vendor_defaults(table: str, name: str) -> Any:
    """Default settings object of a vendor backend for the commented default (None if unavailable)."""
    try:
        if table == "camera":
            from acquisition.camera import camera_class

            return camera_class(name).Settings()
        from hardware.trigger import trigger_class

        return trigger_class(name.replace("_", "-")).Settings()
    except (MimlsortError, ImportError, AttributeError, TypeError):
        return None


def _toml_value(v: Any) -> str:
    """One TOML value (tables inline, so they stay on the key's line)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return tomli_w.dumps({"x": v}).strip()[4:]


def default_config_text() -> str:
    """The default configuration as commented TOML."""
    lines = ["# mimlsort run configuration (TOML). Every key is optional; shown are the defaults.",
             "# Lengths in µm, times in ms unless the key says otherwise.",
             "# Vendor tables ([camera.basler], [trigger.serial] …) are checked when that backend is selected.", ""]

    def emit(obj, table: str) -> None:
        comments = _field_comments(type(obj))
        hints = typing.get_type_hints(type(obj))
        subtables = []
        arrays = []  # arrays of tables go after the table's own keys (TOML scoping)
        if table:
            lines.append(f"[{table}]")
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            sub = f"{table}.{f.name}" if table else f.name
            if dataclasses.is_dataclass(v):
                subtables.append((v, sub))
                continue
            if isinstance(v, dict) and table in ("camera", "trigger") and not v:
                d = _vendor_defaults(table, f.name)
                if d is not None:
                    subtables.append((d, sub))
                continue
            c = comments.get(f.name, "")
            if v is None:
                lines.append(f"# {f.name} = ...  # {c or 'unset'} ({hints[f.name]})".rstrip())
                continue
            if isinstance(v, tuple) and v and dataclasses.is_dataclass(v[0]):
                arrays.append((sub, v, comments.get(f.name, "")))
                continue
            if isinstance(v, tuple) and not v and "gates" in f.name:
                lines.append(f"# [[{sub}]] ...  # {c}".rstrip())
                continue
            val = _toml_value(to_mapping(v))
            lines.append(f"{f.name} = {val}" + (f"  # {c}" if c else ""))
        for sub, items, c in arrays:
            if c:
                lines.append(f"# {sub}: {c}")
            for item in items:
                # with each key's comment: the classes' keys (darkness, relax_ms …) were printed bare
                lines.append(f"[[{sub}]]")
                item_comments = _field_comments(type(item))
                for k, x in to_mapping(item).items():
                    c = item_comments.get(k, "")
                    lines.append(f"{k} = {_toml_value(x)}" + (f"  # {c}" if c else ""))
        lines.append("")
        for v, t in subtables:
            emit(v, t)

    emit(RunConfig(), "")
    return "\n".join(lines)


def bundled_model_path() -> Path:
    """The demonstration model shipped in the package (simulated cells only)."""
    return Path(importlib.import_module("inference").__file__).parent / "models" / "miml-mini-demo.onnx"
