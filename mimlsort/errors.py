"""One root exception and a short hierarchy shared by every package.

Messages name the file, key or frame the problem is in, so that an operator can act on them without
reading a traceback.
"""

from __future__ import annotations


class MimlsortError(Exception):
    """Root of every error mimlsort raises on purpose."""


class ConfigError(MimlsortError):
    """A configuration value is missing, of the wrong type or out of range.

    The message starts with the key path, e.g. ``sorting.threshold: must be in [0, 1], got 1.5``.
    """

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)

    def under(self, prefix: str) -> "ConfigError":
        """The same error with ``prefix.`` put in front of its key path."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        return type(self)(key, self.problem)


class DeviceError(MimlsortError):
    """A camera or trigger device failed, disappeared or refused a setting."""


class DeviceSettingError(DeviceError):
    """A device failure that one setting decided (a serial no attached camera has, a backend chosen
    where none of its cameras is attached): ``key`` names it, as a :class:`ConfigError`'s does, so
    the run can add where the key was set (``(in RUN.toml)``, or the option). Still a device
    error: the configuration may be right and the camera unplugged."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class BackendUnavailable(DeviceError):
    """The vendor SDK or driver a backend needs is not installed on this machine."""


class ModelError(MimlsortError):
    """A model file or its spec is invalid or does not match the data it is given."""


class DataFormatError(MimlsortError):
    """A recording or data file is corrupt, truncated or not in the expected layout."""


class StateError(MimlsortError):
    """An operation was called in a state that does not allow it (e.g. ``start`` before ``open``)."""
