"""Hardening: races for one output name, memory limits, durability, kills mid-batch.

Every test runs the real command in real processes on real files.
"""

from __future__ import annotations

import json
import subprocess

from conftest import COMMAND, random_image
from PIL import Image


def _start(*args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(COMMAND), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_no_clobber_race_has_exactly_one_writer(tmp_path):
    """Processes started together for one output with --no-clobber (two ``make -j`` rules):
    each round exactly one writes (exit 0) and every other reports the skip (exit 15); the
    file is complete and is the winner's output (each racer uses its own seed, so the
    palettes differ)."""
    src = tmp_path / "in.png"
    Image.fromarray(random_image(96, 96, seed=3)).save(src)
    out = tmp_path / "out.png"
    racers = 3
    for round_ in range(8):
        out.unlink(missing_ok=True)
        procs = [_start(src, "-o", out, "--no-clobber", "--json", "-k", 8,
                        "--seed", 100 * round_ + i) for i in range(racers)]
        finished = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in finished)
        assert codes == [0] + [15] * (racers - 1), (round_, finished)
        winner = next(json.loads(stdout) for code, stdout, _ in finished if code == 0)
        for code, stdout, stderr in finished:
            if code == 15:
                record = json.loads(stdout)
                assert record["status"] == "skipped"
                assert stderr.decode() == f"Skipped: {out}: exists (--no-clobber)\n"
        with Image.open(out) as image:
            image.load()
            colors = image.getpalette()[: 3 * len(winner["palette"])]
        expected = [int(e["color"][i:i + 2], 16) for e in winner["palette"] for i in (1, 3, 5)]
        assert colors == expected
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]
