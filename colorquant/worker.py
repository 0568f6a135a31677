"""The warm worker: numpy, Pillow, scikit-learn, numba and colorquant loaded once, a child per call.

Started by the launcher (``launch.py``) in its own session with no inherited descriptors,
it listens on a Unix socket named after the identity of the installation and environment
(``launch.identity``) and holds a lock for its whole life, so one runs per identity. For
each call it forks a child that takes the caller's descriptors, folder, environment, umask
and signal dispositions and runs ``cli.main``, exactly as an in-process call does. The
worker is single-threaded (a selector loop), so forking is safe; it exits after
``COLORQUANT_WORKER_IDLE`` seconds (default 600) without calls.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import select
import selectors
import signal
import socket
import struct
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

from . import launch

#: Modules a call imports, loaded once here (matplotlib is left out: only --plot needs it;
#: ImageCms converts the photos that carry a color profile, most camera JPEGs).
PRELOAD = ("numpy", "PIL.Image", "PIL.ImageCms", "threadpoolctl", "sklearn.cluster",
           "colorquant.cli", "colorquant.files", "colorquant.batch", "colorquant.fit",
           "colorquant.imagefile", "colorquant.palettefile", "colorquant.frames")
#: Descriptors taking a call needs at once: the connection and the caller's 0-2 and folder.
CALL_DESCRIPTORS = 5
#: Seconds a client has to send its request and its "go" (more than it waits for "ready").
HANDSHAKE = 10.0
DEFAULT_IDLE = 600.0
#: Environment variables the preloaded imports set (see :func:`main`).
_ADDED: dict[str, str] = {}


def _preload() -> str | None:
    """Import what calls use; the reason this process must not serve calls, or None."""
    import importlib

    with warnings.catch_warnings(record=True) as caught:
        for name in PRELOAD:
            importlib.import_module(name)
        from PIL import Image

        from . import ditherkernel, executors, fit, pixels

        Image.init()  # the plugins, as the first Image.open of a call would load them
        fit.load_kernel()  # numba and the compiled loops, loaded once for every child
        pixels.load_kernel()
        ditherkernel.warm()
        executors.count_cores_once()  # no child runs lscpu for scikit-learn
        _warm_calls()
    if caught:
        # a fresh process would print these when a call imports the module: we cannot
        return f"importing printed a warning: {caught[0].message}"
    return None


#: Palette sizes of the warm-up calls: one for each fit route (see :data:`fit.FAST_COLORS`).
WARM_COLORS = (16, 256)


def _warm_calls() -> None:
    """Quantize a small made-up photo in memory once per fit route, as a call would.

    What the first call of a process does once (the modules it imports on the way, the
    package-metadata scan behind scikit-learn's input checks, the interpreter's specialized
    code) is then done here, before the fork, instead of in every child: 6% of a warm call
    at 0.4 MP (measured side by side).
    """
    import numpy as np
    from PIL import Image

    from .files import quantize_file

    ramp = np.arange(256, dtype=np.uint16)
    red, green = np.meshgrid(ramp, ramp)
    pixels = np.stack([red, green, (red * 7 + green * 3) % 256], axis=-1).astype(np.uint8)
    source = io.BytesIO()
    Image.fromarray(pixels).save(source, "PNG", compress_level=1)
    for colors in WARM_COLORS:  # (quantize_file closes its streams)
        quantize_file(io.BytesIO(source.getvalue()), io.BytesIO(), colors, fmt="PNG")


def _rss_kb() -> int:
    """This process's resident memory (0 when it cannot be read: no descriptor left)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Worker:
    """The accept loop, its running children and their connections."""

    def __init__(self, folder: launch.Folder, name: str, ident: str, lock: int,
                 idle: float) -> None:
        self.folder, self.name, self.ident, self.lock, self.idle = folder, name, ident, lock, idle
        self.sock_name = name + ".sock"
        self.started = time.time()
        self.calls = 0
        self.children: dict[int, socket.socket] = {}
        # the children whose call still runs; one that ran in the spare says when its call
        # is over (:func:`_report`, on its socket in ``reporting``), before it exits: the
        # next spare is forked then, while it tears its memory down; others when reaped
        self.working: set[int] = set()
        self.reporting: dict[int, socket.socket] = {}
        self.spare: _Spare | None = None
        self.spare_failed = False  # one ended before its call: fork the next after a call
        self.pending: set[_Pending] = set()
        self.stopping = False
        self.paused_until = 0.0  # accept failed (no descriptor, no memory): wait a little
        self.selector: Any = None
        self.listener: Any = None
        self.wake_r = self.wake_w = self.reserve = None
        try:
            self.selector = selectors.DefaultSelector()
            self.wake_r, self.wake_w = os.pipe()
            os.set_blocking(self.wake_r, False)
            os.set_blocking(self.wake_w, False)
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.own = launch.context()  # what every caller must be (after the preload)
            self.reserve = _reserve()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release what the worker holds (it did not get to serve)."""
        for thing in (self.selector, self.listener):
            if thing is not None:
                thing.close()
        for fd in (self.wake_r, self.wake_w, self.reserve):
            if fd is not None:
                os.close(fd)
        self.selector = self.listener = None
        self.wake_r = self.wake_w = self.reserve = None

    def bind(self) -> None:
        """Listen on a temporary name, then rename it over the socket (stale or not), both
        through the open folder; ``Refused`` when the descriptor limit leaves no room to
        take a call (every caller would wait for the handshake, then run in-process)."""
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        held = len(os.listdir("/proc/self/fd")) - 1  # not the listing's own descriptor
        if soft != resource.RLIM_INFINITY and soft - held < CALL_DESCRIPTORS:
            raise launch.Refused(f"too few descriptors to take a call (ulimit -n {soft})")
        tmp = f".{self.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self.folder.fd)
        self.listener.bind(self.folder.socket_path(tmp))
        self.listener.listen(64)
        os.rename(tmp, self.sock_name, src_dir_fd=self.folder.fd, dst_dir_fd=self.folder.fd)
        self.inode = os.stat(self.sock_name, dir_fd=self.folder.fd,
                             follow_symlinks=False).st_ino
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def loop(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.last_call = time.monotonic()  # only calls keep a worker alive, not status
        while True:
            self._reap()
            if (self.spare is None and not self.spare_failed and not self.stopping
                    and not self.working):
                self._fork_spare()  # between calls: a call's own time is not taken
            now = time.monotonic()
            if self.children:
                self.last_call = now
            elif self.stopping or now - self.last_call >= self.idle:
                break
            timeout = None if self.children else max(0.0, self.last_call + self.idle - now)
            handshake = self._expire()
            if handshake is not None:
                timeout = handshake if timeout is None else min(timeout, handshake)
            if self.paused_until:
                if now >= self.paused_until:
                    self.paused_until = 0.0
                    self.selector.register(self.listener, selectors.EVENT_READ)
                else:
                    wait = self.paused_until - now
                    timeout = wait if timeout is None else min(timeout, wait)
            for key, _ in self.selector.select(timeout):
                try:
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj == self.wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self.wake_r, 4096)
                    elif isinstance(key.data, _Pending):
                        self._advance(key.data)
                    elif isinstance(key.data, int):  # a call's child has reported
                        self._call_over(key.data)
                except Exception:  # one connection's failure never ends the loop
                    if isinstance(key.data, _Pending):
                        self._drop(key.data)
        self._unlink()
        self._end_spare()

    def stop(self) -> None:
        """Take no more calls; the loop ends when the running ones have."""
        if not self.stopping:
            self.stopping = True
            self._unlink()
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.listener)
            self.listener.close()

    def _unlink(self) -> None:
        try:
            st = os.stat(self.sock_name, dir_fd=self.folder.fd, follow_symlinks=False)
            if st.st_ino == self.inode:  # still ours, not a newer worker's
                os.unlink(self.sock_name, dir_fd=self.folder.fd)
        except OSError:
            pass

    def _pause(self) -> None:
        """No descriptor or memory to accept with: refuse the waiting connection with the
        reserved descriptor (its client runs in-process), then let others finish first."""
        if self.reserve is not None:
            os.close(self.reserve)
            self.reserve = None
            with contextlib.suppress(OSError):
                conn, _ = self.listener.accept()
                conn.close()
            self.reserve = _reserve()
        if not self.paused_until:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.listener)
            self.paused_until = time.monotonic() + 0.05

    def _accept(self) -> None:
        """Take every waiting connection; its handshake goes on in the loop (never blocks)."""
        while not self.stopping and not self.paused_until:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE, ENFILE, ENOMEM, ENOBUFS: this worker goes on
                self._pause()
                return
            if self.reserve is None:
                self.reserve = _reserve()
            try:
                pid, uid = launch.peer(conn)
                if uid != os.getuid():
                    raise ValueError("another user")
                conn.setblocking(False)
                conn.send(b"A\n")  # accepted: this worker is alive, the client may wait longer
            except (OSError, ValueError):
                conn.close()
                continue
            pending = _Pending(conn, time.monotonic() + HANDSHAKE)
            pending.problem = self._compare(conn, pid)
            self.pending.add(pending)
            try:
                self.selector.register(conn, selectors.EVENT_READ, pending)
            except (OSError, ValueError):
                self._drop(pending)

    def _compare(self, conn: socket.socket, pid: int) -> str | None:
        """Why the process that connected cannot be served here (its context differs from
        this worker's, or cannot be read), or None."""
        if pid <= 0:
            return "the caller is in another pid namespace"
        try:
            pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as exc:
                return f"the caller cannot be looked at: {exc.strerror}"
        try:
            try:
                theirs = launch.context(pid)
            except launch.Refused as exc:
                return str(exc)
            # read from the process that connected, not from one that took its pid since
            if select.select([pidfd], [], [], 0)[0]:
                return "the caller ended"
        finally:
            os.close(pidfd)
        different = launch.difference(self.own, theirs)
        return f"the caller differs from the worker in: {different}" if different else None

    def _drop(self, pending: _Pending) -> None:
        self.pending.discard(pending)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(pending.conn)
        pending.close()

    def _expire(self) -> float | None:
        """Drop handshakes past their deadline; seconds until the next deadline."""
        now = time.monotonic()
        for pending in [p for p in self.pending if p.deadline <= now]:
            self._drop(pending)
        return min((p.deadline - now for p in self.pending), default=None)

    def _advance(self, pending: _Pending) -> None:
        """Read what the client sent and act on it once it is complete."""
        try:
            if not pending.read():
                return
            if self._answer(pending):
                return  # the call runs: the connection is its child's
        except BlockingIOError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        self._drop(pending)

    def _answer(self, pending: _Pending) -> bool:
        """Reply to a complete request; whether a call started (its child has the
        connection)."""
        request, conn = pending.request, pending.conn
        if not isinstance(request, dict):
            return False
        op = request.get("op")
        conn.setblocking(True)
        conn.settimeout(HANDSHAKE)
        if op == "status":
            launch.send_message(conn, {"pid": os.getpid(), "uptime": time.time() - self.started,
                                       "calls": self.calls, "running": len(self.children),
                                       "rss_kb": _rss_kb(), "digest": self.name,
                                       "idle": self.idle})
        elif op == "stop":
            launch.send_message(conn, {"pid": os.getpid()})
            self.stop()
        elif op == "run":
            problem = pending.problem
            if request.get("identity") != self.ident:
                problem = "another identity"
            elif len(pending.fds) != 4 or pending.truncated:
                problem = "the descriptors did not all arrive"
            if problem is not None:
                reason = problem.encode("ascii", "replace").replace(b"\n", b" ")
                conn.sendall(b"N" + reason[:launch.LINE_MAX - 1] + b"\n")
                return False
            self.pending.discard(pending)
            self.selector.unregister(conn)
            fds, pending.fds = pending.fds, []
            self._run(conn, request, pending.data[4:], fds)
            return True
        return False

    def _fork_spare(self) -> None:
        """Fork the child that takes the next call (:func:`_spare`): the fork and the
        child's page faults are then taken while no call runs, not on a call's time."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:  # no descriptor left: calls fork their own child
            return
        try:
            pid = os.fork()
        except OSError:  # EAGAIN, ENOMEM: calls fork their own child
            ours.close()
            theirs.close()
            return
        if pid == 0:
            def run() -> int:
                ours.close()
                return _spare(theirs)

            self._become_child(run)
        theirs.close()
        self.spare = _Spare(pid, ours)

    def _end_spare(self) -> None:
        """End the spare child and wait for it: it has no call, and a stopped one
        (SIGSTOP) must not keep the worker from exiting."""
        if self.spare is not None:
            self.spare.sock.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.spare.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.spare.pid, 0)
            self.spare = None

    def _hand_over(self, conn: socket.socket, raw: bytes, fds: list[int]) -> int | None:
        """Give the call (its request as the client sent it, the connection and the
        caller's descriptors) to the spare child; its pid, or None: no spare, or it cannot
        take the call (it is gone, or the request is too long for one message), and the
        call forks its own child."""
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        try:
            socket.send_fds(spare.sock, [raw], [conn.fileno(), *fds])
        except OSError:
            spare.sock.close()
            return None  # the spare ends on the closed socket (or has ended)
        try:  # the socket now tells when the call is over (a byte, or closed)
            self.selector.register(spare.sock, selectors.EVENT_READ, spare.pid)
            self.reporting[spare.pid] = spare.sock
        except (OSError, ValueError):
            spare.sock.close()  # the next spare is then forked once the child has exited
        return spare.pid

    def _call_over(self, pid: int) -> None:
        """The call of child ``pid`` is over (it reported, or it was reaped): no longer
        working, and its report no longer listened for."""
        self.working.discard(pid)
        sock = self.reporting.pop(pid, None)
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()

    def _run(self, conn: socket.socket, request: dict[str, Any], raw: bytes,
             fds: list[int]) -> None:
        """Start the call (``request``, read from the JSON ``raw``) in the spare child, or
        in a child forked for it."""
        pid = self._hand_over(conn, raw, fds)
        try:
            try:
                if pid is None:
                    pid = os.fork()
            except OSError:  # EAGAIN, ENOMEM: the call runs in-process, this worker goes on
                with contextlib.suppress(OSError):
                    conn.sendall(b"F\n")
                conn.close()
                return
            if pid == 0:
                self._become_child(lambda: _child(conn, request, fds))
        finally:
            if pid != 0:
                for fd in fds:
                    os.close(fd)
        self.calls += 1
        self.last_call = time.monotonic()
        self.children[pid] = conn
        self.working.add(pid)
        try:
            # from here, not from the child: the client learns the pid as soon as it exists,
            # however long the child waits for a CPU on a busy machine
            conn.setblocking(True)
            conn.settimeout(HANDSHAKE)
            conn.sendall(b"P%d\n" % pid)
        except OSError:
            pass  # the client is gone: the child reads no "S" and ends
        # not read here: what the client sends is the child's ("S"), and the child sees
        # the client go itself (:func:`_watch_client`)

    def _become_child(self, body: Callable[[], int]) -> NoReturn:
        """In a child just forked: let go of the worker's descriptors (:meth:`_close_in_child`)
        and run ``body``; the process ends with its code (1 if anything raised), never
        returning to the worker's loop."""
        code = 1
        try:
            self._close_in_child()
            code = body()
        finally:
            os._exit(code)

    def _close_in_child(self) -> None:
        """In a child just forked (for a call or as the spare): let go of the worker's
        descriptors and of every other connection. (No spare exists then: one is forked
        only when none is, and a call takes it, or drops it, before any fork.)"""
        signal.set_wakeup_fd(-1)
        for fd in (self.wake_r, self.wake_w, self.lock):
            os.close(fd)
        if self.reserve is not None:
            os.close(self.reserve)
        self.folder.close()
        self.selector.close()
        if not self.stopping:
            self.listener.close()
        for other in [*self.children.values(), *self.reporting.values()]:
            other.close()
        for pending in self.pending:
            pending.close()

    def _reap(self) -> None:
        while self.children or self.spare is not None:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and pid == self.spare.pid:  # it ended before its call
                self.spare.sock.close()
                self.spare, self.spare_failed = None, True
                continue
            conn = self.children.pop(pid, None)
            self._call_over(pid)
            if conn is None:
                continue
            self.spare_failed = False
            if os.WIFSIGNALED(status):
                message = b"K%d\n" % os.WTERMSIG(status)
            else:
                message = b"X%d\n" % os.waitstatus_to_exitcode(status)
            try:
                conn.setblocking(True)
                conn.settimeout(0.5)
                conn.sendall(message)  # the child sent its code itself, unless killed
            except OSError:
                pass
            conn.close()


#: ``SO_PEERPIDFD`` (Linux 6.5): a pidfd of the process that connected.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)


def _reserve() -> int | None:
    """A descriptor kept free, so that a connection can still be accepted (and refused) when
    the process has no other one left."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class _Pending:
    """A connection in its handshake: the request (with descriptors) as it arrives."""

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self.conn, self.deadline = conn, deadline
        self.data = b""
        self.fds: list[int] = []
        self.truncated = False
        self.problem: str | None = None
        self.request: Any = None

    def read(self) -> bool:
        """Read what has arrived; whether the request is complete (ValueError: truncated)."""
        if not self.fds and not self.data:
            chunk, fds, flags, _ = socket.recv_fds(self.conn, 1 << 16, 4)
            self.fds = list(fds)
            self.truncated = bool(flags & socket.MSG_CTRUNC)  # no descriptor left for them
        else:
            chunk = self.conn.recv(1 << 16)
        if not chunk:
            raise ValueError("truncated request")
        self.data += chunk
        if len(self.data) >= 4 and struct.unpack("!I", self.data[:4])[0] > 1 << 24:
            raise ValueError("request too long")
        if len(self.data) < 4 or len(self.data) < 4 + struct.unpack("!I", self.data[:4])[0]:
            return False
        self.request = json.loads(self.data[4:])
        return True

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.conn.close()


class _Spare:
    """The child forked ahead of the next call, and the worker's end of its socket."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid, self.sock = pid, sock


# --- the child ----------------------------------------------------------------------------


#: Bytes of heap a spare child makes its own before its call (a 0.4 MP call grows the heap by
#: about 30 MB), in blocks below glibc's largest mmap threshold.
PREFAULT_HEAP = 32 << 20
_PREFAULT_BLOCK = 2 << 20
#: ``madvise`` advice that faults a range in, writable, in one call (Linux 5.14).
_MADV_POPULATE_WRITE = 23


def _prefault(waiting: Callable[[], bool] = lambda: False) -> None:
    """Take now the page faults a call would take: a forked child's first write to a page
    it shares with the worker copies the page, and each new page of heap is a fault too
    (about 8,600 of them, 20-25 ms, in a 0.4 MP call on a VM, measured; 2,100 after this).

    With glibc, heap blocks written and freed stay this process's (malloc then keeps its
    freed memory: no trimming, no mmap below 32 MB, for the rest of the call) for the call
    to reuse: private pages already, as the call's would have become. The pages are faulted
    in by ``MADV_POPULATE_WRITE`` where the kernel has it (a third faster than writing
    them), block by block, and the work stops as soon as ``waiting()``: a call that came
    early is not kept waiting for faults it would take no slower itself."""
    if not _glibc():
        return
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: its largest value
    libc.mallopt(-1, 1 << 30)   # M_TRIM_THRESHOLD: keep the freed top of the heap
    page = os.sysconf("SC_PAGE_SIZE")
    populate = True
    blocks = []
    try:
        for _ in range(PREFAULT_HEAP // _PREFAULT_BLOCK):
            if waiting():
                break
            block = libc.malloc(_PREFAULT_BLOCK)
            if not block:
                break
            blocks.append(block)
            start, end = -(-block // page) * page, (block + _PREFAULT_BLOCK) // page * page
            if populate and libc.madvise(start, end - start, _MADV_POPULATE_WRITE) == 0:
                continue
            populate = False  # an older kernel: write the pages
            ctypes.memset(block, 0, _PREFAULT_BLOCK)
    finally:
        for block in blocks:
            libc.free(block)


def _glibc() -> bool:
    """Whether this process runs on glibc (whose ``mallopt`` :func:`_prefault` uses)."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def _spare(sock: socket.socket) -> int:
    """Wait for a call from the worker (the request, the connection and the caller's
    descriptors in one message) and run it (:func:`_child`); end when the worker closes
    the socket instead (it stops, or it died)."""
    for num in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(num, signal.SIG_DFL)
    name = _name(SPARE_NAME)
    poller = select.poll()  # (select() would fail on a descriptor above 1023)
    poller.register(sock, select.POLLIN)
    _prefault(lambda: bool(poller.poll(0)))  # until a call is waiting
    try:
        data, fds, flags, _ = socket.recv_fds(sock, 1 << 20, 5)
    except OSError:
        return 0
    if not data or len(fds) != 5 or flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            os.close(fd)
        return 0
    if name:
        _name(name)  # the call's process is named as a forked child is
    conn = socket.socket(fileno=fds[0])
    return _child(conn, json.loads(data), list(fds[1:]), worker=sock)


#: The process name (``/proc/PID/comm``, what ``ps`` and ``top`` show) of a spare child
#: until it takes a call: a spare is told apart from a call's child by it.
SPARE_NAME = "cq-worker-spare"


def _name(name: str) -> str:
    """Name this process ``name`` (at most 15 bytes); its name before."""
    old = ""
    with contextlib.suppress(OSError), open("/proc/self/comm", "r+", encoding="utf-8") as comm:
        old = comm.read().rstrip("\n")
        comm.seek(0)
        comm.write(name)
    return old


def _streams() -> None:
    """Standard streams over descriptors 0-2 as a fresh interpreter would make them.

    The encoding and error handlers are this process's (the locale and PYTHONIOENCODING are
    part of the identity); line buffering when the descriptor is a terminal (always for
    stderr); no buffering with PYTHONUNBUFFERED or -u.
    """
    unbuffered = bool(sys.__stdout__.write_through)  # this process was started the same way
    made = []
    for fd, name, old in ((0, "<stdin>", sys.__stdin__), (1, "<stdout>", sys.__stdout__),
                          (2, "<stderr>", sys.__stderr__)):
        reading = fd == 0
        buffering = 0 if unbuffered and not reading else -1
        buffer = open(fd, "rb" if reading else "wb", buffering, closefd=False)  # noqa: SIM115
        raw = buffer if buffering == 0 else buffer.raw
        raw.name = name
        interactive = os.isatty(fd)
        text = io.TextIOWrapper(buffer, encoding=old.encoding, errors=old.errors, newline="\n",
                                line_buffering=not unbuffered and (interactive or fd == 2),
                                write_through=unbuffered and not reading)
        made.append(text)
    sys.stdin = sys.__stdin__ = made[0]
    sys.stdout = sys.__stdout__ = made[1]
    sys.stderr = sys.__stderr__ = made[2]


def _signals(request: dict[str, Any]) -> None:
    """The caller's signal dispositions (what a fresh process would start with); the
    forwarded signals stay blocked until the call starts (:func:`_child`)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [getattr(signal, n) for n in launch.FORWARDED])
    wanted = request.get("signals", {})
    for num in signal.valid_signals():
        if num in (signal.SIGKILL, signal.SIGSTOP):
            continue
        how = wanted.get(str(int(num)))
        handler = {"ign": signal.SIG_IGN, "int": signal.default_int_handler}.get(
            how, signal.SIG_DFL)
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(num, handler)


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int],
           worker: socket.socket | None = None) -> int:
    """Become the caller's process and run its call: once the client answers ``S`` to the
    pid the worker sent it (``P<pid>``), then sends ``X<code>`` (and, from the spare, tells
    the ``worker`` that the call is over)."""
    _signals(request)
    conn.setblocking(True)
    conn.settimeout(HANDSHAKE)
    go = b""
    while len(go) < 2:
        chunk = conn.recv(2 - len(go))
        if not chunk:
            break
        go += chunk
    if go != b"S\n":
        return 0  # the client gave up waiting and runs the call itself
    conn.settimeout(None)
    stdin, stdout, stderr, cwd = fds
    os.fchdir(cwd)
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    for key, value in _ADDED.items():
        os.environ.setdefault(key, value)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    _streams()
    sys.argv = [request["argv0"], *request["argv"]]
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # a fresh process has fresh global numpy state
    from . import cli

    _watch_client(conn)
    # a signal that came during the set-up acts now, as on a fresh process at this point
    signal.pthread_sigmask(signal.SIG_SETMASK, set(request.get("mask", [])) - {signal.SIGIO})

    try:
        cli.main(request["argv"], before_exit=functools.partial(_report, conn, worker=worker))
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt as exc:
        # as the interpreter ends on one: its traceback, then killed by SIGINT
        sys.excepthook(type(exc), exc, exc.__traceback__)
        _flush_and_atexit()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException as exc:  # printed as the interpreter prints it
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code = 1
    _flush_and_atexit()
    _report(conn, code, worker=worker)
    return code


