"""The dense RGB histogram's two loops, compiled with numba.

Loaded where numba is loaded anyway (the warm worker: :func:`colorquant.pixels.load_kernel`);
elsewhere the histogram counts with ``numpy.add.at``. Both give the same keys and counts:
they are whole numbers, counted one pixel at a time.
"""

from __future__ import annotations

import numpy as np

from .jit import cached


@cached(nogil=True)
def count_rgb(keys, table):
    """Add one to ``table[key & 0xFFFFFF]`` for every key (the padding byte ignored)."""
    for i in range(len(keys)):
        table[keys[i] & 0xFFFFFF] += 1


@cached(nogil=True)
def distinct_counts(table):
    """The indices of ``table``'s nonzero counters, ascending (uint32), and their counts
    (int64): ``numpy.flatnonzero`` and a take, in two passes without a temporary."""
    n = 0
    for i in range(len(table)):
        if table[i]:
            n += 1
    keys = np.empty(n, dtype=np.uint32)
    counts = np.empty(n, dtype=np.int64)
    j = 0
    for i in range(len(table)):
        if table[i]:
            keys[j] = i
            counts[j] = table[i]
            j += 1
    return keys, counts


def warm() -> None:
    """Load the compiled loops now (from numba's cache once compiled)."""
    table = np.zeros(4, dtype=np.uint32)
    count_rgb(np.arange(4, dtype=np.uint32), table)
    distinct_counts(table)
