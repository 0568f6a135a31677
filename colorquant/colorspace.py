"""Color spaces as one strategy: the only place that does color math.

A space says how sRGB(A) uint8 colors become k-means coordinates (``encode``), how fitted
centers come back (``decode``), which coordinates the exact nearest-color search uses
(``metric``) and how that search runs (``nearest``). The pipeline never branches on the space:
it asks :func:`get_space` once for the strategy of a space and a channel count. Colors with
alpha are premultiplied (:class:`Premultiplied`): their distance is the error a viewer sees
after compositing on any background, as in libimagequant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .options import ColorSpace

#: Rows per block of the float64 distance computation (bounds memory to CHUNK × k × C).
CHUNK = 1 << 12


class Space(Protocol):
    """What every color space strategy offers."""

    name: str
    #: The length of a full-scale step (0 to 255 of a channel) in :meth:`metric` coordinates:
    #: the alpha coordinate of a premultiplied color is ``unit * A`` (A the 0–255 alpha).
    unit: float
    #: Whether :meth:`metric` gives whole numbers 0–255 (exact integer float32 arithmetic).
    integer_metric: bool
    #: Whether :meth:`dither_coords` are the float sRGB values themselves (the threshold
    #: mappers then add their offsets inside the compiled loop).
    srgb_search: bool

    def encode(self, colors: np.ndarray) -> np.ndarray: ...
    def decode(self, coords: np.ndarray) -> np.ndarray: ...
    def metric(self, colors: np.ndarray) -> np.ndarray: ...
    def dither_coords(self, rgb: np.ndarray) -> np.ndarray: ...
    def nearest(self, points: np.ndarray, centers: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RGBSpace:
    """The 0–1 RGB(A) cube; Euclidean distance on the stored sRGB values."""

    name: str = "rgb"
    unit: float = 255.0
    integer_metric: bool = True
    srgb_search: bool = True

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

    def dither_coords(self, rgb: np.ndarray) -> np.ndarray:
        """float sRGB values (m, C) on the 0–255 scale to float64 metric coordinates."""
        return np.asarray(rgb, dtype=np.float64)

    def nearest(self, points: np.ndarray, centers: np.ndarray) -> np.ndarray:
        """Index of the nearest center of each point (metric coordinates); ties to the
        lowest index. Exact: see :func:`colorquant.nearest.nearest`."""
        from .nearest import nearest

        return nearest(points, centers)


#: sRGB-linear to LMS, and cube-rooted LMS to OKLab (Björn Ottosson, 2020).
_M1 = np.array([[0.4122214708, 0.5363325363, 0.0514459929],
                [0.2119034982, 0.6806995451, 0.1073969566],
                [0.0883024619, 0.2817188376, 0.6299787005]])
_M2 = np.array([[0.2104542553, 0.7936177850, -0.0040720468],
                [1.9779984951, -2.4285922050, 0.4505937099],
                [0.0259040371, 0.7827717662, -0.8086757660]])
_M1_INV = np.linalg.inv(_M1)
_M2_INV = np.linalg.inv(_M2)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB component values in [0, 1] to linear light (the IEC 61966-2-1 curve)."""
    v = np.asarray(values, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] to sRGB component values in [0, 1]."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


#: sRGB-linear to CIE XYZ (D65), and the D65 white point.
_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                 [0.2126729, 0.7151522, 0.0721750],
                 [0.0193339, 0.1191920, 0.9503041]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


_XYZ_INV = np.linalg.inv(_XYZ)


def srgb_to_cielab(colors: np.ndarray) -> np.ndarray:
    """uint8 (or float) sRGB (m, 3+) on the 0–255 scale to CIE L*a*b* (D65), float64 (m, 3);
    alpha is ignored."""
    linear = srgb_to_linear(np.asarray(colors, dtype=np.float64)[:, :3] / 255.0)
    t = (linear @ _XYZ.T) / _WHITE
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                     200 * (f[:, 1] - f[:, 2])], axis=1)


def cielab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) (m, 3) to float sRGB values on the 0–255 scale (clipped to the cube)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[:, 0] + 16) / 116
    f = np.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], axis=1)
    t = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    return linear_to_srgb((t * _WHITE) @ _XYZ_INV.T) * 255.0


