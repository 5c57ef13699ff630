# The two commands of the README, and the few a developer needs beside them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=

.PHONY: serve test install dev build bench fuzz clean

# Debian's python3 comes without venv and without the C headers the extensions build against;
# as root they are installed (python3-venv, python3-dev), otherwise the message says what to install.
HAS_VENV_AND_HEADERS := import ensurepip, os, sys, sysconfig; \
	sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))

$(BIN)/python:
	@$(PYTHON) -c '$(HAS_VENV_AND_HEADERS)' 2>/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing python3-venv and python3-dev"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-dev >/dev/null; \
	else \
		echo "fastmta needs Python's venv module and C headers: apt-get install python3-venv python3-dev" >&2; exit 1; \
	fi
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

# Coverage-guided fuzzing (tests/fuzz/README.md): each target, or those named in FUZZ_TARGETS, for
# FUZZ_SECONDS against its corpus in tests/fuzz/corpus/, which keeps the new inputs a run finds.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: dev
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m tests.fuzz $(FUZZ_TARGETS)

# Postfix is a peer, and its smtp-source and smtp-sink come with it: as root it is installed
# unconfigured, so no system-wide mail service starts; bench/postfix.py runs a private instance.
bench: dev
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@command -v postfix >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		echo "installing postfix (unconfigured) for its peers" && \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null; } || \
		echo "postfix is not installed: its targets will be skipped (apt-get install postfix)"
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) build *.egg-info fastmta/_ext/*.c fastmta/_ext/*.so fastmta/_ext/*.html
