#!/usr/bin/env bash
# Provider adapters under load: requests/s and CPU per request through the Anthropic adapter
# (OpenAI chat in, Anthropic Messages out) and through the `/v1/messages` pass-through, each as a
# ratio of the OpenAI pass-through in the same run (interleaved rounds, one Tollgate process).
#
#   BIN=target/release/tollgate ROUNDS=3 benches/providers.sh
#
# Env: BIN (a release build; built here when unset)  ROUNDS=3  CONC=64  DURATION=10 (s)  WARMUP=2 (s)
#      TARGETS (a subset of "openai-pass anthropic-adapter messages-pass", e.g. to profile one)
# The OpenAI mock is the bench kit's nginx (:18700); the Anthropic mock is providers/nginx.conf
# (:18702, a fixed Messages answer with the same text and token counts). Tollgate listens on
# 127.0.0.1:18792 with a fresh data dir. CPU ms/req is utime+stime of the Tollgate process over
# the measured run (from /proc/<pid>/stat) divided by its requests. Loopback only; every run is
# bounded by DURATION; the script stops what it started when it exits.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
ROUNDS=${ROUNDS:-3} CONC=${CONC:-64} DURATION=${DURATION:-10} WARMUP=${WARMUP:-2}
PORT=18792 ADMIN=tg_bench_admin_key_0123456789
. ./common.sh
RUN=$PWD/run/providers
mkdir -p "$RUN/anthropic"
if [ -z "${BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked --bin tollgate)
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/tollgate
fi

started_mock=0 ANT=""
alive mock || { start_mock; started_mock=1; }
cleanup() {
  [ -z "${TG:-}" ] || kill "$TG" 2>/dev/null || true
  [ -z "$ANT" ] || kill "$ANT" 2>/dev/null || true
  [ "$started_mock" = 0 ] || kill "$(cat "$W/run/mock.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
nginx -p "$RUN/anthropic/" -c "$PWD/providers/nginx.conf" >"$RUN/anthropic.log" 2>&1 < /dev/null &
ANT=$!
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18702/ && break; sleep 0.1; done

! curl -s -o /dev/null "http://127.0.0.1:$PORT/readyz" || { echo "port $PORT is already serving" >&2; exit 1; }
rm -rf "$RUN/data"
TOLLGATE_LISTEN=127.0.0.1:$PORT TOLLGATE_DATA_DIR=$RUN/data TOLLGATE_ADMIN_KEY=$ADMIN RUST_LOG=warn \
  "$BIN" serve >"$RUN/tollgate.log" 2>&1 < /dev/null &
TG=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done
provision_tenant "$RUN/"
WS=$(api GET /admin/workspaces | python3 -c "import json,sys; print([w['id'] for w in json.load(sys.stdin)['data'] if w['name']=='bench'][0])")
api POST /integrations '{"name":"claude","slug":"claude","ai_provider_id":"anthropic","key":"sk-ant-mock-0123456789","configurations":{"custom_host":"http://127.0.0.1:18702/v1"}}' >/dev/null
api PUT /integrations/claude/workspaces "{\"workspaces\":[{\"id\":\"$WS\",\"enabled\":true}]}" >/dev/null
KEY=$(cat "$RUN/tollgate-key")

ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
OUT=$RUN/results-$(date +%Y%m%d-%H%M%S).tsv
printf 'round\ttarget\trps\tp50_ms\tp99_ms\terrors\tcpu_ms_per_req\n' >"$OUT"
# target -> script, model
declare -A SCRIPT=([openai-pass]=$W/post.lua [anthropic-adapter]=$W/post.lua [messages-pass]=$PWD/providers/messages.lua)
declare -A MODELOF=([openai-pass]=@bench/gpt-4o-mini [anthropic-adapter]=@claude/claude-3-7-sonnet-20250219 [messages-pass]=@claude/claude-3-7-sonnet-20250219)
declare -A PATHOF=([openai-pass]=/v1/chat/completions [anthropic-adapter]=/v1/chat/completions [messages-pass]=/v1/messages)
export STREAM=0 XHDR=
echo "# machine: $(nproc) cores; loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg); $BIN on :$PORT; rounds=$ROUNDS conc=$CONC ${DURATION}s after ${WARMUP}s warm-up"
for r in $(seq 1 "$ROUNDS"); do
  order=${TARGETS:-openai-pass anthropic-adapter messages-pass}
  [ $((r % 2)) = 1 ] || order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
  for t in $order; do
    URL=http://127.0.0.1:$PORT${PATHOF[$t]} AUTH=$KEY MODEL=${MODELOF[$t]}; export URL AUTH MODEL
    wrk -t1 -c"$CONC" -d"${WARMUP}s" -s "${SCRIPT[$t]}" "$URL" >/dev/null 2>&1 || true
    c0=$(ticks "$TG")
    res=$(wrk -t1 -c"$CONC" -d"${DURATION}s" --timeout 30s -s "${SCRIPT[$t]}" "$URL" | grep '^RESULT' || true)
    c1=$(ticks "$TG")
    [ -n "$res" ] || { echo "# round $r $t: wrk gave no result" >&2; continue; }
    eval "$(echo "$res" | sed 's/^RESULT //')"
    cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.4f", n ? (b - a) * 1000 / hz / n : 0 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" "$p50_ms" "$p99_ms" $((non2xx + sockerr)) "$cpu" | tee -a "$OUT"
  done
done
echo "# loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)  raw: $OUT"
python3 - "$OUT" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault(r["round"], {})[r["target"]] = r
print(f"{'target':<20}{'rps ratio (median)':>20}{'cpu/req ratio (median)':>24}{'rps':>10}{'cpu ms/req':>12}")
for t in ["openai-pass", "anthropic-adapter", "messages-pass"]:
    rr, cr, rps, cpu = [], [], [], []
    for d in by.values():
        if t in d and "openai-pass" in d:
            b, h = d["openai-pass"], d[t]
            rr.append(float(h["rps"]) / float(b["rps"])); cr.append(float(h["cpu_ms_per_req"]) / float(b["cpu_ms_per_req"]))
            rps.append(float(h["rps"])); cpu.append(float(h["cpu_ms_per_req"]))
    if rr:
        print(f"{t:<20}{st.median(rr):>20.3f}{st.median(cr):>24.3f}{st.median(rps):>10.0f}{st.median(cpu):>12.4f}")
PY
