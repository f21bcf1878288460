#!/bin/bash
# Port-exhaustion forecast (issue 14): predicted vs observed time until a
# churn workload exhausts its ephemeral range, in a fresh network namespace.
#
#   sudo tests/bench/bench-forecast.sh [BUILD_DIR]
#
# uvip-echo on 127.0.0.1:7000; uvip-loadgen holds CONNS connections and
# replaces RATE of them a second (--churn): each replacement leaves the
# closed connection's port in TIME_WAIT for 60 s, so the pair's ports in
# use grow by RATE a second and run out after (RANGE - CONNS) / RATE
# seconds when CONNS + RATE x 60 > RANGE. uvip-stat --watch INTERVAL --json
# samples the pair and forecasts; every line is stamped on arrival. The
# observed exhaustion is the first sample of a second uvip-stat, --watch
# OBSERVE (0.1 s) and stamped the same way, that sees every usable port in
# use (uvip-loadgen's first EADDRNOTAVAIL progress line, 1 s resolution, is
# shown for reference). For every sample
# that forecast exhaustion, the predicted time left (eta) is compared with
# the time that was actually left: error = (eta - left) / left.
#
# Environment (defaults): RANGE=2000 CONNS=100 RATE=40 INTERVAL=1
#   OBSERVE=0.1 SECONDS_MAX=90 OUT=bench-forecast.txt
# tcp_tw_reuse is 0 in the namespace (its default 2 reuses TIME_WAIT ports
# on loopback, which would never exhaust). Exit 0 when the median error of
# the forecasts made after the first 5 s of churn is within 20 %, 1
# otherwise, 77 when not root.
set -u

if [ "$(id -u)" != 0 ]; then
  echo "bench-forecast: skip: needs root (network namespace, sysctls)"
  exit 77
fi
BUILD=${1:-build}
if [ -z "${BENCH_FORECAST_IN_NS:-}" ]; then
  # Everything below runs in a namespace of its own, which goes with it.
  BENCH_FORECAST_IN_NS=1 exec unshare -n "$0" "$@"
fi

RANGE=${RANGE:-2000}
CONNS=${CONNS:-100}
RATE=${RATE:-40}
INTERVAL=${INTERVAL:-1}
OBSERVE=${OBSERVE:-0.1}
SECONDS_MAX=${SECONDS_MAX:-90}
OUT=${OUT:-bench-forecast.txt}
LO=40000
HI=$((LO + RANGE - 1))
ECHO=$BUILD/examples/uvip-echo
STAT=$BUILD/examples/uvip-stat
LOADGEN=$BUILD/examples/uvip-loadgen
for f in "$ECHO" "$STAT" "$LOADGEN"; do
  [ -x "$f" ] || { echo "bench-forecast: $f not built" >&2; exit 1; }
done
LOGDIR=$(mktemp -d /tmp/bench-forecast.XXXXXX)
echo_pid= stat_pid= obs_pid= lg_pid=
cleanup() {
  trap - EXIT INT TERM
  for p in $lg_pid $stat_pid $obs_pid $echo_pid; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ "${KEEP:-0}" = 1 ] || rm -rf "$LOGDIR"
}
trap cleanup EXIT INT TERM

ip link set lo up
echo "$LO $HI" > /proc/sys/net/ipv4/ip_local_port_range
echo 0 > /proc/sys/net/ipv4/tcp_tw_reuse

stamp() { while IFS= read -r l; do printf '%s %s\n' "$(date +%s.%N)" "$l"; done; }

"$ECHO" --listen 127.0.0.1 --port 7000 --shutdown-timeout 0 \
  > "$LOGDIR/echo.log" 2>&1 &
echo_pid=$!
for _ in $(seq 100); do grep -q "serving 1 of 1" "$LOGDIR/echo.log" && break; sleep 0.05; done
"$STAT" --vips 127.0.0.1 --watch "$INTERVAL" --json --top 1 \
  --exhaustion "$SECONDS_MAX" 2> "$LOGDIR/stat.err" | stamp > "$LOGDIR/stat.log" &
