"""The run configuration: one TOML file → frozen, validated dataclasses.

Each package owns the settings of its part (``SyntheticSettings``, ``TrackerSettings`` …); this
module only composes them. ``default_config_text()`` prints every key with its default and the
comment written beside the field in its settings class, so the commented default can never drift
from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from acquisition.replay import ReplaySettings
from acquisition.synthetic import SyntheticSettings
from mimlsort.errors import ConfigError
from mimlsort.settings import from_mapping, require, to_mapping
from tracking.tracker import TrackerSettings


@dataclass(frozen=True, slots=True)
class CameraConfig:
    backend: str = "synthetic"  # synthetic | replay | basler | genicam | ximea
    ring_capacity: int = 4096  # frames held in the ring (per reader headroom before frames are missed)
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)

    def __post_init__(self):
        from acquisition.camera import BACKENDS

        require(self.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        require(self.ring_capacity >= 64, "ring_capacity", f"must be >= 64, got {self.ring_capacity}")

    def backend_settings(self):
        return getattr(self, self.backend, None)


@dataclass(frozen=True, slots=True)
class RunConfig:
    camera: CameraConfig = field(default_factory=CameraConfig)
    tracking: TrackerSettings = field(default_factory=TrackerSettings)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run configuration; errors name the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("", f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path}: not valid TOML: {e}") from None
    try:
        return from_mapping(RunConfig, data)
    except ConfigError as e:
        raise ConfigError(e.key, f"{e.problem} (in {path})") from None


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(tomli_w.dumps(to_mapping(cfg)), encoding="utf-8")


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


def default_config_text() -> str:
    """The default configuration as commented TOML."""
    lines = ["# mimlsort run configuration (TOML). Every key is optional; shown are the defaults.",
             "# Lengths in µm, times in ms unless the key says otherwise.", ""]

    def emit(obj, table: str) -> None:
        comments = _field_comments(type(obj))
        hints = typing.get_type_hints(type(obj))
        subtables = []
        if table:
            lines.append(f"[{table}]")
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                subtables.append((v, f"{table}.{f.name}" if table else f.name))
                continue
            c = comments.get(f.name, "")
            if v is None:
                lines.append(f"# {f.name} = ...  # {c or 'unset'} ({hints[f.name]})".rstrip())
                continue
            val = tomli_w.dumps({"x": to_mapping(v)}).strip()[4:]
            lines.append(f"{f.name} = {val}" + (f"  # {c}" if c else ""))
        lines.append("")
        for v, t in subtables:
            emit(v, t)

    emit(RunConfig(), "")
    return "\n".join(lines)
