"""The options of one run, as frozen, validated values: what decides the quantized image
(:class:`QuantizeOptions`) and how the output file is written (:class:`SaveOptions`)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields

#: What the library's ``log`` parameters take: a callable that receives each warning, one line
#: (the command prints them on stderr; the library never prints).
Log = Callable[[str], None]

MIN_COLORS = 2
MAX_COLORS = 256
#: Largest seed: scikit-learn's random_state takes 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
#: Default pixel limit: room for 100-megapixel photos, far below a decompression bomb.
DEFAULT_MAX_PIXELS = 200_000_000
#: Strongest ``--optimize`` level (see :func:`colorquant.encode.optimized`).
MAX_OPTIMIZE = 2


class ColorSpace(enum.Enum):
    """The space in which k-means measures distance."""

    RGB = "rgb"
    #: Björn Ottosson's OKLab: perceptually uniform, fitted and searched in float64.
    OKLAB = "oklab"
    #: CIE L*a*b* (D65), the space of CIEDE2000: fitted and searched in float64.
    LAB = "lab"


class Dither(enum.Enum):
    """How pixels are mapped to the palette (see :mod:`colorquant.dither`)."""

    #: Each pixel to its exactly nearest palette color.
    NONE = "none"
    #: Floyd–Steinberg error diffusion, serpentine.
    FS = "fs"
    #: An 8×8 Bayer threshold matrix.
    ORDERED = "ordered"
    #: A 64×64 tileable blue-noise threshold mask (void-and-cluster).
    BLUE_NOISE = "blue-noise"


def parse_rgb(text: str) -> tuple[int, int, int]:
    """An RGB color from ``#rrggbb``, ``rrggbb`` or ``r,g,b`` (0–255 each)."""
    value = text.strip()
    try:
        if "," in value:
            parts = tuple(int(p) for p in value.split(","))
        else:
            digits = value.removeprefix("#")
            if len(digits) != 6:
                raise ValueError
            parts = tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not all(0 <= c <= 255 for c in parts):
        raise ValueError(f"expected #rrggbb or r,g,b with values 0–255, got {text!r}")
    return parts  # type: ignore[return-value]


def parse_colors(text: str) -> list[tuple[int, int, int]]:
    """Colors from one ``--keep`` value: colors separated by spaces or ``;``, each ``#rrggbb``,
    ``rrggbb`` or ``r,g,b``; a comma list of hex colors (``#ff0000,#00ff00``) is also read
    (a token of exactly three decimal numbers is one ``r,g,b`` color)."""
    out: list[tuple[int, int, int]] = []
    for token in text.replace(";", " ").split():
        parts = token.split(",")
        if len(parts) == 3 and all(p.strip().isdigit() and len(p.strip()) <= 3 for p in parts):
            out.append(parse_rgb(token))
        else:
            out.extend(parse_rgb(p) for p in parts)
    if not out:
        raise ValueError(f"expected one or more colors, got {text!r}")
    return out


