"""The Kafka wire protocol over the log: real Kafka clients produce, consume and form groups.

``streamhouse serve`` (or ``python -m streamhouse.kafka``) runs :func:`run`; embedders
``await serve(log, settings)``. One module per API family: :mod:`.versions`,
:mod:`.metadata`, :mod:`.produce`, :mod:`.fetch`, :mod:`.offsets`, :mod:`.admin`,
:mod:`.groups`, :mod:`.producers`; :mod:`.server` holds the connections and the dispatch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamhouse.kafka.server import run, serve


def __getattr__(name: str) -> Any:
    """``run`` and ``serve`` from :mod:`.server`, imported when first asked for: a module of
    this package (the transaction coordinator a continuous query's sink uses) is imported
    without the whole protocol server."""
    if name in __all__:
        from streamhouse.kafka import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["run", "serve"]
