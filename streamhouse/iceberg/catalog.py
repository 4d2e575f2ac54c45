"""Where a StreamHouse's Iceberg tables live: pyiceberg's SQL catalog in the metadata database
(SQLite file or PostgreSQL, through SQLAlchemy) and the warehouse beside the segment objects.

:func:`catalog_properties` are the properties ``pyiceberg.catalog.load_catalog(**props)``
takes to open that catalog from any process (``streamhouse iceberg catalog`` prints them); a
stream ``s`` is the table ``streamhouse.s`` there.

>>> from streamhouse.config import Settings
>>> props = catalog_properties(Settings.load(data_dir="/data"))
>>> props["uri"], props["warehouse"]
('sqlite:////data/metadata.sqlite3', 'file:///data/objects/iceberg')
>>> catalog_properties(Settings.load(data_dir="/d", metadata="postgres://u@h:5432/db?x=1"))["uri"]
'postgresql+psycopg://u@h:5432/db?x=1'
>>> props = catalog_properties(Settings.load(object_store="s3://b/p/", s3_endpoint_url="http://s3"))
>>> props["warehouse"], props["s3.endpoint"]
('s3://b/p/iceberg', 'http://s3')
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from streamhouse.config import Settings
from streamhouse.log.metadata import POSTGRESQL_SCHEMES, sqlite_path

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import StaticTable

    from streamhouse.log.objectstore import ObjectStore

__all__ = [
    "CATALOG_NAME",
    "NAMESPACE",
    "WAREHOUSE_PREFIX",
    "catalog_properties",
    "metadata_location",
    "open_catalog",
    "restore_tables",
    "static_table",
]

CATALOG_NAME = "streamhouse"
NAMESPACE = "streamhouse"
"""The Iceberg namespace of every stream's table: stream ``s`` is ``streamhouse.s``."""
WAREHOUSE_PREFIX = "iceberg"
"""The warehouse's place in the object store (beside ``segments/``, which fsck lists)."""


def catalog_properties(settings: Settings) -> dict[str, str]:
    """The properties of the SQL catalog ``settings`` name (see the module)."""
    path = sqlite_path(settings)
    if path is None:  # PostgreSQL, through psycopg 3 (libpq query options kept)
        url = str(settings.metadata)
        scheme = next(s for s in POSTGRESQL_SCHEMES if url.startswith(s))
        uri = "postgresql+psycopg://" + url.removeprefix(scheme)
    else:
        uri = f"sqlite:///{Path(path).resolve()}"
    props = {
        "name": CATALOG_NAME,
        "type": "sql",
        "uri": uri,
        "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO",
    }
    if settings.object_store:
        parsed = urlparse(settings.object_store)
        prefix = "/".join(p for p in (parsed.path.strip("/"), WAREHOUSE_PREFIX) if p)
        props["warehouse"] = f"s3://{parsed.netloc}/{prefix}"
        props["s3.region"] = settings.s3_region
        if settings.s3_endpoint_url:
            props["s3.endpoint"] = settings.s3_endpoint_url
    else:
        root = (Path(settings.data_dir) / "objects").resolve()
        props["warehouse"] = f"file://{root}/{WAREHOUSE_PREFIX}"
    return props


def open_catalog(settings: Settings) -> SqlCatalog:
    """The SQL catalog of ``settings`` (its tables created in the metadata database on first
    use), with the namespace :data:`NAMESPACE`."""
    from pyiceberg.catalog.sql import SqlCatalog  # pyiceberg and SQLAlchemy only when used

    props = catalog_properties(settings)
    catalog = SqlCatalog(props.pop("name"), **props)
    catalog.create_namespace_if_not_exists(NAMESPACE)
    return catalog


METADATA_LOCATION = (
    "SELECT metadata_location FROM iceberg_tables"
    " WHERE catalog_name = {p} AND table_namespace = {p} AND table_name = {p}"
)
"""The row pyiceberg's SQL catalog keeps per table: where its current metadata file is."""


def static_table(settings: Settings, location: str) -> StaticTable:
    """The table whose metadata file is ``location``, opened by pyiceberg for reading
    (found by :func:`metadata_location`: one query of the catalog's table, lighter than
    :func:`open_catalog`, which needs SQLAlchemy)."""
    from pyiceberg.table import StaticTable

    props = catalog_properties(settings)
    for catalog_only in ("name", "type", "uri", "warehouse"):
        props.pop(catalog_only)
    return StaticTable.from_metadata(location, properties=props)


def metadata_location(settings: Settings, stream: str) -> str | None:
    """Where stream ``stream``'s table's current metadata file is (None: it has no table)."""
    key = (CATALOG_NAME, NAMESPACE, stream)
    path = sqlite_path(settings)
    if path is not None:
        import sqlite3

        try:
            with sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True) as conn:
                row = conn.execute(METADATA_LOCATION.format(p="?"), key).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None  # no Iceberg table was ever made here
            raise
        return None if row is None else row[0]
    import psycopg

    try:
        with psycopg.connect(str(settings.metadata), connect_timeout=10) as conn:
            row = conn.execute(METADATA_LOCATION.format(p="%s"), key).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None else row[0]


METADATA_FILE = re.compile(r"^(\d+)-[^/]*\.metadata\.json$")
"""A table's metadata file in its ``metadata/`` folder: ``<version>-<uuid>.metadata.json``."""


def restore_tables(settings: Settings, store: ObjectStore) -> dict[str, str]:
    """Registers in the SQL catalog of ``settings`` every table of the warehouse in ``store``
    it does not have (``fsck --rebuild-metadata`` starts a fresh metadata database, and the
    catalog's rows are in it), each at its newest metadata file: the highest version, of two
    of the same version (writers that raced) the one updated last. A metadata file whose
    commit was cut short by a kill is newer than the catalog's: its snapshot holds its
    Parquet files and records their offsets together, so Tableflow goes on after them.
    Returns the tables registered and their metadata files."""
    prefix = f"{WAREHOUSE_PREFIX}/{NAMESPACE}/"
    newest: dict[str, tuple[int, int, str]] = {}
    for key in store.list(prefix):
        table, _, rest = key.removeprefix(prefix).partition("/metadata/")
        found = METADATA_FILE.match(rest)
        if not table or found is None:
            continue
        updated = json.loads(store.get(key)).get("last-updated-ms", 0)
        candidate = (int(found.group(1)), updated, key.removeprefix(f"{WAREHOUSE_PREFIX}/"))
        if table not in newest or candidate > newest[table]:
            newest[table] = candidate
    if not newest:
        return {}
    catalog = open_catalog(settings)
    warehouse = catalog_properties(settings)["warehouse"]
    restored = {}
    for table, (_, _, key) in sorted(newest.items()):
        identifier = f"{NAMESPACE}.{table}"
        if catalog.table_exists(identifier):
            continue
        location = f"{warehouse}/{key}"
        catalog.register_table(identifier, location)
        restored[identifier] = location
    return restored
