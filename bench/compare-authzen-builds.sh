#!/usr/bin/env bash
# Target 6 of issue 15 across builds: AuthZEN `/access/v1/evaluation` (h2c)
# against gRPC `Authorize` on the same server and the same (Cerbos-
# equivalent) request, decision cache off. Each trial starts a fresh server
# per build, in turn, and loads it gRPC, AuthZEN, AuthZEN, gRPC, so the
# ratio of one trial comes from one process in one machine state: this
# machine's processes are bimodal, and a ratio across processes measures
# that. Prints each trial, then per build the medians of gRPC req/s,
# AuthZEN req/s and their ratio.
#
# Usage: bench/compare-authzen-builds.sh BIN...   (e.g. old/cedar-pdp target/release/cedar-pdp)
#   TRIALS=6  N=100000 (requests per load)  PEERS=../shared/peers  PORT=50095 (PORT+1 AuthZEN)
# Needs h2load (apt-get install -y nghttp2-client), curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${PEERS:-../shared/peers}
trials=${TRIALS:-6}
n=${N:-100000}
port=${PORT:-50095}
[ $# -gt 0 ] || { echo "usage: $0 BIN..." >&2; exit 2; }
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 2; }
work=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

printf '[limits]\ndecision_cache_bytes = 0\n' > "$work/uncached.toml"
"$1" bench --request "$peers/cedar-equivalent/request.json" --emit-h2load-body "$work/authorize.bin" >/dev/null
python3 - "$peers/cedar-equivalent/request.json" "$work/evaluation.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
attrs = {(e["uid"]["type"], e["uid"]["id"]): e["attrs"] for e in r["entities"]}
def part(u):
    return {"type": u["type"], "id": u["id"], "properties": attrs[(u["type"], u["id"])]}
json.dump({"subject": part(r["principal"]), "action": {"name": r["action"]["id"]},
           "resource": part(r["resource"])}, open(sys.argv[2], "w"))
PY

rps() { sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p'; }
grpc() {
    h2load -n "$n" -c 8 -m 16 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$work/authorize.bin" "http://127.0.0.1:$port/cedar_pdp.v1.Authorizer/Authorize" 2>&1 | rps
}
authzen() {
    h2load -n "${1:-$n}" -c 8 -m 16 -t 1 -H 'content-type: application/json' \
        -d "$work/evaluation.json" "http://127.0.0.1:$((port + 1))/access/v1/evaluation" 2>&1 | rps
}
allowed() {
    curl -s --max-time 1 -H 'content-type: application/json' -d @"$work/evaluation.json" \
        "http://127.0.0.1:$((port + 1))/access/v1/evaluation" 2>/dev/null | grep -q '"decision":true'
}

echo "h2load -n $n -c 8 -m 16 -t 1, $trials trial(s), $(nproc) cores, $(date -u +%FT%TZ)"
for ((t = 1; t <= trials; t++)); do
    for bin in "$@"; do
        "$bin" serve --config "$work/uncached.toml" --policies "$peers/cedar-equivalent" \
            --listen "127.0.0.1:$port" --authzen-listen "127.0.0.1:$((port + 1))" --admin-listen "" \
            --log-level warn 2>"$work/server.log" &
        pid=$!
        limit=$((SECONDS + 30))
        until allowed; do
            kill -0 "$pid" 2>/dev/null || { echo "$bin exited" >&2; cat "$work/server.log" >&2; exit 1; }
            [ $SECONDS -lt $limit ] || { echo "$bin did not allow the request within 30 s" >&2; exit 1; }
            sleep 0.1
        done
        authzen $((n / 10)) >/dev/null
        g1=$(grpc) a1=$(authzen) a2=$(authzen) g2=$(grpc)
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
        python3 -c "import sys; g, a = ($g1 + $g2) / 2, ($a1 + $a2) / 2; print('%s trial=%d grpc=%.0f authzen=%.0f ratio=%.3f' % (sys.argv[1], $t, g, a, a / g))" "$bin" \
            | tee -a "$work/trials"
    done
done

python3 - "$work/trials" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    bin_, *fields = line.split()
    for f in fields[1:]:
        k, v = f.split("=")
        rows[bin_][k].append(float(v))
print()
for bin_, r in rows.items():
    print(f"{bin_}: median grpc={statistics.median(r['grpc']):.0f} req/s"
          f"  authzen={statistics.median(r['authzen']):.0f} req/s"
          f"  authzen / grpc = {statistics.median(r['ratio']):.2f}x")
PY
