"""SCRAM credentials and the server side of a SCRAM exchange (RFC 5802, RFC 7677), as Kafka
does them: SCRAM-SHA-256 and SCRAM-SHA-512, no channel binding, ``n,,`` GS2 header, an
optional ``authzid`` that must name the user itself.

A credential keeps what RFC 5802 lets a server keep: the salt, the iteration count,
``StoredKey = H(HMAC(SaltedPassword, "Client Key"))`` and ``ServerKey = HMAC(SaltedPassword,
"Server Key")``; never the password. PLAIN logins are checked against the same credential
(:func:`verify_password`).

>>> cred = make_credential("SCRAM-SHA-256", "pencil", salt=b"salt", iterations=4096)
>>> verify_password(cred, "pencil"), verify_password(cred, "pen")
(True, False)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = [
    "MECHANISMS",
    "MIN_ITERATIONS",
    "ScramCredential",
    "ScramError",
    "ScramServer",
    "credential_of",
    "make_credential",
    "verify_password",
]

MECHANISMS = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
"""SCRAM mechanism -> hashlib name."""
MIN_ITERATIONS = 4096
"""Kafka's minimum (and default) iteration count."""


class ScramError(Exception):
    """A malformed or failed SCRAM exchange; the message is safe to log."""


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """What the store keeps of one user's password for one mechanism."""

    user: str
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hmac(algorithm: str, key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, algorithm).digest()


def _keys(algorithm: str, password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac(algorithm, password.encode(), salt, iterations)
    return _keys_of_salted(algorithm, salted)


def _keys_of_salted(algorithm: str, salted: bytes) -> tuple[bytes, bytes]:
    client_key = _hmac(algorithm, salted, b"Client Key")
    stored_key = hashlib.new(algorithm, client_key).digest()
    return stored_key, _hmac(algorithm, salted, b"Server Key")


def make_credential(
    mechanism: str,
    password: str,
    *,
    user: str = "",
    salt: bytes | None = None,
    iterations: int = MIN_ITERATIONS,
) -> ScramCredential:
    """A new credential (a random 32-byte salt unless given)."""
    algorithm = MECHANISMS[mechanism]
    salt = salt if salt is not None else secrets.token_bytes(32)
    stored_key, server_key = _keys(algorithm, password, salt, iterations)
    return ScramCredential(user, mechanism, salt, iterations, stored_key, server_key)


def credential_of(
    user: str, mechanism: str, salt: bytes, iterations: int, salted_password: bytes
) -> ScramCredential:
    """The credential of a SaltedPassword a client computed (Kafka's AlterUserScramCredentials
    sends that, never the password)."""
    stored_key, server_key = _keys_of_salted(MECHANISMS[mechanism], salted_password)
    return ScramCredential(user, mechanism, salt, iterations, stored_key, server_key)


def verify_password(credential: ScramCredential, password: str) -> bool:
    """Whether ``password`` is the one ``credential`` was made from (constant-time compare)."""
    algorithm = MECHANISMS[credential.mechanism]
    stored_key, _ = _keys(algorithm, password, credential.salt, credential.iterations)
    return hmac.compare_digest(stored_key, credential.stored_key)


def _attributes(message: str) -> dict[str, str]:
    found = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part[:20]!r}")
        found[part[0]] = part[2:]
    return found


def _text(message: bytes) -> str:
    try:
        return message.decode()
    except UnicodeDecodeError:
        raise ScramError("SCRAM message is not UTF-8") from None


def _unescape(name: str) -> str:
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise ScramError("malformed SCRAM user name")
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramServer:
    """One SCRAM exchange: ``first(client_first) -> user``, then, with that user's credential
    (or None), ``server_first()``, then ``final(client_final) -> server_final``."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.algorithm = MECHANISMS[mechanism]
        self.user = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._credential: ScramCredential | None = None

    def first(self, client_first: bytes) -> str:
        """Parse the client's first message; the user it names."""
        text = _text(client_first)
        gs2, sep, bare = text.partition(",")
        authzid, sep2, bare = bare.partition(",")
        if not sep or not sep2 or gs2 != "n":
            raise ScramError("SCRAM: only the GS2 header 'n' (no channel binding) is supported")
        attributes = _attributes(bare)
        if "n" not in attributes or "r" not in attributes or not attributes["r"]:
            raise ScramError("SCRAM client-first-message lacks a user name or nonce")
        self.user = _unescape(attributes["n"])
        if authzid and _unescape(authzid.removeprefix("a=")) != self.user:
            raise ScramError("SCRAM authorization id differs from the user name")
        self._client_first_bare = bare
        self._nonce = attributes["r"] + secrets.token_urlsafe(24)
        return self.user

    def server_first(self, credential: ScramCredential | None) -> bytes:
        """The server-first-message; for an unknown user (None) a made-up salt, so the reply
        does not tell whether the user exists (the final step then fails)."""
        self._credential = credential
        salt = credential.salt if credential else secrets.token_bytes(32)
        iterations = credential.iterations if credential else MIN_ITERATIONS
        self._server_first = f"r={self._nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        return self._server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        """Check the client's proof; the server-final-message. ScramError if it fails."""
        text = _text(client_final)
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ScramError("SCRAM client-final-message lacks a proof")
        attributes = _attributes(without_proof)
        if attributes.get("r") != self._nonce:
            raise ScramError("SCRAM nonce mismatch")
        if attributes.get("c") not in ("biws", "eSws"):  # base64 of "n,," / "y,,"
            raise ScramError("SCRAM channel binding not supported")
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            raise ScramError("SCRAM proof is not base64") from None
        credential = self._credential
        if credential is None:
            raise ScramError(f"unknown user {self.user!r}")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self.algorithm, credential.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ScramError("SCRAM proof has the wrong length")
        client_key = (int.from_bytes(proof) ^ int.from_bytes(signature)).to_bytes(len(proof))
        if not hmac.compare_digest(
            hashlib.new(self.algorithm, client_key).digest(), credential.stored_key
        ):
            raise ScramError(f"wrong password for user {self.user!r}")
        server_signature = _hmac(self.algorithm, credential.server_key, auth_message)
        return b"v=" + base64.b64encode(server_signature)
