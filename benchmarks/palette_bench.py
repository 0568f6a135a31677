"""Palette-control benchmark: cost of --target-psnr, its chosen N against brute force, exact N
against the old short palette, and pinned colors against fit-then-swap.

    python benchmarks/palette_bench.py [--repeats 5] [--corpus DIR] [--only TABLE ...]

Prints four markdown tables (the README's "Palette control" numbers):

1. ``--target-psnr`` cost: k-means fits (``fit.fit_centers`` calls), exact Lloyd
   refinements and exact-N fills (a short palette filled) per call, and the time of one
   quantization with a target against one plain quantization at -k 256, interleaved
   rounds, medians and their ratio.
2. Chosen N against the true smallest N (every N from 1 to -k fitted on its own) on small
   images; how often and by how much they differ.
3. Exact N: images where the plain fit came back short, with PSNR of the short palette and
   of the filled one (images: the Kodak photos, the samples and generated images with a few
   dominant colors).
4. Pinned colors: PSNR of the pinned fit against "fit N, swap the nearest centers for the
   pins".
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from colorquant import core, fit, metrics, palettecontrol
from colorquant.colorspace import get_space
from colorquant.options import ColorSpace, QuantizeOptions

ROOT = Path(__file__).resolve().parent.parent
RGB = get_space(ColorSpace.RGB)
OPTIONS = QuantizeOptions()


def nearest(colors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return core._nearest(colors, centers, OPTIONS)


def photos(corpus: Path) -> dict[str, Image.Image]:
    found = sorted((corpus / "photos").glob("*.png")) + sorted((ROOT / "sample_images").glob(
        "*.jpg"))
    out = {}
    for path in found:
        with Image.open(path) as im:
            out[path.stem] = im.convert("RGB")
    return out


def dominant(seed: int) -> Image.Image:
    """Many copies of a few colors plus rare outliers."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    rows = [np.repeat(base, 4000, axis=0), rng.integers(0, 256, (500, 3), dtype=np.uint8)]
    return Image.fromarray(np.vstack(rows).reshape(-1, 82, 3)[:, :80].copy())


class Counter:
    """Counts calls of a module function (measurement only: the function still runs)."""

    def __init__(self, module: object, name: str) -> None:
        self.module, self.name, self.calls = module, name, 0
        self.original = getattr(module, name)

    def __enter__(self) -> Counter:
        def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return self.original(*args, **kwargs)

        setattr(self.module, self.name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.module, self.name, self.original)


