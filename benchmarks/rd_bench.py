"""Rate–distortion against pngquant and oxipng: bytes at a quality, as BD-rates.

    python benchmarks/rd_bench.py                       # the corpus, every k, tables
    python benchmarks/rd_bench.py --plot docs/rd-curves.png --save /tmp/rd.json
    python benchmarks/rd_bench.py --mode fs='--dither fs' --mode O2='-O 2' IMAGES_OR_FOLDERS
    python benchmarks/rd_bench.py --load /tmp/rd.json   # tables and plot again, no runs
    python benchmarks/rd_bench.py --speed /tmp/photo-24mp.png --rounds 3 --base /tmp/old-checkout

For every image and k in ``--ks`` it runs each colorquant mode (``--mode NAME=ARGS``: extra
command-line arguments, so any option can be measured; default: ``default`` and ``fs``),
``pngquant --nofs`` and pngquant with its default dithering, and each of them followed by
oxipng at level 2 (``pyoxipng``; ``+ox`` in the tables; not after ``--optimize`` modes).
colorquant and pngquant run as commands, one call per file, timed as wall time of the
process; colorquant is served by its
warm worker (``--no-worker``: ``COLORQUANT_WORKER=0``, every call pays the start-up).

Quality against the input: PSNR (0–255); blurred PSNR (both images filtered with a Gaussian
of σ = 1 px, kernel cut at 4σ, edges reflected: what dithering is for); mean CIEDE2000 per
pixel. For an image with transparency every measure is taken on premultiplied RGBA
(R·a, G·a, B·a, a on the 0–255 scale: the error after compositing on any background; ΔE2000
on the colors composited over black).

BD-rate (Bjøntegaard delta rate): per image, a cubic fit of log(bytes) against quality over
the k of each of the two curves, integrated over the quality range both cover; the mean
difference as a rate change (negative: fewer bytes for the same quality). Reported per
colorquant variant against each peer, per group of images (opaque, transparent): mean,
median and wins (images with a negative BD-rate), on PSNR and on blurred PSNR.

``--speed IMAGE``: wall time of whole calls on one image, side by side in interleaved rounds
(medians): pngquant --nofs, colorquant with each mode, and with ``--base DIR`` the colorquant
package found in DIR (an older checkout, run with ``PYTHONPATH=DIR``) in its default mode;
printed as ratios to pngquant and to the base.

Needs pngquant on PATH and ``pip install pyoxipng`` (the benchmark may; the tests do not).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
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

from colorquant import metrics  # noqa: E402
from colorquant.colorspace import srgb_to_cielab  # noqa: E402

CORPUS = Path(os.environ.get("COLORQUANT_CORPUS", ROOT.parent / "shared" / "corpus"))
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus")
DEFAULT_INPUTS = (CORPUS / "photos", ROOT / "sample_images", CORPUS / "graphics")
KS = (8, 16, 32, 64, 128, 256)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".tif", ".tiff", ".bmp"}
PNGQUANT = {"pngquant-nofs": ["--nofs"], "pngquant": []}
OXIPNG_LEVEL = 2
METRICS = {"psnr": "PSNR", "blur": "blurred PSNR"}


# --- quality ------------------------------------------------------------------------------


def _kernel(sigma: float = 1.0) -> np.ndarray:
    radius = int(4 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def blur(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float image, edges reflected."""
    kernel = _kernel(sigma)
    r = len(kernel) // 2
    out = np.asarray(image, dtype=np.float64)
    for axis in (0, 1):
        if out.shape[axis] <= r:  # too small to reflect: leave that axis
            continue
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")
        acc = np.zeros_like(out)
        for i, w in enumerate(kernel):
            sl = [slice(None)] * 3
            sl[axis] = slice(i, i + out.shape[axis])
            acc += w * padded[tuple(sl)]
        out = acc
    return out


def viewed(rgba: np.ndarray) -> np.ndarray:
    """What is measured: RGB as is, RGBA premultiplied (R·a, G·a, B·a, a), float64."""
    values = rgba.astype(np.float64)
    if values.shape[2] == 4:
        values[..., :3] *= values[..., 3:] / 255.0
    return values


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return metrics.psnr(float(np.mean((a - b) ** 2)))


