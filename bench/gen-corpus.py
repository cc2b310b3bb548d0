#!/usr/bin/env python3
"""Writes a realistic corpus for `cedar-pdp bench --corpus`, and the policy
directory it is judged by.

Real traffic repeats parts of requests, rarely whole ones: a few callers make
most calls (Zipf over principals), many resources are touched a few times
(a flatter Zipf over resources), and some entities are stored on disk while
others arrive in the request. The policy is the Cerbos-equivalent one
(../shared/peers/cedar-equivalent), so corpus throughput compares with
Cerbos's single-request figure on the same rules.

Usage: bench/gen-corpus.py OUT_DIR [--principals 1000] [--resources 10000]
           [--requests 100000] [--principal-skew 1.1] [--resource-skew 0.8]
           [--stored-principals 0.2] [--stored-resources 0.5] [--seed 1]
Writes OUT_DIR/policies/ (schema, policy, stored entities) and
OUT_DIR/corpus.jsonl (one request per line), and prints a summary.
"""
import argparse
import itertools
import json
import os
import random
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "..", "..", "shared", "peers", "cedar-equivalent")
NAMESPACES = [f"ns-{i:02d}" for i in range(20)]
ACTIONS = [("read", 0.80), ("write", 0.15), ("delete", 0.05)]


def zipf_cumulative(n, s):
    return list(itertools.accumulate(1.0 / (k ** s) for k in range(1, n + 1)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--principals", type=int, default=1000)
    ap.add_argument("--resources", type=int, default=10000)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--principal-skew", type=float, default=1.1)
    ap.add_argument("--resource-skew", type=float, default=0.8)
    ap.add_argument("--stored-principals", type=float, default=0.2)
    ap.add_argument("--stored-resources", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--peer", default=PEER, help="the Cerbos-equivalent policy directory")
    a = ap.parse_args()
    rng = random.Random(a.seed)

    def principal(i):
        ns = NAMESPACES[i % len(NAMESPACES)]
        roll = rng.random()
        roles = ["admin"] if roll < 0.01 else ["writer"] if roll < 0.21 else ["reader"] if roll < 0.91 else []
        return {"uid": {"type": "Workload", "id": f"spiffe://example.org/ns/{ns}/sa/svc-{i}"},
                "attrs": {"roles": roles, "namespace": ns}, "parents": []}

    principals = [principal(i) for i in range(a.principals)]

    # Which entities live on disk: a fixed share, spread over the popular and the rare.
    stored_p = set(rng.sample(range(a.principals), int(a.principals * a.stored_principals)))
    stored_r = set(rng.sample(range(a.resources), int(a.resources * a.stored_resources)))
    stored_owners = sorted(stored_p) or list(range(a.principals))

    def resource(j):
        # A stored document names only stored owners: an entity the store
        # names without defining cannot be sent in a request.
        pick = rng.choice(stored_owners) if j in stored_r else rng.randrange(a.principals)
        owner = principals[pick]["uid"]
        # Most documents live in their owner's namespace.
        ns = owner["id"].split("/")[4] if rng.random() < 0.7 else rng.choice(NAMESPACES)
        return {"uid": {"type": "Document", "id": f"doc-{j}"},
                "attrs": {"namespace": ns, "owner": {"__entity": owner}}, "parents": []}

    resources = [resource(j) for j in range(a.resources)]

    policies = os.path.join(a.out, "policies")
    os.makedirs(policies, exist_ok=True)
    for name in ("document.cedar", "schema.cedarschema"):
        shutil.copyfile(os.path.join(a.peer, name), os.path.join(policies, name))
    stored = [principals[i] for i in sorted(stored_p)] + [resources[j] for j in sorted(stored_r)]
    with open(os.path.join(policies, "stored.entities.json"), "w") as f:
        json.dump(stored, f)

    # Popularity is a random permutation of rank, so hot principals are not
    # all in one namespace and stored entities are not all the hot ones.
    p_rank = list(range(a.principals))
    r_rank = list(range(a.resources))
    rng.shuffle(p_rank)
    rng.shuffle(r_rank)
    p_cum = zipf_cumulative(a.principals, a.principal_skew)
    r_cum = zipf_cumulative(a.resources, a.resource_skew)
    actions, weights = zip(*ACTIONS)
    seen = set()
    inline_counts = []
    with open(os.path.join(a.out, "corpus.jsonl"), "w") as f:
        for _ in range(a.requests):
            i = p_rank[rng.choices(range(a.principals), cum_weights=p_cum)[0]]
            j = r_rank[rng.choices(range(a.resources), cum_weights=r_cum)[0]]
            act = rng.choices(actions, weights=weights)[0]
            entities = []
            if i not in stored_p:
                entities.append(principals[i])
            if j not in stored_r:
                entities.append(resources[j])
            inline_counts.append(len(entities))
            seen.add((i, act, j))
            f.write(json.dumps({
                "principal": principals[i]["uid"],
                "action": {"type": "Action", "id": act},
                "resource": resources[j]["uid"],
                "entities": entities,
            }, separators=(",", ":")) + "\n")
    summary = {
        "requests": a.requests,
        "distinct_requests": len(seen),
        "principals": a.principals,
        "resources": a.resources,
        "stored_entities": len(stored),
        "mean_inline_entities": round(sum(inline_counts) / len(inline_counts), 3),
        "seed": a.seed,
    }
    json.dump(summary, sys.stdout)
    print()
    if len(seen) < 10000 and a.requests >= 10000:
        print("fewer than 10,000 distinct requests: raise --requests or lower the skews", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
