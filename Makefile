# `make demo` and `make test` are all the set-up a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
M2KD := $(VENV)/bin/m2kd
STAMP := $(VENV)/.installed-stamp
DEMO := runs/demo

.PHONY: install demo test test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(M2KD) train --dataset mnist5k --base-classes 2 --increment 2 --epochs 10 --out $(DEMO)
	$(M2KD) verify $(DEMO)/bundle.safetensors
	$(M2KD) inspect $(DEMO)/bundle.safetensors
	$(M2KD) samples --dataset mnist5k --per-class 1 --flat --out $(DEMO)/heldout
	$(M2KD) predict $(DEMO)/bundle.safetensors $(DEMO)/heldout

test: $(STAMP)
	$(VENV)/bin/ruff check runtime trainer export tests benchmarks
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check runtime trainer export tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
