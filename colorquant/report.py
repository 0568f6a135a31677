"""Exit codes, decided in one place, and the tally of a batch."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ExitCode(enum.IntEnum):
    """Documented exit codes of the ``colorquant`` command."""

    OK = 0
    #: One or more inputs failed (unreadable, corrupt, too large, unwritable output).
    FAILURE = 1
    #: The command line is wrong (bad option value, unknown extension, output = input).
    USAGE = 2
    #: ``--no-clobber`` refused to replace an existing output (pngquant uses 15 too).
    NOT_OVERWRITTEN = 15
    #: ``--skip-if-larger``: the output would be larger than the input; nothing written
    #: (pngquant's code).
    NOT_SMALLER = 98
    #: ``--target-psnr``: even ``-k`` colors miss the minimum; nothing written (pngquant's
    #: "quality too low").
    QUALITY_TOO_LOW = 99
    #: Interrupted by Ctrl-C or SIGTERM; no partial file is left.
    INTERRUPTED = 130


#: Skip codes, strongest first (see :attr:`Report.exit_code`).
SKIP_PRECEDENCE = (ExitCode.QUALITY_TOO_LOW, ExitCode.NOT_SMALLER, ExitCode.NOT_OVERWRITTEN)


@dataclass
class Report:
    """What happened to each input of a run."""

    written: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: The exit code each skip carries, in the order of ``skipped``.
    skip_codes: list[ExitCode] = field(default_factory=list)
    #: Inputs never started because the batch stopped early (``--fail-fast``).
    not_run: int = 0

    def done(self, path: str) -> None:
        self.written.append(path)

    def failure(self, path: str, reason: str) -> None:
        self.failed.append((path, reason))

    def skip(self, path: str, reason: str,
             code: ExitCode = ExitCode.NOT_OVERWRITTEN) -> None:
        self.skipped.append((path, reason))
        self.skip_codes.append(ExitCode(code))

    @property
    def exit_code(self) -> ExitCode:
        """Failures (1) outrank a missed quality target (99), which outranks an output
        larger than its input (98), which outranks a refusal to overwrite (15), which
        outranks success (0)."""
        if self.failed:
            return ExitCode.FAILURE
        for code in SKIP_PRECEDENCE:
            if code in self.skip_codes:
                return code
        return ExitCode.OK

    def summary(self) -> str:
        """One line, e.g. ``3 written, 1 failed, 0 skipped``, then one line per failed or
        skipped input with its reason."""
        written, failed, skipped = len(self.written), len(self.failed), len(self.skipped)
        lines = [f"{written} written, {failed} failed, {skipped} skipped"
                 + (f", {self.not_run} not run (--fail-fast)" if self.not_run else "")]
        for label, entries in (("failed", self.failed), ("skipped", self.skipped)):
            for path, reason in entries:
                lines.append(f"  {label}: " + (reason if reason.startswith(path)
                                                 else f"{path}: {reason}"))
        return "\n".join(lines)
