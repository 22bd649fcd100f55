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
echo
echo "== across machines: the same task set on two isola workers through a NATS JetStream server (README, Running across machines) =="
if command -v nats-server >/dev/null 2>&1; then
    nats_dir=$(mktemp -d)
    nats_port=$((20000 + RANDOM % 20000))
    nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$nats_dir" >/dev/null 2>&1 &
    nats_pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
    "$isola" worker --nats "nats://127.0.0.1:$nats_port" --name left -j 2 2>/dev/null &
    left=$!
    "$isola" worker --nats "nats://127.0.0.1:$nats_port" --name right -j 2 2>/dev/null &
    right=$!
    sleep 0.5
    step "$isola" up examples/tasks.toml --nats "nats://127.0.0.1:$nats_port" --json "$nats_dir/run.json"
    echo "where each task ran (from --json; no worker: it ran on the submitter, or never ran):"
    grep -E '^      "(name|worker)": ' "$nats_dir/run.json" | tr -d '",' | awk '$1 == "name:" { if (n) print n; n = $2 } $1 == "worker:" { n = n " -> " $2 } END { if (n) print n }'
    kill "$left" "$right" 2>/dev/null; wait "$left" "$right" 2>/dev/null
    kill "$nats_pid"; wait "$nats_pid" 2>/dev/null
    rm -rf "$nats_dir"
else
    echo "(skipped: nats-server is not installed; \`apt-get install nats-server\` or \`make test\` as root installs it)"
fi
