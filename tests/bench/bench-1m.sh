#!/bin/bash
# Side by side with the floors (issues 5 and 13), in one invocation, each
# phase in a fresh network namespace of its own:
#
#   servers, all driven by the same uvip-loadgen --echo --hold from 16
#   sources to 16 VIPs: uvip-echo --balance exact, the raw server
#   (raw-echo-server: N processes, SO_REUSEPORT, epoll, no libuv), uvip-echo
#   --balance reuseport; each with WORKERS processes.
#   clients, both against the raw server: uvip-loadgen and raw-client
#   (blocking connect, IP_BIND_ADDRESS_NO_PORT), without and with echo.
#
# and prints the ratios (uvip / floor: time to establish and verify every
# connection), the servers' user memory per connection, the kernel's memory
# per connection pair and the spread over the server processes.
#
#   sudo tests/bench/bench-1m.sh [BUILD_DIR]
#
# Environment (defaults): CONNS=200000
#   WORKERS=ceil(CONNS/16000) server processes, PROCS=ceil(CONNS/16000)
#   client processes (each holds its share of descriptors; the limit is
#   20,000 per process)
#   PHASES="exact raw reuseport lg raw-client lg-echo raw-client-echo"
#   ROUNDS=1 (the phase list is run ROUNDS times, reversed every other
#   round: A B C C B A ...; ratios are of the medians)
#   SIDE_CONNS=0 (> 0: also one source address vs the 16-source pool, uvip)
#   OUT=bench-1m.json MAX_SECONDS=1800 ESTABLISH_SECONDS=300
#   LOGDIR=(a temporary directory, removed unless KEEP=1)
#
# Everything runs in namespaces this script creates (net.* sysctls are set
# there only) and is killed and removed by the EXIT trap. Exit status 0 when
# every phase reached its count with no failure, 1 otherwise (it says
# which), 77 when not root.
set -u

if [ "$(id -u)" != 0 ]; then
  echo "bench-1m: skip: needs root (network namespaces, sysctls)"
  exit 77
fi

BUILD=${1:-build}
ECHO=$BUILD/examples/uvip-echo
LOADGEN=$BUILD/examples/uvip-loadgen
RAWSRV=$BUILD/tests/bench/raw-echo-server
RAWCLI=$BUILD/tests/bench/raw-client
CONNS=${CONNS:-200000}
WORKERS=${WORKERS:-$(( (CONNS + 15999) / 16000 ))}
PROCS=${PROCS:-$(( (CONNS + 15999) / 16000 ))}
PHASES=${PHASES:-exact raw reuseport lg raw-client lg-echo raw-client-echo}
ROUNDS=${ROUNDS:-1}
SIDE_CONNS=${SIDE_CONNS:-0}
OUT=${OUT:-bench-1m.json}
MAX_SECONDS=${MAX_SECONDS:-1800}
ESTABLISH_SECONDS=${ESTABLISH_SECONDS:-300}
NS=uvip1m$$
PORT=7000
VIPS=127.0.0.1-127.0.0.16
SOURCES=127.0.1.1-127.0.1.16
for f in "$ECHO" "$LOADGEN" "$RAWSRV" "$RAWCLI"; do
  [ -x "$f" ] || { echo "bench-1m: $f not built" >&2; exit 1; }
done
[ "$WORKERS" -ge 1 ] && [ "$PROCS" -ge 1 ] || { echo "bench-1m: WORKERS and PROCS must be >= 1" >&2; exit 1; }
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/bench-1m.XXXXXX)}
mkdir -p "$LOGDIR"

