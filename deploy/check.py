#!/usr/bin/env python3
"""Offline checks of the deployment files under deploy/.

    python3 deploy/check.py [--root DEPLOY_DIR] [--crate CRATE_DIR]
    python3 deploy/check.py --sync-policies   # rewrite the policies ConfigMap

Needs the packages pinned in deploy/requirements-check.txt (run it from a
venv that has them). Checks, all without network access:

1. every manifest under kubernetes/ and istio/: core kinds against the
   Kubernetes OpenAPI schemas shipped by `kubernetes-validate` (strict: no
   unknown fields), for the oldest supported release (native sidecars need
   1.29) and the newest; Istio CRDs and kustomizations by hand; then the
   properties the manifests promise (non-root, read-only root, no
   capabilities, probes, resources, mounted volumes exist, the config TOML
   uses real keys of src/config.rs, the policies ConfigMap equals policies/);
2. yamllint with deploy/.yamllint over every YAML file;
3. the Grafana dashboard: every query names metrics that src/metrics.rs
   registers;
4. envoy/envoy.yaml: the ext_authz filter, fail-closed, its timeout and
   cluster, and path normalisation on the HTTP connection manager;
5. observability/alerts.yaml: every rule has expr, for, labels.severity and
   names registered metrics;
6. the Dockerfile: non-root numeric USER, HEALTHCHECK, copied paths exist;
7. the policy repository's workflow runs validate, fmt --check and test.

Prints every problem as `path: message` and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterator

try:
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(
        f"check.py: missing Python package ({e.name}); install "
        "deploy/requirements-check.txt into a venv and run check.py with it"
    )

# Kubernetes releases manifests are validated against: the oldest with
# native sidecars on by default, and the newest the schemas know.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

# Config keys that are being added on other branches; accepted until
# src/config.rs defines the section, then checked against it like any other.
PENDING_CONFIG_KEYS = {"unix_socket": {"mode": str}}

# The example policy set, as shipped in the policies ConfigMap.
POLICY_SUFFIXES = (".cedar", ".cedarschema", ".cedarschema.json", ".entities.json",
                   ".links.json", ".test.yaml", ".test.yml", ".test.json", ".fixture.json")
POLICIES_CONFIGMAP = Path("kubernetes/policies/policies.yaml")

EXT_AUTHZ_NAME = "envoy.filters.http.ext_authz"
EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
HCM_NAME = "envoy.filters.network.http_connection_manager"
# The path Envoy forwards must be the one cedar-pdp decided on (docs/mesh.md).
HCM_PATH_NORMALISATION = {
    "normalize_path": True,
    "merge_slashes": True,
    "path_with_escaped_slashes_action": "REJECT_REQUEST",
}
ROUTER_NAME = "envoy.filters.http.router"

SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^(\d+(\.\d+)?(ms|s|m|h|d|w|y))+$")


class Problems:
    """Every problem found, as `path: message`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.items: list[str] = []

    def add(self, path: Path | str, message: str) -> None:
        if isinstance(path, Path):
            try:
                path = path.relative_to(self.root.parent)
            except ValueError:
                pass
        self.items.append(f"{path}: {message}")


# ---------------------------------------------------------------------------
# What the crate defines: metric names and config keys.


# Request-path metrics, and those read at scrape time from their owners.
METRIC_SOURCES = ("src/metrics.rs", "src/state_metrics.rs")


def registered_metrics(metrics_rs: Path) -> dict[str, str]:
    """Metric family name -> type (counter, gauge, histogram), read from
    src/metrics.rs: each `"cedar_pdp_..."` literal, typed by the statement
    that registers it."""
    src = metrics_rs.read_text()
    families: dict[str, str] = {}
    for m in re.finditer(r'"(cedar_pdp_[a-z0-9_]+)"', src):
        name = m.group(1)
        end = src.find(";", m.end())
        stmt = src[m.start() : end if end != -1 else len(src)]
        kind = _metric_type(stmt)
        if kind is None:
            # `decisions.clone()` / `counter.metric_type()`, or the binding
            # itself as the last argument: type of the binding.
            idents = re.findall(r"\b([a-z_][a-z0-9_]*)\.(?:clone|metric_type)\(\)", stmt)
            idents += re.findall(r",\s*([a-z_][a-z0-9_]*)\s*,?\s*\)\s*$", stmt)
            for ident in idents:
                binding = re.search(rf"let\s+(?:mut\s+)?{ident}\s*=\s*([^;]*);", src)
                if binding:
                    kind = _metric_type(binding.group(1))
                    if kind:
                        break
        if kind is None:
            raise SystemExit(
                f"check.py: cannot tell the type of metric `{name}` in {metrics_rs}; "
                "teach _metric_type() about how it is registered"
            )
        families[name] = kind
    if not families:
        raise SystemExit(f"check.py: no `cedar_pdp_*` metric found in {metrics_rs}")
    return families


