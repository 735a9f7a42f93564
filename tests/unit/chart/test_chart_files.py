"""The chart's files, without helm: CRDs byte-identical to crds/ (drift fails here),
values.schema.json generated from values.yaml (draft-07, every value described, closed
objects), values.yaml documented with helm-docs comments, README values table complete.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "refreshbus"


# -- CRDs --------------------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_to_the_project_crds() -> None:
    sync = REPO / "hack" / "sync-chart-crds.sh"
    proc = subprocess.run(["bash", str(sync), "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"chart CRDs drifted from crds/:\n{proc.stderr}"
    copies = {p.name: p for p in [*CHART.glob("files/crds/*.yaml"), *CHART.glob("crds/*.yaml")]}
    sources = {p.name: p for p in (REPO / "crds").glob("*.yaml")}
    assert set(copies) == set(sources)
    for name, source in sources.items():
        assert copies[name].read_bytes() == source.read_bytes(), name


def test_configrefresh_crd_is_templated_and_peering_crds_are_install_once() -> None:
    # Helm's crds/ folder is never upgraded: ConfigRefresh must be a template (files/ + crds.yaml).
    assert (CHART / "files" / "crds" / "configrefreshes.refreshbus.io.yaml").is_file()
    assert not (CHART / "crds" / "configrefreshes.refreshbus.io.yaml").exists()
    template = (CHART / "templates" / "crds.yaml").read_text()
    assert '.Files.Glob "files/crds/*.yaml"' in template
    assert '"helm.sh/resource-policy" "keep"' in template
    peering = list(yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()))
    assert {d["spec"]["group"] for d in peering} == {"kopf.dev"}


# -- values and schema -------------------------------------------------------------------------


def load_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def documented_paths() -> set[str]:
    """Dotted paths of the values with a helm-docs `# --` comment right above them."""
    documented = set()
    stack: list[tuple[int, str]] = []
    pending = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = True
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m or stripped.startswith("#"):
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if pending:
            documented.add(".".join(k for _, k in stack))
        pending = False
    return documented


def leaves(values: dict[str, Any], schema: dict[str, Any], docs: set[str], prefix: str = "") -> list[str]:
    """Dotted paths of every value: sections (closed objects without a comment of their own)
    are expanded, anything else -- scalars, lists, maps, documented objects -- is one value."""
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        node = schema["properties"][key]
        section = node.get("additionalProperties") is False and "properties" in node
        if isinstance(value, dict) and section and path not in docs:
            out += leaves(value, node, docs, path + ".")
        else:
            out.append(path)
    return out


def test_values_yaml_starts_with_the_schema_modeline() -> None:
    first = (CHART / "values.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=values.schema.json"


def test_schema_is_generated_from_values_yaml_and_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen-values-schema.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_schema_is_draft_07_closed_and_describes_every_value() -> None:
    schema = load_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])

    def walk(node: dict[str, Any], path: str) -> None:
        assert node.get("description"), f"{path or '<root>'} has no description"
        assert "type" in node, path
        if "properties" in node:
            assert node["additionalProperties"] is False, path
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}" if path else key)

    walk(schema, "")
    closed_objects = (
        "operator.image",
        "sidecar.image",
        "rabbitmq.image",
        "webhook.certManager",
        "sidecar.resources",
    )
    for closed in closed_objects:
        node = schema
        for key in closed.split("."):
            node = node["properties"][key]
        assert node["additionalProperties"] is False, closed


def test_every_value_has_a_helm_docs_comment() -> None:
    docs = documented_paths()
    missing = [p for p in leaves(load_values(), load_schema(), docs) if p not in docs]
    assert not missing, f"values without a `# --` comment: {missing}"


def test_readme_values_table_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    missing = [
        p for p in leaves(load_values(), load_schema(), documented_paths()) if f"| `{p}` |" not in readme
    ]
    assert not missing, f"README.md values table lacks {missing}"


LAYOUT = [
    "Chart.yaml",
    "values.yaml",
    "values.schema.json",
    "README.md",
    ".helmignore",
    "templates/NOTES.txt",
]


@pytest.mark.parametrize("name", LAYOUT)
def test_chart_layout(name: str) -> None:
    assert (CHART / name).is_file()


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["type"] == "application"
    assert chart["kubeVersion"] == ">=1.29.0-0"  # native sidecars
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    ci = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
    assert {
        "default-values.yaml",
        "existing-broker-secret-values.yaml",
        "cert-manager-values.yaml",
        "no-crds-values.yaml",
        "servicemonitor-values.yaml",
        "failurepolicy-fail-values.yaml",
    } <= set(ci)
