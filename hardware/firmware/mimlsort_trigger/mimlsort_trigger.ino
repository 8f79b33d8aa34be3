// mimlsort_trigger — sort-pulse generator for mimlsort (protocol: ../PROTOCOL.md, version 1).
//
// The host sends "FIRE <id> <delay_us> <width_us>" as soon as a cell is decided; this sketch
// counts the delay on its own micros() clock from the moment the line arrived and drives
// OUTPUT_PIN high for width_us, so the host's scheduling jitter never reaches the pulse.
// "FIREAT <id> <due_us> <width_us>" names the due time on this clock instead (the host keeps
// the two clocks related through TIME), so neither host stalls nor USB polling reach it. Pulses
// wait in a binary min-heap ordered by due time.
//
// Edges come first. service() only drives the pin and notes what to acknowledge; everything
// slow happens in loop() between edges: a line is parsed, and a reply formatted, only when no
// edge is due within GUARD_US, and replies go out a byte at a time with the edges serviced in
// between, so a full transmit buffer never holds an edge back. On a 16 MHz AVR an edge is late
// by a few µs plus, at worst, one such step (measured in simavr: BENCHMARKS.md). Numbers are
// parsed and printed without 32-bit division, which costs ~40 µs a digit on an AVR.
//
// Any Arduino-compatible board (Uno, Nano, Leonardo, Zero, Due, Teensy, RP2040, ESP32).
// Build: Arduino IDE or `arduino-cli compile --fqbn arduino:avr:uno mimlsort_trigger`.
// The test suite builds this same file for the PC (tests/sim/arduino_shim) and, where avr-gcc
// and simavr are installed, for an ATmega328P run cycle by cycle in simavr.

#include <Arduino.h>
#include <string.h>

#ifndef OUTPUT_PIN
#define OUTPUT_PIN 7  // to the actuator driver (valve, SAW amplifier gate, piezo driver)
#endif
#ifndef BAUD
#define BAUD 115200  // the host's default; boards with native USB ignore it
#endif

static const char *const PROTOCOL = "1";
static const char *const FIRMWARE = "1.1.0";
static const uint8_t MAX_LINE = 63;
static const uint8_t QUEUE = 64;                   // 64 × 12 bytes fits an Uno's 2 KB RAM
static const uint32_t MAX_DELAY_US = 10000000UL;   // keeps every due time within 2^31 µs of now
static const uint32_t MAX_WIDTH_US = 1000000UL;
#ifndef LATE_US
#define LATE_US 100UL  // an edge later than this is reported (ERR 6); a 16 MHz AVR is ~30 µs late by itself
#endif
#ifndef GUARD_US
#define GUARD_US 120UL  // parse or format only when no edge is due sooner than this
#endif
// PROFILE_PIN (optional, e.g. -DPROFILE_PIN=6): high while a line is parsed or a reply formatted
// and written, so a scope shows the loop's slow steps next to the output pulses.
#ifdef PROFILE_PIN
#define PROFILE(level) digitalWrite(PROFILE_PIN, level)
#else
#define PROFILE(level)
#endif
static const uint8_t ACKS = 16;        // edges acknowledged but not yet written out

struct Pulse {
  uint32_t id;
  uint32_t due;    // micros() at which the rising edge is due
  uint32_t width;
};

static Pulse heap_[QUEUE];
static uint8_t queued = 0;
static bool armed = false;
static bool high = false;
static uint32_t end_us = 0;  // when the output goes low again (valid while high)
static uint32_t fired = 0;
static uint32_t errors = 0;
// A line is parsed as its bytes arrive (a few µs each), so its end costs only the dispatch.
struct Line {
  char cmd[8];     // the first word (longer ones are unknown commands anyway)
  uint8_t cmd_len;
  uint8_t words;   // words seen so far
  uint8_t len;     // characters seen so far
  bool in_word;
  bool bad;        // a non-numeric or 32-bit-overflowing number
  bool too_long;   // more than MAX_LINE characters: discarded, reported as ERR 5
  uint32_t num[3]; // the numeric words after the command
};
static Line rx;  // the line being received
// Complete lines waiting for dispatch (with the time their newline arrived): receiving goes on
// while a reply is written, so a burst of commands is not lost in the UART's 64-byte buffer.
static const uint8_t LINES = 4;
static Line lines[LINES];
static uint32_t lines_rx_us[LINES];
static uint8_t line_head = 0, line_count = 0;

