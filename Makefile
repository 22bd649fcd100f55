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
# Guests written without the SDK, against the documented ABI
# (wit/core-abi.md): C built by Debian's clang and wasi-libc, WAT by wabt.
# libseccomp-dev: the C library that compiles the worker's seccomp rules in
# the library's tests (a dev-dependency, so also linked into its examples);
# no build of Isola itself needs it (see `seccomp-filter`).
APT_PACKAGES  := clang lld wasi-libc libclang-rt-14-dev-wasm32 wabt libseccomp-dev
CLANG         ?= clang
WAT2WASM      ?= wat2wasm
C_GUEST_DIR   := target/wasm32-wasi-c
C_GUEST_FLAGS := --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
	-Wl,--strip-debug
C_GUESTS      := $(patsubst guests/c/%.c,$(C_GUEST_DIR)/%.wasm,$(wildcard guests/c/*.c))
WAT_GUEST_DIR := target/wasm32-wat
WAT_GUESTS    := $(patsubst guests/wat/%.wat,$(WAT_GUEST_DIR)/%.wasm,$(wildcard guests/wat/*.wat))

.PHONY: all targets apt-deps test-deps guests c-guests wat-guests build test demo lint fmt reliability soak seccomp-filter

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

# Install the Debian packages the C and WAT guests are built with, when some
# are missing (dpkg -s is quick; apt-get only runs when needed, and only as
# root: otherwise say what to install).
apt-deps:
	@if ! command -v dpkg >/dev/null 2>&1; then \
		echo "no dpkg: not checking for $(APT_PACKAGES); the C and WAT guests need clang" \
			"with wasm32-wasi support, wasm-ld, wasi-libc and wabt's wat2wasm"; \
	fi
	@.ci/apt-ensure required $(APT_PACKAGES)

# Headless Chromium for the HTML report's browser test (tests/all/observe.rs):
# installed when missing and running as root; otherwise that test says it
# was skipped.
TEST_APT_PACKAGES := chromium
# nats-server (Debian's 2.9) for the scale-out tests (tests/all/cluster.rs),
# which start their own server on a free loopback port: required.
TEST_APT_REQUIRED := nats-server
test-deps:
	@.ci/apt-ensure required $(TEST_APT_REQUIRED)
	@.ci/apt-ensure optional $(TEST_APT_PACKAGES)

# C guests (guests/c/*.c), each a WASI reactor module for wasm32-wasi.
# Outputs: target/wasm32-wasi-c/<name>.wasm
c-guests: $(C_GUESTS)

$(C_GUEST_DIR)/%.wasm: guests/c/%.c | apt-deps
	@mkdir -p $(@D)
	$(CLANG) $(C_GUEST_FLAGS) -o $@ $<

# WAT guests (guests/wat/*.wat), with shared memory and atomics.
# Outputs: target/wasm32-wat/<name>.wasm
wat-guests: $(WAT_GUESTS)

$(WAT_GUEST_DIR)/%.wasm: guests/wat/%.wat | apt-deps
	@mkdir -p $(@D)
	$(WAT2WASM) --enable-threads --debug-names -o $@ $<

# Build every guest program for all guest targets in one cargo invocation,
# and the C and WAT guests.
# Outputs: target/<triple>/guest/<name>.wasm
guests: targets c-guests wat-guests
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
test: build test-deps
	$(CARGO) test --workspace --exclude $(GUEST_PKG) --exclude $(PLUGIN_PKG) --exclude $(SHARED_PKG) --exclude isola-guest

# The worker's seccomp filter (host/src/ipc/worker_filter.x86_64.bpf), a BPF
# program compiled by libseccomp from the rules in ipc::sandbox's tests:
# written anew after a change to those rules. `make test` fails while the
# kept program and the rules disagree.
seccomp-filter: apt-deps
	ISOLA_WRITE_SECCOMP_FILTER=1 $(CARGO) test -p $(HOST_PKG) --lib -- \
		the_checked_in_filter_is_what_libseccomp_makes_of_the_rules --nocapture

# The reliability report: the hostile-guest matrix on every guest kind and
# isolation level, signals sent to workers at random moments, cache and
# config faults, the faults of the hostile probe (issue 18: bad host calls,
# huge tables, long host calls, non-UTF-8 paths, zombies, FIFOs, `recv`
# under `isola up`), and a short soak (ISOLA_SOAK_TASKS, default 2,000), as
# one table: case, isolation/kind, expected outcome, got, time to stop.
# Fails if any row is wrong. See tests/reliability.rs.
reliability: build
	$(CARGO) test -p $(CLI_PKG) --test reliability -- --ignored --exact report \
		--nocapture --test-threads=1

# The long soak: 100,000 tasks (ISOLA_SOAK_TASKS), mixed isolation and
# kinds, 10% hostile, 16 at a time; checks one right outcome per task, that
# RSS levels off (end within 5% of halfway) within the documented residency
# of warm slots, and that fds and child processes come back. Minutes, not
# seconds.
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

# The README's charts (docs/bench/*.svg) redrawn from the last saved run,
# bench/results/latest.json, without measuring anything. Built in the same
# cargo invocation as `make bench` so the shared dependencies keep one
# feature set (isola-cli turns on isola's `metrics`): building the harness
# alone would rebuild isola.
.PHONY: bench-charts
bench-charts:
	$(CARGO) build --release -p $(CLI_PKG) -p isola-bench
	target/release/isola-bench --charts-from bench/results/latest.json --charts-dir docs/bench
