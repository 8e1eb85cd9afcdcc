#!/usr/bin/env bash
# Pipeline benchmark (distributed mode): events/s from the gateway through Kafka (tansu) and the
# aggregators into ClickHouse rollups, and the end-to-end lag from a request's answer to its row
# in ClickHouse (p50/p99), beside the broker's own produce/consume ceiling measured in the same
# run (`cargo bench --bench broker`).
#
#   benches/pipeline.sh            # DURATION=20 CONNS=64 AGGREGATORS=2
#
# Starts ClickHouse and tansu (scripts/services.sh), the nginx mock, `tollgate migrate`, the
# aggregators and one gateway (release build) on loopback, provisions a tenant, then drives the
# gateway with wrk while a probe sends one request every 100 ms and times how long until its
# trace id is in ClickHouse.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
PORT=18791
ADMIN=tg_bench_admin_key_0123456789
DURATION=${DURATION:-20}
CONNS=${CONNS:-64}
AGGREGATORS=${AGGREGATORS:-2}
. ./common.sh
start_mock

eval "$("$ROOT/scripts/services.sh" start)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tollgate/target}
(cd "$ROOT" && cargo build --release --quiet)
BIN=$CARGO_TARGET_DIR/release/tollgate
RUN=$W/run/pipeline
rm -rf "$RUN"; mkdir -p "$RUN"
ID=$(date +%s)
export TOLLGATE_KAFKA_BROKERS=$TG_KAFKA_BROKERS TOLLGATE_CLICKHOUSE_URL=$TG_CLICKHOUSE_URL \
  TOLLGATE_CLICKHOUSE_DATABASE=bench_$ID TOLLGATE_TOPIC_PREFIX=bench$ID. \
  TOLLGATE_MASTER_KEY=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= TOLLGATE_ADMIN_KEY=$ADMIN RUST_LOG=warn
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${PIDS[@]}" 2>/dev/null || true
  kill "$(cat "$W/run/mock.pid")" 2>/dev/null || true
}
trap cleanup EXIT

echo "# machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); tollgate $(git -C "$ROOT" rev-parse --short HEAD)"
(cd "$ROOT" && EVENTS=${EVENTS:-100000} cargo bench --quiet --bench broker 2>/dev/null | grep '^broker ceiling')

TOLLGATE_DATA_DIR=$RUN/migrate "$BIN" migrate >"$RUN/migrate.log" 2>&1
for i in $(seq "$AGGREGATORS"); do
  TOLLGATE_DATA_DIR=$RUN/agg$i "$BIN" aggregator >"$RUN/agg$i.log" 2>&1 < /dev/null &
  PIDS+=($!)
done
TOLLGATE_LISTEN=127.0.0.1:$PORT TOLLGATE_DATA_DIR=$RUN/gateway "$BIN" gateway >"$RUN/gateway.log" 2>&1 < /dev/null &
PIDS+=($!)
for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done

WS=$(api POST /admin/workspaces '{"name":"pipeline"}' | json_field id)
api POST /integrations '{"name":"bench","slug":"bench","ai_provider_id":"openai","key":"sk-mock-0123456789","configurations":{"custom_host":"http://127.0.0.1:18700/v1"}}' >/dev/null
api PUT /integrations/bench/workspaces "{\"workspaces\":[{\"id\":\"$WS\",\"enabled\":true}]}" >/dev/null
KEY=$(api POST /api-keys/workspace/service "{\"name\":\"pipeline\",\"workspace_id\":\"$WS\",\"scopes\":[\"completions.write\"],\"defaults\":{\"metadata\":{\"department\":\"bench\"}}}" | json_field key)

cat >"$RUN/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer $KEY"
wrk.body = '{"model":"@bench/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
EOF