struct Ack {
  uint32_t id;
  uint32_t edge;  // micros() at the rising edge
  uint32_t late;  // edge − due
  bool id_sent;   // the ACK line is out; the late report (ERR 6) may still be due
};
static Ack acks[ACKS];
static uint8_t ack_head = 0, ack_count = 0;
static uint32_t acks_lost = 0;  // edges whose ACK did not fit (reported as ERR 7)

// micros() wraps every 71.6 min: times are compared by signed difference, never directly.
static inline bool before(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }

static void heap_push(const Pulse &p) {
  uint8_t i = queued++;
  while (i > 0) {
    uint8_t parent = (i - 1) / 2;
    if (!before(p.due, heap_[parent].due)) break;
    heap_[i] = heap_[parent];
    i = parent;
  }
  heap_[i] = p;
}

static Pulse heap_pop() {
  Pulse top = heap_[0];
  Pulse last = heap_[--queued];
  uint8_t i = 0;
  for (;;) {
    uint8_t child = 2 * i + 1;
    if (child >= queued) break;
    if (child + 1 < queued && before(heap_[child + 1].due, heap_[child].due)) child++;
    if (!before(heap_[child].due, last.due)) break;
    heap_[i] = heap_[child];
    i = child;
  }
  if (queued) heap_[i] = last;
  return top;
}

// Digits by repeated subtraction: at most 81 32-bit subtractions instead of 10 divisions.
static uint8_t put_u32(char *out, uint32_t v) {
  static const uint32_t TENS[9] = {1000000000UL, 100000000UL, 10000000UL, 1000000UL, 100000UL,
                                   10000UL, 1000UL, 100UL, 10UL};
  uint8_t n = 0;
  for (uint8_t i = 0; i < 9; i++) {
    char d = '0';
    while (v >= TENS[i]) {
      v -= TENS[i];
      d++;
    }
    if (d != '0' || n) out[n++] = d;
  }
  out[n++] = (char)('0' + v);
  return n;
}

// One reply line, assembled in RAM and then written out by send().
static char reply[48];
static uint8_t reply_len = 0;

static void add(const char *text) {
  while (*text && reply_len < sizeof(reply) - 1) reply[reply_len++] = *text++;
}

static void add_u32(uint32_t v) {
  if ((size_t)reply_len + 10 < sizeof(reply)) reply_len += put_u32(reply + reply_len, v);  // room for the newline
}

static void service();
static void read_available();

// A few bytes at a time with the edges serviced and the input drained in between: when the
// transmit buffer is full (the UART moves a byte every 10 µs at 1 Mbaud, 87 µs at 115200) this
// waits without holding an edge or losing input.
static void send() {
  reply[reply_len++] = '\n';
  uint8_t i = 0;
  while (i < reply_len) {
    uint32_t t0 = micros();
    int room;
    // a core whose availableForWrite() is always 0 writes after 2 ms rather than waiting forever
    while ((room = Serial.availableForWrite()) <= 0 && (uint32_t)(micros() - t0) < 2000UL) {
      service();
      read_available();
    }
    for (uint8_t k = 0; k < 4 && i < reply_len && (room-- > 0 || k == 0); k++) Serial.write((uint8_t)reply[i++]);
    service();
    read_available();
  }
  reply_len = 0;
}

static void reply_err(uint8_t code, const char *text, bool with_id, uint32_t id, bool with_value = false,
                      uint32_t value = 0) {
  errors++;
  add("ERR ");
  add_u32(code);
  add(" ");
  if (with_id) {
    add("id=");
    add_u32(id);
    add(" ");
  }
  add(text);
  if (with_value) {
    add(" ");
    add_u32(value);
  }
  send();
}

