"""The batch on a Dask cluster: real LocalClusters, held to the local run byte for byte."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from colorquant import batch, pixels, plan
from colorquant.options import QuantizeOptions
from tests.conftest import COMMAND, run
from tests.test_batch import json_lines, make_set, on_a_terminal, tree


@pytest.fixture(scope="module", autouse=True)
def no_process_left():
    """Every cluster of this module is closed at its end: no worker process outlives it."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 30
    while True:
        left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before
                and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                and "resource_tracker" not in " ".join(p.cmdline())]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == [], f"processes left behind: {[p.cmdline() for p in left]}"


@pytest.fixture(scope="module")
def client():
    """A cluster of two single-threaded workers in this process, on a TCP port the command
    line can reach."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        yield client


def outcome(proc: subprocess.CompletedProcess[bytes]) -> tuple[int, bytes, list[dict]]:
    """Exit code, stderr and JSON lines of a run, without the timings."""
    lines = json_lines(proc)
    for line in lines:
        line.pop("seconds")
    return proc.returncode, proc.stderr, lines


def test_a_local_run_imports_no_dask(tmp_path):
    srcs = make_set(tmp_path / "src", n=2)
    code = ("import sys; from colorquant.cli import run\n"
            f"code = run([*{[str(s) for s in srcs]!r}, '-k', '4', '-j', '2', '--out-dir', "
            f"{str(tmp_path / 'out')!r}, '-q'])\n"
            "print(code, 'distributed' in sys.modules, 'dask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["0", "False", "False"], out.stderr


def test_histograms_travel_as_two_arrays():
    from distributed.protocol import serialize

    m = 50_000
    hist = pixels.Histogram(np.arange(0, 3 * m, 3, dtype=np.uint32),
                            np.arange(m, dtype=np.int64), 4)
    assert len(pickle.dumps(hist, protocol=5)) < 12 * m + 512  # keys 4 B + counts 8 B
    _, frames = serialize(hist)
    sizes = sorted(memoryview(f).nbytes for f in frames)
    assert sizes[-2:] == [4 * m, 8 * m] and sum(sizes[:-2]) < 512  # out of band, no copy
    back = pickle.loads(pickle.dumps(hist, protocol=5))
    assert back.keys.dtype == np.uint32 and back.counts.dtype == np.int64
    assert np.array_equal(back.keys, hist.keys) and back.channels == 4


CASES = {
    "separate": ["-k", "6", "{bad}"],
    "shared": ["-k", "8", "--shared-palette", "--save-palette", "out/shared.json"],
    "shared-fail-fast": ["-k", "8", "--shared-palette", "{bad}", "--fail-fast"],
    "palette": ["--palette", "given.gpl", "--save-palette", "out/again.txt"],
    "no-clobber": ["--no-clobber", "{bad}"],
    "fail-fast": ["-k", "4", "{bad}", "--fail-fast"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cluster_run_matches_the_local_run(tmp_path, client, case):
    """Relative paths (the workers run elsewhere), same outputs, JSON lines, messages and
    exit code as the local batch."""
    make_set(tmp_path / "src", n=4)
    (tmp_path / "src" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "given.gpl").write_text("GIMP Palette\n0 0 0\n255 255 255\n200 40 40\n")
    inputs = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "src").glob("img*"))
    args = [a.replace("{bad}", "src/bad.png") for a in CASES[case]]
    if "src/bad.png" in args:  # second in input order
        args.remove("src/bad.png")
        inputs.insert(1, "src/bad.png")
    runs = {}
    for where, extra in (("local", ["-j", "1"] if case == "fail-fast" else []),
                         ("dask", ["--dask", client.scheduler.address])):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        if case == "no-clobber":
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / "img2-16c.png").write_bytes(b"mine")
        proc = run(*inputs, *args, *extra, "--out-dir", "out", "--json", cwd=tmp_path)
        runs[where] = outcome(proc), tree(tmp_path / "out") if (tmp_path / "out").exists() else {}
    (local, local_files), (dask, dask_files) = runs["local"], runs["dask"]
    assert local[0] in (0, 1, 15) and local[2], local[1]
    assert dask == local
    if "--fail-fast" in args:  # tasks already running on the cluster may still finish
        assert local_files.items() <= dask_files.items()
    else:
        assert dask_files == local_files


def test_library_batch_and_bounded_submission(tmp_path, client):
    """``BatchRun`` with a DaskExecutor from Python: the same results as in this process;
    inputs are pulled only a bounded window ahead of the results yielded."""
    from colorquant.executors import DaskExecutor, InProcess

    srcs = make_set(tmp_path / "src", n=12, size=(12, 16))
    options = QuantizeOptions(colors=4)
    results = {}
    for where in ("here", "dask"):
        jobs = plan.plan([str(s) for s in srcs], k=4, out_dir=str(tmp_path / where))
        os.makedirs(tmp_path / where)
        executor = InProcess() if where == "here" else DaskExecutor(client)
        with executor:
            got = list(batch.BatchRun(jobs, options, executor=executor, shared_palette=True))
        results[where] = [(r.status, r.colors, r.counts, r.mse) for r in got]
    assert results["dask"] == results["here"]
    assert tree(tmp_path / "dask") == tree(tmp_path / "here")

    pulled = []

    def items():
        for i in range(40):
            pulled.append(i)
            yield i

    executor = DaskExecutor(client, window=2, ahead=5)
    out = []
    for value in executor.imap(abs, items()):
        assert len(pulled) - len(out) <= 5  # submitted, not yet yielded
        out.append(value)
    assert out == list(range(40))
    notes, total = executor.reduce(_histogram_of, range(9), merge=batch.merge_histograms,
                                   returned=str)
    assert list(notes) == [None] * 8 + ["nine"]
    expected = pixels.merge([_histogram_of(i) for i in range(8)])
    merged = total()
    assert np.array_equal(merged.keys, expected.keys)
    assert np.array_equal(merged.counts, expected.counts)


def _histogram_of(i: int) -> pixels.Histogram | str:
    """A small histogram per item (a string for the last, like a failed read)."""
    if i == 8:
        return "nine"
    keys = np.arange(i, i + 5, dtype=np.uint32)
    return pixels.Histogram(keys, np.full(5, i + 1, np.int64), 3)


def test_local_cluster_with_a_progress_bar_on_a_terminal(tmp_path):
    """``--dask local -j 2``: the bar counts tasks as they finish; no Dask log reaches the
    terminal."""
    srcs = make_set(tmp_path / "src", n=3)
    code, text = on_a_terminal(*srcs, "--out-dir", tmp_path / "b", "--dask", "local", "-j", "2",
                               "--shared-palette")
    assert code == 0
    assert "colorquant" in text and "6/6" in text and "3 written" in text
    assert "distributed" not in text and "INFO" not in text and "WARNING" not in text
    assert len(tree(tmp_path / "b")) == 3


def test_unreachable_scheduler_is_one_error_line(tmp_path):
    srcs = make_set(tmp_path / "src", n=2)
    proc = run(*srcs, "--dask", "tcp://127.0.0.1:1", "--out-dir", tmp_path / "out")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.startswith("Error: cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    proc = run(srcs[0], "--dask", "tcp://127.0.0.1:1", "-o", "-")
    assert proc.returncode == 2 and b"not standard input or output" in proc.stderr


def copies(folder: Path, photo: Path, n: int) -> None:
    folder.mkdir()
    for i in range(n):
        (folder / f"c{i:02d}.jpg").write_bytes(photo.read_bytes())


def wait_for_output(out: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.is_dir() and any(
            not n.startswith(".") for n in os.listdir(out))):
        time.sleep(0.05)


def wait_for_tasks(client, finished: int = 2) -> None:
    """Until ``finished`` tasks of the run hold their results on the workers."""
    def held(dask_scheduler) -> int:
        return sum(1 for key, task in dask_scheduler.tasks.items()
                   if str(key).startswith("_one_thread") and task.state == "memory")

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and client.run_on_scheduler(held) < finished:
        time.sleep(0.05)


def test_connecting_keeps_dask_logs_off_stderr(client):
    """Dask's own loggers (``tornado.application`` logs an error from its event loop when
    Ctrl-C interrupts a call) print nothing while a process is connected: the command's
    stderr carries its own messages only. A fresh process, as the command's."""
    code = (
        "import logging, sys\n"
        "from colorquant import executors\n"
        "with executors.connect(sys.argv[1]):\n"
        "    logging.getLogger('tornado.application').error('Exception in callback')\n"
        "    logging.getLogger('distributed.client').warning('a client warning')\n"
        "    logging.getLogger('distributed').error('a distributed error')\n"
        "print('connected')\n")
    proc = subprocess.run([sys.executable, "-c", code, client.scheduler.address],
                          capture_output=True, timeout=120, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"connected\n", b"")


