"""``serial``: a microcontroller that times each pulse itself (hardware/firmware/PROTOCOL.md).

The host writes ``FIRE <id> <delay_us> <width_us>`` and returns at once; the device counts the
delay on its own clock from the moment the line arrived, so the host's scheduling jitter after
the write does not reach the pulse. A reader thread collects ``ACK``/``ERR`` lines. The delay
sent is the time left to the fire time minus the line's transmission time at the configured baud
rate and the configured link latency.

``mode = "clock"`` sends ``FIREAT <id> <device_us> <width_us>`` instead: the fire time on the
device's own clock, which the host relates to its clock through ``TIME`` round trips
(:class:`hardware.timing.DeviceClock`). Then neither a host stall between deciding and writing
nor the transport's jitter (a full-speed USB serial bridge delivers in 1 ms frames) moves the
pulse, as long as the command arrives before its time; the price is the clock map's error (half
the shortest round trip, plus drift between syncs).
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import queue
import select
import threading
import time
from dataclasses import dataclass

from hardware.timing import DeviceClock
from hardware.trigger import LATE_ACK_MEMORY, Trigger
from mimlsort.errors import BackendUnavailable, ConfigError, DeviceError
from mimlsort.settings import require

log = logging.getLogger(__name__)

PROTOCOL = 1
U32 = 1 << 32
MAX_DELAY_US = 10_000_000


def _serial():
    try:
        import serial
    except ImportError as err:
        raise BackendUnavailable("the serial trigger needs pyserial: install mimlsort[serial]") from err
    return serial


def write_all(port, data: bytes, timeout_s: float, fd: int | None = None) -> None:
    """Write every byte of ``data`` to ``port``; time out only while the device takes none.

    pyserial's ``write`` raises "Write timeout" once its timeout has passed, even after a write
    that took every byte: a thread kept from running for the default 50 ms on a loaded host turned
    a delivered ID, TIME or FIRE into a failed handshake or a trigger gone unavailable mid-run."""
    if fd is None:
        fd = port.fd if isinstance(getattr(port, "fd", None), int) else None
    if fd is None:  # not POSIX: pyserial's own write
        port.write(data)
        return
    try:
        n = os.write(fd, data)  # the sort path's case: the device keeps up, one syscall
    except BlockingIOError:
        n = 0
    if n == len(data):
        return
    deadline = time.monotonic() + timeout_s
    view = memoryview(data)[n:]
    while view:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [fd], [], left)[1]:
            raise _serial().SerialTimeoutException(f"Write timeout: the device took {len(data) - len(view)} of "
                                                   f"{len(data)} bytes in {timeout_s:g} s")
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            pass


def list_ports() -> list[tuple[str, str]]:
    """(device, description) of the serial ports the system knows (pyserial's view)."""
    _serial()
    from serial.tools import list_ports as lp

    return [(p.device, p.description) for p in lp.comports()]


_MAX_REPLIES = 64  # replies to queries held (a device that sends them unasked does not fill memory)
_READY = "READY mimlsort-trigger"  # what the sketch says once up after a reset
_TYPICAL_FIRE_BYTES = 22  # "FIRE 123456 20000 100\n": what the link check assumes before formatting
_RECENT_ACKS = 16  # acked ids kept for their late report: as many ACKs as the device holds for the link


@dataclass(frozen=True, slots=True)
class SerialSettings:
    port: str = ""  # e.g. /dev/ttyACM0, COM3
    baudrate: int = 115200
    handshake_timeout_s: float = 3.0  # boards reset when the port opens; the bootloader takes ~2 s
    write_timeout_s: float = 0.05  # a device that stops reading makes fire() fail, not hang
    link_latency_us: float = 0.0  # constant transport latency subtracted from every delay (USB frame)
    compensate_transmission: bool = True  # subtract bytes × 10 / baud from the delay (real UARTs)
    mode: str = "delay"  # delay: FIRE <delay>; clock: FIREAT <device time>, clocks related through TIME
    # clock mode schedules pulses on the device's clock with the TIME round trips; in both modes
    # they map the acks' device times to when each pulse went out on the host
    sync_interval_s: float = 0.25  # a TIME round trip at most this often (both modes)

    def __post_init__(self):
        require(self.baudrate > 0, "baudrate", f"must be > 0, got {self.baudrate}")
        # bounded: inf passed, and the handshake with a board that never answers waited for ever, and
        # a write to a device that stopped reading raised OverflowError from pyserial (1e12: hung)
        require(0 < self.handshake_timeout_s <= 60, "handshake_timeout_s",
                f"must be in (0, 60] s, got {self.handshake_timeout_s}")
        require(0 < self.write_timeout_s <= 60, "write_timeout_s", f"must be in (0, 60] s, got {self.write_timeout_s}")
        require(math.isfinite(self.link_latency_us) and self.link_latency_us >= 0, "link_latency_us",
                f"must be >= 0, got {self.link_latency_us}")
        require(self.mode in ("delay", "clock"), "mode", f"must be delay or clock, got {self.mode!r}")
        require(0.1 <= self.sync_interval_s <= 60, "sync_interval_s",
                f"must be in [0.1, 60] s (one TIME round trip at a time, and a reply is taken as lost "
                f"after half the interval), got {self.sync_interval_s}")


class SerialTrigger(Trigger):
    backend = "serial"
    Settings = SerialSettings
    acks = True
    width_range_us = (1.0, 1_000_000.0)

    def __init__(self, settings=None, timing=None):
        super().__init__(settings, timing)
        if self.timing.max_delay_us > MAX_DELAY_US:
            # the protocol carries delays (and FIREAT due times) of at most 10 s: a longer one was
            # sent as 10 s, and the pulse came early, recorded as fired on time
            raise ConfigError("trigger.timing.max_delay_us",
                              f"{self.timing.max_delay_us:g} µs is more than the serial protocol carries "
                              f"({MAX_DELAY_US} µs, hardware/firmware/PROTOCOL.md)")
        self._port = None
        self._fd: int | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()
        self._replies: queue.Queue[str] = queue.Queue()
        self._ids: dict[int, int] = {}  # protocol id (mod 2**32) -> event index, while unacknowledged
        # the same for pulses counted unacked, newest last, for an ack that comes late (the reader
        # thread takes from it: popitem is one step under the GIL, iterating is not)
        self._overdue_ids: collections.OrderedDict[int, int] = collections.OrderedDict()
        # the same for the pulses acked last (reader thread only): the device's late report
        # (ERR 6) follows its pulse's ACK, which took the id off the lists above
        self._acked_ids: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._byte_us = 10e6 / self.settings.baudrate if self.settings.compensate_transmission else 0.0
        self._wire_free_ns = 0  # when the bytes written so far have left the host's UART (model)
        self.firmware = ""
        self.clock = DeviceClock()  # host ns <-> the device's micros(), from TIME round trips
        self._clock_lock = threading.Lock()  # the reader thread adds samples, the sort thread maps
        self._time_sent: collections.deque[int] = collections.deque()  # send times of TIMEs in flight
        self._next_sync_ns = 0
        self.time_replies_lost = 0  # TIME requests whose reply never came, or came too late to date
        self.garbled_lines = 0  # lines from the device that are none of the protocol's
        self.delay_from_arrival = self.settings.mode == "delay"  # FIREAT carries a due time instead

    # -- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def check_installed(cls, settings) -> None:
        _serial()

    def _do_open(self) -> str:
        s = self.settings
        serial = _serial()
        if not s.port:
            raise DeviceError("trigger.serial.port: no port given (e.g. /dev/ttyACM0 or COM3)")
        try:
            # exclusive: a second opener (a `trigger test` beside a run) read the replies the first
            # one waited for (its acks were lost, its handshake failed on "ARM") and disarmed the
            # device when it closed
            port = serial.Serial(s.port, s.baudrate, timeout=0.05, write_timeout=s.write_timeout_s, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as err:
            if getattr(err, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EBUSY) \
                    and "lock" in str(err):
                raise DeviceError(f"trigger.serial.port: {s.port} is in use by another mimlsort (a run, a "
                                  "`mimlsort trigger test`?)") from err
            raise DeviceError(f"trigger.serial.port: cannot open {s.port}: {err}") from err
        try:
            port.reset_input_buffer()
            self.firmware = self._handshake(port)
            write_all(port, b"ARM\n", s.write_timeout_s)
            if not self._expect(port, "OK ARM", 1.0):
                raise DeviceError(f"{s.port}: the device did not confirm ARM within 1 s")
            self._initial_sync(port, required=s.mode == "clock")
        except (serial.SerialException, OSError) as err:
            port.close()
            raise DeviceError(f"trigger.serial.port: {s.port} failed during the handshake: {err}") from err
        except BaseException:
            port.close()
            raise
        # a session's ids name nothing in the next: its acks cannot reach it (the input was emptied
        # and the handshake read past what came after). Kept, an entry for cell 2**32 + 7 named
        # the next session's cell 7 in its late report
        self._ids.clear()
        self._overdue_ids.clear()
        self._acked_ids.clear()
        self._port = port
        self._fd = port.fd if isinstance(getattr(port, "fd", None), int) else None
        self._stopping.clear()
        self._reader = threading.Thread(target=self._read_loop, name=f"trigger-serial-{s.port}", daemon=True)
        self._reader.start()
        return f"serial:{s.port} ({self.firmware})"

    def _handshake(self, port) -> str:
        deadline = time.monotonic() + self.settings.handshake_timeout_s
        while time.monotonic() < deadline:
            write_all(port, b"ID\n", self.settings.write_timeout_s)
            line = self._expect(port, "ID ", min(0.25, max(0.0, deadline - time.monotonic())))
            if line:
                words = line.split()
                if len(words) < 3 or words[1] != "mimlsort-trigger":
                    raise DeviceError(f"{self.settings.port}: not a mimlsort trigger (it says {line!r})")
                if words[2] != str(PROTOCOL):
                    raise DeviceError(f"{self.settings.port}: the device speaks protocol {words[2]}, this host "
                                      f"speaks {PROTOCOL}; load hardware/firmware/mimlsort_trigger onto it")
                return " ".join(words[1:])
        raise DeviceError(f"{self.settings.port}: no answer to ID within {self.settings.handshake_timeout_s:g} s — "
                          "is the mimlsort_trigger sketch loaded and the port right?")

    def _initial_sync(self, port, rounds: int = 16, required: bool = True) -> None:
        self.clock = DeviceClock()
        self._time_sent.clear()
        for _ in range(rounds):
            t0 = time.monotonic_ns()
            write_all(port, b"TIME\n", self.settings.write_timeout_s)
            line = self._expect(port, "TIME ", 1.0)
            t1 = time.monotonic_ns()
            words = line.split()
            if len(words) != 2 or not words[1].isdigit():
                if not required:  # delay mode times pulses without it: only the acks lose their host time
                    log.warning("%s: no answer to TIME: acks will not say when pulses went out on the host clock",
                                self.settings.port)
                    self.clock = DeviceClock()
                    self._next_sync_ns = 2**62
                    return
                raise DeviceError(f"{self.settings.port}: no answer to TIME — mode = \"clock\" needs firmware "
                                  "that knows TIME/FIREAT (hardware/firmware/mimlsort_trigger)")
            t0 += self._wire_ns(5)  # the request is in once its bytes are; the reply was read before its own
            self.clock.add(t0, int(words[1]), max(t0, t1 - self._wire_ns(len(line) + 1)))
        self._next_sync_ns = time.monotonic_ns() + round(self.settings.sync_interval_s * 1e9)

    @staticmethod
    def _expect(port, prefix: str, timeout_s: float) -> str:
        """Read lines until one starts with ``prefix`` (returned) or the timeout passes ("")."""
        deadline = time.monotonic() + timeout_s
        buf = b""
        while time.monotonic() < deadline:
            buf += port.read(max(1, port.in_waiting))
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode("ascii", "replace").strip()
                if line.startswith(prefix):
                    return line
                if line:
                    log.debug("serial trigger handshake: ignoring %r", line)
        return ""

    def _do_close(self) -> None:
        self._stopping.set()
        port, self._port, self._fd = self._port, None, None
        if port is None:
            return
        try:
            if self.available:
                with self._write_lock:
                    write_all(port, b"DISARM\n", self.settings.write_timeout_s)
        except Exception as err:  # closing a broken port is best effort
            log.debug("serial trigger: DISARM on close failed: %s", err)
        try:
            port.cancel_read()
        except Exception:
            pass
        if self._reader is not None:
            self._reader.join(2.0)
            self._reader = None
        port.close()

    # -- the sort path ---------------------------------------------------------------------------
    def _do_fire(self, event_index: int, fire_at_ns: int, width_us: float) -> tuple[int, float]:
        ident = event_index % U32
        width = max(1, round(width_us))
        # the delay is worked out under the write lock, just before the write: worked out before
        # it, a wait for the lock (a TIME from the storage thread) or a thread switch on a loaded
        # host came between, and a delay-mode pulse went out that much late (up to 14 ms beside
        # three busy processes) with its record on time
        with self._write_lock:
            now = time.monotonic_ns()
            if self.settings.mode == "clock":
                with self._clock_lock:
                    due = self.clock.to_device_us(fire_at_ns)
                cmd = f"FIREAT {ident} {due} {width}\n"
                delay = (fire_at_ns - now) / 1000.0  # what the device will count, for the record
            else:
                left_us = (fire_at_ns - now) / 1000.0 - self.settings.link_latency_us
                delay = max(0, min(MAX_DELAY_US, int(left_us)))
                cmd = f"FIRE {ident} {delay} {width}\n"
                if self._byte_us:  # the device starts counting when the last byte is in
                    queued_us = max(0, self._wire_free_ns - now) / 1000.0  # earlier commands still on the wire
                    delay = max(0, int(left_us - queued_us - len(cmd) * self._byte_us))
                    cmd = f"FIRE {ident} {delay} {width}\n"
                delay = float(delay)
            sync = now >= self._next_sync_ns
            if sync:  # piggyback a clock sample on this write, after the pulse's command
                cmd += "TIME\n"
                self._next_sync_ns = now + round(self.settings.sync_interval_s * 1e9)
            wire_free = self._wire_free_ns
            if self._byte_us:
                self._wire_free_ns = max(now, self._wire_free_ns) + round(len(cmd) * self._byte_us * 1000)
            self._ids[ident] = event_index
            data = cmd.encode()
            if sync:
                # dated as the bytes go: dated at `now`, a thread switch (the GIL's 5 ms) or a wait
                # for this lock before the write put the request early by as much, and the sample's
                # midpoint with it (clock-mode pulses and the acks' host times were 0.4-0.9 ms off
                # on a loaded host). On a real UART the request is in only once the pulse's command
                # (and any backlog) and its own 5 bytes have left: ~0.5 ms later at 115200
                t = time.monotonic_ns()
                self._time_sent.append(t if not self._byte_us else max(t, wire_free) + self._wire_ns(len(cmd)))
            # POSIX: one non-blocking write(2) where the device keeps up; pyserial's write adds a
            # select(2) per call, a second syscall and GIL round trip on the sort path
            write_all(self._port, data, self.settings.write_timeout_s, self._fd)
        return time.monotonic_ns(), delay

    def _wire_ns(self, n_bytes: int) -> int:
        """How long ``n_bytes`` take on a real UART (0 without ``compensate_transmission``)."""
        return round(n_bytes * self._byte_us * 1000)

    def _link_busy_ns(self) -> int:
        # A UART carries ~baud/10 bytes/s (115200: ~500 FIRE lines/s); a command queued behind
        # others arrives late, and the device counts its delay from arrival, so the pulse would
        # be late by the backlog with nothing to tell. Such a command is not sent (counted late).
        # the configured link latency as well: the delay sent is shortened by it, and a command
        # with less time left than that was sent with delay 0 and recorded as on time
        latency = round(self.settings.link_latency_us * 1000)
        if not self._byte_us:
            return latency
        backlog = max(0, self._wire_free_ns - time.monotonic_ns())
        return latency + backlog + self._wire_ns(_TYPICAL_FIRE_BYTES)

    def _link_busy_why(self, busy_ns: int) -> str:
        # only the backlog is the link being busy: the configured latency alone was said as
        # "the link to the device is busy for 5000 µs" with nothing queued on it
        latency = round(self.settings.link_latency_us * 1000)
        line = self._wire_ns(_TYPICAL_FIRE_BYTES)
        backlog = busy_ns - latency - line
        parts = [f"the link is busy for {backlog / 1000.0:.0f} µs" if backlog > 0 else "",
                 f"{line / 1000.0:.0f} µs to send it" if line else "",
                 f"link_latency_us {self.settings.link_latency_us:g}" if latency else ""]
        return f"{super()._link_busy_why(busy_ns)} ({' + '.join(p for p in parts if p)})"

    def _do_poll(self) -> None:
        """Clock mode: keep the clocks related while no cells are fired (delay mode takes its
        samples after FIRE lines only: a TIME written here, outside the sort path's model of the
        wire, would hold up the next FIRE unaccounted)."""
        now = time.monotonic_ns()
        if self.settings.mode == "clock" and now >= self._next_sync_ns and self._port is not None:
            self._next_sync_ns = now + round(self.settings.sync_interval_s * 1e9)
            with self._write_lock:
                self._time_sent.append(time.monotonic_ns() + self._wire_ns(5))
                write_all(self._port, b"TIME\n", self.settings.write_timeout_s, self._fd)

    def _forget(self, event_indices: list[int]) -> None:
        # kept a while: an ack that comes late named the protocol's id (cell 2**32 + 7 came back as 7)
        for idx in event_indices:
            if self._ids.pop(idx % U32, None) is not None:
                self._overdue_ids[idx % U32] = idx
        while len(self._overdue_ids) > LATE_ACK_MEMORY:
            self._overdue_ids.popitem(last=False)

    # -- device replies --------------------------------------------------------------------------
    def _read_loop(self) -> None:
        port = self._port
        buf = b""
        try:
            while not self._stopping.is_set():
                data = port.read(max(1, port.in_waiting))
                if not data:
                    continue
                host_ns = time.monotonic_ns()
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    self._handle(raw.decode("ascii", "replace").strip(), host_ns)
        except Exception as err:  # the port went away under us
            if not self._stopping.is_set():
                self._set_unavailable(f"serial port {self.settings.port} lost: {err}")

    def _handle(self, line: str, host_ns: int) -> None:
        words = line.split(maxsplit=3)
        if not words:
            return
        self._heard()
        if _READY in line:
            # the board rebooted (brown-out, watchdog, someone opened the port): it is disarmed now.
            # Looked for anywhere in the line: a reset cuts the line being written, and the READY
            # ran into its first bytes ("ACK 1READY ...") and went unnoticed
            self._set_unavailable(f"{self.settings.port}: the device restarted and is disarmed; a new run (or the "
                                  "GUI's Test fire) opens and arms it again")
        elif words[0] == "ACK" and len(words) == 3 and words[1].isdigit() and words[2].isdigit():
            ident = int(words[1])
            dev_us = int(words[2])
            # the TIME round trips relate the device's clock to the host's: when the pulse really went out
            # this thread adds the TIME samples: no lock, which would hold up a clock-mode fire for a refit
            pulse, err = (self.clock.to_host_ns(dev_us), self.clock.doubt_ns(dev_us)) if self.clock.n else (-1, -1)
            idx = self._ids.pop(ident, None)
            if idx is None:
                idx = self._overdue_ids.pop(ident, ident)
            self._acked_ids[ident] = idx
            if len(self._acked_ids) > _RECENT_ACKS:
                self._acked_ids.popitem(last=False)
            self._ack(idx, dev_us, host_ns, pulse_host_ns=pulse, pulse_host_err_ns=err)
        elif words[0] == "ERR":
            text = line[4:]
            rest = line.split(maxsplit=2)
            code = rest[1] if len(rest) > 1 else ""
            idx = None
            if len(rest) == 3 and rest[2].startswith("id="):
                ident_txt = rest[2][3:].split(maxsplit=1)[0]
                if ident_txt.isdigit():
                    idx = self._cell_of(int(ident_txt), code)
            if code == "7":  # pulses output while 16 ACKs already waited for the link: fired, not a fault
                n = rest[2].split()[-1] if len(rest) == 3 else ""
                self.acks_lost += int(n) if n.isdigit() else 1
                self._log.log(logging.WARNING, "acks lost", "serial trigger %s: %s (the pulses were output; "
                              "they will be counted unacked)", self.device, text)
                return
            if code == "6":  # fired, but later than the device's own tolerance
                if idx is not None:
                    self._report(idx, "late", text)
                else:
                    self.device_late += 1
                cell = f" (cell {idx})" if idx is not None and idx != int(ident_txt) else ""
                self._log.log(logging.WARNING, "device late", "serial trigger %s: %s%s", self.device, text, cell)
            else:
                if idx is not None and code in ("3", "4"):
                    self._report(idx, "refused", text)
                self._device_error(f"device error {text}")
                if code == "4":
                    # armed at open and disarmed only at close: a device that says it is not armed
                    # has restarted without its READY reaching us, and refuses every pulse from now on
                    self._set_unavailable(f"{self.settings.port}: the device is not armed (it restarted?); "
                                          "a new run (or the GUI's Test fire) opens and arms it again")
        elif words[0] == "TIME" and len(words) == 2 and words[1].isdigit() and self._time_sent:
            device_us = int(words[1])
            t0 = self._time_request_of(device_us)
            if t0 is None:
                return
            if t0 < host_ns - round(self.settings.sync_interval_s * 0.5e9):
                self.time_replies_lost += 1  # read half a sync interval after its request: a poor sample
                return
            # the device read its clock before its reply's bytes went onto the wire
            t1 = max(t0, host_ns - self._wire_ns(len(line) + 1))
            with self._clock_lock:
                self.clock.add(t0, device_us, t1)
        elif words[0] == "TIME" and len(words) == 2 and words[1].isdigit():
            pass  # the reply to a request already written off as lost
        elif words[0] in ("ID", "STATUS", "OK"):  # replies to query(), which empties the queue before asking
            if self._replies.qsize() < _MAX_REPLIES:
                self._replies.put(line)
        else:
            # noise on the link, a firmware of another kind: such lines were queued as replies,
            # which only a query takes off, and kept for the whole run without a word
            self.garbled_lines += 1
            self._log.log(logging.WARNING, "garbled line", "serial trigger %s: garbled line from the device: %s "
                          "(noise on the link? a pulse it was about goes unacknowledged)", self.device, ascii(line))

    def _cell_of(self, ident: int, code: str) -> int:
        """The cell that an ``ERR <code> id=<ident>`` is about (the id itself where none is known)."""
        if code in ("3", "4"):  # a refused pulse will never come (and never be acked): its id is done with
            idx = self._ids.pop(ident, None)
            return self._overdue_ids.pop(ident, ident) if idx is None else idx
        if code == "6" and ident in self._acked_ids:  # after its ACK, which took the id off the lists
            return self._acked_ids.pop(ident)
        idx = self._ids.get(ident)
        # a pulse already counted unacked: its cell, not the 32-bit id
        return self._overdue_ids.get(ident, ident) if idx is None else idx

    def _time_request_of(self, device_us: int) -> int | None:
        """The send time of the TIME request a reply with ``device_us`` answers (taken off the
        list, with those before it: their replies were lost), or None where it answers one already
        written off.

        Replies carry no request id. Taken in order, a reply lost on the link paired every later
        one with the request before it; and a reader thread held up past the next request (a
        loaded host) read two replies at once and paired the first with the second request: a
        sample a sync interval off, with a round trip short enough for the map to rest on it (the
        acks' host times were then off by up to a second). The device reads its clock after the
        request reaches it, so the reply answers the latest request sent before that reading,
        which the current map places to within its error (requests go out a sync interval apart)."""
        sent = self._time_sent
        k = 1  # no map yet: in order
        with self._clock_lock:
            if self.clock.n:
                # a device clock up to 1 % off the host's drifts that much from the map between syncs
                slack = self.clock.error_bound_ns + round(self.settings.sync_interval_s * 1e7)
                read_ns = self.clock.to_host_ns(device_us) + slack
                k = sum(t <= read_ns for t in list(sent))  # a copy: the sort thread appends meanwhile
        if k == 0:
            return None
        for _ in range(k - 1):
            sent.popleft()
            self.time_replies_lost += 1
        return sent.popleft()

    def query(self, command: str, prefix: str, timeout_s: float = 1.0) -> str:
        """Send a command that has a reply (STATUS, ID) and return the reply line."""
        while not self._replies.empty():
            self._replies.get_nowait()
        with self._write_lock:
            write_all(self._port, command.encode() + b"\n", self.settings.write_timeout_s, self._fd)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._replies.get(timeout=left)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
        raise DeviceError(f"{self.settings.port}: no {prefix.strip()} reply within {timeout_s:g} s")

    def device_status(self) -> dict[str, int]:
        """The device's own STATUS: armed, queued, fired, errors, device_us."""
        words = self.query("STATUS", "STATUS ").split()
        return dict(zip(("armed", "queued", "fired", "errors", "device_us"), map(int, words[1:6])))
