"""Where a batch's tasks run: in this process, in a local process pool, or on a Dask
cluster's workers: one strategy (:class:`Executor`) behind four calls, with one set-up for
every process that runs files side by side (:func:`single_threaded`).

Results always come back in input order, so outputs and reports never depend on where tasks
ran. The Dask part needs the optional ``distributed`` package (``pip install
'colorquant[dask]'``), imported only by :func:`connect`. Nothing here prints or exits.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, redirect_stderr
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ClusterError, PoolError
from .memory import available_cpus

if TYPE_CHECKING:
    from .plan import Job

#: Merge buffered histograms once they hold this many distinct colors (bounds memory).
MERGE_EVERY = 1 << 22


class _Merger:
    """Merges histograms as they arrive, in bounded batches (never all images at once)."""

    def __init__(self, merge: Callable[[list[Any]], Any]) -> None:
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


class Executor(Protocol):
    """Where the tasks of a batch run: this process, a local process pool or a Dask cluster
    (:class:`DaskExecutor`), one strategy behind four calls.

    ``imap`` yields the results in the order of its items (so outputs and reports never
    depend on where tasks ran), calling ``done()`` once per finished task; ``reduce`` runs a
    task per item and folds its results with ``merge`` where they are (only results of type
    ``returned`` come back, one per item in order, ``None`` for a folded one), the folded value
    coming from the returned callable once the iterator is exhausted; ``share`` hands a value
    that every task uses (the palette) to the processes once; ``stop`` cancels what has not run.
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


#: Seconds a stopped pool process has to remove its temporary file before it is killed.
STOP_GRACE = 10.0


class ProcessPool(_Local):
    """A pool of processes on this machine (none for a pool of one), used as a context manager.

    ``imap`` yields results in the order of its items, so outputs and reports do not depend
    on the size of the pool. Leaving the context normally waits for the processes; leaving
    it by an exception (Ctrl-C, SIGTERM, ``--fail-fast``) cancels what has not started and
    stops the busy processes, each removing its temporary file first: no partial output is
    left.
    """

    def __init__(self, count: int, *, preload: Sequence[str] = ("colorquant.batch",)) -> None:
        self.count = max(1, count)
        self._preload = list(preload)
        self._executor: Any = None

    def imap(self, function: Callable[[Any], Any], items: Iterable[Any], *,
             done: Callable[[], None] | None = None) -> Iterator[Any]:
        if self._executor is None and "sklearn.cluster" in self._preload:
            count_cores_once()  # for the fits here and in the processes forked from here
        if self._executor is None and self.count > 1:
            self.count = min(self.count, processes_within_descriptor_limit())
        if self.count == 1:
            return InProcess().imap(function, items, done=done)
        items = list(items)  # the executor submits them all at once anyway
        try:
            if self._executor is None:
                self._executor = self._start()
            results = self._executor.map(partial(_guarded, function), items)
        except OSError:
            # no descriptor or memory to start the processes (ulimit -n, ulimit -u): nothing
            # has run yet, so the files run here, one after the other, as with -j 1
            self.stop()
            self.count = 1
            return InProcess().imap(function, items, done=done)
        return _counted(_unbroken(results), done)

    def _start(self) -> Any:
        import importlib
        from concurrent.futures import ProcessPoolExecutor

        # fork: processes start in milliseconds with the modules already imported (before
        # any k-means ran here, so no OpenMP state is copied); spawn where fork is unsafe.
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        from . import memory

        for module in self._preload:
            if module == "sklearn.cluster":
                memory.load_fit_backend()  # under ulimit -v: refuse rather than hang
            importlib.import_module(module)
        return ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context(method),
                                   initializer=_init_pool_process)

    def stop(self) -> None:
        """Cancel pending work and end the processes (busy ones clean up first)."""
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



# --- the pool's processes -------------------------------------------------------------


_limits: Any = None
_busy = False


def _stop(signum: int, frame: object) -> None:
    """SIGTERM in a pool process: end now when idle; when busy, unwind first (SystemExit runs
    atomic_write's clean-up of its temporary file), then end in :func:`_guarded`.

    Later SIGTERMs are ignored while the task unwinds: raised in the middle of the clean-up
    one would skip the removal of the temporary file. Stopping a pool can send two (the
    pool's own, then the executor's when it sees another process of the pool end); the
    parent's SIGKILL after :data:`STOP_GRACE` still ends a clean-up that hangs."""
    if not _busy:
        os._exit(130)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(130)


def _guarded(function: Callable[[Any], Any], item: Any) -> Any:
    """Run one task in a pool process; a SIGTERM ends it once its files are cleaned up."""
    global _busy
    _busy = True
    try:
        return function(item)
    except SystemExit:
        os._exit(130)
    finally:
        _busy = False


