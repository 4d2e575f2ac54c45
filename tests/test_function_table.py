"""Every function in Flink's documentation works with Flink's semantics or is refused by name.

The cases (``tests/fixtures/flink_function_cases.tsv``) hold values worked out by hand from
Flink's documentation. Each runs bounded over its own rows of one stream; a sample of them runs
continuously too (micro-batches of 97 records, with a restart). ``docs/functions.md`` is
generated from :mod:`streamhouse.sql.function_table`; a test checks it is current.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from window_cases import continuous_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError
from streamhouse.sql.function_table import FUNCTIONS, page, share_working

ROOT = Path(__file__).parent.parent
CASES = Path(__file__).parent / "fixtures" / "flink_function_cases.tsv"
COLUMNS = "n INT, r INT, s STRING, t STRING, i INT, j INT, d DOUBLE, ts TIMESTAMP(3), b BOOLEAN, arr ARRAY<INT>, rw ROW<x INT, y STRING>"


@dataclass(frozen=True)
class Case:
    n: int
    function: str
    kind: str  # row, agg or query
    sql: str
    rows: list[dict[str, Any]]
    expected: list[Any]

    def query(self) -> str:
        rows = f"(SELECT * FROM fn WHERE n = {self.n}) AS x"
        if self.kind == "row":
            return f"SELECT r, {self.sql} AS v FROM fn WHERE n = {self.n} ORDER BY r"
        if self.kind == "agg":
            return f"SELECT {self.sql} AS v FROM fn WHERE n = {self.n}"
        return self.sql.replace("{rows}", rows)


def load_cases() -> list[Case]:
    cases = []
    for line in CASES.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        function, kind, sql, rows, expected = line.split("\t")
        parsed = [{}] if rows == "-" else json.loads(rows)
        cases.append(Case(len(cases), function, kind, sql, parsed, json.loads(expected)))
    return cases


ALL_CASES = load_cases()


def normalized(value: Any) -> Any:
    """A result value as the fixture writes it: timestamps as text (no trailing zeros in the
    fraction), maps as objects."""
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
        fraction = f"{value.microsecond:06d}".rstrip("0")
        return f"{text}.{fraction}" if fraction else text
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return {k: normalized(v) for k, v in value}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    return value


def same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    return type(got) is type(want) and got == want if isinstance(want, bool) else got == want


@pytest.fixture(scope="module")
def sh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path_factory.mktemp("functions") / "data", linger_ms=1) as conn:
        conn.sql(f"CREATE STREAM fn ({COLUMNS}) WITH (topic = 'fn', format = 'json')")
        rows = [{"n": c.n, "r": r, **row} for c in ALL_CASES for r, row in enumerate(c.rows)]
        conn.produce("fn", rows)
        yield conn


@pytest.mark.parametrize("case", ALL_CASES, ids=[f"{c.n}:{c.function}" for c in ALL_CASES])
def test_function_gives_flinks_answer_bounded(sh: StreamHouse, case: Case) -> None:
    column = sh.sql(case.query()).to_arrow_table().column("v")
    got = normalized(column.to_pylist())
    if pa.types.is_map(column.type):  # an empty map reads back as []
        got = [{} if value == [] else value for value in got]
    assert same(got, case.expected), f"{case.sql}: {got!r}, Flink gives {case.expected!r}"


# String- and number-valued row cases, run continuously: each through its own query.
CONTINUOUS = [
    "CONCAT",
    "REGEXP_REPLACE",
    "JSON_VALUE",
    "JSON_OBJECT",
    "TIMESTAMPDIFF",
    "FROM_UNIXTIME",
    "UNIX_TIMESTAMP",
    "PARSE_URL",
    "SPLIT_INDEX",
    "SUBSTRING",
    "CASE value WHEN",
    "IS JSON",
    "OVERLAPS",
    "ARRAY_POSITION",
]


@pytest.mark.parametrize("function", CONTINUOUS)
def test_function_gives_flinks_answer_continuously(sh: StreamHouse, function: str) -> None:
    case = next(c for c in ALL_CASES if c.function == function and c.kind == "row")
    sql = f"SELECT r AS k, {case.sql} AS v FROM fn WHERE n = {case.n}"
    name = f"fn_{case.n}"
    rows = continuous_rows(sh, sql, name, batch=97)
    got = [row["v"] for row in sorted(rows, key=lambda row: row["k"])]
    assert same(got, case.expected), f"{case.sql}: {got!r}, Flink gives {case.expected!r}"


def test_every_working_function_has_a_case_and_every_case_a_working_function() -> None:
    working = {f.name for f in FUNCTIONS if f.works}
    with_cases = {c.function for c in ALL_CASES}
    assert working - with_cases == set()
    assert with_cases - working == set()


REFUSED = [f for f in FUNCTIONS if not f.works]


@pytest.mark.parametrize("function", REFUSED, ids=[f.name for f in REFUSED])
def test_refused_function_is_named_with_its_position(sh: StreamHouse, function: Any) -> None:
    with pytest.raises(SqlError) as raised:
        sh.sql(function.refused).to_arrow_table()
    error = raised.value
    keyword = function.name.split("(")[0].split()[0].rstrip(".*")
    assert keyword.upper() in str(error).upper() or function.name in str(error)
    assert "not supported" in str(error)
    assert error.line == 1 and error.column is not None


def test_the_share_of_working_functions_meets_the_target() -> None:
    assert share_working() >= 0.9
    assert len(FUNCTIONS) > 200


def test_functions_page_is_current_and_the_readme_gives_its_share() -> None:
    page_path = ROOT / "docs" / "functions.md"
    assert page_path.read_text() == page(), "run: python -m streamhouse.sql.function_table"
    working = sum(f.works for f in FUNCTIONS)
    share = f"**{working} of {len(FUNCTIONS)} ({share_working():.0%})**"
    assert share in page() and share in (ROOT / "README.md").read_text()


# -- DataFusion's internal messages, as the Flink feature -----------------------------------------

INTERNAL_ERRORS = [
    (
        "SELECT r, (SELECT max(j) FROM fn AS y WHERE y.n = x.n AND y.j > x.i) AS m FROM fn AS x",
        "correlated subqueries in this position (a subquery reading the outer query's columns) "
        "are not supported: write it as a JOIN",
    ),
    (
        "SELECT *, count(*) AS c FROM fn GROUP BY n",
        "SELECT * in a grouped query: column 'fn.r' is neither in GROUP BY nor aggregated; "
        "name the columns to select instead of *",
    ),
    (
        "SELECT no_such_function(s) FROM fn",
        "function 'no_such_function' is not supported: it is neither one of Flink's built-in "
        "functions (docs/functions.md) nor a registered function",
    ),
]


@pytest.mark.parametrize(("sql", "message"), INTERNAL_ERRORS)
def test_datafusion_internals_are_explained_as_the_sql_feature(
    sh: StreamHouse, sql: str, message: str
) -> None:
    with pytest.raises(SqlError) as raised:
        sh.sql(sql).to_arrow_table()
    assert raised.value.message == message
    assert raised.value.line == 1 and raised.value.column is not None


def test_json_of_other_types_fails_the_query_naming_the_type(sh: StreamHouse) -> None:
    with pytest.raises(SqlError, match="JSON values of type List.* are not supported"):
        sh.sql("SELECT JSON_STRING(arr) FROM fn WHERE arr IS NOT NULL").to_arrow_table()


def test_element_of_several_elements_fails_the_query_naming_element(sh: StreamHouse) -> None:
    with pytest.raises(SqlError, match="ELEMENT of an array of 2 elements"):
        sh.sql("SELECT ELEMENT(ARRAY[1, 2]) FROM fn").to_arrow_table()


def test_regexp_replace_refuses_a_backslash_before_a_digit(sh: StreamHouse) -> None:
    """Flink inserts the replacement as written; DataFusion would read ``\\1`` as group 1."""
    with pytest.raises(SqlError, match="backslash before a digit") as raised:
        sh.sql("SELECT REGEXP_REPLACE(s, '(b)', '\\1') FROM fn").to_arrow_table()
    assert raised.value.column is not None
    sh.produce("fn", [{"n": -1, "r": 0, "s": "abc", "t": "\\1"}])  # a replacement read per row
    with pytest.raises(SqlError, match="backslash before a digit"):
        sh.sql("SELECT REGEXP_REPLACE(s, 'b', t) FROM fn WHERE n = -1").to_arrow_table()


def test_order_sensitive_aggregates_follow_the_log_order(sh: StreamHouse) -> None:
    """FIRST_VALUE, LAST_VALUE, LISTAGG and JSON_ARRAYAGG over 20 produce batches of 1,000 rows (DataFusion's parallel
    aggregation would see rows out of order): the first and last non-NULL values in the log."""
    sh.sql("CREATE STREAM ordered (k INT, v STRING) WITH (topic = 'ordered', partitions = 1)")
    rows = [
        {"k": i % 3, "v": None if i % 7 == 0 else f"v{b * 1000 + i:05d}"}
        for b in range(20)
        for i in range(1000)
    ]
    for start in range(0, len(rows), 1000):
        sh.produce("ordered", rows[start : start + 1000])
    got = sh.sql(
        "SELECT k, FIRST_VALUE(v) AS f, LAST_VALUE(v) AS l, LISTAGG(v, '') AS g, "
        "JSON_ARRAYAGG(v) AS a FROM ordered GROUP BY k ORDER BY k"
    ).to_arrow_table()
    for k, first, last, joined, array in zip(*got.to_pydict().values(), strict=True):
        values = [r["v"] for r in rows if r["k"] == k and r["v"] is not None]
        assert (first, last, joined) == (values[0], values[-1], "".join(values))
        assert json.loads(array) == values


def test_aggregates_in_windows_bounded_and_continuously(sh: StreamHouse) -> None:
    """STDDEV_POP, VAR_SAMP, FIRST_VALUE (NULLs skipped), LAST_VALUE, LISTAGG and JSON_ARRAYAGG per tumbling
    window, continuously in micro-batches of one record with a restart, and bounded."""
    sh.sql(
        "CREATE STREAM w (d DOUBLE, s STRING, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) "
        "WITH (topic = 'w', format = 'json')"
    )
    sh.produce(
        "w",
        [
            {"d": 1.0, "s": None, "ts": "2024-01-01 00:00:01"},
            {"d": 3.0, "s": "b", "ts": "2024-01-01 00:00:02"},
            {"d": 8.0, "s": "c", "ts": "2024-01-01 00:00:03"},
            {"d": 5.0, "s": "d", "ts": "2024-01-01 00:01:30"},
        ],
    )
    sql = (
        "SELECT window_start AS k, STDDEV_POP(d) AS sd, VAR_SAMP(d) AS vs, FIRST_VALUE(s) AS f, "
        "LAST_VALUE(s) AS l, LISTAGG(s, '+') AS g, JSON_ARRAYAGG(s) AS a "
        "FROM TABLE(TUMBLE(TABLE w, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) "
        "GROUP BY window_start, window_end"
    )
    # by hand: window 1 holds 1, 3, 8 (mean 4, squared deviations 9 + 1 + 16 = 26)
    want = [
        (math.sqrt(26 / 3), 13.0, "b", "c", "b+c", '["b","c"]'),
        (0.0, None, "d", "d", "d", '["d"]'),
    ]
    streamed = continuous_rows(sh, sql, "w_aggregates", batch=1)
    bounded = sh.sql(sql).to_arrow_table().to_pylist()
    for rows in (streamed, bounded):
        ordered = sorted(rows, key=lambda r: str(r["k"]))
        got = [tuple(r[c] for c in ("sd", "vs", "f", "l", "g", "a")) for r in ordered]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert same(list(g), list(w)), (g, w)


def test_json_objectagg_of_a_key_given_twice_fails_the_query(sh: StreamHouse) -> None:
    sh.produce("fn", [{"n": -2, "r": 0, "s": "k", "i": 1}, {"n": -2, "r": 1, "s": "k", "i": 2}])
    with pytest.raises(SqlError, match="JSON_OBJECTAGG with a key given twice"):
        sh.sql("SELECT JSON_OBJECTAGG(KEY s VALUE i) FROM fn WHERE n = -2").to_arrow_table()


def test_functions_that_can_fail_a_query_accept_no_rows(sh: StreamHouse) -> None:
    """The failing branches (JSON of other types, REGEXP_REPLACE's backslash, ELEMENT) are
    never taken over no rows, constant arguments included."""
    sql = (
        "SELECT JSON_STRING(s) AS a, JSON_ARRAY(1, '2') AS b, REGEXP_REPLACE(s, 'a', t) AS c, "
        "ELEMENT(ARRAY[5]) AS d, JSON_STRING(arr) AS e FROM fn WHERE n = -999"
    )
    assert sh.sql(sql).to_arrow_table().num_rows == 0
    aggregated = "SELECT JSON_OBJECTAGG(KEY s VALUE i) AS v FROM fn WHERE n = -999"
    assert sh.sql(aggregated).to_arrow_table().column("v").to_pylist() == ["{}"]
