# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv if missing, install, run the toy-world pipeline (posttrain demo)
#   make test   - create .venv if missing, install, run the test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.posttrain-installed
# CPU machines get the pinned CPU wheel; a machine with an NVIDIA driver gets the default (CUDA) build.
# A torch already present in the venv (e.g. the user's own CUDA build) is kept.
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(VENV)/bin/posttrain demo

test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks.run

clean:
	rm -rf runs .posttrain .pytest_cache
