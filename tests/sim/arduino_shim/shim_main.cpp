// Runs an Arduino sketch on a PC: `sketch --fd N --record FILE` (the same arguments as
// trigger_emulator.py). Serial reads and writes the inherited descriptor (the device end of a
// pseudo-terminal); every digitalWrite is recorded as "pin <pin> <level> <monotonic_ns>".
// Between loop() passes it sleeps ~50 µs when there is no input, so it does not burn a core.
#include "Arduino.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <string>

void setup();
void loop();

SerialPort Serial;
static int fd_ = -1;
static FILE *record_ = nullptr;
static int64_t boot_ns_ = 0;
static unsigned char inbuf_[4096];
static size_t in_len_ = 0, in_pos_ = 0;
static std::string out_;

static int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

uint32_t micros() { return (uint32_t)((now_ns() - boot_ns_) / 1000); }

void pinMode(int, int) {}

void digitalWrite(int pin, int level) {
  fprintf(record_, "pin\t%d\t%d\t%lld\n", pin, level, (long long)now_ns());
  fflush(record_);
}

static void flush_out() {
  // a line at a time, like a USB CDC endpoint; a host that is not reading loses output (EAGAIN)
  while (!out_.empty()) {
    ssize_t n = write(fd_, out_.data(), out_.size());
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      out_.clear();
      return;
    }
    out_.erase(0, (size_t)n);
  }
}

void SerialPort::begin(unsigned long) {}

int SerialPort::available() {
  if (in_pos_ < in_len_) return (int)(in_len_ - in_pos_);
  ssize_t n = ::read(fd_, inbuf_, sizeof inbuf_);
  if (n <= 0) return 0;  // EAGAIN: nothing yet; EIO: no host has the port open
  in_len_ = (size_t)n;
  in_pos_ = 0;
  return (int)n;
}

int SerialPort::read() { return available() > 0 ? inbuf_[in_pos_++] : -1; }

int SerialPort::availableForWrite() { return 64; }

size_t SerialPort::write(uint8_t c) {
  out_ += (char)c;
  if (c == '\n') flush_out();
  return 1;
}

int main(int argc, char **argv) {
  const char *record = nullptr;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--fd") fd_ = atoi(argv[i + 1]);
    else if (a == "--record") record = argv[i + 1];
  }
  if (fd_ < 0 || record == nullptr) {
    fprintf(stderr, "usage: %s --fd N --record FILE\n", argv[0]);
    return 2;
  }
  termios t;
  if (tcgetattr(fd_, &t) == 0) {
    cfmakeraw(&t);
    tcsetattr(fd_, TCSANOW, &t);
  }
  int flags = fcntl(fd_, F_GETFL);
  fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
  record_ = fopen(record, "w");
  if (record_ == nullptr) return 2;
  boot_ns_ = now_ns();
  setup();
  for (;;) {
    loop();
    if (Serial.available() == 0) {
      timespec nap = {0, 50000};
      nanosleep(&nap, nullptr);
    }
  }
}
