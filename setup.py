"""The package is declared in pyproject.toml; this adds its one C library, record framing
(streamhouse/log/records/_framing.c, loaded with ctypes). It is optional: where it cannot be
built, the install goes on and records are framed in numpy steps instead."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "streamhouse.log.records._framing",
            sources=["streamhouse/log/records/_framing.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
