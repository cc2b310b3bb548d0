#!/usr/bin/env bash
# Two cedar-pdp builds, A and B, on the Cerbos-equivalent request under the
# same h2load load, cached and uncached. Each trial starts fresh servers (in
# alternating order) and measures each once: a server process sometimes runs
# a steady 10-20% slower for its whole life (more context switches per
# request, whatever the binary), so reusing one process per build across
# rounds measures that process, not the build. Prints the medians over the
# trials and B/A ratios, with each server's CPU time and context switches
# per request (read from /proc).
#
# Usage: bench/compare-builds.sh A_BIN B_BIN [h2load options]   (default: -n 200000 -c 8 -m 16 -t 1)
#   TRIALS=6          fresh-process trials
#   PEERS=../shared/peers
#   PORT=50091        A's port; B uses PORT+1
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2; shift 2
peers=${PEERS:-../shared/peers}
trials=${TRIALS:-6}
port=${PORT:-50091}
opts=("$@")
[ ${#opts[@]} -gt 0 ] || opts=(-n 200000 -c 8 -m 16 -t 1)
command -v h2load >/dev/null || { echo "h2load missing: apt-get install -y nghttp2-client" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
"$a" bench --request "$peers/cedar-equivalent/request.json" --emit-h2load-body "$work/authorize.bin" >/dev/null
printf '[limits]\ndecision_cache_bytes = 0\n' > "$work/uncached.toml"
printf '' > "$work/cached.toml"

# ctxsw and CPU ticks of a process, summed over its threads.
ctxsw() { cat /proc/"$1"/task/*/status | awk '/voluntary_ctxt_switches/ {s += $2} END {print s}'; }
ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
n=$(sed -n 's/.*-n \([0-9]*\).*/\1/p' <<<" ${opts[*]} ")

for ((t = 0; t < trials; t++)); do
    for mode in cached uncached; do
        order=(A B); ((t % 2)) && order=(B A)
        declare -A pid
        for who in "${order[@]}"; do
            bin=$a p=$port
            [ "$who" = B ] && bin=$b p=$((port + 1))
            "$bin" serve --config "$work/$mode.toml" --policies "$peers/cedar-equivalent" \
                --listen "127.0.0.1:$p" --admin-listen "" --authzen-listen "" --log-level warn 2>>"$work/servers.log" &
            pid[$who]=$!
            pids+=($!)
        done
        for who in A B; do
            p=$port; [ "$who" = B ] && p=$((port + 1))
            deadline=$((SECONDS + 30))
            until "$a" authorize --addr "127.0.0.1:$p" --principal 'Workload::"x"' --action 'Action::"read"' \
                    --resource 'Document::"y"' >/dev/null 2>&1 || [ $? -eq 2 ]; do
                [ $SECONDS -lt $deadline ] || { echo "server $who did not answer" >&2; exit 1; }
                sleep 0.2
            done
        done
        for who in "${order[@]}"; do
            p=$port; [ "$who" = B ] && p=$((port + 1))
            s0=$(ctxsw "${pid[$who]}") c0=$(ticks "${pid[$who]}")
            line=$("$peers/h2load-grpc.sh" "$who-$mode" "http://127.0.0.1:$p/cedar_pdp.v1.Authorizer/Authorize" \
                "$work/authorize.bin" "${opts[@]}")
            s1=$(ctxsw "${pid[$who]}") c1=$(ticks "${pid[$who]}")
            echo "$line ctxsw=$((s1 - s0)) ticks=$((c1 - c0)) n=$n" | tee -a "$work/lines"
        done
        kill "${pid[A]}" "${pid[B]}"
        wait "${pid[A]}" "${pid[B]}" 2>/dev/null || true
    done
done

python3 - "$work/lines" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
tck = int(sys.argv[2])
rows = {}
for line in open(sys.argv[1]):
    label, *fields = line.split()
    f = dict(x.split("=", 1) for x in fields)
    n = int(f["n"])
    rows.setdefault(label, []).append((float(f["req/s"]), int(f["ctxsw"]) / n, int(f["ticks"]) * 1e6 / tck / n))
print()
med = {}
for k in sorted(rows):
    v = rows[k]
    med[k] = tuple(statistics.median(x[i] for x in v) for i in range(3))
    print(f"{k:12s} median req/s={med[k][0]:9.0f}  ctxsw/req={med[k][1]:.3f}  cpu us/req={med[k][2]:.2f}  ({len(v)} trials)")
print()
for mode in ("cached", "uncached"):
    a, b = med[f"A-{mode}"], med[f"B-{mode}"]
    print(f"{mode:9s} B/A: throughput {b[0]/a[0]:.2f}x   cpu per request {b[2]/a[2]:.2f}x")
PY
