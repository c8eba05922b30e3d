# The two commands of the README: `make demo` (the main job end to end) and `make test`.
# Each creates or updates the virtual environment in .venv itself.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rgops-installed
# torch is installed first, from a CPU build, or pip resolves a multi-GB CUDA build through the
# other dependencies. On a machine without the local wheel, point TORCH_INDEX at PyTorch's CPU index
# (CI does: TORCH_INDEX="--extra-index-url https://download.pytorch.org/whl/cpu").
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test install bench clean-demo

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" setuptools wheel
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_INDEX)
	$(PY) -m pip install -q -c constraints.txt -e ".[test]" $(TORCH_INDEX)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rgops demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Every benchmark that runs on CPU with its defaults. Not here: the GPU checks (train_gpu.py,
# train_profile.py: `bash bench/gpu_check.sh` on a CUDA machine), gan_phenotype.py (it takes an
# ingested cohort and a run name: see its docstring) and the serving harness (a helper module).
NOT_DEFAULT_BENCH := bench/train_gpu.py bench/train_profile.py bench/gan_phenotype.py bench/_serving_harness.py
bench: $(STAMP)
	for b in $(filter-out $(NOT_DEFAULT_BENCH),$(wildcard bench/*.py)); do $(PY) $$b || exit 1; done

clean-demo:
	rm -rf demo-output
