"""Where segment objects live: a local directory or an S3 bucket, behind one small interface.

Keys are relative, "/"-separated paths such as ``segments/00000000000000000042-1a2b3c4d.seg``.
A key has no empty, ``.`` or ``..`` component, does not start with ``/`` and has no
component starting with ``.tmp-`` (the local store's temporary files); both stores reject
other keys with :class:`ValueError`, so a key that works on one works on the other.

Failures surface as :class:`~streamhouse.errors.StorageError` naming the key; a missing
object as :class:`~streamhouse.errors.ObjectNotFoundError`.

>>> import tempfile
>>> store = LocalObjectStore(Path(tempfile.mkdtemp()))
>>> store.put("segments/a.seg", b"hello world")
>>> store.get("segments/a.seg", 6), store.get_tail("segments/a.seg", 5), store.list()
(b'world', b'world', ['segments/a.seg'])
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from streamhouse.config import Settings
from streamhouse.errors import ConfigError, ObjectNotFoundError, StorageError
from streamhouse.log.stage_times import StageTimes

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"

__all__ = [
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "S3ObjectStore",
    "open_object_store",
    "validate_key",
]


def validate_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`ValueError`."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", "..") or part.startswith(TEMP_PREFIX):
            raise ValueError(f"invalid object key {key!r}")
    return key


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < 0):
        raise ValueError(f"byte range [{start}, {end}) must not be negative")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A listed object: its key, size in bytes and last-modified time (seconds since the epoch)."""

    key: str
    size: int
    modified: float


class ObjectStore(ABC):
    """Immutable objects under string keys; ``put`` is durable and atomic when it returns."""

    read_parallelism = 2
    """Whole-object reads worth running at once (e.g. by ``fsck``): more for a store whose
    reads wait on the network than for one whose reads are page-cache copies."""

    times: StageTimes
    """Where ``put`` spends its time, by stage (see :mod:`~streamhouse.log.stage_times`)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there; durable on return."""

    @abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """The bytes ``[start, end)`` of the object (clamped to its size; ``end=None``: to its end)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; an absent key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes."""

    @abstractmethod
    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key, with size and mtime."""

    def get_tail(self, key: str, length: int) -> bytes:
        """The last ``length`` bytes of the object (all of it if shorter).

        The default costs ``size`` plus ``get``; stores override it with one request.
        """
        if length < 0:
            raise ValueError(f"tail length {length} must not be negative")
        total = self.size(key)
        return self.get(key, max(0, total - length), total)

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release connections; the store is unusable afterwards."""

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``.

    ``put`` writes the whole object to a temp file, renames it to a new key, then fsyncs the
    file and its directory at once (the directory on a helper thread) and returns when both
    are done: the two waits overlap instead of adding up. An object that replaces another is
    fsynced before its rename, so the old one stays whole until the new one is durable. A process killed at any point leaves
    either the temp file or the whole object (the rename follows the last write); a machine
    that loses power before both fsyncs end may keep the name with part of the data, under a
    key no index row names yet (``put`` had not returned), which ``fsck`` reports as damaged.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.times = StageTimes()
        self._dir_syncer: ThreadPoolExecutor | None = None
        self._syncer_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex}")
        try:
            self._make_dirs(path.parent)
            clock = time.perf_counter
            started = clock()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if path.exists():  # replacing: the old object stays whole until this is durable
                    os.fsync(fd)
                    os.replace(tmp, path)
                    renamed = clock()
                    dir_synced = self._syncer().submit(_timed_fsync_dir, path.parent)
                else:
                    os.replace(tmp, path)
                    renamed = clock()
                    dir_synced = self._syncer().submit(_timed_fsync_dir, path.parent)
                    os.fsync(fd)
                synced = clock()
            finally:
                os.close(fd)
            dir_done = dir_synced.result()
            times = self.times
            times.add("object write + rename", renamed - started)
            times.add("object fsync", synced - renamed)
            times.add("dir fsync (beside it)", dir_done - renamed)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(f"cannot write object {key!r} under {self.root}: {exc}") from exc
        logger.debug("put %s (%d bytes)", key, len(data))

    def _syncer(self) -> ThreadPoolExecutor:
        with self._syncer_lock:
            if self._dir_syncer is None:
                self._dir_syncer = ThreadPoolExecutor(4, thread_name_prefix="streamhouse-dirsync")
            return self._dir_syncer

    def close(self) -> None:
        with self._syncer_lock:
            syncer, self._dir_syncer = self._dir_syncer, None
        if syncer is not None:
            syncer.shutdown()

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and its missing parents, fsyncing each new entry's parent."""
        missing: list[Path] = []
        d = directory
        while not d.is_dir():
            missing.append(d)
            if d.parent == d:
                break
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise
            _fsync_dir(d.parent)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        _check_range(start, end)
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                if start:
                    fh.seek(start)
                if end is None:
                    return fh.read()
                return fh.read(max(0, end - start))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key, f"under {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read object {key!r} under {self.root}: {exc}") from exc

    def get_tail(self, key: str, length: int) -> bytes:
        if length < 0:
            raise ValueError(f"tail length {length} must not be negative")
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                total = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, total - length))
                return fh.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key, f"under {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read object {key!r} under {self.root}: {exc}") from exc

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"cannot delete object {key!r} under {self.root}: {exc}") from exc
        logger.debug("deleted %s", key)

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the deepest directory the prefix pins down.
        head, _, _ = prefix.rpartition("/")
        if head and any(p in ("", ".", "..") for p in head.split("/")):
            return []
        top = self.root / head if head else self.root
        if not top.is_dir():
            return []
        keys: list[str] = []

        def fail(exc: OSError) -> None:
            raise StorageError(f"cannot list objects with prefix {prefix!r}: {exc}") from exc

        for dirpath, dirnames, filenames in os.walk(top, onerror=fail):
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
            rel = os.path.relpath(dirpath, self.root)
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                dirnames[:] = []
                continue
            for name in filenames:
                key = base + name
                if not name.startswith(TEMP_PREFIX) and key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return keys

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        infos = []
        for key in self.list(prefix):
            try:
                st = os.stat(self.root / key)
            except FileNotFoundError:  # deleted since it was listed
                continue
            except OSError as exc:
                raise StorageError(f"cannot stat object {key!r} under {self.root}: {exc}") from exc
            infos.append(ObjectInfo(key, st.st_size, st.st_mtime))
        return infos

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(key, f"under {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot stat object {key!r} under {self.root}: {exc}") from exc
        if not path.is_file():
            raise ObjectNotFoundError(key, f"under {self.root}")
        return st.st_size


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _timed_fsync_dir(directory: Path) -> float:
    """:func:`_fsync_dir`; the ``time.perf_counter()`` when it ended."""
    _fsync_dir(directory)
    return time.perf_counter()


