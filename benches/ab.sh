#!/usr/bin/env bash
# Same-run A/B of two Tollgate builds: both served at once, against the one nginx mock, measured by
# wrk back to back per target, order swapped every round.
#
#   BASE_BIN=/path/to/base/tollgate HEAD_BIN=/path/to/head/tollgate ROUNDS=3 benches/ab.sh
#
# Env: ROUNDS=3  CONCS=64  DURATION=10 (s)  WARMUP=2 (s)  TARGETS="tollgate tollgate-limits"
#      BASE_PORT=18790  HEAD_PORT=18791
# Base listens on BASE_PORT, head on HEAD_PORT, each with a fresh data dir in benches/run/ab/ and
# provisioned as load.sh provisions (the `@bench` provider; the `tollgate` key, and the
# `tollgate-limits` key from a workspace with limits at every level). CPU ms/req is utime+stime of
# the tollgate process over the measured run (from /proc/<pid>/stat) divided by its requests; a
# per-thread split goes to threads-*.tsv. All traffic stays on loopback; every run is bounded by
# DURATION; the script stops what it started (by pid) when it exits.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
: "${BASE_BIN:?set BASE_BIN to the base build's tollgate binary}" "${HEAD_BIN:?set HEAD_BIN to the head build's tollgate binary}"
ROUNDS=${ROUNDS:-3} CONCS=${CONCS:-64} DURATION=${DURATION:-10} WARMUP=${WARMUP:-2}
TARGETS=${TARGETS:-"tollgate tollgate-limits"} BASE_PORT=${BASE_PORT:-18790} HEAD_PORT=${HEAD_PORT:-18791}
ADMIN=tg_bench_admin_key_0123456789
. ./common.sh
AB=$PWD/run/ab
mkdir -p "$AB"
HZ=$(getconf CLK_TCK)
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$AB/results-$STAMP.tsv THR=$AB/threads-$STAMP.tsv

