#!/bin/bash
# A multi-host setup, measured (issue 12): a client namespace, a balancer
# namespace and three host namespaces, joined by veth pairs and a bridge.
#
#   client 198.18.0.2 (+ sources 198.18.0.10-41)
#      | veth
#   balancer 198.18.0.1 | br0 198.18.1.1 (+ HAProxy sources 198.18.2.1-48)
#      | bridge br0, one veth per host
#   host h (h = 1..3) 198.18.1.1h, serving on lo:
#      198.18.(16+h).1-16  its own VIPs (HAProxy's servers), ports 7000/8080
#      198.19.0.1-16       the same VIPs on every host (ECMP), port 7000
#
# Phases (each a function; figures on stdout, one "figure:" line each):
#   haproxy_spread    HAProxy (mode tcp, leastconn, a source address per
#                     server) in front of uvip-echo: spread over the hosts
#   haproxy_one_host  more than 64,512 connections from the balancer to one
#                     host (several HAProxy processes: one descriptor limit
#                     each)
#   fleet_view        uvip-stat --prometheus on every host, aggregated
#   ecmp              a multipath route (L4 hash) to the shared VIPs:
#                     spread, then what one host's removal does to the
#                     established connections (plain and resilient groups)
#   proxy_whoami      send-proxy-v2 to uvip-http --proxy-protocol, /whoami
#   drain             SIGTERM to one host's uvip-http under a steady client
#                     (health checks on /health): no failed exchange
#
# Usage: test-multihost.sh [BUILD_DIR]   (default: $UVIP_BUILD_DIR)
# Sizes (environment): MH_SPREAD_CONNS (30000), MH_ONE_HOST_CONNS (66000),
# MH_ECMP_CONNS (30000), MH_HAPROXY_PROCS (9). MH_PHASES picks phases
# (default "haproxy ecmp http"); MH_UVIP_HTTP another uvip-http binary.
# Needs root and network namespaces; exits 77 (skip) otherwise, before any
# check. Touches nothing outside the namespaces it creates; they go on any
# exit. SPDX-License-Identifier: MIT
set -u