// Due edges only: falling first (a pulse that ended), then every pulse whose time has come.
// Acknowledgements are queued for loop(); nothing here waits or formats.
static void service() {
  uint32_t now = micros();
  if (high && !before(now, end_us)) {
    digitalWrite(OUTPUT_PIN, LOW);
    high = false;
  }
  while (queued && !before(now, heap_[0].due)) {
    Pulse p = heap_pop();
    if (!high) {
      digitalWrite(OUTPUT_PIN, HIGH);
    }
    uint32_t edge = micros();
    uint32_t end = edge + p.width;  // a late edge still gets its full width
    if (!high || before(end_us, end)) end_us = end;  // overlapping pulses merge
    high = true;
    fired++;
    if (ack_count < ACKS) {
      Ack &a = acks[(uint8_t)(ack_head + ack_count) % ACKS];
      a.id = p.id;
      a.edge = edge;
      a.late = edge - p.due;
      a.id_sent = false;
      ack_count++;
    } else {
      acks_lost++;
    }
    now = micros();
    if (high && !before(now, end_us)) {
      digitalWrite(OUTPUT_PIN, LOW);
      high = false;
    }
  }
}

// True when no edge falls due within `us` from now: slow work may start.
static bool clear_for(uint32_t us) {
  uint32_t horizon = micros() + us;
  if (high && before(end_us, horizon)) return false;
  return !(queued && before(heap_[0].due, horizon));
}

// One line per call: the oldest queued acknowledgement, then its late report (on a later call,
// so each formatting step starts clear of edges), or the count of lost ones.
static void write_ack() {
  if (ack_count) {
    Ack &a = acks[ack_head];
    if (a.id_sent) {
      reply_err(6, "late", true, a.id, true, a.late);
      a.late = 0;
    } else {
      add("ACK ");
      add_u32(a.id);
      add(" ");
      add_u32(a.edge);
      send();
      a.id_sent = true;
    }
    if (a.late <= LATE_US) {
      ack_head = (uint8_t)(ack_head + 1) % ACKS;
      ack_count--;
    }
  } else if (acks_lost) {
    uint32_t n = acks_lost;
    acks_lost = 0;
    reply_err(7, "acks lost", false, 0, true, n);
  }
}

static void command(const Line &l, uint32_t rx_us) {
  if (l.words == 0) return;
  const char *cmd = l.cmd;
  bool at = strcmp(cmd, "FIREAT") == 0;  // FIREAT carries the due time on this clock, FIRE a delay
  if (at || strcmp(cmd, "FIRE") == 0) {
    uint32_t id = l.num[0], t_us = l.num[1], width_us = l.num[2];
    bool ok = l.words == 4 && !l.bad && width_us >= 1 && width_us <= MAX_WIDTH_US;
    // FIREAT: due at most MAX_DELAY_US ahead, or up to as much behind (then it fires at once, late)
    int32_t ahead = at ? (int32_t)(t_us - rx_us) : 0;
    if (!ok || (at ? (ahead > (int32_t)MAX_DELAY_US || ahead < -(int32_t)MAX_DELAY_US) : t_us > MAX_DELAY_US)) {
      reply_err(2, "bad arguments", false, 0);
    } else if (!armed) {
      reply_err(4, "not armed", true, id);
    } else if (queued >= QUEUE) {
      reply_err(3, "queue full", true, id);
    } else {
      Pulse p = {id, at ? t_us : rx_us + t_us, width_us};
      heap_push(p);
    }
    return;
  }
  uint8_t n = l.words;
  bool known = strcmp(cmd, "ID") == 0 || strcmp(cmd, "ARM") == 0 || strcmp(cmd, "DISARM") == 0 ||
               strcmp(cmd, "STATUS") == 0 || strcmp(cmd, "TIME") == 0;
  if (!known) {
    reply_err(1, "unknown command", false, 0);
  } else if (n != 1) {
    reply_err(2, "bad arguments", false, 0);
  } else if (strcmp(cmd, "ID") == 0) {
    add("ID mimlsort-trigger ");
    add(PROTOCOL);
    add(" ");
    add(FIRMWARE);
    send();
  } else if (strcmp(cmd, "TIME") == 0) {
    add("TIME ");
    add_u32(micros());
    send();
  } else if (strcmp(cmd, "ARM") == 0) {
    armed = true;
    add("OK ARM");
    send();
  } else if (strcmp(cmd, "DISARM") == 0) {
    armed = false;
    queued = 0;
    high = false;
    digitalWrite(OUTPUT_PIN, LOW);
    add("OK DISARM");
    send();
  } else {  // STATUS
    add("STATUS ");
    add_u32(armed ? 1 : 0);
    add(" ");
    add_u32(queued);
    add(" ");
    add_u32(fired);
    add(" ");
    add_u32(errors);
    add(" ");
    add_u32(micros());
    send();
  }
}

