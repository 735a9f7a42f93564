"""The one decoder of ConfigMap/Secret objects the operator and the sidecar share: what a
release record hashes must be what a sidecar hashes."""

from __future__ import annotations

import base64

import pytest
from refreshbus_wire.hashing import UndecodableError, content_hash, object_files


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def test_a_configmap_has_data_as_utf8_and_binary_data_decoded() -> None:
    obj = {"metadata": {"name": "c"}, "data": {"text": "héllo"}, "binaryData": {"blob": b64(b"\x00\xff")}}

    assert object_files(obj, "ConfigMap") == {"text": "héllo".encode(), "blob": b"\x00\xff"}
    assert object_files({"metadata": {"name": "empty"}}, "ConfigMap") == {}


def test_a_secret_has_data_decoded() -> None:
    obj = {"metadata": {"name": "s"}, "data": {"pw": b64(b"x")}, "stringData": {"user": "u"}}

    assert object_files(obj, "Secret") == {"pw": b"x", "user": b"u"}


def test_the_same_content_hashes_the_same_as_text_or_as_binary_data() -> None:
    as_text = object_files({"data": {"k": "v"}}, "ConfigMap")
    as_binary = object_files({"binaryData": {"k": b64(b"v")}}, "ConfigMap")

    assert content_hash("ConfigMap", "c", as_text) == content_hash("ConfigMap", "c", as_binary)


@pytest.mark.parametrize(("kind", "field"), [("ConfigMap", "binaryData"), ("Secret", "data")])
def test_a_value_that_is_not_base64_is_an_undecodable_error_naming_its_key(kind: str, field: str) -> None:
    with pytest.raises(UndecodableError) as caught:
        object_files({field: {"ok": b64(b"1"), "bad": "!!"}}, kind)

    assert (caught.value.key, caught.value.field) == ("bad", field)
    assert str(caught.value).startswith(f"key 'bad': {field} is not base64: ")
    assert isinstance(caught.value, ValueError)


def test_only_configmaps_and_secrets_hold_files() -> None:
    with pytest.raises(ValueError, match="only ConfigMaps and Secrets"):
        object_files({"data": {}}, "Deployment")
