"""The Kafka wire protocol over the log: real Kafka clients produce, consume and form groups.

``streamhouse serve`` (or ``python -m streamhouse.kafka``) runs :func:`run`; embedders
``await serve(log, settings)``. One module per API family: :mod:`.versions`,
:mod:`.metadata`, :mod:`.produce`, :mod:`.fetch`, :mod:`.offsets`, :mod:`.admin`,
:mod:`.groups`, :mod:`.producers`; :mod:`.server` holds the connections and the dispatch.
"""

from __future__ import annotations

from streamhouse.kafka.server import run, serve

__all__ = ["run", "serve"]
