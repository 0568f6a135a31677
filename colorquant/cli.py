"""The ``colorquant`` command: parse flags, call the library, print messages, exit.

Only Click and the standard library are imported at start-up; numpy, Pillow and the pipeline
are imported when there is an image to work on, so ``--help`` and ``--version`` stay instant.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

import click

from . import __version__, formats
from . import plan as planning
from .errors import ColorquantError, OutputError
from .options import (
    DEFAULT_MAX_PIXELS,
    MAX_COLORS,
    MAX_OPTIMIZE,
    MAX_SEED,
    MIN_COLORS,
    ColorSpace,
    Dither,
    FitMethod,
    QuantizeOptions,
    SaveOptions,
)
from .report import ExitCode, Report

if TYPE_CHECKING:
    from . import batch
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
15 output exists and --no-clobber, 98 output larger than input and
--skip-if-larger, 99 --target-psnr missed, 130 interrupted.

\b
A warm worker process speeds up later calls; COLORQUANT_WORKER=0 turns it off.
"""


def _message(text: str) -> None:
    click.echo(text, err=True)


def _describe_palette(result: batch.FileResult) -> list[str]:
    total = sum(result.counts) or 1
    return [f"  {hx}  {count / total:6.2%}" for hx, count in zip(result.colors, result.counts,
                                                                  strict=True)]


def _verbose(result: batch.FileResult) -> None:
    target = "" if result.target is None else (
        f" (fewest for --target-psnr {result.target[0]:g}-{result.target[1]:g})")
    _message(f"{result.input} -> {result.output}: {result.colors_used} colors{target}, "
             f"MSE {result.mse:.2f}, PSNR {result.psnr:.2f} dB, "
             f"mean ΔE2000 {result.delta_e:.2f}"
             + ("" if result.size is None else f", {result.size:,} bytes"))
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


def _target_option(ctx: click.Context, param: click.Parameter, value: str | None,
                   ) -> tuple[float, float] | None:
    from .options import parse_target

    try:
        return None if value is None else parse_target(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _keep_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...],
                 ) -> tuple[tuple[int, int, int], ...]:
    from .options import parse_colors

    try:
        found = [rgb for value in values for rgb in parse_colors(value)]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return tuple(dict.fromkeys(found))  # a color given twice is pinned once


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
@click.option("-f", "--format", "fmt", type=click.Choice(formats.CHOICES, case_sensitive=False),
              help="Output format; default: from the output extension, else PNG.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Random seed; the same seed gives byte-identical output.")
@click.option("--fit", "fit_method", type=click.Choice([m.value for m in FitMethod]),
              default=FitMethod.MINIBATCH.value, show_default=True,
              help="k-means algorithm: mini-batch (fast), or full Lloyd (slightly lower error).")
@click.option("--space", type=click.Choice([s.value for s in ColorSpace]),
              default=ColorSpace.RGB.value, show_default=True,
              help="Color space of the fit and of the nearest-color search.")
@click.option("--dither", type=click.Choice([d.value for d in Dither]),
              default=Dither.NONE.value, show_default=True,
              help="Mapping: nearest color, Floyd-Steinberg, 8x8 Bayer or blue noise.")
@click.option("--dither-strength", type=click.FloatRange(0.0, 1.0), default=1.0,
              show_default=True, help="Scale of the dithering, 0 to 1.")
@click.option("--shared-palette", is_flag=True,
              help="Fit one palette over all inputs together and map every image to it.")
@click.option("--palette", "palette_file", metavar="FILE",
              help="Map to the colors of a palette file (.gpl, .json, .txt, .hex or an "
                   "image) in its order; no fitting, -k is ignored.")
@click.option("--save-palette", metavar="FILE",
              help="Write the palette (one input, --shared-palette or --palette) to FILE.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), metavar="N",
              help="Files processed in parallel.  [default: number of CPUs]")
@click.option("--dask", "dask", metavar="ADDRESS",
              help="Run on the Dask cluster at ADDRESS (tcp://host:8786), or on a new local "
                   "one of -j single-threaded workers with 'local'. Paths must be on a "
                   "filesystem every worker sees.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first input that fails.")
