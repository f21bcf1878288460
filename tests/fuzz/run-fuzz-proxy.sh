#!/bin/sh
# Bounded libFuzzer run of the PROXY protocol parser.
#   tests/fuzz/run-fuzz-proxy.sh BUILD/tests/fuzz-proxy [SECONDS]
# The seed corpus is copied so that the source tree is never written; a
# crashing input is saved as ${FUZZ_ARTIFACTS:-.}/fuzz-proxy-crash-*.
# SPDX-License-Identifier: MIT
set -eu
fuzzer=$1
secs=${2:-30}
corpus=$(dirname "$0")/proxy-corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
cp "$corpus"/* "$work"/
"$fuzzer" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 \
  -max_len=1024 -print_final_stats=1 \
  -artifact_prefix="${FUZZ_ARTIFACTS:-.}/fuzz-proxy-" "$work"
