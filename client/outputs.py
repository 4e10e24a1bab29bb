"""Writing output files so that none is ever seen half-written.

Each file is written to a hidden temporary file in its own folder
(``.NAME.RANDOM.upscale-part``), flushed to disk, then renamed over the target
with ``os.replace``, which is atomic on one file system. A run that is killed
leaves at most such temporary files, which the next run removes.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

__all__ = ["PART_SUFFIX", "is_complete", "remove_stale_parts", "write_atomically"]

log = logging.getLogger("client.outputs")

PART_SUFFIX = ".upscale-part"

# The outputs were made by the service, within its own pixel limits; Pillow's bomb check would refuse large ones.
Image.MAX_IMAGE_PIXELS = None


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that ``target`` is either absent, its old content, or all of ``data``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name[:200]}.{secrets.token_hex(4)}{PART_SUFFIX}")
    f = open(part, "xb")  # outside the try: if this fails, the file there is not ours to remove
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def is_complete(target: Path) -> bool:
    """Whether ``target`` is a regular file that decodes as an image (an output a run can keep)."""
    if target.is_symlink() or not target.is_file():
        return False
    try:
        with Image.open(target) as im:
            im.load()
    except Exception:  # Pillow raises many types on damaged files; any of them means "make it again"
        log.info("%s exists but does not decode; making it again", target)
        return False
    return True


def remove_stale_parts(folders: Iterable[Path]) -> int:
    """Delete the temporary files an interrupted run left in ``folders``; returns how many.

    Two runs writing into the same folders at once are not supported: one would remove the other's.
    """
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed
