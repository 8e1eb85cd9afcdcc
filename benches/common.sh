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
