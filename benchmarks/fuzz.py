"""Coverage-guided fuzzing of every parser that untrusted bytes reach (atheris + libFuzzer).

    pip install -e '.[fuzz]'
    COLORQUANT_CORPUS=../shared/corpus python benchmarks/fuzz.py --target image --minutes 20
    python benchmarks/fuzz.py --target all --minutes 10      # each target in turn, 10 min each

Targets:

``image``
    The read path of ``files.quantize_file`` on the input's bytes (``imagefile.open_image`` →
    ``frames.read`` → the frames an output holds), then the histogram of every frame, with a
    small pixel limit; one input in four goes on through the fit, the mapping and the
    encoder (``quantize_file`` into memory, k = 2–9; a format, dithering method, strength and
    color space chosen from the bytes), and the encoded output is decoded again.
``palette``
    ``palettefile.read_palette`` on a real temporary file; the first byte picks the format
    (``.gpl``, ``.json``, ``.txt``, ``.hex``, ``.png``, ``.gif``); a palette that was read is
    written back in the same format and must read back with the same colors in the same order.
``name``
    ``plan.check_name_template`` on a ``--name`` template, then ``plan.render_name`` with an
    arbitrary file name (the bytes after the first NUL).

The property checked: every input either gives a valid result or raises ``ColorquantError``.
Any other exception, or an invalid result, is a finding: its input and traceback are written to
``OUT/TARGET/findings/`` (one per distinct place it was raised) and fuzzing goes on. A hang beyond
``--timeout`` seconds, memory beyond ``RSS_LIMIT_MB`` or a crash of native code stops the
libFuzzer run, which writes the input to the same folder (``timeout-…``, ``oom-…``,
``crash-…``); the run is then started again on the corpus reached so far, until the time budget
is spent.

Coverage (libFuzzer's ``cov:``, edges, and ``ft:``, features) counts the Python bytecode edges
reached in the instrumented modules: colorquant and Pillow's Python code (its format plugins
parse every header in Python); Pillow's C decoders, zlib and libjpeg are not instrumented.
The working corpus (``OUT/TARGET/corpus``) is kept between runs, so a later run goes on from it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from io import BytesIO
from pathlib import Path

TARGETS = ("image", "palette", "name")
#: Pixel limit of the image target: no input can make the fuzzer allocate a large image.
MAX_PIXELS = 1 << 16
#: Palette-file formats of the palette target, picked by the first byte.
PALETTE_EXTENSIONS = (".gpl", ".json", ".txt", ".hex", ".png", ".gif")
OUTPUT_FORMATS = ("PNG", "GIF", "WEBP", "TIFF", "BMP", "JPEG")
ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "tests" / "fuzz_seeds"
#: Peak memory allowed (MB): libFuzzer's -rss_limit_mb, and the harness checks the exact peak
#: (getrusage) after every input, which also catches a spike shorter than libFuzzer's 1 s poll.
RSS_LIMIT_MB = {"image": 2048, "palette": 2048, "name": 512}
#: libFuzzer dictionaries: tokens the mutations splice in (format syntax is hard to guess).
DICTIONARIES = {
    "palette": ["GIMP Palette", "Name:", "Columns:", "{", "}", "[", "]", '"colors"',
                '"counts"', "#", "//", ";", "paint.net", "\\\\", "1e999", "-0", "ff"],
    "name": ["{stem}", "{suffix}", "{ext}", "{k}", "{", "}", ":", "!r", "!s", "!a", ">",
             "<", "^", "=", ",", "_", ".", "..", "/", "\\x00", "999999999", "%", "d", "c",
             "x", "s", "[0]", ".real"],
}


class Invalid(AssertionError):
    """A result that breaks the promise (an exception that is not ColorquantError is another)."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise Invalid(message)


# --- the targets (imported and instrumented only in the child process) ----------------------


