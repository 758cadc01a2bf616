# Weir — what a developer types. CI runs `make test`.
#
# One target directory, reused between runs (CI keeps it on the machine), so only the
# first build pays for the dependencies.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/weir/target
CARGO ?= cargo

.PHONY: run test lint bench bench-limits bench-schedules bench-data bench-api bench-streams fmt build fuzz

## Run the whole platform on this machine: master + four managers + embedded store.
run:
	./scripts/ensure-build-deps.sh
	$(CARGO) run --release -p weir -- dev

## Build everything and run every test against real PostgreSQL and the embedded store.
test:
	./scripts/ensure-build-deps.sh --with-test-tools
	./scripts/ensure-postgres.sh
	./scripts/ensure-python-peer.sh
	./scripts/ensure-tansu.sh
	./scripts/ensure-azurite.sh
	./scripts/ensure-wiremock.sh
	./scripts/ensure-pubsub-emulator.sh
	./scripts/ensure-kinesalite.sh
	./scripts/ensure-brokers.sh
	./scripts/ensure-prometheus.sh
	./scripts/prune-target.sh
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

## Fuzz the job-spec parser and the file readers with cargo-fuzz (libFuzzer), each for
## FUZZ_SECONDS; a crash's input is kept in fuzz/regressions/<target>/, which `make test`
## replays (tests/fuzz.rs). Not part of `make test`: the sanitizer build is a build of its own.
FUZZ_SECONDS ?= 120
FUZZ_TARGETS ?= job_spec readers
fuzz:
	./scripts/ensure-build-deps.sh
	./scripts/ensure-cargo-fuzz.sh
	@set -e; export PATH="$(HOME)/.cache/weir/tools/bin:$$PATH" CARGO_TARGET_DIR="$(HOME)/.cache/weir/fuzz-target"; \
	if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then tc=+nightly; else tc=; export RUSTC_BOOTSTRAP=1; fi; \
	cd fuzz; for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$t regressions/$$t artifacts/$$t; \
		work=$$(mktemp -d); cp corpus/$$t/* $$work/ 2>/dev/null || true; \
		if cargo $$tc fuzz run $$t $$work -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
			-artifact_prefix=artifacts/$$t/; then echo "fuzz $$t: no crash in $(FUZZ_SECONDS) s"; \
		else cp artifacts/$$t/* regressions/$$t/ 2>/dev/null || true; \
			echo "fuzz $$t: a crash, kept in fuzz/regressions/$$t (replayed by make test)"; exit 1; fi; \
		rm -rf $$work; \
	done

## Formatting and lints, as required for every change.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## The benchmarks (prints name=value unit lines): the engine against PostgreSQL with real
## manager processes and a real broker, the data path against pyarrow and DuckDB, then the
## API manager against dlt's rest_api and its fleet-wide rate limit.
bench:
	./scripts/ensure-build-deps.sh
	./scripts/ensure-postgres.sh
	./scripts/ensure-brokers.sh
	./scripts/ensure-tansu.sh
	./scripts/ensure-bench-peer.sh
	./scripts/ensure-bench-node.sh
	$(CARGO) build --release --workspace --bins
	$(CARGO_TARGET_DIR)/release/weir-bench
	$(CARGO_TARGET_DIR)/release/weir-bench limits
	$(CARGO_TARGET_DIR)/release/weir-bench schedules
	$(CARGO_TARGET_DIR)/release/weir-bench data
	$(CARGO_TARGET_DIR)/release/weir-bench api
	$(CARGO_TARGET_DIR)/release/weir-bench streams

## Only the engine-limits benchmark (step-to-step latency, chained steps, store size).
bench-limits:
	./scripts/ensure-build-deps.sh
	./scripts/ensure-postgres.sh
	./scripts/ensure-bench-node.sh
	$(CARGO) build --release --workspace --bins
	$(CARGO_TARGET_DIR)/release/weir-bench limits

## Only the schedules benchmark (10,000 schedules every minute, against graphile-worker's crontab).
bench-schedules:
	./scripts/ensure-build-deps.sh
	./scripts/ensure-postgres.sh
	./scripts/ensure-bench-node.sh
	$(CARGO) build --release -p weir-bench -p weir-master -p weir-api-manager -p weir-file-manager -p weir-batch-manager -p weir-stream-manager
	$(CARGO_TARGET_DIR)/release/weir-bench schedules

## Only the stream benchmark.
bench-streams:
	./scripts/ensure-postgres.sh
	./scripts/ensure-brokers.sh
	./scripts/ensure-tansu.sh
	./scripts/ensure-bench-peer.sh
	$(CARGO) build --release -p weir-bench -p weir-master -p weir-stream-manager
	$(CARGO_TARGET_DIR)/release/weir-bench streams

## Only the API benchmark.
bench-api:
	./scripts/ensure-bench-peer.sh
	$(CARGO) build --release -p weir-bench -p weir-master -p weir-api-manager -p weir-batch-manager
	$(CARGO_TARGET_DIR)/release/weir-bench api

## Only the data-path benchmark.
bench-data:
	./scripts/ensure-bench-peer.sh
	$(CARGO) build --release -p weir-bench -p weir-master -p weir-file-manager -p weir-batch-manager
	$(CARGO_TARGET_DIR)/release/weir-bench data

build:
	$(CARGO) build --workspace --bins
