#!/usr/bin/env bash
# Cluster benchmark on one machine (issue 7): 4 `larder serve` back-ends, each with a cache smaller than the
# working set (default 32 MiB each, 128 MiB together) in front of a Zipf site of 10,000 files, reached through
# a front-end:
#   lard-r, ch-bl, wrr  `larder dispatch --policy …`
#   haproxy             HAProxy as its users configure content-aware balancing: balance uri, hash-type
#                       consistent, hash-balance-factor 150, keep-alive to the servers (http-reuse safe)
#   dist-lard-r, dist-ch-bl, dist-wrr
#                       distributed mode, no front-end: `larder control --policy …` + the 4 nodes started with
#                       `larder serve --cluster --join`; the clients are spread over the 4 nodes (one
#                       larder-bench per node, CONNECTIONS/4 connections each, seeds 7..10, results summed) and
#                       each node serves a target or forwards it to the node the control plane assigned
# Every front-end gets fresh back-ends (cold caches), a warm-up run, then a measured run; runs of all front-ends
# alternate in each round (the order rotates by round). Per run:
#   req/s                 larder-bench `requests_per_sec` (JSON)
#   file bytes/request    Σ over back-ends of the growth of /proc/PID/io `rchar` during the measured run, divided
#                         by responses; a back-end reads a file only on a cache miss (a hit reads nothing), so
#                         this is the disk traffic per request (request heads add ~100 B/request, negligible)
#   byte hit ratio        1 − file bytes read / body bytes served (`bytes_per_sec` × duration)
# Prints one line per run and the median per front-end over rounds.
# Targets (issue 7): LARD/R byte hit ratio ≥ 0.9 while WRR's stays near one node's; file bytes/request ≥ 5×
# lower than WRR's; larder dispatch ≥ 1.0× HAProxy's req/s with a hit ratio at least HAProxy's.
#
# Usage: bench/scripts/cluster-bench.sh         (ROUNDS=3 DURATION=20 WARMUP=10
#                                                FRONTENDS="lard-r ch-bl wrr haproxy dist-lard-r dist-ch-bl dist-wrr")
#        LARDER=… LARDER_BENCH=… bench/scripts/cluster-bench.sh   (skip the cargo build)
#        FILES=10000 SIZES=fixed:10240 CACHE_MB=32 ZIPF=1.0 CONNECTIONS=64 bench/scripts/cluster-bench.sh
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-10}
FRONTENDS=${FRONTENDS:-"lard-r ch-bl wrr haproxy dist-lard-r dist-ch-bl dist-wrr"}
FILES=${FILES:-10000}
SIZES=${SIZES:-fixed:10240}
CACHE_MB=${CACHE_MB:-32}
ZIPF=${ZIPF:-1.0}
CONNECTIONS=${CONNECTIONS:-64}
BACKEND_CPUS=${BACKEND_CPUS:-"0 1 0 1"}   # one CPU per back-end (4 back-ends)
FRONT_CPUS=${FRONT_CPUS:-0-1}             # CPUs of the front-end (dispatch shards, HAProxy threads)
CLIENT_CPUS=${CLIENT_CPUS:-0-1}           # CPUs of larder-bench
BASE_PORT=${BASE_PORT:-18700}
WORK=${WORK:-$(mktemp -d /tmp/larder-cluster.XXXXXX)}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$WORK"

# shellcheck source=bench/scripts/lib.sh
. "$REPO/bench/scripts/lib.sh"
[[ " $FRONTENDS " != *" haproxy "* ]] || ensure_tools haproxy:haproxy
if [[ -z "${LARDER:-}" || -z "${LARDER_BENCH:-}" ]]; then
    (cd "$REPO" && cargo build --release -q -p larder -p larder-loadgen)
    LARDER=${CARGO_TARGET_DIR:-$REPO/target}/release/larder
    LARDER_BENCH=${CARGO_TARGET_DIR:-$REPO/target}/release/larder-bench
fi

[[ -f $WORK/site/files.txt ]] || "$LARDER_BENCH" gen-site "$WORK/site" --files "$FILES" --sizes "$SIZES" --seed 1 >/dev/null
FRONT_PORT=$BASE_PORT
read -ra backend_cpus <<<"$BACKEND_CPUS"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