def _image_target(data: bytes) -> None:
    from PIL import Image

    from colorquant import core, files
    from colorquant.options import ColorSpace, Dither, QuantizeOptions

    crc = zlib.crc32(data)
    fmt = OUTPUT_FORMATS[(crc >> 3) % len(OUTPUT_FORMATS)]
    methods, spaces = list(Dither), list(ColorSpace)
    options = QuantizeOptions(colors=2 + (crc >> 8) % 8, max_pixels=MAX_PIXELS,
                              to_srgb=bool(crc & 4),
                              dither=methods[(crc >> 12) % len(methods)],
                              space=spaces[(crc >> 15) % len(spaces)],
                              dither_strength=1.0 if crc & (1 << 18) else 0.5)
    _, images = files._read_frames(BytesIO(data), fmt, options, shown_dst="<fuzz>")
    _check(len(images) >= 1, "no frames")
    _check(len({im.mode for im in images}) == 1 and images[0].mode in ("RGB", "RGBA"),
           f"frame modes {[im.mode for im in images]}")
    _check(sum(im.width * im.height for im in images) <= MAX_PIXELS, "over the pixel limit")
    for im in images:
        prepared = core.prepare(im)
        _check(prepared.histogram.n_pixels == im.width * im.height, "histogram count")
    if crc & 3:
        return
    out = BytesIO()
    result = files.quantize_file(BytesIO(data), out, options=options, fmt=fmt)
    _check(1 <= result.n_colors <= options.colors, f"{result.n_colors} colors")
    out.seek(0)
    with Image.open(out) as decoded:
        decoded.load()
        _check(decoded.size == images[0].size, f"output size {decoded.size}")


def _palette_target(data: bytes) -> None:
    import numpy as np

    from colorquant import palettefile

    if not data:
        return
    ext = PALETTE_EXTENSIONS[data[0] % len(PALETTE_EXTENSIONS)]
    with tempfile.TemporaryDirectory(dir=_scratch()) as folder:
        path = Path(folder, "palette" + ext)
        path.write_bytes(data[1:])
        palette = palettefile.read_palette(path)
        colors = palette.colors
        _check(colors.dtype == np.uint8 and colors.ndim == 2 and colors.shape[1] in (3, 4),
               f"colors {colors.dtype} {colors.shape}")
        _check(1 <= len(colors) <= 256, f"{len(colors)} colors")
        _check(palette.counts.shape == (len(colors),) and (palette.counts >= 0).all(),
               "counts")
        if (ext == ".gpl" or ext == ".gif") and palette.has_alpha:
            return  # those formats cannot hold alpha: writing is refused, as documented
        again = Path(folder, "again" + ext)
        palettefile.write_palette(palette, again)
        back = palettefile.read_palette(again)
        _check(np.array_equal(back.colors, colors), "colors changed by a round trip")


def _name_target(data: bytes) -> None:
    from colorquant import plan

    template, _, name = data.decode("utf-8", "replace").partition("\0")
    plan.check_name_template(template)
    name = name.replace("/", "_").replace("\0", "_") or "x.png"
    if name in (".", ".."):
        return
    rendered = plan.render_name(template, name, 16, "png")
    _check(isinstance(rendered, str), "not a string")
    _check("/" not in rendered and "\0" not in rendered and rendered not in ("", ".", ".."),
           f"not a file name: {rendered!r}")


_TARGETS = {"image": _image_target, "palette": _palette_target, "name": _name_target}


def _scratch() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def check_one(target: str, data: bytes) -> None:
    """Run one input through a target: returns, or raises ``ColorquantError`` (both fine),
    or raises anything else (a finding). The regression tests call this too."""
    from colorquant.errors import ColorquantError

    with contextlib.suppress(ColorquantError):
        _TARGETS[target](data)


# --- the child: one libFuzzer run -------------------------------------------------------------


def _child(target: str, findings: Path, libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["colorquant", "PIL"]):
        from PIL import Image, ImageCms, ImageOps  # noqa: F401

        import colorquant.batch
        import colorquant.core
        import colorquant.files
        import colorquant.frames
        import colorquant.palettefile

        Image.init()  # every format plugin, inside the instrumented block
    if target == "image":
        # Import scikit-learn now (seconds, once) rather than inside the first input's time limit.
        import numpy as np

        colorquant.core.quantize_image(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), 2)
    import resource

    seen: set[str] = set()
    limit_kb = RSS_LIMIT_MB[target] * 1024

    def test_one_input(data: bytes) -> None:
        try:
            check_one(target, data)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            _check(peak < limit_kb, f"peak memory {peak // 1024} MB")
        except Exception as exc:
            tb = traceback.extract_tb(exc.__traceback__)
            where = f"{type(exc).__name__} at {tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
            if isinstance(exc, Invalid):  # one finding per broken promise, numbers aside
                where = "Invalid: " + re.sub(r"\d+", "N", str(exc).split(":")[0])
            if where in seen:
                return
            seen.add(where)
            digest = hashlib.sha1(data).hexdigest()[:16]
            stem = findings / f"{target}-{digest}"
            stem.with_suffix(".bin").write_bytes(data)
            stem.with_suffix(".txt").write_text(where + "\n\n" + traceback.format_exc())
            print(f"FINDING {where} -> {stem}.bin", file=sys.stderr, flush=True)

    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()


