# vlrl: make install | test | test-pipeline | test-gpu-contract | demo | ablate | install-gpu | gpu-smoke | bench
# CPU machines get the pinned CPU build of torch first (constraints-cpu.txt): a plain resolve of
# `torch` would pull the newest release and several GB of CUDA packages.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vlrl-installed
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0

.PHONY: install test test-pipeline test-gpu-contract demo ablate install-gpu gpu-smoke bench lint clean-tiny

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0" -c constraints-cpu.txt
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q

# The full tiny pipeline under dvc in a temporary git repo (selectivity, metrics diff), the stages as
# several processes (DDP, DeepSpeed on CPU) and a queued sweep, marked slow. DeepSpeed comes from the
# `deepspeed` extra; its first run on a machine compiles a CPU communication op (about 90 s, cached).
test-pipeline: install $(VENV)/.vlrl-deepspeed
	$(BIN)/python -m pytest -q -m slow

$(VENV)/.vlrl-deepspeed: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e ".[deepspeed]"
	touch $@

# Our GPU-path calls checked against the real pinned Unsloth/TRL and pip's resolver, on a CPU (marker
# `contract`; downloads the pinned wheels from PyPI; a few minutes): tests/test_gpu_contract.py,
# tests/test_install_gpu.py.
test-gpu-contract: install
	$(BIN)/python -m pytest -q -m contract

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro --glob '*@tiny'
	@echo "report: $(CURDIR)/reports/tiny/report.md"

# The λ ablations and seeds of the tiny profile as queued DVC experiments (params.yaml and the workspace stay
# as they are); writes reports/ablations_tiny.md. About 10 minutes on 2 cores. ABLATE_ARGS="--jobs 2" etc.
ablate: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/vlrl ablate --profile tiny $(ABLATE_ARGS)

# On a CUDA machine: the GPU extras (Unsloth, bitsandbytes) into the current Python environment
# ($(GPU_PYTHON)), with the same pinned trl/transformers/datasets/peft as the CPU path, KEEPING the
# installed torch (scripts/install_gpu.py says why and how). DRY_RUN=1: resolve only, print pip's plan.
GPU_PYTHON ?= python
install-gpu:
	$(GPU_PYTHON) scripts/install_gpu.py $(if $(filter-out 0 no false,$(DRY_RUN)),--dry-run)

# The first thing to run on a new GPU box: every full-profile code path end to end, offline, in minutes
# (vlrl.gpu_smoke). Uses $(GPU_PYTHON) when vlrl is installed there, else this checkout's venv; without
# CUDA it exits at once with one line saying so.
gpu-smoke:
	@py="$(GPU_PYTHON)"; "$$py" -c "import vlrl" 2>/dev/null || py="$(BIN)/python"; \
	if [ ! -x "$$(command -v "$$py")" ]; then \
	  echo "gpu-smoke: needs a CUDA machine with vlrl and its GPU extras installed (make install-gpu)" >&2; exit 2; fi; \
	"$$py" -m vlrl.gpu_smoke

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: install
	$(BIN)/python -m ruff check src tests stages benchmarks
