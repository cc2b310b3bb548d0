#!/usr/bin/env bash
# Issue 15, target 5: memory and start-up with 10,000 policies and 100,000
# stored entities (bench/gen-scale.py). For each set, ROUNDS times: spawn
# `cedar-pdp serve`, time it from spawn until gRPC health (service "")
# answers SERVING, then read VmRSS, VmHWM and RssAnon from /proc/PID/status.
# Sets: a baseline (one policy, the six action entities), policies only
# (10k policies), entities only (one policy, 100k entities) and both.
# Cost per policy or entity = (median RSS of the set - median RSS of the
# baseline) / count, compared with the on-disk bytes per policy or entity.
#
# Usage: BIN=path/to/cedar-pdp ROUNDS=3 bench/memory-startup.sh
#        (POLICIES=10000 ENTITIES=100000 PORT=50081 DEADLINE=60)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
policies=${POLICIES:-10000}
entities=${ENTITIES:-100000}
port=${PORT:-50081}
deadline_s=${DEADLINE:-60}
if [ -z "${BIN:-}" ]; then
    cargo build --release --locked --quiet
    BIN=target/release/cedar-pdp
fi
work=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A gRPC-framed HealthCheckRequest{service: ""}: flag 0, length 0.
printf '\0\0\0\0\0' >"$work/health.bin"
serving() {
    # SERVING is HealthCheckResponse{status: 1}: the frame 00 00000002 08 01.
    curl -s --max-time 1 --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary @"$work/health.bin" "http://127.0.0.1:$port/grpc.health.v1.Health/Check" 2>/dev/null \
        | od -An -tx1 | tr -d ' \n' | grep -q '00000000020801'
}

gen() { python3 bench/gen-scale.py "$work/$1" --policies "$2" --entities "$3" >"$work/$1.summary"; }
gen baseline 1 0
gen policies "$policies" 0
gen entities 1 "$entities"
gen both "$policies" "$entities"

echo -e "set\tround\tstart_ms\tvmrss_kb\tvmhwm_kb\trssanon_kb" >"$work/rounds.tsv"
for r in $(seq "$rounds"); do
    for set in baseline policies entities both; do
        t0=$EPOCHREALTIME
        "$BIN" serve --policies "$work/$set" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((port + 1))" \
            --authzen-listen "" --log-level warn 2>"$work/$set.log" &
        pid=$!
        limit=$((SECONDS + deadline_s))
        until serving; do
            kill -0 "$pid" 2>/dev/null || { echo "server for $set exited" >&2; cat "$work/$set.log" >&2; exit 1; }
            [ $SECONDS -lt $limit ] || { echo "server for $set not SERVING after ${deadline_s}s" >&2; exit 1; }
            sleep 0.01
        done
        t1=$EPOCHREALTIME
        status=$(cat "/proc/$pid/status")
        kb() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" <<<"$status"; }
        ms=$(python3 -c "print(round(($t1 - $t0) * 1000, 1))")
        echo -e "$set\t$r\t$ms\t$(kb VmRSS)\t$(kb VmHWM)\t$(kb RssAnon)" | tee -a "$work/rounds.tsv"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        pid=
    done
done

python3 - "$work" <<'PY'
import csv, json, os, statistics, sys
work = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(work, "rounds.tsv")), delimiter="\t"))
summary = {s: json.load(open(os.path.join(work, f"{s}.summary"))) for s in ("baseline", "policies", "entities", "both")}
med = {}
for s in summary:
    got = [r for r in rows if r["set"] == s]
    med[s] = {k: statistics.median(float(r[k]) for r in got) for k in ("start_ms", "vmrss_kb", "vmhwm_kb", "rssanon_kb")}
print()
print(f"medians of {len(rows) // 4} rounds")
print(f"{'set':<9} {'policies':>8} {'entities':>8} {'disk MB':>8} {'start ms':>9} {'VmRSS MB':>9} {'VmHWM MB':>9} {'RssAnon MB':>10}")
for s, m in med.items():
    d = summary[s]
    disk = (d["policy_bytes"] + d["entity_bytes"]) / 1e6
    print(f"{s:<9} {d['policies']:>8} {d['entities']:>8} {disk:>8.2f} {m['start_ms']:>9.1f} "
          f"{m['vmrss_kb'] / 1024:>9.1f} {m['vmhwm_kb'] / 1024:>9.1f} {m['rssanon_kb'] / 1024:>10.1f}")
print()
b, bs = med["baseline"], summary["baseline"]
def per(s, what):
    d = summary[s]
    if what == "policy":
        n, disk = d["policies"] - bs["policies"], d["policy_bytes"] - bs["policy_bytes"]
    elif what == "entity":
        n, disk = d["entities"] - bs["entities"], d["entity_bytes"] - bs["entity_bytes"]
    else:
        n = 1
        disk = d["policy_bytes"] + d["entity_bytes"] - bs["policy_bytes"] - bs["entity_bytes"]
    for k, label in (("vmrss_kb", "VmRSS"), ("vmhwm_kb", "VmHWM")):
        delta = (med[s][k] - b[k]) * 1024
        print(f"  {s:<9} {label:<6} per {what:<6}: {delta / n:>10.0f} B in memory, {disk / n:>8.0f} B on disk, "
              f"ratio {delta / disk:.2f}x (target <= 2x)")
print("cost over the baseline:")
per("policies", "policy")
per("entities", "entity")
per("both", "set")
print(f"start-up to SERVING, median, full set: {med['both']['start_ms']:.0f} ms (target <= 1000 ms)")
PY
