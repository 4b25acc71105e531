# MedSeg: two commands do everything.
#   make serve   install (once), prepare the sample studies, start the server
#   make test    install (once), run the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
WORK ?= work
STUDIES ?= $(WORK)/studies
N_SUBJECTS ?= 8
HOST ?= 127.0.0.1
PORT ?= 8000
CONF ?=
BIN := $(abspath $(VENV))/bin

.PHONY: install data serve test clean-work

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $@

# The browser client's NiiVue, from the npm registry as web/package-lock.json pins it.
web/node_modules/.installed: web/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd web && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "npm not found: the browser client (/viewer/) needs Node.js and npm (Debian: apt-get install nodejs npm)"; \
	fi

install: $(VENV)/.installed web/node_modules/.installed

data: install
	$(BIN)/python -m medseg.data.pseudo_subjects --n $(N_SUBJECTS) --seed 2000 \
		--out $(WORK)/pseudo-subjects/studies --studies $(STUDIES)

serve: data
	@echo "MedSeg: open http://$(HOST):$(PORT)/viewer/ in a browser (3D Slicer: MedSeg module (slicer_extension/) or MONAI Label module -> http://$(HOST):$(PORT)/; curl http://$(HOST):$(PORT)/info/)"
	PATH="$(BIN):$$PATH" monailabel start_server --app apps/medseg --studies $(STUDIES) \
		--host $(HOST) --port $(PORT) $(CONF)

test: install
	$(BIN)/python -m pytest -ra --durations=25

clean-work:
	rm -rf $(WORK)
