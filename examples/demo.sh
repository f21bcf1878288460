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
if [ -x build/examples/uvip-loadgen ]; then
  echo "== the port wall: one client address to one VIP runs out of ephemeral ports"
  timeout 60 ./build/examples/uvip-loadgen --target 127.0.0.1 --port "$port" --conns 30000 --hold --seconds 2 || true
  echo "== 16 VIPs lift it"
  timeout 60 ./build/examples/uvip-loadgen --target 127.0.0.1-127.0.0.16 --port "$port" --conns 30000 --hold --seconds 2 || true
fi
if [ -x build/examples/uvip-stat ]; then
  echo "== uvip-stat"
  ./build/examples/uvip-stat --vips 127.0.0.1-127.0.0.16 || true
fi
echo "== SIGINT: uvip-echo stops accepting and exits"
kill -INT $pid
wait $pid
trap - EXIT
