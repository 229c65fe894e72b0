# vlrl: make install | test | test-pipeline | demo | install-gpu | bench
# CPU machines get the pinned CPU build of torch first (constraints-cpu.txt): a plain resolve of
# `torch` would pull the newest release and several GB of CUDA packages.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vlrl-installed
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0

.PHONY: install test test-pipeline demo install-gpu bench lint clean-tiny

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

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro --glob '*@tiny'
	@echo "report: $(CURDIR)/reports/tiny/report.md"

# On a CUDA machine: the GPU extras (Unsloth, bitsandbytes) into the current Python environment,
# with the same pinned trl/transformers/datasets/peft as the CPU path.
install-gpu:
	python -m pip install -e ".[gpu,dev]"

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: install
	$(BIN)/python -m ruff check src tests stages benchmarks