def _metric_type(text: str) -> str | None:
    if "Histogram" in text:
        return "histogram"
    if re.search(r"MetricType::Counter|\bCounter\b|ConstCounter", text):
        return "counter"
    if re.search(r"MetricType::Gauge|\bGauge\b|ConstGauge", text):
        return "gauge"
    return None


def exposed_series(families: dict[str, str]) -> set[str]:
    """Series names a Prometheus scrape of these families holds."""
    out: set[str] = set()
    for name, kind in families.items():
        if kind == "counter":
            out.add(f"{name}_total")
        elif kind == "histogram":
            out.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
        else:
            out.add(name)
    return out


def config_schema(config_rs: Path) -> dict[str, Any]:
    """The TOML shape of `Config` in src/config.rs: key -> Rust type, with
    nested dicts for sections and sets of allowed strings for enums."""
    src = config_rs.read_text()
    structs: dict[str, list[tuple[str, str]]] = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", src, re.S):
        fields = []
        attrs = ""
        for line in m.group(2).splitlines():
            line = line.strip()
            if line.startswith("#["):
                attrs += line
                continue
            field = re.match(r"pub (\w+): ([^,]+),", line)
            if field:
                ty = field.group(2)
                # A custom deserializer (other than humantime's, for
                # Duration) decides what the TOML value looks like.
                if "deserialize_with" in attrs or ("with =" in attrs and "humantime" not in attrs):
                    ty = "custom"
                fields.append((field.group(1), ty))
            if not line.startswith("///"):
                attrs = ""
        structs[m.group(1)] = fields
    enums: dict[str, set[str]] = {}
    for m in re.finditer(r"pub enum (\w+) \{(.*?)\n\}", src, re.S):
        variants = re.findall(r"^\s*([A-Z]\w*),", m.group(2), re.M)
        enums[m.group(1)] = {v.lower() for v in variants}
    if "Config" not in structs:
        raise SystemExit(f"check.py: no `pub struct Config` in {config_rs}")

    def shape(struct: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field, ty in structs[struct]:
            ty = ty.strip()
            if ty in structs:
                out[field] = shape(ty)
            elif ty in enums:
                out[field] = enums[ty]
            else:
                out[field] = ty
        return out

    return shape("Config")


def check_config_toml(text: str, schema: dict[str, Any], where: Path, problems: Problems) -> None:
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.add(where, f"config.toml does not parse: {e}")
        return
    schema = dict(schema)
    for section, keys in PENDING_CONFIG_KEYS.items():
        schema.setdefault(section, dict(keys))
    _check_toml_table(config, schema, "", where, problems)


def _check_toml_table(
    table: dict[str, Any], schema: dict[str, Any], prefix: str, where: Path, problems: Problems
) -> None:
    for key, value in table.items():
        path = f"{prefix}{key}"
        if key not in schema:
            problems.add(where, f"config.toml: unknown key `{path}` (not in src/config.rs)")
            continue
        expected = schema[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                problems.add(where, f"config.toml: `{path}` must be a table")
            else:
                _check_toml_table(value, expected, f"{path}.", where, problems)
        elif isinstance(expected, set):
            if value not in expected:
                problems.add(
                    where, f"config.toml: `{path}` = {value!r} is not one of {sorted(expected)}"
                )
        elif isinstance(expected, type):
            if not isinstance(value, expected):
                problems.add(where, f"config.toml: `{path}` must be a {expected.__name__}")
        else:
            ok = {
                "bool": lambda v: isinstance(v, bool),
                "usize": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                "u64": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                "u32": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                "String": lambda v: isinstance(v, str),
                "PathBuf": lambda v: isinstance(v, str),
                "Duration": lambda v: isinstance(v, str) and bool(DURATION.match(v)),
            }.get(expected)
            if expected.startswith("Vec<"):
                ok = lambda v: isinstance(v, list)  # noqa: E731
            if ok is not None and not ok(value):
                problems.add(where, f"config.toml: `{path}` = {value!r} is not a valid {expected}")


# ---------------------------------------------------------------------------
# 1. Kubernetes and Istio manifests.


def yaml_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_documents(path: Path, problems: Problems) -> list[dict[str, Any]]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problems.add(path, f"not valid YAML: {e}")
        return []
    out = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            problems.add(path, f"document {i} is not a mapping")
        else:
            out.append(doc)
    return out


def check_manifests(root: Path, crate: Path, problems: Problems) -> None:
    files = yaml_files(root / "kubernetes") + yaml_files(root / "istio")
    if not files:
        problems.add(root, "no manifests under kubernetes/ or istio/")
        return
    schema = config_schema(crate / "src" / "config.rs")
    configmaps: dict[str, dict[str, Any]] = {}
    providers: dict[str, dict[str, Any]] = {}
    service_entries: list[dict[str, Any]] = []
    workloads: list[tuple[Path, dict[str, Any]]] = []
    custom_policies: list[tuple[Path, dict[str, Any]]] = []
    for path in files:
        for doc in load_documents(path, problems):
            kind, api = doc.get("kind"), doc.get("apiVersion")
            if not isinstance(kind, str) or not isinstance(api, str):
                problems.add(path, "every document needs a string `apiVersion` and `kind`")
                continue
            group = api.split("/")[0] if "/" in api else ""
            if kind == "Kustomization":
                check_kustomization(path, doc, problems)
                continue
            name = (doc.get("metadata") or {}).get("name")
            if not isinstance(name, str) or not name:
                problems.add(path, f"{kind}: metadata.name is required")
                continue
            if group.endswith("istio.io"):
                check_istio(path, doc, problems, providers, service_entries, custom_policies)
                continue
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = "/".join(str(p) for p in e.absolute_path) or "(top)"
                    problems.add(
                        path,
                        f"{kind}/{name}: invalid for Kubernetes {version} at {where}: "
                        f"{e.message}",
                    )
                    break
                except kubernetes_validate.SchemaNotFoundError:
                    problems.add(path, f"{kind}/{name}: {api} {kind} is not a Kubernetes kind")
                    break
            if kind == "ConfigMap":
                configmaps[name] = doc
            if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                workloads.append((path, doc))

    cm_paths = {}
    for path in files:
        for doc in load_documents(path, Problems(root)):
            if doc.get("kind") == "ConfigMap":
                cm_paths[(doc.get("metadata") or {}).get("name")] = path
    if "cedar-pdp-config" not in configmaps:
        problems.add(root / "kubernetes", "no ConfigMap `cedar-pdp-config` with config.toml")
    else:
        data = configmaps["cedar-pdp-config"].get("data") or {}
        if "config.toml" not in data:
            problems.add(cm_paths["cedar-pdp-config"], "cedar-pdp-config has no `config.toml` key")
        else:
            check_config_toml(data["config.toml"], schema, cm_paths["cedar-pdp-config"], problems)
    if "cedar-pdp-policies" in configmaps:
        expected = policies_configmap_data(crate / "policies")
        actual = configmaps["cedar-pdp-policies"].get("data") or {}
        if actual != expected:
            differ = sorted(k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k))
            problems.add(
                cm_paths["cedar-pdp-policies"],
                f"cedar-pdp-policies differs from policies/ in {differ}; "
                "run `python3 deploy/check.py --sync-policies`",
            )
    for path, doc in workloads:
        check_workload(path, doc, set(configmaps), problems)
    for path, doc in custom_policies:
        provider = doc["spec"]["provider"]["name"]
        if provider not in providers:
            problems.add(
                path,
                f"AuthorizationPolicy/{doc['metadata']['name']}: provider `{provider}` is not "
                f"an extensionProviders entry (have {sorted(providers)})",
            )
    for name, provider in providers.items():
        grpc = provider.get("envoyExtAuthzGrpc") or {}
        host, port = grpc.get("service"), grpc.get("port")
        if not any(
            host in (se.get("hosts") or []) and port in [p.get("number") for p in se.get("ports") or []]
            for se in service_entries
        ):
            problems.add(
                root / "istio",
                f"extension provider `{name}`: no ServiceEntry for {host}:{port}",
            )


def check_kustomization(path: Path, doc: dict[str, Any], problems: Problems) -> None:
    if doc.get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
        problems.add(path, "Kustomization: apiVersion must be kustomize.config.k8s.io/v1beta1")
    resources = doc.get("resources")
    if not isinstance(resources, list) or not resources:
        problems.add(path, "Kustomization: `resources` must be a non-empty list")
        return
    for res in resources:
        target = path.parent / str(res)
        if target.is_dir():
            if not (target / "kustomization.yaml").is_file():
                problems.add(path, f"resource `{res}` is a directory without kustomization.yaml")
        elif not target.is_file():
            problems.add(path, f"resource `{res}` does not exist")


def check_istio(
    path: Path,
    doc: dict[str, Any],
    problems: Problems,
    providers: dict[str, dict[str, Any]],
    service_entries: list[dict[str, Any]],
    custom_policies: list[tuple[Path, dict[str, Any]]],
) -> None:
    kind, api, name = doc["kind"], doc["apiVersion"], doc["metadata"]["name"]
    spec = doc.get("spec")
    known = {
        "AuthorizationPolicy": {"security.istio.io/v1", "security.istio.io/v1beta1"},
        "ServiceEntry": {"networking.istio.io/v1", "networking.istio.io/v1beta1"},
        "IstioOperator": {"install.istio.io/v1alpha1"},
    }
    if kind not in known or api not in known[kind]:
        problems.add(path, f"{api} {kind} is not a kind this check knows")
        return
    if not isinstance(spec, dict):
        problems.add(path, f"{kind}/{name}: `spec` must be a mapping")
        return
    if kind == "AuthorizationPolicy":
        action = spec.get("action", "ALLOW")
        if action not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
            problems.add(path, f"{kind}/{name}: action `{action}` is not ALLOW/DENY/AUDIT/CUSTOM")
        selector = spec.get("selector")
        if selector is not None and not isinstance((selector or {}).get("matchLabels"), dict):
            problems.add(path, f"{kind}/{name}: selector.matchLabels must be a mapping")
        if not isinstance(spec.get("rules"), list) or not spec["rules"]:
            problems.add(path, f"{kind}/{name}: `rules` must be a non-empty list (none matches nothing)")
        if action == "CUSTOM":
            provider = spec.get("provider")
            if not isinstance(provider, dict) or not isinstance(provider.get("name"), str):
                problems.add(path, f"{kind}/{name}: action CUSTOM needs provider.name")
            else:
                custom_policies.append((path, doc))
    elif kind == "ServiceEntry":
        hosts = spec.get("hosts")
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
            problems.add(path, f"{kind}/{name}: `hosts` must be a non-empty list of names")
        ports = spec.get("ports")
        if not isinstance(ports, list) or not ports:
            problems.add(path, f"{kind}/{name}: `ports` must be a non-empty list")
        else:
            for p in ports:
                if not isinstance(p, dict) or not isinstance(p.get("number"), int) or not p.get("name"):
                    problems.add(path, f"{kind}/{name}: each port needs an integer number and a name")
        if spec.get("resolution") not in ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"):
            problems.add(path, f"{kind}/{name}: resolution must be NONE, STATIC, DNS or DNS_ROUND_ROBIN")
        if spec.get("resolution") == "STATIC" and not spec.get("endpoints"):
            problems.add(path, f"{kind}/{name}: resolution STATIC needs endpoints")
        service_entries.append(spec)
    elif kind == "IstioOperator":
        entries = (spec.get("meshConfig") or {}).get("extensionProviders")
        if not isinstance(entries, list) or not entries:
            problems.add(path, f"{kind}/{name}: spec.meshConfig.extensionProviders must be a non-empty list")
            return
        for entry in entries:
            pname = entry.get("name") if isinstance(entry, dict) else None
            grpc = entry.get("envoyExtAuthzGrpc") if isinstance(entry, dict) else None
            if not isinstance(pname, str) or not isinstance(grpc, dict):
                problems.add(path, f"{kind}/{name}: each extension provider needs a name and envoyExtAuthzGrpc")
                continue
            if not isinstance(grpc.get("service"), str) or not isinstance(grpc.get("port"), int):
                problems.add(path, f"{kind}/{name}: provider `{pname}` needs a string service and integer port")
            if grpc.get("failOpen", False) is not False:
                problems.add(path, f"{kind}/{name}: provider `{pname}` must fail closed (failOpen: false)")
            timeout = grpc.get("timeout")
            if timeout is not None and not (isinstance(timeout, str) and DURATION.match(timeout)):
                problems.add(path, f"{kind}/{name}: provider `{pname}` timeout `{timeout}` is not a duration")
            providers[pname] = entry


def check_workload(path: Path, doc: dict[str, Any], configmaps: set[str], problems: Problems) -> None:
    """What the manifests promise beyond the schema."""
    name = doc["metadata"]["name"]
    pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    pod_sc = pod.get("securityContext") or {}
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    init = pod.get("initContainers") or []
    containers = pod.get("containers") or []
    where = f"{doc['kind']}/{name}"
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.add(path, f"{where}: the pod must use the RuntimeDefault seccomp profile")
    for v in volumes.values():
        cm = (v.get("configMap") or {}).get("name")
        if cm and cm not in configmaps:
            problems.add(path, f"{where}: volume `{v['name']}` names ConfigMap `{cm}`, defined nowhere")
    for c in init + containers:
        cname = c.get("name")
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.add(path, f"{where}: container `{cname}` must set runAsNonRoot")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.add(path, f"{where}: container `{cname}` must set readOnlyRootFilesystem: true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.add(path, f"{where}: container `{cname}` must set allowPrivilegeEscalation: false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.add(path, f"{where}: container `{cname}` must drop ALL capabilities")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part) or {}):
                problems.add(path, f"{where}: container `{cname}` needs resources.{part} cpu and memory")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                problems.add(path, f"{where}: container `{cname}` mounts undefined volume `{m.get('name')}`")
    pdp = [c for c in init + containers if c.get("name") == "cedar-pdp"]
    if not pdp:
        problems.add(path, f"{where}: no container named `cedar-pdp`")
        return
    pdp_c = pdp[0]
    if pdp_c not in init or pdp_c.get("restartPolicy") != "Always":
        problems.add(path, f"{where}: cedar-pdp must be a native sidecar (initContainers, restartPolicy: Always)")
    args = [str(a) for a in pdp_c.get("args") or []]
    flags = dict(zip(args, args[1:]))
    if flags.get("--config") != "/etc/cedar-pdp/config.toml":
        problems.add(path, f"{where}: cedar-pdp must run with --config /etc/cedar-pdp/config.toml")
    admin = flags.get("--admin-listen", "")
    if not admin.startswith("0.0.0.0:"):
        problems.add(path, f"{where}: cedar-pdp --admin-listen must bind 0.0.0.0 for the kubelet's probes")
    admin_port = admin.rpartition(":")[2]
    named_ports = {str(p.get("name")): str(p.get("containerPort")) for p in pdp_c.get("ports") or []}
    for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (pdp_c.get(probe) or {}).get("httpGet") or {}
        port = named_ports.get(str(get.get("port")), str(get.get("port")))
        if get.get("path") != want or port != admin_port:
            problems.add(path, f"{where}: cedar-pdp {probe} must GET {want} on the admin port {admin_port}")
    listen = flags.get("--listen", "")
    if listen.startswith("unix://"):
        socket_dir = str(Path(listen[len("unix://") :]).parent)
        users = [
            c.get("name")
            for c in init + containers
            for m in c.get("volumeMounts") or []
            if m.get("mountPath") == socket_dir and "emptyDir" in volumes.get(m.get("name"), {})
        ]
        if "cedar-pdp" not in users or len(users) < 2:
            problems.add(path, f"{where}: {socket_dir} must be a shared emptyDir of cedar-pdp and the app")
        if "fsGroup" not in pod_sc:
            problems.add(path, f"{where}: a socket of mode 0660 needs a pod fsGroup shared with the app")
    policies = flags.get("--policies", "")
    git_sync = [c for c in init if "git-sync" in str(c.get("image", ""))]
    if git_sync:
        gs = git_sync[0]
        gs_args = dict(a.split("=", 1) for a in (str(x) for x in gs.get("args") or []) if "=" in a)
        link = f"{gs_args.get('--root', '')}/{gs_args.get('--link', '')}"
        if "--link" not in gs_args or not (policies == link or policies.startswith(link + "/")):
            problems.add(path, f"{where}: cedar-pdp --policies `{policies}` must read through git-sync's link `{link}`")
        if init.index(gs) > init.index(pdp_c) or gs.get("restartPolicy") != "Always" or not gs.get("startupProbe"):
            problems.add(
                path,
                f"{where}: git-sync must be a native sidecar before cedar-pdp with a startupProbe, "
                "so cedar-pdp starts after the first sync",
            )