srv_pid= cli_pid= watchdog= watchdog_sleep=
stop_pids() { # PID...: TERM, a bounded wait, then KILL
  local p alive
  for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 100); do
    alive=
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && return 0
    sleep 0.2
  done
  for p in "$@"; do pkill -KILL -P "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; done
  return 1
}
cleanup() {
  trap - EXIT INT TERM
  stop_pids $cli_pid $srv_pid
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

# start_server KIND LOG: uvip-echo (exact or reuseport) or the raw server,
# WORKERS processes; returns once it says it serves every VIP.
start_server() {
  local kind=$1 log=$2 want
  # Not through nsx: $! must be the server itself (ip netns exec execs it).
  case $kind in
  raw)
    ip netns exec "$NS" "$RAWSRV" --listen "$VIPS" --port "$PORT" --procs "$WORKERS" \
      --backlog 65535 > "$log" 2>&1 &
    want="ready $WORKERS processes" ;;
  exact|reuseport)
    ip netns exec "$NS" "$ECHO" --listen "$VIPS" --port "$PORT" --workers "$WORKERS" \
      --worker-mode process --balance "$kind" --backlog 65535 \
      --shutdown-timeout 2000 > "$log" 2>&1 &
    # reuseport: the workers hold the listeners, and it says so once they do.
    want="serving 16 of 16 VIPs\|every worker listens on the 16 VIPs" ;;
  esac
  srv_pid=$!
  for _ in $(seq 300); do
    grep -q "$want" "$log" && return 0
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench-1m: $kind server did not start:" >&2
  cat "$log" >&2
  return 1
}

# Per-process connection counts of the server, one per line, into $2.
server_counts() {
  local kind=$1 log=$2 out=$3
  if [ "$kind" = raw ]; then
    # Printed at exit: the connections were held until then, so the peak
    # is what each process held.
    sed -n 's/^proc [0-9]*: peak \([0-9]*\) .*/\1/p' "$log" > "$out"
  else
    # The first report is the SIGUSR1 one, taken while the connections were held.
    grep "worker [0-9]*: active" "$log" | awk '{print $5}' | head -n "$WORKERS" > "$out"
  fi
}

# Waits until the loadgen's progress line shows $2 established and verified,
# or it exits, or ESTABLISH_SECONDS pass.
wait_established() {
  local log=$1 want=$2 t0=$3 line est ver
  while :; do
    line=$(grep "established" "$log" | tail -1)
    est=$(sed -n 's/.*established \([0-9]*\) .*/\1/p' <<< "$line")
    ver=$(sed -n 's/.*verified \([0-9]*\),.*/\1/p' <<< "$line")
    [ "${est:-0}" -ge "$want" ] && [ "${ver:-0}" -ge "$want" ] && return 0
    kill -0 "$cli_pid" 2>/dev/null || return 1
    [ "$(echo "$(now) - $t0 > $ESTABLISH_SECONDS" | bc)" = 1 ] && return 1
    sleep 0.5
  done
}

# A server phase: uvip-loadgen --echo --hold against server KIND. Leaves
# key=value lines in $LOGDIR/$ID.vars.
server_phase() {
  local kind=$1 id=$2 conns=$3 sources=$4 vars=$LOGDIR/$2.vars
  local rss0 rss1 slab0 slab1 avail0 avail1 t0 ok=1
  echo "bench-1m: $id: $kind server, $WORKERS processes, $conns connections from $sources"
  make_ns || return 1
  start_server "$kind" "$LOGDIR/$id.server.log" || return 1
  rss0=$(rss_tree "$srv_pid"); slab0=$(meminfo Slab); avail0=$(meminfo MemAvailable)
  t0=$(now)
  ip netns exec "$NS" "$LOADGEN" --target "$VIPS" --port "$PORT" --conns "$conns" \
    --sources "$sources" --procs "$PROCS" --echo --hold \
    --seconds $((ESTABLISH_SECONDS + 120)) --json \
    > "$LOGDIR/$id.client.json" 2> "$LOGDIR/$id.client.log" &
  cli_pid=$!
  wait_established "$LOGDIR/$id.client.log" "$conns" "$t0" || ok=0
  # Hand-offs still in uvip's pipes reach their workers before counting.
  sleep 2
  rss1=$(rss_tree "$srv_pid"); slab1=$(meminfo Slab); avail1=$(meminfo MemAvailable)
  [ "$kind" != raw ] && kill -USR1 "$srv_pid" && sleep 1
  stop_pids "$cli_pid"; wait "$cli_pid"; local cli_rc=$?; cli_pid=
  stop_pids "$srv_pid"; wait "$srv_pid"; local srv_rc=$?; srv_pid=
  server_counts "$kind" "$LOGDIR/$id.server.log" "$LOGDIR/$id.counts"
  {
    echo "kind=$kind"; echo "role=server"; echo "conns=$conns"; echo "reached=$ok"
    echo "rss_before_kb=$rss0"; echo "rss_after_kb=$rss1"
    echo "slab_before_kb=$slab0"; echo "slab_after_kb=$slab1"
    echo "avail_before_kb=$avail0"; echo "avail_after_kb=$avail1"
    echo "client_rc=$cli_rc"; echo "server_rc=$srv_rc"
  } > "$vars"
  ip netns del "$NS"
  [ "$ok" = 1 ]
}