skip() { echo "skip: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root"
for p in ip haproxy ss python3 unshare; do
  command -v $p >/dev/null || skip "needs $p"
done
unshare -n true 2>/dev/null || skip "cannot create network namespaces"

B=${1:-${UVIP_BUILD_DIR:-}}
[ -n "$B" ] && [ -x "$B/examples/uvip-echo" ] || {
  echo "usage: $0 BUILD_DIR (with examples/uvip-echo built)"; exit 2; }
B=$(cd "$B" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
ECHO=$B/examples/uvip-echo HTTP=${MH_UVIP_HTTP:-$B/examples/uvip-http}
LOADGEN=$B/examples/uvip-loadgen STAT=$B/examples/uvip-stat
RCLIENT=$B/tests/bench/restart-client
SPREAD_CONNS=${MH_SPREAD_CONNS:-30000}
ONE_CONNS=${MH_ONE_HOST_CONNS:-66000}
ECMP_CONNS=${MH_ECMP_CONNS:-30000}
NHAP=${MH_HAPROXY_PROCS:-9}
HAP_MAXCONN=9000 # x2 descriptors per proxied connection < 20000
TOL=0.05         # spread: every host within 5 % of total/3

P=uvmh$$ # namespace prefix: unique per run
C=${P}c BAL=${P}b H=("${P}h1" "${P}h2" "${P}h3")
T=$(mktemp -d /tmp/uvip-multihost.XXXXXX)
fails=0

# Every process in our namespaces (all started here) goes, then the
# namespaces; on any exit, including a failed setup or a signal.
cleanup() {
  local ns pid
  exec 2>/dev/null # not the shell's "Killed" notices
  for ns in $C $BAL "${H[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  done
  for ns in $C $BAL "${H[@]}"; do ip netns del "$ns" 2>/dev/null; done
  [ -n "${MH_KEEP_LOGS:-}" ] && echo "logs kept in $T" || rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# (Background processes are started with `ip netns exec` itself, which
# execs the program: $! is then the program's pid, not a subshell's.)
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
die() {
  echo "FAIL: $*"
  # HAProxy's view of the web servers, if that phase got that far.
  [ -S "$T/web.sock" ] && web_stat | awk -F, '$1 == "web" {print $2, $18, $37, $38}' | head -12
  exit 1
}
figure() { echo "figure: $*"; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND (a condition, not
# a duration) until it succeeds; fails the test at the deadline.
wait_for() {
  local end=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    [ $SECONDS -lt $end ] || die "timed out waiting for $what"
    sleep 0.1
  done
}

# established NS PORT: inbound established connections on local port PORT.
established() {
  nsx "$1" ss -Htn state established "( sport = :$2 )" | wc -l
}
at_least() { [ "$("${@:2}")" -ge "$1" ]; }
at_most() { [ "$("${@:2}")" -le "$1" ]; }

# within_spread A B C: every value within TOL of their mean.
within_spread() {
  python3 -c '
import sys
v = [int(x) for x in sys.argv[2:]]; m = sum(v) / len(v)
d = max(abs(x - m) for x in v) / m if m else 1
print("%.2f" % (100 * d)); sys.exit(0 if d <= float(sys.argv[1]) else 1)' "$TOL" "$@"
}

# ------------------------------------------------------------------------
# Topology

setup_topology() {
  local h i ns
  for ns in $C $BAL "${H[@]}"; do
    ip netns add "$ns" || die "ip netns add $ns"
    nsx "$ns" ip link set lo up
  done
  # client <-> balancer
  ip -n $C link add vc type veth peer name vb netns $BAL || die "veth"
  ip -n $C addr add 198.18.0.2/24 dev vc
  ip -n $C link set vc up
  ip -n $C route add default via 198.18.0.1
  for i in $(seq 10 41); do echo "addr add 198.18.0.$i/32 dev vc"; done |
    ip -n $C -batch - || die "client sources"
  ip -n $BAL addr add 198.18.0.1/24 dev vb
  ip -n $BAL link set vb up
  # balancer bridge <-> hosts
  ip -n $BAL link add br0 type bridge || die "bridge"
  ip -n $BAL addr add 198.18.1.1/24 dev br0
  for i in $(seq 1 48); do echo "addr add 198.18.2.$i/32 dev br0"; done |
    ip -n $BAL -batch - || die "balancer sources"
  ip -n $BAL link set br0 up
  for h in 1 2 3; do
    ns=${H[h - 1]}
    ip -n "$ns" link add e0 type veth peer name bh$h netns $BAL || die "veth h$h"
    ip -n $BAL link set bh$h master br0
    ip -n $BAL link set bh$h up
    ip -n "$ns" addr add 198.18.1.1$h/24 dev e0
    ip -n "$ns" link set e0 up
    ip -n "$ns" route add default via 198.18.1.1
    { for i in $(seq 1 16); do
        echo "addr add 198.18.$((16 + h)).$i/32 dev lo"
        echo "addr add 198.19.0.$i/32 dev lo"
      done; } | ip -n "$ns" -batch - || die "host $h VIPs"
    ip -n $BAL route add 198.18.$((16 + h)).0/24 via 198.18.1.1$h
  done
  # Sysctls, each in its own namespace (these are per namespace).
  for ns in $C $BAL "${H[@]}"; do
    nsx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  done
  nsx $C sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
  nsx $BAL sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 \
    net.ipv4.ip_local_port_range="1024 65535" || die "balancer sysctls"
  ecmp_route plain 1 2 3
}

# ecmp_route plain|resilient HOST...: the shared VIP prefix to those hosts.
ecmp_route() {
  local kind=$1 h nh="" grp=""; shift
  if [ "$kind" = plain ]; then
    for h; do nh+=" nexthop via 198.18.1.1$h"; done
    ip -n $BAL route replace 198.19.0.0/24 $nh || die "multipath route"
  else
    for h; do
      ip -n $BAL nexthop replace id $h via 198.18.1.1$h dev br0 || die "nexthop $h"
      grp+="${grp:+/}$h"
    done
    # Buckets stay with their next hop unless it goes (idle timer 0:
    # nothing is moved for balance).
    if ip -n $BAL nexthop show id 100 >/dev/null 2>&1; then
      ip -n $BAL nexthop replace id 100 group $grp type resilient || die "nexthop group"
    else
      ip -n $BAL nexthop add id 100 group $grp type resilient buckets 512 \
        idle_timer 0 || die "nexthop group"
    fi
    ip -n $BAL route replace 198.19.0.0/24 nhid 100 || die "route via group"
  fi
}

# Behind HAProxy every connection starts with a PROXY v2 header (with
# workers, uvip-echo reads it only in reuseport mode); ECMP delivers the
# client's own packets, without a header.
HOST_OPTS=
start_hosts() {
  local h
  for h in 1 2 3; do
    # Five worker processes: room for more than 64,512 connections on
    # host 1 with 20,000 descriptors each.
    ip netns exec ${H[h - 1]} "$ECHO" --listen 198.18.$((16 + h)).1-198.18.$((16 + h)).16 \
      --listen 198.19.0.1-198.19.0.16 --port 7000 \
      --workers 5 --worker-mode process $HOST_OPTS \
      --shutdown-timeout 1000 >>"$T/echo$h.log" 2>&1 &
    ECHO_PID[h]=$!
  done
  for h in 1 2 3; do
    # 32 VIPs: one listener each, or one per worker and VIP with reuseport.
    wait_for 20 "uvip-echo on host $h" at_least $(case $HOST_OPTS in
      *reuseport*) echo 160 ;; *) echo 32 ;; esac) listeners ${H[h - 1]} 7000
  done
}
# Stops uvip-echo on every host (SIGTERM: it closes what it holds and
# exits), so that the next phase starts with no connection left over.
restart_hosts() {
  local h
  for h in 1 2 3; do kill -TERM ${ECHO_PID[h]}; done
  for h in 1 2 3; do wait ${ECHO_PID[h]}; done
  start_hosts
}
listeners() { nsx "$1" ss -Hltn "( sport = :$2 )" | wc -l; }

# ------------------------------------------------------------------------
# HAProxy in front of uvip-echo

# Every connection to a host starts with a PROXY v2 header (uvip-echo
# --proxy-protocol requires it). No health checks on this echo tier: their
# short connections would make the counts compared with ss move between
# the two reads (the uvip-http tier below checks /health).
SRV_OPTS="send-proxy-v2"
haproxy_config() { # FILE: frontends spread (:8000, 3 hosts) and one (:8001, host 1)
  local h v
  {
    cat <<EOF
global
    maxconn $HAP_MAXCONN
    nbthread 1
    stats socket "\${HAP_SOCK}" mode 600 level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    retries 3
    option redispatch
frontend spread
    bind 198.18.0.1:8000
    default_backend hosts
frontend one
    bind 198.18.0.1:8001
    default_backend host1
backend hosts
    balance leastconn
EOF
    # One server per VIP, each with a source address of its own: a
    # (source, VIP, port) tuple has the whole ephemeral range, so the
    # balancer is limited by neither one range per host nor per process.
    for h in 1 2 3; do for v in $(seq 1 16); do
      echo "    server h${h}v$v 198.18.$((16 + h)).$v:7000 source 198.18.2.$(((h - 1) * 16 + v)) $SRV_OPTS"
    done; done
    echo "backend host1"
    echo "    balance leastconn"
    for v in $(seq 1 16); do
      echo "    server h1v$v 198.18.17.$v:7000 source 198.18.2.$v $SRV_OPTS"
    done
  } >"$1"
}

start_haproxy() {
  local i
  haproxy_config "$T/haproxy.cfg"
  HAP_SOCK=$T/check.sock nsx $BAL haproxy -c -f "$T/haproxy.cfg" >"$T/haproxy-check.log" 2>&1 ||
    { cat "$T/haproxy-check.log"; die "haproxy config"; }
  # Several processes, the same configuration: the frontends' listeners
  # have SO_REUSEPORT (HAProxy's default), the kernel spreads clients.
  for ((i = 1; i <= NHAP; i++)); do
    HAP_SOCK=$T/hap$i.sock ip netns exec $BAL haproxy -db -f "$T/haproxy.cfg" \
      >"$T/haproxy$i.log" 2>&1 &
  done
  wait_for 20 "$NHAP HAProxy processes listening" at_least $((2 * NHAP)) \
    bal_listeners
}
bal_listeners() { nsx $BAL ss -Hltn "( sport = :8000 or sport = :8001 )" | wc -l; }

# hold_loadgen NAME PORT CONNS PROCS: runs uvip-loadgen from the client
# sources with --hold --echo until every connection is verified, then
# stops it (SIGINT: a clean summary). Its JSON goes to $T/NAME.json.
LG_PID=
hold_loadgen() {
  local name=$1 port=$2 conns=$3 procs=$4
  ip netns exec $C "$LOADGEN" --target 198.18.0.1 --port "$port" --conns "$conns" \
    --procs "$procs" --sources 198.18.0.10-198.18.0.41 --hold --echo \
    --seconds 120 --json >"$T/$name.json" 2>"$T/$name.log" &
  LG_PID=$!
  wait_for 110 "$conns verified connections ($name)" lg_verified "$name" "$conns"
}
lg_verified() {
  [ -f "$T/$1.log" ] || return 1
  kill -0 $LG_PID 2>/dev/null || { tail -3 "$T/$1.log"; die "uvip-loadgen ($1) ended early"; }
  [ "$(grep -o 'verified [0-9]*' "$T/$1.log" | tail -1 | cut -d' ' -f2)" = "$2" ]
}
stop_loadgen() { # NAME: SIGINT, wait, check its verdict
  kill -INT $LG_PID
  wait $LG_PID || fail "uvip-loadgen ($1): $(tail -2 "$T/$1.log" | head -1)"
  grep -q '"ok":true' "$T/$1.json" || fail "uvip-loadgen ($1) not ok"
  LG_PID=
}
host_counts() { local h; for h in 1 2 3; do established ${H[h - 1]} 7000; done; }
hosts_idle() { [ "$(total_host_conns)" -eq 0 ]; }

haproxy_spread() {
  local c
  echo "== HAProxy leastconn over 3 hosts: $SPREAD_CONNS connections"
  hold_loadgen spread 8000 "$SPREAD_CONNS" 3
  wait_for 30 "$SPREAD_CONNS connections on the hosts" at_least "$SPREAD_CONNS" \
    total_host_conns
  mapfile -t c < <(host_counts)
  if d=$(within_spread "${c[@]}"); then :; else fail "HAProxy spread ${c[*]}: $d % off"; fi
  figure "haproxy leastconn spread: hosts ${c[*]} (max deviation $d %)"
  snapshot haproxy-spread
  fleet_view_check haproxy-spread "${c[@]}"
  stop_loadgen spread
  wait_for 60 "hosts idle after the spread phase" hosts_idle
}
total_host_conns() { host_counts | awk '{s += $1} END {print s + 0}'; }

haproxy_one_host() {
  local n tuples max
  echo "== HAProxy to one host: $ONE_CONNS connections, $NHAP HAProxy processes"
  hold_loadgen one 8001 "$ONE_CONNS" 5
  wait_for 60 "$ONE_CONNS connections on host 1" at_least "$ONE_CONNS" \
    established ${H[0]} 7000
  n=$(established ${H[0]} 7000)
  # The balancer's side: connections to host 1's VIPs, and the busiest
  # (source, VIP:port) tuple — each well within one ephemeral range.
  nsx $BAL ss -Htn state established "( dport = :7000 )" |
    awk '{print $(NF-1), $NF}' >"$T/bal-tuples"
  tuples=$(awk '{split($1, a, ":"); print a[1], $2}' "$T/bal-tuples" | sort | uniq -c |
    sort -rn | head -1)
  max=$(echo $tuples | cut -d' ' -f1)
  [ "$n" -gt 64512 ] || fail "host 1 holds $n connections, not more than 64,512"
  [ "$(wc -l <"$T/bal-tuples")" -gt 64512 ] ||
    fail "the balancer holds $(wc -l <"$T/bal-tuples") connections to host 1"
  figure "haproxy to one host: host 1 holds $n connections from the balancer;" \
    "busiest (source, VIP:port) tuple $max; $NHAP HAProxy processes"
  snapshot haproxy-one-host
  stop_loadgen one
  wait_for 60 "hosts idle after the one-host phase" hosts_idle
}

# snapshot NAME: uvip-stat --prometheus in every host (and the balancer),
# aggregated by fleet-view.py.
snapshot() {
  local h args=()
  for h in 1 2 3; do
    nsx ${H[h - 1]} "$STAT" --prometheus --processes 5 >"$T/$1-h$h.prom" ||
      fail "uvip-stat on host $h"
    args+=("host$h=$T/$1-h$h.prom")
  done
  nsx $BAL "$STAT" --prometheus --processes "$NHAP" >"$T/$1-bal.prom"
  echo "-- fleet view ($1): hosts"
  python3 "$HERE/fleet-view.py" "${args[@]}" | tee "$T/$1.fleet" || fail "fleet-view"
  python3 "$HERE/fleet-view.py" --json "${args[@]}" >"$T/$1.fleet.json"
  echo "-- the balancer"
  python3 "$HERE/fleet-view.py" "balancer=$T/$1-bal.prom" | sed -n 2p
}

# The fleet view agrees with ss on each host (it reads the same sockets
# through uvip-stat's netlink census).
fleet_view_check() { # NAME COUNTS...
  local name=$1; shift
  python3 - "$T/$name.fleet.json" "$@" <<'EOF' || fail "fleet view ($name) disagrees with ss"
import json, sys
v = json.load(open(sys.argv[1]))
want = [int(x) for x in sys.argv[2:]]
got = [v["hosts"]["host%d" % (i + 1)]["established_in"] for i in range(3)]
print("fleet view established_in", got, "ss", want)
sys.exit(0 if got == want else 1)
EOF
}

# ------------------------------------------------------------------------
# ECMP: the shared VIPs, a multipath route, no balancer process at all

ecmp() { # plain|resilient REMOVED_HOST
  local kind=$1 gone=$2 h c d keep=() i per
  echo "== ECMP ($kind), $ECMP_CONNS connections to 198.19.0.1-16, then host $gone removed"
  ecmp_route "$kind" 1 2 3
  per=$((ECMP_CONNS / 2))
  mkfifo "$T/go1-$kind" "$T/go2-$kind"
  exec 7<>"$T/go1-$kind" 8<>"$T/go2-$kind"
  for i in 1 2; do
    ip netns exec $C python3 "$HERE/multihost-probe.py" hold \
      --sources 198.18.0.$((10 + 16 * (i - 1)))-198.18.0.$((25 + 16 * (i - 1))) \
      --targets 198.19.0.1-198.19.0.16 --port 7000 --conns $per \
      --out "$T/ecmp-$kind-$i.res" <"$T/go$i-$kind" >"$T/ecmp-$kind-$i.out" 2>&1 &
    eval "PROBE$i=$!"
  done
  wait_for 60 "ECMP probes ready" probes_ready "$kind"
  mapfile -t c < <(host_counts)
  if d=$(within_spread "${c[@]}"); then :; else fail "ECMP ($kind) spread ${c[*]}: $d % off"; fi
  figure "ecmp $kind spread: hosts ${c[*]} (max deviation $d %)"
  [ "$kind" = plain ] && { snapshot ecmp; fleet_view_check ecmp "${c[@]}"; }
  for h in 1 2 3; do
    nsx ${H[h - 1]} ss -Htn state established "( sport = :7000 )" >"$T/ecmp-$kind-h$h.ss"
    [ "$h" != "$gone" ] && keep+=("$h")
  done
  ecmp_route "$kind" "${keep[@]}"
  [ "$kind" = resilient ] && ip -n $BAL nexthop del id "$gone"
  echo probe >&7; echo probe >&8
  wait $PROBE1 || fail "probe 1: $(tail -1 "$T/ecmp-$kind-1.out")"
  wait $PROBE2 || fail "probe 2: $(tail -1 "$T/ecmp-$kind-2.out")"
  exec 7>&- 8>&-
  python3 "$HERE/multihost-probe.py" analyze --results "$T/ecmp-$kind-1.res" \
    --results "$T/ecmp-$kind-2.res" --host "1=$T/ecmp-$kind-h1.ss" \
    --host "2=$T/ecmp-$kind-h2.ss" --host "3=$T/ecmp-$kind-h3.ss" >"$T/ecmp-$kind.json"
  python3 - "$T/ecmp-$kind.json" "$kind" "$gone" <<'EOF' || fail "ECMP ($kind) removal"
import json, sys
v = json.load(open(sys.argv[1])); kind, gone = sys.argv[2], sys.argv[3]
ok = v["unknown"] == 0
for name, h in sorted(v["hosts"].items()):
    other = {k: n for k, n in h.items() if k not in ("held", "survived", "ok")}
    print("figure: ecmp %s, host %s removed: host %s held %d, %d still echo (%.1f %%), "
          "others %s" % (kind, gone, name, h["held"], h.get("ok", 0),
                         100 * h["survived"], other))
    # The removed host's connections can no longer reach it: none echoes.
    if name == gone and h.get("ok", 0):
        ok = False
    # A resilient group moves only the removed host's buckets.
    if kind == "resilient" and name != gone and h["survived"] != 1:
        ok = False
if v["unknown"]:
    print("connections no host held:", v["unknown"])
sys.exit(0 if ok else 1)
EOF
  ecmp_route plain 1 2 3
  ip -n $BAL nexthop flush >/dev/null 2>&1
  # The connections that moved were reset at the client; on the host that
  # held them they stay established, orphaned, until uvip-echo closes them.
  restart_hosts
}
probes_ready() {
  local i
  for i in 1 2; do
    eval "kill -0 \$PROBE$i" 2>/dev/null || die "probe $i: $(tail -2 "$T/ecmp-$1-$i.out")"
    grep -q '^ready' "$T/ecmp-$1-$i.out" || return 1
  done
}

# ------------------------------------------------------------------------
# PROXY protocol, /whoami, /health and draining: uvip-http behind HAProxy
# with send-proxy-v2 and HTTP health checks. Needs uvip-http
# --proxy-protocol, GET /whoami and GET /health (503 while draining).

http_has_proxy() { [ -x "$HTTP" ] && "$HTTP" --help 2>&1 | grep -q -- --proxy-protocol; }

start_http_tier() {
  local h
  for h in 1 2 3; do
    ip netns exec ${H[h - 1]} "$HTTP" --listen 198.18.$((16 + h)).1-198.18.$((16 + h)).4 \
      --port 8080 --proxy-protocol --shutdown-timeout-ms 3000 --health-grace-ms 1000 \
      >"$T/http$h.log" 2>&1 &
    eval "HTTP_PID$h=$!"
  done
  for h in 1 2 3; do
    wait_for 20 "uvip-http on host $h" at_least 4 listeners ${H[h - 1]} 8080
  done
  {
    cat <<EOF
global
    maxconn 4000
    nbthread 1
    stats socket $T/web.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend web
    bind 198.18.0.1:8080
    default_backend web
backend web
    balance leastconn
    option httpchk GET /health
    default-server check inter 100 fall 2 rise 2 send-proxy-v2 check-send-proxy
EOF
    for h in 1 2 3; do for v in 1 2 3 4; do
      echo "    server h${h}v$v 198.18.$((16 + h)).$v:8080 source 198.18.2.$(((h - 1) * 16 + v))"
    done; done
  } >"$T/web.cfg"
  nsx $BAL haproxy -c -f "$T/web.cfg" >"$T/web-check.log" 2>&1 ||
    { cat "$T/web-check.log"; die "haproxy config (web)"; }
  ip netns exec $BAL haproxy -db -f "$T/web.cfg" >"$T/web.log" 2>&1 &
  wait_for 20 "all 12 servers UP in HAProxy" servers_up 12
}
# servers_up N: N servers of backend web reported UP by the stats socket.
servers_up() { [ "$(web_stat | awk -F, '$1 == "web" && $2 ~ /^h[0-9]v/ && $18 == "UP"' | wc -l)" -eq "$1" ]; }
web_stat() {
  nsx $BAL python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b"show stat\n"); d = b""
while True:
    b = s.recv(65536)
    if not b: break
    d += b
sys.stdout.write(d.decode())' "$T/web.sock" 2>/dev/null
}
host_state() { # HOST: the UP/DOWN states of its servers
  web_stat | awk -F, -v h="h$1v" '$1 == "web" && index($2, h) == 1 {print $18}' | sort -u | paste -sd,
}

proxy_whoami() {
  local i out got used bad=0
  echo "== PROXY v2 through HAProxy: /whoami reports the real client"
  # The client's port is the kernel's choice (a fixed --local-port could
  # still be in TIME_WAIT towards the balancer from an earlier phase); curl
  # says which it used, and /whoami must name that address:port.
  for i in $(seq 0 11); do
    out=$(nsx $C curl -sS --max-time 5 --interface 198.18.0.$((10 + i)) \
      -w '%{local_ip}:%{local_port}' http://198.18.0.1:8080/whoami 2>&1)
    got=$(sed -n 1p <<< "$out")
    used=$(sed -n 2p <<< "$out")
    [ "$got" = "$used" ] && [ "${used%:*}" = "198.18.0.$((10 + i))" ] ||
      { bad=$((bad + 1)); echo "whoami: got '$got', client used '$used'"; }
  done
  [ $bad -eq 0 ] || fail "/whoami wrong for $bad of 12 requests"
  figure "proxy v2: /whoami returned the client's own address:port for $((12 - bad)) of 12 requests"
}

drain() {
  local out ex before
  echo "== draining host 3 (SIGTERM, 3 s deadline) under a steady client"
  [ -x "$RCLIENT" ] || { fail "no $RCLIENT"; return; }
  ip netns exec $C "$RCLIENT" 198.18.0.1 8080 4 20 12 --http >"$T/drain-client.out" 2>&1 &
  local cpid=$!
  # Host 3 serves the client before it goes.
  wait_for 20 "host 3 serving the steady client" host_sessions_at_least 3 100
  kill -TERM "$HTTP_PID3"
  wait_for 20 "HAProxy marking host 3 down" host_down 3
  wait_for 20 "host 3's uvip-http to exit" host3_gone
  kill -0 $cpid 2>/dev/null || fail "the client ended before the drain did"
  before=$(host_sessions 1)
  wait_for 20 "host 1 still serving after the drain" host_sessions_at_least 1 $((before + 100))
  wait $cpid # its 12 s run
  out=$(tail -1 "$T/drain-client.out")
  echo "client: $out"
  ex=$(echo "$out" | grep -o 'exchanges=[0-9]*' | cut -d= -f2)
  for k in refused reset early timeout; do
    [ "$(echo "$out" | grep -o "$k=[0-9]*" | cut -d= -f2)" = 0 ] || fail "drain: $k exchanges"
  done
  [ "${ex:-0}" -gt 0 ] || fail "drain: no exchanges"
  figure "drain of host 3 under a steady client: $out"
}
host_down() { [ "$(host_state "$1")" = DOWN ]; }
host_sessions() { # HOST: total sessions its servers took
  web_stat | awk -F, -v h="h$1v" '$1 == "web" && index($2, h) == 1 {s += $8} END {print s + 0}'
}
host_sessions_at_least() { [ "$(host_sessions "$1")" -ge "$2" ]; }
host3_gone() { ! kill -0 "$HTTP_PID3" 2>/dev/null; }

# ------------------------------------------------------------------------

phase() { case " ${MH_PHASES:-haproxy ecmp http} " in *" $1 "*) ;; *) false ;; esac; }
setup_topology
HOST_OPTS="--balance reuseport --proxy-protocol"
start_hosts
if phase haproxy; then
  start_haproxy
  haproxy_spread
  haproxy_one_host
fi
if phase ecmp; then
  HOST_OPTS=
  restart_hosts
  ecmp plain 1
  ecmp resilient 1
fi
if phase http; then
  http_has_proxy || die "uvip-http has no --proxy-protocol"
  start_http_tier
  proxy_whoami
  drain
fi
[ $fails -eq 0 ] && echo "ok: multi-host setup" || echo "FAILED: $fails checks"
[ $fails -eq 0 ]