def policies_configmap_data(policies: Path) -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in sorted(policies.iterdir())
        if p.is_file() and p.name.endswith(POLICY_SUFFIXES)
    }


def write_policies_configmap(root: Path, crate: Path) -> None:
    data = policies_configmap_data(crate / "policies")

    class Literal(str):
        pass

    yaml.add_representer(
        Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    )
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cedar-pdp-policies", "labels": {"app.kubernetes.io/name": "cedar-pdp"}},
        "data": {k: Literal(v) for k, v in data.items()},
    }
    header = (
        "---\n# Generated from the crate's policies/ by `python3 deploy/check.py --sync-policies`;\n"
        "# check.py fails when the two differ. Mounted as a directory at\n"
        "# /etc/cedar-pdp/policies, so edits reach running pods and are hot-reloaded.\n"
    )
    text = yaml.dump(doc, sort_keys=False, width=1000, allow_unicode=True, indent=2)
    (root / POLICIES_CONFIGMAP).write_text(header + text)


# ---------------------------------------------------------------------------
# 2. yamllint.


def check_yamllint(root: Path, problems: Problems) -> None:
    config = root / ".yamllint"
    if not config.is_file():
        problems.add(config, "missing yamllint config")
        return
    ran = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "-c", str(config), str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ran.returncode != 0:
        for line in (ran.stdout + ran.stderr).splitlines():
            if line.strip():
                problems.add("yamllint", line.strip())
        if not (ran.stdout + ran.stderr).strip():
            problems.add("yamllint", f"exited {ran.returncode} without output")


