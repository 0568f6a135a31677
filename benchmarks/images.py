"""Make the benchmark's large test images (in a scratch folder, never committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {"24MP": (6000, 4000), "96MP": (12000, 8000)}


def photo_like(source: Path, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Upscale a sample photo and add mild sensor-like noise (camera-like color counts)."""
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(source) as im:
        if im.height > im.width:  # portrait photos stay portrait
            size = (size[1], size[0])
        big = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    array = np.asarray(big)
    out = np.empty_like(array)
    rng = np.random.default_rng(seed)
    step = 256
    for row in range(0, array.shape[0], step):
        block = array[row : row + step].astype(np.int16)
        block += rng.integers(-3, 4, block.shape, dtype=np.int16)
        np.clip(block, 0, 255, out=block)
        out[row : row + step] = block
    return Image.fromarray(out, "RGB")


def make(folder: Path, source: Path, names: list[str], prefix: str = "photo",
         ) -> dict[str, tuple[Path, Path]]:
    """JPEG (colorquant's input) and PNG (pngquant's input) of each size, made once and cached."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in names:
        jpg, png = folder / f"{prefix}-{name}.jpg", folder / f"{prefix}-{name}.png"
        if not (jpg.exists() and png.exists()):
            image = photo_like(source, SIZES[name])
            image.save(jpg, quality=92)
            image.close()
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(jpg) as decoded:  # the same pixels colorquant decodes
                decoded.save(png, compress_level=1)
        made[name] = (jpg, png)
    return made
