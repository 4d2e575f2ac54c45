"""Incremental aggregates: partial per micro-batch, merged into state, finalized on close.

Each supported SQL aggregate is split into partial columns that merge associatively, computed by
Arrow's C++ hash aggregation (never a per-row or per-group Python loop):

============================  =================================  =========================
aggregate                     partial column(s)                  final value
============================  =================================  =========================
``COUNT(*)``                  ``p{i}`` count of rows             sum of partials
``COUNT(x)``                  ``p{i}`` count of non-null x       sum of partials
``COUNT(DISTINCT x)``         ``p{i}`` list of distinct x        length of merged list
``SUM(x)``                    ``p{i}`` sum                       sum of partials
``MIN(x)`` / ``MAX(x)``       ``p{i}`` min / max                 min / max of partials
``AVG(x)``                    ``p{i}`` sum, ``p{i}_n`` count     sum / count
============================  =================================  =========================

A partial table has the group key columns, ``window_start`` and ``window_end`` (int64 epoch
milliseconds) and the partial columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.key_codes import group_codes
from streamhouse.sql.aggregates import AggregateCall, AggregateFunction

WINDOW_BOUNDS = ["window_start", "window_end"]
_ONLY_VALID = pc.CountOptions(mode="only_valid")
_ALL = pc.CountOptions(mode="all")


def partial(table: pa.Table, keys: list[str], calls: list[AggregateCall]) -> pa.Table:
    """Partial aggregates of ``table`` grouped by ``keys`` (which include the window bounds)."""
    specs: list[tuple] = []
    names: list[str] = []
    for i, call in enumerate(calls):
        if call.func is AggregateFunction.COUNT_ALL:
            specs.append((keys[0], "count", _ALL))
            names.append(f"p{i}")
        elif call.func is AggregateFunction.COUNT:
            specs.append((call.arg, "count", _ONLY_VALID))
            names.append(f"p{i}")
        elif call.func is AggregateFunction.COUNT_DISTINCT:
            specs.append((call.arg, "distinct", _ONLY_VALID))
            names.append(f"p{i}")
        elif call.func in (AggregateFunction.SUM, AggregateFunction.MIN, AggregateFunction.MAX):
            specs.append((call.arg, call.func))
            names.append(f"p{i}")
        elif call.func is AggregateFunction.AVG:
            specs.append((call.arg, "sum"))
            names.append(f"p{i}")
            specs.append((call.arg, "count", _ONLY_VALID))
            names.append(f"p{i}_n")
    grouped, aggregated = _group(table, keys, specs)
    columns = {k: grouped[k] for k in keys}
    for name, column in zip(names, aggregated, strict=True):
        if name.endswith("_n") or column.type == pa.null():
            column = column.cast(pa.int64()) if column.type == pa.null() else column
        columns[name] = column
    return pa.table(columns)


def merge(tables: list[pa.Table], keys: list[str], calls: list[AggregateCall]) -> pa.Table:
    """Merge partial tables (same schema) into one row per key."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    combined = pa.concat_tables(tables, promote_options="permissive")
    return merge_table(combined, keys, calls)


def merge_table(combined: pa.Table, keys: list[str], calls: list[AggregateCall]) -> pa.Table:
    codes = group_codes([combined[k] for k in keys])
    firsts = np.unique(codes, return_index=True)[1]
    combined = combined.append_column("__g", pa.array(codes))
    specs: list[tuple] = []
    names: list[str] = []
    distinct: list[str] = []
    for i, call in enumerate(calls):
        name = f"p{i}"
        if call.func in (
            AggregateFunction.COUNT_ALL,
            AggregateFunction.COUNT,
            AggregateFunction.SUM,
            AggregateFunction.AVG,
        ):
            specs.append((name, "sum"))
            names.append(name)
            if call.func is AggregateFunction.AVG:
                specs.append((f"{name}_n", "sum"))
                names.append(f"{name}_n")
        elif call.func in (AggregateFunction.MIN, AggregateFunction.MAX):
            specs.append((name, call.func))
            names.append(name)
        else:
            distinct.append(name)
    grouped, aggregated = _group(combined, ["__g"], specs)
    order = pc.sort_indices(grouped["__g"])
    aggregated = [column.take(order) for column in aggregated]
    key_rows = combined.take(pa.array(firsts))  # np.unique returns codes sorted: aligned with order
    columns = {k: key_rows[k] for k in keys}
    for name, column in zip(names, aggregated, strict=True):
        columns[name] = column
    for name in distinct:
        lists = combined[name].combine_chunks()
        parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        flat = pa.table({"__g": pa.array(codes[parents]), "v": pc.list_flatten(lists)})
        merged = flat.group_by(["__g"], use_threads=False).aggregate([("v", "distinct")])
        merged = merged.take(pc.sort_indices(merged["__g"]))
        # Groups whose lists were all empty are missing from ``merged``: fill them in.
        have = merged["__g"].to_numpy()
        values = merged["v_distinct"]
        if len(have) != len(firsts):
            index = np.searchsorted(have, np.arange(len(firsts)))
            present = np.isin(np.arange(len(firsts)), have)
            filled = [
                values[int(j)].as_py() if ok else [] for j, ok in zip(index, present, strict=True)
            ]
            values = pa.array(filled, type=lists.type)
        columns[name] = values
    ordered = {k: columns[k] for k in keys}
    for i, call in enumerate(calls):
        ordered[f"p{i}"] = columns[f"p{i}"]
        if call.func is AggregateFunction.AVG:
            ordered[f"p{i}_n"] = columns[f"p{i}_n"]
    return pa.table(ordered)


