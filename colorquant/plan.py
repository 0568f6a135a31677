"""A batch planned: inputs, folders and a name template become jobs (one input, its output
path and format), and a command line that would write one output twice, or over an input, is
refused before anything runs. Nothing here reads an image, prints or exits.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import ColorquantError, PlanError

#: The default output name: ``photo.jpg`` → ``photo-16c.png``.
DEFAULT_NAME = "{stem}-{k}c.{ext}"
#: Fields of a ``--name`` template.
NAME_FIELDS = ("stem", "suffix", "ext", "k")


@dataclass(frozen=True)
class Job:
    """One input file and the output it will be written to."""

    src: str
    dst: str
    fmt: str
    plot: str | None = None
    compare: str | None = None
    #: The name template when ``{k}`` is known only after the fit (``--target-psnr``): the
    #: task renders the final name, and ``dst`` holds the name with ``{k}`` = ``-k``.
    template: str | None = None
    #: Never replace an existing output (``--no-clobber``): decided when it is put in place,
    #: and checked first for a name rendered by the task.
    no_clobber: bool = False
    #: Report the mean ΔE2000 (``--json``, ``-v``): it costs more than the mapping, so runs
    #: that print nothing of it skip it.
    delta_e: bool = False

    def final_dst(self, k: int) -> str:
        """The output path once the palette size ``k`` is known."""
        if self.template is None:
            return self.dst
        from . import formats, imagefile

        src = "stdin" if self.src == imagefile.STDIO else self.src
        name = render_name(self.template, src, k, formats.get(self.fmt).extension)
        return os.path.join(os.path.dirname(self.dst), name)


#: Longest file name (bytes) on common file systems; no field of a template may be wider.
NAME_MAX = 255


def check_name_template(template: str) -> None:
    """Refuse templates with unknown fields, widths beyond a file name, path separators or an
    empty result."""
    try:
        parsed = [(f, spec) for _, f, spec, _ in string.Formatter().parse(template)
                  if f is not None]
    except ValueError as exc:
        raise PlanError(f"--name {template!r}: {exc}") from None
    unknown = [f for f, _ in parsed if f not in NAME_FIELDS]
    if unknown:
        raise PlanError(f"--name {template!r}: unknown field {{{unknown[0]}}} "
                        f"(use {', '.join('{' + f + '}' for f in NAME_FIELDS)})")
    # before any rendering: "{k:>999999999}" would build a string of a gigabyte
    widths = [int(n) for _, spec in parsed for n in re.findall(r"\d+", spec or "")]
    if widths and max(widths) > NAME_MAX:
        raise PlanError(f"--name {template!r}: width {max(widths)} is longer than a file name "
                        f"({NAME_MAX} bytes)")
    sample = render_name(template, "x.jpg", 16, "png")
    if "/" in sample or os.sep in sample:
        raise PlanError(f"--name {template!r}: must be a file name, not a path")


def render_name(template: str, src: str, k: int, ext: str) -> str:
    """The output file name of ``src`` from a template (fields: stem, suffix, ext, k).

    Raises :class:`PlanError` when the result is not a file name (empty, ``.``, ``..``, or
    with a NUL), as ``{suffix}`` is for an input without one.
    """
    path = Path(src)
    try:
        name = template.format(stem=path.stem, suffix=path.suffix.lstrip("."), ext=ext, k=k)
    except (ValueError, KeyError, IndexError) as exc:
        raise PlanError(f"--name {template!r}: {exc}") from None
    if name in ("", ".", "..") or "\0" in name:
        raise PlanError(f"--name {template!r}: gives {name!r} for {src}, not a file name")
    return name


def _is_image_name(name: str) -> bool:
    from . import formats

    return not name.startswith(".") and Path(name).suffix.lower() in formats.BY_EXTENSION


def expand(inputs: Sequence[str], *, recursive: bool, skip: str | None = None,
           ) -> list[tuple[str, Path]]:
    """Every input file with its folder relative to the input it came from.

    Folders are walked (when ``recursive``) in sorted order; hidden files and folders, files
    without an image extension and the folder ``skip`` (the output folder) are left out.
    """
    found: list[tuple[str, Path]] = []
    skip_real = os.path.realpath(skip) if skip is not None else None
    for item in inputs:
        if not (recursive and os.path.isdir(item)):
            found.append((item, Path()))
            continue
        for folder, dirs, files in os.walk(item):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and os.path.realpath(os.path.join(folder, d)) != skip_real)
            relative = Path(os.path.relpath(folder, item))
            found.extend((os.path.join(folder, f), relative)
                         for f in sorted(files) if _is_image_name(f))
    return found


def plan(inputs: Sequence[str], *, k: int, output: str | None = None,
         out_dir: str | None = None, name: str | None = None, fmt: str | None = None,
         recursive: bool = False, defer_k: bool = False) -> list[Job]:
    """The job of each input, with its output path and format.

    Without ``output`` or ``out_dir`` outputs go beside their inputs; a folder walked with
    ``recursive`` is mirrored under ``out_dir``. With ``defer_k`` (the fit decides the palette
    size) a name with ``{k}`` is rendered by the task; the checks here use ``{k}`` = ``k``.

    Raises
    ------
    PlanError
        A folder without ``out_dir``, no images found, two inputs with one output, an output
        that is an input, a bad template or an unknown output extension.
    """
    from . import formats, imagefile

    template = name or DEFAULT_NAME
    check_name_template(template)
    check_working_directory([*inputs, output, out_dir])
    if list(inputs).count(imagefile.STDIO) > 1:
        raise PlanError("standard input (-) can be read only once")
    if recursive and out_dir is None and any(os.path.isdir(i) for i in inputs):
        raise PlanError("a folder input needs --out-dir (its tree is mirrored there)")
    ext = formats.get(formats.output_format("x.png", fmt)).extension
    found = expand(inputs, recursive=recursive, skip=out_dir)
    if not found:
        raise PlanError("no images found in the input folders")
    jobs: list[Job] = []
    owner: dict[str, str] = {}
    sources = {os.path.realpath(src) for src, _ in found if src != imagefile.STDIO}
    # (device, inode) of each input, so a hard link to an input is refused too
    inodes = {_inode(src) for src, _ in found if src != imagefile.STDIO} - {None}
    for src, relative in found:
        if output is not None:
            dst = output
        elif src == imagefile.STDIO and out_dir is None:
            dst = imagefile.STDIO  # a filter: standard input to standard output
        else:
            src_name = "stdin" if src == imagefile.STDIO else src
            filename = render_name(template, src_name, k, ext)
            folder = Path(out_dir) / relative if out_dir is not None else Path(src).parent
            dst = os.path.normpath(folder / filename)
        try:
            out_format = formats.output_format(dst, fmt)
        except ColorquantError as exc:
            raise PlanError(str(exc)) from None
        if imagefile.is_stdio(dst):
            jobs.append(Job(src, dst, out_format))
            continue
        deferred = (template if defer_k and output is None and "{k" in template else None)
        real = os.path.realpath(dst)
        if real in sources or _inode(dst) in inodes:
            raise PlanError(f"{dst}: output is the same file as the input")
        if real in owner:
            raise PlanError(f"{owner[real]} and {src} would both be written to {dst}")
        owner[real] = src
        jobs.append(Job(src, dst, out_format, template=deferred))
    return jobs


def check_working_directory(paths: Sequence[str | None]) -> None:
    """Refuse relative paths when the working directory was deleted (one message, instead
    of a failure deep in the path resolution).

    Raises
    ------
    PlanError
        A relative path while the working directory no longer exists.
    """
    from . import imagefile

    if any(p and not imagefile.is_stdio(p) and not os.path.isabs(p) for p in paths):
        try:
            os.getcwd()
        except FileNotFoundError:
            raise PlanError("the working directory no longer exists: relative paths cannot "
                            "be resolved") from None


def _inode(path: str) -> tuple[int, int] | None:
    """The (device, inode) of an existing file, or None."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def check_side_outputs(jobs: Sequence[Job], extras: dict[str, str | None]) -> None:
    """Refuse a side output (``--plot``, ``--compare``, ``--save-palette``) that is an input,
    an image output or another side output: it would be overwritten.

    Raises
    ------
    PlanError
        Two files of the command line resolve to the same path.
    """
    from . import imagefile

    check_working_directory(list(extras.values()))
    taken: dict[str, str] = {}
    for job in jobs:
        if not imagefile.is_stdio(job.src):
            taken.setdefault(os.path.realpath(job.src), f"the input {job.src}")
    for job in jobs:
        if not imagefile.is_stdio(job.dst):
            taken.setdefault(os.path.realpath(job.dst), f"the output {job.dst}")
    for option, path in extras.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in taken:
            raise PlanError(f"{path}: {option} would overwrite {taken[real]}")
        taken[real] = f"the {option} file"


