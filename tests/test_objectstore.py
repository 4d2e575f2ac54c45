"""The object stores: the same contract on a local directory and on S3 (moto server)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.config import Config

from streamhouse.config import Settings
from streamhouse.errors import ConfigError, ObjectNotFoundError, StorageError
from streamhouse.log import objectstore
from streamhouse.log.objectstore import (
    LocalObjectStore,
    ObjectStore,
    S3ObjectStore,
    open_object_store,
)

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    make: Callable[..., S3ObjectStore] = request.getfixturevalue("s3_store")
    return make("cluster-1")


# -- the contract, on both stores ----------------------------------------------------------


def test_put_get_size_delete(store: ObjectStore) -> None:
    store.put("segments/a.seg", b"0123456789")
    assert store.get("segments/a.seg") == b"0123456789"
    assert store.size("segments/a.seg") == 10
    store.delete("segments/a.seg")
    with pytest.raises(ObjectNotFoundError, match="segments/a.seg"):
        store.get("segments/a.seg")
    store.delete("segments/a.seg")  # absent is fine


def test_byte_ranges(store: ObjectStore) -> None:
    store.put("k", b"0123456789")
    assert store.get("k", 2, 5) == b"234"
    assert store.get("k", 7) == b"789"
    assert store.get("k", 0, 10) == b"0123456789"
    assert store.get("k", 8, 100) == b"89"  # clamped to the object
    assert store.get("k", 10) == b""
    assert store.get("k", 20, 30) == b""
    assert store.get("k", 4, 4) == b""
    assert store.get_tail("k", 3) == b"789"
    assert store.get_tail("k", 100) == b"0123456789"
    assert store.get_tail("k", 0) == b""
    with pytest.raises(ValueError):
        store.get("k", -1)


def test_missing_object(store: ObjectStore) -> None:
    for call in (
        lambda: store.get("nope/x"),
        lambda: store.get("nope/x", 3, 3),
        lambda: store.get_tail("nope/x", 8),
        lambda: store.size("nope/x"),
    ):
        with pytest.raises(ObjectNotFoundError, match="nope/x") as info:
            call()
        assert info.value.key == "nope/x"


def test_empty_object_and_overwrite(store: ObjectStore) -> None:
    store.put("e", b"")
    assert store.get("e") == b"" and store.size("e") == 0
    assert store.get_tail("e", 24) == b""
    store.put("e", b"second")
    assert store.get("e") == b"second"
    assert store.list() == ["e"]


def test_list_is_sorted_and_filtered(store: ObjectStore) -> None:
    keys = ["segments/002.seg", "segments/001.seg", "segments/sub/x", "other", "segmentsX"]
    for key in keys:
        store.put(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("segments/") == ["segments/001.seg", "segments/002.seg", "segments/sub/x"]
    assert store.list("segments/00") == ["segments/001.seg", "segments/002.seg"]
    assert store.list("segments") == [
        "segments/001.seg",
        "segments/002.seg",
        "segments/sub/x",
        "segmentsX",
    ]
    assert store.list("nothing/") == []


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a//b", "a/", "./a", "a/.tmp-x"])
def test_invalid_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")


# -- local directory -----------------------------------------------------------------------


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_local_put_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("a/b/c.seg", b"x" * 1000)
    store.put("a/b/c.seg", b"y" * 10)
    assert _all_files(tmp_path) == ["a/b/c.seg"]
    # A temp file left by a crash mid-put never shows up as an object.
    (tmp_path / "a" / "b" / ".tmp-d.seg-123").write_bytes(b"half")
    assert store.list() == ["a/b/c.seg"]


def test_local_uncreatable_directory_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")  # a regular file where a directory must go: fails even for root
    store = LocalObjectStore(blocker / "objects")
    with pytest.raises(StorageError, match="segments/1.seg"):
        store.put("segments/1.seg", b"data")
    assert store.list() == []
    assert _all_files(tmp_path) == ["file"]


def test_local_failed_rename_cleans_up(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("a/b", b"inner")
    with pytest.raises(StorageError, match="'a'"):
        store.put("a", b"cannot replace a directory")
    assert store.list() == ["a/b"]
    assert _all_files(tmp_path) == ["a/b"]


def test_local_disk_full_keeps_old_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("seg", b"old" * 100)
    real_write = os.write
    calls = 0

    def write_then_fill(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data)[:7])

    monkeypatch.setattr(objectstore.os, "write", write_then_fill)
    with pytest.raises(StorageError, match="'seg'.*No space left"):
        store.put("seg", b"new" * 100)
    monkeypatch.undo()
    assert store.get("seg") == b"old" * 100
    assert _all_files(tmp_path) == ["seg"]


def test_local_overwrite_is_atomic_for_readers(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    versions = [bytes([i]) * 200_000 for i in range(2)]
    store.put("k", versions[0])
    done = threading.Event()
    seen: list[bytes] = []

    def read() -> None:
        while not done.is_set():
            seen.append(store.get("k"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(30):
            store.put("k", versions[i % 2])
    finally:
        done.set()
        reader.join()
    assert seen and all(data in versions for data in seen)


# -- S3 ------------------------------------------------------------------------------------


def test_s3_prefixes_isolate_stores(s3_store: Callable[..., S3ObjectStore]) -> None:
    a, b = s3_store("cluster-a/"), s3_store("cluster-b")
    a.put("segments/1", b"a")
    b.put("segments/1", b"b")
    assert a.list() == ["segments/1"] == b.list()
    assert (a.get("segments/1"), b.get("segments/1")) == (b"a", b"b")
    root = s3_store()
    assert root.list() == ["cluster-a/segments/1", "cluster-b/segments/1"]


def test_s3_list_paginates(s3_store: Callable[..., S3ObjectStore]) -> None:
    store = s3_store()
    store.list_page_size = 3
    keys = [f"k/{i:02d}" for i in range(10)]  # four pages
    for key in keys:
        store.put(key, b"")
    assert store.list("k/") == keys


def test_s3_missing_bucket_is_storage_error(moto_server: str) -> None:
    store = S3ObjectStore("no-such-bucket-here", endpoint_url=moto_server, **CREDENTIALS)
    with pytest.raises(StorageError, match="segments/9") as info:
        store.put("segments/9", b"x")
    assert not isinstance(info.value, ObjectNotFoundError)
    with pytest.raises(StorageError):
        store.list()
    store.close()


def test_s3_unreachable_endpoint_is_storage_error() -> None:
    store = S3ObjectStore(
        "b",
        endpoint_url="http://127.0.0.1:9",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
        **CREDENTIALS,
    )
    with pytest.raises(StorageError, match="'x'"):
        store.get("x")
    store.close()


# -- open_object_store ---------------------------------------------------------------------


def test_open_object_store(tmp_path: Path, moto_server: str) -> None:
    local = open_object_store(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalObjectStore) and local.root == tmp_path / "objects"
    s3 = open_object_store(
        Settings(object_store="s3://bucket/some/prefix/", s3_endpoint_url=moto_server)
    )
    assert isinstance(s3, S3ObjectStore)
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    s3.close()
    for url in ("gs://bucket/x", "s3://", "/tmp/objects", "s3://b/p?x=1"):
        with pytest.raises(ConfigError):
            open_object_store(Settings(object_store=url))
