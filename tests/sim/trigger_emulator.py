"""A device emulator for the mimlsort trigger protocol (hardware/firmware/PROTOCOL.md).

Runs as its own process on the device end of a pseudo-terminal, like the microcontroller does on
the other end of a USB cable: it parses the commands without blocking, keeps a queue of pulses
timed on its own clock, acknowledges each rising edge with its own timestamp (held, as the
sketch holds it, until no edge is near; 16 at most, the rest reported as ``ERR 7 acks lost``),
answers ID/STATUS and reports errors exactly as the sketch does. It records every command and pulse to a file
(tab-separated, flushed per line so a killed emulator leaves a complete record):

    cmd    <rx_ns> <line>
    pulse  <id> <delay_us> <width_us> <rx_ns> <due_ns> <edge_ns> <end_ns>   (FIREAT: delay = due − arrival)
    err    <rx_ns> <code> <text>

and the faults it was asked to inject (``--drop-time-reply``, ``--reset-after``, ``--garble-every``,
``--hang-after``):

    dropped <rx_ns> TIME reply
    reset   <rx_ns>
    garbled <rx_ns> <the ACK as it should have read>
    hung    <ns>

``*_ns`` are the host's CLOCK_MONOTONIC (shared by all processes), so tests can compare them with
the times the host trigger recorded.

    python trigger_emulator.py --fd 5 --record pulses.tsv      # fd inherited from the parent
    python trigger_emulator.py --port /dev/pts/7 --record pulses.tsv

:func:`build_firmware` compiles the real sketch (hardware/firmware/mimlsort_trigger) for this
PC against tests/sim/arduino_shim, and :func:`emulated_port` runs either on the device end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import heapq
import os
import select
import signal
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROTOCOL = 1
FIRMWARE = "1.1.0-emulator"
MAX_LINE = 63
QUEUE = 64
MAX_DELAY_US = 10_000_000
MAX_WIDTH_US = 1_000_000
LATE_US = 2000  # the firmware uses 100 µs; a Python process on a shared host needs more slack
ACKS = 16  # edges acknowledged but not yet written out (beyond that: ERR 7 acks lost)
GUARD_US = 120  # an ACK is written only when no edge is due sooner than this
U32 = 1 << 32


class Device:
    def __init__(self, fd: int, record, late_us: int = LATE_US, queue: int = QUEUE, drop_time_reply: int = 0,
                 reset_after: int = 0, reset_quiet: bool = False, garble_every: int = 0, hang_after: int = 0):
        self.drop_time_reply = drop_time_reply  # fault injection: the Nth TIME reply is lost on the link
        # fault injection: the device resets (brown-out, watchdog) as the Nth FIRE/FIREAT arrives,
        # in the middle of writing an ACK; it comes back disarmed and says READY (unless quiet:
        # the line lost in the noise of the reset), then takes that command
        self.reset_after = reset_after
        self.reset_quiet = reset_quiet
        self.fires = 0
        self.garble_every = garble_every  # fault injection: every Nth ACK loses a byte to noise on the link
        # fault injection: the sketch hangs once its Nth pulse is acknowledged; the USB bridge keeps
        # the port open and takes the bytes, and nothing is output or answered any more
        self.hang_after = hang_after
        self.hung = False
        self.acks_sent = 0
        self.time_replies = 0
        self.fd = fd
        self.record = record
        self.late_us = late_us
        self.queue_size = queue
        self.boot_ns = time.monotonic_ns()
        self.armed = False
        self.fired = 0
        self.errors = 0
        self.high = False
        self.end_ns = 0
        # as the sketch: an edge's ACK waits here until no edge is near; once 16 wait, edges are
        # only counted, and reported as "ERR 7 acks lost <n>" when the queue has been written out
        self.acks: collections.deque[list] = collections.deque()  # [id, edge_us, late_us, id_sent, rx_ns]
        self.acks_lost = 0
        self.queue: list[tuple[int, int, int, int, int, int]] = []  # (due, seq, id, delay, width, rx)
        self.seq = 0
        self.buf = bytearray()
        self.discarding = False
        self.running = True

    def micros(self) -> int:
        return ((time.monotonic_ns() - self.boot_ns) // 1000) % U32

    def send(self, text: str) -> None:
        try:
            os.write(self.fd, (text + "\n").encode())
        except BlockingIOError:  # nobody reads: a USB CDC device drops it the same way
            pass
        except OSError as err:
            if err.errno != errno.EIO:  # EIO: no host has the port open
                raise

    def log(self, *fields) -> None:
        self.record.write("\t".join(str(f) for f in fields) + "\n")
        self.record.flush()

    def error(self, rx_ns: int, code: int, text: str) -> None:
        self.errors += 1
        self.log("err", rx_ns, code, text)
        self.send(f"ERR {code} {text}")

    # -- parsing ---------------------------------------------------------------------------------
    def feed(self, data: bytes, rx_ns: int) -> None:
        for b in data:
            if b == 0x0A:
                if self.discarding:
                    self.discarding = False
                    self.error(rx_ns, 5, "line too long")
                else:
                    self.command(self.buf.decode("ascii", "replace"), rx_ns)
                self.buf.clear()
            elif b == 0x0D:
                continue
            elif self.discarding:
                continue
            elif len(self.buf) >= MAX_LINE:
                self.discarding = True
                self.buf.clear()
            else:
                self.buf.append(b)

    def command(self, line: str, rx_ns: int) -> None:
        self.log("cmd", rx_ns, line)
        if self.hung:
            return
        words = [w for w in line.split(" ") if w]  # spaces only, as the sketch: a tab is part of a word
        if not words:
            return
        cmd, args = words[0], words[1:]
        if cmd == "ID" and not args:
            self.send(f"ID mimlsort-trigger {PROTOCOL} {FIRMWARE}")
        elif cmd == "ARM" and not args:
            self.armed = True
            self.send("OK ARM")
        elif cmd == "DISARM" and not args:
            self.armed = False
            self.queue.clear()
            self.high = False
            self.send("OK DISARM")
        elif cmd == "STATUS" and not args:
            self.send(f"STATUS {int(self.armed)} {len(self.queue)} {self.fired} {self.errors} {self.micros()}")
        elif cmd == "TIME" and not args:
            self.time_replies += 1
            if self.time_replies == self.drop_time_reply:
                self.log("dropped", rx_ns, "TIME reply")
            else:
                self.send(f"TIME {self.micros()}")
        elif cmd in ("FIRE", "FIREAT"):
            self.fires += 1
            if self.fires == self.reset_after:
                self.reset(rx_ns)
            self.fire(args, rx_ns, absolute=cmd == "FIREAT")
        elif cmd in ("ID", "ARM", "DISARM", "STATUS", "TIME"):
            self.error(rx_ns, 2, "bad arguments")
        else:
            self.error(rx_ns, 1, "unknown command")

    def reset(self, rx_ns: int) -> None:
        self.log("reset", rx_ns)
        self.armed = False
        self.queue.clear()
        self.acks.clear()
        self.acks_lost = 0
        self.high = False
        self.fired = self.errors = 0
        self.boot_ns = time.monotonic_ns()
        try:  # the first bytes of an ACK, cut off by the reset: the host reads them run into the next line
            os.write(self.fd, b"ACK 1")
        except OSError:
            pass
        if not self.reset_quiet:
            self.send(f"READY mimlsort-trigger {PROTOCOL}")

    def fire(self, args: list[str], rx_ns: int, absolute: bool = False) -> None:
        if len(args) != 3 or not all(a.isdigit() for a in args):
            self.error(rx_ns, 2, "bad arguments")
            return
        ident, t_us, width = (int(a) for a in args)
        if absolute:  # FIREAT: a due time on this device's clock; signed distance from now, as the sketch
            rx_us = ((rx_ns - self.boot_ns) // 1000) % U32
            ahead = (t_us - rx_us) % U32
            ahead = ahead - U32 if ahead >= U32 // 2 else ahead
            delay = ahead
            bad = t_us >= U32 or abs(ahead) > MAX_DELAY_US
        else:
            delay = t_us
            bad = delay > MAX_DELAY_US
        if ident >= U32 or bad or not (1 <= width <= MAX_WIDTH_US):
            self.error(rx_ns, 2, "bad arguments")
            return
        if not self.armed:
            self.error(rx_ns, 4, f"id={ident} not armed")
            return
        if len(self.queue) >= self.queue_size:
            self.error(rx_ns, 3, f"id={ident} queue full")
            return
        self.seq += 1
        if absolute:  # due exactly at that count of the µs clock, as micros() on the board
            due = self.boot_ns + (rx_ns - self.boot_ns) // 1000 * 1000 + delay * 1000
        else:
            due = rx_ns + delay * 1000
        heapq.heappush(self.queue, (due, self.seq, ident, delay, width, rx_ns))

    # -- the pulse engine ------------------------------------------------------------------------
    def next_edge_ns(self) -> int | None:
        if self.hung:
            return None
        t = self.queue[0][0] if self.queue else None
        if self.high and (t is None or self.end_ns < t):
            t = self.end_ns
        return t

    def service(self) -> None:
        now = time.monotonic_ns()
        while not self.hung and self.queue and self.queue[0][0] <= now:
            due, _, ident, delay, width, rx = heapq.heappop(self.queue)
            edge = time.monotonic_ns()
            end = edge + width * 1000
            self.end_ns = max(self.end_ns, end) if self.high else end
            self.high = True
            self.fired += 1
            # the edge's own clock reading, as the sketch's ACK carries: a second reading here
            # was later by however long a loaded host kept this process from running in between
            if len(self.acks) < ACKS:
                self.acks.append([ident, (edge - self.boot_ns) // 1000 % U32, (edge - due) // 1000, False, rx])
            else:
                self.acks_lost += 1
            self.log("pulse", ident, delay, width, rx, due, edge, end)
        if self.high and self.end_ns <= time.monotonic_ns():
            self.high = False

    def clear_for(self, us: int) -> bool:
        """No edge falls due within ``us`` from now: an ACK may be written (the sketch's clear_for)."""
        t = self.next_edge_ns()
        return t is None or t >= time.monotonic_ns() + us * 1000

    def write_ack(self) -> None:
        """One line, as the sketch's write_ack: the oldest ACK, then (on a later call) its late
        report, or, with no ACK waiting, the count of those that did not fit."""
        if self.acks:
            a = self.acks[0]
            ident, edge_us, late, id_sent, rx = a
            if id_sent:
                self.error(rx, 6, f"id={ident} late {late}")
                a[2] = 0
            else:
                ack = f"ACK {ident} {edge_us}"
                self.acks_sent += 1
                if self.garble_every and self.acks_sent % self.garble_every == 0:
                    self.log("garbled", rx, ack)
                    ack = ack[:4] + "\ufffd" + ack[5:]  # its id's first digit: a byte noise corrupted
                self.send(ack)
                a[3] = True
                if self.acks_sent == self.hang_after:
                    self.hung = True
                    self.log("hung", time.monotonic_ns())
            if a[2] <= self.late_us:
                self.acks.popleft()
        elif self.acks_lost:
            n, self.acks_lost = self.acks_lost, 0
            self.error(time.monotonic_ns(), 7, f"acks lost {n}")

    def run(self) -> None:
        self.send(f"READY mimlsort-trigger {PROTOCOL}")
        while self.running:
            t = self.next_edge_ns()
            timeout = 0.2 if t is None else max(0.0, (t - time.monotonic_ns()) / 1e9)
            if (self.acks or self.acks_lost) and not self.hung and self.clear_for(GUARD_US):
                timeout = 0.0  # a line to write: a pass of the sketch's loop
            try:
                readable, _, _ = select.select([self.fd], [], [], timeout)
            except InterruptedError:
                continue
            if readable:
                rx_ns = time.monotonic_ns()
                try:
                    data = os.read(self.fd, 4096)
                except OSError as err:
                    if err.errno != errno.EIO:
                        raise
                    time.sleep(0.005)  # no host on the other end (yet): wait as a device would
                    data = b""
                if data:
                    self.feed(data, rx_ns)
            self.service()
            if (self.acks or self.acks_lost) and not self.hung and self.clear_for(GUARD_US):
                self.write_ack()


@dataclass
class EmulatedPort:
    """A running emulator: ``port`` is the tty path the host opens, like /dev/ttyACM0."""

    port: str
    process: subprocess.Popen
    record: Path

    def records(self, kind: str) -> list[list[str]]:
        """The recorded lines of one kind (``cmd``, ``pulse``, ``err``), fields as strings."""
        if not self.record.exists():
            return []
        rows = [line.rstrip("\n").split("\t") for line in self.record.read_text(encoding="utf-8").splitlines()]
        return [r[1:] for r in rows if r and r[0] == kind]


@contextlib.contextmanager
def emulated_port(record: str | Path, *options: str, ready_timeout_s: float = 10.0,
                  device: list[str] | None = None) -> Iterator[EmulatedPort]:
    """A pseudo-terminal pair with the emulator process on the device end.

    ``device`` replaces the emulator with another program taking the same ``--fd``/``--record``
    arguments (the firmware built against tests/sim/arduino_shim). The caller gets the host
    end's path; this process holds the host end open for the whole block, so the device never
    sees a hang-up between a host's close and the next open.
    """
    record = Path(record)
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        program = device or [sys.executable, __file__]
        proc = subprocess.Popen([*program, "--fd", str(master), "--record", str(record), *options],
                                pass_fds=(master,), stdin=subprocess.DEVNULL)
    finally:
        os.close(master)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if not record.exists():
            raise RuntimeError(f"trigger emulator did not start (exit code {proc.poll()})")
        yield EmulatedPort(os.ttyname(slave), proc, record)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        os.close(slave)


FIRMWARE_SKETCH = Path(__file__).resolve().parents[2] / "hardware" / "firmware" / "mimlsort_trigger" / "mimlsort_trigger.ino"
SHIM = Path(__file__).resolve().parent / "arduino_shim"


def build_firmware(out: str | Path, compiler: str = "g++") -> Path:
    """Compile the Arduino sketch into a PC program that speaks the protocol on ``--fd``."""
    out = Path(out)
    # a PC process wakes up tens of µs late: report lateness (ERR 6) only beyond 2 ms, as the emulator does
    cmd = [compiler, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-DLATE_US={LATE_US}UL", "-I", str(SHIM), "-x", "c++",
           str(FIRMWARE_SKETCH), "-x", "none", str(SHIM / "shim_main.cpp"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"building the firmware failed:\n{res.stderr}")
    return out


# The Arduino AVR core as Debian's arduino-core-avr installs it (or ARDUINO_AVR_CORE), and the
# part of it the sketch links against: the rest (WString, USB, Tone) is never referenced.
ARDUINO_AVR = Path(os.environ.get("ARDUINO_AVR_CORE", "/usr/share/arduino/hardware/arduino/avr"))
_AVR_CORE = ("wiring.c", "wiring_digital.c", "hooks.c", "main.cpp", "HardwareSerial.cpp", "HardwareSerial0.cpp",
             "Print.cpp", "abi.cpp", "new.cpp")
UNO_FLASH = 32256  # 32 KB less the 512-byte optiboot bootloader
UNO_RAM = 2048
AVR_HARNESS = Path(__file__).resolve().parent / "avr_harness.c"


def avr_toolchain_missing() -> str | None:
    """Why the sketch cannot be built for and run on a simulated ATmega328P here, or None."""
    import shutil

    for tool, package in (("avr-g++", "gcc-avr"), ("avr-size", "binutils-avr"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian package {package})"
    if not (ARDUINO_AVR / "cores" / "arduino" / "Arduino.h").exists():
        return f"no Arduino AVR core at {ARDUINO_AVR} (Debian package arduino-core-avr, or set ARDUINO_AVR_CORE)"
    if not Path("/usr/include/simavr/sim_avr.h").exists():
        return "simavr headers not found (Debian package libsimavr-dev)"
    return None


@dataclass(frozen=True)
class AvrFirmware:
    elf: Path
    flash_bytes: int  # .text + .data: what is programmed
    ram_bytes: int  # .data + .bss: static RAM, before the stack


def build_avr_firmware(out_dir: str | Path, *defines: str, mcu: str = "atmega328p",
                       f_cpu: int = 16_000_000) -> AvrFirmware:
    """Compile the sketch with avr-gcc against the Arduino AVR core, as the Arduino IDE does for an Uno.

    ``defines`` are extra ``NAME=value`` macros (``BAUD=1000000``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    core = ARDUINO_AVR / "cores" / "arduino"
    flags = [f"-mmcu={mcu}", f"-DF_CPU={f_cpu}L", "-DARDUINO=10807", "-DARDUINO_AVR_UNO", "-DARDUINO_ARCH_AVR",
             "-I", str(core), "-I", str(ARDUINO_AVR / "variants" / "standard"), "-Os", "-ffunction-sections",
             "-fdata-sections", *(f"-D{d}" for d in defines)]
    cxx = ["-std=gnu++11", "-fno-exceptions", "-fno-threadsafe-statics"]
    jobs = [(["avr-gcc" if src.endswith(".c") else "avr-g++", *flags, *([] if src.endswith(".c") else cxx)],
             core / src, out / f"{src}.o") for src in _AVR_CORE]
    jobs.append((["avr-g++", *flags, *cxx, "-Wall", "-Wextra", "-Werror", "-x", "c++"], FIRMWARE_SKETCH,
                 out / "sketch.o"))
    for cmd, src, obj in jobs:
        res = subprocess.run([*cmd, "-c", str(src), "-o", str(obj)], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"avr-gcc failed on {src}:\n{res.stderr}")
    elf = out / "mimlsort_trigger.elf"
    res = subprocess.run(["avr-gcc", f"-mmcu={mcu}", "-Os", "-Wl,--gc-sections", *(str(o) for _, _, o in jobs),
                          "-o", str(elf)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"linking the AVR firmware failed:\n{res.stderr}")
    sizes = subprocess.run(["avr-size", str(elf)], capture_output=True, text=True, check=True).stdout.split("\n")[1]
    text, data, bss = (int(x) for x in sizes.split()[:3])
    return AvrFirmware(elf, text + data, data + bss)


def build_avr_harness(out: str | Path) -> Path:
    """Compile tests/sim/avr_harness.c (simavr with UART0 on --fd, in real time)."""
    out = Path(out)
    res = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-I", "/usr/include/simavr", str(AVR_HARNESS), "-o",
                          str(out), "-lsimavr"], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"building the simavr harness failed:\n{res.stderr}")
    return out


def simulated_uno(folder: str | Path, *defines: str) -> tuple[list[str], AvrFirmware]:
    """The device program for :func:`emulated_port` that runs the sketch on a simulated Uno."""
    folder = Path(folder)
    fw = build_avr_firmware(folder / "avr", *defines)
    return [str(build_avr_harness(folder / "avr_harness")), str(fw.elf)], fw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--fd", type=int, help="inherited file descriptor of the device end")
    g.add_argument("--port", help="tty path of the device end")
    p.add_argument("--record", required=True, help="file to record commands and pulses to")
    p.add_argument("--late-us", type=int, default=LATE_US)
    p.add_argument("--queue", type=int, default=QUEUE, help="pulse queue capacity")
    p.add_argument("--drop-time-reply", type=int, default=0, metavar="N",
                   help="lose the Nth TIME reply, as a garbled line would be (fault injection)")
    p.add_argument("--reset-after", type=int, default=0, metavar="N",
                   help="reset as the Nth FIRE/FIREAT arrives, cutting an ACK short (fault injection)")
    p.add_argument("--reset-quiet", action="store_true", help="with --reset-after: the READY after it is lost")
    p.add_argument("--garble-every", type=int, default=0, metavar="N",
                   help="every Nth ACK loses a byte to noise on the link (fault injection)")
    p.add_argument("--hang-after", type=int, default=0, metavar="N",
                   help="hang once the Nth pulse is acknowledged: the port takes the bytes, nothing answers (fault injection)")
    args = p.parse_args(argv)
    fd = args.fd if args.fd is not None else os.open(args.port, os.O_RDWR | os.O_NOCTTY)
    os.set_blocking(fd, False)
    tty.setraw(fd)  # no echo, no line editing: the device sees bytes as the host sent them
    with open(args.record, "w", encoding="utf-8") as record:
        dev = Device(fd, record, args.late_us, args.queue, args.drop_time_reply, args.reset_after, args.reset_quiet,
                     args.garble_every, args.hang_after)

        def stop(*_):
            dev.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        dev.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
