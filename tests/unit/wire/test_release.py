"""The release record codec: what a valid record is, what each side reads out of it, and
that anything it cannot trust is a RecordError that says why (never a crash, never half a
record)."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from refreshbus_wire.contract import is_name
from refreshbus_wire.hashing import combined_hash, content_hash
from refreshbus_wire.release import (
    MAX_RECORD_BYTES,
    RECORD_KEY,
    Accepted,
    Candidate,
    RecordError,
    RecordTooLargeError,
    Rejected,
    Release,
    Revision,
    decode_record,
    encode_record,
    file_id,
    parse_source_key,
    record_name,
    record_size,
    snapshot,
    source_key,
)

T0 = datetime(2026, 12, 2, 7, 0, 0, tzinfo=UTC)
OLD = {"app.yaml": b"color: blue\n", "z.bin": b"\x00\xff"}
NEW = {"app.yaml": b"color: red\n", "z.bin": b"\x00\xff"}
WEB = source_key("ConfigMap", "web")


def release(candidate_pods: tuple[str, ...] | None = ("web-1",)) -> Release:
    accepted = Revision(3, {WEB: snapshot("ConfigMap", "web", OLD)})
    candidate = None if candidate_pods is None else Candidate(
        4, {WEB: snapshot("ConfigMap", "web", NEW)}, pods=candidate_pods, refresh="web-rollout")
    return Release(
        kind="Deployment", name="web", accepted=accepted, candidate=candidate,
        rejected=(Rejected(2, {WEB: "sha256:" + "1" * 64}, reason="pod web-0: health check failed", at=T0,
                           refresh="web-rollout-old"),),
        history=(Accepted(3, accepted.hashes(), accepted_at=T0, refresh="web-plain"),),
    )


def configmap(rel: Release, **meta: Any) -> dict[str, Any]:
    contents = {content_hash("ConfigMap", "web", OLD): OLD, content_hash("ConfigMap", "web", NEW): NEW}
    return {"metadata": {"name": record_name(rel.kind, rel.name), "resourceVersion": "77", **meta},
            **encode_record(rel, contents)}


def test_the_content_hash_is_pinned_so_operator_and_sidecar_agree() -> None:
    digest = content_hash("ConfigMap", "web", {"app.yaml": b"a: 1\n", "z.bin": b"\x00\xff"})
    assert digest == "sha256:f964c1211d5de5a0ba0eaabad004511137af196e3e722ae2b7568a27e844068a"
    assert combined_hash([digest]) == (
        "sha256:a4e7e2370ac328432060143ec51c30cb6b136de12cf476bc6fe4bf64c2bc460e")


def test_the_content_hash_ignores_key_order_but_not_content() -> None:
    one = content_hash("ConfigMap", "c", {"a": b"1", "b": b"2"})
    assert one == content_hash("ConfigMap", "c", {"b": b"2", "a": b"1"})
    assert one != content_hash("ConfigMap", "c", {"a": b"1", "b": b"3"})
    assert one != content_hash("Secret", "c", {"a": b"1", "b": b"2"})
    assert content_hash("ConfigMap", "c", {"ab": b""}) != content_hash("ConfigMap", "c", {"a": b"b"})


def test_record_names_are_valid_and_long_ones_are_hash_shortened() -> None:
    assert record_name("Deployment", "web") == "refreshbus-release-deployment-web"
    long_a, long_b = "a" * 240 + "x", "a" * 240 + "y"
    name_a, name_b = record_name("StatefulSet", long_a), record_name("StatefulSet", long_b)
    assert len(name_a) == 253
    assert is_name(name_a)
    assert name_a != name_b
    assert record_name("StatefulSet", long_a) == name_a  # stable


def test_file_ids_name_the_source_hash_and_key_index() -> None:
    digest = content_hash("ConfigMap", "web", OLD)
    assert file_id(digest, 1) == digest[7:23] + "-1"
    assert snapshot("ConfigMap", "web", OLD).files == {
        "app.yaml": digest[7:23] + "-0", "z.bin": digest[7:23] + "-1"}
    with pytest.raises(RecordError, match="not a source hash"):
        file_id("md5:abc", 0)


def test_a_record_round_trips_and_keeps_only_accepted_and_candidate_files() -> None:
    rel = release()
    body = configmap(rel)
    record = decode_record(body)
    assert record.release == rel
    assert record.resource_version == "77"
    # Both versions share z.bin's bytes but not its file id (the id names the version).
    assert len(body["binaryData"]) == 4
    assert record.files(rel.accepted) == {WEB: OLD}
    assert record.contents() == {content_hash("ConfigMap", "web", OLD): OLD,
                                 content_hash("ConfigMap", "web", NEW): NEW}
    assert rel.candidate is not None
    promoted = Release("Deployment", "web", accepted=Revision(4, rel.candidate.sources))
    assert len(encode_record(promoted, record.contents())["binaryData"]) == 2


def test_the_json_is_the_documented_shape() -> None:
    doc = json.loads(configmap(release())["data"][RECORD_KEY])
    assert doc["v"] == 1
    assert doc["workload"] == {"kind": "Deployment", "name": "web"}
    assert doc["accepted"]["revision"] == 3
    assert doc["accepted"]["sources"][WEB]["hash"] == content_hash("ConfigMap", "web", OLD)
    assert doc["candidate"]["pods"] == ["web-1"]
    assert doc["candidate"]["refresh"] == "web-rollout"
    assert doc["rejected"][0] == {"revision": 2, "sources": {WEB: "sha256:" + "1" * 64},
                                  "refresh": "web-rollout-old", "reason": "pod web-0: health check failed",
                                  "at": "2026-12-02T07:00:00Z"}
    assert doc["history"][0]["acceptedAt"] == "2026-12-02T07:00:00Z"


def test_a_pod_runs_the_candidate_only_once_listed_in_it() -> None:
    rel = release(candidate_pods=("web-1",))
    assert rel.revision_for("web-1").revision == 4
    assert rel.revision_for("web-2").revision == 3
    assert release(candidate_pods=None).revision_for("web-1").revision == 3
    assert rel.latest_revision == 4


def test_history_and_rejected_keep_the_newest_ten() -> None:
    rel = release()
    many = Release(rel.kind, rel.name, rel.accepted, history=tuple(
        Accepted(n, {}, accepted_at=T0) for n in range(20, 0, -1)))
    doc = json.loads(encode_record(many, {content_hash("ConfigMap", "web", OLD): OLD})["data"][RECORD_KEY])
    assert [e["revision"] for e in doc["history"]] == list(range(20, 10, -1))


def test_a_record_over_one_mib_is_refused_with_a_clear_error() -> None:
    big = {"blob": bytes(600 * 1024)}
    other = {"blob": bytes(600 * 1024 - 1)}
    rel = Release("Deployment", "web", Revision(1, {WEB: snapshot("ConfigMap", "web", big)}),
                  candidate=Candidate(2, {WEB: snapshot("ConfigMap", "web", other)}))
    with pytest.raises(RecordTooLargeError, match=r"web would be \d+ bytes, more than the 1048576"):
        encode_record(rel, {content_hash("ConfigMap", "web", big): big,
                            content_hash("ConfigMap", "web", other): other})


def test_record_size_counts_decoded_binary_data() -> None:
    body = {"data": {"k": "abc"}, "binaryData": {"f": base64.b64encode(bytes(1000)).decode()}}
    assert record_size(body) == 1003
    assert MAX_RECORD_BYTES == 1 << 20


def test_encoding_refuses_missing_or_mismatched_content() -> None:
    rel = release()
    with pytest.raises(RecordError, match="no content given for ConfigMap/web"):
        encode_record(rel, {content_hash("ConfigMap", "web", OLD): OLD})
    with pytest.raises(RecordError, match="the content given for ConfigMap/web is not"):
        encode_record(rel, {content_hash("ConfigMap", "web", OLD): OLD,
                            content_hash("ConfigMap", "web", NEW): OLD})


def test_secrets_are_never_versioned() -> None:
    files = {"password": b"hunter2"}
    rel = Release("Deployment", "web", Revision(1, {"Secret/db": snapshot("Secret", "db", files)}))
    with pytest.raises(RecordError, match="only ConfigMaps are versioned"):
        encode_record(rel, {content_hash("Secret", "db", files): files})
    assert parse_source_key("ConfigMap/web") == ("ConfigMap", "web")


def _corrupt(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    body = configmap(release())
    doc = json.loads(body["data"][RECORD_KEY])
    node = doc
    for step in path[:-1]:
        node = node[step]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    body["data"][RECORD_KEY] = json.dumps(doc)
    return body


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    (("v",), 2, "format v=2, this build reads v=1 only"),
    (("workload",), _DELETE, "workload must be an object"),
    (("workload", "name"), "Web", "workload.name 'Web' is not a valid Kubernetes name"),
    (("accepted",), None, "accepted must be an object"),
    (("accepted", "revision"), 0, "accepted.revision must be a positive integer"),
    (("accepted", "revision"), "3", "accepted.revision must be a positive integer"),
    (("accepted", "sources", WEB, "hash"), "sha256:xyz", "must be sha256:<64 hex digits>"),
    (("accepted", "sources", WEB, "files", "app.yaml"), "0000000000000000-0", "must be a valid key filed as"),
    (("candidate", "pods"), ["Web_1"], "candidate.pods must be a list of pod names"),
    (("candidate", "sources"), {"Secret/web": {}}, "only ConfigMaps are versioned"),
    (("rejected",), {}, "rejected must be a list"),
    (("rejected", 0, "at"), "yesterday", r"rejected\[0\].at is not an RFC 3339 timestamp"),
    (("history", 0, "acceptedAt"), "2026-12-02T07:00:00", "must carry a timezone"),
    (("history", 0, "sources", WEB), 42, "must be sha256"),
])
def test_a_malformed_release_json_is_refused_with_the_field_named(path: tuple[Any, ...], value: Any,
                                                                  message: str) -> None:
    with pytest.raises(RecordError, match=message) as err:
        decode_record(_corrupt(path, value))
    assert str(err.value).startswith("ConfigMap refreshbus-release-deployment-web: ")


def test_a_record_whose_files_do_not_match_their_hash_is_refused() -> None:
    body = configmap(release())
    fid = snapshot("ConfigMap", "web", OLD).files["app.yaml"]
    body["binaryData"][fid] = base64.b64encode(b"color: green\n").decode()
    with pytest.raises(RecordError, match="revision 3: the files of ConfigMap/web do not hash to sha256:"):
        decode_record(body)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b["data"].pop(RECORD_KEY), "no data\\['release.json'\\]"),
    (lambda b: b["data"].update({RECORD_KEY: "{"}), "release.json is not valid JSON"),
    (lambda b: b["data"].update({RECORD_KEY: "[]"}), "release.json must be an object"),
    (lambda b: b["binaryData"].clear(), "binaryData\\[.*\\] is missing"),
    (lambda b: b["binaryData"].update({k: "!!" for k in b["binaryData"]}), "is not base64"),
    (lambda b: b.update({"binaryData": []}), "binaryData must be an object"),
])
def test_a_broken_configmap_is_refused(mutate: Any, message: str) -> None:
    body = configmap(release())
    mutate(body)
    with pytest.raises(RecordError, match=message):
        decode_record(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (st.lists(children, max_size=3)
                      | st.dictionaries(st.text(max_size=5), children, max_size=3)),
    max_leaves=10,
)


@given(st.sampled_from(["v", "workload", "accepted", "candidate", "rejected", "history"]), json_values)
def test_any_corrupted_top_level_field_is_accepted_or_a_record_error(key: str, value: Any) -> None:
    body = configmap(release())
    doc = json.loads(body["data"][RECORD_KEY])
    doc[key] = value
    corrupted = copy.deepcopy(body)
    corrupted["data"][RECORD_KEY] = json.dumps(doc)
    with contextlib.suppress(RecordError):
        decode_record(corrupted)
