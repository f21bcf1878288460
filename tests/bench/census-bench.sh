#!/bin/bash
# Census benchmark (issues 3 and 13): with SOCKETS TCP sockets open on
# loopback (default 1,000,000), time a full census side by side with
# `ss -tanH | wc -l`, RUNS times each (default 5; the order of the methods
# is reversed every other run: A B C D, D C B A, ...), in two phases:
#   idle  nothing else started by the benchmark;
#   hog   a CPU hog (`while :; do :; done`) pinned to the last CPU the
#         script may use, for the whole phase (it is bounded by `timeout`
#         and killed on any exit).
# Methods: the census with its default (automatic) shard count, with
# shards = 1 and with shards = 2 (census-time --shards N), `ss -tanH | wc -l`
# and, with PROC=1, `cat /proc/net/tcp{,6} | wc -l` and the census's procfs
# fallback. Per phase it prints wall and CPU medians (bash `time` on each
# whole pipeline: CPU = user + sys of all its processes), the ratios to the
# default census, the shard counts the default chose, and the load average
# before and after (the figures mean little on a busy host).
#
#   sudo tests/bench/census-bench.sh [BUILD_DIR]     (default: build)
#
# Every figure is checked: each census run must succeed and see exactly the
# sockets the holders opened, each ss run must print that many lines, the
# hog must still be running at the end of its phase, and a median needs
# RUNS good samples. Any failed check is reported and the script exits 1.
#
# Everything runs in a network namespace this script creates (unshare -n;
# it disappears with the last process in it), with
# net.ipv4.ip_local_port_range=1024 65535 set inside it; no global sysctl
# is touched. Sockets are held by census-hold processes (2 x PER + 1
# sockets each, PER=9900 by default: RLIMIT_NOFILE is capped at 20000),
# each on its own address pair 127.10.x.y / 127.20.x.y. On any exit (end,
# failure, Ctrl-C, TERM, HUP) the holders (their stdin closes, then kill)
# and the hog are stopped and waited for; the holders also stop by
# themselves after HOLD_SECS (900). Raw logs stay in OUT.
# Environment: SOCKETS, RUNS, PER, HOLD_SECS, PHASES ("idle hog"), PROC
# (0), HOG_CPU (last allowed CPU), EHASH (per-namespace established hash
# size, default 1048576; 0 = the host's shared table), OUT (raw logs
# directory).
set -u

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-$SRC/build}
case "$BUILD" in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
SOCKETS=${SOCKETS:-1000000}
RUNS=${RUNS:-5}
PER=${PER:-9900}
HOLD_SECS=${HOLD_SECS:-900}
PHASES=${PHASES:-idle hog}
PROC=${PROC:-0}

# Stage 1: into namespace A. Stage 2: A gives its children their own
# established hash (tcp_child_ehash_entries is A's sysctl, not a global
# one), then into namespace B, where the benchmark runs. Without it every
# dump also walks the sockets of the rest of the machine, which on a shared
# host makes all methods slower and noisier. EHASH=0 keeps the shared
# table.
case "${CENSUS_BENCH_STAGE:-0}" in
0)
  if [ "$(id -u)" != 0 ]; then
    echo "census-bench: must run as root: it creates network namespaces (unshare -n)" >&2
    echo "and sets sysctls inside them. Run: sudo $0 ${1:-build}" >&2
    exit 2
  fi
  [ -f "$BUILD/lib/libuvip.a" ] || { echo "census-bench: no $BUILD/lib/libuvip.a (build first)" >&2; exit 1; }
  CENSUS_BENCH_STAGE=1 exec unshare -n "$0" "$BUILD" ;;
1)
  if [ "${EHASH:-1048576}" != 0 ]; then
    echo "${EHASH:-1048576}" > /proc/sys/net/ipv4/tcp_child_ehash_entries || exit 1
  fi
  CENSUS_BENCH_STAGE=2 exec unshare -n "$0" "$BUILD" ;;
esac

FAILS=0
fail() { echo "census-bench: CHECK FAILED: $*"; FAILS=$((FAILS + 1)); }

