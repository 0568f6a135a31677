"""The README documents every option of the command, and its quick start matches CI."""

from pathlib import Path

from colorquant.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: The README and the manual's pages (docs/), where an option may be documented instead.
MANUAL = README + "".join(p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("docs/*.md")))


def test_every_option_is_in_the_readme():
    missing = [
        opt
        for param in cli.params
        for opt in param.opts
        if opt.startswith("--") and f"`{opt}" not in MANUAL and f" {opt}" not in MANUAL
    ]
    assert missing == []


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in README
    assert command in ci


def test_exit_codes_are_documented():
    from colorquant.report import ExitCode

    for code in ExitCode:
        assert f"| {int(code)} |" in README
