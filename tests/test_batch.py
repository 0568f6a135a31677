"""Batch mode end to end: the installed command on real files, serial and in parallel."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorquant.palettefile import read_palette
from tests.conftest import COMMAND, RUNTIME, palette_image, random_image, run, worker_pids


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under a folder (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_set(folder: Path, n: int = 5, size: tuple[int, int] = (40, 50)) -> list[Path]:
    """n small photos-like images (smooth gradients plus noise), as PNG and JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        h, w = size
        base = np.linspace(0, 1, w)[None, :, None] * rng.integers(0, 256, 3)
        array = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def png_palette(path: Path) -> list[tuple[int, ...]]:
    with Image.open(path) as im:
        assert im.mode == "P"
        raw = im.getpalette()
    return [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]


def json_lines(proc: subprocess.CompletedProcess[bytes]) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def test_many_inputs_one_call(tmp_path):
    srcs = make_set(tmp_path / "src")
    proc = run(*srcs, "-k", "8", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b""
    assert sorted(tree(tmp_path / "out")) == [f"img{i}-8c.png" for i in range(5)]
    assert "5 written, 0 failed, 0 skipped" in proc.stderr.decode()


def test_output_is_identical_for_every_jobs_count(tmp_path):
    srcs = make_set(tmp_path / "src", n=6)
    bad = tmp_path / "src" / "bad.png"
    bad.write_bytes(b"not an image")
    outs = {}
    for jobs in ("1", "2", "3"):
        proc = run(*srcs, bad, "-k", "6", "-j", jobs, "--out-dir", tmp_path / f"out{jobs}",
                   "--json")
        assert proc.returncode == 1, proc.stderr
        lines = json_lines(proc)
        for line in lines:
            line.pop("seconds")
            line["output"] = Path(line["output"]).name
        outs[jobs] = (tree(tmp_path / f"out{jobs}"), lines)
    assert outs["1"] == outs["2"] == outs["3"]
    assert len(outs["1"][0]) == 6


def test_name_template_and_format(tmp_path):
    src = make_set(tmp_path / "src", n=2)
    proc = run(*src, "-k", "4", "--out-dir", tmp_path / "out", "--name", "{k}-{stem}.{ext}",
               "-f", "gif")
    assert proc.returncode == 0, proc.stderr
    assert sorted(tree(tmp_path / "out")) == ["4-img0.gif", "4-img1.gif"]
    proc = run(*src, "--out-dir", tmp_path / "out2", "--name", "{stem}_{suffix}.webp")
    assert proc.returncode == 0, proc.stderr
    assert sorted(tree(tmp_path / "out2")) == ["img0_jpg.webp", "img1_png.webp"]
    assert Image.open(tmp_path / "out2" / "img0_jpg.webp").format == "WEBP"


@pytest.mark.parametrize(("args", "needle"), [
    (["--name", "{nope}.png"], "unknown field {nope}"),
    (["--name", "sub/{stem}.png"], "must be a file name"),
    (["--name", "{stem}.xyz"], "unknown output extension"),
    (["--name", "same.png"], "would both be written to"),
    (["--name", "{stem}.{suffix}", "--out-dir", "{src}"], "same file as the input"),
    (["--save-palette", "{tmp}/p.gpl"], "needs --shared-palette"),
    (["--shared-palette", "--palette", "{tmp}/p.gpl"], "not both"),
    (["--save-palette", "{tmp}/p.xyz", "--shared-palette"], "unknown palette extension"),
    (["-j", "0"], "--jobs"),
])
def test_batch_usage_errors_exit_2_and_write_nothing(tmp_path, args, needle):
    srcs = make_set(tmp_path / "src", n=2)
    before = tree(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{src}", str(tmp_path / "src"))
            for a in args]
    if "--out-dir" not in args:
        args += ["--out-dir", str(tmp_path / "out")]
    proc = run(*srcs, *args)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert needle in err and err.startswith("Error: ") and err.count("\n") == 1
    assert tree(tmp_path) == before


def test_recursive_mirrors_the_tree(tmp_path):
    src = tmp_path / "src"
    make_set(src / "a", n=2)
    make_set(src / "b" / "c", n=1)
    (src / "notes.txt").write_text("not an image, not an image extension")
    (src / ".hidden").mkdir()
    make_set(src / ".hidden", n=1)
    proc = run(src, "-r", "-k", "4", "--out-dir", src / "out")  # out-dir inside the input
    assert proc.returncode == 0, proc.stderr
    assert sorted(tree(src / "out")) == ["a/img0-4c.png", "a/img1-4c.png", "b/c/img0-4c.png"]
    again = run(src, "-r", "-k", "4", "--out-dir", src / "out")
    assert again.returncode == 0 and "3 written" in again.stderr.decode()  # out/ not walked
    proc = run(src, "-r")
    assert proc.returncode == 2 and b"needs --out-dir" in proc.stderr


def test_recursive_with_one_file_may_name_its_output(tmp_path):
    (src,) = make_set(tmp_path / "src", n=1)
    proc = run("-r", src, "-k", "4", "-o", tmp_path / "one.png")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "one.png").mode == "P"
    proc = run("-r", tmp_path / "src", "-k", "4", "-o", tmp_path / "two.png")
    assert proc.returncode == 2 and b"-o/--output takes one input file" in proc.stderr
    assert not (tmp_path / "two.png").exists()


