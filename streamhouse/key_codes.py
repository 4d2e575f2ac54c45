"""Key codes: one small integer per distinct combination of key values, computed by Arrow.

Grouping, joining on keys and state lookups all start by turning key columns into codes; they
live here, apart from any one of those uses.

>>> import pyarrow as pa
>>> group_codes([pa.array(["a", "b", "a", None]), pa.array([1, 1, 1, 1])]).tolist()
[0, 1, 0, 2]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_I64 = np.int64


def group_codes(columns: list[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """One int64 code per row, equal for rows with equal values in every column (nulls included)."""
    if not columns:
        return np.zeros(0, dtype=_I64)
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, dtype=_I64)
    codes = np.zeros(n, dtype=_I64)
    for column in columns:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        encoded = pc.dictionary_encode(column, null_encoding="encode")
        indices = encoded.indices.to_numpy(zero_copy_only=False).astype(_I64)
        width = len(encoded.dictionary) + 1
        codes = codes * width + indices
        if len(columns) > 1:  # keep codes small so the product never overflows
            _, codes = np.unique(codes, return_inverse=True)
            codes = codes.astype(_I64)
    return codes
