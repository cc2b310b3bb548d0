#!/usr/bin/env bash
# AuthZEN `/access/v1/evaluation` vs gRPC `Authorize` on the same server and
# the same request (the Cerbos-equivalent one of ../shared/peers), decision
# cache off so every request is evaluated, in one run; plus the gRPC health
# check (the ceiling). Then a resource search over 10,000 stored resources
# of one type, against single evaluations on that same store.
# Prints one line per target (median of ROUNDS rounds) and the ratios.
#
# Usage: bench/compare-authzen.sh [h2load options]   (default: -n 200000 -c 8 -m 16 -t 1)
#   ROUNDS=3          rounds; the targets' order rotates each round
#   PEERS=../shared/peers   the Cerbos-equivalent Cedar policy and request
#   PORT=50071        gRPC port; PORT+1 AuthZEN; PORT+2 and PORT+3 the search store's
#   BIN=FILE          the cedar-pdp binary (default: build target/release/cedar-pdp)
#   SEARCH_N=10000    stored resources for the search run; SEARCHES=30 searches per round
# Needs h2load (apt-get install -y nghttp2-client) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${PEERS:-../shared/peers}
rounds=${ROUNDS:-3}
port=${PORT:-50071}
search_n=${SEARCH_N:-10000}
searches=${SEARCHES:-30}
opts=("$@")
[ ${#opts[@]} -gt 0 ] || opts=(-n 200000 -c 8 -m 16 -t 1)
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 2; }

if [ -z "${BIN:-}" ]; then cargo build --release --locked --quiet; fi
bin=${BIN:-target/release/cedar-pdp}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

printf '[limits]\ndecision_cache_bytes = 0\n' > "$work/uncached.toml"
"$bin" serve --config "$work/uncached.toml" --policies "$peers/cedar-equivalent" \
    --listen "127.0.0.1:$port" --authzen-listen "127.0.0.1:$((port + 1))" --admin-listen "" \
    --log-level warn 2>"$work/server.log" &
pids+=($!)

# The search store: the same policy, 10,000 documents, one in ten in the
# caller's namespace. The caller arrives with its attributes, as above.
mkdir "$work/store"
cp "$peers/cedar-equivalent/document.cedar" "$peers/cedar-equivalent/schema.cedarschema" "$work/store/"
python3 - "$work/store/documents.entities.json" "$search_n" <<'PY'
import json, sys
n = int(sys.argv[2])
docs = [{"uid": {"type": "Document", "id": "doc-%05d" % i},
         "attrs": {"namespace": "payments" if i % 10 == 0 else "ns-%d" % (i % 97),
                   "owner": {"__entity": {"type": "Workload", "id": "someone"}}},
         "parents": []} for i in range(n)]
json.dump(docs, open(sys.argv[1], "w"))
PY
"$bin" serve --config "$work/uncached.toml" --policies "$work/store" \
    --listen "127.0.0.1:$((port + 2))" --authzen-listen "127.0.0.1:$((port + 3))" --admin-listen "" \
    --log-level warn 2>"$work/store.log" &
pids+=($!)

# The bodies: a gRPC-framed AuthorizeRequest, the same request as an AuthZEN
# evaluation, a search for every document the caller may read, and one
# evaluation of a stored document.
"$bin" bench --request "$peers/cedar-equivalent/request.json" --emit-h2load-body "$work/authorize.bin" >/dev/null
printf '\0\0\0\0\0' > "$work/health.bin"
python3 - "$peers/cedar-equivalent/request.json" "$work" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
attrs = {(e["uid"]["type"], e["uid"]["id"]): e["attrs"] for e in r["entities"]}
def part(u):
    return {"type": u["type"], "id": u["id"], "properties": attrs[(u["type"], u["id"])]}
subject = part(r["principal"])
body = {"subject": subject, "action": {"name": r["action"]["id"]}, "resource": part(r["resource"])}
json.dump(body, open(sys.argv[2] + "/evaluation.json", "w"))
json.dump({"subject": subject, "action": {"name": "read"}, "resource": {"type": "Document"}},
          open(sys.argv[2] + "/search.json", "w"))
json.dump({"subject": subject, "action": {"name": "read"}, "resource": {"type": "Document", "id": "doc-00010"}},
          open(sys.argv[2] + "/stored.json", "w"))
PY

# Ready, and the answers are the expected ones (h2load sees HTTP status only).
python3 - "$work" "$port" "$search_n" <<'PY'
import json, sys, time, urllib.request
work, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def post(p, path, name):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (p, path), open(work + "/" + name, "rb").read(),
                                 {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))