// Everything received up to the end of a line, with the edges serviced between bytes (a 1 Mbaud
// UART delivers a byte every 10 µs into a 64-byte buffer, so it is drained every pass). A complete
// line is acted on by dispatch(), when no edge is near; reading stops until then.
static void read_byte(int c);

static void read_available() {
  uint8_t n = 0;
  while (line_count < LINES && Serial.available() > 0) {
    read_byte(Serial.read());
    if (++n % 4 == 0) service();  // micros() costs as much as a byte: check the edges every 4th
  }
}

static void read_byte(int c) {
  if (c == '\n') {
    uint8_t i = (uint8_t)(line_head + line_count) % LINES;
    lines_rx_us[i] = micros();  // the delay counts from here (documented in PROTOCOL.md)
    lines[i] = rx;
    line_count++;
    memset(&rx, 0, sizeof(rx));
    return;
  }
  if (c == '\r' || rx.too_long) return;
  if (++rx.len > MAX_LINE) {
    rx.too_long = true;
    return;
  }
  if (c == ' ') {
    rx.in_word = false;
    return;
  }
  if (!rx.in_word) {
    rx.in_word = true;
    rx.words++;
  }
  if (rx.words == 1) {
    // a byte no command has (a NUL from a break on the line) makes the word unknown: kept as it
    // came, a NUL ended the string, and "ID\0X" or "FIRE\0" was taken for ID or FIRE
    if (rx.cmd_len < sizeof(rx.cmd) - 1) rx.cmd[rx.cmd_len++] = (c > ' ' && c < 0x7f) ? (char)c : '?';
    else rx.cmd[0] = '?';  // too long for any command: unknown
  } else if (rx.words <= 4) {
    uint32_t &v = rx.num[rx.words - 2];
    uint8_t d = (uint8_t)(c - '0');
    if (d > 9 || v > 429496729UL || (v == 429496729UL && d > 5)) rx.bad = true;  // not a digit, or past 2^32 − 1
    else v = v * 10UL + d;
  }
}

// Acts on the oldest received line (copied out first: replies go on receiving into the queue).
static void dispatch() {
  PROFILE(HIGH);
  Line l = lines[line_head];
  uint32_t rx_us = lines_rx_us[line_head];
  line_head = (uint8_t)(line_head + 1) % LINES;
  line_count--;
  if (l.too_long) {
    reply_err(5, "line too long", false, 0);
  } else {
    command(l, rx_us);
  }
  PROFILE(LOW);
}

void setup() {
  pinMode(OUTPUT_PIN, OUTPUT);
  digitalWrite(OUTPUT_PIN, LOW);  // safe state from power-up on
#ifdef PROFILE_PIN
  pinMode(PROFILE_PIN, OUTPUT);
#endif
  Serial.begin(BAUD);
  add("READY mimlsort-trigger ");
  add(PROTOCOL);
  send();
}

void loop() {
  service();
  read_available();
  if (line_count && clear_for(GUARD_US)) dispatch();
  if ((ack_count || acks_lost) && clear_for(GUARD_US)) {
    PROFILE(HIGH);
    write_ack();
    PROFILE(LOW);
  }
}
