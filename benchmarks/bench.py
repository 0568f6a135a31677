"""colorquant benchmark: wall time, peak memory, PSNR and size against other quantizers.

Run from the repository root (after ``pip install -e .``)::

    python benchmarks/bench.py                 # 24 MP and 96 MP photos, k=16 and 256, 3 rounds
    python benchmarks/bench.py --sizes 24MP -k 16 --kodak 4   # + four Kodak photos at 24 MP
    python benchmarks/bench.py --small         # start-up floor on small images and --help
    python benchmarks/bench.py --first-fit     # a fresh interpreter's first fit, the next ones
    python benchmarks/bench.py --quality       # PSNR vs pngquant and an exact Lloyd fit
    python benchmarks/bench.py --sizes 24MP --kodak 0 --warm --tools colorquant pngquant
                                               # in-process and warm, peak RSS, stages

The large photos are made once into ``--folder`` (default ``/tmp/colorquant-bench``) by
upscaling ``sample_images/china.jpg`` (and, with ``--kodak N``, the first N Kodak photos of the
corpus, real camera photos, to 24 MP) and adding mild noise; nothing large is committed.
Tools run one after another, alternating round by round, so that every ratio compares runs
made under the same machine load. pngquant and ImageMagick are used when installed
(``apt-get install pngquant imagemagick``); the table says when they are missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
CORPUS = Path(os.environ.get("COLORQUANT_CORPUS", ROOT.parent / "shared" / "corpus"))
PY = sys.executable
#: The installed command (``python -m colorquant`` never uses a warm worker).
COMMAND = str(Path(PY).parent / "colorquant")
Image.MAX_IMAGE_PIXELS = None  # the benchmark reads its own 96 MP images
STAGES = ("read", "histogram", "fit", "map", "metrics", "write")

TEXTBOOK = """
import sys
import numpy as np
from PIL import Image
from sklearn.cluster import MiniBatchKMeans
Image.MAX_IMAGE_PIXELS = None
src, dst, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
image = Image.open(src).convert("RGB")
pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255.0
model = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3).fit(pixels)
labels = model.predict(pixels).astype(np.uint8).reshape(image.size[1], image.size[0])
out = Image.fromarray(labels, "P")
palette = np.clip(np.rint(model.cluster_centers_ * 255), 0, 255).astype(np.uint8)
out.putpalette(palette.tobytes())
out.save(dst)
"""


@dataclass
class Runs:
    """The measurements of one tool on one case."""

    times: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    failed: str = ""
    psnr: float = float("nan")
    size: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


#: Runs one command and reports its own wall time and peak RSS (RUSAGE_CHILDREN of a process
#: with a single child is that child's peak), so no tool's numbers include another's.
WRAPPER = """
import resource, subprocess, sys, time
start = time.perf_counter()
try:
    code = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL,
                          timeout=float(sys.argv[1])).returncode
except subprocess.TimeoutExpired:
    code = "timeout"
