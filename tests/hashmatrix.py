"""The output-hash matrix: proof that a refactor changed no output, message or exit code.

Every corpus image (``photos``, ``graphics``, ``pngsuite``, ``tricky``) and the sample images
run through the real ``colorquant`` command under a dozen option sets (default, ``-k 2``,
``-k 256``, each ``--dither``, each ``--space``, a shared palette, a palette file, GIF, TIFF
and WebP output, ``--json`` and ``-v``), one batch call per option set over one folder of
inputs. For each call the matrix keeps its exit code, its standard output and error (timings,
seconds and temporary paths normalized; long texts as a SHA-256) and, for every file written,
the SHA-256 of its bytes and of its decoded pixels (every frame as Pillow decodes it, as RGBA).

    python tests/hashmatrix.py --record   # write tests/data/hashmatrix.json
    python tests/hashmatrix.py            # compare, print the differences (exit 1 if any)

``tests/test_hashmatrix.py`` runs the comparison.

Note for the lead: the hashes of the *bytes* are expected to change when a change means to
change them (palette order, the PNG encoder and ``--optimize``, premultiplied alpha, the
dithering rule). The *decoded-pixel* hashes are the invariant of an encoder-only change (the
same image, stored differently); palette order changes the bytes but, for RGB(A) decoding,
not the pixels. After an intended change, check which columns moved, then re-record with
``--record`` in the same commit and say so in its message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageSequence

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
CORPUS = Path(os.environ.get("COLORQUANT_CORPUS", ROOT.parent / "shared" / "corpus"))
DATA = Path(__file__).resolve().parent / "data" / "hashmatrix.json"
COMMAND = Path(sys.executable).parent / "colorquant"
FOLDERS = ("photos", "graphics", "pngsuite", "tricky")

#: The palette of the ``--palette`` set: RGBA, with a transparent entry, so images with
#: transparency map to it as well as opaque ones.
PALETTE = ["#00000000", "#000000", "#ffffff", "#ff0000", "#00ff00", "#0000ff", "#ffff00",
           "#00ffff", "#ff00ff", "#808080", "#804000", "#ff8000", "#008040", "#400080",
           "#c0c0c0", "#404040"]

#: name -> extra arguments. Every set also gets ``--out-dir OUT -j 2``, and ``-q`` unless it
#: is in :data:`LOUD`. Options are paired (a format with a palette size, a dithering method
#: with a color space) to keep the matrix to ten batch calls: each still runs on every input.
OPTION_SETS: dict[str, list[str]] = {
    "default": [],
    "k2-gif": ["-k", "2", "-f", "gif"],
    "k256-tiff": ["-k", "256", "-f", "tiff"],
    "fs-webp": ["--dither", "fs", "-f", "webp", "--strip"],
    "ordered-oklab": ["--dither", "ordered", "--space", "oklab"],
    "blue-noise-lab": ["--dither", "blue-noise", "--dither-strength", "0.5", "--space", "lab"],
    "shared-palette": ["--shared-palette", "--save-palette", "{out}/shared.json"],
    "palette-file": ["--palette", "{palette}"],
    "json-jpeg": ["--json", "-k", "8", "-f", "jpeg"],
    "verbose-bmp": ["-v", "-k", "4", "-f", "bmp", "--name", "{stem}.{ext}"],
}
#: Sets that print their messages (all the others run with ``-q``, which still shows errors).
LOUD = {"default", "json-jpeg", "verbose-bmp"}
#: Texts longer than this are kept as a SHA-256 only.
TEXT_LIMIT = 20000


def inputs() -> list[Path]:
    """The corpus files and the sample images, in a fixed order."""
    found = [p for folder in FOLDERS for p in sorted((CORPUS / folder).iterdir())
             if p.is_file() and p.suffix not in (".md", ".LICENSE", ".README")]
    return found + sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() == ".jpg")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixel_hash(path: Path) -> str:
    """SHA-256 of every frame as Pillow decodes it, converted to RGBA, with its size."""
    digest = hashlib.sha256()
    try:
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                rgba = frame.convert("RGBA")
                digest.update(f"{rgba.size}".encode())
                digest.update(rgba.tobytes())
    except Exception as exc:  # a palette file, or an output Pillow cannot read
        return f"undecodable: {type(exc).__name__}"
    return digest.hexdigest()


def normalize(text: str, folder: str) -> str:
    """Messages with the run's folder, timings, seconds and temporary names made constant."""
    text = text.replace(os.path.realpath(folder), "<tmp>").replace(folder, "<tmp>")
    text = re.sub(r"(\w+) \d+\.\d+s", r"\1 <t>s", text)  # -v: "time: read 0.012s, ..."
    text = re.sub(r'"seconds": [0-9.e-]+', '"seconds": 0', text)
    return re.sub(r"\.[0-9a-f]{12}\.tmp", ".<hex>.tmp", text)


