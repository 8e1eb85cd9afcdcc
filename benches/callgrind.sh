#!/usr/bin/env bash
# Deterministic per-request cost of one Tollgate build: instructions (callgrind Ir) and allocator
# calls per request, for a fixed number of requests after a warm-up. Wall-clock A/B (ab.sh) cannot
# resolve a few percent on this project's noisy 2-core machine; instruction counts can.
#
#   BIN=/path/to/tollgate OUT=/tmp/cg-head benches/callgrind.sh
#   BIN=... MODE=native OUT=... benches/callgrind.sh     # no valgrind: page faults and CPU per request
#
# Env: N=2000 (measured requests)  WARM=300 (warm-up requests)  CONC=1 (client connections)
#      TARGET=tollgate|tollgate-limits  PORT=18795  MODE=callgrind|native
#      VG_ARGS= (more callgrind options: "--cache-sim=yes" adds simulated cache misses per request)
# The gateway gets a fresh data dir and is provisioned as load.sh and ab.sh provision it
# (common.sh provision_tenant), against the one nginx mock. In callgrind mode it runs under
# `valgrind --tool=callgrind --separate-threads=yes`; after the warm-up `callgrind_control -z`
# zeroes the counters, and after the N requests `callgrind_control -d` dumps them, one file per
# thread, into OUT. summary.txt there has, per thread and in all, Ir, the allocator's calls and
# (with --cache-sim) simulated cache misses per request; the request path's thread is the one
# that serves (`serve-0`). Compare builds function by function with
# `callgrind_annotate --inclusive=yes OUT/callgrind.out.<pid>.1-<thread>`. In native mode
# summary.txt has minor page faults and CPU ms per request (/proc/<pid>/stat). The script stops
# what it started (by pid) when it exits. From a worktree outside /work/main, set
# PEERS_SRC=/work/shared/bench-peers (common.sh looks for ../shared).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
: "${BIN:?set BIN to the tollgate binary}" "${OUT:?set OUT to a directory for the results}"
N=${N:-2000} WARM=${WARM:-300} CONC=${CONC:-1} TARGET=${TARGET:-tollgate} PORT=${PORT:-18795}
MODE=${MODE:-callgrind}
ADMIN=tg_bench_admin_key_0123456789
. ./common.sh
rm -rf "$OUT" && mkdir -p "$OUT"

