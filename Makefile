# make test  — create .venv if missing, install the pinned dependencies, fetch the data, run pytest.
# make book  — execute every notebook (papermill, PRESET=cpu by default, training nothing) and build the Jupyter Book.
# make reproduce — train every run missing at PRESET (hours, resumable), then build the book.
# make book-check — headless Chromium, offline, checks that MathJax typeset every formula of the
#               built book (BOOK_CHECK_PAGES must pass; every other page with math is checked too).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= cpu
# In this order: the tables train what they need; explore, reproduction and comparison read it.
NOTEBOOKS := $(foreach nb,table2 table3 table4 table5 table6 figure1 explore reproduction comparison,notebooks/$(nb).ipynb)
GENERATED := book/generated
# MathJax 3, vendored from the npm registry (tools/vendor_mathjax.py) and served from the build.
MATHJAX := _vendor/mathjax
# Pages the browser check must find typeset (relative to _build/html); add a table page here.
BOOK_CHECK_PAGES ?= theory.html generated/table3.html

.PHONY: test book reproduce book-check mathjax data install clean

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=... to another 3.11 interpreter)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m crc_core.data fetch

test: $(STAMP) data
	$(PY) -m pytest

# Fetched once (npm pack, integrity-checked); a no-op when the pinned version is there.
mathjax: $(STAMP)
	$(PY) tools/vendor_mathjax.py --dest $(MATHJAX)

# At PRESET=cpu (the default) the notebooks show the committed results and released weights as
# they are and train nothing (a missing run is shown as missing). At any other preset (smoke:
# what CI runs) they train what is missing, into $(CRC_RESULTS_DIR) when that is set.
TRAIN_MISSING := $(if $(filter cpu,$(PRESET)),,--train-missing)
# At smoke (tiny runs) and at cpu (nothing is trained) a cell that runs for half an hour is a
# hang (seen once: a lost kernel message left `make book` idle for good): fail instead of waiting.
CELL_TIMEOUT := $(if $(filter smoke cpu,$(PRESET)),--cell-timeout 1800,)

book: $(STAMP) data mathjax
	$(PY) tools/execute_notebooks.py --preset $(PRESET) $(TRAIN_MISSING) $(CELL_TIMEOUT) --out $(GENERATED) $(NOTEBOOKS)
	$(VENV)/bin/jupyter-book build book/ --path-output . -W -n --keep-going

# Train every missing run of the preset (hours at cpu; resumable: run it again after an
# interruption), then build the book.
reproduce: $(STAMP) data mathjax
	$(PY) tools/execute_notebooks.py --preset $(PRESET) --train-missing --out $(GENERATED) $(NOTEBOOKS)
	$(VENV)/bin/jupyter-book build book/ --path-output . -W -n --keep-going

book-check: $(STAMP)
	$(PY) tools/check_math_render.py --build _build/html --all-math $(BOOK_CHECK_PAGES)

clean:
	rm -rf _build $(GENERATED)
