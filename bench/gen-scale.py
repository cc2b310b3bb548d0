#!/usr/bin/env python3
"""Writes a large multi-tenant policy directory for memory, start-up and
reload measurements (issue 15, target 5).

The shape is tests/tenants/mod.rs `scaling`, scaled up: each tenant has the
same five policies over its own resources (readers, owners, admin, frozen,
public), and its own entities: the tenant, nested groups, folders, users in
groups, and documents in folders that name an owner. No schema, as in the
tenant benches: the action hierarchy comes from the entities file. Every
entity a stored entity names is stored too (no dangling uids).

Usage: bench/gen-scale.py OUT_DIR [--policies 10000] [--entities 100000]
           [--tenants 2000] [--seed 1]
Writes OUT_DIR/policies.cedar and OUT_DIR/entities.entities.json (the six
action entities plus --entities others), each by an atomic rename, and an
allowed request (`User::"t0-u0"` reads `Doc::"t0-d0"`) to OUT_DIR.request.json,
beside the directory so the server does not read it. Prints a JSON summary
with the byte sizes on disk.
"""
import argparse
import json
import os
import random
import sys

POLICY_KINDS = 5  # policies per tenant, as SCALING_POLICIES_PER_TENANT
DEPARTMENTS = ["eng", "sales", "ops", "finance", "legal", "support"]
TAGS = ["draft", "final", "internal", "public", "archived", "q1", "q2", "q3", "q4"]


def policy(kind, tn):
    """The `kind`th policy of tenant `tn`, as in tests/tenants/mod.rs."""
    return [
        f'@id("{tn}-readers")\n'
        f'permit(principal in Tenant::"{tn}", action in Action::"readers", resource in Tenant::"{tn}")\n'
        f'when {{ resource.level <= principal.level }};\n',
        f'@id("{tn}-owners")\n'
        f'permit(principal is User in Tenant::"{tn}", action in [Action::"write", Action::"delete"], resource is Doc in Tenant::"{tn}")\n'
        f'when {{ resource.owner == principal }};\n',
        f'@id("{tn}-admin")\n'
        f'permit(principal == User::"{tn}-u0", action, resource in Tenant::"{tn}");\n',
        f'@id("{tn}-frozen")\n'
        f'forbid(principal, action in Action::"writers", resource == Doc::"{tn}-d0")\n'
        f'when {{ context has frozen && context.frozen }};\n',
        f'@id("{tn}-public")\n'
        f'permit(principal, action == Action::"read", resource == Doc::"{tn}-public");\n',
    ][kind]


def uid(t, i):
    return {"type": t, "id": i}


def action_entities():
    def action(i, parents):
        return {"uid": uid("Action", i), "attrs": {}, "parents": [uid("Action", p) for p in parents]}
    return [action("readers", []), action("writers", []), action("read", ["readers"]),
            action("list", ["readers"]), action("write", ["writers"]), action("delete", ["writers"])]


def tenant_entities(rng, tn, quota):
    """`quota` entities of tenant `tn`: the tenant, 2 nested groups, 3
    folders, then users and documents, one user for every two documents.
    The first user (`-u0`) and document (`-d0`) always exist when the quota
    allows, so the request in the summary is allowed."""
    out = []
    if quota <= 0:
        return out
    out.append({"uid": uid("Tenant", tn), "attrs": {"name": f"Tenant {tn}", "plan": rng.choice(["free", "pro", "enterprise"])}, "parents": []})
    groups = []
    for g in range(2):
        if len(out) >= quota:
            return out
        parent = uid("Tenant", tn) if g == 0 else uid("Group", f"{tn}-g{g - 1}")
        groups.append(f"{tn}-g{g}")
        out.append({"uid": uid("Group", f"{tn}-g{g}"), "attrs": {"name": f"group {g}"}, "parents": [parent]})
    folders = []
    for f in range(3):
        if len(out) >= quota:
            return out
        folders.append(f"{tn}-f{f}")
        out.append({"uid": uid("Folder", f"{tn}-f{f}"), "attrs": {"name": f"folder {f}"}, "parents": [uid("Tenant", tn)]})
    rest = quota - len(out)
    users = max(1, rest // 3)
    docs = rest - users
    for u in range(users):
        parents = [uid("Group", rng.choice(groups))] if rng.random() < 0.7 else [uid("Tenant", tn)]
        out.append({
            "uid": uid("User", f"{tn}-u{u}"),
            "attrs": {
                "level": 3 if u == 0 else rng.randrange(5),
                "email": f"user{u}@{tn}.example.com",
                "department": rng.choice(DEPARTMENTS),
                "roles": sorted(rng.sample(["reader", "writer", "admin", "auditor"], rng.randrange(1, 3))),
            },
            "parents": parents,
        })
    for d in range(docs):
        out.append({
            "uid": uid("Doc", f"{tn}-d{d}"),
            "attrs": {
                "level": 0 if d == 0 else rng.randrange(5),
                "owner": {"__entity": uid("User", f"{tn}-u{rng.randrange(users)}")},
                "tags": sorted(rng.sample(TAGS, rng.randrange(0, 4))),
                "created": 1700000000 + rng.randrange(30_000_000),
            },
            "parents": [uid("Folder", rng.choice(folders))],
        })
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--policies", type=int, default=10000)
    ap.add_argument("--entities", type=int, default=100000, help="stored entities besides the six actions")
    ap.add_argument("--tenants", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--revision", type=int, default=0,
                    help="a comment naming this revision, so a rewrite is a new set")
    a = ap.parse_args()
    if a.tenants < 1 or a.policies < 1:
        ap.error("--tenants and --policies must be positive")
    rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)

    # Policies: five per tenant, tenant by tenant; more than five per tenant
    # wrap to further tenants (t2000, ...), so ids stay distinct.
    text = [f"// generated by bench/gen-scale.py --seed {a.seed} revision {a.revision}\n"]
    for k in range(a.policies):
        text.append(policy(k % POLICY_KINDS, f"t{k // POLICY_KINDS}"))
    policy_text = "".join(text)

    entities = action_entities()
    base, extra = divmod(a.entities, a.tenants)
    for t in range(a.tenants):
        entities.extend(tenant_entities(rng, f"t{t}", base + (1 if t < extra else 0)))
    entity_text = json.dumps(entities, separators=(",", ":"))

    # Written beside and renamed over, so a rewrite is an atomic swap.
    for name, body in (("policies.cedar", policy_text), ("entities.entities.json", entity_text)):
        tmp = os.path.join(a.out, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(body)
        os.replace(tmp, os.path.join(a.out, name))

    request = {"principal": uid("User", "t0-u0"), "action": uid("Action", "read"),
               "resource": uid("Doc", "t0-d0"), "context": {}, "entities": []}
    with open(a.out.rstrip("/") + ".request.json", "w") as f:
        json.dump(request, f)
    json.dump({
        "policies": a.policies,
        "entities": len(entities) - 6,
        "action_entities": 6,
        "tenants": a.tenants,
        "policy_bytes": len(policy_text.encode()),
        "entity_bytes": len(entity_text.encode()),
        "seed": a.seed,
    }, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
