// Runs an AVR firmware image in simavr, in real time, with UART0 on an inherited descriptor:
//   avr_harness FIRMWARE.elf --fd N --record FILE [--mcu atmega328p] [--freq 16000000] [--pin D7]
// The same arguments as trigger_emulator.py and the PC build of the sketch, so emulated_port()
// runs any of the three on the device end of a pseudo-terminal.
//
// simavr executes the real machine code cycle by cycle: the Arduino core's timer-0 micros(), the
// UART at its baud rate (a 20-byte command takes 1.7 ms at 115200), interrupts and the 2 KB of RAM.
// The simulation is held back to the wall clock (never ahead of it), so a host talking to it sees
// a device running at its true speed, and falls behind only when this machine cannot keep up
// (reported on exit). Input is held until the simulation reaches the time it arrived, so a lag
// delays the device's replies and pulses but never moves them earlier. Every change of the watched pin is recorded as
//   pin <arduino pin> <level> <host monotonic ns> <device ns since reset>
// the host time being when the simulation reached the edge (never before the true edge), the
// device time exact to one cycle; and every line the firmware received (see udr_tap).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "avr_ioport.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"

static int fd_ = -1;
static FILE *record_ = NULL;
static avr_t *avr_ = NULL;
static int xon_ = 1;
static int arduino_pin_ = 7;
static volatile sig_atomic_t running_ = 1;
static unsigned char out_[512];
static size_t out_len_ = 0;
static int64_t wall0_ = 0;
static int64_t max_lag_ns_ = 0;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t sim_ns(void) { return (int64_t)(avr_->cycle * 1000000000ULL / avr_->frequency); }

