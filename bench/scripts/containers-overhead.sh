#!/usr/bin/env bash
# What the container machinery costs when nobody uses it (issue 12, "Overhead"): the 4 KiB keep-alive benchmark
# with only the default container, this tree's `larder serve` against a baseline binary, side by side.
#
# Both servers run at once, each with one shard on CPU $SERVER_CPU (only the one being measured is loaded), and
# `larder-bench compare` (CPU $CLIENT_CPU, epoll driver, 64 connections) measures them in alternating rounds
# (A B B A ...) and prints the medians and the ratio b/a (b = this tree). Once per server io driver.
# The baseline is BASE_LARDER if given, else BASE_REV (default 5a23229, the last commit before the issue-12 work)
# built in a temporary git worktree with its own target directory (removed on exit).
#
# Usage: bench/scripts/containers-overhead.sh                     (ROUNDS=11 DURATION=3 DRIVERS="uring epoll")
#        BASE_LARDER=/path/to/old/larder bench/scripts/containers-overhead.sh
set -euo pipefail

ROUNDS=${ROUNDS:-11}
DURATION=${DURATION:-3}
DRIVERS=${DRIVERS:-"uring epoll"}
BASE_REV=${BASE_REV:-5a23229}
PORT_A=${PORT_A:-18520}
PORT_B=${PORT_B:-18521}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
REPO=$(cd "$(dirname "$0")/../.." && pwd)

# shellcheck source=bench/scripts/lib.sh
. "$REPO/bench/scripts/lib.sh"
ensure_tools taskset:util-linux curl:curl

WORK=$(mktemp -d /tmp/containers-overhead.XXXXXX)
chmod 755 "$WORK"
PIDS=()
BASE_TREE=
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "$BASE_TREE" ]]; then git -C "$REPO" worktree remove --force "$BASE_TREE" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [[ -z "${LARDER:-}" || -z "${LARDER_BENCH:-}" ]]; then
    (cd "$REPO" && cargo build --release -q -p larder -p larder-loadgen)
    LARDER=${LARDER:-${CARGO_TARGET_DIR:-$REPO/target}/release/larder}
    LARDER_BENCH=${LARDER_BENCH:-${CARGO_TARGET_DIR:-$REPO/target}/release/larder-bench}
fi
if [[ -z "${BASE_LARDER:-}" ]]; then
    BASE_TREE=$WORK/base
    git -C "$REPO" worktree add -q --detach "$BASE_TREE" "$BASE_REV"
    (cd "$BASE_TREE" && CARGO_TARGET_DIR=$WORK/base-target cargo build --release -q -p larder)
    BASE_LARDER=$WORK/base-target/release/larder
fi

mkdir -p "$WORK/www"
head -c 4096 /dev/zero | tr '\0' 'x' >"$WORK/www/4k.html"

echo "kernel $(uname -r), commit $(git -C "$REPO" rev-parse --short HEAD) against $("$BASE_LARDER" --version 2>/dev/null || echo "$BASE_REV"), $(date -u +%F)"
for driver in $DRIVERS; do
    PIDS=()
    for side in a b; do
        binary=$LARDER
        port=$PORT_B
        if [[ $side == a ]]; then
            binary=$BASE_LARDER
            port=$PORT_A
        fi
        # One shard on $SERVER_CPU: `--cpus N` since issue 18; a baseline from before spells it `--cores N,`.
        pin=(--cpus "$SERVER_CPU")
        "$binary" serve --help | grep -q -- '--cpus' || pin=(--cores "$SERVER_CPU,")
        RUST_LOG=warn "$binary" serve --listen "127.0.0.1:$port" "${pin[@]}" --io-driver "$driver" \
            --no-control "$WORK/www" >/dev/null 2>"$WORK/$side.err" &
        PIDS+=($!)
        for _ in $(seq 100); do
            curl -sf -o /dev/null "http://127.0.0.1:$port/4k.html" && break
            sleep 0.1
        done
        curl -sf -o /dev/null "http://127.0.0.1:$port/4k.html" || { cat "$WORK/$side.err" >&2; exit 1; }
    done
    echo "=== server io driver: $driver (a = baseline, b = this tree)"
    taskset -c "$CLIENT_CPU" "$LARDER_BENCH" compare --a "http://127.0.0.1:$PORT_A/4k.html" \
        --b "http://127.0.0.1:$PORT_B/4k.html" --rounds "$ROUNDS" -c 64 -d "${DURATION}s" \
        --cpus "$CLIENT_CPU" --driver epoll --quiet
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
done