@click.option("--no-clobber", is_flag=True,
              help="Never replace an existing output (skip it; exit code 15).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per input on stdout (JSON Lines).")
@click.option("--plot", metavar="PATH",
              help="Also write the RGB scatter plot of the pixel cloud before and after.")
@click.option("--compare", metavar="PATH",
              help="Also write the original and quantized images side by side.")
@click.option("--compress-level", type=click.IntRange(0, 12), default=None, metavar="0-12",
              help="PNG deflate level (libdeflate): 0 fastest, 12 smallest.  [default: 10, "
                   "11 for flat graphics, 7 or 8 above 4 megapixels]")
@click.option("-O", "--optimize", type=click.IntRange(0, MAX_OPTIMIZE), default=0,
              show_default=True, metavar="LEVEL",
              help="Spend more time for a smaller PNG with the same pixels: 1 strongest "
                   "deflate, 2 also oxipng (needs the 'optimize' extra).")
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
@click.option("--target-psnr", "target_psnr", metavar="MIN[-MAX]", callback=_target_option,
              help="Use the fewest colors (up to -k, default 256 then) whose PSNR reaches MAX "
                   "dB; if -k colors miss MIN, write nothing (exit code 99).")
@click.option("--keep", "keep", metavar="COLORS", multiple=True, callback=_keep_option,
              help="Pin colors in the palette exactly (#rrggbb or r,g,b; several separated "
                   "by spaces or ';', or repeat the option).")
@click.option("--keep-file", metavar="FILE",
              help="Pin the colors of a palette file (.gpl, .json, .txt, .hex or an image).")
@click.option("--skip-if-larger", is_flag=True,
              help="Write nothing when the output would be larger than the input (exit 98).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", is_flag=True,
              help="Report the palette, the time of each stage and the error (MSE, PSNR).")
