# The two quick-start commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NUMBA_CACHE_DIR := $(CURDIR)/$(VENV)/numba-cache

.PHONY: venv demo test bench model screenshot clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,train,gui,basler,genicam,serial,visa]'
	touch $(STAMP)

venv: $(STAMP)

# synthetic camera -> tracker -> bundled model -> sort policy -> log trigger, event file + report
demo: $(STAMP)
	$(BIN)/mimlsort demo --seconds 3 --out out/demo

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -p no:cacheprovider

# the figures in BENCHMARKS.md (run on a quiet machine)
bench: $(STAMP)
	for b in tracking synthetic recording inference storage trigger sorting pipeline camera sort-modes; do \
		$(BIN)/mimlsort bench $$b --json || exit 1; done
	QT_QPA_PLATFORM=offscreen $(BIN)/mimlsort bench gui --seconds 10 --json

# regenerate the bundled demonstration model (simulated cells only; ~15 min on one core)
model: $(STAMP)
	$(BIN)/mimlsort train --simulated --sim-seconds 60 --sim-seed 1 --arch miml-mini --epochs 40 --folds 5 \
		--test-fraction 0.2 --seed 0 --out inference/models --name miml-mini-demo --no-progress

screenshot: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/mimlsort gui --screenshot docs/screenshot.png --seconds 6

clean:
	rm -rf $(VENV) out build *.egg-info
