"""Flink's documented system functions, each one working or refused: ``docs/functions.md``.

The list follows Flink's ``docs/data/sql_functions.yml`` (its SQL forms; Table API forms are
left out). ``python -m streamhouse.sql.function_table`` writes the page;
``tests/test_function_table.py`` checks that the page is current, that every working function
has a case in ``tests/fixtures/flink_function_cases.tsv`` and that every refused one is refused
by name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FUNCTIONS", "Function", "page", "share_working"]


@dataclass(frozen=True)
class Function:
    """One documented function: its SQL form, category, and ``refused`` SQL if it is refused."""

    name: str
    category: str
    notes: str = ""
    refused: str | None = None  # a query StreamHouse refuses naming this function

    @property
    def works(self) -> bool:
        return self.refused is None


def _group(category: str, *entries: tuple[str, str] | str) -> list[Function]:
    return [
        Function(e, category) if isinstance(e, str) else Function(e[0], category, e[1])
        for e in entries
    ]


def _refused(category: str, name: str, sql: str, notes: str = "") -> Function:
    return Function(name, category, notes, refused=sql)


FUNCTIONS: list[Function] = [
    *_group(
        "comparison",
        "=",
        "<>",
        ">",
        ">=",
        "<",
        "<=",
        "IS NULL",
        "IS NOT NULL",
        "IS DISTINCT FROM",
        "IS NOT DISTINCT FROM",
        ("BETWEEN", "also SYMMETRIC (rewritten as two BETWEENs)"),
        "NOT BETWEEN",
        ("LIKE", "ESCAPE with a character other than a backslash is refused"),
        "NOT LIKE",
        ("SIMILAR TO", "the pattern must be a literal; %, _ and SQL regex operators; . is a dot"),
        "NOT SIMILAR TO",
        "IN (list)",
        "NOT IN (list)",
        ("EXISTS (sub-query)", "bounded queries; uncorrelated"),
        ("IN (sub-query)", "bounded queries; uncorrelated"),
        ("NOT IN (sub-query)", "bounded queries; uncorrelated"),
    ),
    *_group(
        "logical",
        "OR",
        "AND",
        "NOT",
        "IS FALSE",
        "IS NOT FALSE",
        "IS TRUE",
        "IS NOT TRUE",
        "IS UNKNOWN",
        "IS NOT UNKNOWN",
    ),
    *_group(
        "arithmetic",
        "+ numeric",
        "- numeric",
        "+",
        "-",
        "*",
        "/",
        ("%", "also MOD; the sign follows the dividend"),
        "POWER",
        "ABS",
        "SQRT",
        "LN",
        "LOG10",
        "LOG2",
        ("LOG", "one argument: natural logarithm (DataFusion's LOG is base 10: rewritten)"),
        "EXP",
        ("CEIL", "also CEILING"),
        "FLOOR",
        "SIN",
        "SINH",
        "COS",
        "TAN",
        "TANH",
        "COT",
        "ASIN",
        "ACOS",
        "ATAN",
        "ATAN2",
        "COSH",
        "DEGREES",
        "RADIANS",
        ("SIGN", "an integer -1, 0 or 1 for every numeric type"),
        ("ROUND", "half away from zero"),
        "PI",
        "E",
        ("RAND()", "not reproducible: tested for its range"),
    ),
    _refused("arithmetic", "RAND(INT)", "SELECT RAND(7) FROM fn", "seeded sequences"),
    Function("RAND_INTEGER(INT)", "arithmetic", "not reproducible: tested for its range"),
    _refused(
        "arithmetic", "RAND_INTEGER(INT, INT)", "SELECT RAND_INTEGER(7, 10) FROM fn", "seeded"
    ),
    *_group(
        "arithmetic",
        ("UUID", "version 4, random: tested for its form"),
        ("BIN", "two's complement for negative numbers, as Java's Long.toBinaryString"),
        ("HEX", "integers in two's complement; strings as UTF-8 bytes; upper case"),
        "TRUNCATE",
    ),
    *_group(
        "string",
        "||",
        ("CHAR_LENGTH", "also CHARACTER_LENGTH"),
        "UPPER",
        "LOWER",
        "POSITION",
        "TRIM",
        "LTRIM",
        "RTRIM",
        "REPEAT",
        ("REGEXP_REPLACE", "every match is replaced (DataFusion's default is the first)"),
        "OVERLAY",
        "SUBSTRING",
        "REPLACE",
        "REGEXP_EXTRACT",
        "INITCAP",
        ("CONCAT", "NULL if any argument is NULL (DataFusion's skips NULLs: rewritten)"),
        "CONCAT_WS",
        "LPAD",
        "RPAD",
        "FROM_BASE64",
        "TO_BASE64",
        "ASCII",
        "CHR",
        ("DECODE", "character set 'UTF-8' only; others are refused by name"),
        ("ENCODE", "character set 'UTF-8' only; others are refused by name"),
        "INSTR",
        "LEFT",
        "RIGHT",
        "LOCATE",
        ("PARSE_URL", "RFC 3986 parts; the query key must be a literal"),
        ("REGEXP", "true if any substring matches"),
        "REVERSE",
        "SPLIT_INDEX",
        ("STR_TO_MAP", "delimiters are regular expressions and must be constants"),
        "SUBSTR",
    ),
    *_group(
        "temporal",
        "DATE string",
        "TIME string",
        "TIMESTAMP string",
    ),
    Function(
        "INTERVAL string range", "temporal", "YEAR TO MONTH, DAY TO SECOND, ... and single units"
    ),
    *_group(
        "temporal",
        ("LOCALTIME", "not reproducible: tested for its type"),
        ("LOCALTIMESTAMP", "not reproducible; the session zone is UTC"),
        "CURRENT_TIME",
        "CURRENT_DATE",
        "CURRENT_TIMESTAMP",
        "NOW",
        "CURRENT_ROW_TIMESTAMP",
        "EXTRACT",
        "YEAR",
        "QUARTER",
        "MONTH",
        ("WEEK", "ISO week of the year"),
        "DAYOFYEAR",
        "DAYOFMONTH",
        ("DAYOFWEEK", "1 = Sunday ... 7 = Saturday"),
        "HOUR",
        "MINUTE",
        "SECOND",
        "FLOOR(timepoint TO unit)",
        "CEIL(timepoint TO unit)",
    ),
    Function("OVERLAPS", "temporal", "as Calcite: ends included, pairs put in order"),
    *_group(
        "temporal",
        ("DATE_FORMAT", "Java DateTimeFormatter patterns (see DATE_FORMAT's own tests)"),
        ("TIMESTAMPADD", "SECOND to YEAR; months clamp to the month's last day"),
        ("TIMESTAMPDIFF", "SECOND to YEAR, truncated toward zero; months as Flink counts them"),
        ("CONVERT_TZ", "IANA zone names and offsets; the zones must be constants"),
        ("FROM_UNIXTIME", "in the session zone, UTC"),
        (
            "UNIX_TIMESTAMP",
            "patterns: y M d H h m s S a E X Z; unparsable text gives Long.MIN_VALUE",
        ),
        ("TO_DATE", "patterns as UNIX_TIMESTAMP"),
        ("TO_TIMESTAMP_LTZ", "precision 0 (seconds) or 3 (milliseconds); the session zone is UTC"),
        ("TO_TIMESTAMP", "NULL when the text does not parse"),
    ),
    Function(
        "CURRENT_WATERMARK",
        "temporal",
        "continuously, the watermark the micro-batch's rows arrive at; NULL before the first"
        " watermark and in bounded queries",
    ),
    *_group(
        "conditional",
        ("CASE value WHEN", "several values per WHEN too"),
        "CASE WHEN",
        "NULLIF",
        "COALESCE",
        "IF",
        "IFNULL",
        ("IS_ALPHA", "Unicode letters; FALSE for NULL and ''"),
        ("IS_DECIMAL", "as Java's Double.parseDouble (no hex floats); FALSE for NULL"),
        ("IS_DIGIT", "Unicode digits; FALSE for NULL and ''"),
        ("GREATEST", "NULL if any argument is NULL"),
        ("LEAST", "NULL if any argument is NULL"),
    ),
    *_group("conversion", "CAST", "TRY_CAST"),
    _refused("conversion", "TYPEOF", "SELECT TYPEOF(i) FROM fn", "Flink's type names"),
    *_group(
        "collection",
        "CARDINALITY(array)",
        "array[index]",
        ("ELEMENT", "more than one element fails the query, naming ELEMENT"),
        "CARDINALITY(map)",
        "map[key]",
        "ARRAY_CONTAINS",
        "ARRAY_DISTINCT",
        "ARRAY_POSITION",
        ("ARRAY_REMOVE", "every equal element"),
        "ARRAY_REVERSE",
        ("MAP_KEYS", "in insertion order"),
        ("MAP_VALUES", "in insertion order"),
        "MAP_FROM_ARRAYS",
    ),
    *_group(
        "json",
        ("IS JSON", "VALUE, SCALAR, ARRAY, OBJECT; NULL IS JSON is FALSE"),
        ("JSON_EXISTS", "FALSE ON ERROR only"),
        ("JSON_STRING", "strings, numbers, booleans; other types fail the query, named"),
        ("JSON_VALUE", "RETURNING works; ON EMPTY / ON ERROR clauses are refused; no wildcards"),
        ("JSON_QUERY", "objects and arrays; wrapper and ON clauses are refused; no wildcards"),
        ("JSON_OBJECT", "NULL ON NULL (default) and ABSENT ON NULL; nested constructors"),
    ),
    Function("JSON_OBJECTAGG", "json", "in arrival order; a key given twice fails the query"),
    Function("JSON_ARRAY", "json", "ABSENT ON NULL (the default); nested constructors"),
    Function("JSON_ARRAYAGG", "json", "in arrival order; ABSENT ON NULL (the default) only"),
    *_group(
        "value construction",
        ("ROW", "(v1, v2) and ROW(v1, v2); fields are named c0, c1, ..."),
        "ARRAY[...]",
        "MAP[...]",
    ),
    Function("composite.field", "value access", "written table.column.field"),
    _refused("value access", "composite.*", "SELECT (ROW(i, s)).* FROM fn"),
    _refused("grouping", "GROUP_ID", "SELECT GROUP_ID() FROM fn"),
    Function("GROUPING", "grouping", "with GROUPING SETS, ROLLUP and CUBE, bounded"),
    Function("GROUPING_ID", "grouping", "the first expression is the highest bit"),
    *_group(
        "hash",
        "MD5",
        ("SHA1", "computed by DuckDB, vectorized"),
        "SHA224",
        "SHA256",
        "SHA384",
        "SHA512",
        ("SHA2", "the bit length must be a literal"),
    ),
    *_group(
        "aggregate",
        ("COUNT", "also DISTINCT over several expressions"),
        "COUNT(*)",
        ("AVG", "DOUBLE mean: over integers Flink truncates to the integer type"),
        "SUM",
        "MAX",
        "MIN",
        "STDDEV_POP",
        "STDDEV_SAMP",
        "VAR_POP",
        "VAR_SAMP",
    ),
    _refused("aggregate", "COLLECT", "SELECT COLLECT(s) FROM fn", "no MULTISET type"),
    *_group(
        "aggregate",
        "VARIANCE",
        ("RANK", "OVER windows"),
        ("DENSE_RANK", "OVER windows"),
        ("ROW_NUMBER", "OVER windows"),
        (
            "LEAD",
            "OVER windows; continuously too (n a literal, no frame), each row once the n rows"
            " after it in its partition are past the watermark, or at the input's end with"
            " the default",
        ),
        (
            "LAG",
            "OVER windows; continuously too (n a literal, no frame), ordered by the time"
            " attribute or a PROCTIME() column (a micro-batch's rows by arrival)",
        ),
        ("FIRST_VALUE", "NULLs skipped; as an aggregate, in the log's order"),
        ("LAST_VALUE", "NULLs skipped; as an aggregate, in the log's order"),
        ("LISTAGG", "separator ',' by default; in the log's order"),
        ("CUME_DIST", "OVER windows"),
        ("PERCENT_RANK", "OVER windows"),
        ("NTILE", "OVER windows"),
    ),
    Function(
        "CURRENT_DATABASE", "catalog", "'default_database', Flink's default; there is no other"
    ),
]
"""Every SQL function in Flink's documentation, in its order."""


