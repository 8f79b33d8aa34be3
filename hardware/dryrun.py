"""Outputs for dry runs: ``null`` counts only, ``log`` writes every pulse with its times."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hardware.trigger import Trigger
from mimlsort.errors import DeviceError
from mimlsort.settings import require

log = logging.getLogger(__name__)
pulse_log = logging.getLogger("mimlsort.pulses")


@dataclass(frozen=True, slots=True)
class NullSettings:
    pass


class NullTrigger(Trigger):
    """Accepts every pulse and does nothing: the run decides and records as if it sorted."""

    backend = "null"
    has_device = False
    Settings = NullSettings

    def _do_open(self) -> str:
        return "null"

    def _do_fire(self, event_index: int, fire_at_ns: int, width_us: float) -> tuple[int, float]:
        now = time.monotonic_ns()
        return now, (fire_at_ns - now) / 1000.0


@dataclass(frozen=True, slots=True)
class LogSettings:
    path: str = ""  # tab-separated pulse log; "" logs to the "mimlsort.pulses" logger at INFO
    flush_s: float = 1.0  # the file is flushed at least this often while pulses come

    def __post_init__(self):
        # inf passed, and the file was flushed only when the trigger closed; -1 passed too
        require(0 <= self.flush_s < math.inf, "flush_s", f"must be finite and >= 0 (0: every pulse), got {self.flush_s}")


@dataclass(frozen=True, slots=True)
class RunLabel:
    """The run a pulse belongs to: its name (the event file's stem, ``<sample>_<time>``) and the
    event file's ``experiment:run identifier``. The log file is appended run after run."""

    name: str
    identifier: str


#: the columns before the run's were added; a file begun with them is not appended to
_HEADER_V1 = "event_index\tscheduled_ns\tsent_ns\tdelay_us\twidth_us\n"


class LogTrigger(Trigger):
    """Writes one line per pulse: event index, fire time, time sent, delay, width and the run (empty
    for a test pulse outside a run)."""

    backend = "log"
    has_device = False
    Settings = LogSettings
    # the run's columns come last: scripts that read the first five by position still do
    HEADER = _HEADER_V1.rstrip("\n") + "\trun\trun_identifier\n"

    def __init__(self, settings=None, timing=None, run: RunLabel | None = None):
        super().__init__(settings, timing)
        self._file: IO[str] | None = None
        self._path: Path | None = None
        self._last_flush = 0.0
        # the GUI's Test fire during a run writes from its own thread beside the sort thread: a
        # text file's buffer is not thread-safe (lines were lost and run into each other)
        self._write_lock = threading.Lock()
        # the log is appended run after run: without these, a run's pulses were told apart from
        # the next run's only by matching scheduled_ns against the event file's fire_scheduled_ns
        self._run_columns = f"\t{run.name}\t{run.identifier}" if run is not None else "\t\t"

    def _do_open(self) -> str:
        if not self.settings.path:
            return "log:mimlsort.pulses"
        path = Path(self.settings.path).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # beside a run's files, whose folder may not exist yet
            # appended: each run, and each test pulse between runs, opens it again (the host's
            # monotonic scheduled_ns keeps increasing across them); "w" kept only the last one's
            self._file = path.open("a+", encoding="utf-8")
            if self._file.tell() > 0:
                self._file.seek(0)
                header = self._file.readline()
                self._file.seek(0, 2)
        except (OSError, UnicodeDecodeError) as err:
            if self._file is not None:
                self._file.close()
                self._file = None
            if isinstance(err, UnicodeDecodeError):
                # an event file named by mistake (its HDF5 signature): the decode error went out as
                # a traceback, and the run's pulses would have gone into the end of that file
                raise DeviceError(f"trigger.log.path: {path} is not a pulse log (not UTF-8 text: byte "
                                  f"{err.start} of its first line); name a new file or a log mimlsort wrote") from err
            raise DeviceError(f"trigger.log.path: cannot write {path}: {err}") from err
        if self._file.tell() > 0 and header != self.HEADER:
            # rows with the run's columns under the old header are a table no reader parses; the
            # old pulses move aside, kept whole, and the run goes on (refusing stopped `make demo`
            # on any machine that had run it before)
            self._file.close()
            self._file = None
            aside = self._aside(path)
            try:
                path.rename(aside)
                self._file = path.open("a+", encoding="utf-8")
            except OSError as err:
                raise DeviceError(f"trigger.log.path: {path} holds pulses in another layout ({header.strip()!r}, "
                                  f"written by an older mimlsort) and cannot be moved aside: {err}") from err
            log.warning("trigger.log.path: %s held pulses in another layout (written by an older mimlsort): "
                        "moved to %s, and a new log begun", path, aside)
        if self._file.tell() == 0:
            self._file.write(self.HEADER)
        self._path = path
        return f"log:{path}"

    @staticmethod
    def _aside(path: Path) -> Path:
        """A name beside ``path`` for a log of an older layout, one no file has."""
        for i in range(1, 10_000):
            aside = path.with_name(f"{path.stem}.older-layout{'' if i == 1 else f'-{i}'}{path.suffix}")
            if not aside.exists():
                return aside
        raise DeviceError(f"trigger.log.path: {path} holds pulses in another layout, and no name beside it is free")

    def _do_fire(self, event_index: int, fire_at_ns: int, width_us: float) -> tuple[int, float]:
        now = time.monotonic_ns()
        delay_us = (fire_at_ns - now) / 1000.0
        line = f"{event_index}\t{fire_at_ns}\t{now}\t{delay_us:.1f}\t{width_us:g}{self._run_columns}"
        if self._file is None:
            pulse_log.info(line)
        else:
            try:
                with self._write_lock:
                    self._file.write(line + "\n")
                    t = time.monotonic()
                    if t - self._last_flush >= self.settings.flush_s:
                        self._file.flush()
                        self._last_flush = t
            except OSError as err:  # a full disk: said as "No space left on device", no file named
                raise self._unwritable(err) from err
        return now, delay_us

    def _unwritable(self, err: OSError) -> DeviceError:
        return DeviceError(f"trigger.log.path: cannot write {self._path}: {err.strerror or err}")

    def _do_close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()  # the descriptor is closed even when the last flush fails
        except OSError as err:  # the lines since the last flush are lost (after a failed write: Trigger.close)
            raise self._unwritable(err) from err
        finally:
            self._file = None
