"""The in-memory values the stages pass along: an image ready for the palette stages
(:class:`Prepared`) and what a run produced (:class:`QuantizeResult`).

They sit below every stage, so the stages (``dither``) and the side outputs (``plots``) use
them without importing the composition (:mod:`colorquant.core`) that calls them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image

from . import pixels
from .palette import Palette


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
    delta_e : float
        Mean CIEDE2000 difference against the input, per pixel; computed when first read
        (it costs more than the whole mapping), so runs that do not report it do not pay
        for it.
    """

    image: Image.Image
    palette: Palette
    mse: float
    psnr: float
    timings: dict[str, float] = field(default_factory=dict)
    measure_delta_e: Callable[[], float] = field(default=lambda: float("nan"), repr=False)

    @cached_property
    def delta_e(self) -> float:
        """Mean CIEDE2000 against the input (see the class docstring)."""
        return float(self.measure_delta_e())

    @property
    def n_colors(self) -> int:
        """Number of colors in the output."""
        return len(self.palette)


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
