"""Many files in one call: plan the outputs, run them in worker processes, fit shared palettes.

The plan (:func:`plan`) turns inputs, folders and a name template into jobs and refuses a
command line that would write one output twice or over an input. :class:`Workers` runs jobs in
processes (or in this process for one worker) and yields results in input order, so the
outputs and reports do not depend on the number of workers. Nothing here prints or exits.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import string
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .errors import ColorquantError
from .options import QuantizeOptions

#: The default output name: ``photo.jpg`` → ``photo-16c.png``.
DEFAULT_NAME = "{stem}-{k}c.{ext}"
#: Fields of a ``--name`` template.
NAME_FIELDS = ("stem", "suffix", "ext", "k")
#: Merge buffered histograms once they hold this many distinct colors (bounds memory).
MERGE_EVERY = 1 << 22


class PlanError(ColorquantError):
    """The inputs and naming options do not make a valid batch (a usage error)."""


@dataclass(frozen=True)
class Job:
    """One input file and the output it will be written to."""

    src: str
    dst: str
    fmt: str
    plot: str | None = None
    compare: str | None = None


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
        }


# --- planning -----------------------------------------------------------------------------


def check_name_template(template: str) -> None:
    """Refuse templates with unknown fields, path separators or an empty result."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise PlanError(f"--name {template!r}: {exc}") from None
    unknown = [f for f in fields if f not in NAME_FIELDS]
    if unknown:
        raise PlanError(f"--name {template!r}: unknown field {{{unknown[0]}}} "
                        f"(use {', '.join('{' + f + '}' for f in NAME_FIELDS)})")
    sample = render_name(template, "x.jpg", 16, "png")
    if "/" in sample or os.sep in sample or sample in ("", ".", ".."):
        raise PlanError(f"--name {template!r}: must be a file name, not a path")


def render_name(template: str, src: str, k: int, ext: str) -> str:
    """The output file name of ``src`` from a template (fields: stem, suffix, ext, k)."""
    path = Path(src)
    try:
        return template.format(stem=path.stem, suffix=path.suffix.lstrip("."), ext=ext, k=k)
    except (ValueError, KeyError, IndexError) as exc:
        raise PlanError(f"--name {template!r}: {exc}") from None


def _is_image_name(name: str) -> bool:
    from . import io

    return not name.startswith(".") and Path(name).suffix.lower() in io.FORMATS


def expand(inputs: Sequence[str], *, recursive: bool, skip: str | None = None,
           ) -> list[tuple[str, Path]]:
    """Every input file with its folder relative to the input it came from.

    Folders are walked (when ``recursive``) in sorted order; hidden files and folders, files
    without an image extension and the folder ``skip`` (the output folder) are left out.
    """
    found: list[tuple[str, Path]] = []
    skip_real = os.path.realpath(skip) if skip is not None else None
    for item in inputs:
        if not (recursive and os.path.isdir(item)):
            found.append((item, Path()))
            continue
        for folder, dirs, files in os.walk(item):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and os.path.realpath(os.path.join(folder, d)) != skip_real)
            relative = Path(os.path.relpath(folder, item))
            found.extend((os.path.join(folder, f), relative)
                         for f in sorted(files) if _is_image_name(f))
    return found


def plan(inputs: Sequence[str], *, k: int, output: str | None = None,
         out_dir: str | None = None, name: str | None = None, fmt: str | None = None,
         recursive: bool = False) -> list[Job]:
    """The job of each input, with its output path and format.

    Without ``output`` or ``out_dir`` outputs go beside their inputs; a folder walked with
    ``recursive`` is mirrored under ``out_dir``.

    Raises
    ------
    PlanError
        A folder without ``out_dir``, no images found, two inputs with one output, an output
        that is an input, a bad template or an unknown output extension.
    """
    from . import io

    template = name or DEFAULT_NAME
    check_name_template(template)
    if list(inputs).count(io.STDIO) > 1:
        raise PlanError("standard input (-) can be read only once")
    if recursive and out_dir is None and any(os.path.isdir(i) for i in inputs):
        raise PlanError("a folder input needs --out-dir (its tree is mirrored there)")
    ext = io.EXTENSIONS[io.output_format("x.png", fmt)]
    found = expand(inputs, recursive=recursive, skip=out_dir)
    if not found:
        raise PlanError("no images found in the input folders")
    jobs: list[Job] = []
    owner: dict[str, str] = {}
    sources = {os.path.realpath(src) for src, _ in found if src != io.STDIO}
    # (device, inode) of each input, so a hard link to an input is refused too
    inodes = {_inode(src) for src, _ in found if src != io.STDIO} - {None}
    for src, relative in found:
        if output is not None:
            dst = output
        elif src == io.STDIO and out_dir is None:
            dst = io.STDIO  # a filter: standard input to standard output
        else:
            src_name = "stdin" if src == io.STDIO else src
            filename = render_name(template, src_name, k, ext)
            folder = Path(out_dir) / relative if out_dir is not None else Path(src).parent
            dst = os.path.normpath(folder / filename)
        try:
            out_format = io.output_format(dst, fmt)
        except ColorquantError as exc:
            raise PlanError(str(exc)) from None
        if io.is_stdio(dst):
            jobs.append(Job(src, dst, out_format))
            continue
        real = os.path.realpath(dst)
        if real in sources or _inode(dst) in inodes:
            raise PlanError(f"{dst}: output is the same file as the input")
        if real in owner:
            raise PlanError(f"{owner[real]} and {src} would both be written to {dst}")
        owner[real] = src
        jobs.append(Job(src, dst, out_format))
    return jobs