wall = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(f"\\nBENCH {wall} {rss} {code}\\n")
"""


def run(cmd: list[str], cap: float) -> tuple[float, float, str, str]:
    """Wall seconds, peak RSS (MB), stderr and a failure note ("" if none) of one command."""
    proc = subprocess.run([PY, "-c", WRAPPER, str(cap), *cmd], capture_output=True, text=True,
                          check=False)
    err, _, last = proc.stderr.rpartition("\nBENCH ")
    wall, rss, code = last.split()
    if code == "timeout":
        return cap, float("nan"), err, f"> {cap:.0f} s"
    reason = err.strip().splitlines()[-1][:60] if err.strip() else ""
    note = "" if code == "0" else f"exit {code} {reason}".strip()
    return float(wall), int(rss) / 1024, err, note


def imagemagick() -> list[str] | None:
    """The real ImageMagick command (``magick`` or an ImageMagick ``convert``), if any."""
    for name in ("magick", "convert-im6.q16", "convert"):
        path = shutil.which(name)
        if path is None:
            continue
        probe = subprocess.run([path, "-version"], capture_output=True, text=True, check=False)
        if probe.stdout.startswith("Version: ImageMagick"):  # not a stand-in that names it
            return [path]
    return None


def psnr(reference: np.ndarray, path: Path) -> float:
    """PSNR (dB, RGB) of a decoded output against the reference pixels, in bands of rows."""
    with Image.open(path) as out:
        out = out.convert("RGB")
        total = 0.0
        for top in range(0, reference.shape[0], 512):
            band = np.asarray(out.crop((0, top, out.size[0], min(out.size[1], top + 512))))
            diff = band.astype(np.int32) - reference[top : top + 512]
            total += float(np.einsum("ijk,ijk->", diff, diff, dtype=np.int64))
    mse = total / reference.size
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def parse_stages(stderr: str) -> dict[str, float]:
    for line in stderr.splitlines():
        if line.startswith("time: "):
            parts = (item.split() for item in line[6:].split(", "))
            return {name: float(sec.rstrip("s")) for name, sec in parts}
    return {}


def tools(k: int, jpg: Path, png: Path, out: Path, cap: float,
          runtime: Path | None = None) -> dict[str, list[str]]:
    """The commands of one case. colorquant runs in-process (``COLORQUANT_WORKER=0``: its
    peak RSS is the whole call's) and, with ``runtime`` (a warm worker's folder), through
    the warm worker (the peak RSS is then the client's only). Both are timed with ``-q``, as
    a job runs them: ``-v`` (the stages, see :data:`STAGE_RUNS`) also measures the mean
    ΔE2000 when it prints it, a cost outside the stages that a job does not pay."""
    cq = [PY, "-m", "colorquant", str(jpg), "-k", str(k), "-o", str(out / "cq.png"), "-q"]
    found = {"colorquant": ["env", "COLORQUANT_WORKER=0", COMMAND, *cq[3:]]}
    if runtime is not None:
        found["colorquant, warm worker"] = ["env", f"XDG_RUNTIME_DIR={runtime}", COMMAND,
                                            *cq[3:-2], str(out / "cqw.png"), "-q"]
    if shutil.which("pngquant"):
        found["pngquant --nofs"] = ["pngquant", "--nofs", "--force", "--output",
                                    str(out / "pq.png"), str(k), str(png)]
    magick = imagemagick()
    if magick:
        found["ImageMagick"] = [*magick, str(jpg), "+dither", "-colors", str(k),
                                str(out / "im.png")]
    found["textbook MiniBatchKMeans"] = [PY, "-c", TEXTBOOK, str(jpg), str(out / "tb.png"),
                                         str(k)]
    return found


#: The colorquant runs that report their stages: the same command with ``-v`` for ``-q``,
#: run once a round beside the timed run (its time is not counted).
STAGE_RUNS = ("colorquant", "colorquant, warm worker")

OUTPUTS = {"colorquant": "cq.png", "colorquant, warm worker": "cqw.png",
           "pngquant --nofs": "pq.png", "ImageMagick": "im.png",
           "textbook MiniBatchKMeans": "tb.png"}


def bench_large(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    photos = [(size, *images.make(folder, SAMPLES / "china.jpg", [size])[size])
              for size in args.sizes]
    # Real camera photos beside the upscaled sample: the corpus's Kodak photos, upscaled to
    # 24 MP with the same mild noise (--kodak 0 leaves them out).
    for src in sorted((CORPUS / "photos").glob("kodak-*.png"))[: args.kodak]:
        photos.append((f"{src.stem} 24MP", *images.make(folder, src, ["24MP"], src.stem)["24MP"]))
    missing = [name for name in ("pngquant",) if not shutil.which(name)]
    if imagemagick() is None:
        missing.append("ImageMagick")
    if missing:
        print(f"not installed, left out: {', '.join(missing)} "
              "(apt-get install pngquant imagemagick)")
    runtime = None
    if args.warm:
        runtime = folder / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        subprocess.run(["env", f"XDG_RUNTIME_DIR={runtime}", COMMAND, "--worker-start"],
                       check=True)
    try:
        for size, jpg, png in photos:
            bench_photo(args, folder, size, jpg, png, runtime)
    finally:
        if runtime is not None:
            subprocess.run(["env", f"XDG_RUNTIME_DIR={runtime}", COMMAND, "--worker-stop"],
                           check=False)


def bench_photo(args: argparse.Namespace, folder: Path, size: str, jpg: Path, png: Path,
                runtime: Path | None) -> None:
    """Every tool on one photo at every k, alternating round by round."""
    with Image.open(png) as im:
        reference = np.asarray(im.convert("RGB"))
    for k in args.k:
        cases = tools(k, jpg, png, folder, args.cap, runtime)
        if args.tools:
            cases = {name: cmd for name, cmd in cases.items()
                     if any(name.startswith(t) for t in args.tools)}
        results = {name: Runs() for name in cases}
        for _ in range(args.rounds):
            for name, cmd in cases.items():
                runs = results[name]
                if runs.failed:
                    continue  # a tool that hit the cap is not run again
                wall, rss, err, note = run(cmd, args.cap)
                if note:
                    runs.failed = note
                    continue
                runs.times.append(wall)
                runs.rss_mb.append(rss)
                if name in STAGE_RUNS:
                    _, _, err, _ = run([*cmd[:-1], "-v"], args.cap)
                    runs.stages.append(parse_stages(err))
        for name, runs in results.items():
            output = folder / OUTPUTS[name]
            if runs.times and output.exists():
                runs.psnr = psnr(reference, output)
                runs.size = output.stat().st_size
                output.unlink()
        report(f"{size} ({reference.shape[1]}x{reference.shape[0]}), k={k}", results)
        del cases


def report(title: str, results: dict[str, Runs]) -> None:
    base = results.get("pngquant --nofs")
    base_time = base.median if base and base.times else float("nan")
    print(f"\n### {title}\n")
    print("| tool | median wall s | × pngquant --nofs | peak RSS MB | PSNR dB | output KB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        if runs.failed and not runs.times:
            print(f"| {name} | {runs.failed} | | | | |")
            continue
        print(f"| {name} | {runs.median:.2f} | {runs.median / base_time:.2f} | "
              f"{max(runs.rss_mb):.0f} | {runs.psnr:.2f} | {runs.size // 1000} |")
    for name in ("colorquant", "colorquant, warm worker"):
        stages = results[name].stages if name in results else []
        if stages and stages[0]:
            medians = {s: statistics.median(st.get(s, 0.0) for st in stages) for s in STAGES}
            total = results[name].median
            rest = total - sum(medians.values())
            cells = ", ".join(f"{s} {v:.2f}" for s, v in medians.items())
            print(f"\n{name} stages (median s, `-v` runs): {cells}; the timed `-q` call "
                  f"outside them (start-up, imports, exit) {rest:.2f}")


def bench_small(args: argparse.Namespace) -> None:
    """Small images against the bare import floor, and --help / --version."""
    import compileall

    import colorquant

    # Measure what an installed colorquant starts like: `pip install` compiles its bytecode,
    # an editable install under PYTHONDONTWRITEBYTECODE=1 would recompile it on every run.
    compileall.compile_dir(Path(colorquant.__file__).parent, quiet=1)
    out = Path(args.folder)
    out.mkdir(parents=True, exist_ok=True)
    floor = [PY, "-c", "import numpy, PIL.Image, sklearn.cluster"]
    cases = {"import floor (numpy, PIL.Image, sklearn.cluster)": floor,
             "colorquant --help": [PY, "-m", "colorquant", "--help"],
             "colorquant --version": [PY, "-m", "colorquant", "--version"]}
    smalls = [SAMPLES / "china.jpg", SAMPLES / "flower.jpg"]
    smalls += sorted((CORPUS / "photos").glob("*.png"))[:2]
    for src in smalls:
        cases[f"colorquant {src.name} -k 16"] = [PY, "-m", "colorquant", str(src), "-k", "16",
                                                 "-o", str(out / "small.png")]
    times: dict[str, list[float]] = {name: [] for name in cases}
    rounds = max(args.rounds, 9)  # start-up differences are tens of ms: more rounds
    for _ in range(rounds):
        for name, cmd in cases.items():
            wall, _, _, note = run(cmd, args.cap)
            if note:
                raise SystemExit(f"{name}: {note}")
            times[name].append(wall)
    base = statistics.median(times[next(iter(cases))])
    print(f"\n### Small images and start-up ({rounds} rounds, bytecode compiled)\n")
    print("| command | median wall s | × import floor |")
    print("|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / base:.2f} |")


FIRST_FIT = """
import sys, time
import colorquant
from PIL import Image
image = Image.open(sys.argv[1]).convert("RGB")
image.load()
start = time.perf_counter()
if sys.argv[3] == "preimport":
    import sklearn.cluster
imported = time.perf_counter() - start
fits = [colorquant.quantize_image(image, int(sys.argv[2])).timings["fit"] for _ in range(4)]
print(imported, *fits)
"""


def bench_first_fit(args: argparse.Namespace) -> None:
    """A library user's first fit in a fresh interpreter against the fits after it, with
    scikit-learn imported by the first fit and imported before it (its import apart)."""
    photo = SAMPLES / "china.jpg"
    rows: dict[str, list[list[float]]] = {"imported by the fit": [], "imported before": []}
    for _ in range(max(args.rounds, 5)):
        for name, how in (("imported by the fit", "lazy"), ("imported before", "preimport")):
            out = subprocess.run([PY, "-c", FIRST_FIT, str(photo), "16", how],
                                 capture_output=True, text=True, check=True).stdout.split()
            rows[name].append([float(v) for v in out])
    print(f"\n### First fit in a fresh interpreter ({photo.name}, k=16, medians of "
          f"{len(rows['imported before'])})\n")
    print("| scikit-learn | its import s | first fit s | later fits s | first − later s |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in rows.items():
        imported = statistics.median(r[0] for r in runs)
        first = statistics.median(r[1] for r in runs)
        later = statistics.median(statistics.median(r[2:]) for r in runs)
        print(f"| {name} | {imported:.3f} | {first:.3f} | {later:.3f} | {first - later:.3f} |")


def lloyd_reference(colors: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """An exact weighted Lloyd fit on every distinct color (k-means++, 3 starts), uint8."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        model = KMeans(n_clusters=k, n_init=3, random_state=0, algorithm="lloyd",
                       max_iter=300).fit(colors.astype(np.float64), sample_weight=counts)
    return np.clip(np.rint(model.cluster_centers_), 0, 255).astype(np.uint8)


