"""Every output format's facts, one row each: the only place that knows what a format holds.

Adding a format means adding its row here and, when Pillow's defaults do not fit, its case in
the writer (:mod:`colorquant.encode`). Standard library only: the command reads the table for
its ``--format`` choices before anything heavy is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .errors import OutputError


@dataclass(frozen=True)
class OutputFormat:
    """What one output format can store, and how it is written.

    Attributes
    ----------
    name : str
        Pillow's format name (``"PNG"``), as used everywhere in the library.
    extensions : tuple of str
        File extensions, lower case with the dot; the first is the one outputs are named with.
    choice : str
        The value of the command's ``--format``.
    max_side : int
        Largest width or height the format can store.
    palette : bool
        Stores the indexed image and its palette (else the pixels are written as RGB(A)).
    palette_alpha : bool
        Its palette holds transparency (else an image with transparency is written as RGBA,
        or shown over white when ``alpha`` is ``"none"``).
    alpha : str
        ``"full"`` (any alpha), ``"binary"`` (one transparent palette entry, alpha cut at 50%)
        or ``"none"`` (shown over white).
    frames : str
        ``"animation"`` (frames of one size, with durations and a loop count), ``"pages"``
        (pages of any size), or ``"one"`` (the first frame only).
    icc : bool
        Embeds an ICC profile (else the pixels are converted to sRGB first).
    dpi : bool
        Stores the resolution.
    lossy : bool
        Its compression changes the pixels (adds colors back).
    params : mapping
        Pillow encoder arguments beyond the compression level: deterministic, lossless where
        the format allows.
    """

    name: str
    extensions: tuple[str, ...]
    choice: str
    max_side: int
    palette: bool
    palette_alpha: bool
    alpha: str
    frames: str
    icc: bool
    dpi: bool
    lossy: bool = False
    params: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def extension(self) -> str:
        """The extension outputs are named with, without the dot (``"png"``)."""
        return self.extensions[0].lstrip(".")

    @property
    def multi_frame(self) -> bool:
        """Holds several frames or pages."""
        return self.frames != "one"


#: Every output format, in the order the command lists them.
TABLE: tuple[OutputFormat, ...] = (
    OutputFormat("PNG", (".png",), "png", max_side=2**31 - 1, palette=True,
                 palette_alpha=True, alpha="full", frames="animation", icc=True, dpi=True),
    OutputFormat("GIF", (".gif",), "gif", max_side=65535, palette=True,
                 palette_alpha=True, alpha="binary", frames="animation", icc=False, dpi=False),
    # exact: keep the RGB of fully transparent pixels (the documented transparent color)
    OutputFormat("WEBP", (".webp",), "webp", max_side=16383, palette=False,
                 palette_alpha=False, alpha="full", frames="animation", icc=True, dpi=False,
                 params=MappingProxyType(
                     {"lossless": True, "quality": 100, "method": 4, "exact": True})),
    OutputFormat("TIFF", (".tif", ".tiff"), "tiff", max_side=2**32 - 1, palette=True,
                 palette_alpha=False, alpha="full", frames="pages", icc=True, dpi=True),
    OutputFormat("BMP", (".bmp",), "bmp", max_side=2**31 - 1, palette=True,
                 palette_alpha=False, alpha="none", frames="one", icc=False, dpi=True),
    OutputFormat("JPEG", (".jpg", ".jpeg"), "jpeg", max_side=65500, palette=False,
                 palette_alpha=False, alpha="none", frames="one", icc=True, dpi=True,
                 lossy=True, params=MappingProxyType({"quality": 95})),
)

#: Rows by Pillow format name.
BY_NAME: Mapping[str, OutputFormat] = MappingProxyType({f.name: f for f in TABLE})
#: Rows by file extension (lower case, with the dot).
BY_EXTENSION: Mapping[str, OutputFormat] = MappingProxyType(
    {ext: f for f in TABLE for ext in f.extensions})
#: The ``--format`` values.
CHOICES: tuple[str, ...] = tuple(f.choice for f in TABLE)


def get(name: str) -> OutputFormat:
    """The row of a Pillow format name (``"PNG"``)."""
    return BY_NAME[name]


def output_format(path: str | os.PathLike[str], override: str | None = None) -> str:
    """Pillow format name for an output path (by extension) or an explicit format name
    (a ``--format`` value or any extension of the format, in any case).

    Standard output (``"-"``) is PNG unless a format is given.
    """
    if not override and os.fspath(path) == "-":
        return "PNG"
    if override:
        found = BY_EXTENSION.get("." + override.upper().lower())
        if found is None:
            raise OutputError(f"unknown output format {override!r}")
        return found.name
    ext = Path(path).suffix.lower()
    try:
        return BY_EXTENSION[ext].name
    except KeyError:
        known = ", ".join(sorted(BY_EXTENSION))
        raise OutputError(
            f"{os.fspath(path)}: unknown output extension {ext or '(none)'!r} (use one of {known})"
        ) from None


def check_output_size(fmt: str, size: tuple[int, int], dst: str) -> None:
    """Refuse, before any work, an image too wide or tall for the output format."""
    limit = BY_NAME[fmt].max_side if fmt in BY_NAME else None
    if limit is not None and max(size) > limit:
        raise OutputError(f"{dst}: {fmt} holds at most {limit:,} pixels per side; the image is "
                          f"{size[0]}x{size[1]} (choose another --format)")