@click.version_option(__version__, "--version", prog_name="colorquant")
def cli(inputs: tuple[str, ...], colors: int, output: str | None, out_dir: str | None,
        name: str | None, recursive: bool, fmt: str | None, seed: int, fit_method: str,
        space: str, dither: str, dither_strength: float, shared_palette: bool,
        palette_file: str | None, save_palette: str | None, jobs: int | None,
        dask: str | None, fail_fast: bool, no_clobber: bool, as_json: bool, plot: str | None,
        compare: str | None, compress_level: int | None, optimize: int, max_pixels: int,
        frame: int | None,
        to_srgb: bool, strip: bool, transparent_color: tuple[int, int, int],
        target_psnr: tuple[float, float] | None, keep: tuple[tuple[int, int, int], ...],
        keep_file: str | None, skip_if_larger: bool, quiet: bool, verbose: bool) -> int:
    """Reduce the colors of images with mini-batch k-means.

    Reads each INPUT (any format Pillow reads; a folder with -r), fits a palette of
    -k colors to its pixels in the RGB cube (or one palette to all inputs with
    --shared-palette), replaces every pixel by its nearest palette color and writes
    an indexed PNG (or the format of the output's extension).
    """
    from . import files, imagefile, palettefile

    if output is not None and (len(inputs) > 1 or (recursive and os.path.isdir(inputs[0]))):
        raise click.UsageError("-o/--output takes one input file; use --out-dir for several")
    if output is not None and (out_dir is not None or name is not None):
        raise click.UsageError("use either -o/--output or --out-dir/--name, not both")
    if shared_palette and palette_file is not None:
        raise click.UsageError("use either --shared-palette or --palette, not both")
    if shared_palette and imagefile.STDIO in inputs:
        raise click.UsageError("--shared-palette reads its inputs twice: not standard input")
    try:
        for extra in (plot, compare):
            if extra is not None:
                files.plot_path_check(extra)
        if palette_file is not None:
            palettefile.check_path(palette_file, writing=False)
        if save_palette is not None:
            palettefile.check_path(save_palette, writing=True)
    except ColorquantError as exc:
        raise click.UsageError(str(exc)) from None
    if optimize >= 2:
        from .encode import oxipng_missing

        if oxipng_missing():
            raise click.BadParameter(f"{optimize} runs oxipng: pip install 'colorquant[optimize]'"
                                     " (pyoxipng)", param_hint="'-O' / '--optimize'")
    if palette_file is not None and (keep or keep_file or target_psnr):
        raise click.UsageError("--palette maps to a given palette: no --keep, --keep-file or "
                               "--target-psnr")
    if target_psnr is not None and click.get_current_context().get_parameter_source(
            "colors") is not click.core.ParameterSource.COMMANDLINE:
        colors = MAX_COLORS  # a target chooses the size, up to -k when given
    if keep_file is not None:
        keep = _pins_from_file(keep_file, keep)
    if len(keep) > colors:
        raise click.BadParameter(f"{len(keep)} colors to keep do not fit in -k {colors}",
                                 param_hint="'--keep'")
    palette = None
    if palette_file is not None:
        try:
            palette = palettefile.read_palette(palette_file)
        except ColorquantError as exc:
            raise click.ClickException(str(exc)) from None
        colors = len(palette)  # names and reports show the size of the palette used
    try:
        planned = planning.plan(inputs, k=colors, output=output, out_dir=out_dir, name=name,
                                fmt=fmt, recursive=recursive, defer_k=target_psnr is not None)
        planning.check_side_outputs(planned, {"--plot": plot, "--compare": compare,
                                              "--save-palette": save_palette})
        batch_plan = planning.prepare(
            planned, plot=plot, compare=compare, save_palette=save_palette,
            shared_palette=shared_palette, palette_given=palette is not None,
            json_lines=as_json, cluster=dask is not None,
            delta_e=as_json or verbose)  # the only outputs that show the mean ΔE2000
    except ColorquantError as exc:
        raise click.UsageError(str(exc)) from None
    options = QuantizeOptions(colors=max(colors, MIN_COLORS), seed=seed,
                              fit_method=FitMethod(fit_method), space=ColorSpace(space),
                              dither=Dither(dither), dither_strength=dither_strength,
                              max_pixels=max_pixels, frame=frame, to_srgb=to_srgb,
                              transparent_color=transparent_color, target_psnr=target_psnr,
                              keep=keep)
    save = SaveOptions(compress_level=compress_level, optimize=optimize, strip=strip,
                       skip_if_larger=skip_if_larger)
    if sys.stdout is None and (as_json or any(imagefile.is_stdio(job.dst)
                                              for job in batch_plan.jobs)):
        raise click.ClickException("<stdout>: cannot write: standard output is closed")
    from . import batch

    try:
        created = batch.make_folders(sorted({os.path.dirname(job.dst)
                                             for job in batch_plan.jobs})
                                     if out_dir is not None else [])
    except ColorquantError as exc:
        raise click.ClickException(str(exc)) from None
    report = Report()
    try:
        return _run_plan(batch_plan, options, save, report, palette=palette, jobs=jobs,
                         dask=dask, fail_fast=fail_fast, no_clobber=no_clobber,
                         as_json=as_json, quiet=quiet, verbose=verbose)
    finally:
        if not report.written:  # nothing was written: leave no empty folders behind
            batch.remove_folders(created)


def _pins_from_file(path: str, keep: tuple[tuple[int, int, int], ...],
                    ) -> tuple[tuple[int, int, int], ...]:
    """The ``--keep`` colors followed by the opaque colors of a palette file."""
    from . import palettefile

    try:
        palettefile.check_path(path, writing=False)
        colors = palettefile.read_palette(path).colors
    except ColorquantError as exc:
        raise click.BadParameter(str(exc), param_hint="'--keep-file'") from None
    if colors.shape[1] == 4 and (colors[:, 3] < 255).any():
        raise click.BadParameter(f"{path}: colors to keep must be opaque",
                                 param_hint="'--keep-file'")
    found = [tuple(int(c) for c in row[:3]) for row in colors]
    return tuple(dict.fromkeys([*keep, *found]))  # type: ignore[arg-type]


