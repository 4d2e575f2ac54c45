"""Shared fixtures: real servers start once per session, each test gets fresh resources."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Generator, Iterator
from urllib.parse import urlencode, urlsplit, urlunsplit

import hypothesis  # before streamhouse, so that kio registers its strategies
import pytest

from streamhouse.log.objectstore import S3ObjectStore

if os.environ.get("CI"):
    # CI draws the same examples on every run (a landing does not hang on the draw); local runs
    # keep drawing new ones, and what they find is fixed in the code, with a regression test.
    hypothesis.settings.register_profile("ci", derandomize=True)
    hypothesis.settings.load_profile("ci")

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


# -- PostgreSQL (metadata) -----------------------------------------------------------------

POSTGRES_URL = os.environ.get(
    "STREAMHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
"""A server where the tests may create databases; each session makes its own."""


def with_database(url: str, database: str) -> str:
    """``url`` naming another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections put ``schema`` first on their ``search_path``."""
    parts = urlsplit(url)
    option = urlencode({"options": f"-csearch_path={schema}"})
    return urlunsplit(parts._replace(query=f"{parts.query}&{option}" if parts.query else option))


NO_POSTGRES_SERVER = "no PostgreSQL server"
"""How the reason of every test skipped for want of a server starts."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Skips for want of a PostgreSQL server are reported at this file rather than at each
    test, so ``-ra`` folds them into one line: ``SKIPPED [n] tests/conftest.py: no ...``."""
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and NO_POSTGRES_SERVER in longrepr[2]:
        report.longrepr = (__file__, None, longrepr[2])
    return report


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The URL of a database created for this test session on ``$STREAMHOUSE_TEST_POSTGRES``,
    dropped at its end. Without a server the tests that need it are skipped, or fail if
    ``CI=true``."""
    import psycopg
    from psycopg import sql

    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        cause = str(exc).strip().splitlines()[0]  # the rest is libpq's advice
        reason = f"{NO_POSTGRES_SERVER} at {POSTGRES_URL} (set STREAMHOUSE_TEST_POSTGRES): {cause}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    database = f"streamhouse_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        yield with_database(POSTGRES_URL, database)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The URL of a fresh, empty schema of the session's database, for one test."""
    import psycopg
    from psycopg import sql

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return with_schema(postgres_database, schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata_url(request: pytest.FixtureRequest) -> str | None:
    """Each metadata backend in turn: ``None`` (SQLite in the data directory) or the URL of
    a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def md(tmp_path, metadata_url: str | None) -> Iterator[object]:
    """A fresh metadata store of each backend in turn, closed after the test."""
    from streamhouse.log.metadata.postgres import PostgresMetadata
    from streamhouse.log.metadata.sqlite import SQLiteMetadata

    store = (
        SQLiteMetadata(tmp_path / "metadata.sqlite3")
        if metadata_url is None
        else PostgresMetadata(metadata_url)
    )
    yield store
    store.close()