# ---------------------------------------------------------------------------
# 3, 5. Dashboard and alert queries.

METRIC_IN_EXPR = re.compile(r"\b(cedar_pdp_[a-zA-Z0-9_]+)")


def check_expr(expr: Any, series: set[str], where: Path, what: str, problems: Problems) -> None:
    if not isinstance(expr, str) or not expr.strip():
        problems.add(where, f"{what}: empty or missing expr")
        return
    names = METRIC_IN_EXPR.findall(expr)
    if not names:
        problems.add(where, f"{what}: expr names no cedar_pdp_* metric: {expr}")
    for n in names:
        if n not in series:
            problems.add(where, f"{what}: `{n}` is not a metric src/metrics.rs exposes")
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
        problems.add(where, f"{what}: unbalanced brackets in expr: {expr}")


def iter_panels(panels: list[Any]) -> Iterator[dict[str, Any]]:
    for p in panels:
        if isinstance(p, dict):
            yield p
            yield from iter_panels(p.get("panels") or [])


def check_dashboards(root: Path, series: set[str], problems: Problems) -> None:
    files = sorted((root / "observability").glob("*.json"))
    if not files:
        problems.add(root / "observability", "no Grafana dashboard JSON")
    for path in files:
        try:
            dash = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            problems.add(path, f"not valid JSON: {e}")
            continue
        panels = list(iter_panels(dash.get("panels") or []))
        if not panels:
            problems.add(path, "dashboard has no panels")
        ids = [p.get("id") for p in panels]
        if len(ids) != len(set(ids)):
            problems.add(path, "panel ids are not unique")
        for p in panels:
            if p.get("type") in ("row", "text"):
                continue
            what = f"panel {p.get('id')} `{p.get('title')}`"
            targets = p.get("targets")
            if not isinstance(targets, list) or not targets:
                problems.add(path, f"{what}: no targets")
                continue
            for t in targets:
                check_expr((t or {}).get("expr"), series, path, what, problems)
        for var in (dash.get("templating") or {}).get("list") or []:
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if var.get("type") == "query":
                check_expr(query, series, path, f"variable `{var.get('name')}`", problems)


