"""Options of a continuous query, from ``SET 'key' = 'value';`` lines or keyword arguments.

=======================  ==================================================  ==============
option                   meaning                                             default
=======================  ==================================================  ==============
``allowed-lateness``     how long after its end a window still takes rows    ``0``
``late-rows.topic``      side output topic for late rows (else dropped)      none
``dead-letter.topic``    topic for rows that do not parse, with the reason   ``<query>.dlq``
``idle-timeout``         a partition without new records this long no        ``5 s``
                         longer holds the watermark back
``scan.startup.mode``    ``earliest-offset`` or ``latest-offset``            earliest
``max-batch-records``    records read per micro-batch at most                ``200000``
``poll-interval``        how long an idle query waits for new records        ``200 ms``
``read.on-damage``       ``fail``: a damaged range of a source fails the      ``fail``
                         query; ``skip``: it is left out and reported
``isolation.level``      ``read_committed``: records of open or aborted       committed
                         transactions are not read; ``read_uncommitted``:
                         every record is
``parallelism``          tasks (processes) the query runs as; see            ``1``
                         :mod:`streamhouse.runtime.parallel`
``state.ttl``            idle state retention (also                          none
                         ``table.exec.state.ttl``): a regular stream join
                         drops rows older than the watermark minus it; a
                         join over updating inputs the rows of keys not
                         changed while the watermark moved on by it
=======================  ==================================================  ==============

``read.on-damage`` is also a setting of bounded queries (``SET 'read.on-damage' = 'skip';``
before a query, or ``streamhouse query --skip-damaged``).

Durations are intervals (``'10 s'``, ``'1 minute'``, ``'500 ms'``) or milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from sqlglot import exp

from streamhouse.errors import ConfigError, SqlError
from streamhouse.log.isolation import ISOLATION_LEVEL, Isolation, isolation_level
from streamhouse.sql.ddl import interval_ms
from streamhouse.sql.parse import parse_one

READ_ON_DAMAGE = "read.on-damage"
ON_DAMAGE = ("fail", "skip")
"""What a read does at a damaged range of records: fail naming it (default), or skip and report it."""

_NAMES = {
    "allowed-lateness": "allowed_lateness_ms",
    "late-rows.topic": "late_topic",
    "dead-letter.topic": "dead_letter_topic",
    "idle-timeout": "idle_timeout_ms",
    "scan.startup.mode": "startup",
    "max-batch-records": "max_batch_records",
    "poll-interval": "poll_interval_ms",
    "state.ttl": "state_ttl_ms",
    "checkpoint.object-store": "checkpoint_object_store",
    "checkpoint.interval": "checkpoint_interval_ms",
    "table.exec.state.ttl": "state_ttl_ms",
    READ_ON_DAMAGE: "on_damage",
    ISOLATION_LEVEL: "isolation",
    "parallelism": "parallelism",
}
_DURATIONS = {
    "allowed_lateness_ms",
    "idle_timeout_ms",
    "poll_interval_ms",
    "state_ttl_ms",
    "checkpoint_interval_ms",
}


@dataclass(frozen=True)
class QueryOptions:
    allowed_lateness_ms: int = 0
    late_topic: str | None = None
    dead_letter_topic: str | None = None
    idle_timeout_ms: int = 5_000
    startup: str = "earliest-offset"
    max_batch_records: int = 200_000
    poll_interval_ms: int = 200
    state_ttl_ms: int = 0  # 0: keep join state until its time bounds expire it
    checkpoint_object_store: bool = False
    checkpoint_interval_ms: int = 60_000
    on_damage: str = "fail"  # read.on-damage: "fail" or "skip"
    isolation: Isolation = Isolation.READ_COMMITTED  # isolation.level
    parallelism: int = 1  # tasks (processes); 1: the query runs in this process

    def with_options(self, options: dict[str, Any]) -> QueryOptions:
        """These options with ``options`` (SQL names like ``allowed-lateness`` or field names) applied."""
        known = {f.name for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, value in options.items():
            name = _NAMES.get(str(key).lower(), str(key).replace("-", "_").replace(".", "_"))
            if name not in known:
                raise ConfigError(f"unknown query option {key!r} (known: {', '.join(_NAMES)})")
            if name in _DURATIONS:
                changes[name] = duration_ms(value)
            elif name == "max_batch_records":
                changes[name] = int(value)
            elif name == "parallelism":
                changes[name] = parallelism(value)
            elif name == "checkpoint_object_store":
                changes[name] = str(value).strip().lower() in ("1", "true", "yes", "on")
            elif name == "on_damage":
                changes[name] = on_damage(value)
            elif name == "isolation":
                changes[name] = isolation_level(value)
            elif name == "startup":
                mode = str(value).lower()
                if mode not in ("earliest-offset", "latest-offset", "earliest", "latest"):
                    raise ConfigError(
                        f"scan.startup.mode must be earliest-offset or latest-offset, not {value!r}"
                    )
                changes[name] = "latest-offset" if mode.startswith("latest") else "earliest-offset"
            else:
                changes[name] = None if value is None else str(value)
        return replace(self, **changes)


def parallelism(value: Any) -> int:
    """The ``parallelism`` ``value`` names: an integer from 1 to the key groups (128).

    >>> parallelism("2")
    2
    """
    from streamhouse.runtime.key_groups import MAX_PARALLELISM

    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_PARALLELISM:
        raise ConfigError(
            f"parallelism must be an integer from 1 to {MAX_PARALLELISM}, not {value!r}"
        )
    return int(text)


def on_damage(value: Any) -> str:
    """The ``read.on-damage`` policy ``value`` names; any other value is refused by name.

    >>> on_damage("SKIP")
    'skip'
    """
    policy = str(value).strip().lower()
    if policy not in ON_DAMAGE:
        raise ConfigError(f"{READ_ON_DAMAGE} must be 'fail' or 'skip', not {value!r}")
    return policy


def duration_ms(value: Any) -> int:
    """Milliseconds from an int, or a string like ``'10 s'`` / ``'1' MINUTE``."""
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return interval_ms(parse_one(f"SELECT INTERVAL '{text}'").expressions[0])
    except SqlError:
        raise ConfigError(f"not a duration: {value!r}") from None


def set_options(statement: exp.Set) -> dict[str, str]:
    """The key/value pairs of a ``SET 'key' = 'value'`` statement."""
    options = {}
    for item in statement.expressions:
        eq = item.this
        if not isinstance(eq, exp.EQ):
            raise SqlError("SET takes 'key' = 'value'")
        key = eq.this.name if isinstance(eq.this, exp.Literal | exp.Column) else eq.this.sql()
        value = (
            eq.expression.name if isinstance(eq.expression, exp.Literal) else eq.expression.sql()
        )
        options[key] = value
    return options
