"""Exception types raised by the colorquant library.

The library never prints or exits; the command line turns these into
``Error: …`` lines and exit codes (see :mod:`colorquant.report`).
"""

from __future__ import annotations


class ColorquantError(Exception):
    """Base class of every error colorquant raises on purpose."""


class InputError(ColorquantError):
    """An input could not be read as an image (missing, not an image, corrupt, truncated)."""


class ImageTooLargeError(InputError):
    """An input declares more pixels than the configured limit (a decompression bomb guard)."""


class OutputError(ColorquantError):
    """An output could not be written (bad folder, no permission, unknown format)."""


class OutputExistsError(OutputError):
    """The output exists and was not to be replaced (``--no-clobber``): nothing was written."""


class PaletteError(ColorquantError):
    """A palette file could not be read or written."""


class PlanError(ColorquantError):
    """The inputs and naming options do not make a valid batch (a usage error)."""


class PoolError(ColorquantError):
    """A process of the local pool died (killed, out of memory): the batch cannot go on."""


class ClusterError(ColorquantError):
    """The Dask scheduler cannot be reached, or its workers cannot run colorquant (or one died
    again and again on the same input)."""


class SkippedError(ColorquantError):
    """An input deliberately left unwritten (not a failure): the output would not be good or
    small enough."""


class QualityTooLowError(SkippedError):
    """Even the largest palette allowed cannot reach the ``--target-psnr`` minimum."""


class NotSmallerError(SkippedError):
    """The quantized file would be larger than its input (``--skip-if-larger``)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): how the
    errors of other libraries are quoted in ours."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
