#!/bin/bash
# The 1M benchmark (issue 5): uvip-echo with process workers on 16 VIPs and
# uvip-loadgen --echo --hold from 16 source addresses, in a network
# namespace of its own; then, side by side, opening SIDE_CONNS connections
# from one source address and from the pool.
#
#   sudo tests/bench/bench-1m.sh [BUILD_DIR]
#
# Environment (defaults): CONNS=1000000 WORKERS=56 PROCS=56
#   SIDE_CONNS=500000 (0 = skip the side-by-side runs; CONNS=0 skips the
#   main run) OUT=bench-1m.json
#   MAX_SECONDS=900 (the whole run), ESTABLISH_SECONDS=240 (per phase)
#   LOGDIR=(a temporary directory, removed unless KEEP=1)
#
# Everything runs in namespaces this script creates (net.* sysctls are set
# there only) and is killed and removed by the EXIT trap. Exit status 0 when
# every phase reached its target count with no failure, 77 when not root.
set -u

if [ "$(id -u)" != 0 ]; then
  echo "bench-1m: skip: needs root (network namespaces, sysctls)"
  exit 77
fi

BUILD=${1:-build}
ECHO=$BUILD/examples/uvip-echo
LOADGEN=$BUILD/examples/uvip-loadgen
STAT=$BUILD/examples/uvip-stat
CONNS=${CONNS:-1000000}
WORKERS=${WORKERS:-56}
PROCS=${PROCS:-56}
SIDE_CONNS=${SIDE_CONNS:-500000}
OUT=${OUT:-bench-1m.json}
MAX_SECONDS=${MAX_SECONDS:-900}
ESTABLISH_SECONDS=${ESTABLISH_SECONDS:-240}
NS=uvip1m
PORT=7000
VIPS=127.0.0.1-127.0.0.16
SOURCES=127.0.1.1-127.0.1.16
for f in "$ECHO" "$LOADGEN"; do
  [ -x "$f" ] || { echo "bench-1m: $f not built" >&2; exit 1; }
done
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/bench-1m.XXXXXX)}
mkdir -p "$LOGDIR"

echo_pid= lg_pid= watchdog= watchdog_sleep=
cleanup() {
  trap - EXIT INT TERM
  for p in $lg_pid $echo_pid; do
    kill -TERM "$p" 2>/dev/null
  done
  for _ in $(seq 50); do
    alive=
    for p in $lg_pid $echo_pid; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.2
  done
  for p in $lg_pid $echo_pid; do
    kill -KILL "$p" 2>/dev/null
  done
  [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
  [ -n "$watchdog_sleep" ] && kill "$watchdog_sleep" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "bench-1m: logs in $LOGDIR"; else rm -rf "$LOGDIR"; fi
}
trap cleanup EXIT
trap 'echo "bench-1m: interrupted" >&2; exit 1' INT TERM
# The sleep runs apart so that the trap can end it too (it would otherwise
# hold the script's output open for MAX_SECONDS).
sleep "$MAX_SECONDS" > /dev/null 2>&1 &
watchdog_sleep=$!
( wait_pid=$watchdog_sleep
  while kill -0 "$wait_pid" 2>/dev/null; do sleep 1; done
  echo "bench-1m: stopping: MAX_SECONDS=$MAX_SECONDS" >&2; kill -TERM $$ ) > /dev/null 2>&1 &
watchdog=$!

nsx() { ip netns exec "$NS" "$@"; }
now() { date +%s.%N; }
meminfo() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }
# Resident kB of a process and its children (the workers).
rss_tree() {
  local total=0 p kb
  for p in "$1" $(pgrep -P "$1"); do
    kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}

make_ns() {
  ip netns del "$NS" 2>/dev/null
  ip netns add "$NS" || return 1
  nsx ip link set lo up || return 1
  nsx sysctl -q -w net.ipv4.ip_local_port_range="1024 65535" \
    net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 || return 1
}

