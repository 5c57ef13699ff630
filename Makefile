# The two commands of the README, and the few a developer needs beside them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=

.PHONY: serve test install dev build bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstalls whenever the package metadata or a compiled source changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py $(wildcard fastmta/_ext/*.pyx)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

serve: install
	$(BIN)/fastmta serve $(if $(CONFIG),--config $(CONFIG))

test: dev
	$(BIN)/python -m pytest -q
	FASTMTA_NO_EXTENSIONS=1 $(BIN)/python -m pytest -q tests/ext tests/unit

bench: dev
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) build *.egg-info fastmta/_ext/*.c fastmta/_ext/*.so fastmta/_ext/*.html