def test_out_dir_is_not_left_behind_when_nothing_is_written(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "new" / "deeper"
    proc = run(bad, bad.with_name("missing.png"), "--out-dir", out)
    assert proc.returncode == 1
    assert not (tmp_path / "new").exists()  # both created levels removed again
    kept = tmp_path / "kept"
    kept.mkdir()
    proc = run(bad, "--out-dir", kept / "sub")
    assert proc.returncode == 1 and kept.is_dir() and list(kept.iterdir()) == []
    (good,) = make_set(tmp_path / "src", n=1)
    proc = run(bad, good, "-k", "4", "--out-dir", out)
    assert proc.returncode == 1 and [p.name for p in out.iterdir()] == ["img0-4c.png"]


def test_failure_does_not_stop_the_batch_unless_fail_fast(tmp_path):
    a, b = make_set(tmp_path / "src", n=2)
    bad = tmp_path / "src" / "bad.jpg"
    bad.write_bytes(a.read_bytes()[:300])
    proc = run(a, bad, b, "--out-dir", tmp_path / "out", "-j", "2")
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert sorted(tree(tmp_path / "out")) == ["img0-16c.png", "img1-16c.png"]
    assert "2 written, 1 failed, 0 skipped" in err
    assert "  failed: " + str(bad) in err and "truncated" in err.lower()
    proc = run(a, bad, b, "--out-dir", tmp_path / "ff", "-j", "1", "--fail-fast")
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert sorted(tree(tmp_path / "ff")) == ["img0-16c.png"]
    assert "1 written, 1 failed, 0 skipped, 1 not run (--fail-fast)" in err


def test_existing_outputs_replaced_or_kept_with_no_clobber(tmp_path):
    srcs = make_set(tmp_path / "src", n=3)
    out = tmp_path / "out"
    assert run(*srcs, "--out-dir", out).returncode == 0
    first = tree(out)
    (out / "img1-16c.png").write_bytes(b"mine")
    (out / "img2-16c.png").unlink()
    proc = run(*srcs, "--out-dir", out, "--no-clobber", "--json")
    assert proc.returncode == 15, proc.stderr
    assert (out / "img1-16c.png").read_bytes() == b"mine"
    assert [r["status"] for r in json_lines(proc)] == ["skipped", "skipped", "ok"]
    assert "1 written, 0 failed, 2 skipped" in proc.stderr.decode()
    proc = run(*srcs, "--out-dir", out)  # make semantics: replace
    assert proc.returncode == 0
    assert tree(out) == first


def test_single_input_skipped_by_no_clobber_says_so(tmp_path, small_png):
    out = tmp_path / "out.png"
    out.write_bytes(b"mine")
    proc = run(small_png, "-o", out, "--no-clobber")
    assert proc.returncode == 15
    assert proc.stderr.decode() == f"Skipped: {out}: exists (--no-clobber)\n"
    assert proc.stdout == b"" and out.read_bytes() == b"mine"
    assert run(small_png, "-o", out, "--no-clobber", "-q").stderr == b""


def test_json_lines(tmp_path):
    exact = tmp_path / "exact.png"
    colors = np.array([[255, 0, 0], [0, 0, 255], [9, 9, 9]], dtype=np.uint8)
    Image.fromarray(palette_image(colors, 10, 12, seed=0)).save(exact)
    noisy = tmp_path / "noisy.png"
    Image.fromarray(random_image(20, 20, seed=2)).save(noisy)
    missing = tmp_path / "missing.png"
    proc = run(exact, noisy, missing, "-k", "4", "--out-dir", tmp_path / "out", "--json")
    assert proc.returncode == 1
    records = json_lines(proc)
    assert [r["input"] for r in records] == [str(exact), str(noisy), str(missing)]
    ok, lossy, failed = records
    assert ok["status"] == "ok" and ok["error"] is None and ok["k"] == 4
    assert ok["output"] == str(tmp_path / "out" / "exact-4c.png")
    assert ok["colors"] == 3 and ok["mse"] == 0 and ok["psnr"] is None
    assert sum(p["count"] for p in ok["palette"]) == 120
    assert {p["color"] for p in ok["palette"]} == {"#ff0000", "#0000ff", "#090909"}
    assert lossy["colors"] == 4 and lossy["psnr"] > 10 and lossy["seconds"] >= 0
    counts = [p["count"] for p in lossy["palette"]]
    assert counts == sorted(counts, reverse=True)  # palette by frequency
    assert failed["status"] == "failed" and "no such file" in failed["error"]
    assert b"Error: " in proc.stderr and b"{" not in proc.stderr


def test_shared_palette_gives_every_output_the_same_palette(tmp_path):
    srcs = make_set(tmp_path / "src", n=5)
    pal = tmp_path / "shared.json"
    runs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}"
        proc = run(*srcs, "-k", "8", "--shared-palette", "--save-palette", pal, "-j", jobs,
                   "--out-dir", out, "--json")
        assert proc.returncode == 0, proc.stderr
        runs[jobs] = (tree(out), pal.read_bytes())
    assert runs["1"] == runs["2"]
    palette = read_palette(pal)
    assert len(palette) == 8
    assert palette.counts.tolist() == sorted(palette.counts.tolist(), reverse=True)
    expected = [tuple(c) for c in palette.colors.tolist()]
    for name in runs["1"][0]:
        assert png_palette(tmp_path / "out1" / name)[:8] == expected
    # the records' counts add up to the palette's counts (fitted over all pixels together)
    records = json_lines(proc)
    totals = np.sum([[p["count"] for p in r["palette"]] for r in records], axis=0)
    assert totals.tolist() == palette.counts.tolist()
    # mapping to the saved palette reproduces the shared run byte for byte
    proc = run(*srcs, "--palette", pal, "--out-dir", tmp_path / "again", "--name",
               "{stem}-8c.png")
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "again") == runs["1"][0]


