# The two quick-start commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# numba's compiled kernels; mimlsort/jit.py keys them by the package source, so that a change to
# any of it (even to a file a kernel only calls into) recompiles them once
export NUMBA_CACHE_DIR := $(CURDIR)/$(VENV)/numba-cache

.PHONY: venv demo test bench model screenshot clean sim-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,dev,train,gui,basler,genicam,serial,visa]'
	touch $(STAMP)

venv: $(STAMP)

# synthetic camera -> tracker -> bundled model -> sort policy -> log trigger, event file + report
demo: $(STAMP)
	$(BIN)/mimlsort demo --seconds 3 --out out/demo

# one pytest worker per core, at most 4 (pytest-xdist): the suite took 11-13 min in one process on
# the 2-core CI machine, 6-7 in two. TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= auto
test: $(STAMP) sim-tools
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 \
		-n $(TEST_WORKERS) --maxprocesses 4

# Debian's avr-gcc, Arduino AVR core and simavr, for the tests that run the trigger firmware on a
# simulated Uno (tests/sim/avr_harness.c). Installed when this runs as root with apt (CI, the dev
# VM); elsewhere those tests skip and say which package is missing.
SIM_TOOLS := gcc-avr avr-libc binutils-avr arduino-core-avr libsimavr-dev
sim-tools:
	@if command -v avr-g++ >/dev/null && [ -e /usr/include/simavr/sim_avr.h ] && \
		[ -e /usr/share/arduino/hardware/arduino/avr/cores/arduino/Arduino.h ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		timeout 600 apt-get install -y -q --no-install-recommends $(SIM_TOOLS) >/dev/null 2>&1 || \
		{ timeout 300 apt-get update -q >/dev/null 2>&1 && \
		  timeout 600 apt-get install -y -q --no-install-recommends $(SIM_TOOLS) >/dev/null 2>&1; } || \
		echo "sim-tools: could not install $(SIM_TOOLS); the simulated-Uno tests will skip"; \
	else echo "sim-tools: not root or no apt-get; the simulated-Uno tests will skip"; fi

# the figures in BENCHMARKS.md (run on a quiet machine)
bench: $(STAMP)
	for b in tracking tracking-accuracy synthetic recording inference storage trigger sorting pipeline clock-map pulse-timing camera sort-modes; do \
		$(BIN)/mimlsort bench $$b --json || exit 1; done
	QT_QPA_PLATFORM=offscreen $(BIN)/mimlsort bench gui --seconds 10 --json

# regenerate the bundled demonstration model (simulated cells only; ~5 min on one core)
model: $(STAMP)
	$(BIN)/mimlsort train --simulated --sim-seconds 60 --sim-seed 1 --arch miml-mini --epochs 40 --folds 5 \
		--test-fraction 0.2 --seed 0 --out inference/models --name miml-mini-demo --replace --no-progress

screenshot: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/mimlsort gui --screenshot docs/screenshot.png --seconds 6

clean:
	rm -rf $(VENV) out build *.egg-info
