#!/usr/bin/env bash
# What scraping /metrics costs the data plane (issue 15: "scraping every 100 ms costs < 1% of 4 KiB req/s").
#
# One `larder serve` with one shard on CPU $SERVER_CPU serves a 4 KiB file; `larder-bench --driver epoll` on CPU
# $CLIENT_CPU loads it over $CONNECTIONS keep-alive connections for $DURATION seconds per round. Rounds alternate
# (off on on off ...): "on" rounds run a scraper on CPU $CLIENT_CPU that fetches /metrics every 100 ms with curl.
# Every round checks that each response was a 200 (larder-bench's `ok` equals its `responses`, no errors) and
# that every scrape answered 200. Prints the median req/s of each side and the ratio on/off.
#
# Usage: bench/scripts/metrics-scrape-bench.sh            (ROUNDS=10 DURATION=5 CONNECTIONS=64)
#        ROUNDS=2 DURATION=1 bench/scripts/metrics-scrape-bench.sh     (a smoke run)
# LARDER and LARDER_BENCH name prebuilt binaries (default: a release build of this tree).
set -euo pipefail

ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-18530}
METRICS_PORT=${METRICS_PORT:-18531}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SCRAPE_INTERVAL_S=0.1
REPO=$(cd "$(dirname "$0")/../.." && pwd)

# shellcheck source=bench/scripts/lib.sh
. "$REPO/bench/scripts/lib.sh"
ensure_tools taskset:util-linux curl:curl python3:python3

WORK=$(mktemp -d /tmp/metrics-scrape-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [[ -z "${LARDER:-}" || -z "${LARDER_BENCH:-}" ]]; then
    (cd "$REPO" && cargo build --release -q -p larder -p larder-loadgen)
    LARDER=${LARDER:-${CARGO_TARGET_DIR:-$REPO/target}/release/larder}
    LARDER_BENCH=${LARDER_BENCH:-${CARGO_TARGET_DIR:-$REPO/target}/release/larder-bench}
fi

mkdir -p "$WORK/www"
head -c 4096 /dev/zero | tr '\0' 'x' >"$WORK/www/4k.html"
RUST_LOG=warn "$LARDER" serve --listen "127.0.0.1:$PORT" --cpus "$SERVER_CPU" --no-control \
    --metrics "127.0.0.1:$METRICS_PORT" "$WORK/www" >/dev/null 2>"$WORK/serve.err" &
PIDS+=($!)
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/4k.html" && break
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/4k.html" || { cat "$WORK/serve.err" >&2; exit 1; }
curl -sf -o /dev/null "http://127.0.0.1:$METRICS_PORT/metrics" || { echo "no /metrics" >&2; exit 1; }

# scraper FILE: fetches /metrics every 100 ms until killed; appends each status code to FILE.
scraper() {
    while true; do
        curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$METRICS_PORT/metrics" >>"$1" || echo 000 >>"$1"
        sleep "$SCRAPE_INTERVAL_S"
    done
}

# round SIDE N: one measured run; appends its req/s to $WORK/SIDE.rates.
round() {
    local side=$1 n=$2 scraper_pid= codes=$WORK/scrapes.$n
    if [[ $side == on ]]; then
        : >"$codes"
        taskset -c "$CLIENT_CPU" bash -c "$(declare -f scraper); METRICS_PORT=$METRICS_PORT SCRAPE_INTERVAL_S=$SCRAPE_INTERVAL_S; scraper $codes" &
        scraper_pid=$!
    fi
    taskset -c "$CLIENT_CPU" "$LARDER_BENCH" -c "$CONNECTIONS" -d "${DURATION}s" --warmup 500ms \
        --cpus "$CLIENT_CPU" --driver epoll --json --quiet "http://127.0.0.1:$PORT/4k.html" >"$WORK/round.$n.json"
    if [[ -n $scraper_pid ]]; then
        kill "$scraper_pid" 2>/dev/null || true
        wait "$scraper_pid" 2>/dev/null || true
    fi
    python3 - "$WORK/round.$n.json" "$side" "$codes" >>"$WORK/$side.rates" <<'EOF'
import json, sys
path, side, codes = sys.argv[1:4]
result = json.load(open(path))
assert result["responses"] > 0, f"{path}: no responses"
assert result["errors"] == 0 and result["ok"] == result["responses"], f"{path}: not every response was a 200: {result}"
if side == "on":
    statuses = open(codes).read().split()
    assert statuses, "the scraper fetched nothing"
    assert all(status == "200" for status in statuses), f"a scrape failed: {sorted(set(statuses))}"
    print(f"{result['requests_per_sec']} {len(statuses)}")
else:
    print(f"{result['requests_per_sec']} 0")
EOF
    echo "round $n ($side): $(tail -1 "$WORK/$side.rates" | awk '{printf "%.0f req/s, %d scrapes", $1, $2}')"
}

echo "kernel $(uname -r), commit $(git -C "$REPO" rev-parse --short HEAD), $(date -u +%F)"
echo "4 KiB keep-alive, $CONNECTIONS connections, server CPU $SERVER_CPU, client and scraper CPU $CLIENT_CPU, ${DURATION}s rounds"
for n in $(seq 1 "$ROUNDS"); do
    # off on on off off on on off ...: each side gets as many early and late rounds.
    case $((n % 4)) in 1 | 0) side=off ;; *) side=on ;; esac
    round "$side" "$n"
done
python3 - "$WORK/off.rates" "$WORK/on.rates" <<'EOF'
import statistics, sys
def rates(path):
    try:
        return [float(line.split()[0]) for line in open(path)]
    except FileNotFoundError:
        return []
off, on = rates(sys.argv[1]), rates(sys.argv[2])
if not off or not on:
    sys.exit("need at least one round of each side (ROUNDS >= 2)")
off_median, on_median = statistics.median(off), statistics.median(on)
print(f"median req/s without scraping: {off_median:.0f} ({len(off)} rounds)")
print(f"median req/s scraping /metrics every 100 ms: {on_median:.0f} ({len(on)} rounds)")
print(f"ratio on/off: {on_median / off_median:.4f} (cost {100 * (1 - on_median / off_median):.2f} %)")
EOF
