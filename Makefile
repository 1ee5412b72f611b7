# Two commands: `make demo` (the main job) and `make test` (the suite).
# Both create .venv if missing and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a plain `torch` requirement could pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,ray]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/icr-interp reproduce

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_patching.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs
