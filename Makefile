# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use (scripts/setup-env.sh).

VENV ?= .venv
SELFSUP := $(VENV)/bin/selfsup
DEMO_RUN ?= runs/demo

.PHONY: setup setup-ffcv slurm-up slurm-down demo test test-fast lint format clean

setup:
	@scripts/setup-env.sh

# ffcv needs apt packages (libturbojpeg, OpenCV core/imgproc) and a C++ build.
setup-ffcv: setup
	@scripts/install-ffcv.sh

# Small SimCLR pretraining on CIFAR-10, then the linear-probe report (5-12 min on 2 CPU cores:
# 5 on an AMD EPYC with AVX-512 BF16, 12 on an Intel Xeon; see docs/demo.md).
demo: setup
	$(SELFSUP) train configs/demo.yaml run_dir=$(DEMO_RUN)
	$(SELFSUP) probe $(DEMO_RUN)

# The SLURM tests run against the local cluster of slurm/dev-cluster.sh (started
# here when possible: it needs root and apt; two nodes need network namespaces,
# else one) and never another one.
test: setup
	@scripts/install-ffcv.sh || echo "make test: could not install ffcv (needs apt); its tests will be skipped"
	@slurm/dev-cluster.sh start --nodes 2 2>/dev/null || slurm/dev-cluster.sh start 2>/dev/null || echo "make test: no local SLURM cluster (needs root); its tests will be skipped"
	SLURM_CONF=$$(slurm/dev-cluster.sh conf) $(VENV)/bin/python -m pytest

# A two-node SLURM cluster on this machine, to try `selfsup submit` (needs root;
# `slurm/dev-cluster.sh start` for one node on loopback).
slurm-up:
	@slurm/dev-cluster.sh start --nodes 2
	@echo "now: export SLURM_CONF=$$(slurm/dev-cluster.sh conf)"

slurm-down:
	@slurm/dev-cluster.sh stop

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	scripts/typecheck.sh

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf runs .pytest_cache .ruff_cache
