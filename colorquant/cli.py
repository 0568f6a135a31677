"""The ``colorquant`` command: parse flags, call the library, print messages, exit.

Only Click and the standard library are imported at start-up; numpy, Pillow and the pipeline
are imported when there is an image to work on, so ``--help`` and ``--version`` stay instant.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from . import __version__
from .errors import ColorquantError
from .options import DEFAULT_MAX_PIXELS, MAX_COLORS, MIN_COLORS, QuantizeOptions
from .report import ExitCode, Report

EPILOG = """\b
Examples:
  colorquant photo.jpg -k 16 -o photo-16c.png
  colorquant photo.jpg -k 8 --plot scatter.png --compare side.png
  colorquant *.jpg -k 32 --out-dir small/
  for f in *.jpg; do colorquant "$f" -k 16 -q || echo "failed: $f"; done

\b
Exit codes: 0 success, 1 an input failed, 2 bad command line,
15 output exists and --no-clobber, 130 interrupted.
"""


def _message(text: str) -> None:
    click.echo(text, err=True)


def _output_for(src: str, output: str | None, out_dir: str | None, k: int, fmt: str | None,
                ) -> Path:
    from . import io

    if output is not None:
        return Path(output)
    if src == io.STDIO:
        if out_dir is None:
            return Path(io.STDIO)
        src = "stdin"
    default = io.default_output(src, k, io.output_format("x.png", fmt))
    return Path(out_dir) / default.name if out_dir is not None else default


def _describe_palette(result) -> list[str]:  # type: ignore[no-untyped-def]
    shares = result.palette.shares()
    return [f"  {hx}  {share:6.2%}" for hx, share in zip(result.palette.hex(), shares,
                                                          strict=True)]


def _rgb_option(ctx: click.Context, param: click.Parameter, value: str,
                ) -> tuple[int, int, int]:
    from .options import parse_rgb

    try:
        return parse_rgb(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-k", "--colors", type=click.IntRange(MIN_COLORS, MAX_COLORS), default=16,
              show_default=True, help="Number of colors in the palette.")
@click.option("-o", "--output", metavar="PATH",
              help="Output file (one input only). Default: INPUT-<k>c.png beside the input.")
@click.option("--out-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Write outputs into DIR (default names).")
@click.option("-f", "--format", "fmt", type=click.Choice(
    ["png", "gif", "webp", "tiff", "bmp", "jpeg"], case_sensitive=False),
              help="Output format; default: from the output extension, else PNG.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; the same seed gives byte-identical output.")
@click.option("--plot", metavar="PATH",
              help="Also write the RGB scatter plot of the pixel cloud before and after.")
@click.option("--compare", metavar="PATH",
              help="Also write the original and quantized images side by side.")
@click.option("--compress-level", type=click.IntRange(0, 9), default=6, show_default=True,
              help="PNG zlib level: 0 fastest, 9 smallest.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS,
              show_default=True, help="Refuse images with more pixels (decompression bombs).")
@click.option("--frame", type=click.IntRange(min=0), default=None, metavar="N",
              help="Quantize only frame N (0-based) of an animation or multi-page file.")
@click.option("--to-srgb", is_flag=True,
              help="Convert from the embedded ICC profile to sRGB before quantizing.")
@click.option("--strip", is_flag=True, help="Write no metadata (ICC profile, DPI).")
@click.option("--transparent-color", "transparent_color", default="#000000", show_default=True,
              metavar="COLOR", callback=_rgb_option,
              help="RGB (#rrggbb or r,g,b) of the palette entry for fully transparent pixels.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True,
              help="Report the palette, the time of each stage and the error (MSE, PSNR).")
@click.version_option(__version__, "--version", prog_name="colorquant")
def cli(inputs: tuple[str, ...], colors: int, output: str | None, out_dir: str | None,
        fmt: str | None, seed: int, plot: str | None, compare: str | None,
        compress_level: int, max_pixels: int, frame: int | None, to_srgb: bool, strip: bool,
        transparent_color: tuple[int, int, int], quiet: bool, verbose: bool) -> int:
    """Reduce the colors of images with mini-batch k-means.

    Reads each INPUT (any format Pillow reads), fits a palette of -k colors to its
    pixels in the RGB cube, replaces every pixel by its nearest palette color and
    writes an indexed PNG (or the format of the output's extension).
    """
    from . import io, pipeline

    if output is not None and len(inputs) > 1:
        raise click.UsageError("-o/--output takes one input; use --out-dir for several")
    if (plot or compare) and len(inputs) > 1:
        raise click.UsageError("--plot and --compare take one input")
    if output is not None and out_dir is not None:
        raise click.UsageError("use either -o/--output or --out-dir, not both")
    if inputs.count(io.STDIO) > 1:
        raise click.UsageError("standard input (-) can be read only once")
    options = QuantizeOptions(colors=colors, seed=seed, compress_level=compress_level,
                              max_pixels=max_pixels, frame=frame, to_srgb=to_srgb, strip=strip,
                              transparent_color=transparent_color)
    jobs: list[tuple[str, Path, str]] = []
    for src in inputs:
        dst = _output_for(src, output, out_dir, colors, fmt)
        try:
            out_format = io.output_format(dst, fmt)
            for extra in (plot, compare):
                if extra is not None:
                    pipeline.plot_path_check(extra)
        except ColorquantError as exc:
            raise click.UsageError(str(exc)) from None
        if (src != io.STDIO and os.path.exists(src) and os.path.exists(dst)
                and os.path.samefile(src, dst)):
            raise click.UsageError(f"{dst}: output is the same file as the input")
        jobs.append((src, dst, out_format))

    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    warn = None if quiet else _message
    report = Report()
    for src, dst, out_format in jobs:
        try:
            result = pipeline.quantize_file(src, dst, options=options, fmt=out_format,
                                            plot=plot, compare=compare, log=warn)
        except ColorquantError as exc:
            _message(f"Error: {exc}")
            report.failure(src, str(exc))
            continue
        report.done(str(dst))
        if verbose and not quiet:
            _message(f"{src} -> {dst}: {result.n_colors} colors, MSE {result.mse:.2f}, "
                     f"PSNR {result.psnr:.2f} dB")
            _message("palette (color, share of pixels):")
            for line in _describe_palette(result):
                _message(line)
            times = ", ".join(f"{stage} {sec:.3f}s" for stage, sec in result.timings.items())
            _message(f"time: {times}")
    if len(jobs) > 1 and not quiet:
        _message(report.summary())
    return int(report.exit_code)


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: run the command and turn every outcome into one exit code."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = cli.main(args=argv, prog_name="colorquant", standalone_mode=False)
    except click.ClickException as exc:
        _message(f"Error: {exc.format_message()}")
        code = ExitCode.USAGE if isinstance(exc, click.UsageError) else ExitCode.FAILURE
    except (KeyboardInterrupt, click.Abort):
        _message("Error: interrupted")
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:
        code = ExitCode.FAILURE
    sys.exit(int(code or 0))
