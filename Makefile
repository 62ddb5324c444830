# Two commands for a fresh machine with Python 3.11:
#   make run    set up and start the app with the shipped models
#   make test   set up and run every test (lint, unit, app and browser tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.txt | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CHROMIUM := /usr/bin/chromium
# Where the app listens: this machine only by default; ADDRESS=0.0.0.0 serves the network (set up sign-in first).
ADDRESS ?= localhost

.PHONY: setup run test lint chromium

setup: $(STAMP)

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/streamlit run app.py --server.address $(ADDRESS)

# Debian's Chromium (browser tests) and poppler-utils (the PDF report tests read and render the PDF).
chromium:
	@[ -x $(CHROMIUM) ] && [ -x /usr/bin/pdftoppm ] || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup chromium lint
	$(BIN)/python -m pytest
