#!/usr/bin/env bash
# larder vs nginx on the same directory, same load generator, alternating rounds (issue 4 acceptance).
#
# Servers: `larder serve --cpus $SERVER_CPUS` and nginx with worker_processes = number of larder shards, pinned
# to the same CPUs (worker_cpu_affinity), sendfile on, open_file_cache on, access_log off. Both serve $WORK/www.
# Load: wrk pinned (taskset) to $CLIENT_CPUS, `--latency`; rounds alternate the order (nginx first in odd rounds).
# CLIENT=larder-bench drives the same rounds with larder-bench (`--cpus $CLIENT_CPUS --driver epoll --json`; zipf
# uses its --files list with --zipf $ZIPF_ALPHA and a fixed seed) instead of wrk; everything else is the same.
# Workloads:
#   4k    GET /4k.html, keep-alive, $CONNECTIONS connections             → req/s, p50, p99
#   1m    GET /1m.bin, keep-alive, 16 connections                        → bytes/s, p50, p99
#   zipf  Zipf(alpha=$ZIPF_ALPHA) over 10,000 files of 16 KiB (160 MiB), larder --cache-mb $ZIPF_CACHE_MB (smaller
#         than the set), a seeded wrk Lua script picks the paths           → req/s, p50, p99
# Prints one table of medians over rounds and the ratio larder/nginx per metric. Exits 1, naming the server, workload
# and round, when wrk reports socket errors or non-2xx/3xx responses (a ratio of such a run would be garbage).
# Targets (issue 4): 4k on one core ≥ 1.2× nginx req/s with p99 ≤ nginx's; 1m ≥ 0.9× nginx bytes/s.
#
# Usage: bench/scripts/nginx-compare.sh                     (ROUNDS=3 DURATION=10 SERVER_CPUS=0 CLIENT_CPUS=1)
#        ROUNDS=5 DURATION=20 IO_DRIVER=uring WORKLOADS="4k 1m" bench/scripts/nginx-compare.sh
#        LARDER=/path/to/larder bench/scripts/nginx-compare.sh   (skip the cargo build)
#        CLIENT=larder-bench bench/scripts/nginx-compare.sh       (LARDER_BENCH=/path skips its build)
#        LARDER_ARGS='--cache-read page-cache' WORKLOADS=zipf bench/scripts/nginx-compare.sh   (extra serve flags)
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
SERVER_CPUS=${SERVER_CPUS:-0}        # CPU list for both servers, e.g. "0" or "0-1"
CLIENT_CPUS=${CLIENT_CPUS:-1}          # CPU list for wrk
WRK_THREADS=${WRK_THREADS:-1}
CLIENT=${CLIENT:-wrk}                  # wrk or larder-bench
IO_DRIVER=${IO_DRIVER:-auto}
WORKLOADS=${WORKLOADS:-"4k 1m zipf"}
ZIPF_ALPHA=${ZIPF_ALPHA:-1.0}
ZIPF_CACHE_MB=${ZIPF_CACHE_MB:-64}
LARDER_PORT=${LARDER_PORT:-18580}
NGINX_PORT=${NGINX_PORT:-18581}
REPO=$(cd "$(dirname "$0")/../.." && pwd)

# shellcheck source=bench/scripts/lib.sh
. "$REPO/bench/scripts/lib.sh"
ensure_tools /usr/sbin/nginx:nginx-light wrk:wrk taskset:util-linux curl:curl jq:jq
case $CLIENT in
    wrk) ;;
    larder-bench)
        if [[ -z "${LARDER_BENCH:-}" ]]; then
            (cd "$REPO" && cargo build --release -q -p larder-loadgen)
            LARDER_BENCH=${CARGO_TARGET_DIR:-$REPO/target}/release/larder-bench
        fi
        ;;
    *) echo "nginx-compare: CLIENT must be wrk or larder-bench, not '$CLIENT'" >&2; exit 2 ;;
esac
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [[ -z "${LARDER:-}" ]]; then
    (cd "$REPO" && cargo build --release -q -p larder)
    LARDER=${CARGO_TARGET_DIR:-$REPO/target}/release/larder
fi

