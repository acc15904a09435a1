# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= router.example.yaml
export TCP_NODELAY := 1

.PHONY: run test lint bench fuzz soak deps dcmtk clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

deps: $(VENV)/.installed

# Debian packages the suite talks to: DCMTK (reference DICOM peers: storescu, storescp,
# echoscu; Debian builds them with TLS), promtool (prometheus) and systemd-analyze
# (systemd) to check deploy/ files, openssl (an independent TLS client for tests/tls),
# Orthanc and its DICOMweb plugin (the STOW-RS server of tests/forward/stow; a tool is a
# command or a file), dciodvfy (dicom3tools: checks de-identified output against the
# IODs in tests/profiles), postgresql (tests/pg start a throwaway server of their own
# for the cluster queue).
SYSTEM_TOOLS := storescp:dcmtk promtool:prometheus systemd-analyze:systemd openssl:openssl \
  Orthanc:orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb \
  dciodvfy:dicom3tools pg_ctlcluster:postgresql
dcmtk:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  tool=$${pair%%:*}; { command -v $$tool || [ -e $$tool ]; } >/dev/null 2>&1 \
	    || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $$missing; fi

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

# The fuzzers of tests/fuzz with many examples, in rounds, for FUZZ_SECONDS in all
# (`make test` runs them once with the small smoke profile).
FUZZ_SECONDS ?= 60
fuzz: deps
	HYPOTHESIS_PROFILE=fuzz FUZZ_SECONDS=$(FUZZ_SECONDS) \
	  $(PY) -m pytest -q -s -p no:cacheprovider -o timeout=0 tests/fuzz

# Soak (not in CI): SOAK_MINUTES of mixed senders, flapping destinations and kill -9 of
# the router; prints sent/acknowledged/delivered/lost, RSS and descriptors over time.
SOAK_MINUTES ?= 30
soak: deps dcmtk
	SOAK_MINUTES=$(SOAK_MINUTES) $(PY) -m benchmarks.soak

clean:
	rm -rf $(VENV) var bench-results .mypy_cache .ruff_cache .pytest_cache
