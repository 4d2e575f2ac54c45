"""Compaction notes: which runs a compacted object replaced, for a rebuild of lost metadata.

A compacted object holds the records of runs that other objects hold too until those are
deleted after the grace period (or for good, if a compactor was killed between writing the
object and its index swap: then the compacted object is the orphan). The footers alone cannot
tell a compacted run from a run written with the same offsets by another writer, so a rebuild
(``fsck --rebuild-metadata``) would index both copies. The compactor therefore puts, before
its swap, ``compacted/<object name>.json``: ``{"object": key, "replaces": [[object key, topic,
partition], ...]}``, and a rebuild leaves out every run a note of an *existing* object names
(an object's run of a partition is one run, so the triple names it exactly). The compacted
run holds the same records at the same offsets (or, for key compaction, the latest of each
key), so leaving the old ones out loses nothing; a note whose object is gone (an orphan
deleted by ``fsck --delete-orphans``) is ignored. Retention deletes a note with its object.

>>> note_key("segments/00000000000000000042-0a1b2c3d.seg")
'compacted/00000000000000000042-0a1b2c3d.seg.json'
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Sequence

from streamhouse.errors import ObjectNotFoundError
from streamhouse.log.metadata import SegmentRow
from streamhouse.log.objectstore import ObjectStore
from streamhouse.log.segment import SEGMENT_PREFIX

__all__ = ["NOTE_PREFIX", "delete_notes", "note_key", "replaced_runs", "write_note"]

log = logging.getLogger(__name__)

NOTE_PREFIX = "compacted/"

Run = tuple[str, str, int]
"""(object key, topic, partition): one run of one object."""


def note_key(object_key: str) -> str:
    """The key of the compaction note of the compacted object ``object_key``."""
    return f"{NOTE_PREFIX}{object_key.removeprefix(SEGMENT_PREFIX)}.json"


def write_note(store: ObjectStore, object_key: str, replaced: Sequence[SegmentRow]) -> None:
    """Put the note of ``object_key``, which replaces the runs of ``replaced``."""
    runs = [[r.object_key, r.topic, r.partition] for r in replaced]
    body = json.dumps({"object": object_key, "replaces": runs}, separators=(",", ":"))
    store.put(note_key(object_key), body.encode())


def replaced_runs(store: ObjectStore, existing: Collection[str]) -> set[Run]:
    """The runs that the notes of the objects in ``existing`` say they replaced."""
    runs: set[Run] = set()
    for key in store.list(NOTE_PREFIX):
        try:
            note = json.loads(store.get(key))
            if note["object"] in existing:
                runs.update((str(k), str(t), int(p)) for k, t, p in note["replaces"])
        except ObjectNotFoundError:
            continue
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("compaction note %s is unreadable, left out: %s", key, exc)
    return runs


def delete_notes(store: ObjectStore, object_keys: Iterable[str]) -> None:
    """Delete the notes of the objects ``object_keys`` (one listing)."""
    wanted = {note_key(key) for key in object_keys}
    if wanted:
        for key in set(store.list(NOTE_PREFIX)) & wanted:
            store.delete(key)
