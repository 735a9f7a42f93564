"""In-place files for subPath file mounts: the same inode, rewritten on every change."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from refreshbus_sidecar import delivery
from refreshbus_sidecar.delivery import DeliveryError, Payload, Store


def cm(name: str, **files: str) -> Payload:
    return Payload(kind="ConfigMap", name=name, files={k: v.encode() for k, v in files.items()}, mode=0o644)


def secret(name: str, **files: str) -> Payload:
    return Payload(kind="Secret", name=name, files={k: v.encode() for k, v in files.items()}, mode=0o440)


def inplace(tmp_path: Path, dirname: str, key: str) -> Path:
    return tmp_path / ".inplace" / dirname / key


def test_the_first_write_creates_a_regular_file_with_the_keys_content(tmp_path: Path) -> None:
    store = Store(tmp_path, [("ConfigMap", "app", "app.yaml")])

    store.apply([cm("app", **{"app.yaml": "a: 1\n", "other": "x"})])

    path = inplace(tmp_path, "configmap-app", "app.yaml")
    assert path.is_file()
    assert not path.is_symlink()
    assert path.read_text() == "a: 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not inplace(tmp_path, "configmap-app", "other").exists()  # only the keys asked for


@pytest.mark.parametrize("new", ["a: 2\n", "a: 2\nb: a much longer line than before\n" * 50, "", "x"])
def test_an_update_rewrites_the_same_inode_whatever_the_new_length(tmp_path: Path, new: str) -> None:
    store = Store(tmp_path, [("ConfigMap", "app", "app.yaml")])
    store.apply([cm("app", **{"app.yaml": "a: 1\nsome: longer old content\n"})])
    path = inplace(tmp_path, "configmap-app", "app.yaml")
    inode = path.stat().st_ino
    with open(path, "rb") as held:  # what a bind mount amounts to: the inode, not the name
        store.apply([cm("app", **{"app.yaml": new})])

        assert path.stat().st_ino == inode
        held.seek(0)
        assert held.read() == new.encode()
    assert (tmp_path / "configmap-app" / "app.yaml").read_text() == new


def test_secret_in_place_files_keep_the_secret_mode_plus_owner_write(tmp_path: Path) -> None:
    store = Store(tmp_path, [("Secret", "db", "pw")])
    store.apply([secret("db", pw="one")])
    store.apply([secret("db", pw="two")])  # the owner can reopen it for writing

    path = inplace(tmp_path, "secret-db", "pw")
    assert path.read_text() == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_key_removed_from_the_source_keeps_its_last_content(tmp_path: Path) -> None:
    store = Store(tmp_path, [("ConfigMap", "app", "app.yaml")])
    store.apply([cm("app", **{"app.yaml": "a: 1\n"})])
    store.apply([cm("app", other="x")])

    assert inplace(tmp_path, "configmap-app", "app.yaml").read_text() == "a: 1\n"


def test_an_open_refused_by_the_kernel_fails_the_change_with_everything_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path, [("ConfigMap", "app", "app.yaml")])
    store.apply([cm("app", **{"app.yaml": "a: 1\n"})])
    before = os.readlink(tmp_path / "configmap-app" / "..data")
    real_open = os.open

    def refusing_open(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if ".inplace" in str(path):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(delivery.os, "open", refusing_open)
    with pytest.raises(DeliveryError, match=r"permission denied \(.*\.inplace/configmap-app/app\.yaml\)"):
        store.apply([cm("app", **{"app.yaml": "a: 2\n"})])
    monkeypatch.undo()

    assert inplace(tmp_path, "configmap-app", "app.yaml").read_text() == "a: 1\n"
    assert os.readlink(tmp_path / "configmap-app" / "..data") == before
    assert len([p for p in (tmp_path / "configmap-app").iterdir() if p.name.startswith("..2")]) == 1


def test_a_write_failing_midway_restores_the_files_already_rewritten_and_undoes_the_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [("ConfigMap", "app", "a.yaml"), ("ConfigMap", "app", "b.yaml")]
    store = Store(tmp_path, keys)
    store.apply([cm("app", **{"a.yaml": "a1", "b.yaml": "b1"})])
    before = os.readlink(tmp_path / "configmap-app" / "..data")
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def full_disk(fd: int, data: memoryview | bytes, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the second file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(delivery.os, "pwrite", full_disk)
    with pytest.raises(DeliveryError, match=r"disk full.*previous config is still in place"):
        store.apply([cm("app", **{"a.yaml": "a2", "b.yaml": "b2"})])
    monkeypatch.undo()

    assert inplace(tmp_path, "configmap-app", "a.yaml").read_text() == "a1"
    assert inplace(tmp_path, "configmap-app", "b.yaml").read_text() == "b1"
    assert os.readlink(tmp_path / "configmap-app" / "..data") == before
    assert store.apply([cm("app", **{"a.yaml": "a2", "b.yaml": "b2"})]) != []
    assert inplace(tmp_path, "configmap-app", "b.yaml").read_text() == "b2"


def test_a_stale_in_place_file_found_at_start_up_is_rewritten_even_if_the_directory_is_current(
    tmp_path: Path,
) -> None:
    keys = [("ConfigMap", "app", "app.yaml")]
    Store(tmp_path, keys).apply([cm("app", **{"app.yaml": "new"})])
    inplace(tmp_path, "configmap-app", "app.yaml").write_text("old")  # as after a crash mid-change

    restarted = Store(tmp_path, keys)
    assert [p.name for p in restarted.apply([cm("app", **{"app.yaml": "new"})])] == ["app"]
    assert inplace(tmp_path, "configmap-app", "app.yaml").read_text() == "new"
    assert restarted.apply([cm("app", **{"app.yaml": "new"})]) == []


def test_in_sync_in_place_files_found_at_start_up_cause_no_write(tmp_path: Path) -> None:
    keys = [("ConfigMap", "app", "app.yaml")]
    Store(tmp_path, keys).apply([cm("app", **{"app.yaml": "same"})])
    mtime = inplace(tmp_path, "configmap-app", "app.yaml").stat().st_mtime_ns

    assert Store(tmp_path, keys).apply([cm("app", **{"app.yaml": "same"})]) == []
    assert inplace(tmp_path, "configmap-app", "app.yaml").stat().st_mtime_ns == mtime
