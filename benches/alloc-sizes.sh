#!/usr/bin/env bash
# Every allocation of one Tollgate build for N requests, by size: where callgrind (callgrind.sh)
# shows the same allocator calls but a costlier allocator, this shows which allocation grew.
#
#   BIN=/path/to/tollgate OUT=/tmp/sizes-head benches/alloc-sizes.sh
#   BIN=... OUT=... BT=4312 benches/alloc-sizes.sh    # also a backtrace of each allocation of 4312 bytes
#
# Env: N=200 (requests)  WARM=300  TARGET=tollgate|tollgate-limits  PORT=18798  BT= (a size)
# The gateway runs natively (fresh data dir, provisioned as load.sh provisions it, the one nginx
# mock); after the warm-up, gdb attaches and logs each call of mimalloc's entry points from Rust's
# global allocator (mi_malloc_aligned, mi_zalloc_aligned, mi_realloc_aligned) with its thread,
# size and alignment, for N sequential requests. OUT/summary.txt: the serving thread's
# allocations per request by size; compare two builds' with diff. gdb slows each call, so N stays
# small. From a worktree outside /work/main, set PEERS_SRC=/work/shared/bench-peers.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
: "${BIN:?set BIN to the tollgate binary}" "${OUT:?set OUT to a directory for the results}"
N=${N:-200} WARM=${WARM:-300} TARGET=${TARGET:-tollgate} PORT=${PORT:-18798} BT=${BT:-}
ADMIN=tg_bench_admin_key_0123456789
. ./common.sh
rm -rf "$OUT" && mkdir -p "$OUT"

started_mock=0
alive mock || { start_mock; started_mock=1; }
GW= GDB=
cleanup() {
  [ -z "$GDB" ] || kill "$GDB" 2>/dev/null || true
  [ -z "$GW" ] || kill "$GW" 2>/dev/null || true
  [ "$started_mock" = 0 ] || kill "$(cat "$W/run/mock.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

! curl -s -o /dev/null "http://127.0.0.1:$PORT/readyz" || { echo "port $PORT is already serving" >&2; exit 1; }
TOLLGATE_LISTEN=127.0.0.1:$PORT TOLLGATE_DATA_DIR=$OUT/data TOLLGATE_ADMIN_KEY=$ADMIN RUST_LOG=warn \
  "$BIN" serve >"$OUT/tollgate.log" 2>&1 < /dev/null &
GW=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done
provision_tenant "$OUT/"
KEY=$(cat "$OUT/$TARGET-key")

# drive COUNT: COUNT sequential requests (post.lua's body, keep-alive); fails on a non-200.
drive() {
  python3 - "$PORT" "$KEY" "$1" <<'PY'
import http.client, sys
port, key, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
body = ('{"model":"@bench/gpt-4o-mini","messages":[{"role":"user","content":'
        '"Say hello in one short sentence, please."}],"max_tokens":64}')
c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body,
              {"Content-Type": "application/json", "Authorization": "Bearer " + key})
    r = c.getresponse(); r.read()
    if r.status != 200: sys.exit(f"answered {r.status}")
PY
}
drive "$WARM"; sleep 1

# gdb's registers at each entry point: size in rdi (rsi for realloc), alignment after it.
{
  echo "set pagination off"; echo "set print thread-events off"; echo "handle SIGPIPE nostop noprint"
  for f in "mi_malloc_aligned A \$rdi \$rsi" "mi_zalloc_aligned Z \$rdi \$rsi" "mi_realloc_aligned R \$rsi \$rdx"; do
    set -- $f
    echo "break $1"; echo "commands"; echo "silent"
    echo "printf \"$2 %d %d %d\\n\", \$_thread, $3, $4"
    [ -z "$BT" ] || echo "if $3 == $BT
bt 14
end"
    echo "cont"; echo "end"
  done
  echo "info threads"; echo "cont"
} >"$OUT/gdb.cmd"
gdb -p "$GW" -batch -x "$OUT/gdb.cmd" >"$OUT/gdb.log" 2>&1 &
GDB=$!
for _ in $(seq 100); do grep -q '^ *[0-9]* *Thread .*"serve-0"' "$OUT/gdb.log" 2>/dev/null && break; sleep 0.2; done
drive "$N"
kill -INT "$GDB"; sleep 2

python3 - "$OUT/gdb.log" "$N" <<'PY' | tee "$OUT/summary.txt"
import collections, re, sys
path, n = sys.argv[1], int(sys.argv[2])
lines = open(path, errors="replace").read().splitlines()
serve = next(int(m.group(1)) for l in lines if (m := re.match(r'\*?\s+(\d+)\s+Thread .*"serve-0"', l)))
by = collections.Counter()
for l in lines:
    p = l.split()
    if len(p) == 4 and p[0] in "AZR" and p[1].isdigit() and int(p[1]) == serve:
        by[(p[0], int(p[2]), int(p[3]))] += 1
print(f"serve-0, {n} requests: {sum(by.values()) / n:.2f} allocations/request, "
      f"{sum(s * c for (_, s, _), c in by.items()) / n:.0f} bytes/request (A alloc, Z zeroed, R realloc)")
for (kind, size, align), c in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"{kind} {size:>7} align {align:>3}  {c / n:8.3f}/request")
PY