OUT=${OUT:-$(mktemp -d /tmp/census-bench.XXXXXX)}
mkdir -p "$OUT"
PIDS=""
HOG_PID=""
cleanup() {
  exec 3>&-
  [ -n "$HOG_PID" ] && kill "$HOG_PID" 2>/dev/null
  [ -n "$PIDS" ] && kill $PIDS 2>/dev/null
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'echo "census-bench: interrupted"; exit 130' INT TERM HUP

echo "namespace: established hash of $(cat /proc/sys/net/ipv4/tcp_ehash_entries) entries (negative: shared)"
ip link set lo up || exit 1
echo "1024 65535" > /proc/sys/net/ipv4/ip_local_port_range || exit 1

cc -O2 -Wall -o "$OUT/census-hold" "$SRC/tests/bench/census-hold.c" || exit 1
cc -O2 -Wall -I"$SRC/include" -o "$OUT/census-time" "$SRC/tests/bench/census-time.c" \
  "$BUILD/lib/libuvip.a" -luv -lmnl -lpthread || exit 1
CPUS=$(nproc)
HOG_CPU=${HOG_CPU:-$(taskset -pc $$ | sed 's/.*: //; s/.*[,-]//')}
echo "cpus: $CPUS (hog phase: CPU $HOG_CPU busy); load average: $(cut -d' ' -f1-3 /proc/loadavg)"

PROCS=$(( (SOCKETS + 2 * PER) / (2 * PER + 1) ))
EXPECT=$(( PROCS * (2 * PER + 1) ))
need_kb=$(( SOCKETS * 5 ))
avail_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
if [ "$avail_kb" -lt "$need_kb" ]; then
  echo "census-bench: ~$((need_kb / 1024)) MiB of kernel memory needed, $((avail_kb / 1024)) MiB available"
  exit 1
fi

mkfifo "$OUT/hold" || exit 1
exec 3<>"$OUT/hold"   # holders read it; closing it makes them all exit

median() { sort -n | awk '{a[NR] = $1} END {if (NR) print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

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

t0=$(date +%s)
for i in $(seq 0 $((PROCS - 1))); do start_holder "$i"; done
wait_ready "$PROCS"
echo "setup: $PROCS holders ready in $(( $(date +%s) - t0 )) s, $EXPECT sockets expected"
grep '^TCP:' /proc/net/sockstat | tee "$OUT/sockstat.txt"

TIMEFORMAT='%R %U %S'
timed() { # timed NAME CMD...: runs CMD, appends "wall cpu" (ms) to NAME.t
  local t
  { t=$( { time "${@:2}" > "$OUT/$1.out" 2> "$OUT/$1.err"; } 2>&1 ); } 2>/dev/null
  echo "$t" | awk '{printf "%.1f %.1f\n", $1 * 1000, ($2 + $3) * 1000}' >> "$OUT/$1.t"
}
ss_count() { ss -tanH | wc -l; }
proc_count() { cat /proc/net/tcp /proc/net/tcp6 | wc -l; }

# One sample of method m: timed, its output checked.
run_method() {
  local m=$1 out
  case $m in
  census) timed "$P.$m" "$OUT/census-time" ;;
  census1) timed "$P.$m" "$OUT/census-time" --shards 1 ;;
  census2) timed "$P.$m" "$OUT/census-time" --shards 2 ;;
  procfs) timed "$P.$m" "$OUT/census-time" --procfs ;;
  ss) timed "$P.$m" ss_count ;;
  proc) timed "$P.$m" proc_count ;;
  esac
  out=$(cat "$OUT/$P.$m.out")
  case $m in
  census*|procfs)
    set -- $out
    if [ $# -ne 5 ] || [ -s "$OUT/$P.$m.err" ]; then
      fail "$P run $r: $m printed '$out' $(head -c 200 "$OUT/$P.$m.err")"
      sed -i '$d' "$OUT/$P.$m.t"   # not a sample
    elif [ "$2" != "$EXPECT" ]; then
      fail "$P run $r: $m saw $2 sockets, $EXPECT held"
      sed -i '$d' "$OUT/$P.$m.t"
    else
      echo "$out" >> "$OUT/$P.$m.raw"
    fi ;;
  ss|proc)
    local want=$EXPECT
    [ "$m" = proc ] && want=$((EXPECT + 2))  # two header lines
    if [ "$out" != "$want" ]; then
      fail "$P run $r: $m printed $out lines, $want expected"
      sed -i '$d' "$OUT/$P.$m.t"
    fi ;;
  esac
  printf ' %s=%s' "$m" "$(echo "$out" | awk '{print $1}')"
}

