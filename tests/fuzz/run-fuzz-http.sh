#!/bin/sh
# Bounded libFuzzer run of uvip-http's request path.
#   tests/fuzz/run-fuzz-http.sh BUILD/tests/fuzz-http [SECONDS]
# The seed corpus is copied to a temporary directory so that the source
# tree is never written; a crashing input is saved as
# ${FUZZ_ARTIFACTS:-.}/fuzz-http-crash-* and the script exits non-zero.
# SPDX-License-Identifier: MIT
set -eu
fuzzer=$1
secs=${2:-30}
corpus=$(dirname "$0")/http-corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
cp "$corpus"/* "$work"/
"$fuzzer" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 \
  -max_len=4096 -print_final_stats=1 \
  -artifact_prefix="${FUZZ_ARTIFACTS:-.}/fuzz-http-" "$work"
