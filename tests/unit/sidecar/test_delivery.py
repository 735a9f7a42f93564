from __future__ import annotations

import base64
import errno
import os
import stat
from pathlib import Path

import pytest
from refreshbus_sidecar import delivery
from refreshbus_sidecar.delivery import DeliveryError, Payload, Store, payload_from_object


def cm(name: str, **files: str) -> Payload:
    return Payload(kind="ConfigMap", name=name, files={k: v.encode() for k, v in files.items()}, mode=0o644)


def versions(source: Path) -> list[str]:
    return sorted(p.name for p in source.iterdir() if p.name.startswith("..") and p.name != "..data")


def test_first_write_creates_the_kubelet_layout(tmp_path: Path) -> None:
    store = Store(tmp_path)

    written = store.apply([cm("app", **{"app.conf": "a=1", "extra.txt": "x"})])

    source = tmp_path / "configmap-app"
    assert [p.name for p in written] == ["app"]
    assert os.readlink(source / "..data").startswith("..")
    assert os.readlink(source / "app.conf") == "..data/app.conf"
    assert (source / "app.conf").read_text() == "a=1"
    assert stat.S_IMODE((source / "..data" / "app.conf").stat().st_mode) == 0o644
    assert len(versions(source)) == 1


def test_an_update_swaps_data_keeps_the_previous_version_and_cleans_older_ones(tmp_path: Path) -> None:
    store = Store(tmp_path)
    source = tmp_path / "configmap-app"
    store.apply([cm("app", a="1", gone="x")])
    first = os.readlink(source / "..data")
    store.apply([cm("app", a="2")])
    second = os.readlink(source / "..data")

    store.apply([cm("app", a="3", new="n")])
    store.prune()  # the refresher calls it after the reload, off the hot path

    assert (source / "a").read_text() == "3"
    assert (source / "new").read_text() == "n"
    assert not (source / "gone").exists()
    assert not (source / "gone").is_symlink()
    assert set(versions(source)) == {os.readlink(source / "..data"), second}
    assert first not in versions(source)


def test_unchanged_content_is_not_written_again(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.apply([cm("app", a="1")])
    before = os.readlink(tmp_path / "configmap-app" / "..data")

    assert store.apply([cm("app", a="1")]) == []
    assert os.readlink(tmp_path / "configmap-app" / "..data") == before


def test_the_hash_on_disk_is_recognised_by_a_new_store(tmp_path: Path) -> None:
    Store(tmp_path).apply([cm("app", a="1")])

    fresh = Store(tmp_path)

    assert fresh.current_hash("ConfigMap", "app") == cm("app", a="1").hash
    assert fresh.apply([cm("app", a="1")]) == []


@pytest.mark.parametrize(
    ("code", "text"),
    [(errno.ENOSPC, "disk full"), (errno.EACCES, "permission denied"),
     (errno.EROFS, "read-only file system")],
)
def test_a_failed_write_leaves_the_previous_version_and_no_new_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, text: str
) -> None:
    store = Store(tmp_path)
    store.apply([cm("one", a="1"), cm("two", b="1")])
    before = {d: versions(tmp_path / d) for d in ("configmap-one", "configmap-two")}
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: memoryview | bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the second source's file
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(delivery.os, "write", failing_write)
    with pytest.raises(DeliveryError, match=text):
        store.apply([cm("one", a="2"), cm("two", b="2")])

    assert (tmp_path / "configmap-one" / "a").read_text() == "1"  # neither source changed
    assert (tmp_path / "configmap-two" / "b").read_text() == "1"
    assert {d: versions(tmp_path / d) for d in before} == before


def test_a_failed_swap_rolls_back_the_sources_already_swapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path)
    store.apply([cm("one", a="1"), cm("two", b="1")])
    real_rename = os.rename

    def failing_rename(src: str | Path, dst: str | Path) -> None:
        if "configmap-two" in str(dst) and str(dst).endswith("..data"):
            raise OSError(errno.EROFS, "Read-only file system")
        real_rename(src, dst)

    monkeypatch.setattr(delivery.os, "rename", failing_rename)
    with pytest.raises(DeliveryError, match="read-only"):
        store.apply([cm("one", a="2"), cm("two", b="2")])
    monkeypatch.undo()

    assert (tmp_path / "configmap-one" / "a").read_text() == "1"
    assert (tmp_path / "configmap-two" / "b").read_text() == "1"
    assert store.apply([cm("one", a="2"), cm("two", b="2")]) != []  # and a later attempt works


def test_configmap_binary_data_and_secret_values_are_decoded() -> None:
    configmap = payload_from_object({
        "metadata": {"name": "c", "resourceVersion": "42"},
        "data": {"text": "héllo"},
        "binaryData": {"blob": base64.b64encode(b"\x00\xff").decode()},
    }, "ConfigMap", 0o644)
    secret = payload_from_object({"metadata": {"name": "s"}, "data": {"pw": base64.b64encode(b"x").decode()}},
                                 "Secret", 0o440)

    assert configmap.files == {"text": "héllo".encode(), "blob": b"\x00\xff"}
    assert configmap.resource_version == "42"
    assert secret.files == {"pw": b"x"}


@pytest.mark.parametrize("key", ["..data", "../escape", "a/b", ".."])
def test_keys_that_are_not_file_names_are_refused(key: str) -> None:
    with pytest.raises(DeliveryError, match="cannot be a file name"):
        payload_from_object({"metadata": {"name": "c"}, "data": {key: "x"}}, "ConfigMap", 0o644)


def test_a_value_that_is_not_base64_is_refused_with_the_source_and_why() -> None:
    with pytest.raises(DeliveryError, match=r"^Secret s: undecodable value: .+"):
        payload_from_object({"metadata": {"name": "s"}, "data": {"pw": "!!"}}, "Secret", 0o440)