@dataclass(frozen=True)
class Plan:
    """A batch ready to run: its jobs, and how their palette is made."""

    jobs: list[Job]
    #: Fit one palette over every input before mapping any (asked for, or to save the palette
    #: of a lone input file before its image is written).
    shared_palette: bool = False
    #: Write the palette every image was mapped to into this file: the given or shared one,
    #: before any image is written; a lone standard input's own, after its image (see
    #: :func:`prepare`).
    save_palette: str | None = None


def prepare(jobs: list[Job], *, plot: str | None = None, compare: str | None = None,
            save_palette: str | None = None, shared_palette: bool = False,
            palette_given: bool = False, json_lines: bool = False, cluster: bool = False,
            delta_e: bool = False) -> Plan:
    """The batch of ``jobs`` (from :func:`plan`) with its side outputs: ``plot`` and
    ``compare`` go to the one input, ``delta_e`` asks each job for the mean ΔE2000, and a
    palette saved from a lone input file is fitted first (the same palette), so a palette
    file that cannot be written fails before the image is written. Standard input can be
    read only once: a lone one is fitted on its own, and its palette saved after its image.

    Raises
    ------
    PlanError
        Standard output holds the image with ``json_lines`` (which print there), standard
        input or output on a ``cluster``, a plot or comparison of several inputs, or a palette
        to save from several inputs each with its own.
    """
    from . import imagefile

    if json_lines and any(imagefile.is_stdio(job.dst) for job in jobs):
        raise PlanError("--json prints on standard output: write the image to a file")
    if cluster and any(imagefile.is_stdio(j.src) or imagefile.is_stdio(j.dst) for j in jobs):
        raise PlanError("--dask runs on the cluster's workers: not standard input or output")
    if (plot or compare) and len(jobs) > 1:
        raise PlanError("--plot and --compare take one input")
    if (save_palette is not None and len(jobs) > 1
            and not (shared_palette or palette_given)):
        raise PlanError("--save-palette with several inputs needs --shared-palette")
    if plot or compare:
        jobs = [replace(jobs[0], plot=plot, compare=compare)]
    if delta_e:
        jobs = [replace(job, delta_e=True) for job in jobs]
    if save_palette is not None and not palette_given and jobs[0].src != imagefile.STDIO:
        shared_palette = True
    return Plan(jobs, shared_palette=shared_palette, save_palette=save_palette)
