"""Where a finished job's photo goes: processed/ on done, failed/ with `<photo>.error.txt` otherwise.

Blocking file work (the folder source runs it in a thread), plus the small rules that decide the
destination and the message.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .. import sidecars


class Outside(Exception):
    """The journal names a photo that is not in a folder this source watches."""


class Replaced(Exception):
    """The photo at that path no longer holds the bytes the job was made from."""


def destination(state: str, job_error: str | None, processed_dir: Path, failed_dir: Path) -> tuple[Path, str | None]:
    """(folder, error text or None) for a job that ended in `state`."""
    if state == "done":
        return processed_dir, None
    if state == "cancelled":
        return failed_dir, "the job was cancelled before its video was made"
    return failed_dir, f"the video could not be made: {sidecars.one_line(job_error or 'unknown error')}"


def move_if_there(p: Path, dest: Path, error: str | None, content_hash: str | None, known_inputs: set[Path],
                  extensions: set[str]) -> Path | None:
    """Blocking: move a job's photo, only from a folder this source watches (the journal could be
    old), and only if it still holds the bytes the job was made from. None when it is gone."""
    if not p.is_absolute() or p.parent.resolve() not in known_inputs:
        raise Outside(str(p))
    if not os.path.lexists(p):
        return None
    if content_hash:
        try:
            with open(p, "rb") as f:
                now = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            now = content_hash  # unreadable (e.g. a dangling link): move it as it is
        if now != content_hash:
            raise Replaced(str(p))
    return sidecars.move_group(p, dest, extensions, error)


def short(p: Path, base: Path) -> str:
    return f"{base.name}/{p.name}"