# --- the parent: seeds, time budget, restarts, summary ---------------------------------------


def _seed_dirs(target: str) -> list[Path]:
    if target == "image":
        corpus = Path(os.environ.get("COLORQUANT_CORPUS", ROOT.parent / "shared" / "corpus"))
        dirs = [corpus / sub for sub in ("pngsuite", "tricky")]
        return [d for d in dirs if d.is_dir()]
    return [SEEDS / target] if (SEEDS / target).is_dir() else []


_STATS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)", re.MULTILINE)


def fuzz(target: str, seconds: float, out: Path, *, timeout: int, max_len: int,
         ) -> dict[str, int]:
    """Fuzz one target for ``seconds``, restarting after a hang, an OOM or a crash."""
    corpus, findings = out / target / "corpus", out / target / "findings"
    corpus.mkdir(parents=True, exist_ok=True)
    findings.mkdir(parents=True, exist_ok=True)
    extra = []
    if target in DICTIONARIES:
        dictionary = out / target / "tokens.dict"
        dictionary.write_text("".join(f'"{token}"\n' for token in DICTIONARIES[target]))
        extra.append(f"-dict={dictionary}")
    log = out / target / "libfuzzer.log"
    deadline = time.monotonic() + seconds
    totals = {"executions": 0, "cov": 0, "ft": 0, "runs": 0}
    while (left := int(deadline - time.monotonic())) > 5:
        args = [f"-max_total_time={left}", f"-timeout={timeout}",
                f"-rss_limit_mb={RSS_LIMIT_MB[target]}", *extra,
                f"-max_len={max_len}", f"-artifact_prefix={findings}/", "-print_final_stats=1",
                str(corpus), *map(str, _seed_dirs(target) if totals["runs"] == 0 else [])]
        command = [sys.executable, __file__, "--child", target, "--out", str(out), "--", *args]
        with open(log, "a") as handle:
            handle.write(f"\n=== {' '.join(command)}\n")
        proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, errors="replace", check=False)
        with open(log, "a") as handle:
            handle.write(proc.stderr)
        stats = _STATS.findall(proc.stderr)
        if not stats and proc.returncode != 0 and "Test unit written" not in proc.stderr:
            print(f"  [{target}] libFuzzer did not run:", *proc.stderr.splitlines()[-3:],
                  sep="\n    ", flush=True)
            break
        if stats:
            totals["executions"] += int(stats[-1][0])
            totals["cov"] = max(totals["cov"], int(stats[-1][1]))
            totals["ft"] = max(totals["ft"], int(stats[-1][2]))
        totals["runs"] += 1
        for line in proc.stderr.splitlines():
            if line.startswith(("FINDING", "==", "artifact_prefix")) or "deadly signal" in line:
                print(f"  [{target}] {line}", flush=True)
        if proc.returncode == 0:
            break
    totals["findings"] = sum(1 for p in findings.iterdir() if p.suffix != ".txt")
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--minutes", type=float, default=20.0, help="time budget per target")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"),
                        help="working corpus and findings, per target (default ./fuzz-out)")
    parser.add_argument("--timeout", type=int, default=30,
                        help="seconds allowed per input (instrumented code runs several times "
                        "slower)")
    parser.add_argument("--max-len", type=int, default=65536, help="largest input, in bytes")
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        _child(args.child, args.out / args.child / "findings",
               [a for a in rest if a != "--"])
        return
    print(f"{'target':8} {'runs':>4} {'executions':>11} {'cov':>6} {'ft':>7} {'findings':>8}")
    for target in TARGETS if args.target == "all" else (args.target,):
        t = fuzz(target, args.minutes * 60, args.out, timeout=args.timeout,
                 max_len=args.max_len)
        print(f"{target:8} {t['runs']:>4} {t['executions']:>11,} {t['cov']:>6} {t['ft']:>7} "
              f"{t['findings']:>8}   ({args.out / target / 'findings'})", flush=True)


if __name__ == "__main__":
    main()
