# promql-tenant-filter — the two user commands are `make test` and `make demo`.
SHELL := /bin/bash
.DEFAULT_GOAL := test
CARGO ?= cargo
WASM := target/wasm32-wasip1/release/promql_tenant_filter.wasm

.PHONY: test deps rust-deps wasm unit lint bench

## Install everything the tests need on a fresh Debian machine (idempotent).
deps: rust-deps

rust-deps:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

## Build the filter module and print its size.
wasm: rust-deps
	@# The filter must abort on panic (a trap in the VM, never unwinding into the host).
	@# wasm32-wasip1 builds abort by default; Cargo.toml says why the profile does not set it.
	@rustc --print cfg --target wasm32-wasip1 | grep -qx 'panic="abort"' || { echo "wasm32-wasip1 does not build with panic=abort"; exit 1; }
	$(CARGO) build --release --target wasm32-wasip1 --lib
	@echo "wasm size: $$(stat -c %s $(WASM)) bytes ($(WASM))"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --release --no-fail-fast

## THE test command: installs, builds, lints, runs every test.
test: deps wasm lint unit

bench:
	$(CARGO) bench --bench engine