backend_pids=()
CONTROL_PORT=$((BASE_PORT + 50))
start_backends() { # [control flags…]: the default is --no-control
    local control=("$@")
    [[ ${#control[@]} -gt 0 ]] || control=(--no-control)
    backend_pids=()
    for i in "${!backend_cpus[@]}"; do
        local port=$((BASE_PORT + 1 + i)) cpu=${backend_cpus[$i]}
        "$LARDER" serve --listen "127.0.0.1:$port" --cpus "$cpu" --cache-mb "$CACHE_MB" "${control[@]}" \
            "$WORK/site" >"$WORK/backend-$i.log" 2>&1 &
        backend_pids+=($!); pids+=($!)
        wait_port "$port"
    done
}
stop() { for pid in "$@"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }
rchar_total() { local sum=0; for pid in "${backend_pids[@]}"; do sum=$((sum + $(awk '/^rchar/ {print $2}' "/proc/$pid/io"))); done; echo "$sum"; }

start_frontend() {
    local kind=$1 backends=()
    for i in "${!backend_cpus[@]}"; do backends+=(--backend "127.0.0.1:$((BASE_PORT + 1 + i))"); done
    if [[ $kind == haproxy ]]; then
        local threads servers=""
        threads=$(taskset -c "$FRONT_CPUS" nproc)
        for i in "${!backend_cpus[@]}"; do
            servers+="    server s$i 127.0.0.1:$((BASE_PORT + 1 + i)) maxconn 256"$'\n'
        done
        cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread $threads
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse safe
frontend www
    bind 127.0.0.1:$FRONT_PORT
    default_backend nodes
backend nodes
    balance uri
    hash-type consistent
    hash-balance-factor 150
$servers
EOF
        taskset -c "$FRONT_CPUS" haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/front.log" 2>&1 &
    else
        "$LARDER" dispatch --listen "127.0.0.1:$FRONT_PORT" --policy "$kind" --cpus "$FRONT_CPUS" --no-control \
            "${backends[@]}" >"$WORK/front.log" 2>&1 &
    fi
    front_pid=$!; pids+=($front_pid)
    wait_port "$FRONT_PORT"
}

# Distributed mode: the control plane with the policy, then the 4 nodes joining it (front_pid = the control plane).
start_cluster() {
    "$LARDER" control --listen "127.0.0.1:$CONTROL_PORT" --policy "${1#dist-}" >"$WORK/front.log" 2>&1 &
    front_pid=$!; pids+=($front_pid)
    wait_port "$CONTROL_PORT"
    start_backends --cluster --join "127.0.0.1:$CONTROL_PORT"
}

load() { # duration_s [port] [connections] [seed] → JSON on stdout
    taskset -c "$CLIENT_CPUS" "$LARDER_BENCH" "http://127.0.0.1:${2:-$FRONT_PORT}/" --files "$WORK/site/files.txt" \
        --zipf "$ZIPF" --seed "${4:-7}" -c "${3:-$CONNECTIONS}" -d "${1}s" --json -q
}

# One larder-bench per node at once; their JSON summed into the fields the report uses.
load_spread() { # duration_s → JSON on stdout
    local i per=$(((CONNECTIONS + ${#backend_cpus[@]} - 1) / ${#backend_cpus[@]})) runs=()
    for i in "${!backend_cpus[@]}"; do
        load "$1" $((BASE_PORT + 1 + i)) "$per" $((7 + i)) >"$WORK/spread-$i.json" &
        runs+=($!)
    done
    wait "${runs[@]}"
    python3 - "$WORK"/spread-*.json <<'PY'
import json, sys
runs = [json.load(open(path)) for path in sys.argv[1:]]
print(json.dumps({key: sum(run[key] for run in runs) for key in ("requests_per_sec", "responses", "bytes_per_sec", "errors")}))
PY
}

read -ra fronts <<<"$FRONTENDS"
results=$WORK/results.tsv
: >"$results"
printf '%-11s %5s %12s %16s %14s %8s\n' frontend round req/s file_B/request byte_hit_ratio errors
for ((round = 1; round <= ROUNDS; round++)); do
    for ((k = 0; k < ${#fronts[@]}; k++)); do
        kind=${fronts[$(((k + round - 1) % ${#fronts[@]}))]}
        if [[ $kind == dist-* ]]; then
            start_cluster "$kind"
            run=load_spread
        else
            start_backends
            start_frontend "$kind"
            run=load
        fi
        $run "$WARMUP" >/dev/null
        before=$(rchar_total)
        json=$($run "$DURATION")
        after=$(rchar_total)
        stop "$front_pid" "${backend_pids[@]}"
        line=$(python3 -c '
import json, sys
r = json.loads(sys.argv[1]); read = int(sys.argv[2]); dur = float(sys.argv[3])
responses = max(r["responses"], 1); served = r["bytes_per_sec"] * dur
print("%.0f\t%.0f\t%.3f\t%d" % (r["requests_per_sec"], read / responses, 1 - read / max(served, 1), r["errors"]))
' "$json" "$((after - before))" "$DURATION")
        printf '%s\t%s\t%s\n' "$kind" "$round" "$line" >>"$results"
        IFS=$'\t' read -r rps bpr hit errors <<<"$line"
        printf '%-11s %5s %12s %16s %14s %8s\n' "$kind" "$round" "$rps" "$bpr" "$hit" "$errors"
    done
done
echo "medians over $ROUNDS rounds (site: $FILES files, $SIZES; caches: 4 x $CACHE_MB MiB; zipf $ZIPF; $CONNECTIONS connections):"
python3 - "$results" <<'EOF'
import statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    kind, _round, rps, bpr, hit, errors = line.rstrip("\n").split("\t")
    rows[kind].append((float(rps), float(bpr), float(hit), int(errors)))
med = {k: tuple(statistics.median(col) for col in zip(*v)) for k, v in rows.items()}
for kind, (rps, bpr, hit, errors) in med.items():
    print(f"  {kind:11s} req/s {rps:10.0f}  file B/request {bpr:10.0f}  byte hit ratio {hit:6.3f}  errors {errors:.0f}")
if "wrr" in med and "lard-r" in med and med["lard-r"][1] > 0:
    print(f"  WRR / LARD-R file bytes per request: {med['wrr'][1] / med['lard-r'][1]:.1f}x")
if "haproxy" in med and "lard-r" in med:
    print(f"  LARD-R / HAProxy req/s: {med['lard-r'][0] / med['haproxy'][0]:.2f}x")
if "dist-wrr" in med and "dist-lard-r" in med and med["dist-lard-r"][1] > 0:
    print(f"  distributed: WRR / LARD-R file bytes per request: {med['dist-wrr'][1] / med['dist-lard-r'][1]:.1f}x")
if "dist-lard-r" in med and "lard-r" in med:
    print(f"  distributed / dispatcher LARD-R req/s: {med['dist-lard-r'][0] / med['lard-r'][0]:.2f}x")
EOF
