"""The manual: the site builds with no warning, every option is documented (in the generated
CLI reference, the man page and the hand-written pages), and every example runs as written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image

from colorquant import manpage
from colorquant.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
#: Where the installed command is (the examples call it as ``colorquant``).
BIN = Path(sys.executable).parent
#: Blocks that cannot run here; the test counts them, so the set stays small.
MOST_NOT_RUN = 8


def long_options() -> list[str]:
    """Every ``--option`` of the command, its help option and the worker commands."""
    ctx = click.Context(cli, info_name="colorquant")
    options = [opt for param in cli.get_params(ctx) if isinstance(param, click.Option)
               for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--")]
    return options + [term for term, _ in manpage.WORKER_COMMANDS]


# --- the site -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def test_site_builds_strictly_with_every_page(site):
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert f": {page.name}" in config, f"{page.name} is not in the nav"
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), built
    # the pictures the README shows are in the site too
    for picture in re.findall(r"\(docs/([^)]+\.(?:png|jpg))\)",
                              (ROOT / "README.md").read_text(encoding="utf-8")):
        assert (site / picture).is_file(), picture


def test_every_option_is_in_the_generated_reference(site):
    text = (site / "cli" / "index.html").read_text(encoding="utf-8")
    workers = [term for term, _ in manpage.WORKER_COMMANDS]
    missing = [opt for opt in long_options() if opt not in text and opt not in workers]
    assert missing == []
    # the worker commands are described on the page by hand (the launcher parses them)
    assert [term for term in workers if term not in text] == []


def test_every_option_is_in_the_man_page():
    page = manpage.render()
    roff = {opt: opt.replace("-", "\\-") for opt in long_options()}
    assert [opt for opt, escaped in roff.items() if escaped not in page] == []
    # every exit code, and every example of --help
    from colorquant.report import ExitCode

    assert [int(c) for c in ExitCode if f" {int(c)} " not in page.replace("\n", " ")] == []
    assert page.count(".nf\n") == len(manpage._epilog_sections()[0]) >= 5


def test_the_installed_man_page_is_the_commands():
    committed = (ROOT / "man" / "colorquant.1").read_text(encoding="utf-8")
    assert committed == manpage.render(), "run: python -m colorquant.manpage > man/colorquant.1"
    proc = subprocess.run([sys.executable, "-m", "colorquant.manpage"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert proc.stdout == committed


def test_the_man_page_renders_without_warnings(tmp_path):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(ROOT / "man" /
                                                                     "colorquant.1")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    shown = subprocess.run(["groff", "-man", "-Tascii", str(ROOT / "man" / "colorquant.1")],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    plain = re.sub(r".\x08", "", shown)
    for opt in ("--colors", "--shared-palette", "--worker-stop", "EXIT STATUS", "EXAMPLES"):
        assert opt in plain


def test_every_option_is_explained_in_the_usage_page():
    usage = (DOCS / "usage.md").read_text(encoding="utf-8")
    rows = [line for line in usage.splitlines() if line.startswith("| `-")]
    assert [opt for opt in long_options() if not any(f"`{opt}" in r or f" {opt}" in r
                                                     for r in rows)] == []


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert links, "the README links to the manual"
    assert [link for link in links if not link.startswith("http")
            and not (ROOT / link).exists()] == []


# --- the examples ---------------------------------------------------------------------------

FENCE = re.compile(r"(?:<!-- example: ([^>]*?) -->\n)?```(\w*)\n(.*?)```", re.S)


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    mark: str  # "" (run, exit 0), "not run (...)", "installs (...)", "exit N"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    return [Block(page.name, text.count("\n", 0, m.start()) + 1, m.group(2), m.group(3),
                  m.group(1) or "")
            for m in FENCE.finditer(text) if m.group(2) in ("sh", "python")]


def test_blocks_not_run_are_few_and_say_why():
    marked = [b for page in PAGES for b in blocks(page) if b.mark.startswith("not run")]
    assert all(re.fullmatch(r"not run \(.+\)", b.mark) for b in marked)
    assert 0 < len(marked) <= MOST_NOT_RUN, [(b.page, b.line) for b in marked]
    unknown = [b.mark for page in PAGES for b in blocks(page)
               if b.mark and not re.match(r"(not run \(|installs \(|exit \d+$)", b.mark)]
    assert unknown == []
    # the examples (everything but the marked blocks) are most of the blocks
    assert sum(not b.mark.startswith("not run") for p in PAGES for b in blocks(p)) >= 15


def _sprite(seed: int) -> Image.Image:
    """A 48×48 sprite of a few colors on a transparent background."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, (6, 4), dtype=np.uint8)
    colors[:, 3] = 255
    colors[0] = 0
    index = np.zeros((48, 48), dtype=np.intp)
    for i in range(1, 6):
        y, x = rng.integers(0, 36, 2)
        index[y:y + 12, x:x + 12] = i
    return Image.fromarray(colors[index], "RGBA")