def test_shared_palette_differs_from_separate_palettes(tmp_path):
    srcs = make_set(tmp_path / "src", n=3)
    assert run(*srcs, "-k", "4", "--out-dir", tmp_path / "own").returncode == 0
    own = {png_palette(p)[0] for p in (tmp_path / "own").iterdir()}
    assert len(own) > 1  # each image fitted alone gets its own colors


def test_shared_palette_with_transparency_and_opaque_images(tmp_path):
    opaque = tmp_path / "opaque.png"
    Image.fromarray(random_image(16, 16, seed=1)).save(opaque)
    clear = tmp_path / "clear.png"
    rgba = random_image(16, 16, seed=2, channels=4)
    rgba[..., 3] = np.where(rgba[..., 3] > 128, 255, 0)
    Image.fromarray(rgba, "RGBA").save(clear)
    pal = tmp_path / "p.txt"
    proc = run(opaque, clear, "-k", "6", "--shared-palette", "--out-dir", tmp_path / "out",
               "--save-palette", pal)
    assert proc.returncode == 0, proc.stderr
    assert all(len(h) == 9 for h in pal.read_text().split())  # #rrggbbaa
    with Image.open(tmp_path / "out" / "opaque-6c.png") as im:
        assert im.convert("RGBA").getextrema()[3] == (255, 255)


