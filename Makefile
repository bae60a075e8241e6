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

.PHONY: install test demo train-mnist clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# One worker per CPU core (the tests run one thread each); a test file stays on one worker, so that its fixtures are
# built once. Plain `pytest` runs the same tests in one process.
test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q -n auto --dist loadfile

# `make demo`: the paper's four experiments at the quick profile (under 15 minutes on a 2-core CPU), then the report
# reports/quick/REPORT.md. Runs already in results/quick are reused. PROFILE=paper runs the published scale (days).
# PROFILE=cpu is the published scale where a CPU allows it (about 20 CPU-hours on 2 cores; killed runs resume when run again):
#   make demo PROFILE=cpu JOBS=1 THREADS=1 EXPERIMENTS="cifar10 arbitrary-lr hyperparameters approximation"
PROFILE ?= quick
JOBS ?= 2
THREADS ?=
EXPERIMENTS ?= approximation arbitrary-lr hyperparameters cifar10

demo: install
	for e in $(EXPERIMENTS); do $(VENV)/bin/torchbop experiment $$e --profile $(PROFILE) --jobs $(JOBS) $(if $(THREADS),--threads $(THREADS)) --download || exit 1; done
	$(VENV)/bin/torchbop report --profile $(PROFILE)

# The MNIST BNN trained with Bop from one command; extra flags through DEMO_ARGS="--epochs 1".
DEMO_ARGS ?=

train-mnist: install
	$(VENV)/bin/torchbop train --recipe mnist --download $(DEMO_ARGS)

# `make gpu-check`: the CUDA tests (`pytest -m gpu`), the benchmarks with --device cuda and a time-boxed cifar10 run, in
# under 8 minutes, results in GPU_CHECK_OUT (summary.md). Installs nothing (a GPU machine may have no package index):
# the interpreter is GPU_PYTHON, torchbop comes from src/. Without CUDA it is the dry run on CPU (about 2 minutes).
# More flags through GPU_CHECK_ARGS, e.g. "--only tests,train" or "--list" (benchmarks/gpu_check.py --help).
GPU_CHECK_OUT ?= results/gpu-check
GPU_CHECK_ARGS ?=
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))

.PHONY: gpu-check
gpu-check:
	PYTHONPATH=src $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs results