# A client phase against the raw server: uvip-loadgen (lg) or raw-client,
# with or without echo; the time to open (and verify) every connection.
client_phase() {
  local kind=$1 echo_flag=$2 id=$3 conns=$4 vars=$LOGDIR/$3.vars ok=1 secs
  local e=(); [ "$echo_flag" = 1 ] && e=(--echo)
  echo "bench-1m: $id: $kind client${e:+ with echo}, $PROCS processes, $conns connections"
  make_ns || return 1
  start_server raw "$LOGDIR/$id.server.log" || return 1
  if [ "$kind" = lg ]; then
    ip netns exec "$NS" "$LOADGEN" --target "$VIPS" --port "$PORT" --conns "$conns" \
      --sources "$SOURCES" --procs "$PROCS" "${e[@]}" --seconds "$ESTABLISH_SECONDS" \
      --json > "$LOGDIR/$id.client.json" 2> "$LOGDIR/$id.client.log" &
  else
    ip netns exec "$NS" timeout "$ESTABLISH_SECONDS" "$RAWCLI" --target "$VIPS" \
      --port "$PORT" --conns "$conns" --sources "$SOURCES" --procs "$PROCS" "${e[@]}" \
      > "$LOGDIR/$id.client.log" 2>&1 &
  fi
  cli_pid=$!
  wait "$cli_pid"; local cli_rc=$?; cli_pid=
  [ "$cli_rc" = 0 ] || ok=0
  if [ "$kind" = lg ]; then
    secs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["establish_seconds"])' \
      "$LOGDIR/$id.client.json" 2>/dev/null)
  else
    secs=$(sed -n 's/.* in \([0-9.]*\) s .*/\1/p' "$LOGDIR/$id.client.log")
  fi
  stop_pids "$srv_pid"; wait "$srv_pid"; srv_pid=
  {
    echo "kind=$kind"; echo "role=client"; echo "echo=$echo_flag"; echo "conns=$conns"
    echo "reached=$ok"; echo "seconds=${secs:-null}"; echo "client_rc=$cli_rc"
  } > "$vars"
  ip netns del "$NS"
  [ "$ok" = 1 ]
}

run_phase() { # NAME ID
  case $1 in
  exact|reuseport|raw) server_phase "$1" "$2" "$CONNS" "$SOURCES" ;;
  lg) client_phase lg 0 "$2" "$CONNS" ;;
  lg-echo) client_phase lg 1 "$2" "$CONNS" ;;
  raw-client) client_phase raw 0 "$2" "$CONNS" ;;
  raw-client-echo) client_phase raw 1 "$2" "$CONNS" ;;
  *) echo "bench-1m: unknown phase $1" >&2; return 1 ;;
  esac
}

