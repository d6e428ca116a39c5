"""Fetch the seed's six files into a ComfyUI-style models/ folder: disk check, resume, sha256, atomic rename.

Partial downloads live in `<dest>/.wan22bot-fetch/<subfolder>/<name>.<sha256 prefix>.incomplete`:
on the same file system as the final file (so the last step is a rename), named after the
content they are becoming (so a file changed upstream never resumes onto stale bytes), and kept
after any failure except a checksum mismatch, so the next run continues where this one stopped.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from huggingface_hub.utils import tqdm

from ..errors import ConfigError, DiskFull
from .catalog import SEED_FILES, SeedFile
from .hub import HubError, RangeRefused, RemoteFile, TransportError, fetch_metadata, http, open_file, unreachable

STAGING = ".wan22bot-fetch"
HASH_BLOCK = 8 * 1024 * 1024
# A dropped connection mid-file is retried from the byte it stopped at; after this many failures
# in a row without progress the run stops (the partial stays for the next run).
RETRIES = 4
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class FetchResult:
    dest: Path
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def human(n: int) -> str:
    if n >= 1e9:
        return gb(n)
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def partial_path(dest: Path, remote: RemoteFile) -> Path:
    seed = remote.seed
    return dest / STAGING / seed.subfolder / f"{seed.name}.{remote.sha256[:16]}.incomplete"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prepare_dest(dest: Path) -> IO[str]:
    """Create the destination and the staging folder, prove they are writable, and take the lock."""
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--dest {dest} is a file, not a folder; give a folder (it is created if missing)")
    try:
        (dest / STAGING).mkdir(parents=True, exist_ok=True)
        lock = open(dest / STAGING / "lock", "a+", encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot write to --dest {dest} ({reason}); choose a folder this user can write to, or fix its permissions"
        ) from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(
            f"another wan22bot fetch-models is already downloading into {dest}; wait for it or stop it first"
        ) from None
    return lock


def _hash_file(path: Path, label: str, out: IO[str]) -> "hashlib._Hash":
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=label, file=out, disable=None, leave=False) as bar:
        while block := f.read(HASH_BLOCK):
            h.update(block)
            bar.update(len(block))
    return h


def _drop_stale_partials(dest: Path, remote: RemoteFile) -> None:
    """Partials of the same file for other content (the repository changed it since) cannot be resumed."""
    keep = partial_path(dest, remote)
    folder = keep.parent
    if not folder.is_dir():
        return
    for p in folder.glob(f"{remote.seed.name}.*.incomplete"):
        if p != keep:
            p.unlink(missing_ok=True)


def _download(remote: RemoteFile, partial: Path, out: IO[str], say: Callable[[str], None]) -> None:
    """Bring `partial` to the remote file's full size and content, resuming from what it holds.

    Raises HubError with the sha256 story when the finished bytes are wrong (and deletes them).
    """
    seed = remote.seed
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    if have > remote.size:
        partial.unlink()
        have = 0
    if have:
        say(f"{seed.relpath}: resuming at {human(have)} of {human(remote.size)}")
        h = _hash_file(partial, f"checking the {human(have)} already downloaded", out)
    else:
        say(f"{seed.relpath}: downloading {human(remote.size)} from {seed.repo_id}")
        h = hashlib.sha256()

    failures = 0
    with tqdm(total=remote.size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
              desc=seed.name, file=out, disable=None) as bar:
        while have < remote.size:
            try:
                with open_file(remote, have) as body:
                    if body.start != have:
                        # the server ignored the Range: it is sending the whole file again
                        have, h = 0, hashlib.sha256()
                        bar.reset(total=remote.size)
                    mode = "ab" if have else "wb"
                    with open(partial, mode) as f:
                        for chunk in body.chunks:
                            if have + len(chunk) > remote.size:
                                raise HubError(
                                    f"{seed.repo_id}/{seed.path_in_repo} is longer than the {remote.size} bytes "
                                    "its repository lists; refusing it"
                                )
                            f.write(chunk)
                            # an interrupted run can only resume from bytes that reached the file
                            f.flush()
                            h.update(chunk)
                            have += len(chunk)
                            bar.update(len(chunk))
                            failures = 0
                        os.fsync(f.fileno())
                if have < remote.size:
                    raise http.RemoteProtocolError("the connection closed before the end of the file")
            except RangeRefused:
                partial.unlink(missing_ok=True)
                have, h = 0, hashlib.sha256()
                bar.reset(total=remote.size)
                failures += 1
                if failures > RETRIES:
                    raise HubError(f"the Hub kept refusing to resume {seed.relpath}; run fetch-models again") from None
            except TransportError as exc:
                failures += 1
                if failures > RETRIES:
                    raise unreachable(exc, f"downloading {seed.relpath} ({gb(have)} of {gb(remote.size)} kept; "
                                           "the next run continues from there)") from None
                time.sleep(1.0 * (failures - 1))  # a reset connection often works at once

    digest = h.hexdigest()
    if digest != remote.sha256:
        partial.unlink(missing_ok=True)
        raise HubError(
            f"{seed.relpath} downloaded from {seed.repo_id} has sha256 {digest}, but the repository lists "
            f"{remote.sha256}; the bad download was deleted: run fetch-models again (if it repeats, a proxy or "
            "mirror is altering the file)"
        )


def fetch_seed_files(
    dest: Path,
    files: tuple[SeedFile, ...] = SEED_FILES,
    out: IO[str] | None = None,
) -> FetchResult:
    """Download whatever of `files` is missing or wrong under `dest`, in ComfyUI's models/ layout."""
    out = out or sys.stderr

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    dest = Path(os.path.abspath(dest.expanduser()))
    lock = _prepare_dest(dest)
    try:
        remotes = fetch_metadata(files)
        result = FetchResult(dest=dest)

        # Free disk first, before a single byte is fetched: what is not already complete or partial.
        needed = 0
        reclaimed = 0
        for r in remotes:
            final = dest / r.seed.relpath
            if final.is_file() and final.stat().st_size == r.size:
                continue  # complete unless its sha256 says otherwise (checked below)
            if final.is_file():
                reclaimed += final.stat().st_size  # wrong size: it will be replaced
            partial = partial_path(dest, r)
            have = partial.stat().st_size if partial.is_file() else 0
            needed += r.size - min(have, r.size)
        free = shutil.disk_usage(dest).free + reclaimed
        if needed > free:
            raise DiskFull(
                f"not enough free disk in {dest}: the download needs {gb(needed)} and {gb(free)} is free; "
                "free some space or choose another --dest"
            )
        if needed:
            say(f"{human(needed)} to download into {dest} ({human(free)} free)")

        for r in remotes:
            seed = r.seed
            final = dest / seed.relpath
            if final.is_file() and final.stat().st_size == r.size:
                digest = _hash_file(final, f"checking {seed.name}", out).hexdigest()
                if digest == r.sha256:
                    say(f"{seed.relpath}: already present, sha256 matches the repository: skipped")
                    result.skipped.append(seed.relpath)
                    continue
                say(f"{seed.relpath}: present but its sha256 differs from the repository's; downloading it again")
                final.unlink()
            elif final.exists():
                say(f"{seed.relpath}: present but {final.stat().st_size} bytes instead of {r.size}; downloading it again")
                final.unlink()

            _drop_stale_partials(dest, r)
            partial = partial_path(dest, r)
            try:
                _download(r, partial, out, say)
            except OSError as exc:
                if exc.errno in _NO_SPACE:
                    kept = partial.stat().st_size if partial.exists() else 0
                    raise DiskFull(
                        f"disk full while downloading {seed.relpath} into {dest}: {gb(kept)} of {gb(r.size)} is kept "
                        f"in {partial}; free at least {gb(r.size - kept)} and run fetch-models again to continue"
                    ) from None
                raise
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, final)
            fsync_dir(final.parent)
            say(f"{seed.relpath}: done, sha256 {r.sha256[:12]}… matches the repository")
            result.downloaded.append(seed.relpath)

        return result
    finally:
        # while still holding the lock, so no other run is using what is removed
        _remove_empty_staging(dest)
        lock.close()


def _remove_empty_staging(dest: Path) -> None:
    staging = dest / STAGING
    for folder in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: a partial of something else stays
    leftovers = [p for p in staging.rglob("*") if p.is_file() and p.name != "lock"]
    if not leftovers:
        (staging / "lock").unlink(missing_ok=True)
        try:
            staging.rmdir()
        except OSError:
            pass

