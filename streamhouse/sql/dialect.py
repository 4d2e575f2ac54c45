"""The ``StreamHouse`` sqlglot dialect: Postgres plus the streaming syntax of Flink SQL.

On top of Postgres it accepts:

- window calls in GROUP BY: ``TUMBLING(ts, size)`` / ``TUMBLE``, ``HOP(ts, slide, size)``,
  ``CUMULATE(ts, step, size)``, ``SESSION(ts, gap)`` (parsed as ``exp.Anonymous`` calls);
- Flink window TVFs: ``TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size))``, with ``TABLE t
  [PARTITION BY k, ...]`` arguments (:class:`TableArgument`) and ``name => value`` arguments
  (``exp.Kwarg``);
- plural interval units (``INTERVAL '10' MINUTES`` is read as ``INTERVAL '10' MINUTE``);
- DDL: ``CREATE [OR REPLACE] STREAM [IF NOT EXISTS]`` / Flink ``CREATE TABLE`` with
  ``WATERMARK FOR c AS expr`` (``exp.WatermarkColumnConstraint``), ``PRIMARY KEY (..) NOT
  ENFORCED``, computed columns (``exp.ComputedColumnConstraint``), metadata columns
  (:class:`MetadataColumnConstraint`), ``WITH (key = 'value', ...)`` options (``exp.Property``),
  backtick identifiers, ``ROW<..>`` / ``ROW(..)`` types; ``DROP STREAM``; ``ALTER STREAM s
  SET ('key' = 'value', ...)`` (``exp.Alter`` of kind ``STREAM``, an ``exp.AlterSet`` action);
- ``EXPLAIN <statement>`` (:class:`Explain`) and ``SHOW STREAMS`` / ``SHOW TOPICS`` (``exp.Show``).

Anything the parser cannot read raises ``ParseError``; it never falls back to ``exp.Command``.

>>> import sqlglot
>>> sqlglot.parse_one("SELECT INTERVAL '10' MINUTES", read=StreamHouse).sql(StreamHouse)
"SELECT INTERVAL '10' MINUTE"
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError
from sqlglot.generator import Generator
from sqlglot.generators.postgres import PostgresGenerator
from sqlglot.helper import seq_get
from sqlglot.parsers.postgres import PostgresParser
from sqlglot.tokens import Token, TokenType

__all__ = ["Explain", "MetadataColumnConstraint", "StreamHouse", "TableArgument"]

# Plural interval units Flink accepts, mapped to the singular sqlglot knows.
PLURAL_UNITS = {
    "YEARS": "YEAR",
    "MONTHS": "MONTH",
    "WEEKS": "WEEK",
    "DAYS": "DAY",
    "HOURS": "HOUR",
    "MINUTES": "MINUTE",
    "SECONDS": "SECOND",
    "MILLISECONDS": "MILLISECOND",
    "MICROSECONDS": "MICROSECOND",
}


class TableArgument(exp.Expression):
    """``TABLE t [PARTITION BY k, ...]`` passed as an argument of a table function."""

    arg_types = {"this": True, "partition_by": False}


class MetadataColumnConstraint(exp.Expression, exp.ColumnConstraintKind):
    """Flink ``METADATA [FROM 'key'] [VIRTUAL]``: the column is read from record metadata."""

    arg_types = {"this": False, "virtual": False}


class Explain(exp.Expression):
    """``EXPLAIN <statement>``."""

    arg_types = {"this": True}


def _regexp_extract(args: list[exp.Expr]) -> exp.RegexpExtract:
    """Flink's ``REGEXP_EXTRACT(s, regex[, index])``: the index is the group (sqlglot's default
    reads a third argument as the position to search from)."""
    if not 2 <= len(args) <= 3:
        raise ParseError(f"REGEXP_EXTRACT takes 2 or 3 arguments, not {len(args)}")
    return exp.RegexpExtract(
        this=args[0], expression=args[1], group=args[2] if len(args) == 3 else None
    )


def _with_unit(name: str, args: list[exp.Expr]) -> exp.Anonymous:
    """Flink's ``TIMESTAMPDIFF(unit, ...)`` / ``TIMESTAMPADD(unit, ...)``: the unit is a word,
    not a column."""
    if args and isinstance(args[0], exp.Column) and not args[0].table:
        args = [exp.var(args[0].name.upper()), *args[1:]]
    return exp.Anonymous(this=name, expressions=args)


class StreamHouse(Postgres):
    """Postgres with Flink-style streaming DDL, window calls and window TVFs."""

    class Tokenizer(Postgres.Tokenizer):
        IDENTIFIERS: ClassVar = ['"', "`"]
        # EXPLAIN and SHOW are parsed as statements, not swallowed whole as commands.
        COMMANDS: ClassVar = Postgres.Tokenizer.COMMANDS - {TokenType.COMMAND, TokenType.SHOW}
        KEYWORDS: ClassVar = {
            **Postgres.Tokenizer.KEYWORDS,
            "STREAM": TokenType.STREAM,
            "ROW": TokenType.STRUCT,
            "FLOAT": TokenType.FLOAT,  # Flink's FLOAT is 4 bytes; Postgres reads it as DOUBLE
            "BYTES": TokenType.VARBINARY,
        }
        KEYWORDS.pop("REGEXP", None)  # Flink's REGEXP(s, re) is a function, not an operator

    class Parser(PostgresParser):
        FUNC_TOKENS: ClassVar = {*PostgresParser.FUNC_TOKENS, TokenType.SESSION}
        DB_CREATABLES: ClassVar = {*PostgresParser.DB_CREATABLES, TokenType.STREAM}
        CREATABLES: ClassVar = {*PostgresParser.CREATABLES, TokenType.STREAM}
        ALTERABLES: ClassVar = {*PostgresParser.ALTERABLES, TokenType.STREAM}

        FUNCTIONS: ClassVar = {
            **PostgresParser.FUNCTIONS,
            "ROW": exp.Struct.from_arg_list,
            "REGEXP_EXTRACT": lambda args: _regexp_extract(args),
            # Flink's REGEXP(s, re): any substring matches
            "REGEXP": lambda args: exp.RegexpLike(this=args[0], expression=args[1]),
            # Flink's argument order and defaults, not MySQL's or Postgres': rewritten later
            **{
                name: lambda args, name=name: exp.Anonymous(this=name, expressions=args)
                for name in ("TO_TIMESTAMP", "TO_DATE")
            },
            "TIMESTAMPDIFF": lambda args: _with_unit("TIMESTAMPDIFF", args),
            "TIMESTAMPADD": lambda args: _with_unit("TIMESTAMPADD", args),
        }

        STATEMENT_PARSERS: ClassVar = {
            **PostgresParser.STATEMENT_PARSERS,
            TokenType.COMMAND: lambda self: self._parse_explain(),
            TokenType.SHOW: lambda self: self._parse_show_objects(),
        }

        CONSTRAINT_PARSERS: ClassVar = {
            **PostgresParser.CONSTRAINT_PARSERS,
            "WATERMARK": lambda self: self.expression(
                exp.WatermarkColumnConstraint(
                    this=self._match(TokenType.FOR) and self._parse_column(),
                    expression=self._match(TokenType.ALIAS) and self._parse_disjunction(),
                )
            ),
            "METADATA": lambda self: self.expression(
                MetadataColumnConstraint(
                    this=self._match(TokenType.FROM) and self._parse_string(),
                    virtual=self._match_text_seq("VIRTUAL"),
                )
            ),
        }

        SCHEMA_UNNAMED_CONSTRAINTS: ClassVar = {
            *PostgresParser.SCHEMA_UNNAMED_CONSTRAINTS,
            "WATERMARK",
        }

        LAMBDAS: ClassVar = {
            **PostgresParser.LAMBDAS,
            TokenType.FARROW: lambda self, expressions: self.expression(
                exp.Kwarg(
                    this=exp.var(expressions[0].name),
                    expression=self._parse_table_argument() or self._parse_disjunction(),
                )
            ),
        }

        def raise_error(self, message: str, token: Any = None) -> None:
            """Raise as sqlglot does, and record the token's character offset (``start``)."""
            token = token or self._curr or self._prev or Token.string("")
            try:
                super().raise_error(message, token)
            except ParseError as error:
                for detail in error.errors:
                    detail.setdefault("start", token.start)
                raise

        def _parse_statement(self) -> exp.Expr | None:
            if self._curr and self._curr.token_type == TokenType.VAR:
                self.raise_error(f"Unknown statement {self._curr.text!r}")
            return super()._parse_statement()

        def _parse_as_command(self, start: Token) -> exp.Command:
            self.raise_error("Unsupported syntax")
            raise AssertionError("unreachable")  # raise_error raises at ErrorLevel.IMMEDIATE

        def _parse_lambda(self, alias: bool = False) -> exp.Expr | None:
            return self._parse_table_argument() or super()._parse_lambda(alias=alias)

        def _parse_case(self) -> exp.Expr | None:
            """Flink's ``CASE v WHEN a, b THEN ...``: several values in one WHEN. Such a CASE is
            read as ``CASE WHEN v IN (a, b) THEN ...`` (the operand repeated in each WHEN).

            Read in one pass: parsing again from the start on the common one-value form made
            nested CASEs cost 2**depth (a fuzz test's SQL took minutes)."""
            if self._match(TokenType.DOT, advance=False):
                return super()._parse_case()
            comments = self._prev_comments
            operand = self._parse_disjunction()
            whens: list[tuple[list[exp.Expr], exp.Expr | None]] = []
            while self._match(TokenType.WHEN):
                values = self._parse_csv(self._parse_disjunction)
                self._match(TokenType.THEN)
                whens.append((values, self._parse_disjunction()))
            default = self._parse_disjunction() if self._match(TokenType.ELSE) else None
            if not self._match(TokenType.END):
                if isinstance(default, exp.Interval) and default.this.sql().upper() == "END":
                    default = exp.column("interval")  # `ELSE interval END`, as sqlglot reads it
                else:
                    self.raise_error("Expected END after CASE", self._prev)
            if operand is None or all(len(values) == 1 for values, _ in whens):
                ifs = [self.expression(exp.If(this=v[0], true=then)) for v, then in whens]
                return self.expression(
                    exp.Case(this=operand, ifs=ifs, default=default), comments=comments
                )
            ifs = [
                exp.If(
                    this=exp.In(this=operand.copy(), expressions=values)
                    if len(values) > 1
                    else exp.EQ(this=operand.copy(), expression=values[0]),
                    true=then,
                )
                for values, then in whens
            ]
            return self.expression(exp.Case(ifs=ifs, default=default), comments=comments)

        def _parse_table_argument(self) -> TableArgument | None:
            """``TABLE t [PARTITION BY k, ...]`` or ``TABLE (SELECT ...) PARTITION BY k, ...``
            as a function argument; None if not there (``TABLE (SELECT ...)`` alone is read
            as sqlglot reads it, a call of ``TABLE``)."""
            if not (self._curr and self._curr.token_type == TokenType.TABLE and self._next):
                return None
            start = self._index
            if self._next.token_type == TokenType.L_PAREN:
                query = seq_get(self._tokens, self._index + 2)
                if query is None or query.token_type not in (TokenType.SELECT, TokenType.WITH):
                    return None
                self._advance()
                table: exp.Expr | None = self._parse_wrapped(self._parse_select)
                if table is None or not self._match(TokenType.PARTITION_BY, advance=False):
                    self._retreat(start)
                    return None
                table = exp.Subquery(this=table)
            else:
                self._advance()
                table = self._parse_table_parts()
            partition_by = None
            if self._match(TokenType.PARTITION_BY):
                # Flink: one key bare, several in parentheses (DESCRIPTOR(..) follows a comma).
                if self._match(TokenType.L_PAREN, advance=False):
                    partition_by = self._parse_wrapped_csv(self._parse_column)
                else:
                    partition_by = [self._parse_column()]
                if not partition_by or None in partition_by:
                    self.raise_error("Expected a column after PARTITION BY")
            return self.expression(TableArgument(this=table, partition_by=partition_by))

        def _parse_interval(
            self, require_interval: bool = True, parse_function_unit: bool = True
        ) -> exp.Add | exp.Interval | None:
            if (
                self._curr
                and self._curr.token_type == TokenType.INTERVAL
                and self._next
                and self._next.token_type == TokenType.STRING
                and self._tokens[self._index + 2 : self._index + 3]
            ):
                unit = self._tokens[self._index + 2]
                singular = PLURAL_UNITS.get(unit.text.upper())
                if singular:
                    unit.text = singular
            start = self._curr
            interval = super()._parse_interval(
                require_interval=require_interval, parse_function_unit=parse_function_unit
            )
            if isinstance(interval, exp.Interval) and start is not None:
                interval.update_positions(start)  # errors about it point at INTERVAL
            return interval

        def _parse_with_property(self) -> exp.Expr | None | list[exp.Expr]:
            if self._match(TokenType.L_PAREN, advance=False):
                return self._parse_wrapped_csv(self._parse_option)
            return super()._parse_with_property()

        def _parse_option(self) -> exp.Property:
            """``key = value`` in WITH (...); a key is a string or a dotted name."""
            if self._match(TokenType.STRING):
                key: exp.Expr = self.expression(exp.Literal.string(self._prev.text))
            else:
                parts = [self._parse_id_var(any_token=True)]
                while self._match(TokenType.DOT):
                    parts.append(self._parse_id_var(any_token=True))
                if not all(parts):
                    self.raise_error("Expecting an option name")
                key = exp.var(".".join(p.name for p in parts if p))
            self._match(TokenType.EQ) or self.raise_error("Expecting =")
            value = self._parse_primary() or self._parse_var(any_token=True)
            if value is None:
                self.raise_error("Expecting an option value")
            return self.expression(exp.Property(this=key, value=value))

        def _parse_explain(self) -> Explain:
            if self._prev.text.upper() != "EXPLAIN":
                self.raise_error("Unsupported statement", self._prev)
            statement = self._parse_statement()
            if statement is None:
                self.raise_error("Expecting a statement after EXPLAIN")
            return self.expression(Explain(this=statement))

        def _parse_show_objects(self) -> exp.Show:
            if not self._match_texts(("STREAMS", "TOPICS", "TABLES", "VIEWS", "QUERIES")):
                self.raise_error("Expecting STREAMS, TOPICS, TABLES, VIEWS or QUERIES after SHOW")
            return self.expression(exp.Show(this=self._prev.text.upper()))

    class Generator(PostgresGenerator):
        SINGLE_STRING_INTERVAL = False

        TRANSFORMS: ClassVar = {
            **PostgresGenerator.TRANSFORMS,
            TableArgument: lambda self, e: (
                f"TABLE {self.sql(e, 'this')}"
                + (
                    f" PARTITION BY {self.expressions(e, key='partition_by', flat=True)}"
                    if e.args.get("partition_by")
                    else ""
                )
            ),
            MetadataColumnConstraint: lambda self, e: (
                "METADATA"
                + (f" FROM {self.sql(e, 'this')}" if e.args.get("this") else "")
                + (" VIRTUAL" if e.args.get("virtual") else "")
            ),
            Explain: lambda self, e: f"EXPLAIN {self.sql(e, 'this')}",
            exp.Show: lambda self, e: f"SHOW {e.name}",
        }

        TYPE_MAPPING: ClassVar = {
            **PostgresGenerator.TYPE_MAPPING,
            exp.DType.TIMESTAMPLTZ: "TIMESTAMP_LTZ",
        }

        def star_sql(self, expression: exp.Star) -> str:
            """``* EXCEPT (...)``: a star the planner narrowed (a window TVF's input columns
            without the window's), which PostgreSQL's generator warns of and drops."""
            return Generator.star_sql(self, expression)

        def computedcolumnconstraint_sql(self, expression: exp.ComputedColumnConstraint) -> str:
            return Generator.computedcolumnconstraint_sql(self, expression)

        def property_sql(self, expression: exp.Property) -> str:
            if type(expression) is exp.Property:
                return f"{self.sql(expression, 'this')}={self.sql(expression, 'value')}"
            return super().property_sql(expression)

        def watermarkcolumnconstraint_sql(self, expression: exp.WatermarkColumnConstraint) -> str:
            return (
                f"WATERMARK FOR {self.sql(expression, 'this')} AS "
                f"{self.sql(expression, 'expression')}"
            )
