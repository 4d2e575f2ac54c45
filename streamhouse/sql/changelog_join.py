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

    @property
    def mode(self) -> ChangelogMode:
        return ChangelogMode.UPSERT

    @property
    def accepts(self) -> frozenset[ChangelogMode]:
        return frozenset({ChangelogMode.APPEND, ChangelogMode.UPSERT})

    @property
    def upsert_key(self) -> str:
        return "left row key, right row key"

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
            "  eviction: none (every current input row is kept)",
        ]


def plan_changelog_join(
    select: exp.Select,
    join: exp.Join,
    updating: tuple[bool, bool],
    variants: OuterJoin,
    left_alias: str,
    right_alias: str,
) -> ChangelogJoin:
    """The :class:`ChangelogJoin` of ``select`` (``left JOIN right ON ...``, either side an
    updating derived input); ``variants`` are its SQL forms over ``__left`` and ``__right``."""
    what = "a join over an updating input"
    for projection in select.expressions:
        if isinstance(projection, exp.Star) or isinstance(projection.this, exp.Star):
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
    return ChangelogJoin(
        left,
        join.this.name,
        updating,
        variants,
        match_sql,
        (tuple(sorted(columns[left_alias])), tuple(sorted(columns[right_alias]))),
    )
