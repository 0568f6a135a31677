"""Many files in one call: plan the outputs, run them in worker processes, fit shared palettes.

The plan (:func:`plan`) turns inputs, folders and a name template into jobs and refuses a
command line that would write one output twice or over an input. :class:`Workers` runs jobs in
processes (or in this process for one worker) and yields results in input order, so the
outputs and reports do not depend on the number of workers. Nothing here prints or exits.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import string
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from .errors import ColorquantError, OutputExistsError, QualityTooLowError, SkippedError
from .options import QuantizeOptions
from .report import ExitCode

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
    #: The name template when ``{k}`` is known only after the fit (``--target-psnr``): the
    #: task renders the final name, and ``dst`` holds the name with ``{k}`` = ``-k``.
    template: str | None = None
    #: Never replace an existing output (``--no-clobber``): decided when it is put in place,
    #: and checked first for a name rendered by the task.
    no_clobber: bool = False
    #: Report the mean ΔE2000 (``--json``, ``-v``): it costs more than the mapping, so runs
    #: that print nothing of it skip it.
    delta_e: bool = False

    def final_dst(self, k: int) -> str:
        """The output path once the palette size ``k`` is known."""
        if self.template is None:
            return self.dst
        from . import formats, imagefile

        src = "stdin" if self.src == imagefile.STDIO else self.src
        name = render_name(self.template, src, k, formats.get(self.fmt).extension)
        return os.path.join(os.path.dirname(self.dst), name)


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
        } | ({"target_psnr": list(self.target)} if self.target is not None else {})


# --- planning -----------------------------------------------------------------------------


#: Longest file name (bytes) on common file systems; no field of a template may be wider.
NAME_MAX = 255


def check_name_template(template: str) -> None:
    """Refuse templates with unknown fields, widths beyond a file name, path separators or an
    empty result."""
    try:
        parsed = [(f, spec) for _, f, spec, _ in string.Formatter().parse(template)
                  if f is not None]
    except ValueError as exc:
        raise PlanError(f"--name {template!r}: {exc}") from None
    unknown = [f for f, _ in parsed if f not in NAME_FIELDS]
    if unknown:
        raise PlanError(f"--name {template!r}: unknown field {{{unknown[0]}}} "
                        f"(use {', '.join('{' + f + '}' for f in NAME_FIELDS)})")
    # before any rendering: "{k:>999999999}" would build a string of a gigabyte
    widths = [int(n) for _, spec in parsed for n in re.findall(r"\d+", spec or "")]
    if widths and max(widths) > NAME_MAX:
        raise PlanError(f"--name {template!r}: width {max(widths)} is longer than a file name "
                        f"({NAME_MAX} bytes)")
    sample = render_name(template, "x.jpg", 16, "png")
    if "/" in sample or os.sep in sample:
        raise PlanError(f"--name {template!r}: must be a file name, not a path")


def render_name(template: str, src: str, k: int, ext: str) -> str:
    """The output file name of ``src`` from a template (fields: stem, suffix, ext, k).

    Raises :class:`PlanError` when the result is not a file name (empty, ``.``, ``..``, or
    with a NUL), as ``{suffix}`` is for an input without one.
    """
    path = Path(src)
    try:
        name = template.format(stem=path.stem, suffix=path.suffix.lstrip("."), ext=ext, k=k)
    except (ValueError, KeyError, IndexError) as exc:
        raise PlanError(f"--name {template!r}: {exc}") from None
    if name in ("", ".", "..") or "\0" in name:
        raise PlanError(f"--name {template!r}: gives {name!r} for {src}, not a file name")
    return name


def _is_image_name(name: str) -> bool:
    from . import formats

    return not name.startswith(".") and Path(name).suffix.lower() in formats.BY_EXTENSION


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
         recursive: bool = False, defer_k: bool = False) -> list[Job]:
    """The job of each input, with its output path and format.

    Without ``output`` or ``out_dir`` outputs go beside their inputs; a folder walked with
    ``recursive`` is mirrored under ``out_dir``. With ``defer_k`` (the fit decides the palette
    size) a name with ``{k}`` is rendered by the task; the checks here use ``{k}`` = ``k``.

    Raises
    ------
    PlanError
        A folder without ``out_dir``, no images found, two inputs with one output, an output
        that is an input, a bad template or an unknown output extension.
    """
    from . import formats, imagefile

    template = name or DEFAULT_NAME
    check_name_template(template)
    if list(inputs).count(imagefile.STDIO) > 1:
        raise PlanError("standard input (-) can be read only once")
    if recursive and out_dir is None and any(os.path.isdir(i) for i in inputs):
        raise PlanError("a folder input needs --out-dir (its tree is mirrored there)")
    ext = formats.get(formats.output_format("x.png", fmt)).extension
    found = expand(inputs, recursive=recursive, skip=out_dir)
    if not found:
        raise PlanError("no images found in the input folders")
    jobs: list[Job] = []
    owner: dict[str, str] = {}
    sources = {os.path.realpath(src) for src, _ in found if src != imagefile.STDIO}
    # (device, inode) of each input, so a hard link to an input is refused too
    inodes = {_inode(src) for src, _ in found if src != imagefile.STDIO} - {None}
    for src, relative in found:
        if output is not None:
            dst = output
        elif src == imagefile.STDIO and out_dir is None:
            dst = imagefile.STDIO  # a filter: standard input to standard output
        else:
            src_name = "stdin" if src == imagefile.STDIO else src
            filename = render_name(template, src_name, k, ext)
            folder = Path(out_dir) / relative if out_dir is not None else Path(src).parent
            dst = os.path.normpath(folder / filename)
        try:
            out_format = formats.output_format(dst, fmt)
        except ColorquantError as exc:
            raise PlanError(str(exc)) from None
        if imagefile.is_stdio(dst):
            jobs.append(Job(src, dst, out_format))
            continue
        deferred = (template if defer_k and output is None and "{k" in template else None)
        real = os.path.realpath(dst)
        if real in sources or _inode(dst) in inodes:
            raise PlanError(f"{dst}: output is the same file as the input")
        if real in owner:
            raise PlanError(f"{owner[real]} and {src} would both be written to {dst}")
        owner[real] = src
        jobs.append(Job(src, dst, out_format, template=deferred))
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
    from . import imagefile

    taken: dict[str, str] = {}
    for job in jobs:
        if not imagefile.is_stdio(job.src):
            taken.setdefault(os.path.realpath(job.src), f"the input {job.src}")
    for job in jobs:
        if not imagefile.is_stdio(job.dst):
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
    """Worker set-up: the parent handles Ctrl-C; one BLAS/OpenMP and mapping thread per
    worker (the workers already use every CPU)."""
    global _limits
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    import numpy  # noqa: F401  (load its BLAS first: the limit covers only loaded libraries)
    from threadpoolctl import threadpool_limits

    from . import dither

    _limits = threadpool_limits(limits=1)
    dither.limit_threads(1)


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


# --- executors ----------------------------------------------------------------------------


class Executor(Protocol):
    """Where the tasks of a batch run: this process, local worker processes or a Dask
    cluster (:class:`colorquant.cluster.DaskExecutor`), one strategy behind four calls.

    ``imap`` yields the results in the order of its items (so outputs and reports never
    depend on where tasks ran), calling ``done()`` once per finished task; ``reduce`` runs a
    task per item and folds its results with ``merge`` where they are (only results of type
    ``returned`` come back, one per item in order, ``None`` for a folded one), the folded value
    coming from the returned callable once the iterator is exhausted; ``share`` hands a value
    that every task uses (the palette) to the workers once; ``stop`` cancels what has not run.
    Leaving the context by an exception stops; leaving it normally waits.
    """

    #: Tasks run where this process's relative paths mean nothing: send absolute paths.
    absolute_paths: bool

    def imap(self, function: Callable[[Any], Any], items: Iterable[Any], *,
             done: Callable[[], None] | None = None) -> Iterator[Any]: ...

    def reduce(self, function: Callable[[Any], Any], items: Iterable[Any], *,
               merge: Callable[[list[Any]], Any], returned: type,
               done: Callable[[], None] | None = None,
               ) -> tuple[Iterator[Any], Callable[[], Any]]: ...

    def share(self, value: Any) -> Any: ...

    def stop(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, exc_type: object, *rest: object) -> None: ...


def _counted(results: Iterable[Any], done: Callable[[], None] | None) -> Iterator[Any]:
    for result in results:
        if done is not None:
            done()
        yield result


class _Local:
    """What the executors of this machine share: values are shared as they are, and a
    reduction folds the results here as they arrive, in bounded batches."""

    absolute_paths = False

    def imap(self, function: Callable[[Any], Any], items: Iterable[Any], *,
             done: Callable[[], None] | None = None) -> Iterator[Any]:
        raise NotImplementedError

    def reduce(self, function: Callable[[Any], Any], items: Iterable[Any], *,
               merge: Callable[[list[Any]], Any], returned: type,
               done: Callable[[], None] | None = None,
               ) -> tuple[Iterator[Any], Callable[[], Any]]:
        merger = _Merger(merge)

        def notes() -> Iterator[Any]:
            for outcome in self.imap(function, items, done=done):
                if isinstance(outcome, returned):
                    yield outcome
                else:
                    merger.add(outcome)
                    yield None

        return notes(), merger.result

    def share(self, value: Any) -> Any:
        return value

    def stop(self) -> None:
        """Nothing runs in the background."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        return None


