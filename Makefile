# batchcam: `make book` builds the HTML book, `make test` runs every test.
# Needs only GNU make, bash and python3; everything else goes into .venv/.
# Fast when nothing changed: the venv is reinstalled only when requirements.txt or
# pyproject.toml is newer than the stamp .venv/.installed, and prepare-data only re-verifies
# when data/ is complete.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
REPORTS := _build/test-reports
# Full-page screenshots of `make browser-test` (empty: none).
SHOTS   ?= /tmp/shots

# Wall-clock timing of each phase (python3 is the only thing we can rely on).
CLOCK   := $(PYTHON) -c "import time; print(time.time())"
ELAPSED := $(PYTHON) -c "import sys, time; print('%.1f s' % (time.time() - float(sys.argv[1])))"

.PHONY: help venv data book test browser-test notebooks clean distclean

help:
	@echo "make book       build the HTML book into _build/html (creates .venv and data/ if needed)"
	@echo "make test       run tests/ and validate the notebooks with nbval"
	@echo "make browser-test  build the book, check every page in headless Chromium at 1400 and 390 px"
	@echo "                (needs: apt-get install chromium); screenshots to SHOTS=$(SHOTS)"
	@echo "make venv       create .venv and install requirements + the package (editable)"
	@echo "make data       fetch and verify MNIST / Fashion-MNIST into data/"
	@echo "make notebooks  re-execute the book's notebooks in place (refresh stored outputs)"
	@echo "make clean      remove build outputs and caches (keeps .venv and data/)"
	@echo "make distclean  clean, and also remove .venv"

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@t0=$$($(CLOCK)); \
	if [ ! -x $(PY) ]; then $(PYTHON) -m venv $(VENV); fi; \
	$(PY) -m pip install -r requirements.txt; \
	$(PY) -m pip install -e . --no-deps; \
	touch $@; \
	echo "[make] venv: $$($(ELAPSED) $$t0)"

data: venv
	@t0=$$($(CLOCK)); \
	$(PY) -m batchcam prepare-data; \
	echo "[make] data: $$($(ELAPSED) $$t0)"

book: venv data
	@t0=$$($(CLOCK)); \
	$(VENV)/bin/jupyter-book build -W --keep-going .; \
	echo "[make] book: $$($(ELAPSED) $$t0) -> _build/html/index.html"

# Both suites always run (so one report shows every failure); the target fails if either
# failed. nbval's exit code 5 ("no tests collected": no notebook in book/ yet) is success;
# any other non-zero code is a failure. The last line sums up both runs.
test: venv data
	@mkdir -p $(REPORTS); rm -f $(REPORTS)/*.xml; status=0; \
	t0=$$($(CLOCK)); rc=0; \
	$(PY) -m pytest tests/ -q --junitxml=$(REPORTS)/unit.xml || rc=$$?; \
	echo "[make] unit tests: $$($(ELAPSED) $$t0) (exit $$rc)"; \
	if [ $$rc -ne 0 ]; then status=1; fi; \
	t0=$$($(CLOCK)); rc=0; \
	$(PY) -m pytest --nbval book/ -q --junitxml=$(REPORTS)/notebooks.xml || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "[make] nbval: no notebook collected in book/ (exit 5, accepted)"; rc=0; fi; \
	echo "[make] notebook tests: $$($(ELAPSED) $$t0) (exit $$rc)"; \
	if [ $$rc -ne 0 ]; then status=1; fi; \
	$(PY) scripts/test_summary.py $(REPORTS)/*.xml || true; \
	exit $$status

# The built book in a real browser (tests/browser/): raw TeX, MathJax served locally, images,
# overflow, internal links, Colab links. Playwright drives the system Chromium; missing
# prerequisites fail here instead of skipping (BATCHCAM_BROWSER_TEST=required).
browser-test: book
	@mkdir -p $(REPORTS); t0=$$($(CLOCK)); rc=0; \
	BATCHCAM_BROWSER_TEST=required BATCHCAM_SHOTS="$(SHOTS)" \
	  $(PY) -m pytest tests/browser -q --junitxml=$(REPORTS)/browser.xml || rc=$$?; \
	echo "[make] browser test: $$($(ELAPSED) $$t0) (exit $$rc)$(if $(SHOTS), screenshots in $(SHOTS))"; \
	exit $$rc

notebooks: venv data
	@t0=$$($(CLOCK)); \
	$(PY) scripts/refresh_notebooks.py; \
	echo "[make] notebooks: $$($(ELAPSED) $$t0)"

clean:
	rm -rf _build .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