def _run_plan(batch_plan: planning.Plan, options: QuantizeOptions, save: SaveOptions,
              report: Report, *, palette: Palette | None, jobs: int | None, dask: str | None,
              fail_fast: bool, no_clobber: bool, as_json: bool, quiet: bool,
              verbose: bool) -> int:
    """Run the planned jobs with the library's runner and report each result."""
    from . import batch, executors

    plan, shared_palette = batch_plan.jobs, batch_plan.shared_palette
    show_bar = (not quiet and not verbose and len(plan) > 1 and sys.stderr.isatty())
    steps = len(plan) * (2 if shared_palette else 1)
    bar = click.progressbar(length=steps, label="colorquant", file=sys.stderr,
                            show_eta=True, show_pos=True) if show_bar else None
    try:
        with contextlib.ExitStack() as stack:
            if bar is not None:
                stack.enter_context(bar)
            executor = stack.enter_context(executors.executor_for(
                plan, dask=dask, jobs=jobs, fitting=not (shared_palette or palette),
                colors=options.colors))
            run = batch.BatchRun(plan, options, executor=executor, save=save, palette=palette,
                                 shared_palette=shared_palette,
                                 save_palette=batch_plan.save_palette, fail_fast=fail_fast,
                                 no_clobber=no_clobber,
                                 progress=(lambda: bar.update(1)) if bar is not None else None)
            for result in run:
                _record(result, report, as_json=as_json, quiet=quiet, verbose=verbose,
                        alone=len(plan) == 1)
            report.not_run = run.not_run
    except ColorquantError as exc:  # no cluster, a process died, the palette cannot be saved
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
        report.skip(result.input, result.error or "", ExitCode.NOT_OVERWRITTEN
                    if result.code is None else ExitCode(result.code))
    else:
        report.failure(result.input, result.error or "")
        _message(f"Error: {result.error}")
    if as_json:
        _data(json.dumps(result.as_json()))
    if quiet:
        return
    for note in result.warnings:
        _message(note)
    if result.status == "skipped" and (verbose or alone):
        _message(f"Skipped: {result.error}")
    if result.status == "ok" and verbose:
        _verbose(result)


def _data(line: str) -> None:
    """One line of data on standard output: a device or file that cannot take it (full, read
    only) is an output error; a reader that went (a broken pipe) ends the command quietly."""
    try:
        click.echo(line)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"<stdout>: cannot write: {exc.strerror or exc}") from None


#: The signal received (SIGINT or SIGTERM), so that only a real one is called an interruption
#: (a ``KeyboardInterrupt`` can also come out of a library failing under a memory limit).
_received: list[int] = []


def _terminate(signum: int, frame: object) -> NoReturn:
    _received.append(signum)
    raise KeyboardInterrupt


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command and turn every outcome into one exit code (the only place that does)."""
    _received.clear()
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _terminate)
    try:
        code = cli.main(args=argv, prog_name="colorquant", standalone_mode=False)
    except click.ClickException as exc:
        _message(f"Error: {exc.format_message()}")
        code = ExitCode.USAGE if isinstance(exc, click.UsageError) else ExitCode.FAILURE
    except (KeyboardInterrupt, click.Abort):
        if _received:
            _message("Error: interrupted")
            code = ExitCode.INTERRUPTED
        else:  # no Ctrl-C nor SIGTERM came: a library raised it (seen under a memory limit)
            _message("Error: unexpected KeyboardInterrupt (no Ctrl-C or SIGTERM was received)")
            code = ExitCode.FAILURE
    except BrokenPipeError:
        code = ExitCode.FAILURE
    except MemoryError as exc:  # outside any one input (loading the libraries for workers)
        from .memory import describe

        _message(f"Error: {describe(exc)}")
        code = ExitCode.FAILURE
    return int(code or 0)


def main(argv: Sequence[str] | None = None, *,
         before_exit: Callable[[int], None] | None = None) -> NoReturn:
    """Run the command, then exit: the one function an in-process call and a warm worker's
    child both run (``launch.py``, ``worker.py``; also ``python -m colorquant``).

    The exit skips the interpreter's teardown of numpy, SciPy and scikit-learn, which costs
    as much as quantizing a small image and does nothing for us:
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