def _logo() -> Image.Image:
    """A small logo: brand red and blue on white, with smooth (many-colored) edges."""
    big = Image.new("RGB", (480, 320), "#ffffff")
    yy, xx = np.mgrid[0:320, 0:480]
    pixels = np.asarray(big).copy()
    pixels[(xx - 160) ** 2 + (yy - 160) ** 2 < 110**2] = (0xE6, 0x00, 0x12)
    pixels[(yy > 220) & (yy < 260) & (xx > 290)] = (0x00, 0x5A, 0xAA)
    return Image.fromarray(pixels).resize((120, 80), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def examples_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name, made once and copied for each page."""
    home = tmp_path_factory.mktemp("examples")
    china, flower = ROOT / "sample_images" / "china.jpg", ROOT / "sample_images" / "flower.jpg"
    shutil.copy(china, home / "photo.jpg")
    for folder in ("photos", "src"):
        (home / folder).mkdir()
        shutil.copy(china, home / folder / "china.jpg")
        shutil.copy(flower, home / folder / "flower.jpg")
    (home / "sprites").mkdir()
    for i in range(3):
        _sprite(i).save(home / "sprites" / f"sprite{i}.png")
    _sprite(7).save(home / "new-sprite.png")
    _logo().save(home / "logo.png")
    shutil.copytree(ROOT / "sample_images", home / "sample_images")
    shutil.copytree(ROOT / "examples", home / "examples")
    return home


@pytest.fixture(scope="module")
def examples_env() -> dict[str, str]:
    """The environment of the examples: the installed command first on ``PATH``, calls
    served by a warm worker (started here; the session's end stops it), as a user's are."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "COLORQUANT_WORKER": "1"}
    subprocess.run([str(BIN / "colorquant"), "--worker-start"], env=env, capture_output=True,
                   timeout=300, check=True)
    return env


def _strip_install(code: str) -> str:
    """The command that follows a quick start's installation steps."""
    steps = [s.strip() for s in code.strip().split(" && ")]
    while steps and re.match(r"(python3? -m venv |\. |source |pip install )", steps[0]):
        steps.pop(0)
    assert steps, "nothing to run after the install"
    return " && ".join(steps)


RUNNER = """
import json, sys, traceback
session = {"__name__": "__main__"}
for line, code in json.load(sys.stdin):
    try:
        exec(compile(code, f"<block at line {line}>", "exec"), session)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"the Python block at line {line} failed")
"""


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run_as_written(page, examples_home, examples_env, tmp_path):
    found = [b for b in blocks(page) if not b.mark.startswith("not run")]
    if not found:
        return  # a page without examples (or only blocks that cannot run here)
    cwd = tmp_path / "work"
    shutil.copytree(examples_home, cwd)
    env = {**examples_env, "HOME": str(cwd)}
    for block in found:
        if block.lang != "sh":
            continue
        code = _strip_install(block.code) if block.mark.startswith("installs") else block.code
        expected = int(block.mark.split()[1]) if block.mark.startswith("exit") else 0
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == expected, (f"{block.page}:{block.line}\n{code}\n"
                                             f"{proc.stdout}\n{proc.stderr}")
    python = [(b.line, b.code) for b in found if b.lang == "python"]
    if python:
        proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(python),
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                              check=False)
        assert proc.returncode == 0, f"{page.name}\n{proc.stdout}\n{proc.stderr}"