def _delta_e(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIEDE2000 over pixels, computed once per distinct (input, output) color pair."""
    a8 = np.rint(a[..., :3]).astype(np.uint64).reshape(-1, 3)
    b8 = np.rint(b[..., :3]).astype(np.uint64).reshape(-1, 3)
    keys = (a8[:, 0] << 40) | (a8[:, 1] << 32) | (a8[:, 2] << 24) | (b8[:, 0] << 16) \
        | (b8[:, 1] << 8) | b8[:, 2]
    pairs, counts = np.unique(keys, return_counts=True)
    first = np.stack([(pairs >> s) & 255 for s in (40, 32, 24)], axis=1).astype(np.uint8)
    second = np.stack([(pairs >> s) & 255 for s in (16, 8, 0)], axis=1).astype(np.uint8)
    diff = metrics.delta_e2000(srgb_to_cielab(first), srgb_to_cielab(second))
    return float(np.dot(diff, counts) / counts.sum())


class Reference:
    """An input's pixels as measured, and its blurred version (computed once)."""

    def __init__(self, rgba: np.ndarray) -> None:
        self.channels = rgba.shape[2]
        self.values = viewed(rgba)
        self.blurred = blur(self.values)

    def measure(self, png: bytes) -> dict[str, float]:
        from io import BytesIO

        with Image.open(BytesIO(png)) as im:
            out = viewed(np.asarray(im.convert("RGBA" if self.channels == 4 else "RGB")))
        return {"psnr": _psnr(self.values, out), "blur": _psnr(self.blurred, blur(out)),
                "de": _delta_e(self.values, out)}


# --- the runs -----------------------------------------------------------------------------


def images(inputs: list[Path]) -> list[Path]:
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(item)
    return found


def load_rgba(path: Path) -> np.ndarray:
    """The input as RGB, or RGBA when any pixel is not opaque."""
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"))
    return rgba if (rgba[..., 3] < 255).any() else np.ascontiguousarray(rgba[..., :3])


def colorquant_command() -> list[str]:
    exe = Path(sys.executable).with_name("colorquant")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "colorquant"]


def run_timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr}")
    return seconds


def warm_up(env: dict[str, str], png: Path, tmp: Path) -> None:
    """Make the warm worker serve the calls that follow (start it, wait until it answers)."""
    trace = tmp / "trace"
    env = {**env, "COLORQUANT_WORKER_TRACE": str(trace)}
    for _ in range(60):
        trace.unlink(missing_ok=True)
        run_timed([*colorquant_command(), str(png), "-k", "8", "-o", str(tmp / "warm.png")], env)
        if trace.read_text().startswith("worker"):
            return
        time.sleep(0.5)
    raise RuntimeError("the warm worker never answered")


def oxipng(data: bytes) -> tuple[bytes, float]:
    import oxipng as ox

    start = time.perf_counter()
    out = ox.optimize_from_memory(data, level=OXIPNG_LEVEL)
    return out, time.perf_counter() - start


def optimizes(args: list[str]) -> bool:
    """Whether colorquant arguments ask for ``--optimize`` (oxipng after it is not run)."""
    return any(a in ("-O", "--optimize") or a.startswith(("-O", "--optimize=")) for a in args)


def measure(paths: list[Path], ks: list[int], modes: dict[str, list[str]], *, worker: bool,
            with_oxipng: bool, peers: tuple[str, ...] = tuple(PNGQUANT), log=print,
            ) -> list[dict]:
    """One record per (image, variant, k): bytes, quality, seconds."""
    if shutil.which("pngquant") is None:
        raise SystemExit("pngquant is not on PATH (apt-get install pngquant)")
    env = dict(os.environ)
    if not worker:
        env["COLORQUANT_WORKER"] = "0"
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rd_bench-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = {}
        for path in paths:  # every tool reads the same lossless PNG of the same pixels
            rgba = load_rgba(path)
            png = tmp / f"{path.stem}.png"
            Image.fromarray(rgba).save(png, compress_level=1)
            inputs[path] = (png, rgba)
        if worker and paths:
            warm_up(env, inputs[paths[0]][0], tmp)
        for path in paths:
            png, rgba = inputs[path]
            ref = Reference(rgba)
            group = "transparent" if rgba.shape[2] == 4 else "opaque"
            out = tmp / "out.png"
            for k in ks:
                runs: list[tuple[str, list[str]]] = [
                    (name, [*colorquant_command(), str(png), "-k", str(k), "-o", str(out),
                            *args]) for name, args in modes.items()]
                runs += [(name, ["pngquant", str(k), "--force", "--output", str(out), *args,
                                 str(png)]) for name, args in PNGQUANT.items()
                         if name in peers]
                for name, cmd in runs:
                    out.unlink(missing_ok=True)
                    seconds = run_timed(cmd, env)
                    data = out.read_bytes()
                    quality = ref.measure(data)
                    base = {"image": path.name, "group": group, "k": k,
                            "pixels": int(rgba.shape[0] * rgba.shape[1]),
                            "tool": "colorquant" if name in modes else "pngquant"}
                    records.append({**base, "variant": name, "bytes": len(data),
                                    "seconds": seconds, **quality})
                    if with_oxipng and not optimizes(modes.get(name, [])):
                        smaller, extra = oxipng(data)
                        records.append({**base, "variant": name + "+ox", "bytes": len(smaller),
                                        "seconds": seconds + extra, **quality})
            log(f"done {path.name}", file=sys.stderr, flush=True)
    return records