def _report(conn: socket.socket, code: int, worker: socket.socket | None = None) -> None:
    """Send the call's status (``X<code>``) to its client, once the call's output is flushed.

    The call is over, so first: the caller's standard descriptors are let go (``/dev/null``
    over them), so that a caller reading the command's output sees its end now, not once
    this process has exited (the kernel closes a process's descriptors only after it has
    torn down its memory: a tenth of a second after a 24 MP call); and :func:`_watch_client`
    stands down, since the client closing the connection on the status is the normal end,
    not the call of a vanished client (a SIGTERM and a traceback's work, on the CPU of the
    caller's next call). Then a child that was the spare tells the ``worker`` (``D``): it
    forks the next spare now, not once this process has exited, which in a ``for`` loop
    is when the next call comes."""
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        _to_null(0, 1, 2)
    with contextlib.suppress(OSError):
        conn.sendall(b"X%d\n" % code)
    if worker is not None:  # the worker forks the next spare while this process exits
        with contextlib.suppress(OSError):
            worker.send(b"D")
        worker.close()


def _to_null(*fds: int) -> None:
    """Point these descriptors at ``/dev/null``: the caller's streams let go of."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(null, fd)
    os.close(null)


def _exit_code(exc: SystemExit) -> int:
    """The exit status the interpreter gives an uncaught ``SystemExit`` (its message printed)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    with contextlib.suppress(Exception):
        print(exc.code, file=sys.stderr)
    return 1