def test_palette_file_maps_without_fitting(tmp_path):
    src = tmp_path / "src.png"
    array = random_image(30, 30, seed=4)
    Image.fromarray(array).save(src)
    pal = tmp_path / "p.gpl"
    pal.write_text("GIMP Palette\n0 0 0\n255 255 255\n255 0 0\n0 0 255\n0 255 0\n")
    out = tmp_path / "out.png"
    proc = run(src, "--palette", pal, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json_lines(proc)[0]["k"] == 5
    given = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 0, 255), (0, 255, 0)]
    assert png_palette(out)[:5] == given  # the file's order, kept
    with Image.open(out) as im:
        got = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(np.int64)
    colors = np.array(given, dtype=np.int64)
    flat = array.reshape(-1, 3).astype(np.int64)
    dist = ((flat[:, None] - colors[None]) ** 2).sum(2)
    assert np.array_equal(((flat - got) ** 2).sum(1), dist.min(1))  # exact nearest color


def test_palette_mode_does_not_import_scikit_learn(tmp_path):
    src = tmp_path / "src.png"
    Image.fromarray(random_image(30, 30, seed=4)).save(src)
    pal = tmp_path / "p.hex"
    pal.write_text("000000\nffffff\n")
    code = ("import sys; from colorquant.cli import run\n"
            f"code = run([{str(src)!r}, '--palette', {str(pal)!r}, '-j', '1', '-o', "
            f"{str(tmp_path / 'o.png')!r}])\n"
            "print(code, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["0", "False"], out.stderr
    assert (tmp_path / "o.png").exists()


def test_palette_errors(tmp_path):
    clear = tmp_path / "clear.png"
    rgba = random_image(8, 8, seed=2, channels=4)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(clear)
    pal = tmp_path / "p.txt"
    pal.write_text("#000000\n#ffffff\n")
    proc = run(clear, "--palette", pal, "-o", tmp_path / "o.png")
    assert proc.returncode == 1
    assert b"clear.png: the image has transparency but the palette has no alpha" in proc.stderr
    assert not (tmp_path / "o.png").exists()
    bad = tmp_path / "bad.txt"
    bad.write_text("#zzzzzz\n")
    proc = run(clear, "--palette", bad, "-o", tmp_path / "o.png")
    assert proc.returncode == 1 and b"bad.txt: line 1" in proc.stderr
    proc = run(clear, "--palette", tmp_path / "none.gpl", "-o", tmp_path / "o.png")
    assert proc.returncode == 1 and b"no such file" in proc.stderr


def test_save_palette_of_one_image(tmp_path, flower):
    pal = tmp_path / "flower.gpl"
    proc = run(flower, "-k", "5", "-o", tmp_path / "f.png", "--save-palette", pal, "--json")
    assert proc.returncode == 0, proc.stderr
    record = json_lines(proc)[0]
    assert read_palette(pal).hex() == [p["color"] for p in record["palette"]]
    assert png_palette(tmp_path / "f.png")[:5] == [tuple(c) for c in
                                                    read_palette(pal).colors.tolist()]


def test_save_palette_that_cannot_be_written_leaves_no_image(tmp_path, flower):
    """An RGBA palette cannot go to .gpl: the error comes before the image is written, and the
    palette file does not change the image."""
    src = tmp_path / "alpha.png"
    rgba = np.asarray(Image.open(flower).convert("RGBA")).copy()
    rgba[:40, :40, 3] = 0
    Image.fromarray(rgba).save(src)
    out = tmp_path / "out.png"
    proc = run(src, "-k", "6", "-o", out, "--save-palette", tmp_path / "p.gpl")
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith(f"Error: {tmp_path / 'p.gpl'}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.png"]
    assert run(src, "-k", "6", "-o", out, "--save-palette", tmp_path / "p.json").returncode == 0
    assert run(src, "-k", "6", "-o", tmp_path / "plain.png").returncode == 0
    assert out.read_bytes() == (tmp_path / "plain.png").read_bytes()


def test_save_palette_of_standard_input_is_its_own_saved_after_its_image(tmp_path, flower):
    """Standard input is read once, so it is fitted with its image, and its palette saved
    after the image: the palette of the written file, with its pixel counts; a palette file
    that cannot be written is reported after the image and its record are out."""
    out = tmp_path / "o.png"
    pal = tmp_path / "p.json"
    proc = run("-", "-k", "5", "-o", out, "--save-palette", pal, "--json",
               stdin=flower.read_bytes())
    assert proc.returncode == 0, proc.stderr
    record = json_lines(proc)[0]
    saved = read_palette(pal)
    assert saved.hex() == [p["color"] for p in record["palette"]]
    assert saved.counts.tolist() == [p["count"] for p in record["palette"]]
    assert png_palette(out)[:5] == [tuple(c) for c in saved.colors.tolist()]
    rgba = np.asarray(Image.open(flower).convert("RGBA")).copy()
    rgba[:40, :40, 3] = 0  # an RGBA palette cannot go to .gpl
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, "PNG")
    out = tmp_path / "alpha.png"
    proc = run("-", "-k", "6", "-o", out, "--save-palette", tmp_path / "p.gpl", "--json",
               stdin=buffer.getvalue())
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith(f"Error: {tmp_path / 'p.gpl'}: ")
    assert out.exists() and not (tmp_path / "p.gpl").exists()
    assert json_lines(proc)[0]["status"] == "ok"


