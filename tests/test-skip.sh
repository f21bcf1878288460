#!/bin/sh
# Tests that need root and network namespaces skip (exit 77) where they may
# not have them, and say why: they decide in main(), before check forks a
# test (an exit there would be reported as a failure). Run as a user other
# than root, and as root without CAP_SYS_ADMIN (unshare -n fails).
# Usage: test-skip.sh TEST-PROGRAM...
set -u
if [ "$(id -u)" -ne 0 ] || ! command -v setpriv >/dev/null; then
  echo "skip: needs root and setpriv"; exit 77
fi
rc=0
for prog in "$@"; do
  for how in "setpriv --reuid=65534 --regid=65534 --clear-groups" \
             "setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin"; do
    out=$($how "$prog" 2>&1); st=$?
    if [ $st -ne 77 ] || ! echo "$out" | grep -q '^skip: '; then
      echo "$(basename "$prog") under '$how': exit $st, not a skip:"; echo "$out" | tail -5; rc=1
    fi
  done
done
[ $rc -eq 0 ] && echo "skip: $# programs skip without root or namespaces"
exit $rc
