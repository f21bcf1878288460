#!/bin/sh
# Fails when the symbols exported by libuvip.so, the export list lib/uvip.map
# and the functions declared in include/ disagree.
set -eu
lib=$1 map=$2 incdir=$3
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/ {sub(/@.*/, "", $3); print $3}' | grep -v '^UVIP_' | sort -u > "$tmp/exported"
sed -e 's#/\*.*\*/##' "$map" | grep -oE '^[[:space:]]*uvip_[a-z0-9_]+;' | tr -d ' \t;' | sort -u > "$tmp/listed"
# Public functions: "uvip_name(" at the start of a declaration in the headers.
# Comment lines (starting with "/*" or "*") are left out.
cat "$incdir"/uvip.h "$incdir"/uvip/*.h | grep -vE '^[[:space:]]*(/\*|\*)' | grep -oE '[ *]uvip_[a-z0-9_]+\(' | tr -d ' *(' | sort -u > "$tmp/declared"
rc=0
if ! diff -u "$tmp/listed" "$tmp/exported" > "$tmp/d1"; then
  echo "export list and library disagree (- listed only, + exported only):"; cat "$tmp/d1"; rc=1
fi
if ! diff -u "$tmp/declared" "$tmp/listed" > "$tmp/d2"; then
  echo "headers and export list disagree (- declared only, + listed only):"; cat "$tmp/d2"; rc=1
fi
[ -s "$tmp/exported" ] || { echo "no symbols exported"; rc=1; }
[ $rc -eq 0 ] && echo "exports: $(wc -l < "$tmp/exported") symbols match list and headers"
exit $rc
