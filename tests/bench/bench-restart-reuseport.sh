#!/bin/bash
# SIGUSR2 upgrades of uvip-echo with REUSEPORT workers, in a network
# namespace of its own (root): 32 loops of short exchanges plus 100
# long-lived connections pinged every second (restart-client), 10 upgrades
# one second apart, with net.ipv4.tcp_migrate_req as given (set inside the
# namespace only). Prints the client's counts and the processes left.
# Usage: tests/bench/bench-restart-reuseport.sh BUILD_DIR [thread|process] [0|1]
set -euo pipefail
build=$(realpath "${1:?usage: $0 BUILD_DIR [thread|process] [0|1]}")
mode=${2:-process}
migrate=${3:-1}
if [ "${UVIP_IN_NETNS:-}" != 1 ]; then
  exec env UVIP_IN_NETNS=1 unshare -n "$0" "$build" "$mode" "$migrate"
fi
ip link set lo up
sysctl -qw net.ipv4.tcp_migrate_req="$migrate"
tmp=$(mktemp -d)
trap 'kill -9 "$(cat "$tmp/up.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$build/examples/uvip-echo" --listen 127.0.0.1 --port 7100 \
  --pid-file "$tmp/up.pid" --shutdown-timeout 3000 --upgrade-probation-ms 500 \
  --workers 2 --worker-mode "$mode" --balance reuseport > "$tmp/up.log" 2>&1 &
for _ in $(seq 200); do grep -q "every worker" "$tmp/up.log" && break; sleep 0.05; done
"$build/tests/bench/restart-client" 127.0.0.1 7100 32 100 14 > "$tmp/client" &
c=$!
sleep 2
for _ in $(seq 10); do kill -USR2 "$(cat "$tmp/up.pid")"; sleep 1; done
wait $c
echo "$mode workers, tcp_migrate_req=$migrate: $(cat "$tmp/client")" \
  "processes_left=$(pgrep -f -- '--port 7100' | wc -l)"
echo "  hand-overs logged: $(grep -c 'upgrade: moved' "$tmp/up.log")"