_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3ObjectStore(ObjectStore):
    """Objects in an S3 (or S3-compatible) bucket under ``prefix``; ``put`` is one PutObject."""

    list_page_size = 1000  # keys per ListObjectsV2 request
    read_parallelism = 16  # a GET waits on a round trip far longer than it uses the CPU

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        create_bucket: bool = False,
        max_attempts: int = 5,
        **client_kwargs: Any,
    ) -> None:
        import boto3  # imported here: it takes 0.3 s, and the default store is local
        from botocore.config import Config

        if not bucket:
            raise ConfigError("S3 object store needs a bucket name")
        self.bucket = bucket
        self.times = StageTimes()
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        client_kwargs.setdefault(
            "config",
            Config(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )
        try:
            self._client = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region, **client_kwargs
            )
        except Exception as exc:  # botocore raises many unrelated types here
            raise StorageError(f"cannot create S3 client for bucket {bucket!r}: {exc}") from exc
        if create_bucket:
            self._create_bucket(region)

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.bucket!r}, {self.prefix!r})"

    def _create_bucket(self, region: str) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"cannot create bucket {self.bucket!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot create bucket {self.bucket!r}: {exc}") from exc

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _fail(self, verb: str, key: str, exc: Exception) -> StorageError:
        if isinstance(exc, ClientError) and _code(exc) in _NOT_FOUND_CODES:
            return ObjectNotFoundError(key, f"in s3://{self.bucket}/{self.prefix}")
        return StorageError(
            f"cannot {verb} object {key!r} in s3://{self.bucket}/{self.prefix}: {exc}"
        )

    def put(self, key: str, data: bytes) -> None:
        started = time.perf_counter()
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("write", key, exc) from exc
        self.times.add("object PUT", time.perf_counter() - started)
        logger.debug("put %s (%d bytes)", key, len(data))

    def _get(self, key: str, byte_range: str | None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if byte_range:
            kwargs["Range"] = byte_range
        try:
            response = self._client.get_object(**kwargs)
            with response["Body"] as body:
                return body.read()
        except ClientError as exc:
            if _code(exc) == "InvalidRange":  # range starts past the end: the object exists
                return b""
            raise self._fail("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from exc

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        _check_range(start, end)
        if end is not None and end <= start:
            self.size(key)  # an empty range still reports a missing object
            return b""
        if end is None:
            return self._get(key, f"bytes={start}-" if start else None)
        return self._get(key, f"bytes={start}-{end - 1}")

    def get_tail(self, key: str, length: int) -> bytes:
        if length < 0:
            raise ValueError(f"tail length {length} must not be negative")
        if length == 0:
            self.size(key)
            return b""
        return self._get(key, f"bytes=-{length}")

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            if isinstance(exc, ClientError) and _code(exc) in _NOT_FOUND_CODES:
                return
            raise self._fail("delete", key, exc) from exc
        logger.debug("deleted %s", key)

    def list(self, prefix: str = "") -> list[str]:
        return [info.key for info in self.list_info(prefix)]

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        infos: list[ObjectInfo] = []
        cut = len(self.prefix)
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            ):
                infos.extend(
                    ObjectInfo(obj["Key"][cut:], int(obj["Size"]), obj["LastModified"].timestamp())
                    for obj in page.get("Contents", ())
                )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(
                f"cannot list objects with prefix {prefix!r} in s3://{self.bucket}/{self.prefix}: {exc}"
            ) from exc
        infos.sort(key=lambda info: info.key)
        return infos

    def size(self, key: str) -> int:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("stat", key, exc) from exc
        return int(response["ContentLength"])

    def close(self) -> None:
        self._client.close()


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def open_object_store(settings: Settings) -> ObjectStore:
    """The store ``settings`` name: ``<data_dir>/objects`` by default, or ``s3://bucket/prefix``."""
    url = settings.object_store
    if url is None or url == "":
        return LocalObjectStore(Path(settings.data_dir) / "objects")
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigError(f"object_store must be unset or s3://bucket/prefix, got {url!r}")
    return S3ObjectStore(
        parsed.netloc,
        parsed.path.strip("/"),
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        max_attempts=settings.s3_max_attempts,
    )