def _init_pool_process() -> None:
    """A pool process's set-up: the parent handles Ctrl-C, SIGTERM cleans up first, and one
    thread per library (the pool already uses every CPU)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    single_threaded()


#: Descriptors of a pool: a pool process holds those of the process that forks it, the
#: pool's pipes (a fixed number) and two for each process (its own and the others' ends);
#: a task opens a few at once (its input, its output's temporary file and folder, a module
#: imported on the way, a library reading /proc).
POOL_DESCRIPTORS = 7
DESCRIPTORS_PER_PROCESS = 2
TASK_DESCRIPTORS = 6


def processes_within_descriptor_limit() -> int:
    """How many pool processes fit under the descriptor limit (``ulimit -n``) with room for
    their tasks, from what this process holds now: a pool that does not fit would fail its
    files with EMFILE. At most 1 means none: the files run in this process."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    try:
        held = len(os.listdir("/proc/self/fd")) - 1  # not the listing's own descriptor
    except OSError:  # no /proc, or no descriptor left to list it with
        return 1 if soft < 64 else sys.maxsize
    room = soft - held - POOL_DESCRIPTORS - TASK_DESCRIPTORS
    return max(1, room // DESCRIPTORS_PER_PROCESS)


def count_cores_once() -> None:
    """Count the physical cores now, for this process and every process it forks.

    scikit-learn asks joblib for the count at its first fit in each process, and joblib
    finds it by running ``lscpu``, then caches it: done here, before a pool or a warm worker
    forks, every fork inherits the count and starts no subprocess (which, under a low
    descriptor limit, fails and prints joblib's traceback). When it cannot be found here
    either (no descriptor left), joblib caches that, silently, and uses the logical CPUs,
    which changes no result: the fit runs on one thread (:func:`colorquant.fit.one_thread`).
    """
    try:
        from joblib import cpu_count

        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            cpu_count(only_physical_cores=True)
    except Exception:  # not even importable here: scikit-learn's own import will say why
        pass


def single_threaded() -> None:
    """Set this process up to run one file at a time beside other processes (a pool process,
    a Dask worker): one BLAS/OpenMP and mapping thread, set once per process (setting it costs
    as much as a small file's task)."""
    global _limits
    if _limits is not None:
        return
    import numpy  # noqa: F401  (load its BLAS first: the limit covers only loaded libraries)
    from threadpoolctl import threadpool_limits

    from . import dither

    _limits = threadpool_limits(limits=1)
    dither.limit_threads(1)


def _unbroken(results: Iterator[Any]) -> Iterator[Any]:
    from concurrent.futures.process import BrokenProcessPool

    try:
        yield from results
    except BrokenProcessPool:
        raise PoolError("a worker process died unexpectedly (killed, or out of memory?); "
                          "outputs written so far are complete") from None


#: A batch fitting more than 64 colors loads the compiled assignment of the fit
#: (:func:`colorquant.fit.load_kernel`) once before the pool forks when it has this many files
#: per process: loading it costs several small files' fits, and the processes inherit it.
KERNEL_FILES_PER_PROCESS = 8


def local_executor(jobs: int | None, plan: Sequence[Job], *, fitting: bool = True,
                   colors: int = 0) -> ProcessPool:
    """The executor of this machine for ``plan``: a pool of ``jobs`` processes (default: the
    CPUs), no more than inputs, and none when a job reads standard input or writes standard
    output (those stay with this process). ``fitting`` preloads scikit-learn in the pool,
    and with enough files to fit at ``colors`` > 64, the fit's compiled assignment."""
    from . import imagefile

    count = min(jobs or available_cpus(), len(plan))
    if any(imagefile.is_stdio(job.src) or imagefile.is_stdio(job.dst) for job in plan):
        count = 1
    preload = ["colorquant.batch", "sklearn.cluster"] if fitting else ["colorquant.batch"]
    if fitting and len(plan) >= KERNEL_FILES_PER_PROCESS * count:
        from . import fit, pixels

        if colors > fit.FAST_COLORS:
            fit.load_kernel()  # here, before the pool forks: each inherits it
            pixels.load_kernel()  # numba is loaded now: the compiled histogram costs nothing
    return ProcessPool(count, preload=preload)


# --- Dask -------------------------------------------------------------------------------


#: Seconds to wait for the scheduler before giving up.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for a first worker of a scheduler that has none.
WORKERS_TIMEOUT = 60.0
#: Tasks in flight per worker thread (keeps every thread fed while results travel).
WINDOW_PER_THREAD = 2
#: Results submitted but not yet yielded, per worker thread: bounds head-of-line buffering.
AHEAD_PER_THREAD = 8


def _one_thread(function: Callable[[Any], Any], item: Any) -> Any:
    """Run one task on a Dask worker set up as a pool process is (:func:`single_threaded`)."""
    single_threaded()
    return function(item)


def _merge(merge: Callable[[list[Any]], Any], a: Any, b: Any) -> Any:
    return merge([a, b])


def _version() -> str:
    from . import __version__

    return __version__


class DaskExecutor:
    """Tasks on the workers of a ``distributed.Client``; see :class:`Executor`.

    Inputs and outputs must be on a filesystem every worker sees; the batch sends them as
    absolute paths. Leaving the context by an exception (Ctrl-C, ``--fail-fast``) cancels
    the tasks not yet finished; a task already running completes (its output is written
    atomically), and a task whose worker died is rerun elsewhere by Dask.
    """

    absolute_paths = True

    def __init__(self, client: Any, *, window: int | None = None,
                 ahead: int | None = None) -> None:
        self.client = client
        threads = max(1, sum(client.nthreads().values()))
        self.window = window or WINDOW_PER_THREAD * threads
        self.ahead = max(ahead or AHEAD_PER_THREAD * threads, self.window)
        self._live: dict[str, Any] = {}
        self._pending: Any = None  # the as_completed of the running map

    def share(self, value: Any) -> Any:
        """The value itself: it travels inside each task.

        The shared values (options, a palette) are a few kilobytes. Scattering them would
        send them once, but a scattered value lives only on the workers that hold it, and
        Dask cannot recompute it: a killed worker then fails every task not yet run. Inside
        the task, the value is part of the task and survives any worker.
        """
        return value

    def _submit(self, function: Callable[..., Any], *args: Any) -> Any:
        future = self.client.submit(function, *args, pure=False)
        self._live[future.key] = future
        return future

    def _done(self, future: Any) -> Any:
        """The value of a finished task (a dead worker's task rerun too often is fatal)."""
        from distributed import KilledWorker

        self._live.pop(future.key, None)
        try:
            return future.result()
        except KilledWorker:
            raise ClusterError("a Dask worker died again and again on the same input "
                              "(killed, or out of memory?); outputs written so far are "
                              "complete") from None

    def _stream(self, function: Callable[[Any], Any], items: Iterable[Any],
                on_finished: Callable[[int, Any], Any], *,
                done: Callable[[], None] | None = None,
                extra: Callable[[Any], None] | None = None,
                ) -> Iterator[Any]:
        """Yield, in input order, what ``on_finished(index, future)`` makes of each task.

        At most ``window`` tasks are in flight and ``ahead`` submitted but not yet yielded.
        Futures not from ``items`` (merges, submitted by ``on_finished``) are handed to
        ``extra`` when they finish.
        """
        from distributed import as_completed

        items = iter(items)
        pending = as_completed()
        index_of: dict[str, int] = {}
        ready: dict[int, Any] = {}
        submitted = yielded = 0
        exhausted = False
        self._pending = pending
        while True:
            while (not exhausted and len(index_of) < self.window
                   and submitted - yielded < self.ahead):
                try:
                    item = next(items)
                except StopIteration:
                    exhausted = True
                    break
                future = self._submit(_one_thread, function, item)
                index_of[future.key] = submitted
                pending.add(future)
                submitted += 1
            if exhausted and yielded == submitted and pending.is_empty():
                return
            future = next(pending)
            if future.key not in index_of:
                assert extra is not None
                extra(future)
                continue
            index = index_of.pop(future.key)
            ready[index] = on_finished(index, future)
            if done is not None:
                done()
            while yielded in ready:
                yield ready.pop(yielded)
                yielded += 1

    def imap(self, function: Callable[[Any], Any], items: Iterable[Any], *,
             done: Callable[[], None] | None = None) -> Iterator[Any]:
        return self._stream(function, items, lambda _, future: self._done(future), done=done)

    def reduce(self, function: Callable[[Any], Any], items: Iterable[Any], *,
               merge: Callable[[list[Any]], Any], returned: type,
               done: Callable[[], None] | None = None,
               ) -> tuple[Iterator[Any], Callable[[], Any]]:
        """Results of type ``returned`` come back; the others are merged pairwise where they
        are, as they finish (a worker holds at most a few at once), and only the last merge
        travels to the client."""
        # A binary counter of finished values: at most one waits per level (a level-n value
        # stands for 2**n files), so merges pair equals and form a balanced tree, never a
        # chain that would re-merge the growing total with each file.
        waiting: dict[int, Any] = {}
        level_of: dict[str, int] = {}

        def fold(future: Any) -> None:
            self._live.pop(future.key, None)
            level = level_of.pop(future.key, 0)
            if level in waiting:  # the merged value is folded again when it finishes
                merged = self._submit(_merge, merge, waiting.pop(level), future)
                level_of[merged.key] = level + 1
                self._pending.add(merged)
            else:
                waiting[level] = future

        def finished(_: int, future: Any) -> Any:
            if future.type is not None and issubclass(future.type, returned):
                return self._done(future)
            if future.status == "error":
                self._done(future)  # raises
            fold(future)
            return None

        notes = self._stream(function, items, finished, done=done, extra=fold)

        def value() -> Any:
            for _ in notes:  # the merges still running once every note was taken
                pass
            if not waiting:
                return None
            rest = [waiting[level] for level in sorted(waiting)]  # at most log2(files)
            total = rest[0]
            for future in rest[1:]:
                total = self._submit(_merge, merge, total, future)
            return self._done(total)

        return notes, value

    def stop(self) -> None:
        """Cancel every task not finished (running ones complete: outputs are atomic)."""
        live, self._live = list(self._live.values()), {}
        if live:
            self.client.cancel(live, force=True)

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.stop()
        self._live = {}


def dask_setup(worker: Any) -> None:
    """Start-up of each worker of ``--dask local`` (a Dask preload): Ctrl-C in a terminal
    reaches the whole process group, but only the client acts on it (it cancels the tasks
    and closes the cluster); a worker would die mid-task with a traceback on stderr."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def quiet_logs() -> None:
    """Keep Dask's logs off the command's stderr, so its messages are the local run's: none
    from the client (Dask logs a harmless error from its event loop when Ctrl-C interrupts
    a call) and none from the workers of a local cluster. Run after importing
    ``distributed``: its import gives ``tornado.application`` and others levels and
    handlers of their own, which a parent logger's level does not override."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    names = [name for name in list(logging.root.manager.loggerDict)
             if name.split(".")[0] in ("distributed", "tornado", "bokeh")]
    for name in {"distributed", "tornado", *names}:
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextmanager
def connect(address: str, *, workers: int | None = None, timeout: float = CONNECT_TIMEOUT,
            quiet: bool = True) -> Iterator[DaskExecutor]:
    """A :class:`DaskExecutor` on the scheduler at ``address`` (``tcp://host:8786``), or on a
    new ``LocalCluster`` of ``workers`` single-threaded processes for ``"local"``; closed
    again (the local cluster stopped) on leaving the context. ``quiet`` keeps Dask's logs
    off stderr (see :func:`quiet_logs`).

    Raises
    ------
    ClusterError
        The scheduler did not answer within ``timeout`` seconds, has no worker within
        :data:`WORKERS_TIMEOUT`, or a worker runs another colorquant version.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("--dask needs the distributed package: "
                           "pip install 'colorquant[dask]'") from None
    if quiet:
        quiet_logs()
    cluster = None
    try:
        if address == "local":
            with warnings.catch_warnings():  # "Port 8787 is already in use" (no dashboard)
                warnings.simplefilter("ignore")
                cluster = LocalCluster(n_workers=workers or available_cpus(),
                                       threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.CRITICAL,
                                       preload=[__name__])
            client = Client(cluster, timeout=timeout)
        else:
            client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        if cluster is not None:
            cluster.close()
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
        except TimeoutError:
            raise ClusterError(f"the Dask scheduler at {address} has no workers "
                               f"(waited {WORKERS_TIMEOUT:.0f} s)") from None
        try:
            versions = set(client.run(_version).values())
        except Exception as exc:  # a worker without colorquant cannot unpickle the call
            raise ClusterError(f"the Dask workers cannot run colorquant: {exc}") from None
        if versions - {_version()}:
            raise ClusterError(f"the Dask workers run colorquant {', '.join(sorted(versions))}, "
                               f"this is {_version()}: install the same version everywhere")
        with DaskExecutor(client) as executor:
            yield executor
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def executor_for(plan: Sequence[Job], *, dask: str | None = None, jobs: int | None = None,
                 fitting: bool = True, colors: int = 0) -> AbstractContextManager[Executor]:
    """The executor a batch of ``plan`` runs on, as a context: the Dask cluster at ``dask``
    (an address, or ``"local"`` for a new local cluster of ``jobs`` workers), else a local
    pool of ``jobs`` processes (see :func:`local_executor`)."""
    if dask is not None:
        return connect(dask, workers=jobs)
    return local_executor(jobs, plan, fitting=fitting, colors=colors)