def _merge_specs(calls: list[AggregateCall]) -> list[tuple[str, str]] | None:
    """(partial column, merge function) of every partial column, or None if a call's partials
    do not merge by a plain hash aggregate (COUNT(DISTINCT), merged as lists)."""
    specs: list[tuple[str, str]] = []
    for i, call in enumerate(calls):
        if call.func in (
            AggregateFunction.COUNT_ALL,
            AggregateFunction.COUNT,
            AggregateFunction.SUM,
        ):
            specs.append((f"p{i}", "sum"))
        elif call.func is AggregateFunction.AVG:
            specs += [(f"p{i}", "sum"), (f"p{i}_n", "sum")]
        elif call.func in (AggregateFunction.MIN, AggregateFunction.MAX):
            specs.append((f"p{i}", call.func))
        else:
            return None
    return specs


def combine(
    tables: list[pa.Table], group_keys: list[str], keys: list[str], calls: list[AggregateCall]
) -> pa.Table:
    """Merge partial tables into one row per ``group_keys`` value, by Arrow's hash aggregation.

    ``keys`` are the table's key columns in order (``group_keys`` and any columns constant
    over the tables, such as the bounds of one window): the result has them, then the partial
    columns. Rows come in order of each group's first appearance, so equal inputs merge to
    equal outputs. Unlike :func:`merge_table`, nothing is sorted.
    """
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.table({})
    specs = _merge_specs(calls)
    combined = (
        tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    )
    if specs is None or not group_keys:
        return merge_table(combined, keys, calls)
    grouped, aggregated = _group(combined, group_keys, specs)
    rows = grouped.num_rows
    columns = {}
    for k in keys:
        if k in group_keys:
            columns[k] = grouped[k]
        else:  # constant over the inputs: its first value, repeated
            columns[k] = pa.repeat(combined[k][0], rows) if rows else combined[k][:0]
    for (name, _), column in zip(specs, aggregated, strict=True):
        columns[name] = column
    return pa.table(columns)


def _group(
    table: pa.Table, keys: list[str], specs: list[tuple]
) -> tuple[pa.Table, list[pa.ChunkedArray]]:
    """Hash-aggregate ``specs`` by ``keys``; the aggregate columns come back in spec order.

    Each spec reads its own (zero-copy) input column, so two aggregates of one column with the
    same function never collide in Arrow's ``<column>_<function>`` output names.
    """
    inputs = {k: table[k] for k in keys}
    renamed = []
    for j, spec in enumerate(specs):
        inputs[f"in{j}"] = table[spec[0]]
        renamed.append((f"in{j}", *spec[1:]))
    grouped = pa.table(inputs).group_by(keys, use_threads=False).aggregate(renamed)
    outputs = [grouped[f"in{j}_{spec[1]}"] for j, spec in enumerate(renamed)]
    return grouped, outputs


def finalize(table: pa.Table, keys: list[str], calls: list[AggregateCall]) -> pa.Table:
    """Final aggregate values: the key columns and one column per call, named ``call.output``."""
    columns = {k: table[k] for k in keys}
    for i, call in enumerate(calls):
        value = table[f"p{i}"]
        if call.func is AggregateFunction.AVG:
            count = table[f"p{i}_n"]
            total = pc.cast(value, pa.float64())
            value = pc.if_else(
                pc.equal(count, 0),
                pa.scalar(None, pa.float64()),
                pc.divide(total, pc.cast(count, pa.float64())),
            )
        elif call.func is AggregateFunction.COUNT_DISTINCT:
            value = pc.cast(pc.list_value_length(value), pa.int64())
        elif call.func in (AggregateFunction.COUNT_ALL, AggregateFunction.COUNT):
            value = pc.fill_null(value, 0)
        columns[call.output] = value
    return pa.table(columns)
