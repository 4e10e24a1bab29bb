"""Finding the input images and mapping each to its output path, safely.

Inputs are files, folders or glob patterns. Each image keeps its path relative to
the folder it was found under (a folder input, or the fixed leading part of a
glob) and gets the same stem under ``out`` with the output format's extension:
``photos/a/b/cat.bmp`` under the folder ``photos`` becomes ``OUT/a/b/cat.png``.

Output paths never leave ``out``: a relative path that is absolute or holds ``..``
and a path through a symbolic link that points outside are refused. A job never
writes over one of the run's inputs, and two inputs never share an output.
Folder walks and glob matches skip everything inside ``out`` (so a second run does
not upscale the first run's outputs) and hidden files and folders.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath

__all__ = [
    "IMAGE_TYPES",
    "OUTPUT_FORMATS",
    "InputError",
    "Job",
    "Plan",
    "Refused",
    "UnsafePath",
    "format_for",
    "output_path",
    "plan",
]

log = logging.getLogger("client.discovery")

# File extensions taken as images, and the Content-Type each is uploaded with.
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".hif": "image/heif",
    ".avif": "image/avif",
}
OUTPUT_FORMATS = ("png", "jpeg", "webp", "avif")
_FORMAT_OF_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".webp": "webp", ".avif": "avif"}
_SUFFIX_OF_FORMAT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "avif": ".avif"}
_PHOTO_SUFFIXES = (".heic", ".heif", ".hif")  # phone photos: JPEG by default, as the service answers them
_GLOB_MAGIC = re.compile(r"[*?[]")


class InputError(ValueError):
    """An INPUT that names no file or folder, or a pattern that matches nothing."""


class UnsafePath(ValueError):
    """An output path that would leave the output folder."""


@dataclass(frozen=True)
class Job:
    """One image to upscale: where it is read, where its result goes, and in which format."""

    source: Path
    target: Path
    fmt: str

    @property
    def media_type(self) -> str:
        return IMAGE_TYPES[self.source.suffix.lower()]


@dataclass(frozen=True)
class Refused:
    """An image that will not be sent, and why."""

    source: Path
    target: Path | None
    reason: str


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files found that are not images


def format_for(source: PurePath, requested: str | None) -> str:
    """The output format: the requested one, else the input's where the service writes it, JPEG for a HEIF photo,
    else png."""
    suffix = source.suffix.lower()
    return requested or _FORMAT_OF_SUFFIX.get(suffix) or ("jpeg" if suffix in _PHOTO_SUFFIXES else "png")


def output_path(out: Path, rel: PurePath, fmt: str) -> Path:
    """``out / rel`` with the extension of ``fmt``; raises UnsafePath if the result would leave ``out``.

    The input's own extension is kept when it already names ``fmt`` (``IMG.JPG`` stays ``IMG.JPG``).
    """
    if rel.is_absolute() or rel.drive or ".." in rel.parts or not rel.name:
        raise UnsafePath(f"{rel} is not a plain relative path")
    suffix = rel.suffix if _FORMAT_OF_SUFFIX.get(rel.suffix.lower()) == fmt else _SUFFIX_OF_FORMAT[fmt]
    target = out / rel.with_suffix(suffix)
    # resolve() follows the links that already exist on the way, so a linked folder pointing elsewhere shows.
    if not target.resolve().is_relative_to(out.resolve()):
        raise UnsafePath(f"{target} leads outside {out} through a symbolic link")
    return target


def plan(inputs: Iterable[str], *, out: Path, fmt: str | None = None, recursive: bool = False) -> Plan:
    """Expand ``inputs`` into jobs; raises InputError for an input that matches nothing."""
    root = out.resolve()
    found: dict[Path, tuple[Path, PurePath]] = {}  # resolved source -> (source, relative path)
    result = Plan()
    for item in inputs:
        for source, rel in _expand(item, root=root, recursive=recursive):
            if source.suffix.lower() not in IMAGE_TYPES:
                log.info("skipping %s: not an image (by its extension)", source)
                result.ignored.append(source)
                continue
            found.setdefault(source.resolve(), (source, rel))
    claimed: dict[Path, Path] = {}  # resolved target -> the source that makes it
    for source, rel in sorted(found.values(), key=lambda found_at: str(found_at[1])):
        job_fmt = format_for(source, fmt)
        try:
            target = output_path(out, rel, job_fmt)
        except UnsafePath as exc:
            result.refused.append(Refused(source, None, str(exc)))
            continue
        key = target.resolve()
        if key in found:
            result.refused.append(Refused(source, target, f"the output {target} would overwrite an input"))
        elif key in claimed:
            result.refused.append(Refused(source, target, f"the output {target} is already made from {claimed[key]}"))
        else:
            claimed[key] = source
            result.jobs.append(Job(source, target, job_fmt))
    return result


def _expand(item: str, *, root: Path, recursive: bool) -> Iterator[tuple[Path, PurePath]]:
    """(file, path relative to where it was found) for one INPUT."""
    path = Path(item)
    if path.is_file():
        yield path, PurePath(path.name)
    elif path.is_dir():
        yield from _walk(path, base=path, root=root, recursive=recursive)
    elif _GLOB_MAGIC.search(item):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            raise InputError(f"{item!r} matches no file or folder")
        base = _glob_base(path)
        for match in map(Path, matches):
            if match.resolve().is_relative_to(root):
                continue
            if match.is_dir():
                yield from _walk(match, base=base, root=root, recursive=recursive)
            elif match.is_file():
                yield match, match.relative_to(base)
    else:
        raise InputError(f"{item!r} is no file or folder")


def _walk(folder: Path, *, base: Path, root: Path, recursive: bool) -> Iterator[tuple[Path, PurePath]]:
    for here, dirs, files in os.walk(folder):
        here_path = Path(here)
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith(".") and (here_path / d).resolve() != root)
        for name in sorted(files):
            if not name.startswith("."):
                yield here_path / name, (here_path / name).relative_to(base)


def _glob_base(pattern: Path) -> Path:
    """The leading part of a glob pattern without wildcards: ``photos/**/*.jpg`` -> ``photos``."""
    fixed = []
    for part in pattern.parts:
        if _GLOB_MAGIC.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path()
