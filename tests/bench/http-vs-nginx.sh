#!/bin/sh
# uvip-http vs Debian's nginx, side by side in one run.
#
#   tests/bench/http-vs-nginx.sh [BUILD_DIR] [RUNS] [SECONDS]
#
# Both servers: one worker, the same 16-byte body ("Hello from uvip\n",
# Content-Type text/plain), no access log, keep-alive limits alike
# (10000 requests, 30 s), listening on 127.0.0.1. Each server is pinned to
# CPU 0 and wrk to CPU 1 when there are two CPUs. Scenarios:
#   ka:    wrk -t1 -c100 (keep-alive)
#   close: wrk -t1 -c50 -H "Connection: close"
# Every run measures both servers back to back, alternating which goes
# first, so that background load hits both alike. Reported: the median
# requests/s and p99 latency (wrk --latency) over the runs, the server's CPU
# time per request (utime+stime from /proc), and uvip/nginx ratios.
# Both scenarios also measure bench-http-ceiling, a bare epoll loop that
# answers every read with the same bytes and makes the fewest system calls
# per request: what wrk -t1 reaches against it is the most any server can
# show with this client on this machine.
# SPDX-License-Identifier: MIT
set -eu

build=${1:-build}
runs=${2:-5}
secs=${3:-5}
bin=$build/examples/uvip-http
ceil_bin=$build/tests/bench/bench-http-ceiling
for b in "$bin" "$ceil_bin"; do
  [ -x "$b" ] || { echo "no $b (build first)" >&2; exit 2; }
done
for t in nginx wrk curl; do
  command -v $t >/dev/null || { echo "needs $t" >&2; exit 2; }
done

ngx_port=${NGX_PORT:-18480}
uvip_port=${UVIP_PORT:-18481}
ceil_port=${CEIL_PORT:-18482}
tmp=$(mktemp -d)
ngx_pid=
uvip_pid=
ceil_pid=
cleanup() {
  [ -n "$ceil_pid" ] && kill "$ceil_pid" 2>/dev/null || true
  [ -n "$uvip_pid" ] && kill "$uvip_pid" 2>/dev/null || true
  [ -n "$ngx_pid" ] && kill "$ngx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

if [ "$(nproc)" -ge 2 ]; then
  srv_cpu="taskset -c 0"
  cli_cpu="taskset -c 1"
else
  srv_cpu=
  cli_cpu=
fi

mkdir -p "$tmp/ngx"
cat > "$tmp/nginx.conf" <<EOF
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 10000;
  keepalive_timeout 30s;
  client_body_temp_path $tmp/ngx;
  proxy_temp_path $tmp/ngx;
  fastcgi_temp_path $tmp/ngx;
  uwsgi_temp_path $tmp/ngx;
  scgi_temp_path $tmp/ngx;
  server {
    listen 127.0.0.1:$ngx_port;
    location / { return 200 "Hello from uvip\n"; }
  }
}
EOF

$srv_cpu nginx -c "$tmp/nginx.conf" -p "$tmp" -g "daemon off;" &
ngx_pid=$!
$srv_cpu "$bin" --listen 127.0.0.1 --port "$uvip_port" --max-requests 10000 \
  --keepalive-timeout-ms 30000 >"$tmp/uvip.log" 2>&1 &
uvip_pid=$!
$srv_cpu "$ceil_bin" "$ceil_port" &
ceil_pid=$!

wait_up() {
  i=0
  until [ "$(curl -s --max-time 1 "http://127.0.0.1:$1/")" = "Hello from uvip" ]; do
    i=$((i + 1))
    [ $i -lt 50 ] || { echo "server on port $1 did not come up" >&2; exit 1; }
    sleep 0.1
  done
}
wait_up "$ngx_port"
wait_up "$uvip_port"
wait_up "$ceil_port"

# CPU ticks (utime+stime) of a process and its children (nginx's worker).
cpu_ticks() {
  t=0
  for p in $1 $(pgrep -P "$1" || true); do
    set -- $(sed 's/^.*) //' "/proc/$p/stat")
    t=$((t + ${12} + ${13}))
  done
  echo $t
}
hz=$(getconf CLK_TCK)

# wrk's latency like "6.77ms" in microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
    if (u == "s") n *= 1e6; else if (u == "ms") n *= 1e3;
    printf "%.0f", n }'
}