started_mock=0
alive mock || { start_mock; started_mock=1; }
GW=
cleanup() {
  [ -z "$GW" ] || kill "$GW" 2>/dev/null || true
  [ "$started_mock" = 0 ] || kill "$(cat "$W/run/mock.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

! curl -s -o /dev/null "http://127.0.0.1:$PORT/readyz" || { echo "port $PORT is already serving" >&2; exit 1; }
run=()
# shellcheck disable=SC2206 # VG_ARGS is a list of words, e.g. "--cache-sim=yes"
[ "$MODE" = native ] || run=(valgrind --tool=callgrind --separate-threads=yes ${VG_ARGS:-}
  --callgrind-out-file="$OUT/callgrind.out.%p" --log-file="$OUT/valgrind.log")
TOLLGATE_LISTEN=127.0.0.1:$PORT TOLLGATE_DATA_DIR=$OUT/data TOLLGATE_ADMIN_KEY=$ADMIN RUST_LOG=warn \
  "${run[@]}" "$BIN" serve >"$OUT/tollgate.log" 2>&1 < /dev/null &
GW=$!
for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.2; done
provision_tenant "$OUT/"
KEY=$(cat "$OUT/$TARGET-key")

# drive COUNT: COUNT requests (post.lua's body, keep-alive), CONC connections; fails on a non-200.
drive() {
  python3 - "$PORT" "$KEY" "$1" "$CONC" <<'PY'
import http.client, sys, threading
port, key, n, conc = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
body = ('{"model":"@bench/gpt-4o-mini","messages":[{"role":"user","content":'
        '"Say hello in one short sentence, please."}],"max_tokens":64}')
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
bad = []
def conn(count):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(count):
        c.request("POST", "/v1/chat/completions", body, headers)
        r = c.getresponse(); r.read()
        if r.status != 200: bad.append(r.status)
threads = [threading.Thread(target=conn, args=(n // conc + (i < n % conc),)) for i in range(conc)]
for t in threads: t.start()
for t in threads: t.join()
if bad: sys.exit(f"{len(bad)} non-200 answers, first {bad[0]}")
PY
}
# The usage log and store write behind the answer: wait until the gateway is idle (its CPU time
# stops moving), so what a request causes there is counted with it.
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$GW/stat"; }
faults() { awk '{ sub(/^.*\) /, ""); print $8 }' "/proc/$GW/stat"; }
settle() { local a b; a=$(ticks); while sleep 2; b=$(ticks); [ "$b" -gt $((a + 2)) ]; do a=$b; done; }

drive "$WARM"; settle
if [ "$MODE" = native ]; then
  t0=$(ticks) f0=$(faults); drive "$N"; settle; t1=$(ticks) f1=$(faults)
  awk -v n="$N" -v t="$((t1 - t0))" -v f="$((f1 - f0))" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "requests %d\nminor faults/request %.3f\ncpu ms/request %.4f\n", n, f / n, t * 1000 / hz / n }' \
    | tee "$OUT/summary.txt"
  exit 0
fi
callgrind_control -z "$GW" >/dev/null
drive "$N"; settle
callgrind_control -d "$GW" >/dev/null
sleep 1
python3 - "$OUT" "$N" "$WARM" "$CONC" "$TARGET" "$BIN" <<'PY' | tee "$OUT/summary.txt"
# Per thread: Ir and allocator calls (mimalloc's entry points from Rust's global allocator) per
# request, from the dump's files (callgrind.out.<pid>.1-<valgrind thread number>); the compressed
# names ("(id) name", then "(id)") are resolved per file. The dump does not name threads, and
# valgrind's numbers are not the OS threads' order, so a thread is named by the code it ran.
import glob, re, sys
out, n = sys.argv[1], int(sys.argv[2])
roles = [("tollgate::http::conn::", "request path"), ("tollgate::log::writer", "log writer")]
alloc = {"mi_malloc_aligned": "alloc", "mi_zalloc_aligned": "alloc", "mi_realloc_aligned": "realloc", "mi_free": "free"}
print(f"requests {n} (after {sys.argv[3]} warm-up), conc {sys.argv[4]}, target {sys.argv[5]}, bin {sys.argv[6]}")
print(f"{'thread':<18}{'Ir/req':>12}{'alloc/req':>11}{'realloc/req':>13}{'free/req':>10}{'I1 miss/req':>13}{'D1 miss/req':>13}{'LL miss/req':>13}")
total = {"Ir": 0, "alloc": 0, "realloc": 0, "free": 0, "I1 miss": 0, "D1 miss": 0, "LL miss": 0}
for path in sorted(glob.glob(f"{out}/callgrind.out.*.1-*")):
    ir = 0; calls = {"alloc": 0, "realloc": 0, "free": 0}; ids = {}; cfn = None; ev = []
    for line in open(path, errors="replace"):
        if line.startswith("events:"):
            ev = line.split()[1:]
        elif line.startswith("summary:"):
            cost = dict(zip(ev, map(int, line.split()[1:])))
            ir = cost["Ir"]
            miss = {"I1 miss": cost.get("I1mr", 0), "D1 miss": cost.get("D1mr", 0) + cost.get("D1mw", 0),
                    "LL miss": cost.get("ILmr", 0) + cost.get("DLmr", 0) + cost.get("DLmw", 0)}
        elif line.startswith("cfn="):
            m = re.match(r"\((\d+)\)(?: (.*))?$", line[4:].rstrip("\n"))
            if m and m.group(2) is not None: ids[m.group(1)] = m.group(2)
            cfn = ids.get(m.group(1)) if m else line[4:].strip()
        elif line.startswith("fn="):
            m = re.match(r"\((\d+)\) (.*)$", line[3:].rstrip("\n"))
            if m: ids[m.group(1)] = m.group(2)
        elif line.startswith("calls=") and cfn in alloc:
            calls[alloc[cfn]] += int(line[6:].split()[0])
    if ir < n:
        continue
    t = int(path.rsplit("-", 1)[1])
    fns = set(ids.values())
    name = next((r for marker, r in roles if any(marker in f for f in fns)), "thread")
    print(f"{name + ' (' + str(t) + ')':<18}{ir / n:>12.0f}{calls['alloc'] / n:>11.2f}{calls['realloc'] / n:>13.2f}{calls['free'] / n:>10.2f}{miss['I1 miss'] / n:>13.1f}{miss['D1 miss'] / n:>13.1f}{miss['LL miss'] / n:>13.1f}")
    total["Ir"] += ir
    for k in calls: total[k] += calls[k]
    for k in miss: total[k] += miss[k]
print(f"{'all':<18}{total['Ir'] / n:>12.0f}{total['alloc'] / n:>11.2f}{total['realloc'] / n:>13.2f}{total['free'] / n:>10.2f}{total['I1 miss'] / n:>13.1f}{total['D1 miss'] / n:>13.1f}{total['LL miss'] / n:>13.1f}")
PY
