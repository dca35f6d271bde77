#!/usr/bin/env bash
# Resource containers under load (issue 12): does a shard divide all of its work by shares, cap a container's
# CPU, keep a premium class's rate beside a flood, and pace sends?
#
# Runs a real `larder serve` with one shard on CPU $SERVER_CPU and real `larder-bench` processes on CPU
# $CLIENT_CPU, once per io driver (DRIVERS="uring epoll"), and prints for each:
#   1. share accuracy: containers gold (path /gold/) and default, 64 keep-alive connections each, 4 KiB files;
#      shares 300:100, 100:100, 1000:100 -> the median over ROUNDS rounds of the req/s ratio gold:default (targets 3,
#      1, 10; within 10%, 10% and 15%), with every round's ratio (one run's ratio spreads by ±15% here);
#   4. (in the same runs) accounting: the containers' CPU (GetNode, `larder ctl get-node --json`) against the shard
#      thread's CPU from the kernel (/proc/PID/task/TID/schedstat), and the softirq time of the server CPU
#      (/proc/stat), which no user-space scheduler reaches;
#   2. premium under flood: gold (300 shares) measured by its own larder-bench with one keep-alive connection at
#      real-time priority (`chrt -f 50`), alone, then beside (a) 64 keep-alive best-effort connections and (b) 256
#      connections that each open, send one request and close; prints req/s and p99 and their ratios to alone;
#   3. CPU cap: the default container with cpu_percent_max = 25, alone, saturated: the thread's CPU percent;
#   5. pacing (once, on the first driver): a 10 MiB file under a 1 MiB/s cap (container "slow", path /slow/):
#      the transfer time, the spread of the gaps between arrivals; then 1,000 connections paced at 16 KiB/s
#      (container "trickle") and the shard's CPU percent while they are open.
# Clients use larder-bench's epoll driver (CLIENT_DRIVER).
# Every larder-bench run must report 0 errors and only 2xx responses, or the script stops naming the run.
#
# Usage: bench/scripts/containers-bench.sh                    (DURATION=4 ROUNDS=5 DRIVERS="uring epoll")
#        PAIRS="1000:100" SECTIONS="1 2" bench/scripts/containers-bench.sh   (a subset: share pairs, sections 1 2 3 5)
#        LARDER=target/release/larder LARDER_BENCH=target/release/larder-bench DURATION=8 bench/scripts/containers-bench.sh
set -euo pipefail

DURATION=${DURATION:-4}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-1}
DRIVERS=${DRIVERS:-"uring epoll"}
PAIRS=${PAIRS:-"300:100 100:100 1000:100"}
SECTIONS=${SECTIONS:-"1 2 3 5"}
PORT=${PORT:-18490}
GRPC_PORT=${GRPC_PORT:-18491}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
REPO=$(cd "$(dirname "$0")/../.." && pwd)

# shellcheck source=bench/scripts/lib.sh
. "$REPO/bench/scripts/lib.sh"
ensure_tools jq:jq taskset:util-linux chrt:util-linux curl:curl python3:python3

if [[ -z "${LARDER:-}" || -z "${LARDER_BENCH:-}" ]]; then
    (cd "$REPO" && cargo build --release -q -p larder -p larder-loadgen)
    LARDER=${LARDER:-${CARGO_TARGET_DIR:-$REPO/target}/release/larder}
    LARDER_BENCH=${LARDER_BENCH:-${CARGO_TARGET_DIR:-$REPO/target}/release/larder-bench}
fi

