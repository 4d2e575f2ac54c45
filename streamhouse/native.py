"""StreamHouse's C libraries (built with the package by ``setup.py``, optional: without a C
compiler the install goes on), loaded with ctypes, which releases the GIL while they run.
Each has a numpy or DuckDB path beside it for when it is not built.

``STREAMHOUSE_NATIVE=0`` leaves them unloaded (the other paths, to compare), and so is a
library older than its C source beside it: a checkout since it was built may have changed
the arguments its caller passes, and a call with the wrong ones would write out of bounds.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def load(module_file: str, name: str, function: str, arguments: int) -> ctypes._CFuncPtr | None:
    """``function`` (``arguments`` pointer-sized arguments, returning an int64) of the library
    ``name`` built beside ``module_file``, or None if it is not built or not wanted."""
    if os.environ.get("STREAMHOUSE_NATIVE", "1") == "0":
        return None
    here = Path(module_file).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"{name}{suffix}"
        if path.exists():
            source = here / f"{name}.c"  # (beside it in a source tree, not in a wheel)
            if source.exists() and source.stat().st_mtime > path.stat().st_mtime:
                log.warning(
                    "C library %s is older than %s (rebuild it: pip install -e .): "
                    "the slower path instead",
                    path,
                    source,
                )
                return None  # built from another source, it may take other arguments
            try:
                found = getattr(ctypes.CDLL(str(path)), function)
            except (OSError, AttributeError) as exc:
                log.warning("C library %s not loaded (%s): the slower path instead", path, exc)
                return None
            found.argtypes = [ctypes.c_void_p] * arguments
            found.restype = ctypes.c_int64
            return found
    log.debug("C library %s not built: the slower path instead", name)
    return None
