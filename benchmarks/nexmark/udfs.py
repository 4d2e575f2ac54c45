"""The user-defined functions the Nexmark queries call, as vectorized Python (Arrow in and out).

Flink's suite ships them as Java classes (``CREATE FUNCTION count_char AS '...CountChar'``);
here they are registered with :meth:`streamhouse.StreamHouse.register_function` first, and the
query's ``CREATE FUNCTION`` then finds them.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from streamhouse import StreamHouse


def count_char(text: pa.Array, char: pa.Array) -> pa.Array:
    """How often ``char`` occurs in ``text`` (``char`` is the same in every row)."""
    if len(char) == 0:
        return pa.array([], pa.int64())
    counted = pc.count_substring(text, char[0].as_py() or "")
    return pc.cast(counted, pa.int64())


def register(sh: StreamHouse) -> None:
    sh.register_function("count_char", count_char, [pa.string(), pa.string()], pa.int64())