stat_pid=$!
"$STAT" --vips 127.0.0.1 --watch "$OBSERVE" --json --top 1 --exhaustion 0 \
  2> /dev/null | stamp > "$LOGDIR/observe.log" &
obs_pid=$!
t_start=$(date +%s.%N)
timeout $((SECONDS_MAX + 10)) "$LOADGEN" --target 127.0.0.1 --conns "$CONNS" \
  --churn "$RATE" --seconds "$SECONDS_MAX" --echo 2>&1 | stamp > "$LOGDIR/loadgen.log" &
lg_pid=$!
# Until the pair is exhausted (the loadgen then fails its connects) or
# SECONDS_MAX.
for _ in $(seq $((SECONDS_MAX * 10))); do
  grep -q EADDRNOTAVAIL "$LOGDIR/loadgen.log" 2>/dev/null && break
  sleep 0.1
done
sleep $((INTERVAL * 2 + 1))

python3 - "$LOGDIR/stat.log" "$LOGDIR/loadgen.log" "$t_start" "$RANGE" \
  "$CONNS" "$RATE" "$LOGDIR/observe.log" "$OBSERVE" > "$OUT" <<'PY'
import json, sys
stat, lg, t0, rng, conns, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
def load(path):
    out = []
    for line in open(path):
        ts, _, js = line.partition(' ')
        try:
            d = json.loads(js)
        except ValueError:
            continue
        tu = [t for t in d['tuples'] if t['remote'] == '127.0.0.1:7000']
        if tu:
            out.append((float(ts) - t0, tu[0]))
    return out
samples = load(stat)
observed = load(sys.argv[7])
lg_fail = None
for line in open(lg):
    if 'EADDRNOTAVAIL' in line:
        lg_fail = float(line.split(' ', 1)[0]) - t0
        break
obs = next((t for t, tu in observed if tu['in_use'] >= tu['usable']), None)
churn0 = next((t for t, tu in samples if tu['time_wait'] > 0), None)
print(f"range {rng} ports, {conns} connections, churn {rate}/s: model "
      f"({rng} - {conns}) / {rate} = {(rng - conns) / rate:.1f} s")
if obs is None:
    print("not exhausted: no comparison")
    sys.exit(1)
print(f"churn seen from {churn0:.1f} s; observed exhaustion (census every "
      f"{sys.argv[8]} s) at "
      f"{obs:.1f} s, {obs - churn0:.1f} s after; loadgen's first "
      f"EADDRNOTAVAIL report at {lg_fail if lg_fail is None else round(lg_fail, 1)} s")
print(f"{'t(s)':>6} {'in_use':>7} {'T-WAIT':>7} {'rate/s':>7} {'eta(s)':>7} "
      f"{'left(s)':>7} {'error':>7} {'err(s)':>7}")
errs, far = [], []
for t, tu in samples:
    f = tu.get('forecast', {})
    eta = f.get('exhaustion_seconds')
    if t >= obs:
        break
    left = obs - t
    err = None
    if eta is not None and f['state'] == 'exhausting' and left > 0:
        err = (eta - left) / left
        if churn0 is not None and t - churn0 >= 5:
            errs.append(abs(err))
            if left >= 5:
                far.append(abs(err))
    print(f"{t:6.1f} {tu['in_use']:7d} {tu['time_wait']:7d} {f.get('rate', 0):7.1f} "
          f"{'-' if eta is None else format(eta, '7.1f'):>7} {left:7.1f} "
          f"{'-' if err is None else format(100 * err, '+6.1f') + '%':>7} "
          f"{'-' if err is None else format(eta - left, '+7.1f'):>7}")
errs.sort()
if not errs:
    print("no forecast after 5 s of churn")
    sys.exit(1)
med = errs[len(errs) // 2]
print(f"forecasts after 5 s of churn: {len(errs)}, |error| median "
      f"{100 * med:.1f} %, max {100 * errs[-1]:.1f} %")
if far:
    print(f"of those with 5 s or more left: {len(far)}, |error| max "
          f"{100 * max(far):.1f} %")
sys.exit(0 if med <= 0.20 else 1)
PY
rc=$?
cat "$OUT"
exit $rc
