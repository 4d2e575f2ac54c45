"""Sequence notes: where the metadata store put the runs of an object written at other offsets.

The metadata store is the source of truth for offsets (it sequences every commit), and an
object's footer holds only the offsets its writer guessed. Where a guess was wrong (another
writer committed to the partition first, or an earlier flush of this writer failed), the
index row holds the assigned offsets and nothing in the object store does. So the writer
records them, before it acknowledges the flush, in a small *sequence note* beside the segment
object: ``sequenced/<object name>.json``, a JSON object ``{"object": key, "runs": [[topic,
partition, written base offset, assigned base offset], ...]}``. A rebuild of lost metadata
(``fsck --rebuild-metadata``) places those runs at their assigned offsets, so it gives back the
offsets producers were acknowledged with; runs without a note are where they were written.

A note is written only when a guess was wrong, so one writer per partition writes none. A note
whose put fails is logged, and the flush acknowledged all the same (its records are committed);
``fsck`` writes it from the index while the metadata is there, and a rebuild without it says
which partitions' offsets it could not place for certain. Retention and
topic deletion delete the notes of the objects they delete.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from streamhouse.errors import ObjectNotFoundError, StorageError
from streamhouse.log.objectstore import ObjectStore
from streamhouse.log.segment import SEGMENT_PREFIX, SegmentEntry

log = logging.getLogger(__name__)

NOTE_PREFIX = "sequenced/"

Placement = dict[tuple[str, int, int], int]
"""(topic, partition, written base offset) -> assigned base offset, for one object."""


def note_key(object_key: str) -> str:
    """The key of the sequence note of the segment object ``object_key``.

    >>> note_key("segments/00000000000000000042-0a1b2c3d.seg")
    'sequenced/00000000000000000042-0a1b2c3d.seg.json'
    """
    return f"{NOTE_PREFIX}{object_key.removeprefix(SEGMENT_PREFIX)}.json"


def encode_note(object_key: str, entries: Sequence[SegmentEntry], bases: Sequence[int]) -> bytes:
    runs = [
        [e.topic, e.partition, e.base_offset, base] for e, base in zip(entries, bases, strict=True)
    ]
    return json.dumps({"object": object_key, "runs": runs}, separators=(",", ":")).encode()


def write_note(
    store: ObjectStore, object_key: str, entries: Sequence[SegmentEntry], bases: Sequence[int]
) -> bool:
    """Put the note of a commit whose ``bases`` differ from its entries' written offsets;
    whether it was written (a failure is logged, not raised: the commit stands)."""
    try:
        store.put(note_key(object_key), encode_note(object_key, entries, bases))
    except StorageError as exc:
        log.error(
            "cannot write the sequence note of %s (a rebuild of lost metadata would not know"
            " where the store put its runs): %s",
            object_key,
            exc,
        )
        return False
    return True


def _read(store: ObjectStore, key: str) -> tuple[str, Placement] | None:
    try:
        note = json.loads(store.get(key))
        placement = {(str(t), int(p), int(w)): int(a) for t, p, w, a in note["runs"]}
        return str(note["object"]), placement
    except ObjectNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("sequence note %s is unreadable, left out: %s", key, exc)
        return None


def read_notes(store: ObjectStore, *, threads: int = 8) -> dict[str, Placement]:
    """Every note in ``store``: segment object key -> where its runs were placed."""
    keys = store.list(NOTE_PREFIX)
    if not keys:
        return {}
    with ThreadPoolExecutor(max(1, min(threads, len(keys))), thread_name_prefix="notes") as pool:
        notes = [note for note in pool.map(lambda k: _read(store, k), keys) if note is not None]
    return dict(notes)


def delete_notes(store: ObjectStore, object_keys: Iterable[str]) -> None:
    """Delete the notes of the segment objects ``object_keys`` (one listing, then a delete per
    note that exists: most objects have none)."""
    wanted = {note_key(key) for key in object_keys}
    if not wanted:
        return
    for key in set(store.list(NOTE_PREFIX)) & wanted:
        store.delete(key)
