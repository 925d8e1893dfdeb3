# One command each: install, lint, typecheck, test, demo, bench. CI runs `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install system-deps qemu-rootfs lint typecheck test test-fast mutation demo bench clean

install: system-deps $(STAMP)

system-deps:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }
	@# The secure broker loads the share guard plugin, compiled from controller/identity/share_guard.c.
	@test -f /usr/include/mosquitto_broker.h && test -f /usr/include/mosquitto.h && command -v cc >/dev/null || { \
	  echo "installing a C compiler and the Mosquitto plugin headers (Debian packages gcc, mosquitto-dev, libmosquitto-dev)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    gcc libc6-dev mosquitto-dev libmosquitto-dev >/dev/null; }
	@# promtool validates deploy/prometheus (tests/unit/test_deploy_monitoring.py). Without recommends: no
	@# node exporter; in containers policy-rc.d keeps the prometheus service from starting, on systemd hosts
	@# stop it if it is not wanted (systemctl disable --now prometheus).
	@command -v promtool >/dev/null || { \
	  echo "installing promtool (Debian package prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (Debian package; the web console's browser tests drive it with Playwright)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@missing=""; \
	  command -v qemu-aarch64-static >/dev/null || missing="$$missing qemu-user-static"; \
	  command -v debootstrap >/dev/null || test -x /usr/sbin/debootstrap || missing="$$missing debootstrap"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing$$missing (Debian packages, for aarch64 agents under QEMU)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi

# The arm64 Debian image with the agent's aarch64 wheels (cached in ~/.cache/edgefleet/qemu; ~40 s cold).
qemu-rootfs: install
	$(PY) scripts/qemu_rootfs.py

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[agent,controller,train,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check agent shared controller firmware_sim

typecheck: install
	$(VENV)/bin/mypy agent shared controller firmware_sim

test: install lint typecheck qemu-rootfs
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "unit" $(PYTEST_ARGS)

# Mutation testing of the safety modules ([tool.mutmut] in pyproject.toml); minutes, not part of `make test`.
mutation: install
	$(PY) scripts/mutation.py

# The whole loop on this machine: `make demo DEVICES=200`, `make demo DEMO_ARGS=--no-wait`.
DEVICES ?= 50
DEMO_ARGS ?=
demo: install
	$(PY) scripts/demo.py --devices $(DEVICES) $(DEMO_ARGS)

bench: install
	$(PY) scripts/bench.py all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info mutants
