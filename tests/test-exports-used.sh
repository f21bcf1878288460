#!/bin/sh
# Lists the exported functions (lib/uvip.map) that no test and no example
# program calls: each must appear as "name(" in tests/*.c or examples/.
# Usage: test-exports-used.sh SOURCE_ROOT
set -eu
root=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed -e 's#/\*.*\*/##' "$root/lib/uvip.map" | grep -oE '^[[:space:]]*uvip_[a-z0-9_]+;' | tr -d ' \t;' | sort -u > "$tmp/exported"
# (tests/bench/ is left out: no test runs the benchmarks.)
{ cat "$root"/tests/*.c; find "$root/examples" -name '*.c' -exec cat {} +; } |
  grep -oE '\buvip_[a-z0-9_]+[[:space:]]*\(' | tr -d ' \t(' | sort -u > "$tmp/called"
comm -23 "$tmp/exported" "$tmp/called" > "$tmp/never"
if [ -s "$tmp/never" ]; then
  echo "$(wc -l < "$tmp/never") of $(wc -l < "$tmp/exported") exported functions are called by no test or example:"
  sed 's/^/  /' "$tmp/never"
  exit 1
fi
echo "exports-used: all $(wc -l < "$tmp/exported") exported functions are called by a test or an example"
