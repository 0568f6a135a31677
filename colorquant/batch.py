"""Many files in one call: run the planned jobs on an executor, fit shared palettes, and
describe each input's outcome (:class:`FileResult`).

The plan is :mod:`colorquant.plan`; where the tasks run is :mod:`colorquant.executors`.
Results come in input order, so outputs and reports do not depend on where tasks ran.
Nothing here prints or exits.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import (
    ColorquantError,
    OutputError,
    OutputExistsError,
    QualityTooLowError,
    SkippedError,
)
from .executors import Executor
from .options import QuantizeOptions, SaveOptions
from .plan import Job
from .report import ExitCode


@dataclass
class FileResult:
    """What happened to one input; ``status`` is ``"ok"``, ``"failed"`` or ``"skipped"``."""

    input: str
    output: str
    status: str
    k: int
    error: str | None = None
    colors: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    mse: float | None = None
    psnr: float | None = None
    delta_e: float | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: The exit code a skip carries (None: the ``--no-clobber`` code).
    code: int | None = None
    #: The ``--target-psnr`` (MIN, MAX) that chose ``k``, if any.
    target: tuple[float, float] | None = None
    #: Bytes of the output file written (None when nothing was written).
    size: int | None = None

    @property
    def colors_used(self) -> int:
        """Palette entries that at least one pixel maps to."""
        return sum(1 for c in self.counts if c > 0)

    def as_json(self) -> dict[str, Any]:
        """The JSON Lines record of this input (PSNR ``null`` when the error is zero)."""
        return {
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "error": self.error,
            "k": self.k,
            "colors": self.colors_used,
            "palette": [{"color": c, "count": n} for c, n in zip(self.colors, self.counts,
                                                                   strict=True)],
            "mse": self.mse,
            "psnr": self.psnr if self.psnr is None or self.psnr != float("inf") else None,
            "delta_e": self.delta_e,
            "seconds": round(self.seconds, 4),
            "bytes": self.size,
        } | ({"target_psnr": list(self.target)} if self.target is not None else {})


def make_folders(folders: Iterable[str]) -> list[str]:
    """Create the output folders (``--out-dir`` and its mirrored tree); returns those that
    did not exist, parents first, for :func:`remove_folders`.

    Raises
    ------
    OutputError
        A folder cannot be created.
    """
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
            raise OutputError(f"{folder}: cannot create: {exc.strerror}") from None
        created += reversed(missing)
    return created


def remove_folders(created: Sequence[str]) -> None:
    """Remove the folders :func:`make_folders` created, deepest first, where they are still
    empty (a batch that wrote nothing leaves no empty folders behind)."""
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


# --- tasks (run where the executor runs them) --------------------------------------------


def _failure(job: Job, k: int, exc: BaseException, start: float) -> FileResult:
    from . import memory

    if memory.is_out_of_memory(exc):
        reason = f"{job.src}: {memory.describe(exc)}"
    elif isinstance(exc, ColorquantError):
        reason = str(exc)
    else:
        reason = f"{job.src}: unexpected {type(exc).__name__}: {exc}"
    return FileResult(job.src, job.dst, "failed", k, error=reason,
                      seconds=time.perf_counter() - start)


def _skipped(job: Job, k: int) -> FileResult:
    """The result of an output left alone because it exists (``--no-clobber``)."""
    return FileResult(job.src, job.dst, "skipped", k, error=f"{job.dst}: exists (--no-clobber)")


def quantize_task(task: tuple[Job, QuantizeOptions, SaveOptions, Any]) -> FileResult:
    """Quantize one file (with a given palette or its own) and describe the outcome."""
    from . import core, files

    job, options, save, palette = task
    start = time.perf_counter()
    notes: list[str] = []
    src: Any = job.src
    try:
        if job.template is not None:  # the name needs the palette size: fit it first
            if palette is None:
                data = None
                if src == "-":
                    src, _ = files.input_bytes(src)  # read once, used twice
                    data = src.getvalue()
                palette = core.fit_palette(files.histogram_file(src, job.fmt, options),
                                               options)
                if data is not None:  # reading closed the first copy
                    src = files.named_bytes(data, "<stdin>")
            job = replace(job, dst=job.final_dst(len(palette)))
            if job.no_clobber and os.path.lexists(job.dst):
                return _skipped(job, len(palette))
        result = files.quantize_file(src, job.dst, options=options, save=save, fmt=job.fmt,
                                        plot=job.plot, compare=job.compare,
                                        log=notes.append, palette=palette,
                                        replace=not job.no_clobber)
    except OutputExistsError:  # another process put the output in place first
        return _skipped(job, options.colors)
    except SkippedError as exc:
        label = "<stdin>" if job.src == "-" else job.src
        reason = str(exc) if str(exc).startswith(label) else f"{label}: {exc}"
        return FileResult(job.src, job.dst, "skipped", options.colors, error=reason,
                          code=int(_skip_code(exc)), target=options.target_psnr,
                          seconds=time.perf_counter() - start)
    except BrokenPipeError:  # the reader of standard output went: the command ends quietly
        raise
    except Exception as exc:
        return _failure(job, options.colors, exc, start)
    k = len(result.palette) if options.target_psnr is not None else options.colors
    return FileResult(job.src, job.dst, "ok", k, colors=result.palette.hex(),
                      counts=result.palette.counts.tolist(), mse=float(result.mse),
                      psnr=float(result.psnr),
                      delta_e=float(result.delta_e) if job.delta_e else None,
                      seconds=time.perf_counter() - start,
                      warnings=notes, timings=dict(result.timings),
                      target=options.target_psnr, size=result.size)


def _skip_code(exc: SkippedError) -> ExitCode:
    """The exit code of a deliberate skip."""
    return (ExitCode.QUALITY_TOO_LOW if isinstance(exc, QualityTooLowError)
            else ExitCode.NOT_SMALLER)


def histogram_task(task: tuple[Job, QuantizeOptions]) -> Any:
    """Read one file and return its histogram, or a failed :class:`FileResult`."""
    from . import files

    job, options = task
    start = time.perf_counter()
    try:
        return files.histogram_file(job.src, job.fmt, options)
    except Exception as exc:
        return _failure(job, options.colors, exc, start)


# --- the batch ----------------------------------------------------------------------------


def _rgba(histogram: Any) -> Any:
    """An RGB histogram as RGBA with every pixel opaque."""
    from . import pixels

    if histogram.channels == 4:
        return histogram
    return pixels.Histogram(histogram.keys | 0xFF000000, histogram.counts, 4)


def merge_histograms(parts: list[Any]) -> Any:
    """One histogram of several files; RGBA when any of them is (opaque ones become RGBA).

    The merge is an exact sum, so any grouping (batches here, a tree on a cluster) gives the
    same histogram.
    """
    from . import pixels

    if len({h.channels for h in parts}) > 1:
        parts = [_rgba(h) for h in parts]
    return pixels.merge(parts) if len(parts) > 1 else parts[0]




def _sent(job: Job, executor: Executor) -> Job:
    """The job as the executor's workers must see it: absolute paths where they need them."""
    if not executor.absolute_paths:
        return job
    from . import imagefile

    def absolute(path: str | None) -> str | None:
        return path if path is None or imagefile.is_stdio(path) else os.path.abspath(path)

    return replace(job, src=absolute(job.src), dst=absolute(job.dst),
                   plot=absolute(job.plot), compare=absolute(job.compare))