static void flush_out(void) {
  size_t done = 0;
  while (done < out_len_) {
    ssize_t n = write(fd_, out_ + done, out_len_ - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // a host that is not reading loses output, as with a USB bridge
    done += (size_t)n;
  }
  out_len_ = 0;
}

static const char *record_path_ = NULL;
static char record_tmp_[4096];

// A byte the firmware finished sending: lines go to the host as they complete. The first one
// (READY) means setup() has enabled the UART; only now does the record file appear under its
// name, which is what tells emulated_port() the device is up (bytes sent earlier would be lost,
// as they are on a real board while its bootloader runs).
static void uart_out(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq, (void)param;
  if (record_tmp_[0]) {
    rename(record_tmp_, record_path_);
    record_tmp_[0] = 0;
  }
  out_[out_len_++] = (unsigned char)value;
  if (value == '\n' || out_len_ == sizeof out_) flush_out();
}

static void uart_xon(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq, (void)value, (void)param;
  xon_ = 1;
}

static void uart_xoff(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq, (void)value, (void)param;
  xon_ = 0;
}

static void pin_change(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq, (void)param;
  fprintf(record_, "pin\t%d\t%u\t%lld\t%lld\n", arduino_pin_, value & 1, (long long)now_ns(), (long long)sim_ns());
  fflush(record_);
}

// Every byte the firmware takes from UDR0 (its receive interrupt does, within a few µs of the
// stop bit): each whole line is recorded with the device time its newline was taken,
//   rx <host monotonic ns> <device ns since reset> <line>
// so a pulse can be measured against the end of its own command, as a scope on TX and the pin would.
static avr_io_read_t udr_read_ = NULL;
static void *udr_param_ = NULL;
static char rx_line_[128];
static size_t rx_len_ = 0;

static uint8_t udr_tap(struct avr_t *avr, avr_io_addr_t addr, void *param) {
  (void)param;
  uint8_t v = udr_read_(avr, addr, udr_param_);
  if (v == '\n') {
    rx_line_[rx_len_] = 0;
    fprintf(record_, "rx\t%lld\t%lld\t%s\n", (long long)now_ns(), (long long)sim_ns(), rx_line_);
    fflush(record_);
    rx_len_ = 0;
  } else if (v != '\r' && rx_len_ < sizeof rx_line_ - 1) {
    rx_line_[rx_len_++] = (char)v;
  }
  return v;
}

static void stop(int sig) {
  (void)sig;
  running_ = 0;
}

static int usage(const char *why) {
  fprintf(stderr, "avr_harness: %s\nusage: avr_harness FIRMWARE.elf --fd N --record FILE "
                  "[--mcu atmega328p] [--freq 16000000] [--pin D7]\n", why);
  return 2;
}

int main(int argc, char **argv) {
  const char *firmware = NULL, *record = NULL, *mcu = "atmega328p", *pin = "D7";
  unsigned long freq = 16000000UL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--fd") && i + 1 < argc) fd_ = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--record") && i + 1 < argc) record = argv[++i];
    else if (!strcmp(argv[i], "--mcu") && i + 1 < argc) mcu = argv[++i];
    else if (!strcmp(argv[i], "--freq") && i + 1 < argc) freq = strtoul(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--pin") && i + 1 < argc) pin = argv[++i];
    else if (argv[i][0] != '-' && firmware == NULL) firmware = argv[i];
    else return usage("unknown or incomplete argument");
  }
  if (firmware == NULL || record == NULL || fd_ < 0) return usage("FIRMWARE, --fd and --record are required");
  // Arduino Uno numbering: pins 0-7 are port D, 8-13 port B (enough for the output pin's choices)
  char port = pin[0];
  int bit = atoi(pin + 1);
  if ((port != 'B' && port != 'C' && port != 'D') || bit < 0 || bit > 7) return usage("--pin is a port letter B/C/D and a bit, e.g. D7");
  arduino_pin_ = port == 'D' ? bit : port == 'B' ? 8 + bit : 14 + bit;

  dup2(2, 1);  // simavr prints its loader messages on stdout: keep stdout for the caller's own output
  elf_firmware_t fw;
  memset(&fw, 0, sizeof fw);
  if (elf_read_firmware(firmware, &fw) != 0) {
    fprintf(stderr, "avr_harness: cannot read firmware %s\n", firmware);
    return 1;
  }
  strncpy(fw.mmcu, mcu, sizeof fw.mmcu - 1);
  fw.frequency = (uint32_t)freq;
  avr_ = avr_make_mcu_by_name(fw.mmcu);
  if (avr_ == NULL) {
    fprintf(stderr, "avr_harness: unknown MCU %s\n", mcu);
    return 1;
  }
  avr_init(avr_);
  avr_->log = LOG_ERROR;
  avr_load_firmware(avr_, &fw);

  uint32_t flags = 0;  // no console echo of the UART, no host sleeps inside simulated polling
  avr_ioctl(avr_, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
  flags &= ~(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
  avr_ioctl(avr_, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
  avr_irq_t *rx = avr_io_getirq(avr_, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
  avr_irq_register_notify(avr_io_getirq(avr_, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT), uart_out, NULL);
  avr_irq_register_notify(avr_io_getirq(avr_, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), uart_xon, NULL);
  avr_irq_register_notify(avr_io_getirq(avr_, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), uart_xoff, NULL);
  avr_irq_register_notify(avr_io_getirq(avr_, AVR_IOCTL_IOPORT_GETIRQ(port), bit), pin_change, NULL);
  const avr_io_addr_t udr = AVR_DATA_TO_IO(0xC6);  // UDR0 of the ATmega48/88/168/328 family
  udr_read_ = avr_->io[udr].r.c;
  udr_param_ = avr_->io[udr].r.param;
  if (udr_read_ != NULL) {
    avr_->io[udr].r.c = udr_tap;
    avr_->io[udr].r.param = NULL;
  }

  fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
  record_path_ = record;
  snprintf(record_tmp_, sizeof record_tmp_, "%s.boot", record);
  record_ = fopen(record_tmp_, "w");
  if (record_ == NULL) {
    perror(record_tmp_);
    return 1;
  }
  signal(SIGTERM, stop);
  signal(SIGINT, stop);

  unsigned char in[256];
  size_t in_len = 0, in_pos = 0;
  int64_t in_at = 0;  // device ns at which the bytes in `in` arrived
  const avr_cycle_count_t slice = avr_->frequency / 20000;  // check the host every 50 simulated µs
  avr_cycle_count_t next = slice;
  int state = cpu_Running;
  wall0_ = now_ns();
  while (running_ && state != cpu_Done && state != cpu_Crashed) {
    state = avr_run(avr_);
    if (avr_->cycle < next) continue;
    next = avr_->cycle + slice;
    if (in_pos == in_len) {
      ssize_t n = read(fd_, in, sizeof in);
      in_len = n > 0 ? (size_t)n : 0;
      in_pos = 0;
      in_at = now_ns() - wall0_;
    }
    // Bytes reach the UART no sooner, on the device's clock, than they reached this process: a
    // simulation running behind the wall clock would otherwise see a command early and, once it
    // caught up, fire its pulse early by the lag.
    if (sim_ns() >= in_at)
      while (xon_ && in_pos < in_len) avr_raise_irq(rx, in[in_pos++]);  // the UART times each byte at its baud rate
    int64_t lag = now_ns() - wall0_ - sim_ns();
    if (lag < 0) {  // ahead of the wall clock: wait, waking at once if the host writes
      struct timespec ts = {0, (long)-lag};
      struct pollfd p = {fd_, POLLIN, 0};
      ppoll(&p, in_pos == in_len ? 1 : 0, &ts, NULL);  // bytes held back by XOFF: just wait
    } else if (lag > max_lag_ns_) {
      max_lag_ns_ = lag;
    }
  }
  flush_out();
  fprintf(stderr, "avr_harness: %s after %.3f s simulated, at most %.3f ms behind the wall clock\n",
          state == cpu_Crashed ? "crashed" : "stopped", sim_ns() / 1e9, max_lag_ns_ / 1e6);
  fclose(record_);
  return state == cpu_Crashed ? 1 : 0;
}
