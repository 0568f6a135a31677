"""The README is the front door: short, its quick start is what CI runs, its exit codes are
the command's. (Every option is documented in the manual: tests/test_docs.py.)"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_fits_on_a_few_screens():
    assert len(README.splitlines()) <= 250


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in README
    assert command in ci


def test_exit_codes_are_documented():
    from colorquant.report import ExitCode

    usage = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")
    for code in ExitCode:
        assert f"| {int(code)} |" in README
        assert f"| {int(code)} |" in usage