def test_a_library_batch_refuses_to_save_one_palette_of_many(tmp_path):
    from colorquant import QuantizeOptions, executors, plan
    from colorquant.batch import BatchRun

    srcs = make_set(tmp_path / "src")
    jobs = plan.plan([str(s) for s in srcs], k=8, out_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="save_palette with several inputs"):
        BatchRun(jobs, QuantizeOptions(colors=8), executor=executors.InProcess(),
                 save_palette=str(tmp_path / "p.json"))
    BatchRun(jobs, QuantizeOptions(colors=8), executor=executors.InProcess(),
             shared_palette=True, save_palette=str(tmp_path / "p.json"))


def test_shared_histograms_merge_in_bounded_batches(monkeypatch):
    from colorquant import batch, executors, pixels

    rng = np.random.default_rng(0)
    parts = []
    for i in range(7):
        keys = pixels.pixel_keys(rng.integers(0, 8, (50, 4), dtype=np.uint8).tobytes())
        parts.append(pixels.histogram(keys, 3 if i % 3 else 4))
    monkeypatch.setattr(executors, "MERGE_EVERY", 40)  # flush every few images
    merger = executors._Merger(batch.merge_histograms)
    for part in parts:
        merger.add(part)
        assert merger._size < 40 + max(len(p) for p in parts)  # pending stays bounded
    merged = merger.result()
    expected = pixels.merge([batch._rgba(p) for p in parts])
    assert merged.channels == 4
    assert np.array_equal(merged.keys, expected.keys)
    assert np.array_equal(merged.counts, expected.counts)
    assert merged.n_pixels == 7 * 50


def on_a_terminal(*args: object) -> tuple[int, str]:
    """Run the command with stderr on a pseudo-terminal: its exit code and what it showed."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([str(COMMAND), *map(str, args)], stderr=slave,
                            stdout=subprocess.PIPE)
    os.close(slave)
    proc.wait(timeout=120)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode()


def test_progress_bar_only_on_a_terminal(tmp_path):
    srcs = make_set(tmp_path / "src", n=3)
    piped = run(*srcs, "--out-dir", tmp_path / "a")
    assert piped.returncode == 0 and "colorquant" not in piped.stderr.decode().lower()
    code, text = on_a_terminal(*srcs, "--out-dir", tmp_path / "b")
    assert code == 0
    assert "colorquant" in text and "3/3" in text and "3 written" in text


def test_a_second_sigterm_does_not_cut_a_pool_process_clean_up_short(tmp_path):
    """Stopping a pool sends its busy processes a SIGTERM, then the executor sends the others
    another one as soon as it sees the first end: the second must not interrupt the clean-up
    (the removal of a temporary file) that the first started. A real process and signals."""
    script = tmp_path / "pool.py"
    script.write_text(
        "import os, signal, time\n"
        "from colorquant import executors\n"
        "executors._init_pool_process()\n"
        "executors._busy = True  # in a task\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # the pool's stop\n"
        "    time.sleep(30)\n"
        "except SystemExit:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # the executor's, during the clean-up\n"
        "    time.sleep(0.2)  # a handler that raised would raise here\n"
        "    print('cleaned up', flush=True)\n"
        "    raise\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60,
                          check=False)
    assert proc.stdout == b"cleaned up\n", proc.stderr
    assert proc.returncode == 130  # the task still ends as stopped


@pytest.mark.parametrize("how", ["sigterm-to-parent", "ctrl-c-to-group"])
def test_interrupted_batch_leaves_no_partial_files(tmp_path, china, how, cli_mode):
    """SIGTERM, or Ctrl-C (SIGINT to the whole process group), to a parallel batch: exit 130,
    every output complete, no temporary files, no worker left running."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"c{i:02d}.jpg").write_bytes(china.read_bytes())
    out = tmp_path / "out"
    idle = set(worker_pids(RUNTIME))  # the warm workers, before the call
    proc = subprocess.Popen([str(COMMAND), "-r", str(src), "-k", "64", "-j", "2",
                             "--out-dir", str(out)], stderr=subprocess.PIPE,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.is_dir() and any(out.iterdir())):
        time.sleep(0.05)
    if how == "sigterm-to-parent":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the batch finished before the signal arrived")
    assert proc.returncode == 130, err
    assert err.decode().strip().endswith("Error: interrupted")
    assert "Traceback" not in err.decode()
    names = sorted(os.listdir(out)) if out.exists() else []  # removed when nothing was written
    assert [n for n in names if n.endswith(".tmp")] == []
    assert len(names) < 12
    for name in names:
        with Image.open(out / name) as im:
            im.load()  # complete, decodable
    time.sleep(0.5)
    # the workers share the parent's command line, which names the unique output folder
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, check=False)
    assert leftover.stdout == b"", "worker processes outlived the batch"
    if cli_mode == "worker":  # there, they share the warm worker's: only the workers remain
        deadline = time.monotonic() + 10
        while set(worker_pids(RUNTIME)) - idle and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(worker_pids(RUNTIME)) <= idle, "the call's processes outlived the batch"