class InProcess(_Local):
    """Every task in this process, one after the other (standard input and output work)."""

    def imap(self, function: Callable[[Any], Any], items: Iterable[Any], *,
             done: Callable[[], None] | None = None) -> Iterator[Any]:
        return _counted(map(function, items), done)


#: Seconds a stopped worker process has to remove its temporary file before it is killed.
STOP_GRACE = 10.0


class LocalProcesses(_Local):
    """Worker processes on this machine (none for one worker), used as a context manager.

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

    def imap(self, function: Callable[[Any], Any], items: Iterable[Any], *,
             done: Callable[[], None] | None = None) -> Iterator[Any]:
        if self.count == 1:
            return InProcess().imap(function, items, done=done)
        if self._executor is None:
            import importlib
            from concurrent.futures import ProcessPoolExecutor

            # fork: workers start in milliseconds with the modules already imported (before
            # any k-means ran here, so no OpenMP state is copied); spawn where fork is unsafe.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            from . import memory

            for module in self._preload:
                if module == "sklearn.cluster":
                    memory.load_fit_backend()  # under ulimit -v: refuse rather than hang
                importlib.import_module(module)
            self._executor = ProcessPoolExecutor(
                self.count, mp_context=multiprocessing.get_context(method),
                initializer=_init_worker)
        return _counted(_unbroken(self._executor.map(partial(_guarded, function), items)),
                        done)

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
            process.join(STOP_GRACE)
            if process.is_alive():  # a SIGTERM that came while it was still starting up
                process.kill()
                process.join()
        executor.shutdown(wait=True)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._executor is None:
            return
        if exc_type is None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        else:
            self.stop()


#: The name of :class:`LocalProcesses` before executors were strategies.
Workers = LocalProcesses


# --- tasks (run in the workers) -----------------------------------------------------------


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


def quantize_task(task: tuple[Job, QuantizeOptions, Any]) -> FileResult:
    """Quantize one file (with a given palette or its own) and describe the outcome."""
    from . import core, files

    job, options, palette = task
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
        result = files.quantize_file(src, job.dst, options=options, fmt=job.fmt,
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
    except Exception as exc:
        return _failure(job, options.colors, exc, start)
    k = len(result.palette) if options.target_psnr is not None else options.colors
    return FileResult(job.src, job.dst, "ok", k, colors=result.palette.hex(),
                      counts=result.palette.counts.tolist(), mse=float(result.mse),
                      psnr=float(result.psnr),
                      delta_e=float(result.delta_e) if job.delta_e else None,
                      seconds=time.perf_counter() - start,
                      warnings=notes, timings=dict(result.timings),
                      target=options.target_psnr)


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


class _Merger:
    """Merges histograms as they arrive, in bounded batches (never all images at once)."""

    def __init__(self, merge: Callable[[list[Any]], Any] = merge_histograms) -> None:
        self.total: Any = None
        self._merge = merge
        self._pending: list[Any] = []
        self._size = 0

    def add(self, histogram: Any) -> None:
        self._pending.append(histogram)
        self._size += len(histogram)
        if self._size >= MERGE_EVERY:
            self._flush()

    def _flush(self) -> None:
        parts = ([self.total] if self.total is not None else []) + self._pending
        self.total = self._merge(parts)
        self._pending, self._size = [], 0

    def result(self) -> Any:
        if self._pending:
            self._flush()
        return self.total


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
        palette: Any = None, failed: dict[str, FileResult] | None = None,
        no_clobber: bool = False, step: Callable[[], None] | None = None,
        ) -> Iterator[FileResult]:
    """Quantize every job (each with its own palette, or all with ``palette``), in order.

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
    shared_options, shared_palette = workers.share(options), workers.share(palette)
    results = workers.imap(quantize_task, ((sent[j.src], shared_options, shared_palette)
                                           for j in todo), done=step)
    for job in jobs:
        if job.src in ready:
            if step is not None:
                step()
            yield ready[job.src]
        else:
            yield _as_planned(next(results), job, sent[job.src])


