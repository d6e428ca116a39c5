"""Fetch the seed's six files into a ComfyUI-style models/ folder: disk check, resume, sha256, atomic rename.

Partial downloads live in `<dest>/<subfolder>/.wan22bot-fetch/<name>.<sha256 prefix>.incomplete`:
beside the final file, so on its file system even when a subfolder is a link to another disk (the
last step is a rename); named after the content they are becoming (so a file changed upstream never
resumes onto stale bytes); kept after any failure except a checksum mismatch, so the next run
continues where this one stopped. ComfyUI lists only model extensions, so it never offers them.
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

STAGING = ".wan22bot-fetch"  # inside each subfolder
LOCK = ".wan22bot-fetch.lock"  # in the destination
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
    return dest / seed.subfolder / STAGING / f"{seed.name}.{remote.sha256[:16]}.incomplete"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prepare_dest(dest: Path) -> IO[str]:
    """Create the destination, prove it is writable (the lock file is the proof), and take the lock."""
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--dest {dest} is a file, not a folder; give a folder (it is created if missing)")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        lock = open(dest / LOCK, "a+", encoding="utf-8")
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
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True,
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
    with tqdm(total=remote.size, initial=have, unit="B", unit_scale=True,
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
                    raise unreachable(exc, f"downloading {seed.relpath} ({human(have)} of {human(remote.size)} kept; "
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
    # subfolders this run creates are removed again if it ends with nothing in them
    absent = {f.subfolder for f in files if not (dest / f.subfolder).exists()}
    try:
        remotes = fetch_metadata(files)
        result = FetchResult(dest=dest)

        needed = _check_free_disk(dest, remotes)
        if needed:
            say(f"{human(needed)} to download into {dest}")

        for r in remotes:
            seed = r.seed
            final = dest / seed.relpath
            if final.exists() and not final.is_file():
                raise ConfigError(f"{final} is not a file (a folder?); move it away and run fetch-models again")
            if final.is_file() and final.stat().st_size == r.size:
                digest = _hash_file(final, f"checking {seed.name}", out).hexdigest()
                if digest == r.sha256:
                    say(f"{seed.relpath}: already present, sha256 matches the repository: skipped")
                    result.skipped.append(seed.relpath)
                    continue
                # it stays until the replacement is complete and checked, then the rename swaps them
                say(f"{seed.relpath}: present but its sha256 differs from the repository's; downloading it again")
            elif final.exists():
                say(f"{seed.relpath}: present but {final.stat().st_size} bytes instead of {r.size}; downloading it again")

            _drop_stale_partials(dest, r)
            partial = partial_path(dest, r)
            try:
                _download(r, partial, out, say)
            except OSError as exc:
                if exc.errno in _NO_SPACE:
                    kept = partial.stat().st_size if partial.exists() else 0
                    raise DiskFull(
                        f"disk full while downloading {seed.relpath} into {dest}: {human(kept)} of {human(r.size)} is "
                        f"kept in {partial}; free at least {human(r.size - kept)} and run fetch-models again to continue"
                    ) from None
                raise
            os.replace(partial, final)
            fsync_dir(final.parent)
            say(f"{seed.relpath}: done, sha256 {r.sha256[:12]}… matches the repository")
            result.downloaded.append(seed.relpath)

        return result
    finally:
        # while still holding the lock, so no other run is using what is removed
        _remove_empty_staging(dest, files, absent)
        lock.close()


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _check_free_disk(dest: Path, remotes: list[RemoteFile]) -> int:
    """Before a single byte is fetched: is there room for what is not already complete or partial?

    Counted per file system, since a ComfyUI subfolder may be a link to another disk. Returns the
    bytes to download; raises DiskFull naming the folder, the GB needed and the GB free.
    """
    needed: dict[int, int] = {}
    where: dict[int, Path] = {}
    for r in remotes:
        folder = _existing(dest / r.seed.subfolder)
        dev = folder.stat().st_dev
        where.setdefault(dev, dest if dest.stat().st_dev == dev else folder)
        final = dest / r.seed.relpath
        if final.is_file() and final.stat().st_size == r.size:
            continue  # complete unless its sha256 says otherwise (checked before it is skipped)
        partial = partial_path(dest, r)
        have = partial.stat().st_size if partial.is_file() else 0
        needed[dev] = needed.get(dev, 0) + r.size - min(have, r.size)
    for dev, n in needed.items():
        free = shutil.disk_usage(where[dev]).free
        if n > free:
            raise DiskFull(
                f"not enough free disk in {where[dev]}: the download needs {gb(n)} and {gb(free)} is free; "
                "free some space or choose another --dest"
            )
    return sum(needed.values())


def _remove_empty_staging(dest: Path, files: tuple[SeedFile, ...], created: set[str]) -> None:
    """Drop the staging folders left empty (partials of unfinished files stay), then the lock file."""
    for subfolder in sorted({f.subfolder for f in files}):
        for folder in [dest / subfolder / STAGING] + ([dest / subfolder] if subfolder in created else []):
            try:
                folder.rmdir()
            except OSError:
                pass  # missing, or holding a partial or a finished file
    (dest / LOCK).unlink(missing_ok=True)

