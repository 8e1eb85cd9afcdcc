#!/usr/bin/env bash
# Load harness: gateway overhead of `tollgate serve` against the nginx mock upstream, measured in
# the same run as direct-to-mock (and, with PEERS=1, Portkey's gateway and LiteLLM's proxy).
#
#   benches/load.sh                      # direct + tollgate, JSON, CONCS="1 16 64", 20 s each
#   PEERS=1 ROUNDS=3 benches/load.sh     # also portkey + litellm (first run installs them: slow)
#   STREAM=1 benches/load.sh             # SSE instead of JSON
#
# It copies ../shared/bench-peers into benches/run/peers (never writes into shared/), adds a
# `tollgate` target there, starts the mock (and peers), starts a release build of Tollgate on
# 127.0.0.1:18790 with a fresh data dir, provisions a tenant through the admin API, and runs the
# peers' bench.sh. All traffic stays on loopback; every run is bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
PORT=18790
ADMIN=tg_bench_admin_key_0123456789
. ./common.sh

# The tollgate target: the same request through @bench (JSON mock) or @bench-sse (SSE mock).
python3 - "$W/bench.sh" "$PORT" <<'PY'
import sys
path, port = sys.argv[1], sys.argv[2]
s = open(path).read()
case = f'''    tollgate|tollgate-limits) URL=http://127.0.0.1:{port}/v1/chat/completions
             [ -s run/$1-key ] || return 1; AUTH=$(cat run/$1-key)
             MODEL=$([ "$STREAM" = 1 ] && echo @bench-sse/gpt-4o-mini || echo @bench/gpt-4o-mini) ;;
  esac'''
if "tollgate)" not in s:
    s = s.replace("  esac", case, 1)
open(path, "w").write(s)
PY

if [ "${PEERS:-0}" = 1 ]; then
  "$W/setup.sh" && "$W/start.sh"
else
  start_mock
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tollgate/target}
(cd "$ROOT" && cargo build --release --quiet)
if alive tollgate; then kill "$(cat "$W/run/tollgate.pid")"; sleep 1; fi
rm -rf "$W/run/tollgate-data"
TOLLGATE_LISTEN=127.0.0.1:$PORT TOLLGATE_DATA_DIR=$W/run/tollgate-data TOLLGATE_ADMIN_KEY=$ADMIN RUST_LOG=warn \
  "$CARGO_TARGET_DIR/release/tollgate" serve >"$W/run/tollgate.log" 2>&1 < /dev/null &
echo $! > "$W/run/tollgate.pid"
cp "$W/run/tollgate.pid" "$W/run/tollgate-limits.pid"  # the same process serves both targets
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done

provision_tenant "$W/run/"

PEER_TARGETS=; [ "${PEERS:-0}" != 1 ] || PEER_TARGETS="portkey litellm"
export TARGETS=${TARGETS:-"direct tollgate tollgate-limits $PEER_TARGETS"}
echo "# machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); tollgate $(git -C "$ROOT" rev-parse --short HEAD)"
"$W/bench.sh"
echo "# tollgate metered: $(curl -s "http://127.0.0.1:$PORT/metrics" | grep '^tollgate_events_appended_total{topic="usage"}')"
# The usage store ingests at background priority, so under load it may trail the log; report how far
# it was behind when the load stopped and how long it took to catch up.
lag() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^tollgate_store_lag_bytes/ {print $2}'; }
behind=$(lag); t0=$(date +%s.%N)
while [ "$(lag)" != 0 ]; do sleep 0.2; done
echo "# usage store: $behind bytes behind the log when the load stopped; caught up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
kill "$(cat "$W/run/tollgate.pid")" 2>/dev/null || true
rm -f "$W/run/tollgate-limits.pid"
[ "${PEERS:-0}" = 1 ] || { kill "$(cat "$W/run/mock.pid")" 2>/dev/null || true; }
wait 2>/dev/null || true  # let them release their ports before a next run binds them
