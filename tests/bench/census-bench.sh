#!/bin/bash
# Census benchmark (issue 3): with SOCKETS TCP sockets open on loopback
# (default 1,000,000), time a full census side by side with `ss -tanH | wc -l`
# and with reading /proc/net/tcp{,6}, RUNS times each (default 5, methods
# interleaved), and report medians, ratios and the census's peak memory at a
# small and at the full socket count.
#
#   sudo tests/bench/census-bench.sh [BUILD_DIR]     (default: build)
#
# Everything runs in a network namespace this script creates (unshare -n),
# with net.ipv4.ip_local_port_range=1024 65535 set inside it; no global
# sysctl is touched. Sockets are held by census-hold processes (2 x PER + 1
# sockets each, PER=9900 by default: RLIMIT_NOFILE is capped at 20000), each
# on its own address pair 127.10.x.y / 127.20.x.y. They exit when this script
# ends (their stdin closes) or after HOLD_SECS (900) whatever happens.
# Environment: SOCKETS, RUNS, PER, HOLD_SECS, OUT (raw logs directory).
set -u

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-$SRC/build}
case "$BUILD" in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
SOCKETS=${SOCKETS:-1000000}
RUNS=${RUNS:-5}
PER=${PER:-9900}
HOLD_SECS=${HOLD_SECS:-900}

if [ "${CENSUS_BENCH_INNER:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "census-bench: needs root (network namespace)"; exit 77; }
  [ -f "$BUILD/lib/libuvip.a" ] || { echo "census-bench: no $BUILD/lib/libuvip.a (build first)"; exit 1; }
  CENSUS_BENCH_INNER=1 exec unshare -n "$0" "$BUILD"
fi

OUT=${OUT:-$(mktemp -d /tmp/census-bench.XXXXXX)}
mkdir -p "$OUT"
ip link set lo up
echo "1024 65535" > /proc/sys/net/ipv4/ip_local_port_range

cc -O2 -Wall -o "$OUT/census-hold" "$SRC/tests/bench/census-hold.c" || exit 1
cc -O2 -Wall -I"$SRC/include" -o "$OUT/census-time" "$SRC/tests/bench/census-time.c" \
  "$BUILD/lib/libuvip.a" -luv -lmnl -lpthread || exit 1

PROCS=$(( (SOCKETS + 2 * PER) / (2 * PER + 1) ))
need_kb=$(( SOCKETS * 5 ))
avail_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
if [ "$avail_kb" -lt "$need_kb" ]; then
  echo "census-bench: ~$((need_kb / 1024)) MiB of kernel memory needed, $((avail_kb / 1024)) MiB available"
  exit 1
fi

mkfifo "$OUT/hold"
exec 3<>"$OUT/hold"   # holders read it; closing it makes them all exit
PIDS=""
cleanup() {
  exec 3>&-
  [ -n "$PIDS" ] && kill $PIDS 2>/dev/null
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

start_holder() {
  # 3>&-: a holder must not keep the fifo's write end open itself.
  "$OUT/census-hold" "$1" "$PER" "$HOLD_SECS" < "$OUT/hold" > "$OUT/ready.$1" 2> "$OUT/err.$1" 3>&- &
  PIDS="$PIDS $!"
}

wait_ready() { # wait_ready N: until N holders printed "ready" (600 s at most)
  local deadline=$(( $(date +%s) + 600 ))
  while [ "$(cat "$OUT"/ready.* 2>/dev/null | grep -c ready)" -lt "$1" ]; do
    if [ "$(date +%s)" -gt "$deadline" ] || grep -qs . "$OUT"/err.*; then
      echo "census-bench: holders failed:"; cat "$OUT"/err.* 2>/dev/null | head -5
      exit 1
    fi
    sleep 1
  done
}

# Small scale: one holder, for the census's memory and time at ~20k sockets.
start_holder 0
wait_ready 1
small=$(for r in 1 2 3; do "$OUT/census-time"; done | sort -n | sed -n 2p)
echo "small: $small (seconds sockets maxrss_kb reads)" | tee "$OUT/small.txt"

t0=$(date +%s)
for i in $(seq 1 $((PROCS - 1))); do start_holder "$i"; done
wait_ready "$PROCS"
echo "setup: $PROCS holders ready in $(( $(date +%s) - t0 )) s"
grep '^TCP:' /proc/net/sockstat | tee "$OUT/sockstat.txt"

: > "$OUT/census.ms"; : > "$OUT/ss.ms"; : > "$OUT/proc.ms"; : > "$OUT/procfs.ms"
for r in $(seq 1 "$RUNS"); do
  a=$(now_ns); line=$("$OUT/census-time"); b=$(now_ns)
  echo "$line" >> "$OUT/census.raw"
  echo "$(( (b - a) / 1000 ))" >> "$OUT/census.ms"
  a=$(now_ns); n_ss=$(ss -tanH | wc -l); b=$(now_ns)
  echo "$(( (b - a) / 1000 ))" >> "$OUT/ss.ms"
  a=$(now_ns); n_proc=$(cat /proc/net/tcp /proc/net/tcp6 | wc -l); b=$(now_ns)
  echo "$(( (b - a) / 1000 ))" >> "$OUT/proc.ms"
  a=$(now_ns); pline=$("$OUT/census-time" --procfs); b=$(now_ns)
  echo "$(( (b - a) / 1000 ))" >> "$OUT/procfs.ms"
  echo "run $r: census $line | ss $n_ss lines | /proc $n_proc lines (2 headers) | census --procfs $pline"
done

c=$(median < "$OUT/census.ms"); s=$(median < "$OUT/ss.ms")
p=$(median < "$OUT/proc.ms"); f=$(median < "$OUT/procfs.ms")
seen=$(awk '{print $2}' "$OUT/census.raw" | median)
rss=$(awk '{print $3}' "$OUT/census.raw" | median)
inner=$(awk '{print $1 * 1e6}' "$OUT/census.raw" | median)
echo
echo "sockets: census saw $seen, ss printed $n_ss lines; runs: $RUNS, medians (wall, ms):"
awk -v c="$c" -v s="$s" -v p="$p" -v f="$f" -v i="$inner" -v n="$seen" 'BEGIN {
  printf "  %-36s %9.1f ms  (%.2f s per 1M sockets; sample alone %.1f ms)\n", "uvip census (netlink)", c / 1000, c / 1e6 / (n / 1e6), i / 1000
  printf "  %-36s %9.1f ms  (%.2fx the census time)\n", "ss -tanH | wc -l", s / 1000, s / c
  printf "  %-36s %9.1f ms  (%.2fx)\n", "cat /proc/net/tcp /proc/net/tcp6 | wc -l", p / 1000, p / c
  printf "  %-36s %9.1f ms  (%.2fx)\n", "uvip census --procfs (fallback)", f / 1000, f / c
}'
echo "census peak RSS: $rss KiB at $seen sockets; $(echo "$small" | awk '{print $3 " KiB at " $2 " sockets"}')"
echo "raw logs: $OUT"
