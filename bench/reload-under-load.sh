#!/usr/bin/env bash
# Target 6: load cedar-pdp with the Cerbos-equivalent request, first steady,
# then while the policy directory is rewritten every INTERVAL (each write is
# a new revision, so every one is a full reload and a cold decision cache).
# Prints both bench summaries and the p99 ratio; any failed call is an error.
#
# SCALE=1 serves bench/gen-scale.py's set instead (POLICIES=10000 policies,
# ENTITIES=100000 stored entities; issue 15 target 5c) and rewrites its
# policies.cedar, so each reload re-reads the whole set; its defaults are
# DURATION=30s INTERVAL=10, since one reload of that set takes seconds.
#
# Usage: bench/reload-under-load.sh   (DURATION=10s INTERVAL=0.2 CONNECTIONS=4 CONCURRENCY=8
#                                      BIN=target/release/cedar-pdp SCALE=0)
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${PEERS:-../shared/peers}
scale=${SCALE:-0}
if [ "$scale" = 1 ]; then duration=${DURATION:-30s}; interval=${INTERVAL:-10}; else duration=${DURATION:-10s}; interval=${INTERVAL:-0.2}; fi
port=${PORT:-50071}
if [ -z "${BIN:-}" ]; then cargo build --release --locked --quiet; fi
bin=${BIN:-target/release/cedar-pdp}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
if [ "$scale" = 1 ]; then
    python3 bench/gen-scale.py "$work/policies" --policies "${POLICIES:-10000}" --entities "${ENTITIES:-100000}"
    request=$work/policies.request.json
    rewritten=policies.cedar
else
    cp -r "$peers/cedar-equivalent" "$work/policies"
    mv "$work/policies/request.json" "$work/request.json"
    request=$work/request.json
    rewritten=document.cedar
fi
"$bin" serve --policies "$work/policies" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((port + 1))" --authzen-listen "" --log-level warn \
    2>"$work/server.log" &
pids+=($!)
load=(bench --addr "127.0.0.1:$port" --request "$request"
      --connections "${CONNECTIONS:-4}" --concurrency "${CONCURRENCY:-8}" --duration "$duration")
deadline=$((SECONDS + 90))
until "$bin" bench --addr "127.0.0.1:$port" --request "$request" --requests 1 >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "server did not start" >&2; cat "$work/server.log" >&2; exit 1; }
    sleep 0.2
done

echo "== steady"
"$bin" "${load[@]}" | tee "$work/steady"
echo "== reloading every ${interval}s"
(
    n=0
    while true; do
        n=$((n + 1))
        cp "$work/policies/$rewritten" "$work/next.cedar"
        echo "// reload $n" >> "$work/next.cedar"
        mv "$work/next.cedar" "$work/policies/$rewritten"
        sleep "$interval"
    done
) &
writer=$!
pids+=("$writer")
"$bin" "${load[@]}" | tee "$work/reloading"
kill "$writer"
generation=$(curl -sf "http://127.0.0.1:$((port + 1))/metrics" | sed -n 's/^cedar_pdp_policy_generation \([0-9]*\).*/\1/p')
echo "policy generation after the run: $generation (1 = no reload happened)"
python3 - "$work/steady" "$work/reloading" <<'PY'
import re, sys
def fig(path, label):
    text = open(path).read()
    m = re.search(re.escape(label) + r"\s*([0-9.]+)\s*(us|µs|ms|s)?", text)
    v, u = float(m.group(1)), (m.group(2) or "")
    return v * {"": 1, "us": 1e-3, "µs": 1e-3, "ms": 1, "s": 1e3}[u]
steady, reloading = sys.argv[1], sys.argv[2]
print()
print(f"p99 while reloading / steady = {fig(reloading, 'p99:') / fig(steady, 'p99:'):.2f}x; "
      f"errors while reloading: {int(fig(reloading, 'errors:'))}")
PY