def check_alerts(root: Path, series: set[str], problems: Problems) -> None:
    path = root / "observability" / "alerts.yaml"
    if not path.is_file():
        problems.add(path, "missing")
        return
    docs = load_documents(path, problems)
    if len(docs) != 1 or not isinstance(docs[0].get("groups"), list) or not docs[0]["groups"]:
        problems.add(path, "must be one document with a non-empty `groups:` list")
        return
    alerts = 0
    for group in docs[0]["groups"]:
        if not isinstance(group, dict) or not group.get("name") or not isinstance(group.get("rules"), list):
            problems.add(path, "each group needs a name and a `rules` list")
            continue
        for rule in group["rules"]:
            if not isinstance(rule, dict) or not rule.get("alert"):
                problems.add(path, f"group {group['name']}: each rule needs an `alert` name")
                continue
            alerts += 1
            what = f"alert {rule['alert']}"
            check_expr(rule.get("expr"), series, path, what, problems)
            duration = rule.get("for")
            if not isinstance(duration, str) or not DURATION.match(duration):
                problems.add(path, f"{what}: `for` must be a duration like 5m")
            severity = (rule.get("labels") or {}).get("severity")
            if severity not in SEVERITIES:
                problems.add(path, f"{what}: labels.severity must be one of {sorted(SEVERITIES)}")
            if not (rule.get("annotations") or {}).get("summary"):
                problems.add(path, f"{what}: annotations.summary is required")
    if alerts == 0:
        problems.add(path, "no alerting rules")