# --- BD-rate ------------------------------------------------------------------------------


def bd_rate(rates_a: list[float], quality_a: list[float], rates_b: list[float],
            quality_b: list[float]) -> float | None:
    """Bjøntegaard delta rate of curve a against curve b, as a fraction (−0.1: 10% fewer
    bytes than b at the same quality); None when the curves share no quality range.

    Each curve: log(bytes) fitted by a polynomial of quality (cubic, or lower with fewer
    distinct points), integrated over the overlap of both curves' quality ranges.
    """
    def curve(rates: list[float], quality: list[float]):
        pts = [(q, np.log(r)) for q, r in zip(quality, rates, strict=True) if np.isfinite(q)]
        qs = np.array([p[0] for p in pts])
        if len(np.unique(qs)) < 2:
            return None
        degree = min(3, len(np.unique(qs)) - 1)
        return qs, np.polyfit(qs, [p[1] for p in pts], degree)

    a, b = curve(rates_a, quality_a), curve(rates_b, quality_b)
    if a is None or b is None:
        return None
    low = max(a[0].min(), b[0].min())
    high = min(a[0].max(), b[0].max())
    if high <= low:
        return None
    ia, ib = np.polyint(a[1]), np.polyint(b[1])
    area_a = np.polyval(ia, high) - np.polyval(ia, low)
    area_b = np.polyval(ib, high) - np.polyval(ib, low)
    return float(np.exp((area_a - area_b) / (high - low)) - 1.0)


def _series(records: list[dict], image: str, variant: str, metric: str):
    rows = sorted((r for r in records if r["image"] == image and r["variant"] == variant),
                  key=lambda r: r["k"])
    return [r["bytes"] for r in rows], [r[metric] for r in rows]


def bd_table(records: list[dict], metric: str, group: str) -> list[tuple]:
    """(variant, peer, mean, median, wins, count, per-image dict) for every pair."""
    rows = [r for r in records if r["group"] == group]
    image_names = sorted({r["image"] for r in rows})
    ours = sorted({r["variant"] for r in rows if r["tool"] == "colorquant"}, key=_order)
    peers = sorted({r["variant"] for r in rows if r["tool"] == "pngquant"}, key=_order)
    table = []
    for variant in ours:
        for peer in peers:
            per_image = {}
            for image in image_names:
                value = bd_rate(*_series(rows, image, variant, metric),
                                *_series(rows, image, peer, metric))
                if value is not None:
                    per_image[image] = value
            values = list(per_image.values())
            if values:
                table.append((variant, peer, float(np.mean(values)), statistics.median(values),
                              sum(v < 0 for v in values), len(values), per_image))
    return table


def _order(name: str) -> tuple:
    return (name.endswith("+ox"), name.removesuffix("+ox"))


# --- report -------------------------------------------------------------------------------


