#!/bin/bash
# The restart scenario, side by side in one run: 32 loops of short
# echo/HTTP exchanges plus 100 long-lived connections pinged every second,
# while the server restarts 10 times one second apart:
#   1. uvip-echo upgraded with SIGUSR2 (re-exec, listeners passed, idle
#      connections moved);
#   2. uvip-echo stopped (SIGTERM) and started again;
#   3. uvip-http upgraded with SIGUSR2 (idle keep-alive connections moved), HTTP;
#   4. nginx binary upgrade (USR2, then QUIT to the old master), HTTP.
# Prints the client's counts per case and how many server processes are
# left. Usage: tests/bench/bench-restart.sh BUILD_DIR [UPGRADES]
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR [UPGRADES]}
n=${2:-10}
echo_bin=$build/examples/uvip-echo
client=$build/tests/bench/restart-client
tmp=$(mktemp -d)
cleanup() {
  for f in "$tmp"/*.pid; do [ -s "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
  [ -f "$tmp/nginx/nginx.pid" ] && kill -9 "$(cat "$tmp/nginx/nginx.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
secs=$((n + 4))
# Four consecutive ports nothing listens on.
while :; do
  port=$((20000 + RANDOM % 20000))
  [ -z "$(ss -ltnH "( sport >= :$port and sport <= :$((port + 3)) )")" ] && break
done

wait_line() { # file pattern: bounded wait for a line
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timeout waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

count_procs() { pgrep -f -- "--port $1" | wc -l; }

# Every uvip process prints its longest loop gap (10 ms tick) at exit.
export UVIP_LOOP_GAP=1
gap_fail=0
# log port: waits (bounded) for every process on port to exit, then prints
# the worst gap over the generations that logged one (target: < 100 ms).
loop_gaps() {
  local gens worst
  for _ in $(seq 200); do [ "$(count_procs "$2")" = 0 ] && break; sleep 0.05; done
  gens=$(grep -c "longest loop gap" "$1")
  worst=$(sed -n 's/.*longest loop gap \([0-9]*\) ms/\1/p' "$1" | sort -n | tail -1)
  echo "  longest loop gap over $gens generations: ${worst:-?} ms"
  if [ -z "$worst" ] || [ "$worst" -ge 100 ]; then gap_fail=1; fi
}

echo "== uvip-echo, $n SIGUSR2 upgrades"
p=$port
# A probation shorter than the interval: an upgrade that comes while the
# previous generation still has the new one on probation is refused.
"$echo_bin" --listen 127.0.0.1 --port $p --pid-file "$tmp/up.pid" \
  --shutdown-timeout 3000 --upgrade-probation-ms 500 > "$tmp/up.log" 2>&1 &
wait_line "$tmp/up.log" "serving"
"$client" 127.0.0.1 $p 32 100 $secs > "$tmp/up.client" &
cpid=$!
sleep 2
for _ in $(seq "$n"); do
  kill -USR2 "$(cat "$tmp/up.pid")"
  sleep 1
done
wait $cpid
echo "uvip upgrade:    $(cat "$tmp/up.client") processes_left=$(count_procs $p)"
grep -c "upgrade: moved" "$tmp/up.log" | sed 's/^/  hand-overs logged: /'
kill "$(cat "$tmp/up.pid")"
loop_gaps "$tmp/up.log" "$port"

echo "== uvip-echo, $n stop+start"
p=$((port + 1))
start_echo() {
  "$echo_bin" --listen 127.0.0.1 --port $p --pid-file "$tmp/ss.pid" \
    --shutdown-timeout 0 >> "$tmp/ss.log" 2>&1 &
  echo $! > "$tmp/ss.pid"
}
start_echo
wait_line "$tmp/ss.log" "serving"
"$client" 127.0.0.1 $p 32 100 $secs > "$tmp/ss.client" &
cpid=$!
sleep 2
for _ in $(seq "$n"); do
  old=$(cat "$tmp/ss.pid")
  kill "$old"
  while kill -0 "$old" 2>/dev/null; do sleep 0.01; done
  start_echo
  sleep 1
done
wait $cpid
echo "uvip stop+start: $(cat "$tmp/ss.client") processes_left=$(count_procs $p)"
kill "$(cat "$tmp/ss.pid")"

echo "== uvip-http, $n SIGUSR2 upgrades (HTTP)"
p=$((port + 3))
"$build/examples/uvip-http" --listen 127.0.0.1 --port $p --pid-file "$tmp/hu.pid" \
  --census-interval-ms 0 --upgrade-probation-ms 500 > "$tmp/hu.log" 2>&1 &
wait_line "$tmp/hu.log" "ready"
"$client" 127.0.0.1 $p 32 100 $secs --http > "$tmp/hu.client" &
cpid=$!
sleep 2
for _ in $(seq "$n"); do
  kill -USR2 "$(cat "$tmp/hu.pid")"
  sleep 1
done
wait $cpid
echo "uvip-http upgrade: $(cat "$tmp/hu.client") processes_left=$(count_procs $p)"
kill "$(cat "$tmp/hu.pid")"
loop_gaps "$tmp/hu.log" "$((port + 3))"

echo "== nginx, $n binary upgrades (HTTP)"
p=$((port + 2))
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_timeout 60s;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$p; location / { return 200 "ok\n"; } }
}
CONF
# The full path: the binary upgrade re-executes argv[0].
"$(command -v nginx)" -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx"
for _ in $(seq 100); do [ -s "$tmp/nginx/nginx.pid" ] && break; sleep 0.05; done
"$client" 127.0.0.1 $p 32 100 $secs --http > "$tmp/ng.client" &
cpid=$!
sleep 2
for _ in $(seq "$n"); do
  old=$(cat "$tmp/nginx/nginx.pid")
  kill -USR2 "$old"
  for _ in $(seq 200); do
    [ -s "$tmp/nginx/nginx.pid" ] && [ "$(cat "$tmp/nginx/nginx.pid")" != "$old" ] && break
    sleep 0.01
  done
  kill -QUIT "$old"
  sleep 1
done
wait $cpid
echo "nginx upgrade:   $(cat "$tmp/ng.client")"
kill -QUIT "$(cat "$tmp/nginx/nginx.pid")"

# The targets for the upgrades: no failed exchange, no long-lived connection
# lost, one process left, no loop gap of 100 ms or more.
fail=$gap_fail
for c in up hu; do
  read -r refused reset early timeout lost < <(sed -n \
    's/.*refused=\([0-9]*\) reset=\([0-9]*\) early=\([0-9]*\) timeout=\([0-9]*\).*lost=\([0-9]*\).*/\1 \2 \3 \4 \5/p' \
    "$tmp/$c.client")
  if [ -z "$lost" ] || [ $((refused + reset + early + timeout + lost)) != 0 ]; then
    echo "FAIL: $c: $(cat "$tmp/$c.client")"; fail=1
  fi
done
[ "$gap_fail" = 0 ] || echo "FAIL: a loop gap of 100 ms or more (or none logged)"
exit $fail
