# `make demo` and `make test` are all the set-up a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
M2KD := $(VENV)/bin/m2kd
STAMP := $(VENV)/.installed-stamp
DEMO := runs/demo

.PHONY: install demo data test test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The on-device story: ship a model of digits 0-7, then teach it 8 and 9 on the device
# from two folders of images, with no old image anywhere; check, then predict.
demo: $(STAMP)
	rm -rf $(DEMO)
	$(M2KD) train --dataset mnist5k --order-seed -1 --base-classes 8 --steps 1 --no-progress \
		--out $(DEMO)
	$(M2KD) samples --dataset mnist5k --split train --classes 8,9 --per-class 200 --out $(DEMO)/new
	$(M2KD) samples --dataset mnist5k --split test --per-class 50 --out $(DEMO)/val
	$(M2KD) add-classes $(DEMO)/bundle.safetensors --data $(DEMO)/new --val $(DEMO)/val \
		--no-progress
	$(M2KD) verify $(DEMO)/bundle.safetensors
	$(M2KD) inspect $(DEMO)/bundle.safetensors
	$(M2KD) samples --dataset mnist5k --per-class 1 --flat --out $(DEMO)/heldout
	$(M2KD) predict $(DEMO)/bundle.safetensors $(DEMO)/heldout

# Debian's Fashion-MNIST (70,000 images) for the fashion presets; never needed by `make test`.
data:
	@test -d /usr/share/datasets/fashion-mnist || \
		(apt-get update && apt-get install -y dataset-fashion-mnist) || \
		echo "could not install dataset-fashion-mnist; install it as root, or pass --root"

test: $(STAMP)
	$(VENV)/bin/ruff check runtime trainer export tests benchmarks
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check runtime trainer export tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