start_echo() {
  # Not through nsx: $! must be uvip-echo itself (ip netns exec execs it).
  ip netns exec "$NS" "$ECHO" --listen "$VIPS" --port "$PORT" --workers "$WORKERS" \
    --worker-mode process --balance exact --backlog 65535 \
    --shutdown-timeout 2000 > "$LOGDIR/echo-$1.log" 2>&1 &
  echo_pid=$!
  for _ in $(seq 100); do
    grep -q "serving 16 of 16 VIPs" "$LOGDIR/echo-$1.log" && return 0
    kill -0 "$echo_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench-1m: uvip-echo did not start:" >&2
  cat "$LOGDIR/echo-$1.log" >&2
  return 1
}

stop_echo() {
  kill -TERM "$echo_pid" 2>/dev/null
  for _ in $(seq 300); do
    kill -0 "$echo_pid" 2>/dev/null || break
    sleep 0.2
  done
  wait "$echo_pid" 2>/dev/null
  echo_rc=$?
  echo_pid=
  grep -q "bye" "$LOGDIR/echo-$1.log" && [ "$echo_rc" = 0 ]
}

# Waits until the loadgen's progress line shows $2 established and (with
# echo) verified, or it exits, or ESTABLISH_SECONDS pass. Sets reached_s.
wait_established() {
  local log=$1 want=$2 t0=$3 line est ver
  reached_s=
  while :; do
    line=$(grep "established" "$log" | tail -1)
    est=$(sed -n 's/.*established \([0-9]*\) .*/\1/p' <<< "$line")
    ver=$(sed -n 's/.*verified \([0-9]*\),.*/\1/p' <<< "$line")
    if [ "${est:-0}" -ge "$want" ] && [ "${ver:-0}" -ge "$want" ]; then
      reached_s=$(echo "$(now) - $t0" | bc)
      return 0
    fi
    kill -0 "$lg_pid" 2>/dev/null || return 1
    [ "$(echo "$(now) - $t0 > $ESTABLISH_SECONDS" | bc)" = 1 ] && return 1
    sleep 0.5
  done
}

# One phase: a fresh namespace and server, $2 connections from sources $3
# (empty = one source address, 127.0.1.1), held and echo-verified.
# Leaves key=value lines in $LOGDIR/$1.vars.
phase() {
  local name=$1 conns=$2 sources=$3 vars=$LOGDIR/$1.vars rss0 rss1 slab0 slab1 t0
  echo "bench-1m: phase $name: $conns connections from ${sources:-127.0.1.1}"
  make_ns || return 1
  start_echo "$name" || return 1
  sleep 1
  rss0=$(rss_tree "$echo_pid")
  slab0=$(meminfo Slab)
  t0=$(now)
  ip netns exec "$NS" "$LOADGEN" --target "$VIPS" --port "$PORT" --conns "$conns" \
    --sources "${sources:-127.0.1.1}" --procs "$PROCS" --echo --hold \
    --seconds $((ESTABLISH_SECONDS + 120)) --json \
    > "$LOGDIR/loadgen-$name.json" 2> "$LOGDIR/loadgen-$name.log" &
  lg_pid=$!
  local ok=1
  wait_established "$LOGDIR/loadgen-$name.log" "$conns" "$t0" || ok=0
  sleep 2 # hand-offs still in the pipes reach their workers
  rss1=$(rss_tree "$echo_pid")
  slab1=$(meminfo Slab)
  {
    echo "reached=$ok"
    echo "reached_seconds=${reached_s:-null}"
    echo "rss_before_kb=$rss0"
    echo "rss_after_kb=$rss1"
    echo "slab_before_kb=$slab0"
    echo "slab_after_kb=$slab1"
  } > "$vars"
  if [ "$name" = main ]; then
    timeout 120 ip netns exec "$NS" ss -s > "$LOGDIR/ss-s.txt" 2>&1
    if [ -x "$STAT" ]; then
      timeout 180 ip netns exec "$NS" "$STAT" --json --top 5 > "$LOGDIR/uvip-stat.json" 2>&1
    fi
  fi
  kill -USR1 "$echo_pid"
  sleep 1
  grep "worker [0-9]*: active" "$LOGDIR/echo-$name.log" | awk '{print $5}' \
    > "$LOGDIR/$name.workers"
  # Ending the hold: the loadgen closes its connections and reports.
  kill -TERM "$lg_pid"
  for _ in $(seq 600); do kill -0 "$lg_pid" 2>/dev/null || break; sleep 0.2; done
  wait "$lg_pid"
  echo "loadgen_rc=$?" >> "$vars"
  lg_pid=
  stop_echo "$name"
  echo "echo_clean=$([ $? = 0 ] && echo true || echo false)" >> "$vars"
  ip netns del "$NS"
  [ "$ok" = 1 ]
}

