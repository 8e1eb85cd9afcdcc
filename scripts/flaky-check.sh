#!/usr/bin/env bash
# Runs the whole suite N times in a row (default 5) while a busy loop per CPU core keeps every
# core saturated, and stops at the first failure. A test that passes only on an idle machine
# depends on timing instead of waiting for a condition; this finds it.
#
#   scripts/flaky-check.sh [runs] [-- extra args for scripts/test.sh]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
shift $(( $# > 0 ? 1 : 0 ))
[ "${1:-}" = "--" ] && shift
pids=()
stop_load() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_load EXIT
for _ in $(seq 1 "$(nproc)"); do
  ( while :; do :; done ) &
  pids+=($!)
done
echo "flaky-check: $(nproc) busy loops started; $RUNS runs"
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s)
  if ! ./scripts/test.sh "$@" >"${TMPDIR:-/tmp}/flaky-check-$i.log" 2>&1; then
    echo "flaky-check: run $i FAILED after $(( $(date +%s) - start )) s (log: ${TMPDIR:-/tmp}/flaky-check-$i.log)"
    grep -E '^(test .* FAILED|failures:|    [a-z_:]+$)' "${TMPDIR:-/tmp}/flaky-check-$i.log" | head -40 || true
    exit 1
  fi
  echo "flaky-check: run $i passed in $(( $(date +%s) - start )) s"
done
echo "flaky-check: $RUNS of $RUNS runs passed under full CPU load"