deadline = time.time() + 60
while True:
    try:
        a = post(port + 1, "/access/v1/evaluation", "evaluation.json")
        s = post(port + 3, "/access/v1/search/resource", "search.json")
        e = post(port + 3, "/access/v1/evaluation", "stored.json")
        break
    except Exception as ex:
        if time.time() > deadline:
            sys.exit("servers did not answer: %s" % ex)
        time.sleep(0.2)
assert a == {"decision": True}, a
assert e == {"decision": True}, e
want = (n + 9) // 10
assert s["page"]["total"] == want and len(s["results"]) == want, s["page"]
PY

targets=(grpc authzen-h2c authzen-h1 health)
echo "h2load ${opts[*]}, $rounds round(s), $(nproc) cores, $(date -u +%FT%TZ)"
for ((r = 0; r < rounds; r++)); do
    for ((i = 0; i < ${#targets[@]}; i++)); do
        t=${targets[$(((i + r) % ${#targets[@]}))]}
        case $t in
            grpc) "$peers/h2load-grpc.sh" grpc "http://127.0.0.1:$port/cedar_pdp.v1.Authorizer/Authorize" \
                    "$work/authorize.bin" "${opts[@]}" ;;
            health) "$peers/h2load-grpc.sh" health "http://127.0.0.1:$port/grpc.health.v1.Health/Check" \
                    "$work/health.bin" "${opts[@]}" ;;
            authzen-h2c|authzen-h1)
                extra=(); [ "$t" = authzen-h1 ] && extra=(--h1)
                out=$(h2load "${opts[@]}" "${extra[@]}" -H 'content-type: application/json' \
                    -d "$work/evaluation.json" "http://127.0.0.1:$((port + 1))/access/v1/evaluation" 2>&1)
                rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
                read -r ok failed < <(sed -n 's/^requests: .* \([0-9]*\) succeeded, \([0-9]*\) failed.*/\1 \2/p' <<<"$out")
                read -r _ _ _ min max mean sd _ < <(grep '^time for request:' <<<"$out")
                echo "$t req/s=$rps ok=$ok failed=$failed mean=$mean sd=$sd max=$max" ;;
        esac | tee -a "$work/lines"
    done
    # One search at a time, and one stored evaluation at a time, on the 10,000-document store.
    for t in search single; do
        body=$work/search.json path=/access/v1/search/resource n=$searches
        [ $t = single ] && body=$work/stored.json path=/access/v1/evaluation n=$((searches * 100))
        out=$(h2load -n "$n" -c 1 -m 1 -t 1 -H 'content-type: application/json' -d "$body" \
            "http://127.0.0.1:$((port + 3))$path" 2>&1)
        rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
        read -r ok failed < <(sed -n 's/^requests: .* \([0-9]*\) succeeded, \([0-9]*\) failed.*/\1 \2/p' <<<"$out")
        read -r _ _ _ min max mean sd _ < <(grep '^time for request:' <<<"$out")
        echo "$t req/s=$rps ok=$ok failed=$failed mean=$mean sd=$sd max=$max" | tee -a "$work/lines"
    done
done

python3 - "$work/lines" "$search_n" <<'PY'
import re, statistics, sys
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
for k in ("grpc", "authzen-h2c", "authzen-h1", "health", "search", "single"):
    rps, mean, failed = med[k]
    print(f"{k:12s} median req/s={rps:10.0f}  median mean latency={mean*1000:10.0f}us  failed={failed}")
g, h = med["grpc"], med["health"]
print()
for k in ("authzen-h2c", "authzen-h1"):
    a = med[k]
    print(f"{k:12s} throughput / grpc = {a[0]/g[0]:.2f}x   / health ceiling = {a[0]/h[0]:.2f}"
          f"   mean latency / grpc = {a[1]/g[1]:.2f}x")
n = int(sys.argv[2])
s, one = med["search"], med["single"]
print(f"search over {n} stored resources: median {s[1]:.1f} ms per search = {s[1]*1000/n:.2f} us per candidate"
      f" = {s[1]/n/one[1]:.2f}x one stored /evaluation's mean latency ({one[1]*1000:.0f} us)")
PY