def test_ctrl_c_cancels_the_outstanding_tasks(tmp_path, client, china):
    files = 12
    copies(tmp_path / "src", china, files)
    out = tmp_path / "out"
    proc = subprocess.Popen([str(COMMAND), "-r", str(tmp_path / "src"), "-k", "64",
                             "--out-dir", str(out), "--dask", client.scheduler.address],
                            stderr=subprocess.PIPE,
                            # SIGINT as from a terminal's Ctrl-C: a suite started in a shell's
                            # background inherits it ignored, and the command keeps it ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_output(out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0 and len(os.listdir(out)) == files:
        pytest.skip("the batch finished before the signal arrived")
    assert proc.returncode == 130, err
    assert err.decode().endswith("Error: interrupted\n") and b"Traceback" not in err
    # No task is left, and the tasks that were running complete: a cancelled task leaves the
    # scheduler at once, but its worker thread finishes it (and renames its .tmp) later.
    def left() -> tuple[int, list[int]]:
        return (client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)),
                sorted(client.run(lambda dask_worker: len(dask_worker.state.tasks)).values()))

    deadline = time.monotonic() + 60
    while left() != (0, [0, 0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == (0, [0, 0])
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".tmp")] == []
    assert 0 < len(names) < 12
    for name in names:
        with Image.open(out / name) as im:
            im.load()  # complete, decodable


