"""The fast paths keep the promises of the straightforward ones.

Large-image paths (dense counting, banded keys, lookup tables, grid reduction) are checked
against plain numpy on the same pixels: exact nearest colors, identical histograms and
indices, byte-identical files, and no scikit-learn import when no fit is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from colorquant import QuantizeOptions, core, fit, pixels, quantize_image
from colorquant.colorspace import RGBSpace
from tests.conftest import palette_image, random_image


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth gradient image with noise: many distinct colors, photo-like clusters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x + y) * 255 // max(width + height - 2, 1)], axis=-1)
    noisy = base + rng.integers(-6, 7, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def brute_nearest_sqdist(flat: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Smallest squared distance from each color to the palette, in int64: every distinct
    color against every palette color, in blocks."""
    colors, inverse = np.unique(flat, axis=0, return_inverse=True)
    out = np.empty(len(colors), dtype=np.int64)
    pal = palette.astype(np.int64)
    for start in range(0, len(colors), 1 << 14):
        block = colors[start : start + (1 << 14)].astype(np.int64)
        out[start : start + (1 << 14)] = ((block[:, None, :] - pal[None]) ** 2).sum(2).min(1)
    return out[inverse.reshape(-1)]


@pytest.mark.parametrize("k", [16, 256])
def test_large_image_every_pixel_gets_its_nearest_color(k):
    # Over DENSE_FROM pixels: dense counting, banded keys, grid-reduced fit, LUT lookup.
    array = photo_like(1100, 1000, seed=k)
    assert array.shape[0] * array.shape[1] >= pixels.DENSE_FROM
    result = quantize_image(array, k, seed=1)
    indices = np.asarray(result.image).reshape(-1)
    colors = result.palette.colors
    flat = array.reshape(-1, 3)
    chosen = ((flat.astype(np.int64) - colors[indices]) ** 2).sum(1)
    assert np.array_equal(chosen, brute_nearest_sqdist(flat, colors))
    assert len(colors) <= k
    assert np.array_equal(np.bincount(indices, minlength=len(colors)), result.palette.counts)


def test_key_strips_are_the_whole_buffer_in_order():
    for mode, channels in (("RGB", 3), ("RGBA", 4)):
        image = Image.fromarray(random_image(53, 17, seed=channels, channels=channels), mode)
        whole = pixels.pixel_keys(image.tobytes("raw", "RGBX" if channels == 3 else "RGBA"))
        bands = list(pixels.key_strips(image, rows=7))
        assert len(bands) == 8  # 53 rows in bands of 7: the last one is short
        assert np.array_equal(np.concatenate(bands), whole)


@pytest.mark.parametrize("channels", [3, 4])
def test_banded_histogram_and_lookup_match_plain_numpy(channels, monkeypatch):
    rng = np.random.default_rng(channels)
    array = rng.integers(0, 24, (301, 203, channels), dtype=np.uint8)
    if channels == 4:
        array[..., 3] = rng.choice([0, 128, 255], array.shape[:2])
    image = Image.fromarray(array, "RGB" if channels == 3 else "RGBA")
    monkeypatch.setattr(pixels, "DENSE_FROM", 1)  # the large-image path on a small image
    n = array.shape[0] * array.shape[1]
    hist = pixels.histogram(pixels.key_strips(image, rows=13), channels, n_pixels=n)
    # The straightforward path: np.unique over every pixel's canonical key.
    keys = pixels.canonical(pixels.pixel_keys(
        image.tobytes("raw", "RGBX" if channels == 3 else "RGBA")), channels)
    distinct, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    assert np.array_equal(hist.keys, distinct)
    assert np.array_equal(hist.counts, counts)
    labels = rng.integers(0, 256, len(hist), dtype=np.uint8)
    mapped = pixels.lookup(pixels.key_strips(image, rows=13), hist, labels, n_pixels=n)
    assert np.array_equal(mapped, labels[inverse.reshape(-1)])