def parse_target(text: str) -> tuple[float, float]:
    """A PSNR target ``MIN`` or ``MIN-MAX`` in dB (MAX defaults to MIN)."""
    parts = text.strip().split("-")
    try:
        low, high = (float(parts[0]), float(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None or not (0 < low <= high < 1000):
        raise ValueError(f"expected MIN or MIN-MAX in dB with 0 < MIN <= MAX, got {text!r}")
    return (low, high)


class FitMethod(enum.Enum):
    """The k-means algorithm that fits the palette."""

    #: scikit-learn MiniBatchKMeans, polished by full-batch Lloyd steps.
    MINIBATCH = "minibatch"
    #: scikit-learn KMeans (Lloyd) with k-means++: slower, slightly lower error.
    LLOYD = "lloyd"


def _call_repr(value: object) -> str:
    """A dataclass as the call that builds it, naming only the fields that differ from the
    defaults (enums by their names, so the text evaluates back)."""
    changed = []
    for f in fields(value):  # type: ignore[arg-type]
        field_value = getattr(value, f.name)
        if field_value != f.default:
            shown = (f"{type(field_value).__name__}.{field_value.name}"
                     if isinstance(field_value, enum.Enum) else repr(field_value))
            changed.append(f"{f.name}={shown}")
    return f"{type(value).__name__}({', '.join(changed)})"


@dataclass(frozen=True, repr=False)
class QuantizeOptions:
    """Everything that decides the quantized image (and how the input is read); how the output
    file is written is :class:`SaveOptions`. Equal options, with equal save options, give
    identical bytes.

    Parameters
    ----------
    colors : int
        Palette size N, from 2 to 256.
    seed : int
        Seed for every random choice (k-means initialisation, mini-batches, plot sampling).
    fit_method : FitMethod
        The k-means algorithm (mini-batch by default).
    space : ColorSpace
        Color space of the fit and of the nearest-color search.
    max_pixels : int
        Refuse inputs with more pixels than this (decompression bombs); for an animation,
        width × height × frames.
    transparent_color : tuple of 3 int
        RGB stored in the palette entry of fully transparent pixels (alpha 0).
    frame : int or None
        Quantize only this frame (0-based) of a multi-frame input; None for every frame.
    to_srgb : bool
        Convert pixels from an embedded ICC profile to sRGB before the fit.
    target_psnr : tuple of 2 float or None
        (MIN, MAX) in dB: use the fewest colors, up to ``colors``, whose output reaches MAX;
        when even ``colors`` colors miss MIN, nothing is written
        (:class:`~colorquant.errors.QualityTooLowError`).
    keep : tuple of RGB tuples
        Colors pinned in the palette exactly; the others are fitted around them.
    dither : Dither
        How pixels are mapped to the palette (the fit is the same for every method).
    dither_strength : float
        Scale of the diffused error or threshold offset, 0 to 1.
    """

    colors: int = 16
    seed: int = 0
    fit_method: FitMethod = FitMethod.MINIBATCH
    space: ColorSpace = ColorSpace.RGB
    max_pixels: int = DEFAULT_MAX_PIXELS
    transparent_color: tuple[int, int, int] = (0, 0, 0)
    frame: int | None = None
    to_srgb: bool = False
    target_psnr: tuple[float, float] | None = None
    keep: tuple[tuple[int, int, int], ...] = ()
    dither: Dither = Dither.NONE
    dither_strength: float = 1.0

    def __repr__(self) -> str:
        """The fields that differ from the defaults, as they would be written in a call."""
        return _call_repr(self)

    def __post_init__(self) -> None:
        if isinstance(self.colors, bool) or not isinstance(self.colors, int):
            raise ValueError(f"colors must be an integer, got {self.colors!r}")
        if not MIN_COLORS <= self.colors <= MAX_COLORS:
            raise ValueError(
                f"colors must be between {MIN_COLORS} and {MAX_COLORS}, got {self.colors}"
            )
        if (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                or not 0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        if not isinstance(self.fit_method, FitMethod):
            raise ValueError(f"fit_method must be a FitMethod, got {self.fit_method!r}")
        if not isinstance(self.space, ColorSpace):
            raise ValueError(f"space must be a ColorSpace, got {self.space!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        rgb = self.transparent_color
        if (not isinstance(rgb, tuple) or len(rgb) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)):
            raise ValueError(f"transparent_color must be three integers 0–255, got {rgb!r}")
        if self.frame is not None and (isinstance(self.frame, bool)
                                       or not isinstance(self.frame, int) or self.frame < 0):
            raise ValueError(f"frame must be a non-negative integer or None, got {self.frame!r}")
        if self.target_psnr is not None:
            low, high = self.target_psnr
            if not 0 < low <= high:
                raise ValueError(f"target_psnr must be (MIN, MAX) with 0 < MIN <= MAX, got "
                                 f"{self.target_psnr!r}")
        for rgb in self.keep:
            if (not isinstance(rgb, tuple) or len(rgb) != 3
                    or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)):
                raise ValueError(f"keep colors must be three integers 0–255, got {rgb!r}")
        if len(set(self.keep)) != len(self.keep):
            raise ValueError(f"keep colors must be distinct, got {self.keep!r}")
        if len(self.keep) > self.colors:
            raise ValueError(f"{len(self.keep)} colors to keep do not fit in a palette of "
                             f"{self.colors}")
        if not isinstance(self.dither, Dither):
            raise ValueError(f"dither must be a Dither, got {self.dither!r}")
        strength = self.dither_strength
        if (isinstance(strength, bool) or not isinstance(strength, (int, float))
                or not 0.0 <= strength <= 1.0):
            raise ValueError(f"dither_strength must be a number from 0 to 1, got {strength!r}")


@dataclass(frozen=True, repr=False)
class SaveOptions:
    """How the output file is written: settings of the file layer (:mod:`colorquant.files`,
    :mod:`colorquant.encode`) that the in-memory quantization never reads.

    Parameters
    ----------
    compress_level : int or None
        Deflate (libdeflate) level for PNG output, 0 (fast, large) to 12 (slow, small);
        None: chosen from the image's size and data (:func:`colorquant.encode.auto_level`).
    optimize : int
        Extra effort for smaller PNG files with the same pixels, 0 (none) to 2
        (see :func:`colorquant.encode.optimized`).
    strip : bool
        Write no metadata (ICC profile, DPI) to the output.
    skip_if_larger : bool
        Write nothing (:class:`~colorquant.errors.NotSmallerError`) when the output file
        would be larger than the input file.
    """

    compress_level: int | None = None
    optimize: int = 0
    strip: bool = False
    skip_if_larger: bool = False

    def __repr__(self) -> str:
        """The fields that differ from the defaults, as they would be written in a call."""
        return _call_repr(self)

    def __post_init__(self) -> None:
        level = self.compress_level
        if level is not None and (isinstance(level, bool) or not isinstance(level, int)
                                  or not 0 <= level <= 12):
            raise ValueError(f"compress_level must be None or an integer from 0 to 12, got "
                             f"{level!r}")
        if (isinstance(self.optimize, bool) or not isinstance(self.optimize, int)
                or not 0 <= self.optimize <= MAX_OPTIMIZE):
            raise ValueError(f"optimize must be an integer from 0 to {MAX_OPTIMIZE}, got "
                             f"{self.optimize!r}")
        for name in ("strip", "skip_if_larger"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
