#!/bin/bash
# The uvip demo: builds uvip, starts uvip-echo on 16 loopback VIPs and talks
# to each of them. Only 127.0.0.0/8 is used; everything stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
port=${PORT:-7000}
echo "== uvip-echo on 127.0.0.1-127.0.0.16:$port"
./build/examples/uvip-echo --listen 127.0.0.1-127.0.0.16 --port "$port" --max-conns 1000 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.16/$port) 2>/dev/null && break; sleep 0.1; done
echo "== one connection to every VIP"
for i in $(seq 1 16); do
  exec 3<>"/dev/tcp/127.0.0.$i/$port"
  echo "hello VIP $i" >&3
  read -r line <&3
  exec 3>&-
  echo "127.0.0.$i:$port echoed: $line"
done
if [ -x build/examples/uvip-stat ]; then
  echo "== uvip-stat"
  ./build/examples/uvip-stat --vips 127.0.0.1-127.0.0.16 || true
fi
echo "== SIGINT: uvip-echo stops accepting and exits"
kill -INT $pid
wait $pid
trap - EXIT

# The port wall, in a network namespace of its own (unshare -rn needs no
# root on Debian 12) so that somaxconn can be raised there and nothing
# touches the host's network.
wall() {
  ip link set lo up || return 1
  echo 65535 > /proc/sys/net/core/somaxconn
  # Server on 17 VIPs: the first run's client-closed connections leave
  # 127.0.0.1:7000's ports in TIME_WAIT, so the second run uses .2-.17.
  ./build/examples/uvip-echo --listen 127.0.0.1-127.0.0.17 --port 7000 --backlog 65535 \
    --workers 4 --worker-mode process >/dev/null &
  srv=$!
  trap 'kill -INT $srv 2>/dev/null; wait $srv' EXIT
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.17/7000) 2>/dev/null && break; sleep 0.1; done
  echo "== one client address, one VIP: the kernel runs out of ephemeral ports at 28,232"
  ./build/examples/uvip-loadgen --target 127.0.0.1 --conns 30000 --procs 2 --hold --seconds 2
  echo "(exit status $?: expected to fail)"
  echo "== the same client address, 16 VIPs: 60,000 connections, no wall"
  # --hold --seconds is also the time to establish them: 2 s was tight on
  # a busy two-core machine.
  ./build/examples/uvip-loadgen --target 127.0.0.2-127.0.0.17 --conns 60000 --procs 4 --hold --seconds 8
}
if unshare -rn true 2>/dev/null; then
  export -f wall
  unshare -rn bash -c wall
else
  echo "(skipping the port-wall demo: cannot create a network namespace here)"
fi
