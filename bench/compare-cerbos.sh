#!/usr/bin/env bash
# Cerbos vs cedar-pdp `Authorize` vs cedar-pdp's own gRPC health check (the
# ceiling no gRPC service can pass), under the same h2load options, in one
# run. Prints one line per target (median of ROUNDS rounds) and the ratios.
# `authorize` is the default server; `uncached` is a second server with the
# decision cache off (`limits.decision_cache_bytes = 0`), which evaluates
# every request: h2load repeats one request, so `authorize` measures hits.
# `cold` is a third server with the entity cache off too
# (`limits.entity_cache_bytes = 0`): every request's entities parsed anew.
#
# Usage: bench/compare-cerbos.sh [h2load options]   (default: -n 200000 -c 8 -m 16 -t 1)
#   ROUNDS=3          rounds; the targets' order rotates each round
#   PEERS=../shared/peers   Cerbos, its policy and the equivalent Cedar request
#   PORT=50061        cedar-pdp's port, PORT+1 for the uncached one, PORT+6 for the cold
#                     one, PORT+4 and PORT+5 for the corpus server (Cerbos uses 3593)
#   BIN=FILE          the cedar-pdp binary to measure (default: build target/release/cedar-pdp)
#   CORPUS=1          also the corpus mode (0: skip it): bench/gen-corpus.py writes a
#                     realistic corpus (100,000 requests, Zipf over 1,000 principals and
#                     10,000 documents, some entities stored, some inline) on the same
#                     rules; each round, a fresh default server (cache on, cold) gets
#                     every line once from `cedar-pdp bench --corpus`, with -c/-m as
#                     connections/concurrency. For a like-for-like client, the same
#                     load client also sends the single request to the uncached server.
#                     Prints corpus req/s against Cerbos and the decision-cache hit rate.
#   BASELINE=FILE     another cedar-pdp binary (e.g. the commit before a change), served
#                     cached on PORT+2 and uncached on PORT+3 and measured in the same
#                     rounds, as `base-authorize`, `base-uncached` and `base-health`
#                     (its health check too, so both builds' servers see the same load),
#                     and in the corpus mode as `base-corpus` (a fresh server each round too).
#                     The servers started first measure a few per cent slower even when
#                     both are the same binary: run it twice, BIN and BASELINE swapped,
#                     and compare the two orientations.
# Needs h2load (apt-get install -y nghttp2-client), npm (Cerbos is installed
# from the npm registry by the peers' start.sh) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${PEERS:-../shared/peers}
rounds=${ROUNDS:-3}
port=${PORT:-50061}
opts=("$@")
[ ${#opts[@]} -gt 0 ] || opts=(-n 200000 -c 8 -m 16 -t 1)
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 2; }

if [ -z "${BIN:-}" ]; then cargo build --release --locked --quiet; fi
bin=${BIN:-target/release/cedar-pdp}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cerbos=$("$peers/cerbos/start.sh" | tail -1)
pids+=("$cerbos")
"$bin" serve --policies "$peers/cedar-equivalent" --listen "127.0.0.1:$port" --admin-listen "" --authzen-listen "" \
    --log-level warn 2>"$work/cedar-pdp.log" &
pids+=($!)
printf '[limits]\ndecision_cache_bytes = 0\n' > "$work/uncached.toml"
"$bin" serve --config "$work/uncached.toml" --policies "$peers/cedar-equivalent" \
    --listen "127.0.0.1:$((port + 1))" --admin-listen "" --authzen-listen "" --log-level warn 2>"$work/uncached.log" &
pids+=($!)
printf '[limits]\ndecision_cache_bytes = 0\nentity_cache_bytes = 0\n' > "$work/cold.toml"
"$bin" serve --config "$work/cold.toml" --policies "$peers/cedar-equivalent" \
    --listen "127.0.0.1:$((port + 6))" --admin-listen "" --authzen-listen "" --log-level warn 2>"$work/cold.log" &
pids+=($!)
ports=("$port" $((port + 1)) $((port + 6)))
if [ -n "${BASELINE:-}" ]; then
    "$BASELINE" serve --policies "$peers/cedar-equivalent" --listen "127.0.0.1:$((port + 2))" \
        --admin-listen "" --authzen-listen "" --log-level warn 2>"$work/base.log" &
    pids+=($!)
    "$BASELINE" serve --config "$work/uncached.toml" --policies "$peers/cedar-equivalent" \
        --listen "127.0.0.1:$((port + 3))" --admin-listen "" --authzen-listen "" --log-level warn 2>"$work/base-uncached.log" &
    pids+=($!)
    ports+=($((port + 2)) $((port + 3)))
fi

# The same request Cerbos gets, as a gRPC-framed AuthorizeRequest; the
# health check's body is an empty HealthCheckRequest (five framing bytes).
"$bin" bench --request "$peers/cedar-equivalent/request.json" --emit-h2load-body "$work/authorize.bin" >/dev/null
printf '\0\0\0\0\0' > "$work/health.bin"

# Ready, and the decision is the expected ALLOW (h2load sees HTTP status only).
python3 - "$peers/cedar-equivalent/request.json" "$work" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
uid = lambda u: '%s::"%s"' % (u["type"], u["id"])
open(sys.argv[2] + "/entities.json", "w").write(json.dumps(r["entities"]))
open(sys.argv[2] + "/args", "w").write("\n".join([uid(r["principal"]), uid(r["action"]), uid(r["resource"])]))
PY
mapfile -t uids < "$work/args"
for p in "${ports[@]}"; do
    deadline=$((SECONDS + 30))
    until out=$("$bin" authorize --addr "127.0.0.1:$p" --principal "${uids[0]}" --action "${uids[1]}" \
            --resource "${uids[2]}" --entities "$work/entities.json" 2>&1); do
        [ $SECONDS -lt $deadline ] || { echo "cedar-pdp on $p did not answer ALLOW: $out" >&2; exit 1; }
        sleep 0.2
    done
    grep -q ALLOW <<<"$out" || { echo "expected ALLOW, got: $out" >&2; exit 1; }
done

targets=(cerbos authorize uncached cold health)
declare -A url body
url[cerbos]=http://127.0.0.1:3593/cerbos.svc.v1.CerbosService/CheckResources
body[cerbos]=$peers/cerbos/check_resources_request.bin
url[authorize]=http://127.0.0.1:$port/cedar_pdp.v1.Authorizer/Authorize
body[authorize]=$work/authorize.bin
url[uncached]=http://127.0.0.1:$((port + 1))/cedar_pdp.v1.Authorizer/Authorize
body[uncached]=$work/authorize.bin
url[cold]=http://127.0.0.1:$((port + 6))/cedar_pdp.v1.Authorizer/Authorize
body[cold]=$work/authorize.bin
url[health]=http://127.0.0.1:$port/grpc.health.v1.Health/Check
body[health]=$work/health.bin
if [ -n "${BASELINE:-}" ]; then
    targets+=(base-authorize base-uncached base-health)
    url[base-health]=http://127.0.0.1:$((port + 2))/grpc.health.v1.Health/Check
    body[base-health]=$work/health.bin
    url[base-authorize]=http://127.0.0.1:$((port + 2))/cedar_pdp.v1.Authorizer/Authorize
    body[base-authorize]=$work/authorize.bin
    url[base-uncached]=http://127.0.0.1:$((port + 3))/cedar_pdp.v1.Authorizer/Authorize
    body[base-uncached]=$work/authorize.bin
fi

echo "h2load ${opts[*]}, $rounds round(s), $(nproc) cores, $(date -u +%FT%TZ)"
for ((r = 0; r < rounds; r++)); do
    for ((i = 0; i < ${#targets[@]}; i++)); do
        t=${targets[$(((i + r) % ${#targets[@]}))]}
        "$peers/h2load-grpc.sh" "$t" "${url[$t]}" "${body[$t]}" "${opts[@]}" | tee -a "$work/lines"
    done
done

if [ "${CORPUS:-1}" != 0 ]; then
    # h2load's -c and -m, as the load client's connections and concurrency.
    conns=8 conc=16
    for ((i = 0; i < ${#opts[@]}; i++)); do
        case ${opts[$i]} in
            -c) conns=${opts[$((i + 1))]} ;;
            -m) conc=${opts[$((i + 1))]} ;;
        esac
    done
    python3 bench/gen-corpus.py "$work/corpus" > "$work/corpus.summary"
    lines=$(wc -l < "$work/corpus/corpus.jsonl")
    echo "corpus: $(cat "$work/corpus.summary")"
    cport=$((port + 4)) aport=$((port + 5))
    scrape() {
        python3 - "http://127.0.0.1:$aport/metrics" <<'PY'
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
n = {"hit": 0, "miss": 0}
for m in re.finditer(r'^cedar_pdp_decision_cache_lookups_total\{result="(hit|miss)"\} (\d+)', text, re.M):
    n[m.group(1)] = int(m.group(2))
print(n["hit"], n["miss"])
PY
    }
    load() { # label addr (--corpus FILE | --request FILE)
        local label=$1 addr=$2
        shift 2
        out=$("$bin" bench --addr "$addr" "$@" --requests "$lines" --connections "$conns" --concurrency "$conc")
        rps=$(sed -n 's/^requests\/s: //p' <<<"$out")
        errors=$(sed -n 's/^calls: [0-9]*, errors: \([0-9]*\).*/\1/p' <<<"$out")
        allowed=$(sed -n 's/^decisions: [0-9]*, allowed: \([0-9]*\).*/\1/p' <<<"$out")
        echo "$label req/s=$rps errors=$errors allowed=$allowed"
    }
    corpus_server() { # binary label: a fresh default server, loaded with the whole corpus once
        "$1" serve --policies "$work/corpus/policies" --listen "127.0.0.1:$cport" \
            --admin-listen "127.0.0.1:$aport" --authzen-listen "" --log-level warn 2>"$work/$2-$r.log" &
        cpid=$!
        pids+=("$cpid")
        deadline=$((SECONDS + 30))
        until scrape >/dev/null 2>&1; do
            [ $SECONDS -lt $deadline ] || { echo "corpus server did not start" >&2; exit 1; }
            sleep 0.2
        done
        load "$2" "127.0.0.1:$cport" --corpus "$work/corpus/corpus.jsonl" --seed "$((r + 1))" | tee -a "$work/corpus-lines"
        read -r hit miss < <(scrape)
        echo "$2-cache hit=$hit miss=$miss" | tee -a "$work/corpus-lines"
        kill "$cpid"
        wait "$cpid" 2>/dev/null || true
    }
    for ((r = 0; r < rounds; r++)); do
        single=(--request "$peers/cedar-equivalent/request.json")
        if ((r % 2)); then load client-uncached "127.0.0.1:$((port + 1))" "${single[@]}" | tee -a "$work/corpus-lines"; fi
        # With a baseline, both builds' corpus servers, in alternating order.
        if [ -n "${BASELINE:-}" ] && ((r % 2)); then corpus_server "$BASELINE" base-corpus; fi
        corpus_server "$bin" corpus
        if [ -n "${BASELINE:-}" ] && ! ((r % 2)); then corpus_server "$BASELINE" base-corpus; fi
        if ! ((r % 2)); then load client-uncached "127.0.0.1:$((port + 1))" "${single[@]}" | tee -a "$work/corpus-lines"; fi
    done
fi

python3 - "$work/lines" "$work/corpus-lines" <<'PY'
import os, re, statistics, sys
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
def ms(v):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", v)
    return float(m.group(1)) * unit[m.group(2)]
rows = {}
for line in open(sys.argv[1]):
    label, *fields = line.split()
    f = dict(x.split("=", 1) for x in fields)
    rows.setdefault(label, []).append((float(f["req/s"]), ms(f["mean"]), int(f["failed"])))
med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), sum(r[2] for r in v))
       for k, v in rows.items()}
print()
targets = [k for k in ("cerbos", "authorize", "uncached", "cold", "health", "base-authorize", "base-uncached", "base-health") if k in med]
for k in targets:
    rps, mean, failed = med[k]
    print(f"{k:14s} median req/s={rps:10.0f}  median mean latency={mean*1000:8.0f}us  failed={failed}")
c, h = med["cerbos"], med["health"]
print()
for k in [t for t in targets if t not in ("cerbos", "health", "base-health")]:
    a = med[k]
    print(f"{k:14s} throughput: / Cerbos = {a[0]/c[0]:.2f}x   / health ceiling = {a[0]/h[0]:.2f}"
          f"   mean latency: / health ceiling = {a[1]/h[1]:.2f}x   / Cerbos = {a[1]/c[1]:.2f}")
for k in ("authorize", "uncached", "health"):
    if "base-" + k in med:
        a, b = med[k], med["base-" + k]
        print(f"{k:14s} / base-{k}: throughput {a[0]/b[0]:.2f}x   mean latency {a[1]/b[1]:.2f}x")
if os.path.exists(sys.argv[2]):
    runs, hits = {}, []
    for line in open(sys.argv[2]):
        label, *fields = line.split()
        f = dict(x.split("=", 1) for x in fields)
        if label == "corpus-cache":
            hit, miss = int(f["hit"]), int(f["miss"])
            hits.append(hit / max(1, hit + miss))
        elif label == "base-corpus-cache":
            pass
        else:
            runs.setdefault(label, []).append((float(f["req/s"]), int(f["errors"])))
    corpus = statistics.median(r[0] for r in runs["corpus"])
    client = statistics.median(r[0] for r in runs["client-uncached"])
    errors = sum(r[1] for v in runs.values() for r in v)
    print()
    print(f"corpus         median req/s={corpus:10.0f}  decision-cache hit rate={statistics.median(hits):.1%}  failed={errors}")
    print(f"client-uncached median req/s={client:10.0f}  (the single request, uncached, from the same load client)")
    print(f"corpus         throughput: / Cerbos = {corpus/c[0]:.2f}x   / single request uncached, same client = {corpus/client:.2f}x")
    if "base-corpus" in runs:
        base = statistics.median(r[0] for r in runs["base-corpus"])
        print(f"base-corpus    median req/s={base:10.0f}  corpus / base-corpus: throughput {corpus/base:.2f}x")
PY
