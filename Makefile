# Mirador: `make demo` runs the bundled demo, `make test` runs the tests. Both set up what
# is missing first: the C toolchain from Debian's packages, and libtorch through a Python
# virtual environment with torch. Build outputs and the environment live outside the clone,
# under $(CACHE), so that a second run is fast.

SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/mirador
VENV ?= $(CACHE)/venv
TORCH_VERSION := 2.11.0
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)
# A fixed path to torch's libraries, made with the environment: the library path is known
# before the environment exists, so the first run on a fresh machine finds them (a
# `$(wildcard)` would be evaluated, and cached by make, before the venv is created).
TORCH_LIB := $(VENV)/torch-lib

export CARGO_TARGET_DIR ?= $(CACHE)/target
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(VENV)/bin:$(PATH)
export LD_LIBRARY_PATH := $(TORCH_LIB)

MIRADOR := $(CARGO_TARGET_DIR)/release/mirador
# A Kafka-protocol broker for the tests and `make services`, built once into the cache.
TANSU_VERSION := 0.6.0
# The folder names the features: an older build without SQLite storage is not reused.
TANSU_DIR := $(CACHE)/tansu-$(TANSU_VERSION)-sqlite
TANSU := $(TANSU_DIR)/bin/tansu
# An S3-protocol server for the snapshot store's tests, in the same environment.
MOTO_VERSION := 5.2.5
MOTO_STAMP := $(VENV)/.moto-$(MOTO_VERSION)
MOTO := $(VENV)/bin/moto_server
# A gRPC client from PyPI that speaks reflection v1alpha, for the admin port's test.
GRPCIO_VERSION := 1.85.1
GRPCIO_STAMP := $(VENV)/.grpcio-$(GRPCIO_VERSION)
# promtool, which checks the format of the metrics in the tests: Debian's prometheus
# package unpacked into the cache (nothing installed, no service started).
PROMETHEUS_DIR := $(CACHE)/prometheus
PROMTOOL := $(PROMETHEUS_DIR)/usr/bin/promtool

.PHONY: services services-down tansu moto toolchain setup demo test verify fmt-check clippy features-check fix bench build model clean-out images base-images up down chaos

setup: toolchain $(TORCH_STAMP) $(TORCH_LIB)

# gcc/g++ build libtorch's C++ bindings; the venv needs python3 with venv and pip.
toolchain:
	@missing=""; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v make >/dev/null || missing="$$missing make"; \
	python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && apt-get install -y -qq $$missing; \
	fi
	@command -v cargo >/dev/null || { echo "cargo is missing: install the Rust toolchain (rustup)"; exit 1; }

$(TORCH_STAMP):
	@echo "creating the libtorch environment in $(VENV) (torch==$(TORCH_VERSION), a few GB)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	touch $@

$(TORCH_LIB): $(TORCH_STAMP)
	ln -sfn "$$($(VENV)/bin/python3 -W ignore -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" $@
	test -e $@/libtorch_cpu.so

$(TANSU):
	@echo "building the tansu Kafka broker $(TANSU_VERSION) into $(TANSU_DIR) (15 to 20 minutes, once)"
	CARGO_TARGET_DIR=$(CACHE)/tansu-build cargo install tansu --version $(TANSU_VERSION) --locked \
	  --no-default-features --features dynostore,libsql --root $(TANSU_DIR)
	rm -rf $(CACHE)/tansu-build

tansu: $(TANSU)

moto: $(MOTO_STAMP)

$(GRPCIO_STAMP): $(TORCH_STAMP)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check \
	  'grpcio-reflection==$(GRPCIO_VERSION)' 'grpcio-health-checking==$(GRPCIO_VERSION)'
	touch $@

$(PROMTOOL):
	CACHE=$(CACHE) deploy/images.sh prometheus-package
	test -x $@

$(MOTO_STAMP): $(TORCH_STAMP)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'moto[server]==$(MOTO_VERSION)'
	touch $@

build: setup
	cargo build --release --bin mirador --bin mirador-coordinator

demo: build
	$(MIRADOR) dev --events 1000000

# Pub/Sub and Bigtable emulators and a Kafka broker on loopback, with the demo's topics,
# subscriptions and tables; `make services-down` stops exactly what it started.
services: build $(TANSU)
	MIRADOR=$(MIRADOR) MIRADOR_TANSU=$(TANSU) scripts/services.sh up

services-down:
	scripts/services.sh down

# The two-region deployment of docker-compose.yml, from images built here (deploy/).
# `make images` builds what is missing and refreshes Mirador's binaries (seconds);
# `make up` starts the deployment, `make down` removes it and its volumes.
COMPOSE := docker-compose -p mirador
base-images: setup $(TANSU)
	MIRADOR_TANSU=$(TANSU) deploy/images.sh base

images: build $(TANSU)
	MIRADOR_TANSU=$(TANSU) deploy/images.sh --profile release
	deploy/images.sh sizes

up: images
	$(COMPOSE) up -d
	deploy/reach.sh

down:
	$(COMPOSE) down -v --remove-orphans

# Every scenario of the reliability matrix against a deployment of its own (`ROW=6`: one
# row); the table of figures goes to docs/reliability.md.
chaos: images
	cargo build --release -p mirador-cluster-tests --bin mirador-chaos
	$(CARGO_TARGET_DIR)/release/mirador-chaos --mirador $(MIRADOR) $(if $(ROW),--row $(ROW),--write docs/reliability.md)

bench: build
	$(MIRADOR) bench

# tests/chaos.rs builds the deployment's images from the test build (deploy/images.sh).
test: setup $(TANSU) $(MOTO_STAMP) $(GRPCIO_STAMP) $(PROMTOOL)
	CACHE=$(CACHE) MIRADOR_TANSU=$(TANSU) MIRADOR_MOTO=$(MOTO) MIRADOR_PYTHON=$(VENV)/bin/python \
	  MIRADOR_PROMTOOL=$(PROMTOOL) cargo test --workspace

fmt-check:
	cargo fmt --all -- --check

clippy: setup
	cargo clippy --workspace --all-targets -- -D warnings

# A node with Kafka alone, and the connectors with no outside service at all, still build
# without warnings: every connector is behind its cargo feature.
features-check: setup
	cargo clippy -p mirador-executor --no-default-features --features kafka --all-targets -- -D warnings
	cargo clippy -p mirador-connectors --no-default-features --all-targets -- -D warnings

verify: fmt-check clippy features-check test

fix: setup
	cargo fmt --all
	cargo clippy --workspace --all-targets --fix --allow-dirty --allow-staged

# Retrains the demo model and rewrites the bundled feature table.
model: setup
	$(VENV)/bin/python3 models/make_features.py
	$(VENV)/bin/python3 models/train_propensity.py

clean-out:
	rm -rf mirador-out
