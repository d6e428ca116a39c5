"""Writes that survive a crash or a power cut: the one atomic-write helper, and directory fsync.

A rename is only durable once the directory holding it is flushed, so every helper here ends with
an fsync of the parent folder. Used for spooled photos, sidecars and anything else that must be
either complete or absent after a crash.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import DiskFull

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (new names, renames, removals) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, disk_full: str | None = None) -> None:
    """Write `data` to `path` so that after a crash it holds either the old or the new content.

    Temp file beside it (same file system, hidden), fsync the file, rename over `path`, fsync the
    folder. A full disk raises DiskFull with `disk_full` as its message (default: names the file
    and its folder).
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in NO_SPACE:
            raise DiskFull(disk_full or f"no space left to write {path.name} in {path.parent}") from None
        raise


def remove_files(*paths: str | os.PathLike[str] | None) -> None:
    """Remove each file that exists (None entries skipped); a failure is logged, never raised, since
    callers use it to tidy up after the real work is settled."""
    import logging

    for p in paths:
        if p is not None:
            try:
                Path(p).unlink(missing_ok=True)
            except OSError as exc:
                logging.getLogger(__name__).warning("could not remove %s: %s", p, exc)
