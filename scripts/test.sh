#!/usr/bin/env bash
# Runs every test. Installs and starts what the tests need first (idempotent, fast when present):
# the Python SDKs in a venv under $TG_CACHE (default ~/.cache/tollgate), ClickHouse and the
# Kafka-protocol broker (scripts/services.sh; stopped again at the end), then cargo test with the
# build cached there too. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${TG_CACHE:-$HOME/.cache/tollgate}
VENV=$CACHE/venv
REQ=tests/sdk/requirements.txt
mkdir -p "$CACHE"
if ! cmp -s "$REQ" "$VENV/.requirements" 2>/dev/null || ! "$VENV/bin/python" -c 'import portkey_ai, openai' 2>/dev/null; then
  echo "test.sh: installing the Python SDKs into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$VENV/.requirements"
fi
export TG_PYTHON=$VENV/bin/python
eval "$(scripts/services.sh start)"
trap 'scripts/services.sh stop' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
cargo test --all-targets "$@"
