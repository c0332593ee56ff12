# Perennial — every set-up step lives here, so a fresh Debian machine needs only `make demo` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEBIAN_PACKAGES := redis-server wordnet-base
PROTO_OUT := shared

.PHONY: help setup system venv proto proto-check lock demo test test-unit test-e2e clean

help:
	@echo "make demo        start broker, Redis, trainer, inference and stream WordNet through them"
	@echo "make test        install what is missing, check generated code, run the whole suite"
	@echo "make proto       regenerate the protobuf code in $(PROTO_OUT)/perennial/v1"
	@echo "make lock        refresh requirements.lock from the current environment"

setup: system venv

# Debian packages: installed only when missing (apt-get update only if the first try fails).
system:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y --no-install-recommends $$missing || \
	  { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $$missing; }; \
	fi

venv: $(VENV)/.installed

# The lock pins every transitive dependency; torch==2.13.0 is in it, so pip takes the CPU build.
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c requirements.lock -e ".[dev]"
	@touch $@

proto: venv
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
	  --grpc_python_out=$(PROTO_OUT) $$(find protos -name '*.proto' | sort)

# CI: the checked-in generated code must be exactly what `make proto` produces.
proto-check: proto
	@git diff --exit-code -- $(PROTO_OUT)/perennial/v1 || \
	  { echo "generated protobuf code is stale: run 'make proto' and commit"; exit 1; }

lock: venv
	$(PIP) freeze --exclude-editable | sed "s/^torch==\(.*\)+cpu/torch==\1/" | sort > requirements.lock

demo: setup
	$(PY) -m perennial.demo $(DEMO_ARGS)

test: setup proto-check
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