started_mock=0
alive mock || { start_mock; started_mock=1; }
declare -A PID
cleanup() {
  for s in base head; do [ -z "${PID[$s]:-}" ] || kill "${PID[$s]}" 2>/dev/null || true; done
  [ "$started_mock" = 0 ] || kill "$(cat "$W/run/mock.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

declare -A PORTOF=([base]=$BASE_PORT [head]=$HEAD_PORT) BIN=([base]=$BASE_BIN [head]=$HEAD_BIN)
for s in base head; do
  port=${PORTOF[$s]}
  ! curl -s -o /dev/null "http://127.0.0.1:$port/readyz" || { echo "port $port is already serving" >&2; exit 1; }
  rm -rf "$AB/$s-data"
  TOLLGATE_LISTEN=127.0.0.1:$port TOLLGATE_DATA_DIR=$AB/$s-data TOLLGATE_ADMIN_KEY=$ADMIN RUST_LOG=warn \
    "${BIN[$s]}" serve >"$AB/$s.log" 2>&1 < /dev/null &
  PID[$s]=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break; sleep 0.1; done
  PORT=$port provision_tenant "$AB/$s-"
done

ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
thread_ticks() {  # "comm ticks" per thread of pid $1, summed by name
  for f in /proc/"$1"/task/*/stat; do cat "$f" 2>/dev/null; done \
    | awk '{ n = $0; sub(/^[^(]*\(/, "", n); sub(/\).*$/, "", n); r = $0; sub(/^.*\) /, "", r); split(r, a, " ")
             t[n] += a[12] + a[13] } END { for (k in t) print k "\t" t[k] }'
}
export STREAM=0 XHDR= MODEL=@bench/gpt-4o-mini

echo "# machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "# base $BASE_BIN on :$BASE_PORT (pid ${PID[base]}), head $HEAD_BIN on :$HEAD_PORT (pid ${PID[head]}); rounds=$ROUNDS concs=\"$CONCS\" ${DURATION}s after ${WARMUP}s warm-up"
printf 'round\ttarget\tconc\tside\trps\tp50_ms\tp90_ms\tp99_ms\terrors\tcpu_ms_per_req\tload1\n' >"$OUT"
printf 'round\ttarget\tconc\tside\tthread\tcpu_ms_per_req\n' >"$THR"
for r in $(seq 1 "$ROUNDS"); do
  order="base head"; [ $((r % 2)) = 1 ] || order="head base"
  for c in $CONCS; do
    for t in $TARGETS; do
      for s in $order; do
        URL=http://127.0.0.1:${PORTOF[$s]}/v1/chat/completions AUTH=$(cat "$AB/$s-$t-key"); export URL AUTH
        wrk -t1 -c"$c" -d"${WARMUP}s" -s "$W/post.lua" "$URL" >/dev/null 2>&1 || true
        c0=$(ticks "${PID[$s]}"); th0=$(thread_ticks "${PID[$s]}")
        res=$(wrk -t1 -c"$c" -d"${DURATION}s" --timeout 30s -s "$W/post.lua" "$URL" | grep '^RESULT' || true)
        c1=$(ticks "${PID[$s]}"); th1=$(thread_ticks "${PID[$s]}"); load1=$(cut -d' ' -f1 /proc/loadavg)
        [ -n "$res" ] || { echo "# round $r $t c=$c $s: wrk gave no result" >&2; continue; }
        eval "$(echo "$res" | sed 's/^RESULT //')"
        cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.4f", n ? (b - a) * 1000 / hz / n : 0 }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$c" "$s" "$rps" "$p50_ms" "$p90_ms" "$p99_ms" \
          $((non2xx + sockerr)) "$cpu" "$load1" | tee -a "$OUT"
        awk -F'\t' -v pre="$r\t$t\t$c\t$s" -v hz="$HZ" -v n="$reqs" 'NR == FNR { a[$1] = $2; next }
          { d = $2 - a[$1]; if (d > 0 && n) printf "%s\t%s\t%.4f\n", pre, $1, d * 1000 / hz / n }' \
          <(echo "$th0") <(echo "$th1") >>"$THR"
      done
    done
  done
done

echo "# loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)  raw: $OUT  threads: $THR"
# Per target and concurrency: each round's head/base ratios, and their medians.
python3 - "$OUT" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault((r["target"], r["conc"], r["round"]), {})[r["side"]] = r
keys = sorted({(t, c) for t, c, _ in by}, key=lambda k: (int(k[1]), k[0]))
print(f"{'target':<16}{'conc':>5}{'round':>7}{'rps base':>10}{'rps head':>10}{'ratio':>7}{'cpu base':>10}{'cpu head':>10}{'ratio':>7}{'p99 base':>10}{'p99 head':>10}{'ratio':>7}{'load':>6}")
for t, c in keys:
    rr, cr, pr = [], [], []
    for (t2, c2, rnd), d in sorted(by.items(), key=lambda kv: int(kv[0][2])):
        if (t2, c2) != (t, c) or len(d) != 2:
            continue
        b, h = d["base"], d["head"]
        x = float(h["rps"]) / float(b["rps"]); y = float(h["cpu_ms_per_req"]) / float(b["cpu_ms_per_req"]); z = float(h["p99_ms"]) / float(b["p99_ms"])
        rr.append(x); cr.append(y); pr.append(z)
        print(f"{t:<16}{c:>5}{rnd:>7}{float(b['rps']):>10.0f}{float(h['rps']):>10.0f}{x:>7.3f}{float(b['cpu_ms_per_req']):>10.4f}{float(h['cpu_ms_per_req']):>10.4f}{y:>7.3f}{float(b['p99_ms']):>10.2f}{float(h['p99_ms']):>10.2f}{z:>7.3f}{b['load1']+'/'+h['load1']:>12}")
    if rr:
        print(f"{t:<16}{c:>5}{'median':>7}{'':>20}{st.median(rr):>7.3f}{'':>20}{st.median(cr):>7.3f}{'':>20}{st.median(pr):>7.3f}")
PY
