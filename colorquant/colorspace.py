"""Color spaces as one strategy: the only place that does color math.

A space says how sRGB(A) uint8 colors become k-means coordinates (``encode``), how fitted
centers come back (``decode``), and which coordinates the exact nearest-color search uses
(``metric``). The pipeline never branches on the space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .options import ColorSpace


@dataclass(frozen=True)
class RGBSpace:
    """The 0–1 RGB(A) cube; Euclidean distance on the stored sRGB values."""

    name: str = "rgb"

    def encode(self, colors: np.ndarray) -> np.ndarray:
        """uint8 (m, C) to float64 (m, C) in [0, 1], the cloud k-means fits."""
        return np.asarray(colors, dtype=np.float64) / 255.0

    def decode(self, coords: np.ndarray) -> np.ndarray:
        """float (m, C) in [0, 1] to the nearest uint8 (m, C) colors."""
        return np.clip(np.rint(np.asarray(coords) * 255.0), 0, 255).astype(np.uint8)

    def metric(self, colors: np.ndarray) -> np.ndarray:
        """uint8 (m, C) to float32 (m, C) of whole numbers 0–255.

        Same geometry as ``encode`` (a uniform scale), but every squared distance computed
        from these is a whole number below 2**24, so float32 arithmetic is exact.
        """
        return np.asarray(colors, dtype=np.float32)


_SPACES = {ColorSpace.RGB: RGBSpace()}


def get_space(space: ColorSpace) -> RGBSpace:
    """The strategy object for a :class:`~colorquant.options.ColorSpace`."""
    return _SPACES[space]
