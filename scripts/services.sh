#!/usr/bin/env bash
# Installs and starts the real components the distributed-mode tests need, idempotently and fast
# when already present: ClickHouse (Debian's clickhouse-server, from a copied config on loopback
# ports) and the Kafka-protocol broker tansu 0.6.0 (built once from crates.io into $TG_CACHE).
#
#   scripts/services.sh start   # install when missing, start, wait until both answer; prints env
#   scripts/services.sh stop [clickhouse|tansu]   # stop both, or one
#   scripts/services.sh env     # the settings the tests read (TG_CLICKHOUSE_URL, TG_KAFKA_BROKERS)
#
# Ports: ClickHouse HTTP $TG_CH_HTTP_PORT (18123), native $TG_CH_TCP_PORT (19000);
# tansu $TG_KAFKA_PORT (19092). State lives under $TG_SERVICES_DIR (default $TG_CACHE/services)
# and is wiped on start unless TG_SERVICES_KEEP=1 (the tests restart a stopped server that way).
set -euo pipefail
CACHE=${TG_CACHE:-$HOME/.cache/tollgate}
RUN=${TG_SERVICES_DIR:-$CACHE/services}
CH_HTTP=${TG_CH_HTTP_PORT:-18123}
CH_TCP=${TG_CH_TCP_PORT:-19000}
KAFKA=${TG_KAFKA_PORT:-19092}
TANSU_VERSION=0.6.0
TANSU=${TG_TANSU:-$CACHE/tansu/bin/tansu}

say() { echo "services.sh: $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_clickhouse() {
  command -v clickhouse-server >/dev/null && return
  say "installing clickhouse-server (Debian)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
}

install_tansu() {
  if [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then return; fi
  say "building tansu $TANSU_VERSION from crates.io (about 12 minutes, once; cached in $CACHE/tansu)"
  CARGO_TARGET_DIR=$CACHE/tansu-target cargo install tansu --version "$TANSU_VERSION" --locked \
    --features libsql,dynostore --root "$CACHE/tansu" --quiet
}

# Starts a command in its own session, detached from this shell's terminal and pipes (so CI's
# log pipe closes when the script ends), recording the command's own pid.
detach() { # pidfile, logfile, command...
  local pidfile=$1 logfile=$2; shift 2
  setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >"$logfile" 2>&1 &
}

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  say "$name did not answer within ${secs}s"; return 1
}

start_clickhouse() {
  if curl -sf "http://127.0.0.1:$CH_HTTP/ping" >/dev/null 2>&1; then return; fi
  local dir=$RUN/clickhouse
  [ "${TG_SERVICES_KEEP:-0}" = 1 ] || rm -rf "$dir"
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
  sed -e "s#<http_port>8123</http_port>#<http_port>$CH_HTTP</http_port>#" \
      -e "s#<tcp_port>9000</tcp_port>#<tcp_port>$CH_TCP</tcp_port>#" \
      -e "s#<interserver_http_port>9009</interserver_http_port>##" \
      -e "s#/var/lib/clickhouse/tmp/#$dir/tmp/#" \
      -e "s#/var/lib/clickhouse/user_files/#$dir/user_files/#" \
      -e "s#/var/lib/clickhouse/format_schemas/#$dir/format_schemas/#" \
      -e "s#<path>/var/lib/clickhouse/</path>#<path>$dir/data/</path>#" \
      -e "s#/var/log/clickhouse-server/#$dir/log/#g" \
      -e "s#<level>trace</level>#<level>warning</level>#" \
      /etc/clickhouse-server/config.xml > "$dir/config.xml"
  # Loopback IPv4 only (the package's default also tries ::1, absent on some machines).
  sed -i "s#<!-- <listen_host>0.0.0.0</listen_host> -->#<listen_host>127.0.0.1</listen_host>#" "$dir/config.xml"
  cp /etc/clickhouse-server/users.xml "$dir/users.xml"
  (cd "$dir" && detach "$dir/pid" "$dir/log/stdout" clickhouse-server --config-file="$dir/config.xml")
  wait_for clickhouse 60 curl -sf "http://127.0.0.1:$CH_HTTP/ping"
  say "clickhouse on 127.0.0.1:$CH_HTTP"
}

broker_answers() { # a Kafka ApiVersions round trip, not just an open port
  python3 - "$KAFKA" <<'EOF'
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
cid = b"probe"
body = struct.pack(">hhih", 18, 0, 1, len(cid)) + cid
s.sendall(struct.pack(">i", len(body)) + body)
n = struct.unpack(">i", s.recv(4))[0]
sys.exit(0 if n > 0 else 1)
EOF
}

start_tansu() {
  if broker_answers 2>/dev/null; then return; fi
  local dir=$RUN/tansu
  [ "${TG_SERVICES_KEEP:-0}" = 1 ] || rm -rf "$dir"
  mkdir -p "$dir"
  (cd "$dir" && RUST_LOG=warn detach "$dir/pid" "$dir/log" "$TANSU" broker --silent \
      --listener-url "tcp://127.0.0.1:$KAFKA" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA" \
      --storage-engine "sqlite://tansu.db")
  wait_for tansu 60 broker_answers
  say "tansu on 127.0.0.1:$KAFKA"
}

stop_one() {
  local pidfile=$RUN/$1/pid
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

print_env() {
  echo "export TG_CLICKHOUSE_URL=http://127.0.0.1:$CH_HTTP"
  echo "export TG_KAFKA_BROKERS=127.0.0.1:$KAFKA"
  echo "export TG_TANSU=$TANSU"
  echo "export TG_SERVICES=$RUN"
}

case ${1:-start} in
  start)
    install_clickhouse
    install_tansu
    start_clickhouse
    start_tansu
    print_env
    ;;
  stop) if [ $# -gt 1 ]; then stop_one "$2"; else stop_one tansu; stop_one clickhouse; fi ;;
  env) print_env ;;
  *) say "usage: $0 start|stop|env"; exit 2 ;;
esac