rc=0
order=($PHASES)
for round in $(seq "$ROUNDS"); do
  list=("${order[@]}")
  if [ $((round % 2)) = 0 ]; then
    list=(); for ((i = ${#order[@]} - 1; i >= 0; i--)); do list+=("${order[$i]}"); done
  fi
  for ph in "${list[@]}"; do
    run_phase "$ph" "$ph.$round" || { echo "bench-1m: $ph (round $round) FAILED" >&2; rc=1; }
  done
done
if [ "$SIDE_CONNS" -gt 0 ]; then
  server_phase exact single.1 "$SIDE_CONNS" 127.0.1.1 || rc=1
  server_phase exact pool.1 "$SIDE_CONNS" "$SOURCES" || rc=1
fi

python3 - "$LOGDIR" "$OUT" "$CONNS" "$WORKERS" "$PROCS" "$ROUNDS" "$SIDE_CONNS" <<'EOF' || rc=1
import glob, json, os, statistics, sys
logdir, out = sys.argv[1], sys.argv[2]
conns, workers, procs, rounds, side = map(int, sys.argv[3:])
def load(path):
    try:
        return json.load(open(path))
    except Exception:
        return {}
phases, bad = {}, []
for vf in sorted(glob.glob(os.path.join(logdir, '*.vars'))):
    pid = os.path.basename(vf)[:-5]
    name = pid.rsplit('.', 1)[0]
    v = dict(l.strip().split('=', 1) for l in open(vf) if '=' in l)
    r = {'reached': v.get('reached') == '1', 'client_exit': int(v.get('client_rc', -1))}
    n = int(v['conns'])
    if v['role'] == 'server':
        lg = load(os.path.join(logdir, pid + '.client.json'))
        r['seconds'] = lg.get('establish_seconds')
        r['failed'] = lg.get('failed_total')
        r['established'], r['verified'] = lg.get('established'), lg.get('verified')
        rss = (int(v['rss_after_kb']) - int(v['rss_before_kb'])) * 1024
        r['server_user_bytes_per_conn'] = round(rss / n, 1)
        r['kernel_slab_bytes_per_pair'] = round((int(v['slab_after_kb']) - int(v['slab_before_kb'])) * 1024 / n, 1)
        r['memavailable_bytes_per_pair'] = round((int(v['avail_before_kb']) - int(v['avail_after_kb'])) * 1024 / n, 1)
        try:
            counts = [int(x) for x in open(os.path.join(logdir, pid + '.counts')).read().split()]
        except Exception:
            counts = []
        r['per_process'] = counts
        if counts and min(counts) > 0:
            r['spread_pct'] = round(100.0 * (max(counts) - min(counts)) / min(counts), 2)
        if r['failed'] != 0 or r['verified'] != n:
            bad.append('%s: %s failed, %s of %d verified' % (pid, r['failed'], r['verified'], n))
    else:
        r['seconds'] = None if v.get('seconds') in (None, '', 'null', 'None') else float(v['seconds'])
        if r['client_exit'] != 0 or r['seconds'] is None:
            bad.append('%s: client exit %d' % (pid, r['client_exit']))
    if not r['reached']:
        bad.append('%s: did not reach %d' % (pid, n))
    phases.setdefault(name, []).append(r)
def med(name, key='seconds'):
    xs = [p[key] for p in phases.get(name, []) if p.get(key) is not None]
    return statistics.median(xs) if xs else None
def ratio(a, b):
    x, y = med(a), med(b)
    return round(x / y, 3) if x and y else None
res = {'conns': conns, 'server_processes': workers, 'client_processes': procs,
       'rounds': rounds, 'phases': phases,
       'medians_seconds': {k: med(k) for k in phases},
       'ratios': {
           'uvip-echo exact / raw server': ratio('exact', 'raw'),
           'uvip-echo reuseport / raw server': ratio('reuseport', 'raw'),
           'uvip-loadgen / raw client (no echo)': ratio('lg', 'raw-client'),
           'uvip-loadgen / raw client (echo)': ratio('lg-echo', 'raw-client-echo')},
       'failures': bad}
if side:
    res['one_source_vs_pool'] = ratio('single', 'pool')
json.dump(res, open(out, 'w'), indent=1)
print('bench-1m: %d connections, %d server processes, %d client processes, %d round(s)'
      % (conns, workers, procs, rounds))
for k in phases:
    ps = phases[k]
    extra = ''
    if 'server_user_bytes_per_conn' in ps[0]:
        extra = '  user %s B/conn, slab %s B/pair, spread %s %%' % (
            statistics.median(p['server_user_bytes_per_conn'] for p in ps),
            statistics.median(p['kernel_slab_bytes_per_pair'] for p in ps),
            ps[-1].get('spread_pct'))
    print('  %-16s median %s s%s' % (k, med(k), extra))
for k, x in res['ratios'].items():
    print('  %-40s %s' % (k, x))
if side:
    print('  one source / 16-source pool: %s' % res['one_source_vs_pool'])
for b in bad:
    print('FAILED: ' + b)
sys.exit(1 if bad else 0)
EOF
echo "bench-1m: result in $OUT"
exit $rc
