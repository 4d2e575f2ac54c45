"""Listeners: where the Kafka protocol is served, and with which security protocol.

A listener is one socket with one of Kafka's security protocols: ``PLAINTEXT`` or ``SSL``
(TLS from the standard library's :mod:`ssl`), ``SASL_PLAINTEXT`` or ``SASL_SSL`` (a login
first, :mod:`streamhouse.kafka.sasl`). The main listener is ``settings.host:port``
with ``settings.security_protocol``; ``settings.listeners`` adds others, each on its own port
(``SSL://127.0.0.1:9093,PLAINTEXT://0.0.0.0:9094``), so plaintext and TLS clients are served
side by side. Every TLS listener uses ``tls_cert`` and ``tls_key`` (PEM); with
``tls_client_ca`` a client must present a certificate that CA signed (mTLS), and its
principal is the certificate's subject, as Kafka names it (``User:CN=app,O=Example``).

Each connection keeps its :class:`Session`: the listener it came in on (Metadata answers
with that listener's address) and its principal.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streamhouse.config import Settings
from streamhouse.errors import ConfigError

if TYPE_CHECKING:
    from streamhouse.kafka.cluster import Node
    from streamhouse.security.scram import ScramServer

__all__ = [
    "ANONYMOUS",
    "PROTOCOLS",
    "Listener",
    "Session",
    "listeners_of",
    "principal_of",
    "seen_through",
    "server_tls_context",
]

log = logging.getLogger(__name__)

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
"""Kafka's security protocols."""
ANONYMOUS = "User:ANONYMOUS"
"""Kafka's principal of a client that did not authenticate."""
HANDSHAKE_TIMEOUT_S = 10.0
"""A TLS handshake not done by then closes the connection."""


@dataclass
class Listener:
    """One socket the Kafka protocol is served on.

    ``advertised_host``/``advertised_port`` are what Metadata tells clients that came in on
    it (``advertised_port`` 0 until the socket is bound: then the bound port).
    """

    protocol: str
    host: str
    port: int
    advertised_host: str
    advertised_port: int = 0
    is_main: bool = False
    """The ``host:port`` one, whose address the agent registers for the other agents."""

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def __str__(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"


@dataclass
class Session:
    """What the server knows of one connection: its listener and its principal; on a SASL
    listener, the login under way (``mechanism``, ``scram``, the ``sasl_user`` it names) and
    whether it ``failed`` (the connection is then closed)."""

    listener: Listener
    principal: str = ANONYMOUS
    authenticated: bool = True
    mechanism: str | None = None
    scram: ScramServer | None = None
    sasl_user: str = ""
    failed: bool = False
    host: str = ""
    """The client's address (what ACLs name as the host)."""

    def __post_init__(self) -> None:
        self.authenticated = not self.listener.sasl

    def login(self, user: str) -> None:
        """The SASL login succeeded: the principal is ``User:<user>``."""
        self.authenticated = True
        self.principal = f"User:{user}"


def seen_through(
    session: Session | None, node_id: int, nodes: tuple[Node, ...]
) -> tuple[Node, ...]:
    """``nodes`` as a client of ``session``'s listener must reach them: this agent
    (``node_id``) at that listener's address, so a TLS client is told the TLS port. Other
    agents keep the address they registered (their main listener's)."""
    if session is None or session.listener.is_main:
        return nodes
    listener = session.listener
    return tuple(
        dataclasses.replace(node, host=listener.advertised_host, port=listener.advertised_port)
        if node.node_id == node_id
        else node
        for node in nodes
    )


def _protocol(name: str, where: str) -> str:
    protocol = name.strip().upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"{where}: unknown security protocol {name!r} (one of {', '.join(PROTOCOLS)})"
        )
    return protocol


def parse_listener(text: str, advertised_host: str) -> Listener:
    """``PROTOCOL://HOST:PORT`` -> a :class:`Listener`; ConfigError if malformed.

    >>> str(parse_listener("ssl://127.0.0.1:9093", "127.0.0.1"))
    'SSL://127.0.0.1:9093'
    """
    name, sep, address = text.strip().partition("://")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"listener {text!r}: expected PROTOCOL://HOST:PORT, e.g. SSL://127.0.0.1:9093"
        )
    return Listener(
        _protocol(name, f"listener {text!r}"), host.strip("[]"), int(port), advertised_host
    )


def listeners_of(settings: Settings) -> list[Listener]:
    """The main listener, then those of ``settings.listeners``; ConfigError if two share a port
    or a TLS listener has no certificate."""
    main = Listener(
        _protocol(settings.security_protocol, "security_protocol"),
        settings.host,
        settings.port,
        settings.advertised_host,
        settings.advertised_port,
        is_main=True,
    )
    found = [main]
    extra = settings.listeners  # a list in streamhouse.toml, a string from flags or env
    for text in extra if isinstance(extra, list | tuple) else str(extra).split(","):
        if text.strip():
            found.append(parse_listener(text, settings.advertised_host))
    ports = [listener.port for listener in found if listener.port]
    if len(ports) != len(set(ports)):
        raise ConfigError(f"listeners share a port: {', '.join(map(str, found))}")
    if any(listener.tls for listener in found) and not (settings.tls_cert and settings.tls_key):
        raise ConfigError("a TLS listener needs tls_cert and tls_key (--tls-cert, --tls-key)")
    return found


def server_tls_context(settings: Settings) -> ssl.SSLContext:
    """The server side of TLS: certificate chain and key; client certificates required and
    verified against ``tls_client_ca`` if set. ConfigError (one line) for unreadable or bad
    files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # trusts no CA but tls_client_ca
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{name}: {path} is not a readable file")
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls_cert {settings.tls_cert} / tls_key {settings.tls_key}: not a PEM certificate"
            f" and its private key ({_reason(exc)})"
        ) from None
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"tls_client_ca {settings.tls_client_ca}: not a PEM CA certificate ({_reason(exc)})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


_ESCAPED = str.maketrans({c: "\\" + c for c in ',+"\\<>;='})


def principal_of(peercert: dict | None) -> str:
    """Kafka's principal of a verified client certificate: ``User:`` and its subject as RFC
    2253 writes it (last RDN first, as Java's X500Principal.getName()); ANONYMOUS without one.

    >>> principal_of({"subject": ((("countryName", "NL"),), (("organizationName", "Ex, Inc"),),
    ...                           (("commonName", "app"),))})
    'User:CN=app,O=Ex\\\\, Inc,C=NL'
    """
    if not peercert or not peercert.get("subject"):
        return ANONYMOUS
    rdns = []
    for rdn in reversed(peercert["subject"]):
        parts = [f"{_SHORT.get(key, key)}={value.translate(_ESCAPED)}" for key, value in rdn]
        rdns.append("+".join(parts))
    return "User:" + ",".join(rdns)


_SHORT = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