class BatchRun:
    """One batch: iterate it for the result of every input, in input order.

    Fits the shared palette first when asked (and saves it), then quantizes; with
    ``fail_fast`` it stops after the first failure and counts the inputs never run in
    :attr:`not_run`. :attr:`palette` is the palette every image was mapped to (given or
    shared), else ``None``. Raises :class:`WorkerError` when a worker dies, and
    :class:`~colorquant.errors.PaletteError` when ``save_palette`` cannot be written (before
    any image is, unless the palette is that of a lone image fitted on its own).
    """

    def __init__(self, jobs: Sequence[Job], options: QuantizeOptions, *, executor: Executor,
                 palette: Any = None, shared_palette: bool = False,
                 save_palette: str | None = None, fail_fast: bool = False,
                 no_clobber: bool = False, progress: Callable[[], None] | None = None) -> None:
        self.jobs = list(jobs)
        self.options = options
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
        if self.save_palette is not None and self.palette is not None:
            palettefile.write_palette(self.palette, self.save_palette)
        if self.shared_palette and (self.palette is None or (self.fail_fast and failed)):
            # nothing to map to (no input readable), or fail_fast after a failed read
            failed = failed or {}
            yield from (failed[j.src] for j in jobs if j.src in failed)
            self.not_run = len(jobs) - len(failed)
            return
        result = None
        written = False
        for done, result in enumerate(run(jobs, self.options, executor, palette=self.palette,
                                          failed=failed, no_clobber=self.no_clobber,
                                          step=self.progress), start=1):
            yield result
            written = written or result.status == "ok"
            if result.status == "failed" and self.fail_fast:
                self.not_run = len(jobs) - done
                executor.stop()
                return
        if self.save_palette is not None and self.palette is None and written:
            # one input, fitted on its own: save the palette it got
            assert result is not None
            palettefile.write_palette(palettefile.palette_from_hex(result.colors, result.counts),
                                      self.save_palette)


