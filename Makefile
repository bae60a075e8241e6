# Two commands for a fresh machine: `make demo` and `make test`. Both create the virtual environment when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of this machine; elsewhere `make TORCH_SPEC=torch ...` takes whatever build suits the machine.
TORCH_SPEC ?= torch==2.13.0
# Datasets: ../shared/data on the development machines, else $TORCHBOP_DATA or ~/.cache/torchbop (downloaded).
ifneq ($(wildcard ../shared/data),)
TORCHBOP_DATA ?= $(abspath ../shared/data)
endif
export TORCHBOP_DATA

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest -q

# Extra flags for the demo run, e.g. `make demo DEMO_ARGS="--epochs 1 --no-progress"`.
DEMO_ARGS ?=

demo: install
	$(VENV)/bin/torchbop train --recipe mnist $(DEMO_ARGS)

clean:
	rm -rf $(VENV) runs results
