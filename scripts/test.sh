#!/usr/bin/env bash
# Runs every test. Installs and starts what the tests need first (idempotent, fast when present):
# Debian's Chromium (apt, when /usr/bin/chromium is missing), the Python SDKs and Playwright in a
# venv under $TG_CACHE (default ~/.cache/tollgate), ClickHouse and the
# Kafka-protocol broker (scripts/services.sh; stopped again at the end), then cargo test with the
# build cached there too. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${TG_CACHE:-$HOME/.cache/tollgate}
VENV=$CACHE/venv
REQ=tests/sdk/requirements.txt
mkdir -p "$CACHE"
# The console's browser tests (tests/console/browser.py) drive Debian's Chromium through
# Playwright; Playwright's own browser builds are never downloaded (they cannot be, here).
if [ ! -x /usr/bin/chromium ]; then
  echo "test.sh: installing Chromium (apt-get install chromium)"
  SUDO=
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
  LOG=$(mktemp)
  if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$LOG" 2>&1; then
    cat "$LOG" >&2
    rm -f "$LOG"
    exit 1
  fi
  rm -f "$LOG"
fi
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if ! cmp -s "$REQ" "$VENV/.requirements" 2>/dev/null || ! "$VENV/bin/python" -c 'import portkey_ai, openai, playwright' 2>/dev/null; then
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
