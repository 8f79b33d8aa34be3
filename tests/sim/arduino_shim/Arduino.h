// A minimal Arduino API for building the mimlsort_trigger sketch on a PC (Linux/macOS), so the
// test suite runs the firmware's own code on the device end of a pseudo-terminal. Only what the
// sketch uses: micros(), pinMode/digitalWrite (recorded to a file with CLOCK_MONOTONIC times,
// the same clock the host driver uses) and a byte-wise Serial over an inherited file descriptor
// (written out a line at a time, like a USB CDC endpoint).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HIGH 1
#define LOW 0
#define OUTPUT 1
#define INPUT 0
#define LED_BUILTIN 13

uint32_t micros();
void pinMode(int pin, int mode);
void digitalWrite(int pin, int level);

class SerialPort {
 public:
  void begin(unsigned long baud);
  int available();
  int read();
  int availableForWrite();
  size_t write(uint8_t c);
};

extern SerialPort Serial;