def _as_planned(result: FileResult, job: Job, sent: Job) -> FileResult:
    """A result of ``sent`` told with the paths of ``job`` (the names the user gave)."""
    if sent == job:
        return result
    names = sorted({(getattr(sent, f), getattr(job, f)) for f in ("src", "dst", "plot", "compare")
                    if getattr(sent, f) != getattr(job, f)}, key=lambda pair: -len(pair[0]))

    def told(text: str) -> str:
        for absolute, given in names:
            text = text.replace(absolute, given)
        return text

    return replace(result, input=job.src, output=job.dst,
                   error=None if result.error is None else told(result.error),
                   warnings=[told(w) for w in result.warnings])


def fit_shared(jobs: Sequence[Job], options: QuantizeOptions, workers: Executor, *,
               step: Callable[[], None] | None = None, fail_fast: bool = False,
               ) -> tuple[Any, dict[str, FileResult]]:
    """One palette fitted to the merged histograms of every readable input.

    Returns the palette (``None`` when no input could be read) and the failed inputs by
    source path. The histograms are merged where the executor runs them (on a cluster, by a
    tree of pairwise merges), and only the merged one is fitted, here. Images with
    transparency make the shared palette RGBA (opaque images then use its opaque colors).
    With ``fail_fast`` reading stops at the first failure.
    """
    from . import core

    sent = [_sent(job, workers) for job in jobs]
    shared = workers.share(options)
    notes, merged_value = workers.reduce(histogram_task, ((j, shared) for j in sent),
                                         merge=merge_histograms, returned=FileResult, done=step)
    failed: dict[str, FileResult] = {}
    for job, sent_job, outcome in zip(jobs, sent, notes, strict=False):
        if outcome is not None:
            failed[job.src] = _as_planned(outcome, job, sent_job)
            if fail_fast:
                workers.stop()
                return None, failed
    merged = merged_value()
    if merged is None:
        return None, failed
    try:
        return core.fit_palette(merged, options), failed
    except QualityTooLowError as exc:  # the target holds for all inputs together: skip all
        for job in jobs:
            failed.setdefault(job.src, FileResult(
                job.src, job.dst, "skipped", options.colors, error=f"shared palette: {exc}",
                code=int(ExitCode.QUALITY_TOO_LOW), target=options.target_psnr))
        return None, failed


