# make test  — create .venv if missing, install the pinned dependencies, fetch the data, run pytest.
# make book  — execute every notebook (papermill, PRESET=cpu by default) and build the Jupyter Book.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= cpu
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
GENERATED := book/generated

.PHONY: test book data install clean

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

book: $(STAMP) data
	mkdir -p $(GENERATED)
	for nb in $(NOTEBOOKS); do \
	  echo "executing $$nb (preset $(PRESET))"; \
	  $(VENV)/bin/papermill --cwd . "$$nb" "$(GENERATED)/$$(basename $$nb)" -p preset $(PRESET); \
	done
	$(VENV)/bin/jupyter-book build book/ --path-output . -W -n --keep-going

clean:
	rm -rf _build $(GENERATED)
