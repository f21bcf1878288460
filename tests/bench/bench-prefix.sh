#!/bin/bash
# Prefix pools (issue 14): CONNS connections to ONE server address:port,
# echo-verified and held, from sources picked inside an IPv6 /64 under a
# local route (AnyIP), side by side with the 16-address IPv4 pool and with
# one source address (the ephemeral-port wall: 28,232 ports with the default
# net.ipv4.ip_local_port_range), each in a fresh network namespace.
#
#   sudo tests/bench/bench-prefix.sh [BUILD_DIR]
#
# Environment (defaults): CONNS=100000 WORKERS=8 PROCS=8
#   PHASES="prefix pool6 pool single" ESTABLISH_SECONDS=300 OUT=bench-prefix.json
#   LOGDIR=(a temporary directory, removed unless KEEP=1)
# For 1,000,000 on a quiet machine: CONNS=1000000 WORKERS=56 PROCS=56
# (each process stays under its descriptor limit). The 16-source pool
# cannot reach 1,000,000 to one address:port (16 x 28,232 = 451,712 ports):
# it stops at its wall, which is the point of the comparison.
#
# Phases:
#   prefix  uvip-echo on [fd00::1]:7000, ip -6 route add local fd00:1::/64
#           dev lo, uvip-loadgen --sources fd00:1::/64
#   pool    uvip-echo on 127.0.0.1:7000, --sources 127.0.1.1-127.0.1.16
#   pool6   uvip-echo on [fd00::1]:7000, --sources fd00:2::1-fd00:2::10 (16
#           IPv6 addresses on lo): tells the cost of IPv6 from that of the
#           prefix
#   single  uvip-echo on 127.0.0.1:7000, --sources 127.0.1.1 (no --hold:
#           it ends when every connection has succeeded or failed)
# Exit status 0 when prefix, pool6 and pool verified CONNS, 77 when not
# root.
set -u

if [ "$(id -u)" != 0 ]; then
  echo "bench-prefix: skip: needs root (network namespaces, sysctls)"
  exit 77
fi

BUILD=${1:-build}
ECHO=$BUILD/examples/uvip-echo
LOADGEN=$BUILD/examples/uvip-loadgen
CONNS=${CONNS:-100000}
WORKERS=${WORKERS:-8}
PROCS=${PROCS:-8}
PHASES=${PHASES:-prefix pool6 pool single}
ESTABLISH_SECONDS=${ESTABLISH_SECONDS:-300}
OUT=${OUT:-bench-prefix.json}
NS=uvipprefix
PORT=7000
for f in "$ECHO" "$LOADGEN"; do
  [ -x "$f" ] || { echo "bench-prefix: $f not built" >&2; exit 1; }
done
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/bench-prefix.XXXXXX)}
mkdir -p "$LOGDIR"

echo_pid= lg_pid=
cleanup() {
  trap - EXIT INT TERM
  for p in $lg_pid $echo_pid; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    alive=
    for p in $lg_pid $echo_pid; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.2
  done
  for p in $lg_pid $echo_pid; do kill -KILL "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "bench-prefix: logs in $LOGDIR"; else rm -rf "$LOGDIR"; fi
}
trap cleanup EXIT
trap 'echo "bench-prefix: interrupted" >&2; exit 1' INT TERM

nsx() { ip netns exec "$NS" "$@"; }
now() { date +%s.%N; }

make_ns() {
  ip netns del "$NS" 2>/dev/null
  ip netns add "$NS" || return 1
  nsx ip link set lo up || return 1
  # The default ephemeral range stays: its 28,232 ports are the wall.
  nsx sysctl -q -w net.core.somaxconn=65535 \
    net.ipv4.tcp_max_syn_backlog=65535 || return 1
}

start_echo() { # name listen
  ip netns exec "$NS" "$ECHO" --listen "$2" --port "$PORT" --workers "$WORKERS" \
    --worker-mode process --balance exact --backlog 65535 \
    --shutdown-timeout 2000 > "$LOGDIR/echo-$1.log" 2>&1 &
  echo_pid=$!
  for _ in $(seq 100); do
    grep -q "serving 1 of 1 VIPs" "$LOGDIR/echo-$1.log" && return 0
    kill -0 "$echo_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench-prefix: uvip-echo did not start:" >&2
  cat "$LOGDIR/echo-$1.log" >&2
  return 1
}

stop_echo() {
  kill -TERM "$echo_pid" 2>/dev/null
  for _ in $(seq 300); do kill -0 "$echo_pid" 2>/dev/null || break; sleep 0.2; done
  wait "$echo_pid" 2>/dev/null
  echo_pid=
}

