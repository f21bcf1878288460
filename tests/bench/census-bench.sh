#!/bin/bash
# Census benchmark (issue 3): with SOCKETS TCP sockets open on loopback
# (default 1,000,000), time a full census (default options: min(2, CPUs)
# parallel shards; and with shards = 1 for comparison) side by side with
# `ss -tanH | wc -l` and with reading /proc/net/tcp{,6}, RUNS times each
# (default 5, methods interleaved), and report medians, ratios and the
# census's peak memory at a small and at the full socket count, with the
# load average before and after (the figures mean little on a busy host).
#
#   sudo tests/bench/census-bench.sh [BUILD_DIR]     (default: build)
#
# Everything runs in a network namespace this script creates (unshare -n),
# with net.ipv4.ip_local_port_range=1024 65535 set inside it; no global
# sysctl is touched. Sockets are held by census-hold processes (2 x PER + 1
# sockets each, PER=9900 by default: RLIMIT_NOFILE is capped at 20000), each
# on its own address pair 127.10.x.y / 127.20.x.y. They exit when this script
# ends (their stdin closes) or after HOLD_SECS (900) whatever happens.
# Environment: SOCKETS, RUNS, PER, HOLD_SECS, EHASH (per-namespace
# established hash size, default 1048576; 0 = the host's shared table),
# OUT (raw logs directory).
set -u

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-$SRC/build}
case "$BUILD" in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
SOCKETS=${SOCKETS:-1000000}
RUNS=${RUNS:-5}
PER=${PER:-9900}
HOLD_SECS=${HOLD_SECS:-900}

# Stage 1: into namespace A. Stage 2: A gives its children their own
# established hash (tcp_child_ehash_entries is A's sysctl, not a global
# one), then into namespace B, where the benchmark runs. Without it every
# dump also walks the sockets of the rest of the machine, which on a shared
# host makes all three methods slower and noisier. EHASH=0 keeps the shared
# table.
case "${CENSUS_BENCH_STAGE:-0}" in
0)
  [ "$(id -u)" = 0 ] || { echo "census-bench: needs root (network namespace)"; exit 77; }
  [ -f "$BUILD/lib/libuvip.a" ] || { echo "census-bench: no $BUILD/lib/libuvip.a (build first)"; exit 1; }
  CENSUS_BENCH_STAGE=1 exec unshare -n "$0" "$BUILD" ;;
1)
  if [ "${EHASH:-1048576}" != 0 ]; then
    echo "${EHASH:-1048576}" > /proc/sys/net/ipv4/tcp_child_ehash_entries || exit 1
  fi
  CENSUS_BENCH_STAGE=2 exec unshare -n "$0" "$BUILD" ;;
esac
echo "namespace: established hash of $(cat /proc/sys/net/ipv4/tcp_ehash_entries) entries (negative: shared)"

OUT=${OUT:-$(mktemp -d /tmp/census-bench.XXXXXX)}
mkdir -p "$OUT"
ip link set lo up
echo "1024 65535" > /proc/sys/net/ipv4/ip_local_port_range

cc -O2 -Wall -o "$OUT/census-hold" "$SRC/tests/bench/census-hold.c" || exit 1
cc -O2 -Wall -I"$SRC/include" -o "$OUT/census-time" "$SRC/tests/bench/census-time.c" \
  "$BUILD/lib/libuvip.a" -luv -lmnl -lpthread || exit 1
# census-time1: the same program with uvip_census_options_init() wrapped to
# set shards = 1 (one dump per family on one thread).
cat > "$OUT/shards1.h" <<'HDR'
#include <uvip.h>
static inline int census_bench_opts_init(uvip_census_options_t *o) {
  int rc = uvip_census_options_init(o);
  o->shards = 1;
  return rc;
}
#define uvip_census_options_init census_bench_opts_init
HDR
cc -O2 -Wall -I"$SRC/include" -include "$OUT/shards1.h" -o "$OUT/census-time1" \
  "$SRC/tests/bench/census-time.c" "$BUILD/lib/libuvip.a" -luv -lmnl -lpthread || exit 1
echo "cpus: $(nproc) (census default shards: min(2, CPUs)); load average: $(cut -d' ' -f1-3 /proc/loadavg)"

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
small1=$(for r in 1 2 3; do "$OUT/census-time1"; done | sort -n | sed -n 2p)
echo "small, shards=1: $small1" | tee -a "$OUT/small.txt"

