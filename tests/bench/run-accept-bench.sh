#!/bin/bash
# Issue-2 benchmarks, side by side in one run:
#   starve      uvip-echo --max-conns 64 vs bench-baseline-server --max-conns 64
#   throughput  uvip-echo vs plain libuv echo (bench-baseline-server, no cap)
#   rate        uvip-echo vs plain libuv echo
# Runs alternate (A B B A A B ...), RUNS each (default 5); the table shows medians
# and ratios (uvip / peer). Everything is bounded in time (about 3.5 minutes
# with the defaults) and the servers are killed on exit.
#
#   tests/bench/run-accept-bench.sh [--build-dir DIR] [--runs N] [--quick]
#                                   [--only starve,throughput,rate]
#
# Environment: RUNS, ONLY, STARVE_MS (8000), TP_MS (5000), RATE_MS (5000),
# PIN=0 to not pin (default: servers on CPU 1, clients on CPU 0 with taskset),
# OUT=DIR for the raw logs (default: a fresh mktemp dir, printed).
# Network: 127.0.0.1-127.0.0.16 (servers), 127.0.1.1-127.0.1.64 (clients).
set -u

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=""
RUNS=${RUNS:-5}
STARVE_MS=${STARVE_MS:-8000}
TP_MS=${TP_MS:-5000}
RATE_MS=${RATE_MS:-5000}
PIN=${PIN:-1}
CAP=64
ONLY=${ONLY:-starve,throughput,rate}
while [ $# -gt 0 ]; do
  case "$1" in
  --build-dir) BUILD=$2; shift 2 ;;
  --runs) RUNS=$2; shift 2 ;;
  --quick) RUNS=1; STARVE_MS=3000; TP_MS=2000; RATE_MS=2000; shift ;;
  --only) ONLY=$2; shift 2 ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "run-accept-bench.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
case "$RUNS" in ''|*[!0-9]*) echo "run-accept-bench.sh: bad --runs" >&2; exit 2 ;; esac
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 20 ] || { echo "run-accept-bench.sh: --runs 1..20" >&2; exit 2; }

if [ -z "$BUILD" ]; then
  BUILD=$SRC/build-bench
  if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" "$SRC" >/dev/null || exit 1
  fi
  ninja -C "$BUILD" >/dev/null || { echo "build failed" >&2; exit 1; }
fi
UVIP=$BUILD/examples/uvip-echo
BASE=$BUILD/tests/bench/bench-baseline-server
LOAD=$BUILD/tests/bench/bench-load
for b in "$UVIP" "$BASE" "$LOAD"; do
  [ -x "$b" ] || { echo "run-accept-bench.sh: missing $b (build first)" >&2; exit 1; }
done

OUT=${OUT:-$(mktemp -d /tmp/uvip-accept-bench.XXXXXX)}
mkdir -p "$OUT"
RES=$OUT/results.txt
: > "$RES"