def run_batch(jobs: Sequence[Job], options: QuantizeOptions, *, executor: Executor,
              palette: Any = None, shared_palette: bool = False, save_palette: str | None = None,
              fail_fast: bool = False, no_clobber: bool = False,
              progress: Callable[[], None] | None = None) -> BatchRun:
    """The batch of ``jobs`` (from :func:`plan`) on ``executor``; iterate it for the results.

    ``progress`` is called once per task as it finishes (twice per input with
    ``shared_palette``: reading, then mapping). See :class:`BatchRun`.
    """
    return BatchRun(jobs, options, executor=executor, palette=palette,
                    shared_palette=shared_palette, save_palette=save_palette,
                    fail_fast=fail_fast, no_clobber=no_clobber, progress=progress)


#: A batch fitting more than 64 colors loads the compiled assignment of the fit
#: (:func:`colorquant.fit.load_kernel`, about 0.4 s once) from this many files per process:
#: it saves about 0.09 s a small photo at k=256.
KERNEL_FILES_PER_PROCESS = 8


def local_executor(jobs: int | None, plan: Sequence[Job], *, fitting: bool = True,
                   colors: int = 0) -> LocalProcesses:
    """The executor of this machine for ``plan``: ``jobs`` worker processes (default: the
    CPUs), no more than inputs, and none when a job reads standard input or writes standard
    output (those stay with this process). ``fitting`` preloads scikit-learn in the workers,
    and with enough files to fit at ``colors`` > 64, the fit's compiled assignment."""
    from . import imagefile

    count = min(jobs or default_workers(), len(plan))
    if any(imagefile.is_stdio(job.src) or imagefile.is_stdio(job.dst) for job in plan):
        count = 1
    preload = ["colorquant.batch", "sklearn.cluster"] if fitting else ["colorquant.batch"]
    if fitting and len(plan) >= KERNEL_FILES_PER_PROCESS * count:
        from . import fit

        if colors > fit.FAST_COLORS:
            fit.load_kernel()  # here, before the workers fork: each inherits it
    return LocalProcesses(count, preload=preload)
