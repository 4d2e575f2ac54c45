"""Query checkpoints in the object store, so that another agent can resume a query.

A checkpoint is RocksDB's own consistent copy of the state (hard links, taken between two
micro-batches, so state, source offsets and sink progress agree), uploaded file by file under
``checkpoints/<query>/<epoch>/`` with a ``MANIFEST`` written last: a checkpoint without its
manifest is incomplete and ignored. The two newest checkpoints are kept.

An agent starting a query with no local state downloads the newest complete checkpoint first,
and the query resumes from it exactly once (its sink skips what it wrote after that point).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from streamhouse.log.objectstore import ObjectStore
from streamhouse.state.store import StateStore

log = logging.getLogger(__name__)

PREFIX = "checkpoints"
KEEP = 2


def _epochs(objects: ObjectStore, query: str) -> list[str]:
    """Complete checkpoints of ``query``, oldest first."""
    manifests = [k for k in objects.list(f"{PREFIX}/{query}/") if k.endswith("/MANIFEST")]
    return sorted(k.split("/")[-2] for k in manifests)


def upload_checkpoint(store: StateStore, objects: ObjectStore, query: str) -> str:
    """Copy the state of ``query`` to the object store; returns the checkpoint's epoch."""
    epoch = f"{time.time_ns():020d}"
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
    for old in _epochs(objects, query)[:-KEEP]:
        for key in objects.list(f"{PREFIX}/{query}/{old}/"):
            objects.delete(key)
    log.info("query %s: checkpoint %s uploaded (%d files)", query, epoch, len(names))
    return epoch


def download_checkpoint(objects: ObjectStore, query: str, state_dir: Path) -> str | None:
    """Fill an empty ``state_dir`` with the newest complete checkpoint; its epoch, or None."""
    epochs = _epochs(objects, query)
    if not epochs:
        return None
    epoch = epochs[-1]
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
