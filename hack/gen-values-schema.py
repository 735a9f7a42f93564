#!/usr/bin/env python3
"""Generate charts/refreshbus/values.schema.json (JSON Schema draft-07) and the values table
of charts/refreshbus/README.md from values.yaml.

Descriptions come from the helm-docs ``# --`` comments in values.yaml (one source for the
README table and the schema), types from the default values, and the constraints below
(enums, ranges, patterns, which objects are open maps). Objects with keys in values.yaml are
closed (``additionalProperties: false``): a typo in a value name fails ``helm install``.

Usage: hack/gen-values-schema.py [--check]    (--check: exit 1 if a file is stale)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "refreshbus"

PULL_POLICY = {"enum": ["Always", "IfNotPresent", "Never"]}
PORT = {"minimum": 1, "maximum": 65535}
DNS_LABELS = {"items": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}
QUANTITY = {"type": ["string", "number"]}
DURATION = {"pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}

#: Extra constraints by dotted path ("*" matches one key).
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "*.image.pullPolicy": PULL_POLICY,
    "sidecar.image.pullPolicy": PULL_POLICY,
    "*.image.repository": {"minLength": 1},
    "*.image.digest": {"pattern": r"^$|^sha256:[a-f0-9]{64}$"},
    "sidecar.image.digest": {"pattern": r"^$|^sha256:[a-f0-9]{64}$"},
    "operator.replicas": {"minimum": 1},
    "operator.logFormat": {"enum": ["json", "plain"]},
    "operator.ackIdentity": {"enum": ["require", "warn"]},
    "operator.ackQueueType": {"enum": ["quorum", "classic"]},
    "operator.statusFlushInterval": {"minimum": 0},
    "operator.healthPort": PORT,
    "operator.autoRefresh.ttlSecondsAfterFinished": {"minimum": 0},
    "operator.autoRefresh.historyLimit": {"minimum": 0},
    "operator.autoRefresh.watchScope": {"enum": ["namespace", "object"]},
    "operator.autoRefresh.maxWatches": {"minimum": 1},
    "operator.livenessProbe.*": {"minimum": 0},
    "operator.terminationGracePeriodSeconds": {"minimum": 0},
    "operator.podDisruptionBudget.minAvailable": {"type": ["integer", "string"]},
    "operator.watchNamespaces": DNS_LABELS,
    "operator.springBus.namespaces": DNS_LABELS,
    "operator.extraArgs": {"items": {"type": "string"}},
    "rabbitmq.command": {"items": {"type": "string"}},
    "rabbitmq.replicas": {"minimum": 1},
    "rabbitmq.args": {"items": {"type": "string"}},
    "imagePullSecrets": {"items": {"type": "object", "required": ["name"]}},
    "*.extraEnv": {"items": {"type": "object", "required": ["name"]}},
    "webhook.port": PORT,
    "webhook.failurePolicy": {"enum": ["Ignore", "Fail"]},
    "webhook.timeoutSeconds": {"minimum": 1, "maximum": 30},
    "webhook.reinvocationPolicy": {"enum": ["IfNeeded", "Never"]},
    "webhook.excludedNamespaces": DNS_LABELS,
    "webhook.certValidityDays": {"minimum": 1},
    "webhook.certRenewBeforeDays": {"minimum": 0},
    "webhook.certManager.duration": DURATION,
    "webhook.certManager.renewBefore": DURATION,
    "webhook.certManager.caDuration": DURATION,
    "webhook.certManager.caRenewBefore": DURATION,
    "sidecar.healthPort": PORT,
    "sidecar.logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
    "sidecar.runAsUser": {"minimum": 0},
    "metrics.port": PORT,
    "metrics.service.port": PORT,
    "metrics.service.type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "metrics.serviceMonitor.interval": DURATION,
    "metrics.serviceMonitor.scrapeTimeout": {"pattern": "^$|" + DURATION["pattern"][1:]},
    "rabbitmq.service.port": PORT,
    "rabbitmq.vhost": {"minLength": 1},
    "rabbitmq.users.*.username": {"minLength": 1, "pattern": r"^[^:@/]+$"},
    "rabbitmq.users.*.password": {"pattern": r"^[A-Za-z0-9._~-]*$"},
    "rabbitmq.persistence.size": {"pattern": r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?)?$"},
    "rabbitmq.memoryHighWatermark": {"exclusiveMinimum": 0, "maximum": 1},
    "rabbitmq.diskFreeLimit": {"pattern": r"^[0-9]+([kKmMgG][bB]?|[kKmMgG]i[bB]?)?$"},
}
#: Objects whose keys are free (maps, or Kubernetes types we pass through).
OPEN = {
    "commonLabels",
    "*.podAnnotations",
    "*.podLabels",
    "*.nodeSelector",
    "*.affinity",
    "*.resources",
    "*.podSecurityContext",
    "*.securityContext",
    "*.serviceAccount.annotations",
    "webhook.objectSelector",
    "webhook.certManager.issuerRef",
    "metrics.service.annotations",
    "metrics.serviceMonitor.labels",
    "sidecar.resources",
}
#: Descriptions of the sections (objects without a `# --` comment of their own).
SECTIONS = {
    "crds": "The ConfigRefresh CRD.",
    "operator": "The refreshbus operator (kopf): Deployment, peering, probes, security.",
    "operator.image": "Operator image.",
    "operator.peering": "kopf peering (HA: one active replica, the others on standby).",
    "operator.autoRefresh": "Auto-refresh of workloads annotated refreshbus.io/auto-refresh.",
    "operator.springBus": "The Spring Cloud Bus bridge (docs/spring-bus.md).",
    "operator.livenessProbe": "Liveness probe on kopf's /healthz endpoint.",
    "operator.podDisruptionBudget": "PodDisruptionBudget of the operator.",
    "operator.serviceAccount": "ServiceAccount of the operator.",
    "rbac": "RBAC of the operator.",
    "cleanup": "What `helm uninstall` removes beyond the chart's own objects.",
    "webhook": "The sidecar-injection webhook (served by the operator).",
    "webhook.certManager": "cert-manager for the webhook's serving certificate.",
    "sidecar": "The injected sidecar container (passed to the operator's injector).",
    "sidecar.image": "Sidecar image.",
    "metrics": "Prometheus metrics of the operator.",
    "metrics.service": "The metrics Service.",
    "metrics.serviceMonitor": "prometheus-operator ServiceMonitor.",
    "broker": "RabbitMQ connection: an existing Secret, or the embedded broker.",
    "broker.existingSecretKeys": "Keys of broker.existingSecret.",
    "rabbitmq": "The embedded single-node RabbitMQ (when broker.existingSecret is empty).",
    "rabbitmq.image": "RabbitMQ image.",
    "rabbitmq.users": "Broker users created by the chart.",
    "rabbitmq.users.operator": "The operator's broker user.",
    "rabbitmq.users.sidecar": "The sidecars' broker user.",
    "rabbitmq.service": "The AMQP Service.",
    "rabbitmq.persistence": "Persistent storage of the broker's data.",
}
#: Required top-level keys.
REQUIRED = ["crds", "operator", "rbac", "webhook", "sidecar", "metrics", "broker", "rabbitmq"]


def descriptions(text: str) -> dict[str, str]:
    """Dotted path -> the ``# --`` comment above it."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if pending is not None:
            out[".".join(k for _, k in stack)] = " ".join(p for p in pending if p)
            pending = None
    return out


