"""``visa``: a function generator over SCPI (pyvisa) fires a pulse or sine burst per cell.

The burst is configured once at open (bus trigger, one burst per trigger) and checked through
the instrument's error queue. Per cell the host writes ``:TRIG1:DEL <s>;*TRG``: the instrument's
trigger delay times the pulse (``timed_by = "device"``), so only the transport's jitter reaches
it. ``timed_by = "host"`` sends a bare ``*TRG`` at the fire time from a scheduler thread, for
instruments without a trigger delay. The SCPI follows the Keysight 33500 series; most current
generators (Rigol DG, Siglent SDG in SCPI mode, Tektronix AFG31000) accept the same tree or need
only the command strings below changed.

The error queue is read after configuring, on ``test_fire``, from ``status()`` (at most once
per ``poll_interval_s``) and when a run settles after its last pulse; while a run sorts only
with ``check_errors_during_run`` (a query holds the bus a pulse needs).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hardware.scheduler import PulseScheduler
from hardware.trigger import FireRecord, Trigger
from mimlsort.errors import BackendUnavailable, ConfigError, DeviceError
from mimlsort.settings import require

log = logging.getLogger(__name__)


def _pyvisa():
    try:
        import pyvisa
    except ImportError as err:
        raise BackendUnavailable("the visa trigger needs pyvisa: install mimlsort[visa]") from err
    return pyvisa


def check_library(library: str) -> None:
    """A pyvisa-sim library (``FILE.yaml@sim``) whose file is missing is a ConfigError naming the
    key (pyvisa's error was a whole escaped traceback, followed by advice to install NI-VISA)."""
    if library.endswith("@sim") and library != "@sim":
        path = Path(library[: -len("@sim")])  # as pyvisa-sim opens it: no ~ expansion
        if not path.is_file():
            raise ConfigError("trigger.visa.library", f"{path}: no such instrument definition (pyvisa-sim YAML)")


def list_resources(library: str = "") -> tuple[str, ...]:
    """The VISA resources the library finds; BackendUnavailable without pyvisa or a VISA library."""
    pyvisa = _pyvisa()
    errors = (OSError, ValueError, pyvisa.errors.Error)
    try:
        rm = pyvisa.ResourceManager(library) if library else pyvisa.ResourceManager()
    except errors as err:
        raise BackendUnavailable(f"no VISA library ({err.__class__.__name__}: {err})") from err
    try:
        return tuple(rm.list_resources())
    except errors as err:
        raise BackendUnavailable(f"listing VISA resources failed ({err.__class__.__name__}: {err})") from err
    finally:
        rm.close()


def _resource_manager(pyvisa, library: str):
    """pyvisa's resource manager of ``library`` ("": its default); BackendUnavailable naming the key
    where there is no such VISA implementation."""
    check_library(library)
    try:
        return pyvisa.ResourceManager(library) if library else pyvisa.ResourceManager()
    except (ValueError, OSError) as err:
        raise BackendUnavailable(f"trigger.visa.library: no VISA implementation ({err}); install NI-VISA, "
                                 "or pyvisa-py and set library = \"@py\"") from err


@dataclass(frozen=True, slots=True)
class VisaSettings:
    resource: str = ""  # e.g. USB0::0x0957::0x2C07::MY12345678::INSTR or TCPIP0::10.0.0.5::inst0::INSTR
    library: str = ""  # VISA library: "" = pyvisa's default, "@py" = pyvisa-py, "x.yaml@sim" = pyvisa-sim
    channel: int = 1
    waveform: str = "pulse"  # pulse: one rectangular pulse; sine: a burst of sine cycles (SAW actuators)
    frequency_hz: float = 1_000_000.0  # sine carrier; the cycle count is width × frequency
    high_v: float = 5.0  # pulse high level, V
    low_v: float = 0.0  # pulse low level, V
    timed_by: str = "device"  # device: trigger delay on the instrument; host: *TRG at the fire time
    reset: bool = True  # *RST;*CLS before configuring
    timeout_ms: int = 500  # VISA I/O timeout of each SCPI exchange
    poll_interval_s: float = 1.0  # read the instrument's error queue at most this often (idle, status)
    # an instrument that ignores its triggers is then found within a second, not when the run
    # ends; a cell decided during the check waits for it: one SCPI round trip per queued error,
    # plus one (late if its fire time passes meanwhile)
    check_errors_during_run: bool = False  # read the error queue every poll_interval_s while sorting too

    def __post_init__(self):
        # inf passed every check below: a sine burst's cycle count (width × inf) raised OverflowError
        # when the instrument was configured, and ":VOLT:HIGH inf" went to the instrument
        for name in ("frequency_hz", "high_v", "low_v", "poll_interval_s"):
            require(math.isfinite(getattr(self, name)), name, f"must be finite, got {getattr(self, name)}")
        require(self.channel in (1, 2, 3, 4), "channel", f"must be 1..4, got {self.channel}")
        require(self.waveform in ("pulse", "sine"), "waveform", f"must be pulse or sine, got {self.waveform!r}")
        require(self.frequency_hz > 0, "frequency_hz", f"must be > 0, got {self.frequency_hz}")
        require(self.high_v > self.low_v, "high_v", f"must be > low_v ({self.low_v}), got {self.high_v}")
        require(self.timed_by in ("device", "host"), "timed_by", f"must be device or host, got {self.timed_by!r}")
        require(self.timeout_ms > 0, "timeout_ms", f"must be > 0, got {self.timeout_ms}")
        require(self.poll_interval_s >= 0, "poll_interval_s", f"must be >= 0, got {self.poll_interval_s}")


class VisaTrigger(Trigger):
    backend = "visa"
    Settings = VisaSettings
    width_range_us = (0.02, 1_000_000.0)
    # SYST:ERR? holds the instrument lock for a round trip: a cell decided meanwhile would wait for
    # it and fire late. The error queue is read at open, on test fire and from status() instead.
    poll_during_run = False

    def __init__(self, settings=None, timing=None):
        super().__init__(settings, timing)
        self._rm = None
        self._inst = None
        self._lock = threading.Lock()  # one SCPI conversation at a time (sort, status, scheduler threads)
        self._width_us = math.nan  # width the instrument is configured for
        self._last_poll = 0.0
        self._scheduler: PulseScheduler | None = None
        self.acks = self.settings.timed_by == "host"
        self.delay_from_arrival = self.settings.timed_by == "device"  # the instrument's trigger delay
        self.poll_during_run = self.settings.check_errors_during_run
        self.idn = ""

    @classmethod
    def check_installed(cls, settings: VisaSettings) -> None:
        # the VISA library loads without opening an instrument: none installed (the default
        # library on a machine without NI-VISA) passed the check, and the run exited 2 at its start
        _resource_manager(_pyvisa(), settings.library).close()

    # -- lifecycle -------------------------------------------------------------------------------
    def _do_open(self) -> str:
        s = self.settings
        pyvisa = _pyvisa()
        if not s.resource:
            raise DeviceError("trigger.visa.resource: no resource given (e.g. USB0::...::INSTR)")
        self._rm = _resource_manager(pyvisa, s.library)
        try:
            self._inst = self._rm.open_resource(s.resource, timeout=s.timeout_ms, write_termination="\n",
                                                read_termination="\n")
            self.idn = self._inst.query("*IDN?").strip()
            if not self.idn:  # nothing there answered (an unknown resource of pyvisa-sim): said so, not "; ; ;"
                raise DeviceError(f"trigger.visa.resource: {s.resource}: no instrument answered *IDN?")
            self._configure(self.timing.pulse_width_us)
        except DeviceError:
            self._close_session()
            raise
        except Exception as err:  # pyvisa.errors.VisaIOError and friends
            self._close_session()
            try:  # a misspelt name read "'write_termination' is not a valid attribute for type Resource"
                pyvisa.rname.parse_resource_name(s.resource)
            except pyvisa.rname.InvalidResourceName as bad:
                # not refused before opening: a VISA library may know it as an alias (NI MAX)
                raise DeviceError(f"trigger.visa.resource: {s.resource!r} is neither a VISA resource name nor an "
                                  f"alias the VISA library knows ({str(bad).rstrip('.')}; e.g. USB0::0x0957::0x2C07::MY12345678::INSTR, "
                                  "TCPIP0::10.0.0.5::inst0::INSTR; `mimlsort trigger list` shows them)") from err
            raise DeviceError(f"trigger.visa.resource: {s.resource}: {err}") from err
        if s.timed_by == "host":
            self._scheduler = PulseScheduler(self._trg, self._on_edge, self._on_error, name="trigger-visa")
            self._scheduler.start()
        return f"visa:{s.resource} ({self.idn})"

    def _width_commands(self, width_us: float) -> list[str]:
        s, ch, w = self.settings, self.settings.channel, width_us * 1e-6
        if s.waveform == "pulse":
            per = f":SOUR{ch}:FUNC:PULS:PER {max(4 * w, 1e-6):.9f}"
            wid = f":SOUR{ch}:FUNC:PULS:WIDT {w:.9f}"
            # width < period must hold after each command: the period moves first when it grows
            return [per, wid] if not (width_us < self._width_us) else [wid, per]
        return [f":SOUR{ch}:BURS:NCYC {max(1, round(w * s.frequency_hz))}"]

    def _configure(self, width_us: float) -> None:
        s, ch = self.settings, self.settings.channel
        width_key = "trigger.timing.pulse_width_us"
        # (command, the setting it carries): what the instrument rejects is told by its setting
        cmds = [("*RST", ""), ("*CLS", "")] if s.reset else [("*CLS", "")]
        cmds += [(f":OUTP{ch} 0", "trigger.visa.channel")]
        if s.waveform == "pulse":
            cmds += [(f":SOUR{ch}:FUNC PULS", "trigger.visa.waveform"),
                     *((c, width_key) for c in self._width_commands(width_us)), (f":SOUR{ch}:BURS:NCYC 1", "")]
        else:
            cmds += [(f":SOUR{ch}:FUNC SIN", "trigger.visa.waveform"),
                     (f":SOUR{ch}:FREQ {s.frequency_hz:.3f}", "trigger.visa.frequency_hz"),
                     *((c, f"{width_key} × trigger.visa.frequency_hz") for c in self._width_commands(width_us))]
        cmds += [(f":SOUR{ch}:VOLT:HIGH {s.high_v:.4f}", "trigger.visa.high_v"),
                 (f":SOUR{ch}:VOLT:LOW {s.low_v:.4f}", "trigger.visa.low_v"),
                 (f":SOUR{ch}:BURS:MODE TRIG", ""), (f":SOUR{ch}:BURS:STAT 1", ""), (f":TRIG{ch}:SOUR BUS", ""),
                 (f":TRIG{ch}:DEL {0.0:.9f}", "")]
        for c, _ in cmds:
            self._inst.write(c)
        errors = self._read_errors()
        if errors:
            # the error queue does not say which command it was: each is sent again on its own (not
            # *RST, whose settling a query could time out on), so the message names the value and
            # its setting ("-100 Command error" alone left a wrong high_v or width to be guessed)
            rejected = []
            for c, key in cmds:
                if c.startswith("*"):
                    continue
                self._inst.write(c)
                rejected += [f"{c!r}{f' ({key})' if key else ''}: {e}" for e in self._read_errors()]
            raise DeviceError(f"{s.resource} rejected the burst configuration: {'; '.join(rejected or errors)}")
        self._inst.write(f":OUTP{ch} 1")
        self._width_us = width_us

    def _close_session(self) -> None:
        for obj in (self._inst, self._rm):
            if obj is not None:
                try:
                    obj.close()
                except Exception as err:  # closing a broken session is best effort
                    log.debug("visa trigger: close failed: %s", err)
        self._inst = self._rm = None

    def _do_close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self._inst is not None:
            try:
                with self._lock:
                    self._inst.write(f":OUTP{self.settings.channel} 0")  # leave the actuator off
            except Exception as err:
                log.debug("visa trigger: output off on close failed: %s", err)
        self._close_session()

    # -- errors ----------------------------------------------------------------------------------
    def _read_errors(self, limit: int = 1000) -> list[str]:
        # to the end of the queue (the instrument's own holds 20–30 entries and then says -350
        # "queue overflow"; a limit of 20 left a full queue's last entries for the next read)
        out = []
        for _ in range(limit):
            reply = self._inst.query("SYST:ERR?").strip()
            code = reply.split(",", 1)[0].strip()
            if not code.lstrip("+-").isdigit():  # no SCPI error queue answers so: nothing more to read
                if reply:
                    out.append(reply)
                break
            if int(code) == 0:
                break
            out.append(reply)
        return out

    def check_errors(self) -> list[str]:
        """Empty the instrument's error queue; every entry is also counted and logged."""
        with self._lock:
            errors = self._read_errors()
            if errors:  # a width it rejected is not the width it has: the next pulse sends it again
                self._width_us = math.nan
        for e in errors:
            self._device_error(f"instrument error {e}")
        return errors

    def _do_poll(self) -> None:
        now = time.monotonic()
        if now - self._last_poll >= self.settings.poll_interval_s:
            self._last_poll = now
            self.check_errors()

    def settle(self, timeout_s: float = 5.0):
        """After the last pulses, the error queue a run does not poll (a query holds the bus a
        pulse needs) is read: what the instrument objected to during the run is counted and logged."""
        acks = super().settle(timeout_s)
        if self.is_open and self.available:
            try:
                self.check_errors()
            except Exception as err:
                self._set_unavailable(f"{type(err).__name__}: {err}")
        return acks

    def test_fire(self, width_us: float | None = None, delay_us: float | None = None) -> FireRecord:
        rec = super().test_fire(width_us, delay_us)
        if rec.ok:
            try:
                self.check_errors()
            except Exception as err:
                # an instrument that took the trigger and then did not answer SYST:ERR? (gone, hung):
                # the VisaIOError ended `trigger test` with a traceback, and a Test fire during a
                # run left the run's trigger "available"
                self._set_unavailable(f"{type(err).__name__}: reading the error queue after the test pulse: {err}")
        return rec

    # -- the sort path ---------------------------------------------------------------------------
    def _do_fire(self, event_index: int, fire_at_ns: int, width_us: float) -> tuple[int, float]:
        ch = self.settings.channel
        prefix = ""
        if width_us != self._width_us:
            prefix = ";".join(self._width_commands(width_us)) + ";"
        if self._scheduler is not None:
            with self._lock:
                if prefix:
                    self._inst.write(prefix[:-1])
                    self._width_us = width_us
            self._scheduler.schedule(event_index, fire_at_ns, width_us)
            now = time.monotonic_ns()
            return now, (fire_at_ns - now) / 1000.0
        with self._lock:
            delay_s = max(0.0, (fire_at_ns - time.monotonic_ns()) * 1e-9)
            self._inst.write(f"{prefix}:TRIG{ch}:DEL {delay_s:.9f};*TRG")
            sent = time.monotonic_ns()
            self._width_us = width_us
        return sent, round(delay_s * 1e6, 3)

    def _trg(self, level: bool) -> None:
        if level:  # the instrument makes the pulse itself; the scheduler's falling edge has nothing to do
            with self._lock:
                self._inst.write("*TRG")

    def _on_edge(self, event_index: int, host_ns: int) -> None:
        self._ack(event_index, host_ns // 1000, host_ns, pulse_host_ns=host_ns, pulse_host_err_ns=0)  # *TRG written then

    def _on_error(self, err: Exception) -> None:
        self._set_unavailable(f"{type(err).__name__}: {err}")