METHODS="census census1 census2 ss"
[ "$PROC" = 1 ] && METHODS="$METHODS proc procfs"
REVERSED=$(echo $METHODS | tr ' ' '\n' | tac | tr '\n' ' ')

label() {
  case $1 in
  census) echo "uvip census (default shards)" ;;
  census1) echo "uvip census, shards=1" ;;
  census2) echo "uvip census, shards=2" ;;
  ss) echo "ss -tanH | wc -l" ;;
  proc) echo "cat /proc/net/tcp{,6} | wc -l" ;;
  procfs) echo "uvip census --procfs (fallback)" ;;
  esac
}

for P in $PHASES; do
  echo
  echo "== phase $P: load average $(cut -d' ' -f1-3 /proc/loadavg)"
  HOG_PID=""
  if [ "$P" = hog ]; then
    timeout $(( 60 + RUNS * 60 )) taskset -c "$HOG_CPU" sh -c 'while :; do :; done' &
    HOG_PID=$!
  fi
  for r in $(seq 1 "$RUNS"); do
    order=$METHODS
    [ $((r % 2)) = 0 ] && order=$REVERSED
    printf 'run %d:' "$r"
    for m in $order; do run_method "$m"; done
    echo
  done
  if [ -n "$HOG_PID" ]; then
    kill -0 "$HOG_PID" 2>/dev/null || fail "$P: the CPU hog was gone before the end of the phase"
    kill "$HOG_PID" 2>/dev/null
    wait "$HOG_PID" 2>/dev/null
    HOG_PID=""
  fi
  col() { awk -v k="$2" '{print $k}' "$OUT/$P.$1.t" 2>/dev/null | median; }
  for m in $METHODS; do
    n=$(wc -l < "$OUT/$P.$m.t" 2>/dev/null || echo 0)
    [ "$n" = "$RUNS" ] || fail "$P: $m has $n good samples of $RUNS"
  done
  cw=$(col census 1); cc=$(col census 2)
  printf "phase %s, %s sockets, medians of %s runs:\n" "$P" "$EXPECT" "$RUNS"
  printf "  %-36s %10s %10s %10s %10s\n" method "wall ms" "cpu ms" "wall x" "cpu x"
  for m in $METHODS; do
    w=$(col $m 1); c=$(col $m 2)
    if [ -z "$w" ] || [ -z "$cw" ] || [ "$cw" = 0 ] || [ "$cc" = 0 ]; then
      printf "  %-36s %10s\n" "$(label $m)" "no samples"
      continue
    fi
    printf "  %-36s %10.1f %10.1f %10.2f %10.2f\n" "$(label $m)" "$w" "$c" \
      "$(awk -v a="$w" -v b="$cw" 'BEGIN {print a / b}')" \
      "$(awk -v a="$c" -v b="$cc" 'BEGIN {print a / b}')"
  done
  if [ -s "$OUT/$P.census.raw" ]; then
    echo "  default census chose: $(awk '{print $5}' "$OUT/$P.census.raw" | sort | uniq -c | awk '{printf "%s shard(s) %s times; ", $2, $1}')"
    sw=$(col ss 1)
    [ -n "$sw" ] && [ -n "$cw" ] && awk -v s="$sw" -v c="$cw" -v n="$EXPECT" 'BEGIN {
      printf "  ss / census (default) wall: %.2fx (target >= 3x: %s); census %.2f s per 1M sockets\n",
        s / c, (s / c >= 3 ? "met" : "NOT met"), c / 1000 / (n / 1e6) }'
    echo "  census peak RSS: $(awk '{print $3}' "$OUT/$P.census.raw" | median) KiB"
  fi
  echo "  load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
done

echo
echo "raw logs: $OUT"
if [ "$FAILS" -gt 0 ]; then
  echo "census-bench: $FAILS check(s) FAILED: the figures above are incomplete"
  exit 1
fi
echo "census-bench: all checks passed"
