"""The package is declared in pyproject.toml; this adds its C libraries, loaded with ctypes
(streamhouse/native.py): record framing (streamhouse/log/records/_framing.c), record
encoding (streamhouse/log/records/_encode.c), the flat
JSON reader (streamhouse/sql/_json_flat.c) and the JSON writer of sink rows
(streamhouse/runtime/_json_rows.c). They are optional: where they cannot be built,
the install goes on and the numpy and DuckDB paths do their work."""

from setuptools import Extension, setup

LIBRARIES = {
    "streamhouse.log.records._framing": "streamhouse/log/records/_framing.c",
    "streamhouse.log.records._encode": "streamhouse/log/records/_encode.c",
    "streamhouse.sql._json_flat": "streamhouse/sql/_json_flat.c",
    "streamhouse.runtime._json_rows": "streamhouse/runtime/_json_rows.c",
}

setup(
    ext_modules=[
        Extension(name, sources=[source], extra_compile_args=["-O3"], optional=True)
        for name, source in LIBRARIES.items()
    ]
)
