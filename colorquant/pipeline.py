"""The stages composed: a pure in-memory ``quantize`` and the file-level ``quantize_file``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import fit, io, metrics, pixels, remap
from .colorspace import get_space
from .errors import OutputError
from .options import QuantizeOptions
from .palette import Palette

Log = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class QuantizeResult:
    """What a run produced.

    Attributes
    ----------
    image : PIL.Image.Image
        The quantized image, mode ``"P"`` with the palette attached.
    palette : Palette
        Colors used, most frequent first, with their pixel counts.
    mse, psnr : float
        Error against the input (0–255 scale, per channel) and its PSNR in dB.
    timings : dict of str to float
        Seconds spent in each stage.
    """

    image: Image.Image
    palette: Palette
    mse: float
    psnr: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_colors(self) -> int:
        """Number of colors in the output."""
        return len(self.palette)


class _Clock:
    """Records the seconds spent in consecutive stages."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self._last
        self._last = now


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(
            f"expected an (H, W, 3) or (H, W, 4) uint8 array, got {array.dtype} {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.shape[2] == 3 else "RGBA")


@dataclass(frozen=True, eq=False)
class Prepared:
    """An image ready for the palette stages: its RGB(A) form and its histogram.

    The packed pixel keys are not kept: they are made again band by band when the pixels are
    mapped, so a large image is never held twice in memory.
    """

    image: Image.Image
    histogram: pixels.Histogram

    @property
    def n_pixels(self) -> int:
        """Number of pixels of the image."""
        return self.image.size[0] * self.image.size[1]

    def key_strips(self) -> Iterator[np.ndarray]:
        """The image's raw uint32 pixel keys, one bounded band of rows at a time."""
        return pixels.key_strips(self.image)

    @property
    def keys(self) -> np.ndarray:
        """All raw pixel keys at once, uint32 of shape (n,) (a full copy: small images only)."""
        return np.concatenate(list(self.key_strips()))


def prepare(image: Image.Image | np.ndarray) -> Prepared:
    """Upright RGB(A) image and its histogram of distinct colors."""
    rgb = io.to_rgb(_as_image(image))
    n = rgb.size[0] * rgb.size[1]
    return Prepared(rgb, pixels.histogram(pixels.key_strips(rgb), len(rgb.mode), n_pixels=n))


def fit_palette(histogram: pixels.Histogram, options: QuantizeOptions) -> Palette:
    """Fit at most ``options.colors`` colors to a histogram (one image, or several merged).

    A histogram with no more distinct colors than that is its own palette (no k-means, no
    scikit-learn import). Counts are the pixels each color will receive; the order is by
    frequency.
    """
    return _fit(histogram, options)[0]


def _fit(histogram: pixels.Histogram, options: QuantizeOptions) -> tuple[Palette, np.ndarray]:
    """The fitted palette and the label of each distinct color in it."""
    colors = histogram.colors
    if len(histogram) <= options.colors:
        centers = colors
    else:
        centers = fit.fit_centers(colors, histogram.counts, options.colors, seed=options.seed,
                                  space=get_space(options.space))
    labels = _nearest(colors, centers, options)
    counts = np.bincount(labels, weights=histogram.counts, minlength=len(centers))
    kept = np.flatnonzero(counts)
    used = Palette(centers, counts.astype(np.int64)).take(kept)
    order = used.frequency_order()
    relabel = np.zeros(len(centers), dtype=np.uint8)
    relabel[kept[order]] = np.arange(len(order), dtype=np.uint8)
    return used.take(order), relabel[labels]


def _nearest(colors: np.ndarray, centers: np.ndarray, options: QuantizeOptions) -> np.ndarray:
    space = get_space(options.space)
    return remap.nearest(space.metric(colors), space.metric(centers))


def apply_palette(prepared: Prepared, palette: Palette, options: QuantizeOptions, *,
                  labels: np.ndarray | None = None) -> QuantizeResult:
    """Map every pixel to its exactly nearest palette color; the palette is kept as given.

    The result's palette has the same colors in the same order, with this image's counts.
    ``labels`` (the nearest palette index of each distinct color) skips that search when the
    caller has it already.
    """
    clock = _Clock()
    hist = prepared.histogram
    colors = hist.colors
    if palette.colors.shape[1] != colors.shape[1]:
        raise ValueError(
            f"palette has {palette.colors.shape[1]} channels, image has {colors.shape[1]}"
        )
    if labels is None:
        labels = _nearest(colors, palette.colors, options)
    counts = np.bincount(labels, weights=hist.counts, minlength=len(palette)).astype(np.int64)
    indices = pixels.lookup(prepared.key_strips(), hist, labels, n_pixels=prepared.n_pixels)
    clock.lap("map")
    # The image shares the index array's memory (no copy of the output).
    out = Image.frombuffer("P", prepared.image.size, indices, "raw", "P", 0, 1)
    out.putpalette(palette.colors.tobytes(), "RGBA" if palette.has_alpha else "RGB")
    error = metrics.weighted_mse(colors, palette.colors[labels], hist.counts)
    clock.lap("metrics")
    return QuantizeResult(out, Palette(palette.colors, counts), error, metrics.psnr(error),
                          clock.timings)


def quantize(image: Image.Image | np.ndarray, options: QuantizeOptions, *,
             palette: Palette | None = None) -> QuantizeResult:
    """Reduce an image to at most ``options.colors`` colors (pure, in memory).

    With ``palette`` given, no fit runs: pixels are mapped to that palette as it is.
    Every output pixel is the palette color nearest to its input pixel in the fit space.
    """
    clock = _Clock()
    prepared = prepare(image)
    clock.lap("histogram")
    labels = None
    if palette is None:
        palette, labels = _fit(prepared.histogram, options)
        clock.lap("fit")
    result = apply_palette(prepared, palette, options, labels=labels)
    result.timings.update({**clock.timings, **result.timings})
    return result


def quantize_image(
    image: Image.Image | np.ndarray, k: int = 16, *, seed: int = 0, **options: Any
) -> QuantizeResult:
    """Quantize a PIL image or an (H, W, 3) uint8 array to at most ``k`` colors.

    Other keyword arguments are fields of :class:`~colorquant.options.QuantizeOptions`.
    """
    return quantize(image, QuantizeOptions(colors=k, seed=seed, **options))


def encode(result: QuantizeResult, fmt: str, options: QuantizeOptions) -> Image.Image:
    """The image to hand to Pillow's encoder for a format (RGB for formats without palettes)."""
    if fmt in io.LOSSY_FORMATS:
        return result.image.convert("RGB")
    return result.image


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    k: int = 16,
    *,
    seed: int = 0,
    options: QuantizeOptions | None = None,
    fmt: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    compare: str | os.PathLike[str] | None = None,
    log: Log | None = None,
) -> QuantizeResult:
    """Read ``src``, quantize it and write ``dst`` atomically (plus optional plots).

    ``options`` wins over ``k`` and ``seed`` when given. ``log`` receives warnings.
    """
    options = options or QuantizeOptions(colors=k, seed=seed)
    fmt = io.output_format(dst, fmt)
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise OutputError(f"{dst}: output would overwrite the input")
    start = time.perf_counter()
    source = io.open_image(src, max_pixels=options.max_pixels)
    read_time = time.perf_counter() - start
    result = quantize(source, options)
    result.timings["read"] = read_time
    if fmt in io.LOSSY_FORMATS and log:
        log(f"warning: {dst}: {fmt} cannot store a palette; its compression adds colors back")
    start = time.perf_counter()
    image = encode(result, fmt, options)
    params = io.save_params(fmt, compress_level=options.compress_level,
                            n_colors=len(result.palette))
    io.atomic_write(dst, lambda handle: image.save(handle, format=fmt, **params))
    result.timings["write"] = time.perf_counter() - start
    if plot is not None or compare is not None:
        from . import plots

        start = time.perf_counter()
        original = io.to_rgb(source)
        if plot is not None:
            plots.save(plots.scatter_figure(original, result, seed=options.seed), plot)
        if compare is not None:
            plots.save(plots.comparison_figure(original, result), compare)
        result.timings["plots"] = time.perf_counter() - start
    return result


def plot_path_check(path: str | os.PathLike[str]) -> None:
    """Refuse plot paths whose extension matplotlib cannot write."""
    if Path(path).suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise OutputError(f"{path}: plot must be .png, .svg, .pdf or .jpg")
