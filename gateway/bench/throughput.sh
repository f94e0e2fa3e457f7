#!/usr/bin/env bash
# Throughput of the gateway against its upstream alone (docs/gateway.md, "Throughput").
#
# Starts a release stock-service, a release gateway and the bare proxy example
# (gateway/examples/bare_proxy.rs) on loopback, then runs wrk against the stock-service's
# GET /healthz directly, through the bare proxy, and through the gateway (GET /bench,
# rewritten to /healthz; public, rate limits off), in turn, ROUNDS times. Also prints the CPU
# time each process used per request (from /proc/PID/stat).
#
# Needs: wrk (apt-get install wrk), PostgreSQL and Redis for the stock-service to start
# (DATABASE_URL, default the tests' database seckill_stock_test — `createdb -U postgres
# seckill_stock_test` if it does not exist —, and REDIS_URL; /healthz itself touches neither).
# Env: DURATION (10s), CONNECTIONS (64), THREADS (2), ROUNDS (3), RUST_LOG (warn),
#      STOCK_PORT (18082), GATEWAY_PORT (18080), BARE_PORT (18090),
#      SKIP_BUILD (1: use the existing binaries).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
STOCK_PORT=${STOCK_PORT:-18082}
GATEWAY_PORT=${GATEWAY_PORT:-18080}
BARE_PORT=${BARE_PORT:-18090}
export RUST_LOG=${RUST_LOG:-warn}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/seckill_stock_test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}

command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release -q -p stock-service
    cargo build --release -q -p gateway --bins --example bare_proxy
fi
target=${CARGO_TARGET_DIR:-target}/release

workdir=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$workdir"
}
trap cleanup EXIT

cat >"$workdir/gateway.toml" <<TOML
listen = "127.0.0.1:${GATEWAY_PORT}"
[pools]
stock = ["http://127.0.0.1:${STOCK_PORT}"]
[[routes]]
name = "bench"
prefix = "/bench"
rewrite = "/healthz"
pool = "stock"
auth = "public"
[rate_limit]
per_user_per_second = 0
global_per_second = 0
TOML

BIND_ADDR=127.0.0.1:${STOCK_PORT} DATABASE_URL=$DATABASE_URL REDIS_URL=$REDIS_URL \
    "$target/stock-service" >"$workdir/stock.log" 2>&1 &
pids+=($!)
GATEWAY_CONFIG=$workdir/gateway.toml JWT_SECRET=bench-secret-bench-secret-bench-secret \
    "$target/gateway" >"$workdir/gateway.log" 2>&1 &
pids+=($!)
"$target/examples/bare_proxy" "http://127.0.0.1:${STOCK_PORT}" "127.0.0.1:${BARE_PORT}" \
    >"$workdir/bare.log" 2>&1 &
pids+=($!)

wait_for() {
    for _ in $(seq 1 100); do
        curl -fsS "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "not answering: $1" >&2
    cat "$workdir"/*.log >&2
    exit 1
}
wait_for "http://127.0.0.1:${STOCK_PORT}/healthz"
wait_for "http://127.0.0.1:${GATEWAY_PORT}/bench"
wait_for "http://127.0.0.1:${BARE_PORT}/x"

# CPU time (utime + stime, in clock ticks) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# Runs wrk on $1; prints "rps requests".
run() {
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$1" | tee -a "$workdir/wrk.txt" |
        awk '/requests in/ {n = $1} /^Requests\/sec/ {r = $2} END {print r, n}'
}

# CPU microseconds per request of process $1 over a run that made $3 requests, from
# ticks $2 at the start.
per_request_us() { awk -v t0="$2" -v t1="$(ticks "$1")" -v n="$3" -v hz="$hz" \
    'BEGIN {printf "%.1f", (t1 - t0) / hz * 1e6 / n}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, RUST_LOG=$RUST_LOG"
stock_pid=${pids[0]}
gateway_pid=${pids[1]}
bare_pid=${pids[2]}
# Runs wrk on $2 and prints "$1: rps, CPU µs/request of the proxy $3 and of the upstream".
measure() {
    local s0 p0 rps n
    s0=$(ticks "$stock_pid")
    p0=$(ticks "${3:-$stock_pid}")
    read -r rps n < <(run "$2")
    last_rps=$rps
    if [[ -n ${3:-} ]]; then
        echo "  $1: $rps rps; CPU per request: proxy $(per_request_us "$3" "$p0" "$n") µs," \
            "upstream $(per_request_us "$stock_pid" "$s0" "$n") µs"
    else
        echo "  $1: $rps rps; CPU per request: upstream $(per_request_us "$stock_pid" "$s0" "$n") µs"
    fi
}
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round"
    measure "direct    " "http://127.0.0.1:${STOCK_PORT}/healthz"
    direct=$last_rps
    measure "bare proxy" "http://127.0.0.1:${BARE_PORT}/x" "$bare_pid"
    bare=$last_rps
    measure "gateway   " "http://127.0.0.1:${GATEWAY_PORT}/bench" "$gateway_pid"
    awk -v d="$direct" -v b="$bare" -v g="$last_rps" 'BEGIN {
        printf "  ratio to direct: bare proxy %.2f, gateway %.2f; gateway to bare proxy %.2f\n",
            b / d, g / d, g / b }'
done
echo "--- wrk output ---"
cat "$workdir/wrk.txt"