@pytest.mark.parametrize(("k", "seed"), [(8, 0), (64, 1), (256, 2)])
def test_mapping_equals_the_straightforward_path(k, seed):
    # Straightforward path: every pixel compared with every palette color, an exact tie to
    # the color that sorts first by (R, G, B); the histogram + lookup-table path must give
    # the very same indices.
    array = photo_like(60, 80, seed=seed)
    options = QuantizeOptions(colors=k, seed=seed)
    prepared = core.prepare(array)
    palette = core.fit_palette(prepared.histogram, options)
    result = core.apply_palette(prepared, palette, options)
    flat = array.reshape(-1, 3).astype(np.int64)
    by_value = np.lexsort(palette.colors.T[::-1])
    pal = palette.colors.astype(np.int64)
    expected = by_value[((flat[:, None, :] - pal[by_value][None]) ** 2).sum(2).argmin(1)]
    assert np.array_equal(np.asarray(result.image).reshape(-1), expected)
    assert np.array_equal(result.palette.counts, np.bincount(expected, minlength=len(pal)))


def test_grid_reduction_is_the_weighted_mean_of_each_cell():
    rng = np.random.default_rng(5)
    colors = np.unique(rng.integers(0, 256, (5000, 3), dtype=np.uint8), axis=0)
    weights = rng.integers(1, 50, len(colors)).astype(np.float64)
    coords = RGBSpace().encode(colors)
    means, totals = fit.reduce_points(colors, weights, coords, limit=4000)
    cells = (colors >> 3).astype(np.int64) @ np.array([1024, 32, 1])  # the coarsest grid, 5 bits
    for cell in np.unique(cells)[:50]:
        members = cells == cell
        expected = (coords[members] * weights[members, None]).sum(0) / weights[members].sum()
        row = np.flatnonzero(np.isclose(totals, weights[members].sum())
                             & np.isclose(means, expected).all(1))
        assert len(row) == 1
    assert len(means) == len(np.unique(cells))
    assert totals.sum() == weights.sum()


def _modules_after(code: str) -> set[str]:
    code += "\nimport sys\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


def test_no_scikit_learn_when_the_image_has_at_most_k_colors(tmp_path):
    src = tmp_path / "few.png"
    colors = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [9, 9, 9]], dtype=np.uint8)
    Image.fromarray(palette_image(colors, 1200, 900, seed=3)).save(src)  # over 1 MP
    loaded = _modules_after(
        f"import colorquant\ncolorquant.quantize_file({str(src)!r}, {str(tmp_path / 'o.png')!r},"
        " k=4)")
    assert "colorquant.files" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("sklearn", "scipy")}


def test_no_scikit_learn_when_a_palette_is_given():
    loaded = _modules_after(
        "import numpy as np\nfrom colorquant import core, Palette, QuantizeOptions\n"
        "rng = np.random.default_rng(0)\n"
        "image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)\n"
        "palette = Palette(np.array([[0, 0, 0], [255, 255, 255]], np.uint8), np.zeros(2))\n"
        "core.quantize(image, QuantizeOptions(colors=2), palette=palette)")
    assert "colorquant.nearest" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("sklearn", "scipy")}


DECODE_WATCH = """
import sys, threading
from PIL import ImageFile
seen = []
load = ImageFile.ImageFile.load
def watched(self):
    seen.append(sorted(t.name for t in threading.enumerate()))
    return load(self)
ImageFile.ImageFile.load = watched
if sys.argv[3] == "first":
    import sklearn.cluster
import colorquant
colorquant.quantize_file(sys.argv[1], sys.argv[2], k=16)
print("import-thread" if any("colorquant-import" in names for names in seen) else "none")
print(" ".join(m for m in sys.modules if m.split(".")[0] == "sklearn")[:40])
"""


def _decode_watch(src, dst, order: str) -> tuple[str, bool]:
    out = subprocess.run([sys.executable, "-c", DECODE_WATCH, str(src), str(dst), order],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "COLORQUANT_WORKER": "0"})
    lines = out.stdout.splitlines()
    return lines[0], bool(lines[1:] and lines[1].strip())


def test_a_large_photo_is_decoded_while_scikit_learn_imports(tmp_path):
    """From 4 MP on, a photo's decode runs beside the import of scikit-learn (a thread
    started just before it), and the file is the same as when the import came first."""
    src = tmp_path / "photo.png"
    Image.fromarray(photo_like(2048, 2048, seed=4)).save(src, compress_level=1)
    assert os.path.getsize(src) >= 2048 * 2048 / 16
    ahead, loaded = _decode_watch(src, tmp_path / "ahead.png", "ahead")
    first, _ = _decode_watch(src, tmp_path / "first.png", "first")
    assert (ahead, loaded, first) == ("import-thread", True, "none")
    assert (tmp_path / "ahead.png").read_bytes() == (tmp_path / "first.png").read_bytes()


