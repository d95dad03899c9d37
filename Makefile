# kioskvoice: every target installs what it needs on a fresh Debian 12 / Raspberry Pi OS machine
# (apt packages via sudo when not root, a virtualenv in .venv), then runs. Re-runs skip work that
# is already done: the venv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := portaudio19-dev libspeexdsp-dev libsystemd-dev swig pkg-config gcc \
	python3-dev python3-venv espeak-ng systemd-journal-remote libsoxr-dev shellcheck \
	prometheus prometheus-node-exporter
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help system-deps venv demo test lint bench fuzz clean hw-test hw-test-sim image-check \
	image-lock
SHELL_SCRIPTS := image/install-into image/check image/build

help:
	@echo "make demo   - the whole kiosk against the embedded Realtime simulator (no network/hardware)"
	@echo "make test   - install everything, then lint and run the test suite"
	@echo "make bench  - print speed and quality figures"
	@echo "make fuzz   - the property-based fuzz tests, for longer"
	@echo "make hw-test - hardware tests on a kiosk (every test skips off-device, saying why)"
	@echo "make image-check - install and run a turn in arm64 and armhf Debian roots under emulation"
	@echo "                   (under 20 minutes each from cold, 5-6 warm; root; IMAGE_ARCH=armhf for one)"
	@echo "make image-lock  - refresh the hash-locked Python layer of the image (image/lock/)"

# Install only the Debian packages that are missing; apt-get update only when something is.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(MAKE) --no-print-directory system-deps
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: system-deps $(VENV)/.installed

demo: venv
	$(BIN)/kioskvoice demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	shellcheck $(SHELL_SCRIPTS)

# Two workers, each test file on one (a file's fixtures and its real daemon stay together):
# the scenarios mostly wait in real time, so this halves the run on a 2-core machine.
test: lint
	$(BIN)/pytest --numprocesses=2 --dist=loadfile
	$(MAKE) --no-print-directory hw-test-sim

# The property-based fuzz tests with many more examples than make test gives them.
fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -p no:cacheprovider tests/test_fuzz.py

# On a Pi: the suite of hw-tests/ against the real mic array, speaker, button and LEDs.
hw-test: venv
	$(BIN)/pytest -s hw-tests

# The same checks against virtual hardware (wav: devices, mock pins, the simulator), so they
# cannot rot; make test runs it.
hw-test-sim: venv
	KIOSKVOICE_HW=sim $(BIN)/pytest hw-tests

# Figures are printed, never asserted. SOAK_S=60 for a quick run (the link issue asks for 1000).
SOAK_S ?= 1000
bench: venv
	$(BIN)/python tests/bench/bench_speex.py
	$(BIN)/python tests/bench/bench_panel.py --runs 50
	$(BIN)/python tests/bench/bench_broker.py --requests 1000
	$(BIN)/python tests/bench/bench_startup.py --runs 20 --turns 10
	$(BIN)/python tests/bench/bench_bargein.py --runs 20 --cold-runs 10 --replies 10
	$(BIN)/python tests/bench/bench_link.py --drops 20 --soak-s $(SOAK_S)

# Not part of make test: it takes minutes, needs root, Debian's archive and PyPI (see
# image/README.md). PIP_CERT passes a TLS-intercepting proxy's CA into the chroot if set.
# IMAGE_ARCH: the Debian architectures to check, one after the other.
IMAGE_ARCH ?= arm64 armhf
image-check: venv
	$(SUDO) env PIP_CERT="$$PIP_CERT" PYTHON=$(abspath $(BIN))/python image/check $(IMAGE_ARCH)

# Re-resolve image/lock/*.txt (pinned, hashed) from pyproject.toml with uv; needs PyPI.
image-lock: venv
	$(BIN)/python image/lock/refresh.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build device/*.egg-info
