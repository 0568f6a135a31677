"""The ``colorquant`` command: parse flags, call the library, print messages, exit.

Only Click and the standard library are imported at start-up; numpy, Pillow and the pipeline
are imported when there is an image to work on, so ``--help`` and ``--version`` stay instant.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn

import click

from . import __version__, batch
from .errors import ColorquantError
from .options import (
    DEFAULT_MAX_PIXELS,
    MAX_COLORS,
    MAX_SEED,
    MIN_COLORS,
    FitMethod,
    QuantizeOptions,
)
from .report import ExitCode, Report

if TYPE_CHECKING:
    from .palette import Palette

EPILOG = """\b
Examples:
  colorquant photo.jpg -k 16 -o photo-16c.png
  colorquant photo.jpg -k 8 --plot scatter.png --compare side.png
  colorquant *.jpg -k 32 --out-dir small/ -j 4
  colorquant -r photos/ -k 16 --out-dir small/ --name '{stem}.{ext}' --json
  colorquant sprites/*.png -k 32 --shared-palette --save-palette sprites.gpl --out-dir out/
  colorquant new.png --palette sprites.gpl -o out/new.png
  for f in *.jpg; do colorquant "$f" -k 16 -q || echo "failed: $f"; done

\b
Exit codes: 0 success, 1 an input failed, 2 bad command line,
15 output exists and --no-clobber, 130 interrupted.
"""


def _message(text: str) -> None:
    click.echo(text, err=True)


def _describe_palette(result: batch.FileResult) -> list[str]:
    total = sum(result.counts) or 1
    return [f"  {hx}  {count / total:6.2%}" for hx, count in zip(result.colors, result.counts,
                                                                  strict=True)]


def _verbose(result: batch.FileResult) -> None:
    _message(f"{result.input} -> {result.output}: {result.colors_used} colors, "
             f"MSE {result.mse:.2f}, PSNR {result.psnr:.2f} dB")
    _message("palette (color, share of pixels):")
    for line in _describe_palette(result):
        _message(line)
    times = ", ".join(f"{stage} {sec:.3f}s" for stage, sec in result.timings.items())
    _message(f"time: {times}")


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
              help="Write outputs into DIR (created if needed).")
@click.option("--name", "name", metavar="TEMPLATE",
              help="Output file name from {stem}, {suffix}, {ext}, {k}. "
                   "[default: {stem}-{k}c.{ext}]")
@click.option("-r", "--recursive", is_flag=True,
              help="Walk folder inputs; their tree is mirrored under --out-dir.")
@click.option("-f", "--format", "fmt", type=click.Choice(
    ["png", "gif", "webp", "tiff", "bmp", "jpeg"], case_sensitive=False),
              help="Output format; default: from the output extension, else PNG.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Random seed; the same seed gives byte-identical output.")
@click.option("--fit", "fit_method", type=click.Choice([m.value for m in FitMethod]),
              default=FitMethod.MINIBATCH.value, show_default=True,
              help="k-means algorithm: mini-batch (fast), or full Lloyd (slightly lower error).")
@click.option("--shared-palette", is_flag=True,
              help="Fit one palette over all inputs together and map every image to it.")
@click.option("--palette", "palette_file", metavar="FILE",
              help="Map to the colors of a palette file (.gpl, .json, .txt, .hex or an "
                   "image) in its order; no fitting, -k is ignored.")
@click.option("--save-palette", metavar="FILE",
              help="Write the palette (one input, --shared-palette or --palette) to FILE.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), metavar="N",
              help="Files processed in parallel.  [default: number of CPUs]")
@click.option("--fail-fast", is_flag=True, help="Stop at the first input that fails.")
@click.option("--no-clobber", is_flag=True,
              help="Never replace an existing output (skip it; exit code 15).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per input on stdout (JSON Lines).")
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
        name: str | None, recursive: bool, fmt: str | None, seed: int, fit_method: str,
        shared_palette: bool,
        palette_file: str | None, save_palette: str | None, jobs: int | None,
        fail_fast: bool, no_clobber: bool, as_json: bool, plot: str | None,
        compare: str | None, compress_level: int, max_pixels: int, frame: int | None,
        to_srgb: bool, strip: bool, transparent_color: tuple[int, int, int], quiet: bool,
        verbose: bool) -> int:
    """Reduce the colors of images with mini-batch k-means.

    Reads each INPUT (any format Pillow reads; a folder with -r), fits a palette of
    -k colors to its pixels in the RGB cube (or one palette to all inputs with
    --shared-palette), replaces every pixel by its nearest palette color and writes
    an indexed PNG (or the format of the output's extension).
    """
    from . import io, palettefile, pipeline

    if output is not None and (len(inputs) > 1 or (recursive and os.path.isdir(inputs[0]))):
        raise click.UsageError("-o/--output takes one input file; use --out-dir for several")
    if output is not None and (out_dir is not None or name is not None):
        raise click.UsageError("use either -o/--output or --out-dir/--name, not both")
    if shared_palette and palette_file is not None:
        raise click.UsageError("use either --shared-palette or --palette, not both")
    if shared_palette and io.STDIO in inputs:
        raise click.UsageError("--shared-palette reads its inputs twice: not standard input")
    try:
        for extra in (plot, compare):
            if extra is not None:
                pipeline.plot_path_check(extra)
        if palette_file is not None:
            palettefile.check_path(palette_file, writing=False)
        if save_palette is not None:
            palettefile.check_path(save_palette, writing=True)
    except ColorquantError as exc:
        raise click.UsageError(str(exc)) from None
    palette = None
    if palette_file is not None:
        try:
            palette = palettefile.read_palette(palette_file)
        except ColorquantError as exc:
            raise click.ClickException(str(exc)) from None
        colors = len(palette)  # names and reports show the size of the palette used
    try:
        plan = batch.plan(inputs, k=colors, output=output, out_dir=out_dir, name=name,
                          fmt=fmt, recursive=recursive)
        batch.check_side_outputs(plan, {"--plot": plot, "--compare": compare,
                                        "--save-palette": save_palette})
    except ColorquantError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json and any(io.is_stdio(job.dst) for job in plan):
        raise click.UsageError("--json prints on standard output: write the image to a file")
    if (plot or compare) and len(plan) > 1:
        raise click.UsageError("--plot and --compare take one input")
    if save_palette is not None and len(plan) > 1 and not (shared_palette or palette):
        raise click.UsageError("--save-palette with several inputs needs --shared-palette")
    if plot or compare:
        plan = [dataclasses.replace(plan[0], plot=plot, compare=compare)]
    if save_palette is not None and palette is None and plan[0].src != io.STDIO:
        # One input: fit its palette first (the same palette), so a palette file that cannot
        # be written fails before the image is written.
        shared_palette = True
    options = QuantizeOptions(colors=max(colors, MIN_COLORS), seed=seed,
                              fit_method=FitMethod(fit_method),
                              compress_level=compress_level, max_pixels=max_pixels, frame=frame,
                              to_srgb=to_srgb, strip=strip, transparent_color=transparent_color)
    created = _make_folders(sorted({os.path.dirname(job.dst) for job in plan})
                            if out_dir is not None else [])
    report = Report()
    try:
        return _run_plan(plan, options, report, inputs=inputs, palette=palette,
                         shared_palette=shared_palette, save_palette=save_palette,
                         jobs=jobs, fail_fast=fail_fast, no_clobber=no_clobber,
                         as_json=as_json, quiet=quiet, verbose=verbose)
    finally:
        if not report.written:  # nothing was written: leave no empty folders behind
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)


def _make_folders(folders: Iterable[str]) -> list[str]:
    """Create the output folders; returns those that did not exist, parents first."""
    created: list[str] = []
    for folder in folders:
        folder = folder or "."  # outputs in the current folder
        missing = []
        path = os.path.abspath(folder)
        while not os.path.isdir(path) and path not in missing:
            missing.append(path)
            path = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(f"{folder}: cannot create: {exc.strerror}") from None
        created += reversed(missing)
    return created


def _run_plan(plan: list[batch.Job], options: QuantizeOptions, report: Report, *,
              inputs: Sequence[str], palette: Palette | None, shared_palette: bool,
              save_palette: str | None, jobs: int | None, fail_fast: bool, no_clobber: bool,
              as_json: bool, quiet: bool, verbose: bool) -> int:
    """Run the planned jobs (workers, shared palette, progress bar) and report each result."""
    from . import io, palettefile

    show_bar = (not quiet and not verbose and len(plan) > 1 and sys.stderr.isatty())
    steps = len(plan) * (2 if shared_palette else 1)
    bar = click.progressbar(length=steps, label="colorquant", file=sys.stderr,
                            show_eta=True, show_pos=True) if show_bar else None
    step = (lambda: bar.update(1)) if bar is not None else None
    preload = ["colorquant.batch"] if (shared_palette or palette) else [
        "colorquant.batch", "sklearn.cluster"]
    count = min(jobs or batch.default_workers(), len(plan))
    if io.STDIO in inputs:
        count = 1  # standard input and output stay with this process
    with contextlib.ExitStack() as stack:
        if bar is not None:
            stack.enter_context(bar)
        workers = stack.enter_context(batch.Workers(count, preload=preload))
        failed = None
        if shared_palette:
            palette, failed = batch.fit_shared(plan, options, workers, step=step,
                                               fail_fast=fail_fast)
        if save_palette is not None and palette is not None:
            try:
                palettefile.write_palette(palette, save_palette)
            except ColorquantError as exc:
                raise click.ClickException(str(exc)) from None
        if shared_palette and (palette is None or (fail_fast and failed)):
            # nothing to map to (no input readable), or --fail-fast after a failed read
            results: Iterable[batch.FileResult] = [failed[j.src] for j in plan
                                                   if j.src in (failed or {})]
            report.not_run = len(plan) - len(failed or {})
        else:
            results = batch.run(plan, options, workers, palette=palette, failed=failed,
                                no_clobber=no_clobber)
        try:
            for done, result in enumerate(results, start=1):
                if step is not None:
                    step()
                _record(result, report, as_json=as_json, quiet=quiet, verbose=verbose,
                        alone=len(plan) == 1)
                if result.status == "failed" and fail_fast:
                    report.not_run = len(plan) - done
                    workers.stop()
                    break
        except batch.WorkerError as exc:
            raise click.ClickException(str(exc)) from None
        if save_palette is not None and palette is None and report.written:
            # one input, fitted on its own: save the palette it got
            try:
                palettefile.write_palette(
                    palettefile.palette_from_hex(result.colors, result.counts), save_palette)
            except ColorquantError as exc:
                raise click.ClickException(str(exc)) from None
    if len(plan) > 1 and not quiet:
        _message(report.summary())
    return int(report.exit_code)


def _record(result: batch.FileResult, report: Report, *, as_json: bool, quiet: bool,
            verbose: bool, alone: bool = False) -> None:
    """Tally one result and print what the flags ask for (a skip is always said when the
    input is ``alone``: no batch summary follows)."""
    if result.status == "ok":
        report.done(result.output)
    elif result.status == "skipped":
        report.skip(result.input, result.error or "")
    else:
        report.failure(result.input, result.error or "")
        _message(f"Error: {result.error}")
    if as_json:
        click.echo(json.dumps(result.as_json()))
    if quiet:
        return
    for note in result.warnings:
        _message(note)
    if result.status == "skipped" and (verbose or alone):
        _message(f"Skipped: {result.error}")
    if result.status == "ok" and verbose:
        _verbose(result)


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command and turn every outcome into one exit code (the only place that does)."""
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
    return int(code or 0)


def main(argv: Sequence[str] | None = None, *,
         before_exit: Callable[[int], None] | None = None) -> NoReturn:
    """Run the command, then exit: the one function an in-process call and a warm worker's
    child both run (``launch.py``, ``worker.py``; also ``python -m colorquant``).

    The exit skips the interpreter's teardown of numpy, SciPy and scikit-learn, which costs
    about 0.1 s on every run (as much as quantizing a small image) and does nothing for us:
    outputs are already renamed into place and worker processes joined. Standard streams are
    flushed and ``atexit`` handlers run first; then ``before_exit(code)`` (the launcher starts
    a worker there, a worker's child reports its status). Call :func:`run` to embed the command.
    """
    code = run(argv)
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the descriptor closed
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a broken or closed pipe: the data did not all go
            code = code or int(ExitCode.FAILURE)
    atexit._run_exitfuncs()
    if before_exit is not None:
        before_exit(code)
    os._exit(code)
