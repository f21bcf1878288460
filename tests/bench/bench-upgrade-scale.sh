#!/bin/bash
# Upgrade at scale (issue 11): uvip-echo with process workers holds CONNS
# idle connections on 16 VIPs (127.0.0.1-127.0.0.16); one SIGUSR2 moves them
# all to the new generation's workers. Reports how long the move took and
# how many connections failed (target 0): every connection must echo before
# the upgrade and again after the old generation has exited, so that the
# new one serves it.
#
# Usage: tests/bench/bench-upgrade-scale.sh BUILD_DIR [CONNS] [WORKERS] [MODE]
#   defaults: 100000 connections, 8 workers, process. The client runs as
#   CLIENTS processes (CONNS / 12500 rounded up), each under the 20,000
#   descriptor limit. PROBATION_MS (default 1000, uvip-echo's) is passed as
#   --upgrade-probation-ms: the old generation hands over that long after
#   the new one said ready. Bounded: every wait gives up after a deadline,
#   and everything started is killed on exit.
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR [CONNS] [WORKERS] [MODE]}
conns=${2:-100000}
workers=${3:-8}
mode=${4:-process}
probation=${PROBATION_MS:-1000}
echo_bin=$build/examples/uvip-echo
client=$build/tests/bench/hold-echo
per_client=12500
nclients=$(((conns + per_client - 1) / per_client))
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -s "$tmp/echo.pid" ] && kill -9 "$(cat "$tmp/echo.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
while :; do
  port=$((20000 + RANDOM % 20000))
  [ -z "$(ss -ltnH "( sport = :$port )")" ] && break
done
now_ms() { echo $(($(date +%s%N) / 1000000)); }
wait_for() { # seconds command...: bounded wait for a condition
  local t=$(($1 * 20)); shift
  for _ in $(seq "$t"); do "$@" && return 0; sleep 0.05; done
  echo "timeout: $*" >&2; tail -20 "$tmp/echo.log" >&2; return 1
}
has_line() { grep -q "$2" "$1" 2>/dev/null; }
all_have() { # pattern: every client printed it
  for i in $(seq "$nclients"); do has_line "$tmp/c$i.out" "$1" || return 1; done
}
sum() { # round field
  cat "$tmp"/c*.out | grep "^round=$1 " | sed "s/.* $2=\([0-9]*\).*/\1/" |
    awk '{s += $1} END {print s + 0}'
}
max_ms() { cat "$tmp"/c*.out | grep "^round=$1 " | sed 's/.* ms=//' | sort -n | tail -1; }

"$echo_bin" --listen 127.0.0.1-127.0.0.16 --port $port --workers "$workers" \
  --worker-mode "$mode" --pid-file "$tmp/echo.pid" --shutdown-timeout 10000 \
  --upgrade-probation-ms "$probation" \
  > "$tmp/echo.log" 2>&1 &
pids+=($!)
wait_for 30 has_line "$tmp/echo.log" "serving 16 of 16 VIPs"
old=$(cat "$tmp/echo.pid")

left=$conns
for i in $(seq "$nclients"); do
  n=$((left < per_client ? left : per_client))
  left=$((left - n))
  "$client" $port 16 $n > "$tmp/c$i.out" 2>&1 &
  pids+=($!)
  echo $! > "$tmp/c$i.pid"
done
wait_for 180 all_have "^round=1 "
echo "connections: $conns on 16 VIPs, $workers $mode workers, $nclients client processes"
echo "before: ok=$(sum 1 ok) failed=$(sum 1 failed) (echo checked; slowest client $(max_ms 1) ms)"

t0=$(now_ms)
kill -USR2 "$old"
wait_for 120 has_line "$tmp/echo.log" "ready; stopped accepting"
t_ready=$(now_ms)
wait_for 120 has_line "$tmp/echo.log" "upgrade: moved"
t_moved=$(now_ms)
wait_for 120 has_line "$tmp/echo.log" "upgrade: received"
t_received=$(now_ms)
# The old generation drains (nothing is left) and exits.
wait_for 60 bash -c "! kill -0 $old 2>/dev/null"
t_exit=$(now_ms)
grep -E "upgrade:|drain|adopted\)$" "$tmp/echo.log" | grep -v "listening on" || true
echo "adopted listeners: $(grep -c "(adopted)" "$tmp/echo.log")"
echo "SIGUSR2 -> old stops, hands over:       $((t_ready - t0)) ms (exec, 16 listeners adopted, $workers workers started, ready, $probation ms probation)"
echo "SIGUSR2 -> old side done (moved logged): $((t_moved - t0)) ms"
echo "SIGUSR2 -> new side received all:        $((t_received - t0)) ms"
echo "hand-over -> all received (the move):     $((t_received - t_ready)) ms"
echo "SIGUSR2 -> old generation exited:        $((t_exit - t0)) ms"

for i in $(seq "$nclients"); do kill -USR1 "$(cat "$tmp/c$i.pid")"; done
wait_for 180 all_have "^round=2 "
echo "after:  ok=$(sum 2 ok) failed=$(sum 2 failed) (echo from the new generation; slowest client $(max_ms 2) ms)"
new=$(cat "$tmp/echo.pid")
[ "$new" != "$old" ] || { echo "pid file not rewritten" >&2; exit 1; }
kill "$new"
wait_for 60 bash -c "! kill -0 $new 2>/dev/null"