# CPU list "0-1,3" → count and nginx affinity masks (one per worker).
cpus=()
IFS=',' read -ra parts <<<"$SERVER_CPUS"
for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then for ((c = ${part%-*}; c <= ${part#*-}; c++)); do cpus+=("$c"); done
    else cpus+=("$part"); fi
done
SHARDS=${#cpus[@]}
masks=""
for c in "${cpus[@]}"; do
    bits=""
    for ((b = 63; b >= 0; b--)); do if ((b == c)); then bits+="1"; elif [[ -n $bits ]]; then bits+="0"; fi; done
    masks+=" $bits"
done

WORK=$(mktemp -d /tmp/nginx-compare.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/www/z" "$WORK/logs"
# 3 random bytes → 4 base64 characters: exact sizes without cutting a pipe short (a SIGPIPE under pipefail would end
# the script silently with status 141).
head -c 3072 /dev/urandom | base64 -w 0 >"$WORK/www/4k.html"
head -c $((1 << 20)) /dev/urandom >"$WORK/www/1m.bin"
if [[ " $WORKLOADS " == *" zipf "* ]]; then
    block=$(head -c 12288 /dev/urandom | base64 -w 0)
    for ((i = 0; i < 10000; i++)); do printf '%s' "$block" >"$WORK/www/z/$i.html"; done
    # the same paths for larder-bench's --files, most popular first (rank i+1 = /z/i.html, as in zipf.lua)
    for ((i = 0; i < 10000; i++)); do echo "/z/$i.html"; done >"$WORK/zipf-files.txt"
fi
chmod -R a+rX "$WORK/www"

cat >"$WORK/nginx.conf" <<CONF
worker_processes $SHARDS;
worker_cpu_affinity$masks;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=20000 inactive=60s;
    open_file_cache_valid 60s;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport;
        root $WORK/www;
    }
}
CONF

cat >"$WORK/zipf.lua" <<'LUA'
-- Zipf(alpha) over 10,000 paths with a fixed seed: the same sequence for both servers. (wrk runs LuaJIT = Lua 5.1: no `//`.)
local n, alpha = 10000, tonumber(os.getenv("ZIPF_ALPHA") or "1.0")
local cdf, total = {}, 0
for i = 1, n do total = total + 1 / (i ^ alpha); cdf[i] = total end
for i = 1, n do cdf[i] = cdf[i] / total end
math.randomseed(42)
request = function()
    local u, lo, hi = math.random(), 1, n
    while lo < hi do local mid = math.floor((lo + hi) / 2); if cdf[mid] < u then lo = mid + 1 else hi = mid end end
    return wrk.format("GET", "/z/" .. (lo - 1) .. ".html")
end
LUA

LARDER_PID=""
NGINX_PID=""
cleanup() {
    [[ -n $LARDER_PID ]] && kill "$LARDER_PID" 2>/dev/null && wait "$LARDER_PID" 2>/dev/null || true
    [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_up() { for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$1/4k.html" && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }

start_larder() { # $1 = cache MiB
    # shellcheck disable=SC2086 # LARDER_ARGS is a list of extra flags
    "$LARDER" serve --listen "127.0.0.1:$LARDER_PORT" --cpus "$SERVER_CPUS" --io-driver "$IO_DRIVER" \
        --cache-mb "$1" --no-control ${LARDER_ARGS:-} "$WORK/www" >"$WORK/logs/larder.log" 2>&1 &
    LARDER_PID=$!
    wait_up "$LARDER_PORT"
}
stop_larder() { kill "$LARDER_PID"; wait "$LARDER_PID" || true; LARDER_PID=""; }

"$NGINX" -c "$WORK/nginx.conf" -p "$WORK" 2>"$WORK/logs/nginx.stderr" &
NGINX_PID=$!
wait_up "$NGINX_PORT"

# wrk output → "req_per_s bytes_per_s p50_us p99_us"
parse_wrk() {
    awk '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v }
    function bytes(v) { if (v ~ /GB$/) return v * 1073741824; if (v ~ /MB$/) return v * 1048576; if (v ~ /KB$/) return v * 1024; return v + 0 }
    $1 == "50%" { p50 = us($2) } $1 == "99%" { p99 = us($2) }
    $1 == "Requests/sec:" { rps = $2 } $1 == "Transfer/sec:" { bps = bytes($2) }
    END { printf "%.0f %.0f %.0f %.0f\n", rps, bps, p50, p99 }'
}

# Runs wrk and prints its parsed result; exits non-zero, naming the server, workload and round, when wrk fails,
# reports socket errors (connect/read/write/timeout) or non-2xx/3xx responses, or measured no requests: a ratio of
# such a run would be garbage.
run_wrk() { # $1 server, $2 port, $3 workload, $4 round ("warm-up" or a number)
    local server=$1 port=$2 workload=$3 round=$4 args=() output
    case $workload in
        4k) args=(-c "$CONNECTIONS" "http://127.0.0.1:$port/4k.html") ;;
        1m) args=(-c 16 "http://127.0.0.1:$port/1m.bin") ;;
        zipf) args=(-c "$CONNECTIONS" -s "$WORK/zipf.lua" "http://127.0.0.1:$port/") ;;
    esac
    fail() { echo "nginx-compare: $server, workload $workload, round $round: $1" >&2; echo "$output" >&2; exit 1; }
    output=$(ZIPF_ALPHA=$ZIPF_ALPHA taskset -c "$CLIENT_CPUS" wrk -t "$WRK_THREADS" -d "${DURATION}s" --latency \
        "${args[@]}" 2>&1) || fail "wrk exited with status $?"
    if grep -q "Socket errors:" <<<"$output"; then fail "wrk reported socket errors"; fi
    if grep -q "Non-2xx or 3xx responses:" <<<"$output"; then fail "wrk reported non-2xx/3xx responses"; fi
    if ! awk '$1 == "Requests/sec:" && $2 > 0 { found = 1 } END { exit !found }' <<<"$output"; then
        fail "wrk measured no requests"
    fi
    parse_wrk <<<"$output"
}

# Runs larder-bench; same contract and output as run_wrk.
run_larder_bench() { # $1 server, $2 port, $3 workload, $4 round
    local server=$1 port=$2 workload=$3 round=$4 args=() output
    case $workload in
        4k) args=(-c "$CONNECTIONS" "http://127.0.0.1:$port/4k.html") ;;
        1m) args=(-c 16 "http://127.0.0.1:$port/1m.bin") ;;
        zipf) args=(-c "$CONNECTIONS" --files "$WORK/zipf-files.txt" --zipf "$ZIPF_ALPHA" --seed 42
            "http://127.0.0.1:$port/") ;;
    esac
    fail() { echo "nginx-compare: $server, workload $workload, round $round: $1" >&2; echo "$output" >&2; exit 1; }
    output=$(taskset -c "$CLIENT_CPUS" "$LARDER_BENCH" --cpus "$CLIENT_CPUS" --driver epoll -d "${DURATION}s" \
        --quiet --json "${args[@]}" 2>&1) || fail "larder-bench exited with status $?"
    jq -e '.errors == 0 and .requests_per_sec > 0' <<<"$output" >/dev/null ||
        fail "larder-bench reported errors or measured no requests"
    jq -r '"\(.requests_per_sec) \(.bytes_per_sec) \(.latency_ms.p50 * 1000) \(.latency_ms.p99 * 1000)"' <<<"$output" |
        awk '{ printf "%.0f %.0f %.0f %.0f\n", $1, $2, $3, $4 }'
}
run_client() { if [[ $CLIENT == wrk ]]; then run_wrk "$@"; else run_larder_bench "$@"; fi; }

