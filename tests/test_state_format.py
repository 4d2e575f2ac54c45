"""A query's state directory carries its state format version: new state is stamped with it,
and state of another version (or of an older build, with none) is refused with a clear error
before any of it is read."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import streamhouse
from streamhouse.errors import StateFormatError
from streamhouse.state.store import FORMAT, STATE_FORMAT, ColumnFamily, StateStore
from tests.join_cases import stream_ddl
from tests.window_cases import start_paused

SQL = "SELECT k, COUNT(*) AS n FROM a GROUP BY k"


def _put_raw(path: Path, family: ColumnFamily, key: bytes, value: bytes | None) -> None:
    """Write (or with ``value`` None, delete) one key as another build would have."""
    store = StateStore(path)
    try:
        batch = store.batch()
        if value is None:
            batch.delete(family, key)
        else:
            batch.put(family, key, value)
        store.commit(batch)
    finally:
        store.close()


def test_new_state_is_stamped_and_reopens(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    assert store.get_int(FORMAT) == STATE_FORMAT
    store.close()
    store = StateStore(tmp_path / "state")  # its own format: read back
    assert store.get_int(FORMAT) == STATE_FORMAT
    store.close()


@pytest.mark.parametrize(
    ("stamp", "written"),
    [(STATE_FORMAT + 1, f"state format {STATE_FORMAT + 1}"), (None, "no state format")],
)
def test_a_query_over_state_of_another_format_is_refused(
    tmp_path: Path, stamp: int | None, written: str
) -> None:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql(stream_ddl("a", 0))
        sh.produce("a", [{"k": "x", "t": "2026-01-01T00:00:00", "v": 1}])
        query = start_paused(sh, SQL, "q")
        query.run_until_caught_up()
        state_dir = query.store.path
        query.stop()
        if stamp is None:  # an older build wrote state but no version
            _put_raw(state_dir, ColumnFamily.META, FORMAT, None)
        else:
            _put_raw(state_dir, ColumnFamily.META, FORMAT, struct.pack(">Q", stamp))
        with pytest.raises(StateFormatError) as refused:
            start_paused(sh, SQL, "q")
        message = str(refused.value)
        assert str(state_dir) in message and written in message
        assert f"reads state format {STATE_FORMAT}" in message
        assert "delete the directory" in message and "\n" not in message