def report(records: list[dict], *, per_image: bool = False) -> None:
    groups = [g for g in ("opaque", "transparent") if any(r["group"] == g for r in records)]
    for group in groups:
        rows = [r for r in records if r["group"] == group]
        n_images = len({r["image"] for r in rows})
        print(f"\n== {group} images ({n_images}) ==")
        print("\nmean per k: bytes, PSNR, blurred PSNR, ΔE2000, seconds")
        variants = sorted({r["variant"] for r in rows},
                          key=lambda v: (v.startswith("pngquant"), _order(v)))
        ks = sorted({r["k"] for r in rows})
        print(f"{'variant':<22}{'k':>4}{'bytes':>10}{'PSNR':>8}{'blur':>8}{'ΔE':>7}{'s':>8}"
              f"{'bytes/pq-nofs':>15}")
        for variant in variants:
            for k in ks:
                sel = [r for r in rows if r["variant"] == variant and r["k"] == k]
                peer = [r for r in rows if r["variant"] == "pngquant-nofs" and r["k"] == k]
                mean = {m: float(np.mean([r[m] for r in sel if np.isfinite(r[m])] or [np.inf]))
                        for m in ("bytes", "psnr", "blur", "de", "seconds")}
                ratio = mean["bytes"] / np.mean([r["bytes"] for r in peer]) if peer else np.nan
                print(f"{variant:<22}{k:>4}{mean['bytes']:>10.0f}{mean['psnr']:>8.2f}"
                      f"{mean['blur']:>8.2f}{mean['de']:>7.2f}{mean['seconds']:>8.3f}"
                      f"{ratio:>15.3f}")
        for metric, title in METRICS.items():
            print(f"\nBD-rate on {title} ({group}): mean / median / wins")
            table = bd_table(records, metric, group)
            peers = sorted({t[1] for t in table}, key=_order)
            print(f"{'':<22}" + "".join(f"{p:>30}" for p in peers))
            for variant in sorted({t[0] for t in table}, key=_order):
                cells = []
                for peer in peers:
                    hit = [t for t in table if t[0] == variant and t[1] == peer]
                    if hit:
                        _, _, mean, median, wins, count, _ = hit[0]
                        cells.append(f"{mean:+.1%} / {median:+.1%} / {wins}/{count}")
                    else:
                        cells.append("-")
                print(f"{variant:<22}" + "".join(f"{c:>30}" for c in cells))
            if per_image:
                for variant, peer, *_, values in table:
                    text = ", ".join(f"{name} {v:+.1%}" for name, v in values.items())
                    print(f"  {variant} vs {peer}: {text}")