# CPU time (utime + stime, clock ticks) of a process and its children (nginx workers), all threads.
cpu_ticks() {
    local total=0 pid
    for pid in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        total=$((total + $(awk '{ print $14 + $15 }' /proc/"$pid"/stat 2>/dev/null || echo 0)))
    done
    echo "$total"
}
TICKS_PER_S=$(getconf CLK_TCK)

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "larder $("$LARDER" --version 2>/dev/null | awk '{print $2}') ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')) vs $("$NGINX" -v 2>&1 | sed 's/.*: //')"
echo "server CPUs $SERVER_CPUS ($SHARDS shards/workers), $CLIENT on CPUs $CLIENT_CPUS, $ROUNDS rounds × ${DURATION}s, driver $IO_DRIVER, $(nproc) CPUs, $(uname -r)"
printf '\n%-6s %-7s %14s %14s %10s %10s %12s\n' workload server "req/s" "bytes/s" "p50 µs" "p99 µs" "cpu µs/req"
for workload in $WORKLOADS; do
    cache_mb=256
    [[ $workload == zipf ]] && cache_mb=$ZIPF_CACHE_MB
    start_larder "$cache_mb"
    : >"$WORK/larder.$workload"
    : >"$WORK/nginx.$workload"
    # Warm both (first reads, caches), untimed.
    DURATION=2 run_client larder "$LARDER_PORT" "$workload" warm-up >/dev/null
    DURATION=2 run_client nginx "$NGINX_PORT" "$workload" warm-up >/dev/null
    for ((round = 1; round <= ROUNDS; round++)); do
        if ((round % 2)); then order="nginx larder"; else order="larder nginx"; fi
        for server in $order; do
            port=$NGINX_PORT
            [[ $server == larder ]] && port=$LARDER_PORT
            pid=$NGINX_PID
            [[ $server == larder ]] && pid=$LARDER_PID
            ticks_before=$(cpu_ticks "$pid")
            result=$(run_client "$server" "$port" "$workload" "$round")
            ticks=$(($(cpu_ticks "$pid") - ticks_before))
            # Server CPU µs per request: robust to other load on the machine (timing columns are not).
            echo "$result $(awk -v t="$ticks" -v hz="$TICKS_PER_S" -v r="${result%% *}" -v d="$DURATION" \
                'BEGIN { if (r > 0) printf "%.1f", t / hz * 1e6 / (r * d); else print 0 }')" >>"$WORK/$server.$workload"
        done
    done
    stop_larder
    declare -A med=()
    for server in nginx larder; do
        for column in 1 2 3 4 5; do
            med[$server.$column]=$(awk -v c=$column '{ print $c }' "$WORK/$server.$workload" | median)
        done
        printf '%-6s %-7s %14s %14s %10s %10s %12s\n' "$workload" "$server" "${med[$server.1]}" "${med[$server.2]}" \
            "${med[$server.3]}" "${med[$server.4]}" "${med[$server.5]}"
    done
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
    printf '%-6s %-7s %14s %14s %10s %10s %12s\n' "$workload" "ratio" "$(ratio "${med[larder.1]}" "${med[nginx.1]}")" \
        "$(ratio "${med[larder.2]}" "${med[nginx.2]}")" "$(ratio "${med[larder.3]}" "${med[nginx.3]}")" \
        "$(ratio "${med[larder.4]}" "${med[nginx.4]}")" "$(ratio "${med[larder.5]}" "${med[nginx.5]}")"
    unset med
done
echo
echo "ratio = larder / nginx (req/s and bytes/s: higher is better; latency and cpu µs/req: lower is better)"