@dataclass(frozen=True)
class OKLabSpace:
    """OKLab (L in 0–1, a and b about ±0.4). Distances are float64 Euclidean in these
    coordinates; colors with alpha go through :class:`Premultiplied` (given alpha here, it is
    kept as a fourth coordinate alpha/255)."""

    name: str = "oklab"
    unit: float = 1.0
    integer_metric: bool = False
    srgb_search: bool = False

    def encode(self, colors: np.ndarray) -> np.ndarray:
        """uint8 or float sRGB(A) values (m, C) on the 0–255 scale to float64 OKLab(A)."""
        values = np.asarray(colors, dtype=np.float64) / 255.0
        lms = np.cbrt(srgb_to_linear(values[:, :3]) @ _M1.T)
        lab = lms @ _M2.T
        return np.hstack([lab, values[:, 3:]]) if values.shape[1] > 3 else lab

    def decode(self, coords: np.ndarray) -> np.ndarray:
        """float64 OKLab(A) (m, C) to the nearest-rounded uint8 sRGB(A) colors (clipped)."""
        coords = np.asarray(coords, dtype=np.float64)
        linear = ((coords[:, :3] @ _M2_INV.T) ** 3) @ _M1_INV.T
        out = np.hstack([linear_to_srgb(linear), coords[:, 3:]])
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)

    def metric(self, colors: np.ndarray) -> np.ndarray:
        """The search coordinates: the same as :meth:`encode`."""
        return self.encode(colors)

    def dither_coords(self, rgb: np.ndarray) -> np.ndarray:
        """float sRGB values (m, C) on the 0–255 scale to OKLab(A)."""
        return self.encode(rgb)

    def nearest(self, points: np.ndarray, centers: np.ndarray) -> np.ndarray:
        """Index of the nearest center of each point, ties to the lowest index.

        Squared distances are summed channel by channel in float64 (no matrix-product
        shortcut, whose cancellation could reorder near ties), so the answer is the same on
        every machine and thread count.
        """
        return nearest_float64(points, centers)


@dataclass(frozen=True)
class CIELabSpace:
    """CIE L*a*b* (D65), the space CIEDE2000 is defined on, divided by 100 (L 0–1, a and b
    about ±1: the scale of the other spaces, for the fit's tolerances). Distances are float64
    Euclidean (CIE76 ΔE / 100); colors with alpha go through :class:`Premultiplied`."""

    name: str = "lab"
    unit: float = 1.0
    integer_metric: bool = False
    srgb_search: bool = False

    def encode(self, colors: np.ndarray) -> np.ndarray:
        """uint8 or float sRGB(A) values (m, C) on the 0–255 scale to float64 L*a*b*(A)/100."""
        values = np.asarray(colors, dtype=np.float64)
        lab = srgb_to_cielab(values) / 100.0
        return np.hstack([lab, values[:, 3:] / 255.0]) if values.shape[1] > 3 else lab

    def decode(self, coords: np.ndarray) -> np.ndarray:
        """float64 L*a*b*(A)/100 (m, C) to the nearest-rounded uint8 sRGB(A) colors
        (clipped)."""
        coords = np.asarray(coords, dtype=np.float64)
        out = np.hstack([cielab_to_srgb(coords[:, :3] * 100.0), coords[:, 3:] * 255.0])
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def metric(self, colors: np.ndarray) -> np.ndarray:
        """The search coordinates: the same as :meth:`encode`."""
        return self.encode(colors)

    def dither_coords(self, rgb: np.ndarray) -> np.ndarray:
        """float sRGB values (m, C) on the 0–255 scale to L*a*b*(A)/100."""
        return self.encode(rgb)

    def nearest(self, points: np.ndarray, centers: np.ndarray) -> np.ndarray:
        """Index of the nearest center of each point, ties to the lowest index (float64,
        channel by channel, as :meth:`OKLabSpace.nearest`)."""
        return nearest_float64(points, centers)