def mapped_psnr(colors: np.ndarray, counts: np.ndarray, centers: np.ndarray) -> float:
    """PSNR when every distinct color takes its exactly nearest center."""
    c = centers.astype(np.int64)
    best = np.empty(len(colors), dtype=np.int64)
    for start in range(0, len(colors), 8192):
        block = colors[start : start + 8192].astype(np.int64)
        best[start : start + 8192] = ((block[:, None, :] - c[None]) ** 2).sum(2).min(1)
    mse = float((best * counts).sum()) / (counts.sum() * 3)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def bench_quality(args: argparse.Namespace) -> None:
    """PSNR of colorquant, pngquant --nofs and an exact weighted Lloyd fit, per k."""
    import colorquant
    from colorquant.options import FitMethod

    out = Path(args.folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = [SAMPLES / "china.jpg", SAMPLES / "flower.jpg"]
    paths += sorted((CORPUS / "photos").glob("*.png"))
    has_pq = shutil.which("pngquant") is not None
    print("\n### Quality (PSNR dB, mean over images)\n")
    print(f"images: {', '.join(p.name for p in paths)}")
    print("| k | colorquant | colorquant --fit lloyd | pngquant --nofs | exact weighted Lloyd "
          "| colorquant − Lloyd (worst image) | --fit lloyd − Lloyd (worst image) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows: list[str] = []
    for k in args.quality_k:
        cq, cl, pq, ll, gaps, lgaps = [], [], [], [], [], []
        for path in paths:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            array = np.asarray(rgb)
            flat = array.reshape(-1, 3)
            colors, counts = np.unique(flat, axis=0, return_counts=True)
            result = colorquant.quantize_image(rgb, k)
            cq.append(result.psnr)
            cl.append(colorquant.quantize_image(rgb, k, fit_method=FitMethod.LLOYD).psnr)
            ll.append(mapped_psnr(colors, counts, lloyd_reference(colors, counts, k)))
            gaps.append(cq[-1] - ll[-1])
            lgaps.append(cl[-1] - ll[-1])
            if has_pq:
                src = out / "q-in.png"
                rgb.save(src, compress_level=1)
                subprocess.run(["pngquant", "--nofs", "--force", "--output", str(out / "q.png"),
                                str(k), str(src)], check=True)
                pq.append(psnr(array, out / "q.png"))
            if args.per_photo:
                rows.append(f"| {k} | {path.name} | {cq[-1]:.3f} | "
                            f"{pq[-1] if has_pq else float('nan'):.3f} |")
        pq_cell = f"{np.mean(pq):.2f}" if pq else "not installed"
        print(f"| {k} | {np.mean(cq):.2f} | {np.mean(cl):.2f} | {pq_cell} | {np.mean(ll):.2f} | "
              f"{np.mean(gaps):+.2f} ({min(gaps):+.2f}) | "
              f"{np.mean(lgaps):+.2f} ({min(lgaps):+.2f}) |")
    if rows:
        print("\n| k | photo | colorquant PSNR dB | pngquant --nofs PSNR dB |")
        print("|---:|---|---:|---:|")
        print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["24MP", "96MP"],
                        choices=list(images.SIZES))
    parser.add_argument("-k", nargs="+", type=int, default=[16, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kodak", type=int, default=4,
                        help="how many corpus Kodak photos to add, upscaled to 24 MP")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per run, at most")
    parser.add_argument("--folder", default="/tmp/colorquant-bench")
    parser.add_argument("--small", action="store_true", help="only the small-image table")
    parser.add_argument("--quality", action="store_true", help="only the quality table")
    parser.add_argument("--quality-k", nargs="+", type=int, default=[8, 16, 64, 256])
    parser.add_argument("--warm", action="store_true",
                        help="also colorquant through a warm worker (started in --folder)")
    parser.add_argument("--tools", nargs="+", default=[],
                        help="only the tools whose names start so (e.g. colorquant pngquant)")
    parser.add_argument("--first-fit", action="store_true",
                        help="only a fresh interpreter's first fit against the next ones")
    parser.add_argument("--per-photo", action="store_true",
                        help="with --quality: each photo's PSNR beside pngquant's")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"numpy {np.__version__}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')}")
    if args.first_fit:
        bench_first_fit(args)
    elif args.quality:
        bench_quality(args)
    elif args.small:
        bench_small(args)
    else:
        bench_large(args)


if __name__ == "__main__":
    main()
