"""Every input the fuzzer (benchmarks/fuzz.py) found, run through the same property.

Each file under ``tests/fuzz_regressions/`` is named ``TARGET-what.bin`` and is run through
that target's check (the fuzzer's own ``check_one``, without atheris): it must give a valid
result or raise ``ColorquantError``, and, since the fuzz targets bound the pixels and the file
sizes, its memory must stay small: numpy's and Python's (tracemalloc) in this process, and the
whole peak (getrusage, which also sees Pillow's C buffers) in a fresh process. The files found
as timeouts were slow because of memory work: a 16 MB table zeroed per one-pixel frame, a
23-megapixel palette image declared by a 57-byte GIF, a GIF frame of 3 gigapixels filled by
Pillow while opening.
"""

from __future__ import annotations

import importlib.util
import sys
import tracemalloc
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_peak

REGRESSIONS = ROOT / "tests" / "fuzz_regressions"
#: The image target allows 65,536 pixels, so no stage needs more than a few MB of arrays.
PEAK_MB = 12
#: Peak resident memory of a fresh process running one finding (with scikit-learn: ~200 MB).
RSS_MB = 400


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("colorquant_fuzz", ROOT / "benchmarks" /
                                                  "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = _fuzz_module()


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.bin")), ids=lambda p: p.stem)
def test_finding_keeps_the_property(path: Path) -> None:
    target = path.stem.split("-", 1)[0]
    assert target in FUZZ.TARGETS, f"{path.name}: name must start with a target"
    data = path.read_bytes()
    FUZZ.check_one(target, data)  # warm: imports and first-call caches are not the input's
    tracemalloc.start()
    try:
        FUZZ.check_one(target, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_MB * 2**20, f"{path.name}: peak {peak / 2**20:.1f} MB"


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.bin")), ids=lambda p: p.stem)
def test_finding_peak_memory_of_the_process(path: Path) -> None:
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('f', sys.argv[1])\n"
            "f = importlib.util.module_from_spec(spec); spec.loader.exec_module(f)\n"
            "f.check_one(sys.argv[2], open(sys.argv[3], 'rb').read())\n")
    proc, peak = run_peak(sys.executable, "-c", code, ROOT / "benchmarks" / "fuzz.py",
                          path.stem.split("-", 1)[0], path)
    assert proc.returncode == 0, proc.stderr
    assert peak < RSS_MB, f"{path.name}: peak {peak:.0f} MB"


def test_there_are_regressions() -> None:
    assert len(list(REGRESSIONS.glob("*.bin"))) >= 2
