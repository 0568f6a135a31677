"""The PNG encoder, the palette's storage order and ``--optimize``.

The encoder's files are decoded by Pillow, by a plain-loop reference decoder written here
(chunks, CRCs, zlib, the five PNG filters, bit unpacking) and by ImageMagick when it is
installed, each to exactly the indices and palette written.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colorquant import QuantizeOptions, SaveOptions, core, encode, frames
from colorquant.palette import Palette
from tests.conftest import random_image, run

# --- a reference decoder: plain loops, no numpy -------------------------------------------


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def reference_decode(data: bytes) -> tuple[list[list[int]], list[tuple[int, ...]], list[str]]:
    """(indices, palette RGBA entries, chunk names) of an indexed, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, names, idat = 8, [], b""
    plte, trns = b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        names.append(kind.decode())
        if kind == b"IHDR":
            width, height, bits, color_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert color_type == 3 and interlace == 0
        elif kind == b"PLTE":
            plte = body
        elif kind == b"tRNS":
            trns = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = (width * bits + 7) // 8
    assert len(raw) == height * (stride + 1)
    previous = [0] * stride
    indices = []
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = list(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - 1] if x else 0
            b = previous[x]
            c = previous[x - 1] if x else 0
            predictor = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            line[x] = (line[x] + predictor) & 0xFF
        previous = line
        row = []
        for x in range(width):
            byte = line[x * bits // 8]
            shift = 8 - bits - (x * bits) % 8
            row.append((byte >> shift) & ((1 << bits) - 1))
        indices.append(row)
    palette = [(plte[3 * i], plte[3 * i + 1], plte[3 * i + 2], trns[i] if i < len(trns) else 255)
               for i in range(len(plte) // 3)]
    return indices, palette, names


def _case(height: int, width: int, n_colors: int, seed: int, alpha: bool,
          ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n_colors, (height, width), dtype=np.uint8)
    palette = random_image(1, n_colors, seed, 4 if alpha else 3)[0]
    if alpha:
        palette[: n_colors // 2, 3] = rng.integers(0, 255, n_colors // 2)
        palette[n_colors // 2:, 3] = 255
    return indices, palette


@pytest.mark.parametrize("row_filter", encode.FILTERS)
@pytest.mark.parametrize(("n_colors", "bits"), [(2, 1), (3, 2), (4, 2), (16, 4), (5, 8),
                                                (200, 8), (256, 8)])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (16, 9)])
def test_encoder_decodes_to_what_was_written(row_filter, n_colors, bits, shape):
    indices, palette = _case(*shape, n_colors, seed=n_colors * 31 + row_filter,
                             alpha=n_colors % 2 == 0)
    data = encode.png_bytes(indices, palette, level=6, bits=bits, row_filter=row_filter)
    found, entries, names = reference_decode(data)
    assert found == indices.tolist()
    assert [e[:palette.shape[1]] for e in entries] == [tuple(p) for p in palette.tolist()]
    assert names[0] == "IHDR" and names[-1] == "IEND"
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "P"
        assert np.array_equal(np.asarray(image), indices)
        rgba = np.asarray(image.convert("RGBA"))
    full = np.hstack([palette[:, :3], palette[:, 3:] if palette.shape[1] == 4
                      else np.full((n_colors, 1), 255, np.uint8)])
    assert np.array_equal(rgba, full[indices])


@pytest.mark.parametrize("level", [0, 1, 6, 8, 9, 12])
def test_every_deflate_level_round_trips(level):
    indices, palette = _case(40, 33, 16, seed=level, alpha=True)
    found, _, _ = reference_decode(encode.png_bytes(indices, palette, level=level))
    assert found == indices.tolist()


def _stripes(height: int, width: int, n_colors: int) -> np.ndarray:
    """Flat data: diagonal bands of equal indices (long runs and repeats, like a drawing)."""
    rows, cols = np.indices((height, width))
    return ((rows + cols) // 37 % n_colors).astype(np.uint8)


def test_the_default_level_follows_the_documented_rule():
    rng = np.random.default_rng(5)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    noise = rng.integers(0, 256, (120, 150), dtype=np.uint8)  # deflates about 1:1
    flat = _stripes(120, 150, 256)  # deflates far more than FLAT_RATIO:1
    assert encode.png_bytes(noise, palette, level=None) == encode.png_bytes(
        noise, palette, level=10)
    assert encode.png_bytes(flat, palette, level=None) == encode.png_bytes(
        flat, palette, level=11)
    big = _stripes(2001, 2000, 4)  # just above EFFORT_PIXELS: the lazy level
    assert big.size > encode.EFFORT_PIXELS
    assert encode.png_bytes(big, palette[:4], level=None) == encode.png_bytes(
        big, palette[:4], level=8)
    assert encode.png_bytes(big, palette[:4], level=8) != encode.png_bytes(
        big, palette[:4], level=11)
    # above it, LAZY_COLORS colors or more on data that are not flat: level 7
    wide = np.repeat(rng.integers(0, 256, (1001, 2000), dtype=np.uint8), 2, axis=0)[:2001]
    # (each row twice: repeats, so that levels 7 and 8 differ)
    for data, colors, level in [(wide, 256, 7), (wide % 128, 128, 8),
                                (_stripes(2001, 2000, 256), 256, 8)]:
        assert encode.auto_level(encode.scanlines(data), data.size, colors) == level
        assert encode.png_bytes(data, palette[:colors], level=None) == encode.png_bytes(
            data, palette[:colors], level=level)
    assert encode.png_bytes(wide, palette, level=7) != encode.png_bytes(wide, palette, level=8)


def test_optimize_steps_down_above_the_effort_size():
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    big = _stripes(2001, 2000, 4)
    packed = encode.png_bytes(big, palette, level=10)
    wide = encode.png_bytes(big, palette, level=10, bits=8)
    smaller = min(packed, wide, key=len)
    image = Image.fromarray(big, "P")
    assert encode.optimized(image, palette, level=None, optimize=1) == smaller
    # no oxipng above the effort size: level 2 is level 1 there (pyoxipng need not exist)
    assert encode.optimized(image, palette, level=None, optimize=2) == smaller


def test_compress_level_takes_libdeflate_levels_and_names_a_bad_one(flower, tmp_path):
    outputs = {}
    for level in ("0", "12"):
        done = run(flower, "--compress-level", level, "-o", tmp_path / f"{level}.png")
        assert done.returncode == 0, done.stderr
        with Image.open(tmp_path / f"{level}.png") as image:
            outputs[level] = np.asarray(image.convert("RGBA"))
    assert np.array_equal(outputs["0"], outputs["12"])
    assert (tmp_path / "12.png").stat().st_size < (tmp_path / "0.png").stat().st_size
    done = run(flower, "--compress-level", "13", "-o", tmp_path / "x.png")
    assert done.returncode == 2
    assert b"13" in done.stderr and b"--compress-level" in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_trns_stops_at_the_last_entry_that_is_not_opaque():
    palette = np.array([[1, 2, 3, 0], [4, 5, 6, 128], [7, 8, 9, 255], [1, 1, 1, 255]], np.uint8)
    assert encode.trns(palette) == bytes([0, 128])
    assert encode.trns(palette[2:]) == b""
    _, entries, names = reference_decode(encode.png_bytes(np.zeros((2, 2), np.uint8),
                                                          palette[2:], level=6))
    assert "tRNS" not in names and all(e[3] == 255 for e in entries)


def test_metadata_chunks_are_written_and_read_back():
    profile = b"not really a profile, but bytes that must come back" * 3
    data = encode.png_bytes(np.zeros((3, 3), np.uint8), np.zeros((2, 3), np.uint8), level=6,
                            metadata=encode.Metadata(profile, (300.0, 150.0)))
    with Image.open(io.BytesIO(data)) as image:
        assert image.info["icc_profile"] == profile
        assert [round(v) for v in image.info["dpi"]] == [300, 150]
    assert reference_decode(data)[2] == ["IHDR", "iCCP", "PLTE", "pHYs", "IDAT", "IEND"]


def test_pack_and_unpack_are_inverse_for_every_bit_depth():
    for bits in (1, 2, 4, 8):
        indices = np.random.default_rng(bits).integers(0, 1 << bits, (5, 11), dtype=np.uint8)
        rows = encode.pack_rows(indices, bits)
        assert rows.shape == (5, (11 * bits + 7) // 8)
        assert np.array_equal(encode.unpack_rows(rows, bits, 11), indices)


def test_large_idat_is_cut_into_chunks():
    indices = np.random.default_rng(0).integers(0, 256, (1100, 1100), dtype=np.uint8)
    data = encode.png_bytes(indices, random_image(1, 256, 0)[0], level=1)
    found, _, names = reference_decode(data)
    assert names.count("IDAT") > 1
    assert found == indices.tolist()


@pytest.mark.skipif(shutil.which("convert") is None, reason="ImageMagick's convert is absent")
@pytest.mark.parametrize(("n_colors", "row_filter"), [(2, encode.PAETH), (16, encode.SUB),
                                                      (200, encode.AVERAGE), (9, encode.UP)])
def test_imagemagick_decodes_the_encoder_output(tmp_path, n_colors, row_filter):
    indices, palette = _case(23, 17, n_colors, seed=n_colors, alpha=True)
    path = tmp_path / "out.png"
    path.write_bytes(encode.png_bytes(indices, palette, level=9, row_filter=row_filter))
    done = subprocess.run(["convert", str(path), "-depth", "8", "rgba:-"], capture_output=True,
                          check=True)
    rgba = np.frombuffer(done.stdout, np.uint8).reshape(23, 17, 4)
    expected = palette[indices]
    visible = expected[..., 3] > 0  # ImageMagick may give fully transparent pixels any RGB
    assert np.array_equal(rgba[..., 3], expected[..., 3])
    assert np.array_equal(rgba[visible], expected[visible])


# --- the palette's storage order ------------------------------------------------------------


def test_storage_order_puts_entries_that_are_not_opaque_first():
    colors = np.array([[9, 9, 9, 255], [1, 1, 1, 40], [5, 5, 5, 255], [0, 0, 0, 0],
                       [2, 2, 2, 255], [3, 3, 3, 200]], np.uint8)
    counts = np.array([50, 3, 70, 9, 50, 8])
    order = Palette(colors, counts).storage_order()
    # brute force: (opaque, -count, color) sorted
    expected = sorted(range(6), key=lambda i: (colors[i, 3] == 255, -counts[i],
                                               tuple(colors[i][::-1].tolist())))
    assert order.tolist() == expected
    rgb = Palette(colors[:, :3], counts)
    assert rgb.storage_order().tolist() == rgb.frequency_order().tolist()


def test_a_fitted_graphic_keeps_its_trns_as_short_as_its_translucent_entries(corpus):
    path = next(iter(sorted((corpus / "graphics").glob("*.png"))))
    result = core.quantize(Image.open(path), QuantizeOptions(colors=32))
    alpha = result.palette.colors[:, 3]
    translucent = int((alpha < 255).sum())
    assert translucent > 1
    assert (alpha[:translucent] < 255).all() and (alpha[translucent:] == 255).all()
    assert len(encode.trns(result.palette.colors)) == translucent


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        return np.asarray(image.convert("RGBA"))


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "TIFF", "BMP"])
@pytest.mark.parametrize("alpha", [False, True])
def test_any_palette_order_gives_the_same_pixels_in_every_format(fmt, alpha, flower):
    image = Image.open(flower).convert("RGBA" if alpha else "RGB").resize((96, 64))
    if alpha:
        array = np.asarray(image).copy()
        array[:20, :, 3] = 0
        array[20:30, :, 3] = 255 if fmt == "GIF" else 120
        image = Image.fromarray(array, "RGBA")
    result = core.quantize(image, QuantizeOptions(colors=24))
    n = len(result.palette)
    outputs = []
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(n) if seed else np.arange(n)
        inverse = np.argsort(order)
        indices = inverse[np.asarray(result.image)].astype(np.uint8)
        colors = result.palette.colors[order]
        shuffled = Image.fromarray(indices, "P")
        shuffled.putpalette(colors.tobytes(), "RGBA" if alpha else "RGB")
        clear = np.flatnonzero(colors[:, 3] == 0) if alpha else []
        buffer = io.BytesIO()
        encode.write(buffer, [shuffled], fmt, frames.Frames([image]),
                     transparent_index=int(clear[0]) if len(clear) else None,
                     save=SaveOptions(compress_level=8, strip=True), n_colors=n)
        outputs.append(_decoded(buffer.getvalue()))
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])


# --- SaveOptions: the file layer's settings -----------------------------------------------


def _chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, in order."""
    found, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        found.append(kind)
        at += 12 + length
    return found


def test_save_options_reach_the_file_in_process_and_through_a_pool(tmp_path, corpus):
    """``quantize_file`` and a batch on a pool of processes (each task gets the settings
    pickled) write the same bytes for the same :class:`SaveOptions`, and each setting
    changes the file as it says."""
    from colorquant import executors, files, plan
    from colorquant.batch import BatchRun
    from colorquant.errors import NotSmallerError

    sources = [corpus / "tricky" / "pillow-hopper.iccprofile.tif", _graphic(corpus)]
    options = QuantizeOptions(colors=16)
    written: dict[SaveOptions, list[bytes]] = {}
    for save in (SaveOptions(), SaveOptions(compress_level=0), SaveOptions(strip=True)):
        alone = []
        for n, src in enumerate(sources):
            dst = tmp_path / f"{n}-{save!r}.png"
            files.quantize_file(src, dst, options=options, save=save)
            alone.append(dst.read_bytes())
        folder = tmp_path / f"pool-{save!r}"
        jobs = plan.plan([str(s) for s in sources], k=16, out_dir=str(folder))
        folder.mkdir()
        with executors.ProcessPool(2) as pool:
            results = list(BatchRun(jobs, options, executor=pool, save=save))
        assert [r.status for r in results] == ["ok", "ok"], results
        assert [Path(job.dst).read_bytes() for job in jobs] == alone
        written[save] = alone
    default, level0, stripped = written.values()
    for n in range(2):  # the same pixels every time
        assert np.array_equal(_decoded(default[n]), _decoded(level0[n]))
        assert np.array_equal(_decoded(default[n]), _decoded(stripped[n]))
        assert len(level0[n]) > len(default[n])
    assert b"iCCP" in _chunks(default[0]) and b"pHYs" in _chunks(default[0])
    assert b"iCCP" not in _chunks(stripped[0]) and b"pHYs" not in _chunks(stripped[0])
    # the TIFF source is uncompressed, the PNG source is not: only the latter is refused
    files.quantize_file(sources[0], tmp_path / "smaller.png", options=options,
                        save=SaveOptions(skip_if_larger=True))
    with pytest.raises(NotSmallerError):
        files.quantize_file(sources[1], tmp_path / "larger.png", options=options,
                            save=SaveOptions(skip_if_larger=True, compress_level=0))
    assert not (tmp_path / "larger.png").exists()


# --- --optimize -------------------------------------------------------------------------


def _graphic(corpus: Path) -> Path:
    return sorted((corpus / "graphics").glob("*.png"))[3]


@pytest.mark.parametrize("k", [16, 200])
def test_optimize_levels_give_the_same_pixels_and_the_same_bytes_twice(tmp_path, corpus, k):
    src = _graphic(corpus)
    sizes = {}
    pixels = {}
    for level in (0, 1, 2):
        out = tmp_path / f"o{level}.png"
        again = tmp_path / f"again{level}.png"
        for dst in (out, again):
            done = run(src, "-k", k, "-O", level, "-o", dst)
            assert done.returncode == 0, done.stderr
        assert out.read_bytes() == again.read_bytes()
        sizes[level] = out.stat().st_size
        pixels[level] = _decoded(out.read_bytes())
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2])
    assert sizes[2] <= sizes[1]


def test_oxipng_gives_the_same_bytes_with_one_thread_or_many(tmp_path, corpus):
    """oxipng searches in parallel (rayon); its choice must not depend on the threads."""
    src = _graphic(corpus)
    script = ("import sys; from colorquant import files, QuantizeOptions, SaveOptions; "
              "files.quantize_file(sys.argv[1], sys.argv[2], "
              "options=QuantizeOptions(colors=64), save=SaveOptions(optimize=2))")
    found = []
    for threads in ("1", "2", "4"):
        dst = tmp_path / f"t{threads}.png"
        env = {**os.environ, "RAYON_NUM_THREADS": threads, "COLORQUANT_WORKER": "0"}
        subprocess.run([sys.executable, "-c", script, str(src), str(dst)], env=env,
                       check=True)
        found.append(dst.read_bytes())
    assert found[0] == found[1] == found[2]


def test_a_given_palette_keeps_its_order_with_optimize(tmp_path, corpus):
    src = sorted((corpus / "photos").glob("*.png"))[0]
    saved = tmp_path / "p.hex"
    assert run(src, "-k", 12, "--save-palette", saved, "-o", tmp_path / "a.png").returncode == 0
    colors = saved.read_text().split()
    assert len(colors) == 12
    given = tmp_path / "reversed.hex"
    given.write_text("\n".join(colors[::-1]) + "\n")
    out = tmp_path / "mapped.png"
    done = run(src, "--palette", given, "-O", 2, "-o", out)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.mode == "P"
        written = ["".join(f"{v:02x}" for v in rgb)
                   for rgb in np.array(image.getpalette("RGB")).reshape(-1, 3)[:12]]
    assert written == [c.lstrip("#").lower() for c in colors[::-1]]


def test_an_unknown_optimize_level_is_a_usage_error(small_png, tmp_path):
    done = run(small_png, "-O", "7", "-o", tmp_path / "x.png")
    assert done.returncode == 2
    assert b"7" in done.stderr and b"--optimize" in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_optimize_with_another_format_works_and_says_so_once(small_png, tmp_path):
    done = run(small_png, "-k", 4, "-O", 1, "-o", tmp_path / "x.gif")
    assert done.returncode == 0
    assert done.stderr.decode().count("--optimize applies to single-frame PNG and WebP only") == 1
    assert (tmp_path / "x.gif").exists()
    done = run(small_png, "-k", 4, "-O", 1, "-o", tmp_path / "x.png")
    assert done.returncode == 0 and done.stderr == b""


def _padded(data: bytes, size: int) -> bytes:
    """A PNG file padded with a private chunk before IEND to exactly ``size`` bytes."""
    pad = size - len(data) - 12
    assert pad >= 0
    body = b"x" * pad
    extra = struct.pack(">I", pad) + b"prVt" + body + struct.pack(">I", zlib.crc32(b"prVt" + body))
    return data[:-12] + extra + data[-12:]


def test_skip_if_larger_compares_the_optimized_bytes(tmp_path, corpus):
    base = tmp_path / "base.png"  # 16 colors: quantized again, the pixels stay as they are
    assert run(_graphic(corpus), "-k", 16, "-O", 1, "-o", base).returncode == 0
    for level in (0, 1):
        assert run(base, "-k", 16, "-O", level, "-o", tmp_path / f"o{level}.png").returncode == 0
    plain, smaller = ((tmp_path / f"o{level}.png").stat().st_size for level in (0, 1))
    assert smaller < plain
    padded = tmp_path / "in.png"
    padded.write_bytes(_padded(base.read_bytes(), (plain + smaller) // 2))
    skipped = run(padded, "-k", 16, "--skip-if-larger", "-o", tmp_path / "a.png")
    assert skipped.returncode == 98
    assert not (tmp_path / "a.png").exists()
    written = run(padded, "-k", 16, "-O", 1, "--skip-if-larger", "-o", tmp_path / "b.png")
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "o1.png").read_bytes()


def test_json_and_verbose_report_the_bytes_written(small_png, tmp_path):
    import json

    for level in (0, 1):
        out = tmp_path / f"r{level}.png"
        done = run(small_png, "-k", 8, "-O", level, "-o", out, "--json", "-v")
        assert done.returncode == 0
        record = json.loads(done.stdout)
        assert record["bytes"] == out.stat().st_size
        assert f"{out.stat().st_size:,} bytes" in done.stderr.decode()
    tif = tmp_path / "r.tif"
    record = json.loads(run(small_png, "-k", 8, "-o", tif, "--json").stdout)
    assert record["bytes"] == tif.stat().st_size


def test_tiff_is_deflated_and_decodes_to_the_png_pixels(tmp_path, flower):
    png, tif = tmp_path / "a.png", tmp_path / "a.tif"
    for out in (png, tif):
        assert run(flower, "-k", 32, "-o", out).returncode == 0
    with Image.open(tif) as image:
        assert image.info["compression"] == "tiff_adobe_deflate"
        assert np.array_equal(_decoded(tif.read_bytes()), _decoded(png.read_bytes()))
        assert tif.stat().st_size < image.width * image.height // 2


def test_optimized_webp_has_the_same_pixels_and_bytes_each_run(tmp_path, small_png):
    outs = [tmp_path / name for name in ("a.webp", "b.webp", "c.webp")]
    for out, level in zip(outs, (0, 1, 1), strict=True):
        done = run(small_png, "-k", 8, "-O", level, "-o", out)
        assert done.returncode == 0 and done.stderr == b""
    assert outs[1].read_bytes() == outs[2].read_bytes()
    assert np.array_equal(_decoded(outs[0].read_bytes()), _decoded(outs[1].read_bytes()))


@pytest.mark.parametrize("n_colors", [2, 3, 16, 17, 256])
@pytest.mark.parametrize("band", [1, 37, 1 << 20])
def test_a_png_read_from_the_image_in_bands_is_the_png_of_its_indices(monkeypatch, n_colors,
                                                                       band):
    """``image_png`` (the file writer: the indices read out of Pillow in bands) gives the
    bytes of ``png_bytes`` on the whole index array, for bands of a row or less, several
    rows, and the whole image, with a width that leaves packed rows part-filled, at the
    fewest bits and at 8 (``--optimize``'s wide rows)."""
    monkeypatch.setattr(encode, "BAND_PIXELS", band)
    indices, palette = _case(23, 29, n_colors, seed=n_colors, alpha=n_colors % 2 == 1)
    image = Image.fromarray(indices, "P")
    metadata = encode.Metadata(icc_profile=b"profile" * 9, dpi=(72.0, 96.0))
    for level, bits in ((None, None), (1, None), (10, None), (10, 8)):
        expected = encode.png_bytes(indices, palette, level=level, bits=bits, metadata=metadata)
        found = encode.image_png(image, palette, level=level, bits=bits, metadata=metadata)
        assert bytes(found) == expected
    assert reference_decode(bytes(found))[0] == indices.tolist()


def test_a_png_of_several_idat_chunks_decodes(monkeypatch):
    """The deflated stream cut in pieces of ``IDAT_SIZE`` (here 1,000 bytes): in order, each
    in a chunk of its own with its CRC, all full but the last."""
    monkeypatch.setattr(encode, "IDAT_SIZE", 1000)
    indices, palette = _case(60, 70, 256, seed=5, alpha=False)
    stream = encode.compress(encode.scanlines(encode.pack_rows(indices, 8)), 1)
    for data in (encode.png_bytes(indices, palette, level=1),
                 bytes(encode.image_png(Image.fromarray(indices, "P"), palette, level=1))):
        found, _, names = reference_decode(data)
        assert found == indices.tolist()
        pieces, pos = [], 8
        while pos < len(data):
            (length,) = struct.unpack(">I", data[pos:pos + 4])
            if data[pos + 4:pos + 8] == b"IDAT":
                pieces.append(data[pos + 8:pos + 8 + length])
            pos += 12 + length
        assert len(stream) > 3000 and b"".join(pieces) == stream
        assert [len(p) for p in pieces[:-1]] == [1000] * (len(pieces) - 1)
        assert 0 < len(pieces[-1]) <= 1000 and names.count("IDAT") == len(pieces)
