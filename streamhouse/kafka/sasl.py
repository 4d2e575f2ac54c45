"""SASL: SaslHandshake (v1) and SaslAuthenticate, for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512.

On a ``SASL_PLAINTEXT`` or ``SASL_SSL`` listener a connection is served nothing but
ApiVersions, SaslHandshake and SaslAuthenticate until it has logged in (the server closes it
at any other request). The handshake picks a mechanism of ``settings.sasl_mechanisms``; then
SaslAuthenticate carries the mechanism's messages: one for PLAIN (``authzid NUL user NUL
password``, checked against the user's stored SCRAM credential), two for SCRAM (RFC 5802;
:mod:`streamhouse.security.scram`). A failed login is answered SASL_AUTHENTICATION_FAILED, after
``settings.failed_login_delay_ms`` (Kafka's ``connection.failed.authentication.delay.ms``:
a client retrying in a loop costs the server little), and the connection is closed; it is audited (:mod:`streamhouse.kafka.audit`: principal, client
address, mechanism). Password hashing (PLAIN) runs in a worker thread; a SCRAM login costs
the server two HMACs, an unknown user not even those; credentials come from the agent's copy
(:class:`streamhouse.kafka.acls.Access`), read from the store once per change.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.audit import AUDIT
from streamhouse.kafka.wire import ErrorCode, RequestHeader, make, messages
from streamhouse.security.scram import MECHANISMS, ScramError, ScramServer, verify_password

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker
    from streamhouse.kafka.listeners import Session

__all__ = ["HANDLERS", "PRE_AUTHENTICATION", "enabled_mechanisms"]

log = logging.getLogger(__name__)

PRE_AUTHENTICATION = frozenset(
    {ApiKey.API_VERSIONS, ApiKey.SASL_HANDSHAKE, ApiKey.SASL_AUTHENTICATE}
)
"""What a SASL listener serves before the login."""
SASL_MECHANISMS = ("PLAIN", *MECHANISMS)
FAILED = "Authentication failed: invalid username or password"


def enabled_mechanisms(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``settings.sasl_mechanisms`` (comma-separated, or a list in streamhouse.toml) checked.

    >>> enabled_mechanisms("scram-sha-512, PLAIN")
    ('SCRAM-SHA-512', 'PLAIN')
    """
    from streamhouse.errors import ConfigError

    items = text if isinstance(text, list | tuple) else str(text).split(",")
    found = tuple(item.strip().upper() for item in items if item.strip())
    unknown = [m for m in found if m not in SASL_MECHANISMS]
    if unknown or not found:
        raise ConfigError(
            f"sasl_mechanisms: {', '.join(unknown) or 'none'} (one or more of"
            f" {', '.join(SASL_MECHANISMS)})"
        )
    return found


async def handle_sasl_handshake(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.SASL_HANDSHAKE, header.api_version, True)
    session = header.session
    enabled = broker.sasl_mechanisms
    if session is None or not session.listener.sasl or session.authenticated or session.mechanism:
        error = ErrorCode.illegal_sasl_state
    elif request.mechanism not in enabled:
        error = ErrorCode.unsupported_sasl_mechanism
    else:
        session.mechanism = request.mechanism
        error = ErrorCode.none
    return make(module.SaslHandshakeResponse, error_code=error, mechanisms=enabled)


async def handle_sasl_authenticate(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.SASL_AUTHENTICATE, header.api_version, True)
    session = header.session
    try:
        if session is None or session.authenticated or session.mechanism is None:
            raise ScramError("SaslAuthenticate before SaslHandshake or after the login")
        if session.mechanism == "PLAIN":
            reply = await _plain(broker, session, bytes(request.auth_bytes))
        else:
            reply = await _scram(broker, session, bytes(request.auth_bytes))
    except ScramError as exc:
        if session is not None:
            session.failed = True
            AUDIT.line(
                "failed login of %s from %s on %s (%s): %s",
                session.sasl_user or "?",
                header.client_host.lstrip("/") or "?",
                session.listener,
                session.mechanism or "no mechanism",
                str(exc),
            )
        illegal = session is None or session.mechanism is None or session.authenticated
        await asyncio.sleep(broker.settings.failed_login_delay_ms / 1000)
        return make(
            module.SaslAuthenticateResponse,
            error_code=ErrorCode.illegal_sasl_state
            if illegal
            else ErrorCode.sasl_authentication_failed,
            error_message=str(exc) if illegal else FAILED,
            auth_bytes=b"",
            session_lifetime=0,
        )
    return make(
        module.SaslAuthenticateResponse,
        error_code=ErrorCode.none,
        error_message=None,
        auth_bytes=reply,
        session_lifetime=0,
    )


async def _plain(broker: Broker, session: Session, message: bytes) -> bytes:
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise ScramError("malformed PLAIN message")
    try:
        authzid, user, password = (part.decode() for part in parts)
    except UnicodeDecodeError:
        raise ScramError("PLAIN message is not UTF-8") from None
    session.sasl_user = user
    if authzid and authzid != user:
        raise ScramError("PLAIN authorization id differs from the user name")
    credential = None
    for mechanism in MECHANISMS:
        credential = await broker.access.credential(user, mechanism) if user else None
        if credential is not None:
            break
    if credential is None or not await asyncio.to_thread(verify_password, credential, password):
        raise ScramError(f"wrong password or unknown user {user!r}")
    session.login(user)
    return b""


async def _scram(broker: Broker, session: Session, message: bytes) -> bytes:
    exchange = session.scram
    if exchange is None:
        assert session.mechanism is not None
        exchange = session.scram = ScramServer(session.mechanism)
        user = exchange.first(message)
        session.sasl_user = user
        return exchange.server_first(await broker.access.credential(user, exchange.mechanism))
    reply = exchange.final(message)
    session.scram = None
    session.login(exchange.user)
    return reply


HANDLERS = {
    ApiKey.SASL_HANDSHAKE: handle_sasl_handshake,
    ApiKey.SASL_AUTHENTICATE: handle_sasl_authenticate,
}
"""API key -> handler."""
