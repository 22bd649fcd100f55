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

.PHONY: all targets guests build test demo lint fmt

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

# The host crate: library + `isola` binary.
build: guests
	$(CARGO) build -p $(HOST_PKG) --bins

# All tests: unit tests, and the integration tests in tests/ that drive the
# library and the `isola` binary on the guests. The binary is built first
# because the integration tests run it.
test: build
	$(CARGO) test --workspace --exclude $(GUEST_PKG) --exclude $(PLUGIN_PKG) --exclude $(SHARED_PKG) --exclude isola-guest

# The main job on the shipped examples: guests under the CLI and the library.
demo: guests
	$(CARGO) build --release -p $(HOST_PKG) --bins --examples
	@./scripts/demo.sh target/release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