def target_cost(images: dict[str, Image.Image], repeats: int, target: tuple[float, float],
                ) -> None:
    print(f"\n### --target-psnr {target[0]:g}-{target[1]:g} against one plain fit, -k 256\n")
    print("| image | fits | refinements | fills | chosen N | PSNR dB | plain s | target s | "
          "ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    plain_opt = QuantizeOptions(colors=256)
    target_opt = QuantizeOptions(colors=256, target_psnr=target)
    ratios = []
    for name, image in images.items():
        with (Counter(fit, "fit_centers") as fits, Counter(fit, "lloyd_refine") as refines,
              Counter(palettecontrol, "_split") as fills):
            result = core.quantize(image, target_opt)
        times: dict[str, list[float]] = {"plain": [], "target": []}
        for _ in range(repeats):  # interleaved rounds
            for label, options in (("plain", plain_opt), ("target", target_opt)):
                start = time.perf_counter()
                core.quantize(image, options)
                times[label].append(time.perf_counter() - start)
        plain, timed = statistics.median(times["plain"]), statistics.median(times["target"])
        ratios.append(timed / plain)
        print(f"| {name} | {fits.calls} | {refines.calls} | {fills.calls} | "
              f"{len(result.palette)} | "
              f"{result.psnr:.2f} | {plain:.3f} | {timed:.3f} | {timed / plain:.2f} |")
    print(f"\nmedian ratio target/plain: {statistics.median(ratios):.2f}")


def brute_force(images: dict[str, Image.Image], k: int, targets: list[float]) -> None:
    print(f"\n### chosen N against the true smallest N (every N from 1 to {k} fitted), "
          "small images\n")
    print("| image | target dB | chosen N | smallest N | chosen − smallest |")
    print("|---|---|---|---|---|")
    differ, gaps, total = 0, [], 0
    for name, image in images.items():
        small = image.resize((96, 64), Image.Resampling.BOX)
        psnr_of = {n: core.quantize(small, QuantizeOptions(colors=max(n, 2))).psnr
                   if n > 1 else _one_color_psnr(small) for n in range(1, k + 1)}
        for target in targets:
            try:
                chosen = len(core.quantize(small, QuantizeOptions(
                    colors=k, target_psnr=(target, target))).palette)
            except palettecontrol_errors() as exc:
                print(f"| {name} | {target:g} | {exc} | | |")
                continue
            smallest = min((n for n, p in psnr_of.items() if p >= target), default=None)
            if smallest is None:
                continue
            total += 1
            differ += chosen != smallest
            gaps.append(chosen - smallest)
            print(f"| {name} | {target:g} | {chosen} | {smallest} | {chosen - smallest:+d} |")
    print(f"\ndiffers in {differ} of {total} cases; chosen − smallest: min {min(gaps)}, "
          f"median {statistics.median(gaps)}, max {max(gaps)}")


def palettecontrol_errors() -> type[Exception]:
    from colorquant.errors import QualityTooLowError

    return QualityTooLowError


def _one_color_psnr(image: Image.Image) -> float:
    h = core.prepare(image).histogram
    hist = palettecontrol.WeightedColors(h.colors, h.counts)
    mean = np.average(h.colors.astype(np.float64), axis=0, weights=h.counts)
    center = np.rint(mean).astype(np.uint8)[None]
    return metrics.psnr(metrics.weighted_mse(hist.colors, center[np.zeros(len(h.colors),
                                                                            int)], h.counts))


def exact_n(images: dict[str, Image.Image], ks: list[int]) -> None:
    print("\n### exact N against the plain (possibly short) fit\n")
    print("| image | k | plain colors used | PSNR plain dB | exact-N colors | PSNR exact-N dB |")
    print("|---|---|---|---|---|---|")
    checked = short = 0
    for name, image in images.items():
        h = core.prepare(image).histogram
        for k in ks:
            if len(h) <= k:
                continue
            checked += 1
            plain = fit.fit_centers(h.colors, h.counts, k, seed=0, space=RGB)
            labels = nearest(h.colors, plain)
            used = len(np.unique(labels))
            if used == k:
                continue
            short += 1
            before = metrics.psnr(metrics.weighted_mse(h.colors, plain[labels], h.counts))
            result = core.quantize(image, QuantizeOptions(colors=k))
            print(f"| {name} | {k} | {used} | {before:.2f} | {len(result.palette)} | "
                  f"{result.psnr:.2f} |")
    print(f"\nplain fit short in {short} of {checked} (image, k) cases")


def pinned(images: dict[str, Image.Image], k: int, pins: list[tuple[int, int, int]]) -> None:
    print(f"\n### pinned {len(pins)} colors at -k {k}: fitted around the pins against "
          "fit-then-swap\n")
    print("| image | PSNR swap dB | PSNR pinned dB | gain dB |")
    print("|---|---|---|---|")
    gains = []
    pin_array = np.array(pins, dtype=np.uint8)
    for name, image in images.items():
        h = core.prepare(image).histogram
        swapped = palettecontrol.swap(fit.fit_centers(h.colors, h.counts, k, seed=0, space=RGB),
                                      pin_array, RGB)
        swap_psnr = metrics.psnr(metrics.weighted_mse(
            h.colors, swapped[nearest(h.colors, swapped)], h.counts))
        result = core.quantize(image, QuantizeOptions(colors=k, keep=tuple(pins)))
        gains.append(result.psnr - swap_psnr)
        print(f"| {name} | {swap_psnr:.2f} | {result.psnr:.2f} | {gains[-1]:+.2f} |")
    print(f"\nmedian gain {statistics.median(gains):+.2f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["target", "brute", "exact", "pinned"],
                        action="append", help="run only these tables (repeatable)")
    parser.add_argument("--corpus", type=Path,
                        default=Path(os.environ.get("COLORQUANT_CORPUS", "/work/shared/corpus")))
    args = parser.parse_args()
    images = photos(args.corpus)
    generated = {f"dominant-{s}": dominant(s) for s in range(3)}
    core.quantize(dominant(0), QuantizeOptions(colors=16))  # imports, warm-up
    only = set(args.only or ["target", "brute", "exact", "pinned"])
    if "target" in only:
        target_cost(images, args.repeats, (34.0, 36.0))
    if "brute" in only:
        brute_force(images, 48, [26.0, 30.0, 34.0])
    if "exact" in only:
        exact_n({**images, **generated}, [16, 64, 256])
    if "pinned" in only:
        pinned(images, 16, [(255, 255, 255), (0, 0, 0), (230, 0, 18)])
        pinned(images, 64, [(255, 255, 255), (0, 0, 0), (230, 0, 18), (0, 90, 170),
                            (255, 204, 0)])


if __name__ == "__main__":
    main()
