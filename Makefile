# Isola build entry points. Guests are built for wasm with the `guest` profile
# (see the root Cargo.toml); everything shares the workspace target dir.

CARGO        ?= cargo
RUSTUP       ?= rustup
WASM_TARGETS := wasm32-wasip1 wasm32-wasip2 wasm32-wasip1-threads
# Targets the guest programs are built for: wasip1 core modules and wasip2 components.
GUEST_TARGETS := wasm32-wasip1 wasm32-wasip2
GUEST_PROFILE := guest
GUEST_PKG     := isola-guest-programs
PLUGIN_PKG    := isola-guest-plugin
SHARED_PKG    := isola-guest-shared
HOST_PKG      := isola
CLI_PKG       := isola-cli

.PHONY: all targets guests build test demo lint fmt reliability soak

all: build

# Install the wasm targets that are missing (rustup is slow even when there is
# nothing to do, so check the installed list first).
targets:
	@installed="$$($(RUSTUP) target list --installed)"; \
	for t in $(WASM_TARGETS); do \
		if ! printf '%s\n' "$$installed" | grep -qx "$$t"; then \
			echo "rustup target add $$t"; \
			$(RUSTUP) target add "$$t" || exit 1; \
		fi; \
	done

# Build every guest program for all guest targets in one cargo invocation.
# Outputs: target/<triple>/guest/<name>.wasm
guests: targets
	$(CARGO) build -p $(GUEST_PKG) -p $(PLUGIN_PKG) --profile $(GUEST_PROFILE) \
		$(addprefix --target ,$(GUEST_TARGETS))
	$(CARGO) build -p $(SHARED_PKG) --profile $(GUEST_PROFILE) --target wasm32-wasip1-threads

# The `isola` binary (crate isola-cli, over the library in host/).
build: guests
	$(CARGO) build -p $(CLI_PKG) --bins

# All tests: the library's unit tests, the CLI's, and the integration tests
# in tests/ that drive the library and the `isola` binary on the guests. The
# integration tests are targets of isola-cli, so cargo builds the binary for
# them and names it in CARGO_BIN_EXE_isola.
test: build
	$(CARGO) test --workspace --exclude $(GUEST_PKG) --exclude $(PLUGIN_PKG) --exclude $(SHARED_PKG) --exclude isola-guest

# The reliability report: the hostile-guest matrix on every guest kind and
# isolation level, signals sent to workers at random moments, cache and
# config faults, and a short soak (ISOLA_SOAK_TASKS, default 2,000), as
# one table: case, isolation/kind, expected outcome, got, time to stop.
# Fails if any row is wrong. See tests/reliability.rs.
reliability: build
	$(CARGO) test -p $(CLI_PKG) --test reliability -- --ignored --exact report \
		--nocapture --test-threads=1

# The long soak: 100,000 tasks (ISOLA_SOAK_TASKS), mixed isolation and
# kinds, 10% hostile, 16 at a time; checks one right outcome per task and
# that RSS, fds and child processes come back. Minutes, not seconds.
soak: build
	$(CARGO) test -p $(CLI_PKG) --test reliability -- --ignored --exact soak \
		--nocapture --test-threads=1

# The main job on the shipped examples: guests under the CLI and the library.
# One cargo invocation for the binary (isola-cli) and the library's examples
# (isola), so both see one feature set of the shared dependencies.
demo: guests
	$(CARGO) build --release -p $(CLI_PKG) -p $(HOST_PKG) --bins --examples
	@./scripts/demo.sh target/release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Performance against Node.js workers and forked children, Piscina and the
# wasmtime CLI, all in one run (README, "Performance"). Builds in release
# mode, then bench/run.sh installs the peers it lacks and runs the harness:
# one markdown table on stdout, raw samples in bench/results/.
# `make bench BENCH_ARGS=--quick` for a short run.
.PHONY: bench
bench: guests
	$(CARGO) build --release -p $(CLI_PKG) -p isola-bench
	RUST_BACKTRACE=0 ./bench/run.sh $(BENCH_ARGS)