def run(jobs: Sequence[Job], options: QuantizeOptions, workers: Executor, *,
        save: SaveOptions | None = None, palette: Any = None,
        failed: dict[str, FileResult] | None = None, no_clobber: bool = False,
        step: Callable[[], None] | None = None) -> Iterator[FileResult]:
    """Quantize every job (each with its own palette, or all with ``palette``) and write it
    as ``save`` says (the defaults when not given), in order.

    Inputs in ``failed`` (from :func:`fit_shared`) are reported, not run again. With
    ``no_clobber`` an existing output is skipped, untouched. ``step`` is called once per
    input, as its task finishes.
    """
    failed = failed or {}
    todo: list[Job] = []
    ready: dict[str, FileResult] = {}
    for job in jobs:
        if job.src in failed:
            ready[job.src] = failed[job.src]
        elif no_clobber and job.template is not None:
            todo.append(replace(job, no_clobber=True))  # its final name is known later
        elif no_clobber and job.dst != "-" and os.path.lexists(job.dst):
            ready[job.src] = _skipped(job, options.colors)  # saves the work; the write decides
        else:
            todo.append(replace(job, no_clobber=True) if no_clobber else job)
    sent = {job.src: _sent(job, workers) for job in todo}
    shared = [workers.share(value) for value in (options, save or SaveOptions(), palette)]
    results = workers.imap(quantize_task, ((sent[j.src], *shared) for j in todo), done=step)
    for job in jobs:
        if job.src in ready:
            if step is not None:
                step()
            yield ready[job.src]
        else:
            yield _as_planned(next(results), job, sent[job.src])


class BatchRun:
    """One batch: iterate it for the result of every input, in input order.

    Fits the shared palette first when asked, then quantizes; with ``fail_fast`` it stops
    after the first failure and counts the inputs never run in :attr:`not_run`.
    :attr:`palette` is the palette every image was mapped to (given or shared), else ``None``.
    ``save_palette`` writes the palette of the batch (given or shared) before any image is
    written; with neither, the batch must be one input, and its own palette is written after
    its image (:func:`colorquant.plan.prepare` makes a lone input file shared, so only
    standard input, which can be read once, comes to that). Raises
    :class:`~colorquant.errors.PoolError` or :class:`~colorquant.errors.ClusterError` when a
    process dies, and :class:`~colorquant.errors.PaletteError` when ``save_palette`` cannot
    be written.
    """

    def __init__(self, jobs: Sequence[Job], options: QuantizeOptions, *, executor: Executor,
                 save: SaveOptions | None = None, palette: Any = None,
                 shared_palette: bool = False,
                 save_palette: str | None = None, fail_fast: bool = False,
                 no_clobber: bool = False, progress: Callable[[], None] | None = None) -> None:
        if (save_palette is not None and len(jobs) > 1 and palette is None
                and not shared_palette):
            raise ValueError("save_palette with several inputs needs shared_palette or a "
                             "palette: each input would have its own")
        self.jobs = list(jobs)
        self.options = options
        #: How every output is written (the defaults when not given).
        self.save = save or SaveOptions()
        self.executor = executor
        self.palette = palette
        self.shared_palette = shared_palette
        self.save_palette = save_palette
        self.fail_fast = fail_fast
        self.no_clobber = no_clobber
        self.progress = progress
        #: Inputs never started because the batch stopped early (``fail_fast``).
        self.not_run = 0

    def __iter__(self) -> Iterator[FileResult]:
        from . import palettefile

        jobs, executor = self.jobs, self.executor
        failed = None
        if self.shared_palette:
            self.palette, failed = fit_shared(jobs, self.options, executor,
                                              step=self.progress, fail_fast=self.fail_fast)
            if self.palette is None or (self.fail_fast and failed):
                # nothing to map to (no input readable), or fail_fast after a failed read
                failed = failed or {}
                yield from (failed[j.src] for j in jobs if j.src in failed)
                self.not_run = len(jobs) - len(failed)
                return
        # a generator: no task starts before its first result is asked for
        results = run(jobs, self.options, executor, save=self.save, palette=self.palette,
                      failed=failed, no_clobber=self.no_clobber, step=self.progress)
        unsaved = self.save_palette
        result = None
        done = 0
        while True:
            # The one place the palette is saved, as soon as it is known: before the first
            # task when the batch has one, else after the lone image fitted on its own.
            if unsaved is not None and (palette := self._to_save(result)) is not None:
                palettefile.write_palette(palette, unsaved)
                unsaved = None
            result = next(results, None)
            if result is None:
                return
            done += 1
            yield result
            if result.status == "failed" and self.fail_fast:
                self.not_run = len(jobs) - done
                executor.stop()
                return

    def _to_save(self, last: FileResult | None) -> Any:
        """The palette ``save_palette`` gets, or ``None`` while it is not known: the batch's
        palette, else that of the lone input's written image."""
        from . import palettefile

        if self.palette is not None:
            return self.palette
        if last is not None and last.status == "ok":
            return palettefile.palette_from_hex(last.colors, last.counts)
        return None