rc=0
if [ "$CONNS" -gt 0 ]; then
  phase main "$CONNS" "$SOURCES" || rc=1
fi
if [ "$SIDE_CONNS" -gt 0 ]; then
  phase single "$SIDE_CONNS" "" || rc=1
  phase pool "$SIDE_CONNS" "$SOURCES" || rc=1
fi

python3 - "$LOGDIR" "$OUT" "$CONNS" "$WORKERS" "$PROCS" "$SIDE_CONNS" <<'EOF'
import json, sys, os
logdir, out, conns, workers, procs, side = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
def phase(name):
    p = os.path.join(logdir, name + '.vars')
    if not os.path.exists(p):
        return None
    v = dict(l.strip().split('=', 1) for l in open(p) if '=' in l)
    try:
        lg = json.load(open(os.path.join(logdir, 'loadgen-%s.json' % name)))
    except Exception:
        lg = {}
    try:
        counts = [int(x) for x in open(os.path.join(logdir, name + '.workers')).read().split()]
    except Exception:
        counts = []
    counts = counts[-workers:] if counts else []
    est = lg.get('established')
    rss = (int(v['rss_after_kb']) - int(v['rss_before_kb'])) * 1024
    slab = (int(v['slab_after_kb']) - int(v['slab_before_kb'])) * 1024
    n = est or 0
    r = {
        'connections_wanted': None,
        'established': est,
        'verified': lg.get('verified'),
        'failed': lg.get('failed_total'),
        'failures_by_errno': lg.get('failed'),
        'establish_seconds': lg.get('establish_seconds'),
        'reached_seconds_wall': None if v['reached_seconds'] == 'null' else float(v['reached_seconds']),
        'server_rss_delta_bytes': rss,
        'server_bytes_per_conn': round(rss / n, 1) if n else None,
        'kernel_slab_delta_bytes': slab,
        'kernel_slab_bytes_per_conn_pair': round(slab / n, 1) if n else None,
        'per_worker_active': counts,
        'loadgen_ok': lg.get('ok'),
        'loadgen_exit': int(v.get('loadgen_rc', -1)),
        'server_shutdown_clean': v.get('echo_clean') == 'true',
    }
    if counts and min(counts) > 0:
        r['per_worker_spread_pct'] = round(100.0 * (max(counts) - min(counts)) / min(counts), 3)
    r['loadgen_summary'] = lg
    return r
res = {'conns': conns, 'workers': workers, 'loadgen_procs': procs}
m = phase('main')
if m:
    m['connections_wanted'] = conns
    res['main'] = m
if side:
    s, p = phase('single'), phase('pool')
    res['side_by_side'] = {'conns': side, 'one_source': s, 'source_pool': p}
    try:
        res['side_by_side']['time_ratio_one_vs_pool'] = round(
            s['establish_seconds'] / p['establish_seconds'], 2)
    except Exception:
        res['side_by_side']['time_ratio_one_vs_pool'] = None
for f in ('ss-s.txt',):
    try:
        res['census_ss_s'] = open(os.path.join(logdir, f)).read()
    except Exception:
        pass
try:
    st = json.load(open(os.path.join(logdir, 'uvip-stat.json')))
    res['census_uvip_stat_totals'] = st.get('totals', st)
except Exception:
    pass
json.dump(res, open(out, 'w'), indent=1)
print(json.dumps({k: v for k, v in res.get('main', {}).items() if k != 'loadgen_summary'}, indent=1))
if 'side_by_side' in res:
    print('side by side: one source %s s, pool %s s, ratio %s' % (
        (res['side_by_side']['one_source'] or {}).get('establish_seconds'),
        (res['side_by_side']['source_pool'] or {}).get('establish_seconds'),
        res['side_by_side']['time_ratio_one_vs_pool']))
EOF
echo "bench-1m: result in $OUT"
exit $rc