t0=$(date +%s)
for i in $(seq 1 $((PROCS - 1))); do start_holder "$i"; done
wait_ready "$PROCS"
echo "setup: $PROCS holders ready in $(( $(date +%s) - t0 )) s"
grep '^TCP:' /proc/net/sockstat | tee "$OUT/sockstat.txt"

# Each method timed by bash's `time` on the whole pipeline: wall clock and
# CPU (user + sys of every process in it). The machine may be shared, so the
# CPU figures are the steadier comparison; both are reported.
TIMEFORMAT='%R %U %S'
timed() { # timed NAME CMD...: runs CMD, appends "wall cpu" (ms) to NAME.t
  local t
  { t=$( { time "${@:2}" > "$OUT/$1.out"; } 2>&1 ); } 2>/dev/null
  echo "$t" | awk '{printf "%.1f %.1f\n", $1 * 1000, ($2 + $3) * 1000}' >> "$OUT/$1.t"
}
ss_count() { ss -tanH | wc -l; }
proc_count() { cat /proc/net/tcp /proc/net/tcp6 | wc -l; }
rm -f "$OUT"/*.t
for r in $(seq 1 "$RUNS"); do
  timed census "$OUT/census-time"; cat "$OUT/census.out" >> "$OUT/census.raw"
  timed census1 "$OUT/census-time1"; cat "$OUT/census1.out" >> "$OUT/census1.raw"
  timed ss ss_count
  timed proc proc_count
  timed procfs "$OUT/census-time" --procfs
  echo "run $r: census $(cat "$OUT/census.out") | shards=1 $(cat "$OUT/census1.out")" \
       "| ss $(cat "$OUT/ss.out") lines" \
       "| /proc $(cat "$OUT/proc.out") lines (2 headers) | census --procfs $(cat "$OUT/procfs.out")"
done

col() { awk -v k="$2" '{print $k}' "$OUT/$1.t" | median; }
seen=$(awk '{print $2}' "$OUT/census.raw" | median)
rss=$(awk '{print $3}' "$OUT/census.raw" | median)
rss1=$(awk '{print $3}' "$OUT/census1.raw" | median)
inner=$(awk '{print $1 * 1000}' "$OUT/census.raw" | median)
inner1=$(awk '{print $1 * 1000}' "$OUT/census1.raw" | median)
echo
echo "sockets: census saw $seen, ss printed $(cat "$OUT/ss.out") lines; medians of $RUNS runs:"
printf "  %-42s %10s %10s %8s %8s\n" method "wall ms" "cpu ms" "wall x" "cpu x"
cw=$(col census 1); cc=$(col census 2)
for m in census census1 ss proc procfs; do
  case $m in
  census) name="uvip census (netlink, default shards)" ;;
  census1) name="uvip census (netlink, shards=1)" ;;
  ss) name="ss -tanH | wc -l" ;;
  proc) name="cat /proc/net/tcp /proc/net/tcp6 | wc -l" ;;
  procfs) name="uvip census --procfs (fallback)" ;;
  esac
  printf "  %-42s %10.1f %10.1f %8.2f %8.2f\n" "$name" "$(col $m 1)" "$(col $m 2)" \
    "$(awk -v a="$(col $m 1)" -v b="$cw" 'BEGIN {print a / b}')" \
    "$(awk -v a="$(col $m 2)" -v b="$cc" 'BEGIN {print a / b}')"
done
awk -v i="$inner" -v w="$cw" -v c="$cc" -v n="$seen" 'BEGIN {
  printf "census per 1M sockets: %.2f s wall (sample alone %.2f s), %.2f s cpu\n", w / 1000 / (n / 1e6), i / 1000 / (n / 1e6), c / 1000 / (n / 1e6) }'
awk -v i="$inner1" -v w="$(col census1 1)" -v c="$(col census1 2)" -v n="$seen" 'BEGIN {
  printf "shards=1 per 1M sockets: %.2f s wall (sample alone %.2f s), %.2f s cpu\n", w / 1000 / (n / 1e6), i / 1000 / (n / 1e6), c / 1000 / (n / 1e6) }'
echo "census peak RSS: $rss KiB at $seen sockets; $(echo "$small" | awk '{print $3 " KiB at " $2 " sockets"}')"
echo "shards=1 peak RSS: $rss1 KiB at $seen sockets; $(echo "$small1" | awk '{print $3 " KiB at " $2 " sockets"}')"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "raw logs: $OUT"