def test_no_import_ahead_for_a_small_or_flat_image(tmp_path):
    """A small photo, or a large image whose file is tiny for its pixels (a flat drawing,
    here of 4 colors: no fit at k=16), starts no import; the flat one loads no scikit-learn
    at all."""
    small = tmp_path / "small.png"
    Image.fromarray(photo_like(1024, 2048, seed=5)).save(small, compress_level=1)
    flat = tmp_path / "flat.png"
    colors = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [9, 9, 9]], dtype=np.uint8)
    Image.fromarray(colors[(np.arange(2048)[:, None] // 64 + np.arange(2048) // 64) % 4]
                    ).save(flat)
    assert os.path.getsize(flat) < 2048 * 2048 / 16
    assert _decode_watch(small, tmp_path / "o1.png", "ahead") == ("none", True)
    assert _decode_watch(flat, tmp_path / "o2.png", "ahead") == ("none", False)


def test_no_import_ahead_under_an_address_space_limit():
    """Under ``ulimit -v`` scikit-learn is loaded before any pixels, never on a thread."""
    code = ("import resource, sys, threading\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 44, resource.RLIM_INFINITY))\n"
            "from colorquant import memory\n"
            "memory.import_fit_backend_ahead(1 << 26, 1 << 26)\n"
            "print(threading.active_count(), 'sklearn.cluster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["1", "False"]


def test_help_and_version_import_no_heavy_module():
    for flag in ("--help", "--version"):
        loaded = _modules_after(
            f"from colorquant import cli\ntry:\n    cli.cli.main([{flag!r}])\n"
            "except SystemExit:\n    pass")
        heavy = {m.split(".")[0] for m in loaded} & {"sklearn", "scipy", "matplotlib", "numpy",
                                                      "PIL"}
        assert not heavy, flag


@pytest.mark.parametrize("options", [["-k", "64"], ["-k", "200"],
                                     ["-k", "48", "--space", "oklab", "--dither", "fs"]],
                         ids=["k64", "k200", "oklab-fs"])
def test_same_bytes_whatever_the_thread_count(tmp_path, options):
    src = tmp_path / "in.png"
    Image.fromarray(photo_like(700, 1500, seed=7)).save(src)  # over 1 MP
    digests = []
    for threads in ("1", "2", "4"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads}
        dst = tmp_path / f"out-{threads}.png"
        subprocess.run([sys.executable, "-m", "colorquant", str(src), *options, "-o", str(dst)],
                       check=True, env=env)
        digests.append(dst.read_bytes())
    assert digests[0] == digests[1] == digests[2]


BLAS_THREADS = """
import atexit, os, sys
from threadpoolctl import threadpool_info
atexit.register(lambda: print(sorted({p["num_threads"] for p in threadpool_info()
                                      if p["internal_api"] == "openblas"}), file=sys.stderr))
from colorquant import launch
sys.argv = ["colorquant", sys.argv[1], "-k", "8", "-o", sys.argv[2]]
launch.main()
"""


@pytest.mark.parametrize("given", [None, "2"])
def test_the_command_runs_openblas_on_one_thread_unless_told(tmp_path, given):
    """The command's own process (the in-process path; a worker is started the same way)
    loads OpenBLAS with one thread, unless the caller set ``OPENBLAS_NUM_THREADS``."""
    src = tmp_path / "in.png"
    Image.fromarray(photo_like(60, 80, seed=1)).save(src)
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["COLORQUANT_WORKER"] = "0"
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    proc = subprocess.run([sys.executable, "-c", BLAS_THREADS, str(src), str(tmp_path / "o.png")],
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"[{given or 1}]"


def test_prepared_keeps_no_copy_of_the_pixel_keys():
    prepared = core.prepare(random_image(20, 30, seed=4))
    assert not any(isinstance(v, np.ndarray) for v in vars(prepared).values())
    keys = np.concatenate(list(prepared.key_strips()))
    assert np.array_equal(pixels.canonical(keys, 3)[:5],
                          pixels.pack(np.asarray(prepared.image).reshape(-1, 3)[:5]))
    options = QuantizeOptions(colors=8)
    assert core.apply_palette(prepared, core.fit_palette(prepared.histogram, options),
                                  options).n_colors <= 8
