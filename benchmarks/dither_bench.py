"""Dithering and color spaces: quality and speed against pngquant, measured side by side.

    python benchmarks/dither_bench.py --quality      # PSNR, ΔE2000, blurred PSNR, FLIP
    python benchmarks/dither_bench.py --speed        # 24 MP photo: vs pngquant and none
    python benchmarks/dither_bench.py --speed --compress-level 5   # the same, deflate level 5
    python benchmarks/dither_bench.py --figure docs/china-16c-dither.png   # the docs picture
    python benchmarks/dither_bench.py --pillow       # is Pillow's palette lookup exact?
    python benchmarks/dither_bench.py --bound        # how low ΔE2000 gets with a space's palette

Quality: the four Kodak photos of the corpus (``COLORQUANT_CORPUS``) and the two samples, at
k = 16, 64, 256, mean over images. colorquant fits one palette per image and k (the fit does
not depend on the mapping) and maps it with each method. Measures, against the input:
PSNR (0–255, all channels); mean CIEDE2000 per pixel (colorquant.metrics); blurred PSNR: both
images filtered with a Gaussian of σ = 1 px (numpy, separable, kernel cut at 4σ, edges
reflected) before the PSNR, a stand-in for viewing distance; mean FLIP (NVIDIA's
``flip-evaluator``, LDR, default 67 pixels per degree) when that package is installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rd_bench import blur  # noqa: E402  (the σ = 1 px blur both benchmarks measure with)

from colorquant import core, dither, metrics  # noqa: E402
from colorquant.colorspace import srgb_to_cielab  # noqa: E402
from colorquant.options import (  # noqa: E402
    ColorSpace,
    Dither,
    FitMethod,
    QuantizeOptions,
    SaveOptions,
)

CORPUS = Path(os.environ.get("COLORQUANT_CORPUS", ROOT.parent / "shared" / "corpus"))
KS = (16, 64, 256)


def quality_images() -> list[Path]:
    kodak = sorted((CORPUS / "photos").glob("kodak-*.png"))
    return [*kodak, ROOT / "sample_images" / "china.jpg", ROOT / "sample_images" / "flower.jpg"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return metrics.psnr(float(np.mean((a.astype(np.float64) - b) ** 2)))


def delta_e(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.delta_e2000(srgb_to_cielab(a.reshape(-1, 3)),
                                     srgb_to_cielab(b.reshape(-1, 3))).mean())


def flip_score(a: np.ndarray, b: np.ndarray) -> float | None:
    try:
        import flip_evaluator
    except ImportError:
        return None
    _, mean, _ = flip_evaluator.evaluate(a.astype(np.float32) / 255, b.astype(np.float32) / 255,
                                         "LDR", applyMagma=False)
    return float(mean)


def measures(original: np.ndarray, out: np.ndarray, blurred: np.ndarray) -> dict[str, float]:
    scores = {"psnr": psnr(original, out), "de": delta_e(original, out),
              "blur": psnr(blurred, blur(out))}
    flip = flip_score(original, out)
    if flip is not None:
        scores["flip"] = flip
    return scores


def pngquant(png: Path, k: int, extra: list[str]) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "out.png"
        subprocess.run(["pngquant", str(k), "--force", "--output", str(dst), *extra, str(png)],
                       check=True)
        return np.asarray(Image.open(dst).convert("RGB"))


def quality(methods: dict[str, tuple[ColorSpace, Dither, dict]]) -> None:
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in quality_images():
            original = np.asarray(Image.open(path).convert("RGB"))
            png = Path(tmp) / "in.png"
            Image.fromarray(original).save(png)
            blurred = blur(original)
            for k in KS:
                palettes = {}
                for name, (space, method, patch) in methods.items():
                    if space not in palettes:
                        palettes[space] = core.fit_palette(
                            core.prepare(original).histogram,
                            QuantizeOptions(colors=k, space=space))
                    saved = {key: getattr(dither, key) for key in patch}
                    for key, value in patch.items():
                        setattr(dither, key, value)
                    try:
                        result = core.quantize(
                            original, QuantizeOptions(colors=k, space=space, dither=method),
                            palette=palettes[space])
                    finally:
                        for key, value in saved.items():
                            setattr(dither, key, value)
                    out = np.asarray(result.image.convert("RGB"))
                    rows.setdefault((name, k), []).append(measures(original, out, blurred))
                for name, extra in (("pngquant default", []), ("pngquant --nofs", ["--nofs"])):
                    out = pngquant(png, k, extra)
                    rows.setdefault((name, k), []).append(measures(original, out, blurred))
            print(f"done {path.name}", file=sys.stderr, flush=True)
    names = list(dict.fromkeys(name for name, _ in rows))
    keys = [("psnr", "PSNR dB"), ("de", "mean ΔE2000"), ("blur", "blurred PSNR dB (σ=1)"),
            ("flip", "mean FLIP")]
    for key, title in keys:
        if key not in rows[(names[0], KS[0])][0]:
            print(f"\n{title}: flip-evaluator is not installed")
            continue
        print(f"\n| {title} | " + " | ".join(f"k={k}" for k in KS) + " |")
        print("|---|" + "---:|" * len(KS))
        for name in names:
            cells = [statistics.mean(r[key] for r in rows[(name, k)]) for k in KS]
            print(f"| {name} | " + " | ".join(f"{c:.3f}" if key in ("de", "flip") else
                                             f"{c:.2f}" for c in cells) + " |")


DEFAULT_METHODS = {
    "colorquant none": (ColorSpace.RGB, Dither.NONE, {}),
    "colorquant --space oklab": (ColorSpace.OKLAB, Dither.NONE, {}),
    "colorquant --space lab": (ColorSpace.LAB, Dither.NONE, {}),
    "colorquant fs": (ColorSpace.RGB, Dither.FS, {}),
    "colorquant ordered": (ColorSpace.RGB, Dither.ORDERED, {}),
    "colorquant blue-noise": (ColorSpace.RGB, Dither.BLUE_NOISE, {}),
}


def speed(rounds: int, folder: str, level: int | None) -> None:
    """Interleaved rounds on the 24 MP photo (made once into ``folder``); medians and ratios.
    ``level``: the ``--compress-level`` of every colorquant run (None: colorquant's default).

    Then the encoder's share (:func:`encoder_floor`): how long saving each method's output
    takes, and the ratio to ``none`` that a method would have if its mapping cost nothing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import images

    jpg, png = images.make(Path(folder), ROOT / "sample_images" / "china.jpg",
                           ["24MP"])["24MP"]
    out = Path(tempfile.mkdtemp(prefix="dither-bench-"))
    extra = [] if level is None else ["--compress-level", str(level)]
    methods = ("none", "fs", "ordered", "blue-noise")
    runs = {}
    for k in (16, 256):
        runs[f"pngquant k={k}"] = ["pngquant", str(k), "--force", "--output",
                                   str(out / "pq.png"), str(png)]
        for method in methods:
            runs[f"colorquant --dither {method} k={k}"] = [
                "colorquant", str(jpg), "-k", str(k), "--dither", method, "-o",
                str(out / f"cq-{method}-{k}.png"), *extra]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):  # interleaved rounds
        for name, cmd in runs.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    print("| run | median s | ratio |\n|---|---:|---|")
    for name, values in times.items():
        k = name.rsplit("k=", 1)[1]
        med = statistics.median(values)
        base = statistics.median(times[f"pngquant k={k}"])
        none = statistics.median(times[f"colorquant --dither none k={k}"])
        print(f"| {name} | {med:.2f} | {med / base:.2f}× pngquant, {med / none:.2f}× none |")
    print("\n| k | method | output MB | save s | floor × none |\n|---:|---|---:|---:|---:|")
    for k in (16, 256):
        none = statistics.median(times[f"colorquant --dither none k={k}"])
        outputs = {method: out / f"cq-{method}-{k}.png" for method in methods}
        saves = encoder_floor(outputs, rounds, level)
        for method in methods:
            floor = (none + saves[method] - saves["none"]) / none
            size = outputs[method].stat().st_size / 1e6
            print(f"| {k} | {method} | {size:.1f} | {saves[method]:.2f} | {floor:.2f} |")