@pytest.mark.parametrize("mode", [[], ["--shared-palette"]], ids=["own", "shared"])
# distributed warns so even with dashboard_address=None (as executors.connect, which hides it)
@pytest.mark.filterwarnings("ignore:Port 8787 is already in use:UserWarning")
def test_killed_workers_are_replaced_and_the_run_completes(tmp_path, china, mode):
    """Every worker is SIGKILLed once mid-run: nothing the tasks need may live only on a
    worker (a scattered value would be lost for good), and the outputs equal a local run."""
    from distributed import Client, LocalCluster

    copies(tmp_path / "src", china, 8)
    local = run("-r", tmp_path / "src", "-k", "32", "--out-dir", tmp_path / "local", "--json",
                *mode)
    assert local.returncode == 0, local.stderr
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        pids = sorted(client.run(os.getpid).values())
        out = tmp_path / "dask"
        proc = subprocess.Popen([str(COMMAND), "-r", str(tmp_path / "src"), "-k", "32",
                                 "--out-dir", str(out), "--json", *mode, "--dask",
                                 cluster.scheduler_address],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if mode:  # no output before the fit: kill once the histograms are under way
            wait_for_tasks(client)
        else:
            wait_for_output(out)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, (stdout, stderr)
        assert set(client.run(os.getpid).values()).isdisjoint(pids)  # the nannies restarted them
    assert stderr == local.stderr
    assert outcome(subprocess.CompletedProcess([], 0, stdout, b""))[2] == [
        {**line, "output": line["output"].replace(str(tmp_path / "local"), str(out))}
        for line in outcome(local)[2]]
    # every output complete and identical (SIGKILL allows no clean-up: a hidden .tmp of the
    # killed task may remain, never a partial output)
    assert {n: b for n, b in tree(out).items() if not n.startswith(".")} == tree(
        tmp_path / "local")
