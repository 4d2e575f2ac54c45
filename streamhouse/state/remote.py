"""Query checkpoints in the object store, so that another agent can resume a query.

A checkpoint is RocksDB's own consistent copy of the state (hard links, taken between two
micro-batches, so state, source offsets and sink progress agree), uploaded file by file under
``checkpoints/<query>/<checkpoint id>/`` with a ``MANIFEST`` written last: a checkpoint
without its manifest is incomplete and ignored.

Two ways to pick the checkpoint a query resumes from:

- ``checkpoint.object-store`` (one process): the newest complete one; the two newest are kept.
- :class:`LeasedCheckpoints` (``serve`` agents sharing a PostgreSQL store): the one recorded in
  the metadata store under the query's lease (``query_checkpoints``). Ids start with the
  lease's epoch, so a holder fenced after it uploaded one is never resumed from; every
  checkpoint older than the one recorded before the newest is deleted.

An agent starting a query downloads the checkpoint first, and the query resumes from it
exactly once (its sink skips what it wrote after that point).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from streamhouse.log.metadata import Metadata
from streamhouse.log.metadata.checkpoints import QueryCheckpoint
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.objectstore import ObjectStore
from streamhouse.state.store import StateStore

log = logging.getLogger(__name__)

PREFIX = "checkpoints"
KEEP = 2
TRANSFERS = 8
"""Files of one checkpoint put or got at once."""
SST = "sst"
"""Under ``checkpoints/<query>/sst/``: SST files shared by the checkpoints of a leased query."""


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _transfers() -> ThreadPoolExecutor:
    """The threads that put and get a checkpoint's files, :data:`TRANSFERS` at a time (S3
    requests wait on the network, local puts on fsync)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(TRANSFERS, thread_name_prefix="streamhouse-checkpoint")
        return _pool


def _epochs(objects: ObjectStore, query: str) -> list[str]:
    """Complete checkpoints of ``query``, oldest first."""
    manifests = [k for k in objects.list(f"{PREFIX}/{query}/") if k.endswith("/MANIFEST")]
    return sorted(k.split("/")[-2] for k in manifests)


def _upload(
    store: StateStore,
    objects: ObjectStore,
    query: str,
    checkpoint_id: str,
    reuse: dict[str, str] | None,
) -> dict[str, str]:
    """Upload a checkpoint of ``store`` as ``checkpoint_id``: its manifest, file name -> object
    key. Files named in ``reuse`` (SST files, which RocksDB never changes once written, already
    in the object store) are not uploaded again; other SST files go under ``sst/``, to be
    reused by later checkpoints, the rest (RocksDB's MANIFEST, OPTIONS, WAL) under the
    checkpoint's own prefix. With ``reuse`` None, every file goes under that prefix."""
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sh-checkpoint-") as tmp:
        copy = Path(tmp) / "state"
        store.checkpoint(copy)
        uploads: list[tuple[str, Path]] = []
        for path in sorted(p for p in copy.rglob("*") if p.is_file()):
            name = path.relative_to(copy).as_posix()
            if reuse is not None and name in reuse:
                files[name] = reuse[name]
                continue
            shared = reuse is not None and name.endswith(".sst") and "/" not in name
            key = f"{PREFIX}/{query}/{SST}/{checkpoint_id}-{name}" if shared else None
            files[name] = key or f"{PREFIX}/{query}/{checkpoint_id}/{name}"
            uploads.append((files[name], path))
        for _ in _transfers().map(lambda item: objects.put(item[0], item[1].read_bytes()), uploads):
            pass  # every put done (or its error raised) before the manifest
    objects.put(f"{PREFIX}/{query}/{checkpoint_id}/MANIFEST", json.dumps({"files": files}).encode())
    return files


def _manifest(objects: ObjectStore, query: str, checkpoint_id: str) -> dict[str, str]:
    """File name -> object key of a checkpoint (older manifests list names under its prefix)."""
    files = json.loads(objects.get(f"{PREFIX}/{query}/{checkpoint_id}/MANIFEST"))["files"]
    if isinstance(files, list):
        return {name: f"{PREFIX}/{query}/{checkpoint_id}/{name}" for name in files}
    return dict(files)