def match(path: str, pattern: str) -> bool:
    a, b = path.split("."), pattern.split(".")
    if pattern.startswith("*.") and len(a) > len(b):
        a = a[len(a) - len(b) :]
    return len(a) == len(b) and all(y in ("*", x) for x, y in zip(a, b, strict=True))


def constraints(path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pattern, extra in CONSTRAINTS.items():
        if match(path, pattern):
            out.update(extra)
    return out


def schema_for(path: str, value: Any, docs: dict[str, str]) -> dict[str, Any]:
    node: dict[str, Any] = {}
    if path in docs:
        node["description"] = docs[path]
    elif path in SECTIONS:
        node["description"] = SECTIONS[path]
    if isinstance(value, bool):
        node["type"] = "boolean"
    elif isinstance(value, int):
        node["type"] = "integer"
    elif isinstance(value, float):
        node["type"] = "number"
    elif isinstance(value, str):
        node["type"] = "string"
    elif isinstance(value, list):
        node["type"] = "array"
        node["items"] = {"type": "object"} if not value or isinstance(value[0], dict) else {"type": "string"}
    elif isinstance(value, dict):
        node["type"] = "object"
        if path and any(match(path, p) for p in OPEN):
            node["additionalProperties"] = True
        else:
            node["additionalProperties"] = False
            node["properties"] = {
                k: schema_for(f"{path}.{k}" if path else k, v, docs) for k, v in value.items()
            }
    node.update(constraints(path))
    if path == "sidecar.resources":
        node = {
            "description": node.get("description", ""),
            "type": "object",
            "additionalProperties": False,
            "properties": {
                part: {
                    "type": "object",
                    "description": f"Sidecar resource {part}.",
                    "additionalProperties": False,
                    "properties": {
                        r: {**QUANTITY, "description": f"{r} {part[:-1]}"} for r in ("cpu", "memory")
                    },
                }
                for part in ("requests", "limits")
            },
        }
    return node


def generate() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    docs = descriptions(text)
    schema: dict[str, Any] = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "refreshbus Helm chart values",
        "description": "Generated by hack/gen-values-schema.py from values.yaml; do not edit by hand.",
        **schema_for("", values, docs),
        "required": REQUIRED,
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


START, END = "<!-- values:start -->", "<!-- values:end -->"


def table(
    schema: dict[str, Any], values: dict[str, Any], docs: dict[str, str], prefix: str = ""
) -> list[str]:
    """helm-docs style rows: key, type, default, description. Sections (closed objects without a
    `# --` comment of their own) are expanded; everything else is one row."""
    rows = []
    for key, node in schema["properties"].items():
        path, value = f"{prefix}{key}", values[key]
        section = node.get("additionalProperties") is False and "properties" in node
        if section and isinstance(value, dict) and path not in docs:
            rows += table(node, value, docs, path + ".")
            continue
        kind = node["type"] if isinstance(node["type"], str) else "/".join(node["type"])
        default = json.dumps(value, ensure_ascii=False).replace("|", "\\|")
        description = node.get("description", "").replace("|", "\\|")
        rows.append(f"| `{path}` | {kind} | `{default}` | {description} |")
    return rows


def readme(schema_text: str) -> str:
    text = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    rows += table(json.loads(schema_text), values, descriptions((CHART / "values.yaml").read_text()))
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{chr(10).join(rows)}\n{END}{tail}"


def main() -> int:
    schema_file, readme_file = CHART / "values.schema.json", CHART / "README.md"
    fresh = generate()
    fresh_readme = readme(fresh)
    if sys.argv[1:] == ["--check"]:
        stale = [
            str(path)
            for path, content in ((schema_file, fresh), (readme_file, fresh_readme))
            if not path.exists() or path.read_text() != content
        ]
        if stale:
            print(f"stale: {', '.join(stale)}: run hack/gen-values-schema.py", file=sys.stderr)
            return 1
        return 0
    schema_file.write_text(fresh)
    readme_file.write_text(fresh_readme)
    print(f"wrote {schema_file} and the values table of {readme_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
