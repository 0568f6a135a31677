"""The compiled loops' decorator: numba, with its on-disk cache kept out of the package.

numba caches compiled code next to the module by default (the package's ``__pycache__``).
pip does not know those files, so ``pip uninstall`` (or a reinstall as editable) leaves the
folder behind with only them in it, and Python then takes that folder for a namespace
package that hides the editable install: ``colorquant`` no longer imports. The cache goes to
the environment instead (:data:`CACHE`); where that cannot be written, numba falls back to
its own places. ``NUMBA_CACHE_DIR``, when set, is kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from numba import njit
from numba.core import config

#: The cache folder: in the Python environment (a virtualenv's own folder), not the package.
CACHE = os.path.join(sys.prefix, "var", "cache", "colorquant", "numba")


def cached(function: Callable[..., Any] | None = None, *, nogil: bool = False,
           reassociate: bool = False) -> Any:
    """``numba.njit(cache=True)`` with the cache in :data:`CACHE` (numba picks the folder
    when the function is decorated; the setting is restored at once). ``nogil``: the loop
    releases the GIL, so threads can run it side by side. ``reassociate``: the compiler may
    add in any order (LLVM's ``reassoc``, which lets it vectorize a running sum): only for
    sums of whole numbers below 2**53, exact in any order."""
    if function is None:
        return lambda inner: cached(inner, nogil=nogil, reassociate=reassociate)
    saved = config.CACHE_DIR
    config.CACHE_DIR = saved or CACHE
    try:
        return njit(cache=True, nogil=nogil,
                    fastmath={"reassoc"} if reassociate else False)(function)
    finally:
        config.CACHE_DIR = saved
