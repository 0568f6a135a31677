"""The stages composed: a pure in-memory ``quantize`` and the file-level ``quantize_file``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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


def quantize(image: Image.Image | np.ndarray, options: QuantizeOptions) -> QuantizeResult:
    """Reduce an image to at most ``options.colors`` colors (pure, in memory).

    Every output pixel is the palette color nearest to its input pixel in the fit space.
    """
    clock = _Clock()
    rgb = io.to_rgb(_as_image(image))
    channels = len(rgb.mode)
    keys = pixels.pixel_keys(rgb.tobytes("raw", "RGBX" if channels == 3 else "RGBA"))
    hist = pixels.histogram(keys, channels)
    clock.lap("histogram")

    space = get_space(options.space)
    colors = hist.colors
    if len(hist) <= options.colors:
        centers = colors  # already few enough colors: keep them exactly, no fit
    else:
        centers = fit.fit_centers(colors, hist.counts, options.colors, seed=options.seed,
                                  space=space)
    clock.lap("fit")

    labels = remap.nearest(space.metric(colors), space.metric(centers))
    counts = np.bincount(labels, weights=hist.counts, minlength=len(centers)).astype(np.int64)
    used = Palette(centers, counts).take(np.flatnonzero(counts))
    order = used.frequency_order()
    palette = used.take(order)
    relabel = np.empty(len(centers), dtype=np.uint8)
    relabel[np.flatnonzero(counts)[order]] = np.arange(len(palette), dtype=np.uint8)
    labels = relabel[labels]
    indices = pixels.lookup(keys, hist, labels)
    clock.lap("map")

    out = Image.frombuffer("P", rgb.size, indices.tobytes(), "raw", "P", 0, 1)
    out.putpalette(palette.colors.tobytes(), "RGBA" if palette.has_alpha else "RGB")
    error = metrics.weighted_mse(colors, palette.colors[labels], hist.counts)
    clock.lap("metrics")
    return QuantizeResult(out, palette, error, metrics.psnr(error), clock.timings)


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
    params = io.save_params(fmt, compress_level=options.compress_level)
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