WORK=$(mktemp -d /tmp/containers-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/www/gold" "$WORK/www/slow" "$WORK/www/trickle"
head -c 4096 /dev/zero | tr '\0' 'x' >"$WORK/www/4k.html"
cp "$WORK/www/4k.html" "$WORK/www/gold/4k.html"
head -c $((10 << 20)) /dev/urandom >"$WORK/www/slow/10m.bin"
head -c $((64 << 10)) /dev/urandom >"$WORK/www/trickle/64k.bin"

SERVER_PID=
BACKGROUND_PID=
cleanup() {
    [[ -n "$BACKGROUND_PID" ]] && kill "$BACKGROUND_PID" 2>/dev/null || true
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

URL=http://127.0.0.1:$PORT
CONTROL=127.0.0.1:$GRPC_PORT

# start_server DRIVER GOLD_SHARES DEFAULT_SHARES [DEFAULT_CPU_PERCENT_MAX]
start_server() {
    local driver=$1 gold=$2 default=$3 cap=${4:-0}
    cat >"$WORK/larder.toml" <<CONF
[[containers]]
name = "default"
shares = $default
cpu_percent_max = $cap

[[containers]]
name = "gold"
shares = $gold

[[containers]]
name = "slow"
shares = 100
send_rate_bytes_per_second = 1048576

[[containers]]
name = "trickle"
shares = 100
send_rate_bytes_per_second = 16384

[[classify]]
container = "gold"
path_prefix = "/gold/"

[[classify]]
container = "slow"
path_prefix = "/slow/"

[[classify]]
container = "trickle"
path_prefix = "/trickle/"
CONF
    RUST_LOG=warn "$LARDER" serve --listen "127.0.0.1:$PORT" --cpus "$SERVER_CPU" --io-driver "$driver" \
        --config "$WORK/larder.toml" --control "$CONTROL" "$WORK/www" >"$WORK/serve.out" 2>"$WORK/serve.err" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -sf -o /dev/null "$URL/4k.html" 2>/dev/null && break
        sleep 0.1
    done
    curl -sf -o /dev/null "$URL/gold/4k.html" || { cat "$WORK/serve.err" >&2; echo "server did not start" >&2; exit 1; }
    SHARD_TID=$(grep -l '^larder-shard-0$' /proc/"$SERVER_PID"/task/*/comm | head -1 | cut -d/ -f5)
    NODE_ID=$("$LARDER" ctl --control "$CONTROL" --json list-nodes | jq -r '.nodes[0].info.nodeId')
}

stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# The shard thread's CPU time (ns) from the kernel.
thread_cpu_ns() { cut -d' ' -f1 "/proc/$SERVER_PID/task/$SHARD_TID/schedstat"; }
# Softirq time of the server CPU (USER_HZ ticks) from /proc/stat.
softirq_ticks() { awk -v cpu="cpu$SERVER_CPU" '$1 == cpu { print $8 }' /proc/stat; }
# name=cpu_us and name:poll=poll_cpu_us lines of the shard's containers, from GetNode.
container_cpu() {
    "$LARDER" ctl --control "$CONTROL" --json get-node "$NODE_ID" |
        jq -r '.shards[0].containers[] | "\(.container)=\(.cpuTimeUs // 0) \(.container):poll=\(.pollCpuTimeUs // 0)"'
}

# check_run NAME FILE: every response 2xx, no error.
check_run() {
    local errors ok responses
    errors=$(jq '.errors' "$2")
    ok=$(jq '.ok' "$2")
    responses=$(jq '.responses' "$2")
    if [[ "$errors" != 0 || "$ok" != "$responses" || "$ok" == 0 ]]; then
        echo "run $1: errors=$errors ok=$ok responses=$responses" >&2
        jq '.errors_by_kind' "$2" >&2
        exit 1
    fi
}

# The clients use larder-bench's epoll driver: its io_uring client path runs at a third of its epoll path on this
# kernel (issue 17), which would measure the generator instead of the server.
CLIENT_DRIVER=${CLIENT_DRIVER:-epoll}
bench() { taskset -c "$CLIENT_CPU" "$LARDER_BENCH" --cpus "$CLIENT_CPU" --driver "$CLIENT_DRIVER" --quiet --json "$@"; }

# Stats window around a command: sets CPU_THREAD_NS, CPU_CONTAINERS_US, CPU_GOLD_US, CPU_DEFAULT_US, SOFTIRQ_TICKS,
# and POLL_GOLD_US, POLL_DEFAULT_US (the CPU of their polls alone).
measure_window() {
    local cpu0 soft0 before after
    before=$(container_cpu)
    cpu0=$(thread_cpu_ns)
    soft0=$(softirq_ticks)
    "$@"
    sleep 0.3 # the shards publish container figures every 100 ms
    CPU_THREAD_NS=$(($(thread_cpu_ns) - cpu0))
    SOFTIRQ_TICKS=$(($(softirq_ticks) - soft0))
    after=$(container_cpu)
    # One parse of the two GetNode snapshots: all containers' CPU, then gold's and default's (µs).
    read -r CPU_CONTAINERS_US CPU_GOLD_US CPU_DEFAULT_US POLL_GOLD_US POLL_DEFAULT_US < <(python3 - "$before" "$after" <<'PY'
import sys
def parse(text):
    return {k: int(v) for k, v in (line.split("=") for line in text.split() if "=" in line)}
before, after = parse(sys.argv[1]), parse(sys.argv[2])
delta = {k: after[k] - before.get(k, 0) for k in after}
charged = sum(v for k, v in delta.items() if not k.endswith(":poll"))
print(charged, delta.get("gold", 0), delta.get("default", 0), delta.get("gold:poll", 0), delta.get("default:poll", 0))
PY
)
}

ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.3f}' if b else 'inf')" "$1" "$2"; }

echo "kernel $(uname -r), commit $(git -C "$REPO" rev-parse --short HEAD), $(date -u +%F)"
echo "server: larder serve --cpus $SERVER_CPU (one shard); clients: larder-bench on CPU $CLIENT_CPU; ${DURATION}s runs"
first_driver=1
for driver in $DRIVERS; do
    echo
    echo "=== io driver: $driver"
    section() { [[ " $SECTIONS " == *" $1 "* ]]; }
    section 1 && echo "--- 1. share accuracy (gold and default, 64 keep-alive connections each; median of $ROUNDS rounds) and 4. accounting"
    section 1 && printf '%-10s %10s %10s %8s %8s %8s %12s %12s %9s %9s\n' shares gold_rps default_rps ratio target verdict \
        thread_ms containers_ms acct_% softirq_ms
    section 1 && for pair in $PAIRS; do
        gold=${pair%%:*}
        default=${pair##*:}
        tolerance=0.10
        [[ $gold == 1000 ]] && tolerance=0.15
        start_server "$driver" "$gold" "$default"
        rows=()
        for round in $(seq "$ROUNDS"); do
            out="$WORK/share-$driver-$gold-$round.json"
            measure_window bench -d "${DURATION}s" --warmup "${WARMUP}s" \
                --class "gold:prefix=/gold:connections=64" --class "default:connections=64" \
                "$URL/4k.html" >"$out"
            check_run "shares $pair $driver round $round" "$out"
            rows+=("$(jq '.classes.gold.requests_per_sec' "$out") $(jq '.classes.default.requests_per_sec' "$out") \
$CPU_THREAD_NS $CPU_CONTAINERS_US $SOFTIRQ_TICKS $CPU_GOLD_US $CPU_DEFAULT_US $POLL_GOLD_US $POLL_DEFAULT_US")
        done
        stop_server
        printf '%s\n' "${rows[@]}" | python3 -c "
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]
ratios = sorted(g / d for g, d, *_ in rows)
median = statistics.median(ratios)
pick = min(rows, key=lambda r: abs(r[0] / r[1] - median))
target = $gold / $default
ok = abs(median - target) <= $tolerance * target
thread_ns = sum(r[2] for r in rows); containers_us = sum(r[3] for r in rows); softirq = sum(r[4] for r in rows)
print(f'{\"$pair\":<10} {pick[0]:10.0f} {pick[1]:10.0f} {median:8.3f} {target:8.3f} {\"ok\" if ok else \"MISSED\":>8} '
      f'{thread_ns / 1e6:12.0f} {containers_us / 1e3:12.0f} {100 * containers_us * 1e3 / thread_ns:9.1f} {softirq * 10:9.0f}')
print(f'           ratios per round: {\" \".join(f\"{r:.2f}\" for r in ratios)}')
cpu_ratios = sorted(r[5] / r[6] for r in rows if r[6] > 0)
per_request = sorted((r[5] / r[0]) / (r[6] / r[1]) for r in rows if r[6] > 0 and r[1] > 0)
print(f'           charged CPU ratio gold:default, median {statistics.median(cpu_ratios):.3f} (rounds: {\" \".join(f\"{r:.2f}\" for r in cpu_ratios)}); '
      f'CPU per request gold/default {statistics.median(per_request):.3f}')
poll_per_request = sorted((r[7] / r[0]) / (r[8] / r[1]) for r in rows if r[8] > 0 and r[1] > 0)
loop_per_request = sorted(((r[5] - r[7]) / r[0]) / ((r[6] - r[8]) / r[1]) for r in rows if r[6] > r[8] and r[1] > 0)
print(f'           of which polls alone gold/default {statistics.median(poll_per_request):.3f}, '
      f'the loop work apportioned gold/default {statistics.median(loop_per_request):.3f} (per request)')
"
    done

    if section 2; then
    echo "--- 2. premium under flood (gold 300 shares, 1 keep-alive connection at chrt -f 50; default 100 shares)"
    start_server "$driver" 300 100
    premium() {
        chrt -f 50 taskset -c "$CLIENT_CPU" "$LARDER_BENCH" --cpus "$CLIENT_CPU" --driver "$CLIENT_DRIVER" --quiet --json \
            -c 1 -d "${DURATION}s" --warmup "${WARMUP}s" "$URL/gold/4k.html"
    }
    premium >"$WORK/alone.json"
    check_run "premium alone $driver" "$WORK/alone.json"
    alone_rps=$(jq '.requests_per_sec' "$WORK/alone.json")
    alone_p99=$(jq '.latency_ms.p99' "$WORK/alone.json")
    printf '%-28s %10s %10s %10s %10s %12s %8s\n' case premium_rps of_alone p99_ms of_alone flood_rps verdict
    printf '%-28s %10.0f %10s %10.3f %10s %12s\n' alone "$alone_rps" 1.000 "$alone_p99" 1.000 -
    for flood in keepalive-64 open-close-256; do
        if [[ $flood == keepalive-64 ]]; then
            flood_args=(-c 64)
        else
            flood_args=(-c 256 --no-keepalive)
        fi
        bench -d "$((DURATION + 2 * WARMUP + 2))s" "${flood_args[@]}" "$URL/4k.html" >"$WORK/flood.json" &
        BACKGROUND_PID=$!
        sleep "$WARMUP"
        premium >"$WORK/premium.json"
        wait "$BACKGROUND_PID"
        BACKGROUND_PID=
        check_run "premium beside $flood $driver" "$WORK/premium.json"
        check_run "flood $flood $driver" "$WORK/flood.json"
        rps=$(jq '.requests_per_sec' "$WORK/premium.json")
        p99=$(jq '.latency_ms.p99' "$WORK/premium.json")
        verdict=$(python3 -c "import sys; print('ok' if $rps >= 0.8 * $alone_rps and $p99 <= 3 * $alone_p99 else 'MISSED')")
        printf '%-28s %10.0f %10s %10.3f %10s %12.0f %8s\n' "beside $flood" "$rps" "$(ratio "$rps" "$alone_rps")" \
            "$p99" "$(ratio "$p99" "$alone_p99")" "$(jq '.requests_per_sec' "$WORK/flood.json")" "$verdict"
    done
    stop_server
    fi

    if section 3; then
    echo "--- 3. CPU cap (default container cpu_percent_max = 25, alone, 64 keep-alive connections)"
    start_server "$driver" 300 100 25
    measure_window bench -d "${DURATION}s" -c 64 --timeout 0 "$URL/4k.html" >"$WORK/cap.json"
    check_run "cap $driver" "$WORK/cap.json"
    window_ns=$(python3 -c "print(int($(jq '.duration_s' "$WORK/cap.json") * 1e9))")
    printf 'req/s %.0f; shard thread CPU %s%% of %ss (target 25 +- 3); containers charged %s%% of it\n' \
        "$(jq '.requests_per_sec' "$WORK/cap.json")" \
        "$(python3 -c "print(f'{100 * $CPU_THREAD_NS / $window_ns:.1f}')")" "$DURATION" \
        "$(python3 -c "print(f'{100 * $CPU_CONTAINERS_US * 1000 / $CPU_THREAD_NS:.1f}')")"
    stop_server
    fi

    if section 5 && ((first_driver)); then
        first_driver=0
        echo "--- 5. pacing (container slow: 1 MiB/s per connection; trickle: 16 KiB/s)"
        start_server "$driver" 300 100
        taskset -c "$CLIENT_CPU" python3 - "127.0.0.1" "$PORT" <<'PY'
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port))
s.sendall(b"GET /slow/10m.bin HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
start = time.monotonic()
arrivals, received = [], 0
while True:
    data = s.recv(1 << 20)
    if not data:
        break
    received += len(data)
    arrivals.append(time.monotonic())
elapsed = arrivals[-1] - start
gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]) if b - a > 0.002)
pick = lambda q: gaps[min(len(gaps) - 1, int(q * len(gaps)))] * 1e3
print(f"10 MiB at 1 MiB/s: {received} bytes in {elapsed:.3f} s (target 10 s +- 5%: "
      f"{'ok' if abs(elapsed - 10) <= 0.5 else 'MISSED'}); gaps between sends over 2 ms: {len(gaps)}, "
      f"p1 {pick(0.01):.2f} ms, p50 {pick(0.5):.2f} ms, p99 {pick(0.99):.2f} ms, max {gaps[-1] * 1e3:.2f} ms")
PY
        bench -d 6s -c 1000 --timeout 0 "$URL/trickle/64k.bin" >"$WORK/trickle.json" &
        BACKGROUND_PID=$!
        sleep 2
        cpu0=$(thread_cpu_ns)
        sleep 3
        cpu1=$(thread_cpu_ns)
        wait "$BACKGROUND_PID"
        BACKGROUND_PID=
        echo "1,000 connections paced at 16 KiB/s: shard thread CPU $(python3 -c "print(f'{100 * ($cpu1 - $cpu0) / 3e9:.1f}')")% " \
            "over 3 s; $(jq '.bytes_per_sec / 1048576 | floor' "$WORK/trickle.json") MiB/s delivered" \
            "(1,000 x 16 KiB/s = 15.6 MiB/s), $(jq '.responses' "$WORK/trickle.json") responses, $(jq '.errors' "$WORK/trickle.json") errors"
        stop_server
    fi
done
