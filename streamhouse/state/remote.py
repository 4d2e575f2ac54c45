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
import time
from pathlib import Path

from streamhouse.log.metadata import Metadata
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.objectstore import ObjectStore
from streamhouse.state.store import StateStore

log = logging.getLogger(__name__)

PREFIX = "checkpoints"
KEEP = 2


def _epochs(objects: ObjectStore, query: str) -> list[str]:
    """Complete checkpoints of ``query``, oldest first."""
    manifests = [k for k in objects.list(f"{PREFIX}/{query}/") if k.endswith("/MANIFEST")]
    return sorted(k.split("/")[-2] for k in manifests)


def upload_checkpoint(
    store: StateStore, objects: ObjectStore, query: str, checkpoint_id: str | None = None
) -> str:
    """Copy the state of ``query`` to the object store as ``checkpoint_id`` (default: the
    time, and the two newest are kept); returns the checkpoint's id."""
    epoch = checkpoint_id or f"{time.time_ns():020d}"
    with tempfile.TemporaryDirectory(prefix="sh-checkpoint-") as tmp:
        copy = Path(tmp) / "state"
        store.checkpoint(copy)
        files = sorted(p for p in copy.rglob("*") if p.is_file())
        names = []
        for path in files:
            name = path.relative_to(copy).as_posix()
            objects.put(f"{PREFIX}/{query}/{epoch}/{name}", path.read_bytes())
            names.append(name)
    objects.put(f"{PREFIX}/{query}/{epoch}/MANIFEST", json.dumps({"files": names}).encode())
    if checkpoint_id is None:
        for old in _epochs(objects, query)[:-KEEP]:
            for key in objects.list(f"{PREFIX}/{query}/{old}/"):
                objects.delete(key)
    log.info("query %s: checkpoint %s uploaded (%d files)", query, epoch, len(names))
    return epoch


def download_checkpoint(
    objects: ObjectStore, query: str, state_dir: Path, checkpoint_id: str | None = None
) -> str | None:
    """Fill an empty ``state_dir`` with checkpoint ``checkpoint_id`` (default: the newest
    complete one); its id, or None when there is none."""
    if checkpoint_id is None:
        epochs = _epochs(objects, query)
        if not epochs:
            return None
    epoch = checkpoint_id or epochs[-1]
    manifest = json.loads(objects.get(f"{PREFIX}/{query}/{epoch}/MANIFEST"))
    staging = state_dir.with_name(state_dir.name + ".restoring")
    shutil.rmtree(staging, ignore_errors=True)
    for name in manifest["files"]:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(objects.get(f"{PREFIX}/{query}/{epoch}/{name}"))
    staging.replace(state_dir)
    log.info("query %s: resumed from checkpoint %s in the object store", query, epoch)
    return epoch


class LeasedCheckpoints:
    """The checkpoints of one query run under a lease: restore the recorded one, publish new
    ones (upload, then record under the lease: ``FencedError`` once it is lost)."""

    def __init__(self, objects: ObjectStore, metadata: Metadata, query: str, lease: Lease) -> None:
        self.objects = objects
        self.metadata = metadata
        self.query = query
        self.lease = lease
        self.recorded: str | None = None  # the id last recorded (restored or published)

    def restore(self, state_dir: Path) -> str | None:
        """Replace ``state_dir`` by the recorded checkpoint (empty if none); its id."""
        shutil.rmtree(state_dir, ignore_errors=True)
        self.recorded = self.metadata.query_checkpoint(self.query)
        if self.recorded is not None:
            started = time.monotonic()
            download_checkpoint(self.objects, self.query, state_dir, self.recorded)
            log.info(
                "query %s: restored checkpoint %s in %.3f s",
                self.query,
                self.recorded,
                time.monotonic() - started,
            )
        return self.recorded

    def publish(self, store: StateStore) -> str:
        """Upload the state and record it as the one to resume from; older ones are deleted
        but the one recorded before (a reader may be downloading it)."""
        checkpoint_id = f"{self.lease.epoch:012d}-{time.time_ns():020d}"
        upload_checkpoint(store, self.objects, self.query, checkpoint_id)
        self.metadata.record_query_checkpoint(self.lease, self.query, checkpoint_id)
        previous, self.recorded = self.recorded, checkpoint_id
        if previous is not None:
            for key in self.objects.list(f"{PREFIX}/{self.query}/"):
                if key.split("/")[2] < previous:  # checkpoints/<query>/<id>/<file>
                    self.objects.delete(key)
        return checkpoint_id