# ---------------------------------------------------------------------------
# 4. Envoy.


def seconds(duration: Any) -> float | None:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(duration)) if isinstance(duration, str) else None
    return float(m.group(1)) if m else None


def check_envoy(root: Path, problems: Problems) -> None:
    path = root / "envoy" / "envoy.yaml"
    if not path.is_file():
        problems.add(path, "missing")
        return
    docs = load_documents(path, problems)
    if len(docs) != 1:
        problems.add(path, "must hold exactly one YAML document")
        return
    static = docs[0].get("static_resources") or {}
    clusters = {c.get("name"): c for c in static.get("clusters") or [] if isinstance(c, dict)}
    found = 0
    for listener in static.get("listeners") or []:
        for chain in listener.get("filter_chains") or []:
            for f in chain.get("filters") or []:
                if f.get("name") != HCM_NAME:
                    continue
                hcm = f.get("typed_config") or {}
                for key, want in HCM_PATH_NORMALISATION.items():
                    if hcm.get(key) != want:
                        problems.add(
                            path,
                            f"http_connection_manager {key} must be {json.dumps(want)} "
                            f"(the app must get the path cedar-pdp decided on), got `{hcm.get(key)}`",
                        )
                for vh in (hcm.get("route_config") or {}).get("virtual_hosts") or []:
                    for r in vh.get("routes") or []:
                        target = (r.get("route") or {}).get("cluster")
                        if target is not None and target not in clusters:
                            problems.add(path, f"route to cluster `{target}`, which is not defined")
                filters = hcm.get("http_filters") or []
                names = [h.get("name") for h in filters]
                if not names or names[-1] != ROUTER_NAME:
                    problems.add(path, f"the last HTTP filter must be {ROUTER_NAME}, got {names}")
                for h in filters:
                    if "ext_authz" in str(h.get("name")) or "ExtAuthz" in str((h.get("typed_config") or {}).get("@type")):
                        found += 1
                        check_ext_authz(path, h, clusters, problems)
    if found == 0:
        problems.add(path, f"no {EXT_AUTHZ_NAME} HTTP filter in any listener")


