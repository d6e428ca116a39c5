"""The state folder: checked usable, then locked for the life of the process.

Two daemons (or a daemon and a `wan22bot worker`) on one state folder would each re-queue the
other's running job as "left by an unclean stop" and render it twice into the same MP4. The lock
is an flock on `<state>/wan22bot.lock`, held by an open file descriptor: the kernel drops it when
the process ends, however it ends, so a stale lock after a crash or `kill -9` is impossible. The
file holds the PID of the holder, for the message the second process prints.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import Wan22Error

LOCK_NAME = "wan22bot.lock"


class StateDirUnusable(Wan22Error):
    """The state folder cannot be created or written."""

    exit_code = 10


class AlreadyRunning(Wan22Error):
    """Another wan22bot process holds the state folder."""

    exit_code = 11


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_writable(state: Path) -> None:
    """Create the state folder if needed and prove it takes writes, or raise StateDirUnusable
    with one sentence naming the folder and the fix."""
    state = Path(state)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateDirUnusable(
            f"the state folder {state} cannot be created ({_why(exc)}): create it and give the user running "
            f"wan22bot write access to it, or point [paths] state elsewhere") from None
    probe = state / f".write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as exc:
        hint = "the disk is full: free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (
            "give the user running wan22bot write access to it (or mount it read-write), or point [paths] state "
            "elsewhere")
        raise StateDirUnusable(f"the state folder {state} is not writable ({_why(exc)}): {hint}") from None


class StateLock:
    """An exclusive, non-blocking flock on the state folder; `release()` or process exit frees it."""

    def __init__(self, state: Path, role: str = "daemon"):
        self.path = Path(state) / LOCK_NAME
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> "StateLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateDirUnusable(
                f"cannot open the lock file {self.path} ({_why(exc)}): give the user running wan22bot write "
                "access to the state folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateDirUnusable(f"cannot lock {self.path} ({_why(exc)})") from None
            raise AlreadyRunning(
                f"the state folder {self.path.parent} is in use by {holder}: stop that process first, or give this "
                "one its own [paths] state") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.role}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # empty first: a reader racing the unlock must not see our PID as the holder
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    parts = text.split()
    if parts and parts[0].isdigit():
        role = parts[1] if len(parts) > 1 else "wan22bot"
        return f"another wan22bot {role} (PID {parts[0]})"
    return "another wan22bot process (PID not recorded yet)"
