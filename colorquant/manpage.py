"""The ``colorquant(1)`` man page, written from the Click command itself.

``python -m colorquant.manpage > colorquant.1`` prints it; the copy installed with the package
(``man/colorquant.1``) is this output, which a test keeps equal to it. Only Click and the
standard library are imported.
"""

from __future__ import annotations

import re
import sys

import click

from . import __version__
from .cli import EPILOG, cli

#: The worker commands, which the launcher handles before Click sees the command line.
WORKER_COMMANDS = (
    ("--worker-status", "List the warm workers of this user (pid, uptime, calls, memory); "
     "exit code 0 when one this command would use runs, else 1."),
    ("--worker-start", "Start a warm worker now and wait until it answers."),
    ("--worker-stop", "Stop every warm worker of this user (running calls finish first) and "
     "wait until they are gone."),
)

ENVIRONMENT = (
    ("COLORQUANT_WORKER", "0 runs every call in-process and starts no warm worker."),
    ("COLORQUANT_WORKER_IDLE", "Seconds a warm worker lives without a call (default 600), "
     "read when it starts."),
    ("COLORQUANT_WORKER_TRACE", "A file to which each call appends how it ran: worker, or "
     "local and why."),
)

DOCS = ("the manual: the docs/ folder of the source (a site built by MkDocs), "
        "and colorquant --help")


def _text(text: str) -> str:
    """Roff-escaped text: backslashes, hyphens, and lines that would read as requests."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.splitlines())


def _item(term: str, description: str) -> list[str]:
    return [".TP", f"\\fB{_text(term)}\\fR", _text(description)]


def _epilog_sections() -> tuple[list[str], str]:
    """The examples (one a line) and the exit-code sentence of ``--help``'s epilog."""
    examples_part, _, codes_part = EPILOG.partition("Exit codes:")
    examples = [line.strip() for line in examples_part.splitlines()
                if line.strip().startswith("colorquant") or line.strip().startswith("for ")]
    return examples, " ".join(codes_part.split())


def render() -> str:
    """The whole man page, in roff (man macros)."""
    ctx = click.Context(cli, info_name="colorquant")
    usage = " ".join(cli.collect_usage_pieces(ctx))
    description = [p.replace("\b", "").strip() for p in (cli.help or "").split("\n\n")]
    lines = [
        f'.TH COLORQUANT 1 "" "colorquant {__version__}" "User Commands"',
        ".SH NAME",
        "colorquant \\- " + _text(description[0].rstrip(".")),
        ".SH SYNOPSIS",
        f"\\fBcolorquant\\fR {_text(usage)}",
        ".br",
        "\\fBcolorquant\\fR \\-\\-worker\\-status | \\-\\-worker\\-start | \\-\\-worker\\-stop",
        ".SH DESCRIPTION",
    ]
    for paragraph in description[1:]:
        lines += [_text(" ".join(paragraph.split())), ".PP"]
    lines.append(".SH OPTIONS")
    for param in cli.get_params(ctx):
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record is not None:
            lines += _item(*record)
    lines.append(".SH WORKER COMMANDS")
    lines.append(_text("Each must be the only argument."))
    for term, description_text in WORKER_COMMANDS:
        lines += _item(term, description_text)
    examples, codes = _epilog_sections()
    lines.append(".SH EXAMPLES")
    for example in examples:
        lines += [".nf", _text(example), ".fi"]
    lines += [".SH EXIT STATUS", _text(codes)]
    lines.append(".SH ENVIRONMENT")
    for term, description_text in ENVIRONMENT:
        lines += _item(term, description_text)
    lines += [".SH SEE ALSO", "\\fBpngquant\\fR(1); " + _text(DOCS)]
    return "\n".join(re.sub(r"[ \t]+$", "", line) for line in lines) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