def upload_checkpoint(
    store: StateStore, objects: ObjectStore, query: str, checkpoint_id: str | None = None
) -> str:
    """Copy the state of ``query`` to the object store as ``checkpoint_id`` (default: the
    time, and the two newest are kept); returns the checkpoint's id."""
    epoch = checkpoint_id or f"{time.time_ns():020d}"
    files = _upload(store, objects, query, epoch, None)
    if checkpoint_id is None:
        for old in _epochs(objects, query)[:-KEEP]:
            for key in objects.list(f"{PREFIX}/{query}/{old}/"):
                objects.delete(key)
    log.info("query %s: checkpoint %s uploaded (%d files)", query, epoch, len(files))
    return epoch


def download_checkpoint(
    objects: ObjectStore, query: str, state_dir: Path, checkpoint_id: str | None = None
) -> dict[str, str] | None:
    """Fill an empty ``state_dir`` with checkpoint ``checkpoint_id`` (default: the newest
    complete one); its manifest, or None when there is none."""
    if checkpoint_id is None:
        epochs = _epochs(objects, query)
        if not epochs:
            return None
    epoch = checkpoint_id or epochs[-1]
    files = _manifest(objects, query, epoch)
    staging = state_dir.with_name(state_dir.name + ".restoring")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    def fetch(item: tuple[str, str]) -> None:
        target = staging / item[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(objects.get(item[1]))

    for _ in _transfers().map(fetch, files.items()):
        pass
    staging.replace(state_dir)
    log.info("query %s: resumed from checkpoint %s in the object store", query, epoch)
    return files


class LeasedCheckpoints:
    """The checkpoints of one query run under a lease: restore the recorded one, publish new
    ones (upload, then record under the lease: ``FencedError`` once it is lost).

    Uploads are incremental: an SST file in the object store already (uploaded by an earlier
    checkpoint of this holder, or part of the one it restored) is named by the new manifest,
    not copied again. After a checkpoint is recorded, every object that neither it nor the one
    recorded before names is deleted, except SST files of a later epoch (another holder's)."""

    def __init__(self, objects: ObjectStore, metadata: Metadata, query: str, lease: Lease) -> None:
        self.objects = objects
        self.metadata = metadata
        self.query = query
        self.lease = lease
        self.recorded: str | None = None  # the id last recorded (restored or published)
        self._files: dict[str, str] = {}  # manifest of the recorded checkpoint
        self._before: set[str] = set()  # object keys of the one recorded before it

    def restore(self, state_dir: Path) -> str | None:
        """Replace ``state_dir`` by the recorded checkpoint (empty if none); its id."""
        shutil.rmtree(state_dir, ignore_errors=True)
        self.recorded = self.metadata.query_checkpoint(self.query)
        if self.recorded is not None:
            started = time.monotonic()
            files = download_checkpoint(self.objects, self.query, state_dir, self.recorded)
            self._files = files or {}
            log.info(
                "query %s: restored checkpoint %s (%d files) in %.3f s",
                self.query,
                self.recorded,
                len(self._files),
                time.monotonic() - started,
            )
        return self.recorded

    def publish(self, store: StateStore, positions: Mapping[str, Mapping[int, int]]) -> str:
        """Upload the state and record it as the one to resume from, with the source
        ``positions`` it holds (topic -> partition -> offset); delete what neither it nor the
        one recorded before needs (a reader may be downloading that one)."""
        epoch = f"{self.lease.epoch:012d}"
        checkpoint_id = f"{epoch}-{time.time_ns():020d}"
        reuse = {name: key for name, key in self._files.items() if name.endswith(".sst")}
        files = _upload(store, self.objects, self.query, checkpoint_id, reuse)
        recorded = QueryCheckpoint(self.query, checkpoint_id, positions=positions)
        self.metadata.record_query_checkpoint(self.lease, recorded)
        previous, self.recorded = self.recorded, checkpoint_id
        self._before, self._files = set(self._files.values()), files
        kept = self._before | set(files.values())
        uploaded = len(set(files.values()) - set(reuse.values()))
        log.debug("query %s: checkpoint %s: %d files uploaded", self.query, checkpoint_id, uploaded)
        for key in self.objects.list(f"{PREFIX}/{self.query}/"):
            part = key.split("/")[2]  # checkpoints/<query>/<id or sst>/...
            if key in kept:
                continue
            if part == SST:
                if key.split("/")[3][: len(epoch)] <= epoch:
                    self.objects.delete(key)
            elif previous is not None and part < previous:
                self.objects.delete(key)
        return checkpoint_id
