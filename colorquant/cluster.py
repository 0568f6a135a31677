"""Run a batch on a Dask cluster: the executor strategy of :mod:`colorquant.batch` for Dask.

One task per file; a shared palette's histograms are merged on the workers by a tree of
pairwise merges, so the client receives one histogram. Submission is bounded: at most
``window`` tasks are in flight, and at most ``ahead`` results wait on the client for an
earlier, slower one (results are yielded in input order). Imported only for ``--dask``
(it needs the optional ``distributed`` package: ``pip install 'colorquant[dask]'``).
The module is not called ``dask`` so that it never shadows the ``dask`` package.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .batch import WorkerError, default_workers
from .errors import ColorquantError

#: Seconds to wait for the scheduler before giving up.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for a first worker of a scheduler that has none.
WORKERS_TIMEOUT = 60.0
#: Tasks in flight per worker thread (keeps every thread fed while results travel).
WINDOW_PER_THREAD = 2
#: Results submitted but not yet yielded, per worker thread: bounds head-of-line buffering.
AHEAD_PER_THREAD = 8


class ClusterError(ColorquantError):
    """The Dask scheduler cannot be reached, or its workers cannot run colorquant."""


_limits: Any = None


def _one_thread(function: Callable[[Any], Any], item: Any) -> Any:
    """Run one task on a worker under one BLAS/OpenMP and mapping thread, as the local
    workers do: the limit is set once per worker process (setting it costs tens of
    milliseconds, as much as a small file's task)."""
    global _limits
    if _limits is None:
        from threadpoolctl import threadpool_limits

        from . import dither

        _limits = threadpool_limits(limits=1)
        dither.limit_threads(1)
    return function(item)


def _merge(merge: Callable[[list[Any]], Any], a: Any, b: Any) -> Any:
    return merge([a, b])


def _version() -> str:
    from . import __version__

    return __version__


class DaskExecutor:
    """Tasks on the workers of a ``distributed.Client``; see :class:`colorquant.batch.Executor`.

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
            raise WorkerError("a Dask worker died again and again on the same input "
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
    a call) and none from the workers of a local cluster."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    for name in ("distributed", "tornado"):
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
    if quiet:
        quiet_logs()
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("--dask needs the distributed package: "
                           "pip install 'colorquant[dask]'") from None
    cluster = None
    try:
        if address == "local":
            with warnings.catch_warnings():  # "Port 8787 is already in use" (no dashboard)
                warnings.simplefilter("ignore")
                cluster = LocalCluster(n_workers=workers or default_workers(),
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
