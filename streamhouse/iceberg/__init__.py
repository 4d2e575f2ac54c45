"""Iceberg tables of streams (Tableflow): a declared stream kept as an Apache Iceberg table.

``CREATE STREAM s (...) WITH ('iceberg' = 'true')`` (or ``ALTER STREAM s SET ('iceberg' =
'true')``) makes the storage-lifecycle pass append the stream's rows to the Iceberg table
``streamhouse.s``, exactly once (:mod:`streamhouse.iceberg.tableflow`). The catalog is
pyiceberg's SQL catalog in the metadata database and the warehouse is in the object store
(:mod:`streamhouse.iceberg.catalog`); any engine that reads Iceberg reads the table.
"""

from streamhouse.iceberg.catalog import NAMESPACE, catalog_properties, open_catalog
from streamhouse.iceberg.tableflow import TableflowReport, append_streams, iceberg_enabled

__all__ = [
    "NAMESPACE",
    "TableflowReport",
    "append_streams",
    "catalog_properties",
    "iceberg_enabled",
    "open_catalog",
]
