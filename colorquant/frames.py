"""Still and multi-frame images: read every frame upright in one mode, with its metadata.

Pillow hands over each frame of an animated GIF, APNG or animated WebP already composited
onto the full canvas, so every frame read here is a complete picture. The writers
(:mod:`colorquant.encode`) get complete frames too, and Pillow's encoders store only what
changed, following the disposal given.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import imagefile
from .errors import ImageTooLargeError, InputError, first_line
from .memory import as_memory_error, is_out_of_memory
from .options import DEFAULT_MAX_PIXELS, Log

#: Formats whose Pillow reader closes the file once a still image is decoded (and maps no
#: file): such a frame is kept as it is, not copied (a 24 MP photo's copy is 96 MB and 60 ms).
FILE_DONE = frozenset({"PNG", "JPEG", "WEBP"})


@dataclass(frozen=True, eq=False)
class Frames:
    """The frames of one input, upright, all RGB or all RGBA, with what is kept of its metadata.

    Attributes
    ----------
    images : list of PIL.Image.Image
        One or more frames, all ``"RGB"`` or all ``"RGBA"`` (the pages of a TIFF may differ
        in size; an animation's frames only when later ones grow its canvas, as Pillow
        enlarges a GIF's to hold a frame beyond it).
    durations : list of int or None
        Display time of each frame in milliseconds, when the source has them.
    loop : int or None
        Loop count of the source animation (0 = forever), when it has one.
    disposal : list of str or None
        ``"none"``, ``"background"`` or ``"previous"`` per frame, when the source has them.
    icc_profile : bytes or None
        The RGB ICC profile to embed (None after a conversion to sRGB).
    dpi : tuple of float or None
        Resolution of the source, when it has one.
    pages : bool
        Whether the frames are a document's pages (a TIFF), not an animation's frames (the
        messages name them so).
    """

    images: list[Image.Image]
    durations: list[int] | None = None
    loop: int | None = None
    disposal: list[str] | None = None
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    pages: bool = False

    @property
    def mode(self) -> str:
        return self.images[0].mode


def _disposal(image: Image.Image) -> str | None:
    """The disposal of the current frame in neutral terms, if the format has one."""
    if image.format == "GIF":
        method = getattr(image, "disposal_method", 0)
        return {2: "background", 3: "previous"}.get(method, "none")
    if image.format == "PNG" and "disposal" in image.info:
        return {1: "background", 2: "previous"}.get(image.info["disposal"], "none")
    return None


def read(image: Image.Image, *, frame: int | None = None, to_srgb: bool = False,
         max_pixels: int = DEFAULT_MAX_PIXELS, label: str = "image", log: Log | None = None,
         ) -> Frames:
    """Every frame of an opened image (or just ``frame``), upright and in sRGB(A) uint8.

    All frames are converted with the same rules (see :func:`colorquant.imagefile.to_rgba`) and the
    same color profile; they are all RGBA when any pixel of any frame is not opaque.
    """
    profile = imagefile.color_profile(image, to_srgb=to_srgb, label=label, log=log)
    n_frames = getattr(image, "n_frames", 1)
    indices = [frame] if frame is not None else list(range(n_frames))
    loop = image.info.get("loop")
    dpi = image.info.get("dpi")
    images: list[Image.Image] = []
    durations: list[int] = []
    disposals: list[str] = []
    first = image.size
    decoded = 0  # pixels of the frames so far, each at the size it decodes to
    for index in indices:
        try:
            with imagefile.pixel_limit(max_pixels, label):
                if image.tell() != index:
                    image.seek(index)
                decoded += image.width * image.height
                if decoded > max_pixels:  # a frame grew the canvas past what headers said
                    raise ImageTooLargeError(
                        f"{label}: frame {index} is {image.width}x{image.height} (the first "
                        f"{first[0]}x{first[1]}): the frames up to it are {decoded:,} pixels, "
                        f"over the limit of {max_pixels:,} (see --max-pixels, or take one "
                        "frame with --frame)")
                image.load()
                current = imagefile.upright(image)
                if current is image and (n_frames > 1 or image.format not in FILE_DONE):
                    # the next seek reuses the image's memory, or the file stays open until
                    # the caller closes the image: a copy is what outlives both
                    current = image.copy()
        except InputError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):  # not damage: an allocation failed while decoding
                raise as_memory_error(exc) from None
            raise InputError(f"{label}: corrupt or truncated frame {index} "
                             f"({first_line(exc)})") from None
        if current is not image:
            current.info = dict(image.info)
        current = imagefile.to_8bit(current, label)
        if profile.transform is not None:
            current = profile.transform(current)
        images.append(imagefile.to_rgba(current, label))
        if "duration" in image.info:
            durations.append(int(image.info["duration"]))
        kind = _disposal(image)
        if kind is not None:
            disposals.append(kind)
    if any(im.mode == "RGBA" for im in images):
        images = imagefile.opaque_as_rgb(
            [im if im.mode == "RGBA" else im.convert("RGBA") for im in images])
    good_dpi = None
    with contextlib.suppress(Exception):
        x, y = (float(v) for v in dpi)  # type: ignore[union-attr]
        if x > 0 and y > 0:
            good_dpi = (x, y)
    return Frames(
        images=images,
        durations=durations if len(durations) == len(images) and len(images) > 1 else None,
        loop=int(loop) if isinstance(loop, int) else None,
        disposal=disposals if len(disposals) == len(images) and len(images) > 1 else None,
        icc_profile=profile.keep,
        dpi=good_dpi,
        pages=image.format == "TIFF" and len(images) > 1,
    )


def threshold_alpha(images: list[Image.Image]) -> tuple[list[Image.Image], bool]:
    """RGBA frames with alpha made 0 or 255 (cut at 128), and whether any alpha was partial.

    For formats with a single transparent palette index (GIF): the palette is then fitted to
    what the format can show.
    """
    if not images or images[0].mode != "RGBA":
        return images, False
    out = []
    partial = False
    for im in images:
        rgba = np.array(im)
        alpha = rgba[..., 3]
        partial = partial or bool(((alpha > 0) & (alpha < 255)).any())
        rgba[..., 3] = np.where(alpha >= 128, 255, 0).astype(np.uint8)
        out.append(Image.fromarray(rgba, "RGBA"))
    return imagefile.opaque_as_rgb(out), partial