def plot(records: list[dict], path: Path) -> None:
    """Mean bytes against mean quality per k: one panel per group and measure."""
    from matplotlib.figure import Figure

    groups = [g for g in ("opaque", "transparent") if any(r["group"] == g for r in records)]
    fig = Figure(figsize=(12, 5 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for row, group in enumerate(groups):
        rows = [r for r in records if r["group"] == group]
        n_images = len({r["image"] for r in rows})
        variants = sorted({r["variant"] for r in rows},
                          key=lambda v: (v.startswith("pngquant"), _order(v)))
        for col, (metric, title) in enumerate(METRICS.items()):
            ax = axes[row][col]
            for variant in variants:
                ks = sorted({r["k"] for r in rows if r["variant"] == variant})
                xs, ys = [], []
                for k in ks:
                    sel = [r for r in rows if r["variant"] == variant and r["k"] == k]
                    qs = [r[metric] for r in sel if np.isfinite(r[metric])]
                    xs.append(np.mean([r["bytes"] for r in sel]) / 1024)
                    ys.append(np.mean(qs) if qs else np.nan)
                style = "--" if variant.startswith("pngquant") else "-"
                ax.plot(xs, ys, style, marker="o" if "+ox" not in variant else "s",
                        markersize=3, label=variant)
            ax.set_xscale("log")
            ax.set_xlabel("mean file size (KiB, log scale)")
            ax.set_ylabel(f"mean {title} (dB)")
            ax.set_title(f"{group} images ({n_images}), k = {', '.join(map(str, ks))}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)


def speed(image: Path, ks: list[int], modes: dict[str, list[str]], *, rounds: int,
          worker: bool, base: Path | None) -> None:
    """Median wall time of whole calls, interleaved, with their ratios to pngquant."""
    env = dict(os.environ)
    if not worker:
        env["COLORQUANT_WORKER"] = "0"
    envs = {name: env for name in modes}
    if base is not None:
        modes = {**modes, "base": []}
        envs["base"] = {**env, "PYTHONPATH": str(base)}
    times: dict[tuple[str, int], list[float]] = {}
    sizes: dict[tuple[str, int], int] = {}
    with tempfile.TemporaryDirectory(prefix="rd_bench-") as tmp_name:
        tmp = Path(tmp_name)
        out = tmp / "out.png"
        if worker:
            tiny = tmp / "tiny.png"
            Image.new("RGB", (16, 16), (200, 10, 10)).save(tiny)
            for each in {id(e): e for e in envs.values()}.values():
                warm_up(each, tiny, tmp)
        for round_ in range(rounds):
            for k in ks:
                runs = [(name, [*colorquant_command(), str(image), "-k", str(k), "-o", str(out),
                                *args]) for name, args in modes.items()]
                runs.append(("pngquant-nofs", ["pngquant", str(k), "--nofs", "--force",
                                               "--output", str(out), str(image)]))
                for name, cmd in runs:
                    out.unlink(missing_ok=True)
                    seconds = run_timed(cmd, envs.get(name, env))
                    times.setdefault((name, k), []).append(seconds)
                    sizes[name, k] = out.stat().st_size
            print(f"round {round_ + 1} of {rounds} done", file=sys.stderr, flush=True)
    with Image.open(image) as im:
        size = f"{im.width}x{im.height}"
    print(f"\n{image.name} ({size}), {rounds} rounds, colorquant "
          f"{'warm worker' if worker else 'COLORQUANT_WORKER=0'}: median seconds")
    print(f"{'variant':<16}{'k':>4}{'seconds':>9}{'× pngquant':>12}{'× base':>9}{'bytes':>11}")
    for (name, k), values in sorted(times.items(), key=lambda item: (item[0][1], item[0][0])):
        med = statistics.median(values)
        ratio = med / statistics.median(times["pngquant-nofs", k])
        to_base = (f"{med / statistics.median(times['base', k]):>9.2f}"
                   if ("base", k) in times else f"{'-':>9}")
        print(f"{name:<16}{k:>4}{med:>9.2f}{ratio:>12.2f}{to_base}{sizes[name, k]:>11}")


def parse_modes(values: list[str]) -> dict[str, list[str]]:
    modes: dict[str, list[str]] = {}
    for value in values:
        name, sep, args = value.partition("=")
        if not sep or not name or name.startswith("pngquant"):
            raise SystemExit(f"--mode wants NAME=ARGS (NAME not pngquant…), got {value!r}")
        modes[name] = shlex.split(args)
    return modes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", type=Path,
                        help="images or folders (default: the corpus photos and graphics, "
                             "and sample_images)")
    parser.add_argument("--ks", default=",".join(map(str, KS)),
                        help="palette sizes, comma-separated")
    parser.add_argument("--mode", action="append", default=[], metavar="NAME=ARGS",
                        help="a colorquant variant: NAME and its extra arguments "
                             "(default: default= and fs='--dither fs')")
    parser.add_argument("--no-worker", action="store_true",
                        help="COLORQUANT_WORKER=0: every call starts Python and imports")
    parser.add_argument("--peers", default=",".join(PNGQUANT),
                        help="pngquant variants to run, comma-separated (default: all)")
    parser.add_argument("--no-oxipng", action="store_true", help="no +ox variants")
    parser.add_argument("--per-image", action="store_true", help="print every BD-rate")
    parser.add_argument("--plot", type=Path, help="write the R–D curves to this PNG")
    parser.add_argument("--save", type=Path, help="write the raw records (JSON)")
    parser.add_argument("--speed", type=Path, metavar="IMAGE",
                        help="time whole calls on IMAGE instead (see above)")
    parser.add_argument("--rounds", type=int, default=3, help="--speed: interleaved rounds")
    parser.add_argument("--base", type=Path, metavar="DIR",
                        help="--speed: also time the colorquant package in DIR")
    parser.add_argument("--load", type=Path, action="append", default=[],
                        help="read records saved before instead of running (repeatable: "
                             "records of several runs are merged; a later variant wins)")
    args = parser.parse_args(argv)
    if args.speed:
        speed(args.speed, [int(k) for k in args.ks.split(",")],
              parse_modes(args.mode) or {"default": []}, rounds=args.rounds,
              worker=not args.no_worker, base=args.base)
        return
    if args.load:
        merged: dict[tuple, dict] = {}
        for path in args.load:
            for r in json.loads(path.read_text()):
                merged[r["image"], r["variant"], r["k"]] = r
        records = list(merged.values())
    else:
        modes = parse_modes(args.mode) or {"default": [], "fs": ["--dither", "fs"]}
        ks = [int(k) for k in args.ks.split(",")]
        paths = images(list(args.inputs) or [p for p in DEFAULT_INPUTS if p.exists()])
        print(f"{len(paths)} images, k = {ks}, colorquant "
              f"{'in-process per call (COLORQUANT_WORKER=0)' if args.no_worker else 'warm worker'}"
              f", modes {modes}", file=sys.stderr)
        records = measure(paths, ks, modes, worker=not args.no_worker,
                          with_oxipng=not args.no_oxipng,
                           peers=tuple(args.peers.split(",")))
    if args.save:
        args.save.write_text(json.dumps(records, indent=0))
    report(records, per_image=args.per_image)
    if args.plot:
        plot(records, args.plot)


if __name__ == "__main__":
    main()
