"""Shared fixtures: real servers start once per session, each test gets fresh resources."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import pytest

from streamhouse.log.objectstore import S3ObjectStore

# -- S3 (moto server on loopback) ----------------------------------------------------------

S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """The endpoint URL of an S3-compatible moto server on 127.0.0.1 (a free port)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_store(moto_server: str) -> Iterator[Callable[..., S3ObjectStore]]:
    """Factory ``s3_store(prefix="")``: stores on one bucket created fresh for this test."""
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    stores: list[S3ObjectStore] = []

    def make(prefix: str = "") -> S3ObjectStore:
        store = S3ObjectStore(
            bucket,
            prefix,
            endpoint_url=moto_server,
            create_bucket=not stores,
            **S3_CREDENTIALS,
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def s3_url(
    s3_store: Callable[..., S3ObjectStore], monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], str]:
    """Factory ``s3_url(prefix) -> "s3://bucket/prefix"`` on a fresh bucket of the moto server,
    with moto's credentials in the environment for the StreamHouse that opens it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_CREDENTIALS["aws_secret_access_key"])
    bucket = s3_store().bucket  # creates the bucket
    return lambda prefix: f"s3://{bucket}/{prefix}"
