# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= router.example.yaml
export TCP_NODELAY := 1

.PHONY: run test lint bench deps dcmtk clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

deps: $(VENV)/.installed

# Debian's DCMTK provides the reference peers (storescu, storescp, echoscu).
dcmtk:
	@command -v storescp >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dcmtk; }

run: deps
	$(VENV)/bin/dicom-router run --config $(CONFIG)

test: deps dcmtk
	$(PY) -m ruff check router tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider

lint: deps
	$(PY) -m ruff check router tests benchmarks
	$(PY) -m ruff format --check router tests benchmarks
	$(PY) -m mypy

bench: deps dcmtk
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) var bench-results .mypy_cache .ruff_cache .pytest_cache