def _inode(path: str) -> tuple[int, int] | None:
    """The (device, inode) of an existing file, or None."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def check_side_outputs(jobs: Sequence[Job], extras: dict[str, str | None]) -> None:
    """Refuse a side output (``--plot``, ``--compare``, ``--save-palette``) that is an input,
    an image output or another side output: it would be overwritten.

    Raises
    ------
    PlanError
        Two files of the command line resolve to the same path.
    """
    from . import io

    taken: dict[str, str] = {}
    for job in jobs:
        if not io.is_stdio(job.src):
            taken.setdefault(os.path.realpath(job.src), f"the input {job.src}")
    for job in jobs:
        if not io.is_stdio(job.dst):
            taken.setdefault(os.path.realpath(job.dst), f"the output {job.dst}")
    for option, path in extras.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in taken:
            raise PlanError(f"{path}: {option} would overwrite {taken[real]}")
        taken[real] = f"the {option} file"


# --- workers ------------------------------------------------------------------------------


_limits: Any = None
_busy = False


def _stop(signum: int, frame: object) -> None:
    """SIGTERM in a worker: end now when idle; when busy, unwind first (SystemExit runs
    atomic_write's clean-up of its temporary file), then end in :func:`_guarded`."""
    if not _busy:
        os._exit(130)
    raise SystemExit(130)


def _guarded(function: Callable[[Any], Any], item: Any) -> Any:
    """Run one task in a worker; a SIGTERM ends the worker once its files are cleaned up."""
    global _busy
    _busy = True
    try:
        return function(item)
    except SystemExit:
        os._exit(130)
    finally:
        _busy = False


def _init_worker() -> None:
    """Worker set-up: the parent handles Ctrl-C; one BLAS/OpenMP thread per worker."""
    global _limits
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    from threadpoolctl import threadpool_limits

    _limits = threadpool_limits(limits=1)


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class WorkerError(ColorquantError):
    """A worker process died (killed, out of memory): the batch cannot go on."""


def _unbroken(results: Iterator[Any]) -> Iterator[Any]:
    from concurrent.futures.process import BrokenProcessPool

    try:
        yield from results
    except BrokenProcessPool:
        raise WorkerError("a worker process died unexpectedly (killed, or out of memory?); "
                          "outputs written so far are complete") from None


class Workers:
    """Worker processes (none for one worker), used as a context manager.

    ``imap`` yields results in the order of its items, so outputs and reports do not depend
    on the number of workers. Leaving the context normally waits for the workers; leaving it
    by an exception (Ctrl-C, SIGTERM, ``--fail-fast``) cancels what has not started and
    stops the busy workers, each removing its temporary file first: no partial output is
    left.
    """

    def __init__(self, count: int, *, preload: Sequence[str] = ("colorquant.batch",)) -> None:
        self.count = max(1, count)
        self._preload = list(preload)
        self._executor: Any = None

    def imap(self, function: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        if self.count == 1:
            return map(function, items)
        if self._executor is None:
            import importlib
            from concurrent.futures import ProcessPoolExecutor

            # fork: workers start in milliseconds with the modules already imported (before
            # any k-means ran here, so no OpenMP state is copied); spawn where fork is unsafe.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            for module in self._preload:
                importlib.import_module(module)
            self._executor = ProcessPoolExecutor(
                self.count, mp_context=multiprocessing.get_context(method),
                initializer=_init_worker)
        return _unbroken(self._executor.map(partial(_guarded, function), items))

    def stop(self) -> None:
        """Cancel pending work and end the workers (busy ones clean up first)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # The executor has no public way to stop running tasks before Python 3.14.
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()
        executor.shutdown(wait=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._executor is None:
            return
        if exc_type is None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        else:
            self.stop()


# --- tasks (run in the workers) -----------------------------------------------------------


def _failure(job: Job, k: int, exc: BaseException, start: float) -> FileResult:
    reason = str(exc) if isinstance(exc, ColorquantError) else (
        f"{job.src}: unexpected {type(exc).__name__}: {exc}")
    return FileResult(job.src, job.dst, "failed", k, error=reason,
                      seconds=time.perf_counter() - start)


def quantize_task(task: tuple[Job, QuantizeOptions, Any]) -> FileResult:
    """Quantize one file (with a given palette or its own) and describe the outcome."""
    from . import pipeline

    job, options, palette = task
    start = time.perf_counter()
    notes: list[str] = []
    try:
        result = pipeline.quantize_file(job.src, job.dst, options=options, fmt=job.fmt,
                                        plot=job.plot, compare=job.compare,
                                        log=notes.append, palette=palette)
    except Exception as exc:
        return _failure(job, options.colors, exc, start)
    return FileResult(job.src, job.dst, "ok", options.colors, colors=result.palette.hex(),
                      counts=result.palette.counts.tolist(), mse=float(result.mse),
                      psnr=float(result.psnr), delta_e=float(result.delta_e),
                      seconds=time.perf_counter() - start,
                      warnings=notes, timings=dict(result.timings))


def histogram_task(task: tuple[Job, QuantizeOptions]) -> Any:
    """Read one file and return its histogram, or a failed :class:`FileResult`."""
    from . import pipeline

    job, options = task
    start = time.perf_counter()
    try:
        return pipeline.histogram_file(job.src, job.fmt, options)
    except Exception as exc:
        return _failure(job, options.colors, exc, start)


# --- the batch ----------------------------------------------------------------------------


def _rgba(histogram: Any) -> Any:
    """An RGB histogram as RGBA with every pixel opaque."""
    from . import pixels

    if histogram.channels == 4:
        return histogram
    return pixels.Histogram(histogram.keys | 0xFF000000, histogram.counts, 4)


class _Merger:
    """Merges histograms as they arrive, in bounded batches (never all images at once)."""

    def __init__(self) -> None:
        self.total: Any = None
        self._pending: list[Any] = []
        self._size = 0

    def add(self, histogram: Any) -> None:
        self._pending.append(histogram)
        self._size += len(histogram)
        if self._size >= MERGE_EVERY:
            self._flush()

    def _flush(self) -> None:
        from . import pixels

        parts = ([self.total] if self.total is not None else []) + self._pending
        if len({h.channels for h in parts}) > 1:
            parts = [_rgba(h) for h in parts]
        self.total = pixels.merge(parts) if len(parts) > 1 else parts[0]
        self._pending, self._size = [], 0

    def result(self) -> Any:
        if self._pending:
            self._flush()
        return self.total


def fit_shared(jobs: Sequence[Job], options: QuantizeOptions, workers: Workers, *,
               step: Callable[[], None] | None = None, fail_fast: bool = False,
               ) -> tuple[Any, dict[str, FileResult]]:
    """One palette fitted to the merged histograms of every readable input.

    Returns the palette (``None`` when no input could be read) and the failed inputs by
    source path. Images with transparency make the shared palette RGBA (opaque images then
    use its opaque colors). With ``fail_fast`` reading stops at the first failure.
    """
    from . import pipeline

    merger = _Merger()
    failed: dict[str, FileResult] = {}
    for job, outcome in zip(jobs, workers.imap(histogram_task, ((j, options) for j in jobs)),
                            strict=False):
        if step is not None:
            step()
        if isinstance(outcome, FileResult):
            failed[job.src] = outcome
            if fail_fast:
                workers.stop()
                break
        else:
            merger.add(outcome)
    merged = merger.result()
    if merged is None or (fail_fast and failed):
        return None, failed
    return pipeline.fit_palette(merged, options), failed


def run(jobs: Sequence[Job], options: QuantizeOptions, workers: Workers, *,
        palette: Any = None, failed: dict[str, FileResult] | None = None,
        no_clobber: bool = False) -> Iterator[FileResult]:
    """Quantize every job (each with its own palette, or all with ``palette``), in order.

    Inputs in ``failed`` (from :func:`fit_shared`) are reported, not run again. With
    ``no_clobber`` an existing output is skipped, untouched.
    """
    failed = failed or {}
    todo: list[Job] = []
    ready: dict[str, FileResult] = {}
    for job in jobs:
        if job.src in failed:
            ready[job.src] = failed[job.src]
        elif no_clobber and job.dst != "-" and os.path.lexists(job.dst):
            ready[job.src] = FileResult(job.src, job.dst, "skipped", options.colors,
                                        error=f"{job.dst}: exists (--no-clobber)")
        else:
            todo.append(job)
    results = workers.imap(quantize_task, ((j, options, palette) for j in todo))
    for job in jobs:
        yield ready[job.src] if job.src in ready else next(results)
