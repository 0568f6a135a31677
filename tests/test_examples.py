"""The examples in examples/ run for real: GNU make (with -j) and bash, on real images."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import COMMAND, ROOT, random_image

EXAMPLES = ROOT / "examples"


def make_sources(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(4):
        array = random_image(24, 30, seed=i)
        Image.fromarray(array).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def make(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    return subprocess.run(["make", "-j2", f"COLORQUANT={COMMAND}", "K=8", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "Makefile", tmp_path / "Makefile")
    make_sources(tmp_path / "src")
    return tmp_path


def test_makefile_has_no_delete_on_error():
    # the atomic writes, not make, keep failed targets away
    lines = (EXAMPLES / "Makefile").read_text().splitlines()
    assert not [line for line in lines if ".DELETE_ON_ERROR" in line.split("#")[0]]


def test_make_builds_reproducibly_and_incrementally(project, tmp_path_factory):
    proc = make(project)
    assert proc.returncode == 0, proc.stderr
    first = outputs(project / "out")
    assert sorted(first) == [f"img{i}.png" for i in range(4)]
    # a second clean run elsewhere gives the same bytes
    other = tmp_path_factory.mktemp("other")
    shutil.copy(project / "Makefile", other / "Makefile")
    shutil.copytree(project / "src", other / "src")
    assert make(other).returncode == 0
    assert outputs(other / "out") == first
    # nothing to rebuild
    before = mtimes(project / "out")
    proc = make(project)
    assert proc.returncode == 0 and str(COMMAND) not in proc.stdout
    assert mtimes(project / "out") == before
    # touching one source rebuilds only its target
    src = project / "src" / "img2.jpg"
    future = before["img2.png"] + 5_000_000_000
    os.utime(src, ns=(future, future))
    proc = make(project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(str(COMMAND)) == 1 and "img2.jpg" in proc.stdout
    after = mtimes(project / "out")
    assert [name for name in after if after[name] != before[name]] == ["img2.png"]
    assert outputs(project / "out") == first


def test_make_corrupt_source_fails_without_a_target(project):
    good = (project / "src" / "img1.png").read_bytes()
    (project / "src" / "broken.png").write_bytes(good[: len(good) // 2])
    proc = make(project, "-k")  # keep going: the other targets are built
    assert proc.returncode != 0
    assert "broken.png" in proc.stderr
    names = sorted(os.listdir(project / "out"))
    assert names == [f"img{i}.png" for i in range(4)]  # no broken.png, no temporary file
    # make still sees the target as missing and tries again
    proc = make(project, "-k")
    assert proc.returncode != 0 and "broken.png" in proc.stdout


def test_batch_script(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    make_sources(tmp_path / "src")
    env = {**os.environ, "COLORQUANT": str(COMMAND)}

    def script(out: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(EXAMPLES / "batch.sh"), str(tmp_path / "src"),
                               str(tmp_path / out), "8"], capture_output=True, text=True,
                              env=env, timeout=300, check=False)

    first = script("a")
    assert first.returncode == 0, first.stderr
    assert script("b").returncode == 0
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")
    assert sorted(outputs(tmp_path / "a")) == [f"img{i}.png" for i in range(4)]
    for name in outputs(tmp_path / "a"):
        with Image.open(tmp_path / "a" / name) as im:
            assert im.mode == "P" and len(np.unique(np.asarray(im))) <= 8
    (tmp_path / "src" / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    proc = script("c")
    assert proc.returncode == 1
    assert "failed: " in proc.stderr and "zz-broken.jpg" in proc.stderr
    assert sorted(outputs(tmp_path / "c")) == [f"img{i}.png" for i in range(4)]