# Polls the loadgen's progress line until $2 are established and verified,
# or it exits, or ESTABLISH_SECONDS pass.
wait_established() {
  local log=$1 want=$2 t0=$3 line est ver
  while :; do
    line=$(grep "established" "$log" | tail -1)
    est=$(sed -n 's/.*established \([0-9]*\) .*/\1/p' <<< "$line")
    ver=$(sed -n 's/.*verified \([0-9]*\),.*/\1/p' <<< "$line")
    [ "${est:-0}" -ge "$want" ] && [ "${ver:-0}" -ge "$want" ] && return 0
    kill -0 "$lg_pid" 2>/dev/null || return 1
    [ "$(echo "$(now) - $t0 > $ESTABLISH_SECONDS" | bc)" = 1 ] && return 1
    sleep 0.5
  done
}

phase() { # name listen target sources hold
  local name=$1 listen=$2 target=$3 sources=$4 hold=$5 t0 extra=()
  echo "bench-prefix: phase $name: $CONNS connections to $target from $sources"
  make_ns || return 1
  case $name in prefix|pool6) nsx ip -6 addr add fd00::1/128 dev lo nodad || return 1 ;; esac
  [ "$name" = prefix ] && { nsx ip -6 route add local fd00:1::/64 dev lo || return 1; }
  if [ "$name" = pool6 ]; then
    for i in $(seq 1 16); do
      nsx ip -6 addr add "fd00:2::$(printf %x "$i")/128" dev lo nodad || return 1
    done
  fi
  start_echo "$name" "$listen" || return 1
  [ "$hold" = 1 ] && extra=(--hold --seconds $((ESTABLISH_SECONDS + 60)))
  t0=$(now)
  ip netns exec "$NS" "$LOADGEN" --target "$target" --conns "$CONNS" \
    --sources "$sources" --procs "$PROCS" --echo "${extra[@]}" --json \
    > "$LOGDIR/loadgen-$name.json" 2> "$LOGDIR/loadgen-$name.log" &
  lg_pid=$!
  if [ "$hold" = 1 ]; then
    wait_established "$LOGDIR/loadgen-$name.log" "$CONNS" "$t0"
    nsx ss -s > "$LOGDIR/ss-$name.txt" 2>&1
    kill -TERM "$lg_pid"
  fi
  for _ in $(seq 1500); do kill -0 "$lg_pid" 2>/dev/null || break; sleep 0.2; done
  wait "$lg_pid"
  echo "$?" > "$LOGDIR/rc-$name"
  lg_pid=
  echo "bench-prefix: wall $(echo "$(now) - $t0" | bc | cut -c1-6) s:" \
    "$(grep -h 'connections to' "$LOGDIR/loadgen-$name.log" "$LOGDIR/loadgen-$name.json" | tail -1)"
  grep -h "ports exhausted" "$LOGDIR/loadgen-$name.log" "$LOGDIR/loadgen-$name.json" | head -1
  stop_echo
  ip netns del "$NS"
}

for p in $PHASES; do
  case $p in
    prefix) phase prefix '[fd00::1]' "[fd00::1]:$PORT" fd00:1::/64 1 ;;
    pool6) phase pool6 '[fd00::1]' "[fd00::1]:$PORT" fd00:2::1-fd00:2::10 1 ;;
    pool) phase pool 127.0.0.1 "127.0.0.1:$PORT" 127.0.1.1-127.0.1.16 1 ;;
    single) phase single 127.0.0.1 "127.0.0.1:$PORT" 127.0.1.1 0 ;;
  esac
done

python3 - "$LOGDIR" "$OUT" "$CONNS" "$WORKERS" "$PROCS" "$PHASES" <<'EOF'
import json, os, sys
logdir, out, conns, workers, procs, phases = sys.argv[1:7]
res = {'conns': int(conns), 'workers': int(workers), 'loadgen_procs': int(procs)}
ok = True
for name in phases.split():
    try:
        lg = json.load(open(os.path.join(logdir, 'loadgen-%s.json' % name)))
    except Exception:
        lg = {}
    keep = ('established', 'verified', 'failed_total', 'failed',
            'establish_seconds', 'source_addrs_in_use', 'exhausted')
    res[name] = {k: lg.get(k) for k in keep}
    if name in ('prefix', 'pool', 'pool6') and lg.get('verified') != int(conns):
        ok = False
print(json.dumps(res, indent=1))
json.dump(res, open(out, 'w'), indent=1)
sys.exit(0 if ok else 1)
EOF
rc=$?
echo "bench-prefix: result in $OUT"
exit $rc