def share_working() -> float:
    """The share of :data:`FUNCTIONS` that work with Flink's semantics."""
    return sum(f.works for f in FUNCTIONS) / len(FUNCTIONS)


def page() -> str:
    """``docs/functions.md``."""
    working = sum(f.works for f in FUNCTIONS)
    lines = [
        "# Flink's built-in functions in StreamHouse",
        "",
        "Generated by `python -m streamhouse.sql.function_table`; do not edit by hand.",
        "",
        f"**{working} of {len(FUNCTIONS)} ({share_working():.0%})** of the scalar and aggregate",
        "functions in Flink's documentation (system functions, `docs/data/sql_functions.yml` of",
        "apache/flink at 0161f9e2)",
        "work with Flink's semantics: each has cases in `tests/fixtures/flink_function_cases.tsv`,",
        "run bounded (and a sample continuously) against values computed by hand from Flink's",
        "documentation. The rest are refused with their name, line and column: never a",
        "different answer.",
        "",
        "Continuously, stateless queries and window aggregates run every function that works;",
        "a GROUP BY without a window computes COUNT, SUM, AVG, MIN and MAX incrementally and",
        "refuses other aggregates.",
        "",
        "| function | category | status | notes |",
        "|---|---|---|---|",
    ]
    for f in FUNCTIONS:
        status = "works" if f.works else "refused"
        name = f.name.replace("|", "\\|")
        lines.append(f"| `{name}` | {f.category} | {status} | {f.notes.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/functions.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page())


if __name__ == "__main__":
    main()