def _flush_and_atexit() -> None:
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _watch_client(conn: socket.socket) -> None:
    """When the client goes (killed), stop the call as its SIGTERM would, but silently: its
    standard output and error go to /dev/null first (the caller's process is gone, it
    prints nothing more). The connection signals SIGIO when it closes."""
    import fcntl

    def gone(signum: int, frame: object) -> None:
        try:
            data = conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        _to_null(1, 2)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGIO, gone)
    fcntl.fcntl(conn, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(conn, fcntl.F_SETFL, fcntl.fcntl(conn, fcntl.F_GETFL) | os.O_ASYNC)
    gone(signal.SIGIO, None)  # a client that went before this was set up


#: The worker's autogroup (a new session makes one): its share of the CPU against every other
#: session's processes, whatever the niceness of the processes inside it.
AUTOGROUP = "/proc/self/autogroup"


def _autogroup_nice() -> int | None:
    """The niceness of this process's autogroup (None: no autogroups, or not readable)."""
    try:
        with open(AUTOGROUP, encoding="ascii") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def _set_autogroup_nice(nice: int) -> bool:
    """Set the autogroup's niceness; the kernel takes one change in 0.1 s from all processes
    (EAGAIN), so a busy moment is waited out."""
    for _ in range(30):
        try:
            with open(AUTOGROUP, "w", encoding="ascii") as f:
                f.write(str(nice))
            return True
        except BlockingIOError:
            time.sleep(0.11)
        except OSError:
            return False
    return False


@contextlib.contextmanager
def _low_priority() -> Any:
    """Load at the lowest CPU priority, so that the calls that follow the one that started
    this worker, which run in-process meanwhile, do not compete with its loading (an explicit
    ``--worker-start`` waits for it instead, and loads it at the caller's priority).

    The worker runs in a session of its own, which the kernel schedules as a group (an
    autogroup) beside the caller's: the niceness of a process counts only inside its group,
    so the group's niceness is lowered (any user may raise it back to 0). The process's own
    niceness is lowered too where autogroups are off, when it can be given back afterwards
    (root, CAP_SYS_NICE or a high enough RLIMIT_NICE): its children must have the caller's.
    ``RuntimeError`` when the priority cannot be given back (the worker must not serve).
    """
    import resource

    group = _autogroup_nice()
    if group is not None and (group >= 19 or not _set_autogroup_nice(19)):
        group = None  # nothing to give back
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    status = launch.context()["status"]
    can = int(status.get("CapEff", "0"), 16) >> 23 & 1  # CAP_SYS_NICE
    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    lower = bool(can) or soft == resource.RLIM_INFINITY or 20 - soft <= nice
    if lower:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    try:
        yield
    finally:
        if lower:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if group is not None and not _set_autogroup_nice(group):
            raise RuntimeError("the worker could not take back its CPU priority")


def main() -> None:
    """``python -c launch.BOOT colorquant.worker FOLDER``: preload, listen, serve, exit idle."""
    lock = int(os.environ.pop("COLORQUANT_WORKER_LOCK"))
    folder = launch.Folder(sys.argv[-1], int(os.environ.pop("COLORQUANT_WORKER_DIR")))
    expected = os.environ.pop("COLORQUANT_WORKER_ID")
    background = os.environ.pop("COLORQUANT_WORKER_LOAD", "") == "low"
    idle = float(os.environ.get(launch.IDLE) or DEFAULT_IDLE)
    problem = None
    try:
        ident = launch.identity()  # as the client computed it: before the imports
    except launch.Refused as exc:
        ident, problem = "", str(exc)
    name = launch.digest(ident)
    before = dict(os.environ)
    if problem is None:
        try:
            with _low_priority() if background else contextlib.nullcontext():
                problem = _preload()
        except Exception as exc:  # no descriptor or memory left (ulimit)
            problem = f"loading the libraries failed: {exc}"
    # variables the imports set (scikit-learn: KMP_DUPLICATE_LIB_OK, KMP_INIT_AT_FORK); a
    # child sets them as the same imports in a fresh process would
    global _ADDED
    _ADDED = {k: v for k, v in os.environ.items() if before.get(k) != v}
    if problem is None and name != expected:
        problem = "the worker's identity differs from its caller's"
    worker = None
    if problem is None:
        try:
            worker = Worker(folder, name, ident, lock, idle)
            worker.bind()
        except launch.Refused as exc:
            problem = str(exc)
        except OSError as exc:  # no descriptor left (ulimit -n), no memory
            problem = f"the worker cannot listen: {exc.strerror or exc}"
        if problem is not None and worker is not None:
            worker.close()  # its descriptors, so that the note below can be written
            worker = None
    if worker is None:
        # the same environment would fail the same way: no worker is started for it again
        with contextlib.suppress(OSError):
            fd = os.open(expected + ".refused", os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                         | os.O_NOFOLLOW, 0o600, dir_fd=folder.fd)
            with open(fd, "w", encoding="utf-8") as f:
                f.write(f"{problem}\n")
        return
    worker.loop()