def encoder_floor(outputs: dict[str, Path], rounds: int, level: int | None,
                  ) -> dict[str, float]:
    """Median time to save each output's indices again with the encoder arguments colorquant
    uses (interleaved rounds, in memory). A method's run minus ``none``'s is its mapping's
    extra time plus this save's extra time; with ``none``'s run time, the second alone gives
    the floor: the ratio to ``none`` the method would have if its mapping cost nothing."""
    from io import BytesIO

    from colorquant import encode
    from colorquant.frames import Frames

    Image.MAX_IMAGE_PIXELS = None
    decoded = {}
    for method, path in outputs.items():
        with Image.open(path) as image:
            image.load()  # the pixels stay when the file closes
            decoded[method] = image
    taken: dict[str, list[float]] = {method: [] for method in outputs}
    for _ in range(rounds):
        for method, image in decoded.items():
            start = time.perf_counter()
            encode.write(BytesIO(), [image], "PNG", Frames([image]), transparent_index=None,
                         save=SaveOptions(compress_level=level, strip=True),
                         n_colors=len(image.getpalette()) // 3)
            taken[method].append(time.perf_counter() - start)
    return {method: statistics.median(values) for method, values in taken.items()}


#: The sky of china.jpg: a smooth gradient, where 16 undithered colors show bands.
SKY = (400, 0, 600, 150)


def figure(path: Path) -> None:
    """A 2×2 mosaic of the sky at 16 colors (none, fs, blue-noise, pngquant), 2× enlarged."""
    from PIL import ImageDraw

    source = ROOT / "sample_images" / "china.jpg"
    original = np.asarray(Image.open(source).convert("RGB"))
    panels = []
    for label, method in (("colorquant (none)", Dither.NONE), ("colorquant --dither fs",
                                                               Dither.FS),
                          ("colorquant --dither blue-noise", Dither.BLUE_NOISE)):
        result = core.quantize(original, QuantizeOptions(colors=16, dither=method))
        panels.append((label, np.asarray(result.image.convert("RGB"))))
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "in.png"
        Image.fromarray(original).save(png)
        panels.append(("pngquant 16 (dithered)", pngquant(png, 16, [])))
    x0, y0, x1, y1 = SKY
    w, h, strip = (x1 - x0) * 2, (y1 - y0) * 2, 18
    mosaic = Image.new("RGB", (2 * w, 2 * (h + strip)), "white")
    draw = ImageDraw.Draw(mosaic)
    for i, (label, pixels) in enumerate(panels):
        crop = Image.fromarray(pixels[y0:y1, x0:x1]).resize((w, h), Image.Resampling.NEAREST)
        left, top = (i % 2) * w, (i // 2) * (h + strip)
        mosaic.paste(crop, (left, top + strip))
        draw.text((left + 4, top + 3), label, fill="black")
    mosaic = mosaic.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    mosaic.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def pillow_exactness(seed: int = 0) -> None:
    """How often Pillow's mapping to a given palette (``quantize(palette=...)``, the lookup its
    Floyd–Steinberg uses too) misses the nearest palette color, on random pixels and palettes."""
    import PIL

    rng = np.random.default_rng(seed)
    print(f"\n### Pillow {PIL.__version__}: quantize(palette=P, dither=NONE) against the "
          "exact nearest color (512×512 random pixels)\n")
    print("| k | pixels not mapped to a nearest color | mean excess squared distance | max |")
    print("|---:|---:|---:|---:|")
    for k in KS:
        palette = rng.integers(0, 256, (k, 3), dtype=np.uint8)
        pixels = rng.integers(0, 256, (512 * 512, 3), dtype=np.uint8)
        entries = np.vstack([palette, np.repeat(palette[:1], 256 - k, axis=0)])  # 256 entries
        holder = Image.new("P", (1, 1))
        holder.putpalette(entries.ravel().tolist())
        image = Image.fromarray(pixels.reshape(512, 512, 3))
        got = entries[np.asarray(image.quantize(palette=holder, dither=Image.Dither.NONE))]
        wide = pixels.astype(np.int64)
        best = np.full(len(wide), np.iinfo(np.int64).max)
        for color in palette.astype(np.int64):
            best = np.minimum(best, ((wide - color) ** 2).sum(axis=1))
        excess = ((wide - got.reshape(-1, 3).astype(np.int64)) ** 2).sum(axis=1) - best
        missed = excess > 0
        print(f"| {k} | {missed.mean():.2%} | {excess[missed].mean():.1f} | {excess.max()} |")


def nearest_delta_e(histogram, palette) -> float:
    """Mean CIEDE2000 when every pixel takes the palette color of smallest CIEDE2000 to it
    (no mapping of this palette can do better), over the histogram's distinct colors."""
    colors = srgb_to_cielab(histogram.colors[:, :3])
    best = np.full(len(colors), np.inf)
    for entry in srgb_to_cielab(palette.colors[:, :3]):
        best = np.minimum(best, metrics.delta_e2000(colors, np.broadcast_to(entry, colors.shape)))
    return float((best * histogram.counts).sum() / histogram.counts.sum())


def bound() -> None:
    """Mean ΔE2000 of the perceptual spaces' palettes: as fitted and mapped (nearest in the
    space), fitted by full-batch Lloyd (``--fit lloyd``), and the default fit's palette with
    each pixel on its CIEDE2000-nearest color, a bound on any mapping of that palette; beside
    pngquant --nofs, on the quality images."""
    rows: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in quality_images():
            original = np.asarray(Image.open(path).convert("RGB"))
            png = Path(tmp) / "in.png"
            Image.fromarray(original).save(png)
            histogram = core.prepare(original).histogram
            for k in KS:
                rows.setdefault(("pngquant --nofs", k), []).append(
                    delta_e(original, pngquant(png, k, ["--nofs"])))
                for space in (ColorSpace.OKLAB, ColorSpace.LAB):
                    name = f"--space {space.value}"
                    for label, fit in (("", FitMethod.MINIBATCH),
                                       (" --fit lloyd", FitMethod.LLOYD)):
                        options = QuantizeOptions(colors=k, space=space, fit_method=fit)
                        palette = core.fit_palette(histogram, options)
                        out = core.quantize(original, options, palette=palette).image
                        rows.setdefault((name + label, k), []).append(
                            delta_e(original, np.asarray(out.convert("RGB"))))
                        if fit is FitMethod.MINIBATCH:
                            rows.setdefault((name + ", each pixel on its ΔE2000-nearest", k),
                                            []).append(nearest_delta_e(histogram, palette))
            print(f"done {path.name}", file=sys.stderr, flush=True)
    base = {k: statistics.mean(rows[("pngquant --nofs", k)]) for k in KS}
    print("\n| mean ΔE2000 (× pngquant --nofs) | " + " | ".join(f"k={k}" for k in KS) + " |")
    print("|---|" + "---:|" * len(KS))
    for name in dict.fromkeys(name for name, _ in rows):
        cells = [statistics.mean(rows[(name, k)]) for k in KS]
        print(f"| {name} | " + " | ".join(f"{c:.3f} ({c / base[k]:.2f}×)"
                                         for c, k in zip(cells, KS, strict=True)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compress-level", type=int,
                        help="--speed: pass this --compress-level to every colorquant run")
    parser.add_argument("--folder", default="/tmp/colorquant-bench",
                        help="where the 24 MP test photo is made once (shared with bench.py)")
    parser.add_argument("--variants", action="store_true",
                        help="also try other fs rules and threshold scales")
    parser.add_argument("--figure", type=Path, help="write the picture of docs/dithering.md here")
    parser.add_argument("--pillow", action="store_true",
                        help="only check whether Pillow's palette lookup is exact")
    parser.add_argument("--bound", action="store_true",
                        help="only the ΔE2000 bound of the OKLab and CIELAB palettes")
    args = parser.parse_args()
    if args.bound:
        bound()
        return
    if args.pillow:
        pillow_exactness()
        return
    if args.figure:
        figure(args.figure)
        return
    methods = dict(DEFAULT_METHODS)
    if args.variants:
        methods["fs without edge limit"] = (ColorSpace.RGB, Dither.FS, {"FS_EDGE": 0.0})
        for edge in (0.05, 0.2):
            methods[f"fs edge {edge}"] = (ColorSpace.RGB, Dither.FS, {"FS_EDGE": edge})
        methods["fs keeping all the error"] = (ColorSpace.RGB, Dither.FS, {"FS_KEEP": 1.0})
        methods["fs, no overflow"] = (ColorSpace.RGB, Dither.FS, {"FS_OVERFLOW": 0.0})
        for scale in (0.35, 1.0):
            methods[f"blue-noise scale {scale}"] = (ColorSpace.RGB, Dither.BLUE_NOISE,
                                                    {"THRESHOLD_SCALE": scale})
        methods["fs oklab"] = (ColorSpace.OKLAB, Dither.FS, {})
        methods["fs lab"] = (ColorSpace.LAB, Dither.FS, {})
    if args.quality or not args.speed:
        quality(methods)
    if args.speed:
        speed(args.rounds, args.folder, args.compress_level)


if __name__ == "__main__":
    main()
