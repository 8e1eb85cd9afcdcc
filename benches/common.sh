# Shared by the load harnesses (sourced): the peers' bench kit copied into benches/run/peers,
# the nginx mock upstream, and the admin API. Never writes into ../shared.
W=$PWD/run/peers
SRC=${PEERS_SRC:-$ROOT/../shared/bench-peers}
mkdir -p "$W/run"
for f in bench.sh post.lua start.sh stop.sh setup.sh README.md; do cp "$SRC/$f" "$W/$f"; done
for d in mock portkey litellm; do mkdir -p "$W/$d" && cp -r "$SRC/$d/." "$W/$d/"; done
chmod -R u+w "$W" && chmod +x "$W"/*.sh

need=(); for p in nginx-light wrk curl; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if ((${#need[@]})); then
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi

alive() { [ -f "$W/run/$1.pid" ] && kill -0 "$(cat "$W/run/$1.pid")" 2>/dev/null; }

# The nginx mock: JSON on 18700, SSE on 18701.
start_mock() {
  alive mock && return
  mkdir -p "$W/run/nginx"
  nginx -p "$W/run/nginx/" -c "$W/mock/nginx.conf" >"$W/run/mock.log" 2>&1 < /dev/null &
  echo $! > "$W/run/mock.pid"
  for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18700/v1/models && break; sleep 0.1; done
}

# api METHOD PATH [JSON]: an admin call to the gateway on $PORT with $ADMIN.
api() { curl -sf -X "$1" "http://127.0.0.1:$PORT/v1$2" -H "x-portkey-api-key: $ADMIN" -H 'content-type: application/json' ${3:+-d "$3"}; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# provision_tenant PREFIX: the benchmark tenant on the gateway at $PORT: the @bench (JSON) and
# @bench-sse providers on the mock; a `tollgate` key, and a `tollgate-limits` key in a workspace
# with limits at every level (key budget and request + token rate limits, provider budget and
# rate limit, integration-access budget and rate limit, workspace budget and rate limit, and a
# department policy; all too large to trip). The keys go to PREFIXtollgate-key and
# PREFIXtollgate-limits-key (PREFIX: a directory with its slash, or a path and a dash).
provision_tenant() {
  local out=$1 WS WS2 p slug port
  local BIG='{"type":"cost","credit_limit":1000000,"alert_threshold":999999}'
  local RPM='{"type":"requests","unit":"rpm","value":100000000}'
  local TPM='{"type":"tokens","unit":"rpm","value":1000000000000}'
  WS=$(api POST /admin/workspaces '{"name":"bench"}' | json_field id)
  for p in bench:18700 bench-sse:18701; do
    slug=${p%%:*}; port=${p##*:}
    api POST /integrations "{\"name\":\"$slug\",\"slug\":\"$slug\",\"ai_provider_id\":\"openai\",\"key\":\"sk-mock-0123456789\",\"configurations\":{\"custom_host\":\"http://127.0.0.1:$port/v1\"}}" >/dev/null
    api PUT "/integrations/$slug/workspaces" "{\"workspaces\":[{\"id\":\"$WS\",\"enabled\":true}]}" >/dev/null
  done
  api POST /api-keys/workspace/service "{\"name\":\"bench\",\"workspace_id\":\"$WS\",\"scopes\":[\"completions.write\"],\"defaults\":{\"metadata\":{\"department\":\"bench\"}}}" \
    | json_field key > "${out}tollgate-key"
  WS2=$(api POST /admin/workspaces "{\"name\":\"bench-limits\",\"usage_limits\":[$BIG],\"rate_limits\":[$RPM]}" | json_field id)
  for slug in bench bench-sse; do
    api PUT "/integrations/$slug/workspaces" "{\"workspaces\":[{\"id\":\"$WS\",\"enabled\":true},{\"id\":\"$WS2\",\"enabled\":true,\"usage_limits\":[$BIG],\"rate_limits\":[$RPM]}]}" >/dev/null
    api PUT "/providers/$slug?workspace_id=$WS2" "{\"usage_limits\":$BIG,\"rate_limits\":[$RPM]}" >/dev/null
  done
  api POST /policies/usage-limits "{\"workspace_id\":\"$WS2\",\"conditions\":[{\"key\":\"metadata.department\",\"value\":\"bench\"}],\"group_by\":[{\"key\":\"metadata.department\"}],\"type\":\"cost\",\"credit_limit\":1000000}" >/dev/null
  api POST /api-keys/workspace/service "{\"name\":\"bench-limits\",\"workspace_id\":\"$WS2\",\"scopes\":[\"completions.write\"],\"defaults\":{\"metadata\":{\"department\":\"bench\"}},\"usage_limits\":$BIG,\"rate_limits\":[$RPM,$TPM]}" \
    | json_field key > "${out}tollgate-limits-key"
}