def pool_processes(pid: int) -> list[int]:
    """The batch's worker processes: Python children of the command run in-process, or of
    the warm worker's child that serves the call (grandchildren of the warm worker); not the
    short-lived tools the command may run (``lscpu``, for the core count)."""
    import psutil

    found = []
    with contextlib.suppress(psutil.Error):
        found += psutil.Process(pid).children()
    for worker in worker_pids(RUNTIME):
        with contextlib.suppress(psutil.Error):
            found += [p for child in psutil.Process(worker).children() for p in child.children()]
    pids = []
    for process in found:
        with contextlib.suppress(psutil.Error):
            if "python" in os.path.basename(process.exe()):
                pids.append(process.pid)
    return pids


def test_a_killed_worker_fails_the_batch_cleanly(tmp_path, china):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"c{i}.jpg").write_bytes(china.read_bytes())
    out = tmp_path / "out"
    proc = subprocess.Popen([str(COMMAND), "-r", str(src), "-k", "64", "-j", "2",
                             "--out-dir", str(out)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and not killed and proc.poll() is None:
        for pid in pool_processes(proc.pid):
            with contextlib.suppress(ProcessLookupError):  # it ended since it was seen
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.05)
    if not killed:
        pytest.skip("no worker process seen")
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the batch finished before the kill")
    assert proc.returncode == 1, err
    assert "worker process died" in err.decode() and "Traceback" not in err.decode()
    # (SIGKILL allows no clean-up: a hidden .tmp may remain, but never a partial output)
    for name in os.listdir(out) if out.exists() else []:  # removed when nothing was written
        if not name.endswith(".tmp"):
            with Image.open(out / name) as im:
                im.load()


@pytest.mark.parametrize(("files", "jobs", "colors", "loaded"), [
    (16, 2, 100, True), (15, 2, 100, False), (16, 2, 64, False), (8, 1, 256, True)])
def test_only_large_batches_above_64_colors_load_the_compiled_fit(monkeypatch, files, jobs,
                                                                  colors, loaded):
    from colorquant import executors, fit, pixels
    from colorquant.plan import Job

    monkeypatch.setattr(fit, "_KERNEL", None)
    monkeypatch.setattr(pixels, "_KERNEL", None)  # the compiled histogram comes with it
    plan = [Job(f"in{i}.png", f"out{i}.png", "png") for i in range(files)]
    executors.local_executor(jobs, plan, colors=colors)
    assert (fit._KERNEL is not None) is loaded
    assert (pixels._KERNEL is not None) is loaded


def test_a_large_batch_above_64_colors_equals_single_calls(tmp_path):
    srcs = make_set(tmp_path / "src", n=16, size=(60, 80))
    proc = run(*srcs, "-k", "100", "-j", "2", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    for src in srcs[::5]:
        one = tmp_path / f"one-{src.stem}.png"
        assert run(src, "-k", "100", "-o", one).returncode == 0
        assert one.read_bytes() == (tmp_path / "out" / f"{src.stem}-100c.png").read_bytes()
