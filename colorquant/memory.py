"""The process's resources: running out of memory (told apart from damage, the fit backend
loaded safely) and the CPUs it may use (:func:`available_cpus`, the one count every module
reads).

Under an address-space limit (``ulimit -v``, ``RLIMIT_AS``) two things go wrong without
care. Allocations fail as ``MemoryError`` (numpy, Pillow) or as a Pillow decoder's "out of
memory" ``OSError``, which must not be reported as a corrupt file. And the OpenBLAS bundled
with SciPy, loaded by the first import of scikit-learn, allocates a buffer per thread while
the library loads; when that allocation fails it retries forever inside ``dlopen`` (where no
Python signal handler can run, so SIGTERM is ignored too), and a failed thread start prints
warnings on file descriptor 2. So under a limit scikit-learn is loaded before the pixels
are decoded, only after checking that the address space left can hold it, with file
descriptor 2 pointed away while it loads.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import sys
from collections.abc import Iterator

#: Address space the first import of scikit-learn (with SciPy and its OpenBLAS) needs on
#: x86-64 Linux: a base, plus one OpenBLAS thread buffer and stack per further CPU; both with
#: a margin over what was measured (the figures are in the commit that set them).
BACKEND_BASE = 200 << 20
BACKEND_PER_CPU = 48 << 20


def address_space_limit() -> int | None:
    """The soft address-space limit of this process in bytes, or None when unlimited."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception means an allocation failed (not damaged input)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, OSError) and (exc.errno == errno.ENOMEM
                                         or "out of memory" in str(exc).lower())


def as_memory_error(exc: BaseException) -> MemoryError:
    """An out-of-memory exception as a ``MemoryError`` (a decoder's ``OSError`` becomes one)."""
    return exc if isinstance(exc, MemoryError) else MemoryError(str(exc).strip())


def describe(exc: BaseException) -> str:
    """The reason of an out-of-memory failure, as ``not enough memory (…)``."""
    lines = str(exc).strip().splitlines()
    detail = lines[0] if lines else "an allocation failed"
    detail = detail[:1].lower() + detail[1:]
    limit = address_space_limit()
    if limit is not None:
        detail += f"; the address-space limit (ulimit -v) is {limit >> 20:,} MiB"
    return f"not enough memory ({detail})"


def available_cpus() -> int:
    """The CPUs this process may use (its affinity where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _backend_need() -> int:
    return BACKEND_BASE + BACKEND_PER_CPU * max(0, available_cpus() - 1)


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null (C libraries print there directly)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # started with descriptor 2 closed: nothing to protect
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


#: Images of at least this many pixels have scikit-learn imported on a thread while they
#: are decoded (:func:`import_fit_backend_ahead`); a smaller decode hides little of it.
IMPORT_AHEAD_PIXELS = 1 << 22
#: ... unless their file has fewer bytes than this share of their pixels: a flat drawing or
#: a screenshot (a 24 MP one: 0.005 byte a pixel; photos: 0.2 to 2), whose few colors may
#: need no fit, and whose histogram would then share the CPU with an import for nothing
#: (measured: 0.93 → 1.35 s for a 50-color 24 MP PNG at k=256).
IMPORT_AHEAD_BYTES_PER_PIXEL = 1 / 16


def import_fit_backend_ahead(pixels: int, size: int) -> None:
    """Start the import of scikit-learn on a thread of its own, for an image of ``pixels``
    pixels in a file of ``size`` bytes, about to be decoded: Pillow's decoder releases the
    GIL for part of its work, so the two overlap (a 24 MP PNG: decode then import 1.60–1.68
    s, side by side 1.33–1.43 s, measured), and the fit's own import waits for this one.

    Nothing when scikit-learn is loaded or loading, the image is smaller than
    :data:`IMPORT_AHEAD_PIXELS` or its file than :data:`IMPORT_AHEAD_BYTES_PER_PIXEL`, an
    address-space limit is set (:func:`load_fit_backend` loads it then, before any pixels),
    or no thread can start. A failed import is left for the fit's own import to report. The
    thread is a daemon: an early end of the call (a bad file, Ctrl-C) does not wait for it.
    """
    if (pixels < IMPORT_AHEAD_PIXELS or size < pixels * IMPORT_AHEAD_BYTES_PER_PIXEL
            or "sklearn.cluster" in sys.modules or address_space_limit() is not None):
        return
    import threading

    thread = threading.Thread(target=_import_fit_backend, name="colorquant-import",
                              daemon=True)
    with contextlib.suppress(RuntimeError):  # "can't start new thread": the fit imports it
        thread.start()


def _import_fit_backend() -> None:
    """:func:`_import_backend`, any failure left to the next import of those modules."""
    with contextlib.suppress(Exception):
        _import_backend()


def _import_backend() -> None:
    """Import what the fit runs on: scikit-learn's clustering and threadpoolctl."""
    import sklearn.cluster  # noqa: F401
    import threadpoolctl  # noqa: F401


def load_fit_backend() -> None:
    """Under an address-space limit, import scikit-learn now (before any pixels take memory).

    Without a limit nothing happens: scikit-learn is imported when a fit needs it.

    Raises
    ------
    MemoryError
        The address space left cannot hold scikit-learn and its OpenBLAS (checked by
        reserving it first, since OpenBLAS would retry forever), or the import failed.
    """
    if "sklearn.cluster" in sys.modules or address_space_limit() is None:
        return
    need = _backend_need()
    try:
        mmap.mmap(-1, need).close()  # reserves address space only; nothing is touched
    except (OSError, ValueError, OverflowError):
        raise MemoryError(f"cannot load scikit-learn: it needs about {need >> 20:,} MiB of "
                          "address space") from None
    try:
        with _quiet_fd2():
            _import_backend()
    except (ImportError, OSError, MemoryError) as exc:
        raise MemoryError(f"cannot load scikit-learn ({str(exc).strip() or type(exc).__name__})"
                          ) from None