def _text(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else f"sha256:{_sha(text.encode())}"


def run_set(name: str, folder: Path) -> dict[str, object]:
    """Run one option set over the inputs in ``folder/in``; returns its record."""
    out = folder / name
    out.mkdir()
    args = [a.replace("{out}", str(out)).replace("{palette}", str(folder / "palette.hex"))
            for a in OPTION_SETS[name]]
    quiet = [] if name in LOUD else ["-q"]
    files = sorted(str(p) for p in (folder / "in").iterdir())
    env = {**os.environ, "COLORQUANT_WORKER": "0", "LC_ALL": "C.UTF-8"}
    done = subprocess.run([str(COMMAND), *files, "--out-dir", str(out), "-j", "2", *quiet,
                           *args], capture_output=True, env=env, timeout=600, check=False)
    written = {}
    for path in sorted(out.iterdir()):
        written[path.name] = [_sha(path.read_bytes()), pixel_hash(path)]
    return {
        "exit": done.returncode,
        "stdout": _text(normalize(done.stdout.decode(errors="replace"), str(folder))),
        "stderr": _text(normalize(done.stderr.decode(errors="replace"), str(folder))),
        "files": written,
    }


def compute(names: list[str] | None = None) -> dict[str, dict[str, object]]:
    """The matrix now: every option set (or those named) over every input."""
    with tempfile.TemporaryDirectory(prefix="colorquant-hashmatrix-") as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        for src in inputs():
            # one flat folder; the corpus folder and the extension in the name keep outputs
            # unique (gen-zero_bytes.jpg and .png)
            prefix = src.parent.name if src.parent != SAMPLES else "samples"
            name = f"{prefix}__{src.stem}_{src.suffix.lstrip('.')}{src.suffix}"
            shutil.copyfile(src, folder / "in" / name)
        (folder / "palette.hex").write_text("\n".join(PALETTE) + "\n")
        return {name: run_set(name, folder) for name in (names or list(OPTION_SETS))}


def differences(expected: dict[str, dict], found: dict[str, dict]) -> list[str]:
    """One line per difference between two matrices."""
    lines = []
    for name in sorted(set(expected) | set(found)):
        old, new = expected.get(name), found.get(name)
        if old is None or new is None:
            lines.append(f"{name}: option set {'added' if old is None else 'missing'}")
            continue
        for key in ("exit", "stdout", "stderr"):
            if old[key] != new[key]:
                lines.append(f"{name}: {key} differs:\n--- recorded\n{old[key]}\n--- now\n"
                             f"{new[key]}")
        for file in sorted(set(old["files"]) | set(new["files"])):
            a, b = old["files"].get(file), new["files"].get(file)
            if a is None or b is None:
                lines.append(f"{name}: {file} {'now written' if a is None else 'not written'}")
            elif a != b:
                what = "bytes" if a[1] == b[1] else "bytes and pixels"
                lines.append(f"{name}: {file}: {what} differ")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"write {DATA}")
    parser.add_argument("sets", nargs="*", help="option sets to run (default: all)")
    args = parser.parse_args()
    found = compute(args.sets or None)
    if args.record:
        DATA.parent.mkdir(exist_ok=True)
        old = json.loads(DATA.read_text()) if DATA.exists() and args.sets else {}
        DATA.write_text(json.dumps(old | found, indent=1, sort_keys=True, ensure_ascii=False)
                        + "\n")
        print(f"recorded {len(found)} option sets in {DATA}")
        return 0
    expected = json.loads(DATA.read_text())
    if args.sets:
        expected = {k: v for k, v in expected.items() if k in args.sets}
    diff = differences(expected, found)
    print("\n".join(diff) if diff else "the matrix is unchanged")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