# The probe: one request every 100 ms with its own trace id; after the answer, poll ClickHouse
# every 5 ms until the row is there. Also samples the stored count every second.
python3 - "$PORT" "$KEY" "$TG_CLICKHOUSE_URL" "bench_$ID" "$DURATION" >"$RUN/probe.out" <<'PY' &
import json, sys, threading, time, urllib.request, uuid
port, key, ch, db, duration = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
def sql(q):
    return urllib.request.urlopen(urllib.request.Request(f"{ch}/?database={db}", data=q.encode())).read().decode().strip()
lags, counts, threads = [], [], []
def probe():
    trace = "probe-" + uuid.uuid4().hex
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
        data=json.dumps({"model": "@bench/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", "x-portkey-trace-id": trace})
    urllib.request.urlopen(req).read()
    answered = time.monotonic()
    while time.monotonic() - answered < 30:
        if sql(f"SELECT count() FROM usage_events WHERE trace_id = '{trace}'") != "0":
            lags.append((time.monotonic() - answered) * 1000); return
        time.sleep(0.005)
start = time.monotonic()
next_count = start
while time.monotonic() - start < duration:
    t = threading.Thread(target=probe); t.start(); threads.append(t)
    if time.monotonic() >= next_count:
        counts.append((time.monotonic() - start, int(sql("SELECT count() FROM usage_events")))); next_count += 1
    time.sleep(0.1)
for t in threads: t.join()
lags.sort()
pct = lambda p: lags[max(0, min(len(lags) - 1, int(p * len(lags) + 0.999) - 1))]
print(json.dumps({"probes": len(lags), "lag_p50_ms": round(pct(0.5), 1), "lag_p99_ms": round(pct(0.99), 1), "counts": counts}))
PY
PROBE=$!
wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$RUN/post.lua" "http://127.0.0.1:$PORT/v1/chat/completions" >"$RUN/wrk.out"
WRK_END=$(date +%s.%N)
wait "$PROBE"
sleep 1  # requests wrk left in flight finish
APPENDED=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^tollgate_events_appended_total\{topic="usage"\}/{print $2}')
q() { curl -s "$TG_CLICKHOUSE_URL/?database=bench_$ID" --data-binary "$1"; }
for _ in $(seq 600); do [ "$(q 'SELECT count() FROM usage_events')" -ge "$APPENDED" ] && break; sleep 0.1; done
DRAINED=$(date +%s.%N)
STORED=$(q 'SELECT count() FROM usage_events')
DISTINCT=$(q 'SELECT uniqExact(event_id) FROM usage_events')
ROLLUP=$(q "SELECT sum(requests) FROM usage_rollup WHERE grain = 'minute' AND dimension = 'workspace'")
RPS=$(awk '/Requests\/sec/{print $2}' "$RUN/wrk.out")
python3 - "$RUN/probe.out" "$RPS" "$APPENDED" "$STORED" "$ROLLUP" "$WRK_END" "$DRAINED" "$DURATION" "$DISTINCT" <<'PY'
import json, sys
p = json.load(open(sys.argv[1])); rps, appended, stored, rollup = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
tail = float(sys.argv[7]) - float(sys.argv[6]); duration = float(sys.argv[8]); distinct = int(sys.argv[9])
counts = p["counts"]
steady = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(counts[1:], counts[2:]) if b[0] > a[0]]
print(f"gateway: {rps:.0f} requests/s through the gateway ({appended} usage events appended)")
print(f"clickhouse: {stored} events stored ({distinct} distinct), rollups count {rollup}; stored/appended = {stored / max(appended, 1):.4f}")
print(f"pipeline: {sum(steady) / max(len(steady), 1):.0f} events/s into ClickHouse while loaded (mean of 1 s samples), "
      f"{appended / (duration + tail):.0f} events/s end to end; drained {tail:.2f} s after the load stopped")
print(f"end-to-end lag (answer -> row in ClickHouse): p50 {p['lag_p50_ms']} ms, p99 {p['lag_p99_ms']} ms over {p['probes']} probes")
PY