def check_ext_authz(path: Path, f: dict[str, Any], clusters: dict[str, Any], problems: Problems) -> None:
    if f.get("name") != EXT_AUTHZ_NAME:
        problems.add(path, f"ext_authz filter name must be {EXT_AUTHZ_NAME}, got `{f.get('name')}`")
    tc = f.get("typed_config") or {}
    if tc.get("@type") != EXT_AUTHZ_TYPE:
        problems.add(path, f"ext_authz typed_config @type must be {EXT_AUTHZ_TYPE}, got `{tc.get('@type')}`")
    if tc.get("failure_mode_allow") is not False:
        problems.add(
            path,
            f"ext_authz failure_mode_allow must be false (fail closed), got `{tc.get('failure_mode_allow')}`",
        )
    if tc.get("transport_api_version") != "V3":
        problems.add(path, "ext_authz transport_api_version must be V3")
    if tc.get("include_peer_certificate") is not True:
        problems.add(path, "ext_authz include_peer_certificate must be true")
    grpc = tc.get("grpc_service") or {}
    timeout = seconds(grpc.get("timeout"))
    if timeout is None or not 0 < timeout <= 1:
        problems.add(
            path,
            f"ext_authz grpc_service.timeout must be a duration in (0s, 1s], got `{grpc.get('timeout')}`",
        )
    cluster = (grpc.get("envoy_grpc") or {}).get("cluster_name")
    if cluster not in clusters:
        problems.add(path, f"ext_authz grpc_service.envoy_grpc.cluster_name `{cluster}` is not a defined cluster")
        return
    c = clusters[cluster]
    opts = (c.get("typed_extension_protocol_options") or {}).get(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ) or {}
    if "http2_protocol_options" not in (opts.get("explicit_http_config") or {}) and "http2_protocol_options" not in c:
        problems.add(path, f"cluster `{cluster}` must speak HTTP/2 (gRPC): set http2_protocol_options")


