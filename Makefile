# cyxwiz — the two commands a newcomer needs are `make demo` and `make test`.
# Everything the project needs is installed from here: Python packages into .venv, Debian packages with
# apt-get when missing (infra/install-system-deps.sh).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-deps

.PHONY: all install system-deps test lint typecheck pytest demo bench clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# torch first, pinned: pip takes the CPU wheel from local disk instead of a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(SYSTEM_STAMP): infra/install-system-deps.sh | $(STAMP)
	bash infra/install-system-deps.sh
	touch $(SYSTEM_STAMP)

system-deps: $(SYSTEM_STAMP)

lint: install
	$(BIN)/ruff check cyxwiz tasks flows blocks agents infra tests bench
	$(BIN)/ruff format --check cyxwiz tasks flows blocks agents infra

typecheck: install
	$(BIN)/mypy cyxwiz tasks flows agents blocks infra

pytest: install system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: install system-deps
	$(BIN)/cyxwiz demo $(DEMO_ARGS)

bench: install system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache .hypothesis
