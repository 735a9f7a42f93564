"""The ConfigRefresh CRD as a document: no API server needed.

These checks keep the CRD honest where the API server would not complain: every field is
documented (so `kubectl explain` reads well), every list and string that a CEL rule walks is
bounded (so the rule's cost is known), and the examples in `examples/` are ConfigRefresh
objects with a header comment. What the server accepts and rejects is specified in
tests/integration/test_crd.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from refreshbus_wire.destination import expand, matches

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "configrefreshes.refreshbus.io.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
DOCS = REPO / "docs" / "configrefresh.md"

Schema = dict[str, Any]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    with CRD_PATH.open() as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions: list[dict[str, Any]] = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    return versions[0]


@pytest.fixture(scope="module")
def schema(version: dict[str, Any]) -> Schema:
    root: Schema = version["schema"]["openAPIV3Schema"]
    return root


def walk(node: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    """Yield (path, schema) for the node and every schema below it: properties, items, maps."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def destination_regex(schema: Schema) -> str:
    rules = schema["properties"]["spec"]["properties"]["target"]["properties"]["destination"][
        "x-kubernetes-validations"
    ]
    match = re.fullmatch(r"self\.matches\('(.*)'\)", rules[0]["rule"])
    assert match, rules[0]["rule"]
    return match.group(1)


def test_names_are_the_fixed_contract(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "configrefreshes.refreshbus.io"
    spec = crd["spec"]
    assert spec["group"] == "refreshbus.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "ConfigRefresh",
        "listKind": "ConfigRefreshList",
        "plural": "configrefreshes",
        "singular": "configrefresh",
        "shortNames": ["cfr"],
        "categories": ["refreshbus"],
    }
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns_show_phase_and_counts(version: dict[str, Any]) -> None:
    default_columns = [
        (c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert default_columns == [
        ("Phase", ".status.phase"),
        ("Step", ".status.rollout.progress"),
        ("Targets", ".status.counts.targets"),
        ("Succeeded", ".status.counts.succeeded"),
        ("Failed", ".status.counts.failed"),
        ("Age", ".metadata.creationTimestamp"),
    ]


def test_every_schema_node_has_a_description(schema: Schema) -> None:
    missing = [
        path for path, node in walk(schema, "configrefresh") if not str(node.get("description", "")).strip()
    ]
    assert missing == [], f"schema nodes without a description: {missing}"


def test_every_list_and_string_under_a_cel_rule_is_bounded(schema: Schema) -> None:
    # The API server estimates each CEL rule's worst-case cost from maxItems / maxLength /
    # maxProperties and refuses the CRD when it is unbounded.
    unbounded = []
    for path, node in walk(schema, "configrefresh"):
        if "x-kubernetes-validations" not in node:
            continue
        for sub_path, sub in walk(node, path):
            kind = sub.get("type")
            if kind == "array" and "maxItems" not in sub:
                unbounded.append(sub_path)
            if kind == "string" and "maxLength" not in sub and "enum" not in sub and "format" not in sub:
                unbounded.append(sub_path)
            if kind == "object" and "additionalProperties" in sub and "maxProperties" not in sub:
                unbounded.append(sub_path)
    assert unbounded == []


def test_every_cel_rule_has_a_message(schema: Schema) -> None:
    for path, node in walk(schema, "configrefresh"):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message", "").strip(), f"{path}: rule {rule['rule']!r} has no message"


def test_defaults_are_documented_where_they_are_set(schema: Schema) -> None:
    for path, node in walk(schema, "configrefresh"):
        if "default" in node:
            # As YAML/JSON readers write it: [1, "25%", "100%"], true.
            written = (str(node["default"]), json.dumps(node["default"]))
            assert any(w in node["description"] for w in written), path


@pytest.mark.parametrize(
    "pattern",
    [
        "**",
        "orders",
        "orders:**",
        "orders:*",
        "orders:orders-7d9f*",
        "orders:orders-7d9f6c8b5-abcde",
        "cust?mers:**:abc123",
        "my_app.v2:**",
    ],
)
def test_destination_accepts_spring_patterns(schema: Schema, pattern: str) -> None:
    assert re.fullmatch(destination_regex(schema), pattern)


@pytest.mark.parametrize(
    "pattern",
    ["", "orders::x", "orders:", ":orders", "orders :**", "orders/x", "orders:{a,b}", "órders"],
)
def test_destination_rejects_malformed_patterns(schema: Schema, pattern: str) -> None:
    assert not re.fullmatch(destination_regex(schema), pattern)


def test_the_required_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "refresh.yaml",
        "refresh-destination.yaml",
        "refresh-selector.yaml",
        "refresh-pods.yaml",
        "refresh-http-action.yaml",
        "refresh-secret-and-configmap.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_commented_configrefresh(path: Path, schema: Schema) -> None:
    text = path.read_text()
    assert text.startswith(f"# {path.name}:"), "each example starts with a comment saying what it does"
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "refreshbus.io/v1alpha1"
    assert doc["kind"] == "ConfigRefresh"
    assert "namespace" not in doc["metadata"], "examples apply to the namespace the user chooses"
    assert set(doc["spec"]) <= set(schema["properties"]["spec"]["properties"])


def destination_table() -> list[tuple[str, str, str, bool]]:
    """Rows of the worked-examples table in docs/configrefresh.md: (given, expanded, id, match)."""
    row = re.compile(r"^\| `([^`]+)` \| `([^`]+)` \| `([^`]+)` \| (yes|no)\b")
    rows = [m.groups() for line in DOCS.read_text().splitlines() if (m := row.match(line))]
    return [(given, expanded, instance, verdict == "yes") for given, expanded, instance, verdict in rows]


def test_docs_destination_table_is_not_empty() -> None:
    assert len(destination_table()) >= 10


@pytest.mark.parametrize(("given", "expanded", "instance", "match"), destination_table())
def test_docs_destination_examples_agree_with_the_shared_matcher(
    schema: Schema, given: str, expanded: str, instance: str, match: bool
) -> None:
    assert re.fullmatch(destination_regex(schema), given), "the CRD accepts the documented pattern"
    assert expand(given) == expanded
    assert matches(given, instance) is match