results=$tmp/results.tsv
one() { # server port pid scenario run
  c0=$(cpu_ticks "$3")
  if [ "$4" = ka ]; then
    out=$($cli_cpu wrk -t1 -c100 -d"${secs}s" --latency "http://127.0.0.1:$2/")
  else
    out=$($cli_cpu wrk -t1 -c50 -H "Connection: close" -d"${secs}s" --latency \
      "http://127.0.0.1:$2/")
  fi
  c1=$(cpu_ticks "$3")
  rps=$(echo "$out" | awk '/^Requests\/sec:/ { print $2 }')
  total=$(echo "$out" | awk '/requests in/ { print $1 }')
  p99=$(to_us "$(echo "$out" | awk '$1 == "99%" { print $2 }')")
  bad=$(echo "$out" | awk '/Non-2xx/ { print $NF }')
  errs=$(echo "$out" | awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }')
  cpu_us=$(awk -v c=$((c1 - c0)) -v hz="$hz" -v n="$total" \
    'BEGIN { printf "%.2f", n ? c * 1e6 / hz / n : 0 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$4" "$5" "$rps" "$p99" \
    "$cpu_us" "${bad:-0}" "${errs:-0}" >>"$results"
}

# Warm both up (page cache, TIME_WAIT steady state).
$cli_cpu wrk -t1 -c50 -d1s "http://127.0.0.1:$ngx_port/" >/dev/null
$cli_cpu wrk -t1 -c50 -d1s "http://127.0.0.1:$uvip_port/" >/dev/null

r=1
while [ $r -le "$runs" ]; do
  for sc in ka close; do
    if [ $((r % 2)) -eq 1 ]; then
      one nginx "$ngx_port" "$ngx_pid" $sc $r
      one uvip "$uvip_port" "$uvip_pid" $sc $r
      one ceiling "$ceil_port" "$ceil_pid" $sc $r
    else
      one ceiling "$ceil_port" "$ceil_pid" $sc $r
      one uvip "$uvip_port" "$uvip_pid" $sc $r
      one nginx "$ngx_port" "$ngx_pid" $sc $r
    fi
  done
  r=$((r + 1))
done

echo "# runs=$runs seconds=$secs $(date -u +%Y-%m-%dT%H:%MZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# server scenario run req/s p99_us cpu_us_per_req non2xx sock_errors"
sort -k2,2 -k3,3n -k1,1 "$results"
echo
median() { # server scenario column
  awk -F'\t' -v s="$1" -v sc="$2" -v col="$3" '$1 == s && $2 == sc { print $col }' \
    "$results" | sort -g | awk '{ v[NR] = $1 } END {
      if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
printf '%-8s %-11s %12s %12s %9s\n' scenario metric nginx uvip-http ratio
for sc in ka close; do
  for m in 4:req/s 5:p99_us 6:cpu_us/req; do
    col=${m%%:*}
    name=${m#*:}
    n=$(median nginx $sc "$col")
    u=$(median uvip $sc "$col")
    ratio=$(awk -v a="$u" -v b="$n" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf '%-8s %-11s %12s %12s %8sx\n' $sc "$name" "$n" "$u" "$ratio"
  done
done
echo
# Each run measured both servers back to back: the median of the per-run
# ratios is less sensitive to load that changes between runs.
for sc in ka close; do
  paired=$(awk -F'\t' -v sc="$sc" '$2 == sc { v[$3 "," $1] = $4; r[$3] = 1 }
    END { for (k in r) if (v[k ",nginx"] > 0) print v[k ",uvip"] / v[k ",nginx"] }' \
    "$results" | sort -g | awk '{ v[NR] = $1 } END {
      if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "%.2f (min %.2f, max %.2f)", m, v[1], v[NR] }')
  echo "$sc: median of per-run req/s ratios uvip/nginx: $paired"
done
# The client's ceiling: how near each server comes to it.
for sc in ka close; do
  c=$(median ceiling $sc 4)
  n=$(median nginx $sc 4)
  u=$(median uvip $sc 4)
  awk -v sc=$sc -v c="$c" -v n="$n" -v u="$u" 'BEGIN {
    printf "%s: ceiling (bench-http-ceiling) %.0f req/s; uvip-http at %.2f of it, nginx at %.2f; the most any server could show over nginx here: %.2fx\n",
      sc, c, (c > 0 ? u / c : 0), (c > 0 ? n / c : 0), (n > 0 ? c / n : 0) }'
done
