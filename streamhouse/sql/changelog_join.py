"""Planning a regular join whose inputs update (a GROUP BY aggregate, a Top-N, an outer join or
another such join on either side, joined to a stream or to each other) as a
:class:`ChangelogJoin`.

Its output is keyed, as Flink derives a join's unique key, by the pair of its input rows' keys:
an input's row key (:data:`~streamhouse.sql.changelog.ROW_KEY`: the group keys of an aggregate,
the (partition, rank) of a Top-N) is a unique key of that input, so the pair is one of every
output row, and a padded row has one side's key alone. An update of an input row is then an
upsert of every output row it is in (same pair, new values), and an output row that stops
matching is retracted by its pair: upserts and tombstones by that key say all that -U/+U/-D
would, so no edge needs a RETRACT mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from streamhouse.sql.bounds import conjuncts
from streamhouse.sql.changelog import ChangelogMode, PlanNode
from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.nodes import OuterJoin
from streamhouse.sql.parse import sql_error

LEFT_ID, RIGHT_ID = "__lid", "__rid"
"""The columns the join's SQL reads each input row's key from."""


@dataclass(frozen=True)
class ChangelogJoin(PlanNode):
    """A regular join (inner, left, right or full) over one or two updating inputs."""

    left: str
    right: str
    input_updates: tuple[bool, bool]  # whether each input updates (its rows keyed by ROW_KEY)
    variants: OuterJoin  # the SQL over __left and __right, projecting __lid and __rid
    match_sql: str | None  # the pairs the ON condition matches (outer joins: who is padded)
    columns: tuple[tuple[str, ...], tuple[str, ...]]  # the columns of each input the SQL names
    # output columns that are a unique key of the output (an input's upsert key that survives
    # the join); none: the output is keyed by the pair of input row keys
    unique_key: tuple[str, ...] = ()

    @property
    def mode(self) -> ChangelogMode:
        return ChangelogMode.UPSERT

    @property
    def key_columns(self) -> list[str]:
        return list(self.unique_key)

    @property
    def accepts(self) -> frozenset[ChangelogMode]:
        return frozenset({ChangelogMode.APPEND, ChangelogMode.UPSERT})

    @property
    def upsert_key(self) -> str:
        return ", ".join(self.unique_key) or "left row key, right row key"

    @property
    def source(self) -> str:
        return self.left

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys([self.left, self.right]))

    def explain(self) -> list[str]:
        v = self.variants
        kind = {
            (False, False): "INNER",
            (True, False): "LEFT",
            (False, True): "RIGHT",
            (True, True): "FULL",
        }[(v.keep_left, v.keep_right)]
        sides = [
            f"  {name}  {side} ({'updating: upserts and retractions by row key' if up else 'append-only: each row keyed by a sequence number'})"
            for name, side, up in zip(
                ("Left", "Right"), (self.left, self.right), self.input_updates, strict=True
            )
        ]
        return [
            f"ChangelogJoin  {kind} (updating: an upsert per output row keyed by its input rows'"
            " keys, a tombstone when it stops matching)",
            f"  sql: {v.inner_sql}",
            *sides,
            "  state: column family 'sessions', key b'cjoin_l'|u32(run), b'cjoin_r'|u32(run)"
            " -> IPC(latest row per input row key; a retracted key kept as a dead row)",
            "  eviction: none (every current input row is kept); with 'state.ttl', the rows"
            " of keys idle longer (no change while the watermark moved on by the TTL)",
        ]


def plan_changelog_join(
    select: exp.Select,
    join: exp.Join,
    keys: tuple[list[str] | None, list[str] | None],
    variants: OuterJoin,
    left_alias: str,
    right_alias: str,
) -> ChangelogJoin:
    """The :class:`ChangelogJoin` of ``select`` (``left JOIN right ON ...``, either side an
    updating derived input); ``variants`` are its SQL forms over ``__left`` and ``__right``."""
    what = "a join over an updating input"
    streams = {a for a, k in zip((left_alias, right_alias), keys, strict=True) if k is None}
    for projection in select.expressions:
        star = isinstance(projection, exp.Star) or isinstance(projection.this, exp.Star)
        if star and not (isinstance(projection, exp.Column) and projection.table in streams):
            raise sql_error(
                f"SELECT * in {what}: name the columns it outputs (alias.column)", projection
            )
    if select.args.get("distinct") is not None:
        raise sql_error(f"DISTINCT in {what} is not supported continuously yet", select)
    window = select.find(exp.Window)
    if window is not None:
        raise sql_error(
            f"an OVER window in {what}: rank in a subquery over the join instead", window
        )
    columns: dict[str, set[str]] = {left_alias: set(), right_alias: set()}
    for column in select.find_all(exp.Column):
        if column.table not in columns:
            raise sql_error(
                f"{what} needs each column qualified by its input's alias"
                f" ({left_alias}.{column.name} or {right_alias}.{column.name})",
                column,
            )
        if not isinstance(column.this, exp.Star):  # a stream's *: its declared columns
            columns[column.table].add(column.name)
    on = join.args.get("on")
    match_sql = None
    if variants.keep_left or variants.keep_right:
        match = exp.select(
            exp.column(LEFT_ID, table=left_alias).as_(LEFT_ID),
            exp.column(RIGHT_ID, table=right_alias).as_(RIGHT_ID),
        ).from_(exp.to_table("__left").as_(left_alias))
        match = match.join(
            exp.to_table("__right").as_(right_alias),
            on=on.copy() if on is not None else exp.true(),
        )
        match_sql = to_datafusion(match)
    left = select.args["from_"].this.name
    unique_key: tuple[str, ...] = ()
    if not (variants.keep_left or variants.keep_right):
        unique_key = _surviving_key(select, on, (left_alias, right_alias), keys)
    return ChangelogJoin(
        left,
        join.this.name,
        (keys[0] is not None, keys[1] is not None),
        variants,
        match_sql,
        (tuple(sorted(columns[left_alias])), tuple(sorted(columns[right_alias]))),
        unique_key,
    )


def output_names(select: exp.Select) -> list[str] | None:
    """The output column names of ``select``, or None when they are not all known (a ``*``, an
    expression without an alias)."""
    names = []
    for projection in select.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        star = isinstance(body, exp.Star) or (
            isinstance(body, exp.Column) and isinstance(body.this, exp.Star)
        )
        if star or not isinstance(projection, exp.Alias | exp.Column):
            return None
        names.append(projection.alias_or_name)
    return names


def spelled_out_stars(select: exp.Select, outputs: dict[str, list[str] | None]) -> exp.Select:
    """``select`` (a join) with each ``*`` and ``alias.*`` over a subquery spelled out as its
    columns. ``outputs`` holds each input's names by alias, in FROM order: None for a stream,
    whose star stays ``alias.*`` for the runtime (which knows its declared columns); a subquery
    whose names are not all known is left out, and a star over it stays (to be refused)."""
    projections: list[exp.Expr] = []
    for projection in select.expressions:
        aliases: list[str] = []
        if isinstance(projection, exp.Star) and not projection.args.get("except"):
            sides = [select.args["from_"], *(select.args.get("joins") or [])]
            aliases = [side.this.alias_or_name for side in sides]
        elif isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
            aliases = [projection.table]
        if not aliases or any(a not in outputs for a in aliases):
            projections.append(projection)
            continue
        for alias in aliases:
            names = outputs[alias]
            if names is None:
                projections.append(exp.Column(this=exp.Star(), table=exp.to_identifier(alias)))
            else:
                projections += [exp.column(n, table=alias) for n in names]
    select = select.copy()
    select.set("expressions", projections)
    return select


def _surviving_key(
    select: exp.Select,
    on: exp.Expr | None,
    aliases: tuple[str, str],
    keys: tuple[list[str] | None, list[str] | None],
) -> tuple[str, ...]:
    """The output columns that key an inner join's rows, as Flink derives a join's unique key:
    when the equalities of the ON condition cover one input's upsert key, each row of the other
    input matches at most one row, and the other's key keys the output; otherwise both keys do.
    Each key column must be selected (itself or a column the ON equates it to); () if not."""
    if not keys[0] or not keys[1]:
        return ()  # an append-only input has no key but its row's position
    same: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for item in conjuncts(on):
        if isinstance(item, exp.EQ) and all(
            isinstance(x, exp.Column) for x in (item.this, item.expression)
        ):
            a, b = ((c.table, c.name) for c in (item.this, item.expression))
            group = same.get(a, {a}) | same.get(b, {b})
            for column in group:
                same[column] = group
    sides = [
        [(alias, k) for k in side_keys or []]
        for alias, side_keys in zip(aliases, keys, strict=True)
    ]
    # each key column of an input equated to a column of the other one
    covered = [
        all(any(o[0] != alias for o in same.get(c, {c})) for c in side)
        for alias, side in zip(aliases, sides, strict=True)
    ]
    needed = sides[0] if covered[1] else sides[1] if covered[0] else sides[0] + sides[1]
    outputs: dict[tuple[str, str], str] = {}
    for projection in select.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Column):
            outputs.setdefault((body.table, body.name), projection.alias_or_name)
    if len(needed) == 1 and len(same.get(needed[0], ())) < 2:
        return ()  # one column the ON does not equate may be NULL: no record key for that row
    names: list[str] = []
    for column in needed:
        found = next((outputs[c] for c in sorted(same.get(column, {column})) if c in outputs), None)
        if found is None:
            return ()
        if found not in names:
            names.append(found)
    return tuple(names)
