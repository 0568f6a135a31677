"""Atomic, durable file writing: an output is either complete or untouched, never partial.

Every file colorquant writes (images, palette files, plots) goes through :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError, OutputExistsError, first_line

#: Flush each output to the disk before its rename and its folder after (as SQLite and git
#: do), so that a file reported as written survives a power cut. Only the benchmark
#: (benchmarks/fsync_bench.py) turns it off, to measure the cost.
DURABLE = True


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to the disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise  # EINVAL/ENOTSUP: a file system that cannot sync folders
    finally:
        os.close(fd)


def atomic_write(dst: str | os.PathLike[str], writer: Callable[[BinaryIO], None], *,
                 replace: bool = True) -> None:
    """Write a file through ``writer`` so that ``dst`` is either complete or untouched.

    The data go to a temporary file in the target folder, which is flushed to the disk and
    renamed over ``dst`` only when ``writer`` returns, and the folder is flushed after the
    rename (see :data:`DURABLE`); on any error or interruption the temporary file is removed. A
    symlink is written through (its target is replaced); a named pipe or device is written
    into directly. With ``replace=False`` an existing ``dst`` (of any kind) is never replaced:
    the final step itself refuses (see :func:`_put_new`), so of two calls racing for one
    name exactly one writes and the other raises :class:`OutputExistsError`.
    """
    dst = Path(dst)
    if not replace and os.path.lexists(dst):
        raise OutputExistsError(f"{dst}: exists")
    if dst.exists() and not dst.is_file() and not dst.is_dir():
        # A named pipe or a device (/dev/stdout): renaming over it would destroy it, and a
        # reader waits on it. Encode in memory, then write the complete bytes into it.
        buffer = BytesIO()
        writer(buffer)
        try:
            with open(dst, "wb") as handle:
                handle.write(buffer.getvalue())
        except OSError as exc:
            raise OutputError(f"{dst}: cannot write: {exc.strerror or first_line(exc)}") from None
        return
    if dst.is_symlink():
        # Write through the link (it stays a link): its target is the file replaced.
        dst = Path(os.path.realpath(dst))
    folder = dst.parent if str(dst.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{dst}: output folder {str(folder)!r} does not exist")
    tmp: str | None = None  # named before it is created: an interruption at any point
    try:  # after the create (a signal as os.open returns) still removes it
        for _ in range(_TEMP_ATTEMPTS):
            tmp = os.path.join(folder, f".{dst.name}.{_random_hex()}.tmp")
            try:
                fd = os.open(tmp, _TEMP_FLAGS, 0o600)
                break
            except FileExistsError:  # another writer's: never ours to remove
                tmp = None
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary name")
        with os.fdopen(fd, "w+b") as handle:  # readable: multi-page TIFF reads back
            writer(handle)
            handle.flush()
            if DURABLE:  # the data reach the disk before the name does
                os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if replace:
            os.replace(tmp, dst)
        else:
            _put_new(tmp, dst)
        if DURABLE:
            _sync_folder(folder)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, FileExistsError) and tmp is not None:
            raise OutputExistsError(f"{dst}: exists") from None
        if isinstance(exc, OSError):
            raise OutputError(f"{dst}: cannot write: {exc.strerror or first_line(exc)}") from None
        raise


def _random_hex() -> str:
    """12 random hex digits for a temporary file's name. ``os.urandom`` needs no import:
    ``secrets`` would load ``hmac`` and ``random`` into calls that never load
    scikit-learn, which imports them itself."""
    return os.urandom(6).hex()


#: The temporary file's open flags (those of ``tempfile.mkstemp``) and how many random names
#: to try before giving up.
_TEMP_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
_TEMP_ATTEMPTS = 100

#: link() errors of file systems without hard links (FAT, exFAT, some FUSE and SMB mounts).
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS,
                       errno.EMLINK, errno.EXDEV})


def _put_new(tmp: str, dst: Path) -> None:
    """Put the complete file ``tmp`` at ``dst`` only if no file has that name; else raise
    ``FileExistsError`` (``tmp`` is left for the caller to remove).

    ``link(2)`` never replaces an existing name: the kernel decides atomically which of two
    racing calls gets it. Where the file system has no hard links, the name is claimed with
    an exclusive create (``O_EXCL``, also decided by the kernel) and the complete file is then
    renamed over that empty claim: still exactly one writer and no existing file replaced,
    but a reader (or a crash) in between can see an empty ``dst``.
    """
    try:
        os.link(tmp, dst)
    except OSError as exc:
        if isinstance(exc, FileExistsError) or exc.errno not in _NO_LINKS:
            raise
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.replace(tmp, dst)
        return
    os.unlink(tmp)
