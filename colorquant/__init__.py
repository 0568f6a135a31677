"""colorquant: reduce an image's colors with mini-batch k-means, exactly and reproducibly.

The public API is imported lazily, so ``import colorquant`` (and the command's ``--help``)
does not pay for numpy, Pillow or scikit-learn until they are used.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms of every call)
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"

__all__ = [
    "ColorSpace",
    "ColorquantError",
    "Dither",
    "FitMethod",
    "ImageTooLargeError",
    "InputError",
    "OutputError",
    "Palette",
    "PaletteError",
    "QuantizeOptions",
    "QuantizeResult",
    "SaveOptions",
    "__version__",
    "quantize",
    "quantize_file",
    "quantize_image",
    "read_palette",
    "write_palette",
]

_WHERE = {
    "ColorSpace": "options",
    "Dither": "options",
    "FitMethod": "options",
    "QuantizeOptions": "options",
    "SaveOptions": "options",
    "ColorquantError": "errors",
    "ImageTooLargeError": "errors",
    "InputError": "errors",
    "OutputError": "errors",
    "PaletteError": "errors",
    "Palette": "palette",
    "QuantizeResult": "core",
    "quantize": "core",
    "quantize_file": "files",
    "quantize_image": "core",
    "read_palette": "palettefile",
    "write_palette": "palettefile",
}

if TYPE_CHECKING:
    from .core import QuantizeResult, quantize, quantize_image
    from .errors import (
        ColorquantError,
        ImageTooLargeError,
        InputError,
        OutputError,
        PaletteError,
    )
    from .files import quantize_file
    from .options import ColorSpace, Dither, FitMethod, QuantizeOptions, SaveOptions
    from .palette import Palette
    from .palettefile import read_palette, write_palette


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
