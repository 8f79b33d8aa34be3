// mimlsort_trigger — sort-pulse generator for mimlsort (protocol: ../PROTOCOL.md, version 1).
//
// The host sends "FIRE <id> <delay_us> <width_us>" as soon as a cell is decided; this sketch
// counts the delay on its own micros() clock from the moment the line arrived and drives
// OUTPUT_PIN high for width_us, so the host's scheduling jitter never reaches the pulse.
// "FIREAT <id> <due_us> <width_us>" names the due time on this clock instead (the host keeps
// the two clocks related through TIME), so neither host stalls nor USB polling reach it. Pulses
// wait in a binary min-heap ordered by due time; the loop never blocks: it services due edges,
// then reads at most one byte, then services again, so an edge is late by at most one pass
// (a few µs on a 16 MHz AVR, less on ARM boards) plus any time spent writing replies.
//
// Any Arduino-compatible board (Uno, Nano, Leonardo, Zero, Due, Teensy, RP2040, ESP32).
// Build: Arduino IDE or `arduino-cli compile --fqbn arduino:avr:uno mimlsort_trigger`.
// The same file also builds on a PC against tests/sim/arduino_shim, which is how the test
// suite runs this exact code against the host driver.

#include <Arduino.h>
#include <string.h>

#ifndef OUTPUT_PIN
#define OUTPUT_PIN 7  // to the actuator driver (valve, SAW amplifier gate, piezo driver)
#endif
#ifndef BAUD
#define BAUD 115200
#endif

static const char *const PROTOCOL = "1";
static const char *const FIRMWARE = "1.0.0";
static const uint8_t MAX_LINE = 63;
static const uint8_t QUEUE = 64;                   // 64 × 12 bytes fits an Uno's 2 KB RAM
static const uint32_t MAX_DELAY_US = 10000000UL;   // keeps every due time within 2^31 µs of now
static const uint32_t MAX_WIDTH_US = 1000000UL;
#ifndef LATE_US
#define LATE_US 50UL  // an edge later than this is reported (ERR 6)
#endif

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
static char line[MAX_LINE + 1];
static uint8_t len = 0;
static bool discarding = false;

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

static void reply_err(uint8_t code, const char *text, bool with_id, uint32_t id, bool with_value = false,
                      uint32_t value = 0) {
  errors++;
  Serial.print("ERR ");
  Serial.print(code);
  Serial.print(' ');
  if (with_id) {
    Serial.print("id=");
    Serial.print(id);
    Serial.print(' ');
  }
  Serial.print(text);
  if (with_value) {
    Serial.print(' ');
    Serial.print(value);
  }
  Serial.print('\n');
}

// Output due edges: falling first (a pulse that ended), then every pulse whose time has come.
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
    Serial.print("ACK ");
    Serial.print(p.id);
    Serial.print(' ');
    Serial.print(edge);
    Serial.print('\n');
    uint32_t late = edge - p.due;
    if (late > LATE_US) reply_err(6, "late", true, p.id, true, late);
    now = micros();
    if (high && !before(now, end_us)) {
      digitalWrite(OUTPUT_PIN, LOW);
      high = false;
    }
  }
}

// Parses an unsigned decimal token; false on anything else or overflow.
static bool parse_u32(const char *s, uint32_t &out) {
  if (s == NULL || *s == '\0') return false;
  uint32_t v = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return false;
    uint32_t d = (uint32_t)(*s - '0');
    if (v > (0xFFFFFFFFUL - d) / 10UL) return false;
    v = v * 10UL + d;
  }
  out = v;
  return true;
}

static void command(char *text, uint32_t rx_us) {
  char *words[5];
  uint8_t n = 0;
  for (char *w = strtok(text, " "); w != NULL; w = strtok(NULL, " ")) {
    if (n == 5) {
      n = 6;  // too many fields
      break;
    }
    words[n++] = w;
  }
  if (n == 0) return;
  const char *cmd = words[0];
  bool at = strcmp(cmd, "FIREAT") == 0;  // FIREAT carries the due time on this clock, FIRE a delay
  if (at || strcmp(cmd, "FIRE") == 0) {
    uint32_t id, t_us, width_us;
    bool ok = n == 4 && parse_u32(words[1], id) && parse_u32(words[2], t_us) && parse_u32(words[3], width_us) &&
              width_us >= 1 && width_us <= MAX_WIDTH_US;
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
  bool known = strcmp(cmd, "ID") == 0 || strcmp(cmd, "ARM") == 0 || strcmp(cmd, "DISARM") == 0 ||
               strcmp(cmd, "STATUS") == 0 || strcmp(cmd, "TIME") == 0;
  if (!known) {
    reply_err(1, "unknown command", false, 0);
  } else if (n != 1) {
    reply_err(2, "bad arguments", false, 0);
  } else if (strcmp(cmd, "ID") == 0) {
    Serial.print("ID mimlsort-trigger ");
    Serial.print(PROTOCOL);
    Serial.print(' ');
    Serial.print(FIRMWARE);
    Serial.print('\n');
  } else if (strcmp(cmd, "TIME") == 0) {
    Serial.print("TIME ");
    Serial.print(micros());
    Serial.print('\n');
  } else if (strcmp(cmd, "ARM") == 0) {
    armed = true;
    Serial.print("OK ARM\n");
  } else if (strcmp(cmd, "DISARM") == 0) {
    armed = false;
    queued = 0;
    high = false;
    digitalWrite(OUTPUT_PIN, LOW);
    Serial.print("OK DISARM\n");
  } else {  // STATUS
    Serial.print("STATUS ");
    Serial.print(armed ? 1 : 0);
    Serial.print(' ');
    Serial.print(queued);
    Serial.print(' ');
    Serial.print(fired);
    Serial.print(' ');
    Serial.print(errors);
    Serial.print(' ');
    Serial.print(micros());
    Serial.print('\n');
  }
}

// One byte at a time, so edges are serviced between bytes of a long burst of commands.
static void read_one() {
  int c = Serial.read();
  if (c < 0) return;
  if (c == '\n') {
    uint32_t rx_us = micros();  // the delay counts from here (documented in PROTOCOL.md)
    if (discarding) {
      discarding = false;
      reply_err(5, "line too long", false, 0);
    } else {
      line[len] = '\0';
      command(line, rx_us);
    }
    len = 0;
  } else if (c == '\r' || discarding) {
    // ignored
  } else if (len >= MAX_LINE) {
    discarding = true;
    len = 0;
  } else {
    line[len++] = (char)c;
  }
}

void setup() {
  pinMode(OUTPUT_PIN, OUTPUT);
  digitalWrite(OUTPUT_PIN, LOW);  // safe state from power-up on
  Serial.begin(BAUD);
  Serial.print("READY mimlsort-trigger ");
  Serial.print(PROTOCOL);
  Serial.print('\n');
}

void loop() {
  service();
  if (Serial.available() > 0) read_one();
}
