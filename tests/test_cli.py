"""End-to-end: the installed ``colorquant`` command on real files, in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import palette_image, run


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_main_job_writes_image_plot_and_comparison(china, tmp_path):
    out, plot, cmp = tmp_path / "out.png", tmp_path / "plot.png", tmp_path / "cmp.png"
    proc = run(china, "-k", "16", "-o", out, "--plot", plot, "--compare", cmp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "P"
        assert im.size == Image.open(china).size
        assert len(im.getcolors(256)) <= 16
    for figure in (plot, cmp):
        with Image.open(figure) as im:
            im.load()
            assert im.width > 400 and im.height > 300
    assert listing(tmp_path) == ["cmp.png", "out.png", "plot.png"]


def test_two_runs_give_identical_bytes(flower, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert run(flower, "-k", "12", "-o", a, "--seed", "5").returncode == 0
    assert run(flower, "-k", "12", "-o", b, "--seed", "5").returncode == 0
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("ext", ["png", "svg", "pdf"])
def test_plots_are_reproducible(small_png, tmp_path, ext):
    for name in ("p1", "p2"):
        assert run(small_png, "-o", tmp_path / f"{name}.png", "--plot",
                   tmp_path / f"{name}-plot.{ext}", "--compare",
                   tmp_path / f"{name}-side.{ext}").returncode == 0
    for kind in ("plot", "side"):
        first = (tmp_path / f"p1-{kind}.{ext}").read_bytes()
        assert first == (tmp_path / f"p2-{kind}.{ext}").read_bytes()


@pytest.mark.parametrize(("k", "bits"), [(2, 1), (4, 2), (9, 4), (16, 4), (17, 8), (200, 8)])
def test_png_uses_smallest_bit_depth(tmp_path, k, bits):
    rng = np.random.default_rng(k)
    colors = np.unique(rng.integers(0, 256, (k * 2, 3), dtype=np.uint8), axis=0)[:k]
    src = tmp_path / "src.png"
    Image.fromarray(palette_image(colors, 30, 30, seed=k)).save(src)
    out = tmp_path / "out.png"
    assert run(src, "-k", str(k), "-o", out).returncode == 0
    header = out.read_bytes()[:33]
    assert header[24] == bits  # IHDR bit depth
    assert header[25] == 3  # color type 3: indexed
    with Image.open(out) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(Image.open(src)))


def test_default_output_name(tmp_path, small_png):
    proc = run(small_png, "-k", "8")
    assert proc.returncode == 0, proc.stderr
    assert (small_png.parent / "small-8c.png").exists()


def test_gif_output_is_indexed(tmp_path, small_png):
    out = tmp_path / "out.gif"
    assert run(small_png, "-k", "8", "-o", out).returncode == 0
    with Image.open(out) as im:
        assert im.format == "GIF" and im.mode == "P"
        assert len(im.convert("RGB").getcolors(256)) <= 8


def test_jpeg_output_warns(tmp_path, small_png):
    out = tmp_path / "out.jpg"
    proc = run(small_png, "-k", "8", "-o", out)
    assert proc.returncode == 0
    assert b"warning" in proc.stderr and b"adds colors" in proc.stderr
    assert Image.open(out).mode == "RGB"
    quiet = run(small_png, "-k", "8", "-o", out, "-q")
    assert quiet.returncode == 0 and quiet.stderr == b""


def test_verbose_reports_palette_times_and_error(small_png, tmp_path):
    proc = run(small_png, "-k", "4", "-o", tmp_path / "o.png", "-v")
    assert proc.returncode == 0
    text = proc.stderr.decode()
    assert "PSNR" in text and "MSE" in text and "fit" in text
    assert text.count("#") == 4 and "%" in text
    assert proc.stdout == b""


def test_help_and_version_are_fast_paths():
    proc = run("--help")
    assert proc.returncode == 0 and b"Examples:" in proc.stdout and b"--colors" in proc.stdout
    proc = run("--version")
    assert proc.returncode == 0 and b"colorquant" in proc.stdout
    code = ("import sys; from colorquant.cli import run\n"
            "run(['--help'])\n"
            "heavy = [m for m in ('numpy', 'PIL', 'sklearn', 'scipy', 'matplotlib') "
            "if m in sys.modules]\nprint(heavy, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stderr.strip() == "[]"


def test_main_exits_with_the_code_after_flushing_and_atexit():
    # main() ends the process without the interpreter's teardown: what it printed must still
    # arrive whole through pipes, atexit handlers must still run, and the code must be kept.
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
            "from colorquant.cli import main\n"
            "main(sys.argv[1:])\n"
            "print('not reached')")
    ok = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True)
    assert ok.returncode == 0 and ok.stdout.startswith(b"colorquant")
    assert b"not reached" not in ok.stdout
    assert ok.stderr == b"atexit ran\n"
    bad = subprocess.run([sys.executable, "-c", code, "--colors", "1", "x.png"],
                         capture_output=True)
    assert bad.returncode == 2
    assert bad.stderr.startswith(b"Error: ") and bad.stderr.endswith(b"atexit ran\n")


# --- errors: one line, right exit code, nothing written, existing output untouched ---------

def assert_one_error_line(proc: subprocess.CompletedProcess[bytes], code: int, *needles: str):
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("Error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert proc.stdout == b""


def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 80, 3), np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:500])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    return {"missing": tmp_path / "missing.jpg", "directory": folder, "text": text,
            "truncated": truncated, "empty": empty}


@pytest.mark.parametrize(("case", "reason"), [
    ("missing", "no such file"), ("directory", "directory"), ("text", "not a recognized image"),
    ("truncated", "truncated"), ("empty", "not a recognized image"),
])
def test_bad_input_fails_cleanly(tmp_path, case, reason):
    src = bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.png"
    proc = run(src, "-o", out)
    assert_one_error_line(proc, 1, src.name, reason)
    assert listing(out_dir) == []
    out.write_bytes(b"existing")
    proc = run(src, "-o", out)
    assert proc.returncode == 1
    assert out.read_bytes() == b"existing"
    assert listing(out_dir) == ["out.png"]


@pytest.mark.parametrize(("args", "needle"), [
    (["-k", "1"], "--colors"), (["-k", "257"], "--colors"), (["-k", "many"], "--colors"),
    (["-o", "{tmp}/out.xyz"], "unknown output extension"),
    (["--plot", "{tmp}/plot.xyz"], "plot must be"),
    (["-o", "{src}"], "same file as the input"),
    (["--plot", "{src}"], "--plot would overwrite the input"),
    (["--save-palette", "{src}"], "--save-palette would overwrite the input"),
    (["-o", "{tmp}/o.png", "--compare", "{tmp}/o.png"], "--compare would overwrite the output"),
    (["-o", "{tmp}/o.png", "--save-palette", "{tmp}/./o.png"], "would overwrite the output"),
    (["-o", "{tmp}/o.png", "--plot", "{tmp}/p.png", "--compare", "{tmp}/p.png"],
     "--compare would overwrite the --plot file"),
    (["--frobnicate"], "--frobnicate"),
    (["--seed", "4294967296"], "--seed"),
])
def test_usage_errors_exit_2(tmp_path, small_png, args, needle):
    before = listing(tmp_path)
    original = small_png.read_bytes()
    args = [a.format(tmp=tmp_path, src=small_png) for a in args]
    proc = run(small_png, *args)
    assert_one_error_line(proc, 2, needle)
    assert listing(tmp_path) == before
    assert small_png.read_bytes() == original


def test_no_input_is_a_usage_error():
    proc = run()
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("Error: ")


@pytest.mark.parametrize("where", ["missing-folder", "under-a-file"])
def test_unwritable_output_fails_cleanly(tmp_path, small_png, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "nope" / "out.png" if where == "missing-folder" else blocker / "out.png"
    proc = run(small_png, "-o", out)
    assert_one_error_line(proc, 1, "out.png")
    assert not out.exists()


def test_output_to_a_named_pipe_writes_into_it(tmp_path, small_png):
    """-o naming a FIFO (like /dev/stdout in a pipe) writes through it, never replaces it."""
    import stat

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    received = tmp_path / "received"
    with received.open("wb") as sink:
        reader = subprocess.Popen(["cat", str(fifo)], stdout=sink)
        proc = run(small_png, "-k", "4", "-o", fifo)
        still_fifo = stat.S_ISFIFO(os.lstat(fifo).st_mode)
        if not still_fifo:
            reader.kill()  # its pipe was replaced: it would wait for a writer forever
        reader.wait()
    assert proc.returncode == 0, proc.stderr
    assert still_fifo
    with Image.open(received) as im:
        assert im.format == "PNG" and im.mode == "P"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.png", "received", "small.png"]


def test_output_through_a_symlink_replaces_its_target(tmp_path, small_png):
    """-o naming a symlink writes the file it points to (as pngquant and ImageMagick do); the
    link stays a link."""
    real = tmp_path / "sub" / "real.png"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(real)
    proc = run(small_png, "-k", "4", "-o", link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    with Image.open(real) as im:
        assert im.format == "PNG" and im.mode == "P"
    assert sorted(p.name for p in real.parent.iterdir()) == ["real.png"]


def test_interrupted_run_leaves_nothing(tmp_path, china):
    """SIGTERM mid-run: exit 130, the existing output untouched, no temporary file.

    The input is a named pipe fed half a file, so the signal comes while the command is
    certainly still reading (a timed sleep raced a fast machine to the finish)."""
    import signal
    import time

    from tests.conftest import COMMAND

    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    data = china.read_bytes()
    fifo = tmp_path / "in.jpg"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(COMMAND), str(fifo), "-k", "64", "-o", str(out)],
                            stderr=subprocess.PIPE)
    with open(fifo, "wb") as writer:  # returns once the command has opened the pipe
        writer.write(data[: len(data) // 2])
        writer.flush()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.decode().strip() == "Error: interrupted"
    assert out.read_bytes() == b"keep me"
    assert [p for p in listing(tmp_path) if p.endswith(".tmp")] == []


def test_hard_link_to_the_input_is_a_usage_error(tmp_path, small_png):
    link = tmp_path / "hard.png"
    os.link(small_png, link)
    original = small_png.read_bytes()
    proc = run(small_png, "-o", link)
    assert_one_error_line(proc, 2, "same file as the input")
    assert small_png.read_bytes() == original