def nearest_float64(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index (uint8) of the nearest center, float64 sum of squared channel differences in
    channel order, first minimum on ties. ``points`` (m, C), ``centers`` (k, C), k <= 256."""
    points = np.asarray(points, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if len(centers) > 256:
        raise ValueError(f"at most 256 centers, got {len(centers)}")
    out = np.empty(len(points), dtype=np.uint8)
    for start in range(0, len(points), CHUNK):
        block = points[start : start + CHUNK]
        dist = np.zeros((len(block), len(centers)))
        for c in range(points.shape[1]):
            diff = block[:, c : c + 1] - centers[:, c]
            dist += diff * diff
        out[start : start + CHUNK] = dist.argmin(axis=1)
    return out


@dataclass(frozen=True)
class Premultiplied:
    """A space's strategy for RGBA colors: the color coordinates of ``base`` multiplied by the
    opacity ``a = A / 255``, and ``a`` itself as the fourth coordinate.

    The squared distance of two colors is then the error seen after compositing over any
    background: ``|c1·a1 - c2·a2|² + (a1 - a2)²`` (libimagequant fits and remaps in the same
    way). A faint pixel's color barely counts, so the fit spends its entries where the eye
    sees them. Opaque colors keep the base space's geometry (plus the alpha term).

    In ``rgb`` the search coordinates are the whole numbers ``(R·A, G·A, B·A, 255·A)``: every
    squared distance and dot product of them is an integer below 2**53, so the float64 matrix
    product of :func:`colorquant.nearest.nearest` is exact, whatever BLAS kernel computes it.
    """

    base: Space
    integer_metric: bool = False
    srgb_search: bool = False

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def unit(self) -> float:
        return self.base.unit

    def encode(self, colors: np.ndarray) -> np.ndarray:
        """uint8 or float sRGBA values (m, 4) on the 0–255 scale to float64 premultiplied
        coordinates (base coordinates × a, a)."""
        values = np.asarray(colors, dtype=np.float64)
        alpha = values[:, 3:4] / 255.0
        return np.hstack([self.base.encode(values[:, :3]) * alpha, alpha])

    def decode(self, coords: np.ndarray) -> np.ndarray:
        """Premultiplied coordinates (m, 4) to uint8 sRGBA: alpha rounded first, then the color
        divided by that rounded alpha (so the rounded color premultiplies back nearest to the
        center); a center of alpha 0 keeps the color of alpha 1/255."""
        coords = np.asarray(coords, dtype=np.float64)
        alpha = np.clip(np.rint(coords[:, 3] * 255.0), 0, 255)
        color = self.base.decode(coords[:, :3] / (np.maximum(alpha, 1.0) / 255.0)[:, None])
        return np.hstack([color, alpha[:, None].astype(np.uint8)])

    def metric(self, colors: np.ndarray) -> np.ndarray:
        """uint8 sRGBA (m, 4) to float64 search coordinates: ``(base metric × A, unit × A)``,
        the geometry of :meth:`encode` scaled by 255 × ``unit``."""
        values = np.asarray(colors)
        alpha = values[:, 3:4].astype(np.float64)
        base = np.asarray(self.base.metric(values[:, :3]), dtype=np.float64)
        return np.hstack([base * alpha, self.unit * alpha])

    def dither_coords(self, rgb: np.ndarray) -> np.ndarray:
        """float sRGBA values (m, 4) on the 0–255 scale to the coordinates of :meth:`metric`."""
        values = np.asarray(rgb, dtype=np.float64)
        alpha = values[:, 3:4]
        return np.hstack([self.base.dither_coords(values[:, :3]) * alpha, self.unit * alpha])

    def nearest(self, points: np.ndarray, centers: np.ndarray) -> np.ndarray:
        """Index of the nearest center of each point (metric coordinates), ties to the lowest
        index: one float64 matrix product a block over whole-number coordinates (exact), or
        float64 channel by channel (:func:`nearest_float64`)."""
        if self.base.integer_metric:
            from .nearest import nearest

            return nearest(points, centers, exact=np.float64)
        return nearest_float64(points, centers)


_SPACES: dict[ColorSpace, Space] = {ColorSpace.RGB: RGBSpace(), ColorSpace.OKLAB: OKLabSpace(),
                                     ColorSpace.LAB: CIELabSpace()}
_PREMULTIPLIED: dict[ColorSpace, Space] = {key: Premultiplied(value)
                                           for key, value in _SPACES.items()}


def get_space(space: ColorSpace, channels: int = 3) -> Space:
    """The strategy object for a :class:`~colorquant.options.ColorSpace` and colors of
    ``channels`` channels (4: RGBA, premultiplied)."""
    return (_PREMULTIPLIED if channels == 4 else _SPACES)[space]
