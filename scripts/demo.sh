#!/usr/bin/env bash
# `make demo`: the shipped guests under the `isola` CLI and the library.
set -u
bin_dir=${1:-target/release}
isola="$bin_dir/isola"
p1=target/wasm32-wasip1/guest
p2=target/wasm32-wasip2/guest

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; echo "(exit code $?)"; }

echo "== isola run: WASI programs from the command line =="
step "$isola" run "$p1/hello.wasm"
step "$isola" run "$p2/hello.wasm"
step "$isola" run --env GREETING=hi "$p2/echo_cli.wasm" -- env
step "$isola" run --dir-ro "$PWD/guests/programs/src/bin::/src" "$p1/echo_cli.wasm" -- ls /src
step "$isola" run --dir-ro "$PWD/guests/programs/src/bin::/src" "$p1/echo_cli.wasm" -- cat /src/../../Cargo.toml
step "$isola" run "$p1/sha256.wasm" -- 64
echo
echo "== hostile guests, each stopped by its limit or trap =="
step "$isola" run --timeout 300ms "$p1/hostile.wasm" -- loop
step "$isola" run --max-memory 64MiB "$p1/hostile.wasm" -- alloc-bomb
step bash -o pipefail -c "'$isola' run --max-output 4KiB '$p1/hostile.wasm' -- flood | wc -c"
step "$isola" run "$p1/hostile.wasm" -- recurse
echo
echo "== the library: several tasks at once from Rust (host/examples/embed.rs) =="
step "$bin_dir/examples/embed" "$p1"
echo
echo "== isola up: a task set with dependencies, both isolation levels and hostile tasks (examples/tasks.toml) =="
step "$isola" check examples/tasks.toml
step "$isola" up examples/tasks.toml --metrics
echo
echo "== process isolation, messages and plugins =="
step "$isola" run --isolation process "$p1/hostile.wasm" -- unreachable
step "$isola" call "$p2/plugin.wasm" --input 41
step "$isola" call --isolation process --json "$p1/plugin.wasm" --input 99
step bash -c "printf '1 10\n2 40\n3 90\n' | '$isola' run --messages '$p2/jobs.wasm'"
echo
echo "== host functions: a plugin reads the host's SQLite table, at both isolation levels (host/examples/plugin_host.rs) =="
step "$bin_dir/examples/plugin_host" "$p1"
demo_kv=$(mktemp -d)
step "$isola" run --kv "$demo_kv/state.db" "$p1/host_call.wasm" -- kv-inc 2 visits
step "$isola" run --kv "$demo_kv/state.db" --isolation process "$p1/host_call.wasm" -- kv-inc 2 visits
rm -rf "$demo_kv"
echo
echo "== shared memory: 8 tasks invert 64 MiB in place vs through messages (host/examples/shared_stripes.rs) =="
step "$bin_dir/examples/shared_stripes"