if [ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  SRV_PIN="taskset -c 1"
  CLI_PIN="taskset -c 0"
else
  SRV_PIN=""
  CLI_PIN=""
fi

SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill -KILL "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
  fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# start_server LOG CMD... : starts it in the background, waits (<= 5 s) for
# its "serving 16 of 16 VIPs" line.
start_server() {
  local log=$1
  shift
  $SRV_PIN "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 50); do
    if grep -q "serving 16 of 16 VIPs" "$log" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  echo "run-accept-bench.sh: server did not start: $*" >&2
  cat "$log" >&2
  exit 1
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null
  for _ in $(seq 1 30); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}

# one SCENARIO NAME RUN PORT SERVER-CMD... -- CLIENT-ARGS...
one() {
  local scen=$1 name=$2 run=$3 port=$4
  shift 4
  local srv=()
  while [ "$1" != "--" ]; do srv+=("$1"); shift; done
  shift
  local slog=$OUT/$scen-$name-$run.server.log clog=$OUT/$scen-$name-$run.client.log
  local limit_s=$(( (${DUR_MS} / 1000) + 15 ))
  start_server "$slog" "${srv[@]}" --port "$port"
  timeout -k 2 "$limit_s" $CLI_PIN "$LOAD" --port "$port" "$@" >"$clog" 2>&1
  # Server CPU time over the whole run, before it exits: the scheduler's
  # run time in ns from /proc/PID/task/*/schedstat (exact, unlike the
  # tick-sampled utime/stime).
  local cpu_ns
  cpu_ns=$(cat /proc/"$SERVER_PID"/task/*/schedstat 2>/dev/null | awk '{ t += $1 } END { if (NR) printf "%.0f", t }')
  stop_server
  local line extra=""
  line=$(grep '^RESULT ' "$clog" | tail -1)
  if [ -z "$line" ]; then
    echo "run-accept-bench.sh: no result from $scen $name run $run (see $clog)" >&2
    return
  fi
  line=${line#RESULT }
  # CPU cost per completed exchange (message or connection), microseconds:
  # far less sensitive than wall-clock rates to other load on the machine.
  local total
  total=$(echo "$line" | tr ' ' '\n' | sed -n 's/^total=//p')
  if [ -n "$cpu_ns" ] && [ -n "$total" ] && [ "$total" -gt 0 ]; then
    extra=" srv_cpu_s=$(awk -v t="$cpu_ns" 'BEGIN { printf "%.3f", t / 1e9 }')"
    extra="$extra srv_us_per_op=$(awk -v t="$cpu_ns" -v n="$total" 'BEGIN { printf "%.3f", t / 1e3 / n }')"
  fi
  echo "$scen $name $run $line$extra" >> "$RES"
  printf '  %-10s %-8s run %d: %s\n' "$scen" "$name" "$run" "$line$extra"
}

# pairs A B: runs alternate A B B A A B ... so that neither side always goes
# first (the order within a pair otherwise biases the ratio).
pairs() {
  local run
  for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then "$1" "$run"; "$2" "$run"; else "$2" "$run"; "$1" "$run"; fi
  done
}

UVIP_P=7100
BASE_P=7200
SPEC=127.0.0.1-127.0.0.16

echo "uvip accept benchmarks: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r)," \
  "libuv $(pkg-config --modversion libuv 2>/dev/null || echo '?'), runs $RUNS, pin '${SRV_PIN:-none}'"
echo "raw logs: $OUT"

want() { case ",$ONLY," in *,"$1",*) return 0 ;; esac; return 1; }

want starve && echo "starvation (16 VIPs, cap $CAP, heavy VIP 127.0.0.1 x400, light x4, hold 20 ms, ${STARVE_MS} ms):"
DUR_MS=$STARVE_MS
starve_a() {
  one starve uvip "$1" $UVIP_P "$UVIP" --listen $SPEC --max-conns $CAP --shutdown-timeout 200 -- \
    --mode starve --target $SPEC --heavy-vip 0 --heavy 400 --light 4 --hold-ms 20 --duration-ms "$STARVE_MS"
}
starve_b() {
  one starve baseline "$1" $BASE_P "$BASE" --listen $SPEC --max-conns $CAP -- \
    --mode starve --target $SPEC --heavy-vip 0 --heavy 400 --light 4 --hold-ms 20 --duration-ms "$STARVE_MS"
}
want starve && pairs starve_a starve_b

want throughput && echo "echo throughput (100 connections, 4 KiB ping-pong, ${TP_MS} ms, first 500 ms not counted):"
DUR_MS=$TP_MS
tp_a() {
  one throughput uvip "$1" $UVIP_P "$UVIP" --listen $SPEC --shutdown-timeout 200 -- \
    --mode throughput --target $SPEC --conns 100 --size 4096 --duration-ms "$TP_MS"
}
tp_b() {
  one throughput libuv "$1" $BASE_P "$BASE" --listen $SPEC -- \
    --mode throughput --target $SPEC --conns 100 --size 4096 --duration-ms "$TP_MS"
}
want throughput && pairs tp_a tp_b

want rate && echo "accept rate (100 concurrent connect/1 byte/echo/close loops, ${RATE_MS} ms, first 500 ms not counted):"
DUR_MS=$RATE_MS
rate_a() {
  one rate uvip "$1" $UVIP_P "$UVIP" --listen $SPEC --shutdown-timeout 200 -- \
    --mode rate --target $SPEC --conns 100 --duration-ms "$RATE_MS"
}
rate_b() {
  one rate libuv "$1" $BASE_P "$BASE" --listen $SPEC -- \
    --mode rate --target $SPEC --conns 100 --duration-ms "$RATE_MS"
}
want rate && pairs rate_a rate_b

# median SCENARIO NAME KEY
median() {
  awk -v s="$1" -v n="$2" -v k="$3" '$1 == s && $2 == n {
      for (i = 4; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' "$RES" |
    sort -g | awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "nan"; exit }
      if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# pair_ratio SCENARIO A B KEY: median over runs i of A_i / B_i (runs i of A
# and B are adjacent in time, so they saw similar background load).
pair_ratio() {
  awk -v s="$1" -v a="$2" -v b="$3" -v k="$4" '$1 == s && ($2 == a || $2 == b) {
      for (i = 4; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) v[$2, $3] = kv[2] } }
    END { for (r = 1; r <= 100; r++) if (((a, r) in v) && ((b, r) in v) && v[b, r] + 0 != 0)
            print v[a, r] / v[b, r] }' "$RES" |
    sort -g | awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "-"; exit }
      if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# row LABEL SCENARIO A B KEY TARGET
row() {
  local a b ratio pr
  a=$(median "$2" "$3" "$5")
  b=$(median "$2" "$4" "$5")
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.3f", a / b }')
  pr=$(pair_ratio "$2" "$3" "$4" "$5")
  printf '| %-29s | %10s | %10s | %7s | %7s | %-12s |\n' "$1" "$a" "$b" "$ratio" "$pr" "$6"
}

echo
echo "Medians of $RUNS runs; ratio = median(uvip) / median(peer); pairs = median of per-run-pair ratios:"
echo
printf '| %-29s | %10s | %10s | %7s | %7s | %-12s |\n' "metric" "uvip-echo" "peer" "ratio" "pairs" "target"
printf '|%s|%s|%s|%s|%s|%s|\n' "-------------------------------" "------------" "------------" "---------" "---------" "--------------"
row "starve: light p50 ms" starve uvip baseline light_p50_ms ""
row "starve: light p99 ms" starve uvip baseline light_p99_ms "ratio <= 0.333"
row "starve: light max ms" starve uvip baseline light_max_ms ""
row "starve: heavy p50 ms" starve uvip baseline heavy_p50_ms ""
row "starve: heavy p99 ms" starve uvip baseline heavy_p99_ms ""
row "starve: light served" starve uvip baseline light_served ""
row "starve: heavy served" starve uvip baseline heavy_served ""
row "starve: light unfinished" starve uvip baseline light_unfinished ""
row "starve: Jain (light VIPs)" starve uvip baseline jain_light "uvip >= 0.99"
row "throughput MB/s" throughput uvip libuv mbps "ratio >= 0.97"
row "throughput srv CPU us/msg" throughput uvip libuv srv_us_per_op "(lower=better)"
row "accept rate conn/s" rate uvip libuv cps "ratio >= 1.0"
row "accept rate srv CPU us/conn" rate uvip libuv srv_us_per_op "(lower=better)"
echo
echo "(starve peer: bench-baseline-server --max-conns $CAP; throughput/rate peer: bench-baseline-server, no cap)"