# ---------------------------------------------------------------------------
# 6. Dockerfile.


def check_dockerfile(root: Path, crate: Path, problems: Problems) -> None:
    path = root / "Dockerfile"
    if not path.is_file():
        problems.add(path, "missing")
        return
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    stages = [ln for ln in lines if ln.upper().startswith("FROM ")]
    if len(stages) < 2:
        problems.add(path, "must be a multi-stage build")
    users = [ln.split(None, 1)[1] for ln in lines if ln.upper().startswith("USER ")]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    final_users = [ln.split(None, 1)[1] for ln in lines[last_from:] if ln.upper().startswith("USER ")]
    if not final_users or not re.fullmatch(r"[1-9]\d*(:\d+)?", final_users[-1]):
        problems.add(path, f"the final stage must set a numeric non-root USER, got {users}")
    if not any(ln.upper().startswith("HEALTHCHECK ") for ln in lines[last_from:]):
        problems.add(path, "the final stage needs a HEALTHCHECK")
    for ln in lines:
        if ln.upper().startswith("COPY ") and "--from=" not in ln:
            parts = [p for p in ln.split()[1:] if not p.startswith("--")]
            for src in parts[:-1]:
                if not (crate / src).exists():
                    problems.add(path, f"COPY source `{src}` does not exist in the crate")


# ---------------------------------------------------------------------------
# 7. The policy repository's CI workflow.

POLICY_CI_COMMANDS = ("validate --policies .", "fmt --check --policies .", "test --policies . --junit report.xml")


def check_policy_ci(root: Path, problems: Problems) -> None:
    files = sorted((root / "policy-repo-ci" / ".github" / "workflows").glob("*.y*ml"))
    if not files:
        problems.add(root / "policy-repo-ci", "no workflow under .github/workflows/")
        return
    for path in files:
        docs = load_documents(path, problems)
        if len(docs) != 1:
            problems.add(path, "must hold exactly one YAML document")
            continue
        wf = docs[0]
        # YAML 1.1 reads the bare key `on` as true.
        if "on" not in wf and True not in wf:
            problems.add(path, "workflow has no `on:` trigger")
        jobs = wf.get("jobs")
        if not isinstance(jobs, dict) or not jobs:
            problems.add(path, "workflow has no jobs")
            continue
        runs = []
        for job_name, job in jobs.items():
            steps = (job or {}).get("steps")
            if not (job or {}).get("runs-on") or not isinstance(steps, list) or not steps:
                problems.add(path, f"job `{job_name}` needs runs-on and steps")
                continue
            runs += [str(step.get("run", "")) for step in steps if isinstance(step, dict)]
        for command in POLICY_CI_COMMANDS:
            if not any(re.search(rf"\b{re.escape(command)}(\s|$)", r) for r in runs):
                problems.add(path, f"no step runs `cedar-pdp {command}`")


# ---------------------------------------------------------------------------


def main() -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=here, help="the deploy/ directory to check")
    parser.add_argument("--crate", type=Path, default=here.parent, help="the crate root (src/, policies/)")
    parser.add_argument("--sync-policies", action="store_true", help="rewrite the policies ConfigMap from policies/")
    args = parser.parse_args()
    root, crate = args.root.resolve(), args.crate.resolve()
    if args.sync_policies:
        write_policies_configmap(root, crate)
        print(f"wrote {root / POLICIES_CONFIGMAP}")
        return 0

    problems = Problems(root)
    families: dict[str, str] = {}
    for source in METRIC_SOURCES:
        families.update(registered_metrics(crate / source))
    series = exposed_series(families)
    steps = [
        ("manifests", lambda: check_manifests(root, crate, problems)),
        ("yamllint", lambda: check_yamllint(root, problems)),
        ("dashboard", lambda: check_dashboards(root, series, problems)),
        ("envoy", lambda: check_envoy(root, problems)),
        ("alerts", lambda: check_alerts(root, series, problems)),
        ("dockerfile", lambda: check_dockerfile(root, crate, problems)),
        ("policy CI", lambda: check_policy_ci(root, problems)),
    ]
    for name, step in steps:
        before = len(problems.items)
        step()
        status = "ok" if len(problems.items) == before else f"{len(problems.items) - before} problem(s)"
        print(f"check {name}: {status}")
    if problems.items:
        print(f"\n{len(problems.items)} problem(s) in {root}:", file=sys.stderr)
        for p in problems.items:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"all deploy checks passed ({root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
