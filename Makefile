# The two quick-start commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench model clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,train,gui,basler,genicam,serial,visa]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mimlsort demo --seconds 2 --out out/demo

test: $(STAMP)
	NUMBA_CACHE_DIR=$(CURDIR)/.venv/numba-cache $(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/mimlsort bench tracking

clean:
	rm -rf $(VENV) out build *.egg-info
