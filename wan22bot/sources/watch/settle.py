"""When a photo in the watched folder is ready to be read: the settle state machine.

Pure bookkeeping, no file system: the caller observes each candidate (its signature: size, mtime
and its companions' sizes and mtimes) and feeds it in with the current monotonic time; this says
which candidates have stayed unchanged long enough. Tests drive it with made-up signatures and times.

Two rules decide, and both must agree:

- Stability (everywhere): the signature has not changed for `settle_seconds`.
- Open writers (where the observer reports close-after-write, i.e. inotify on Linux): a file that
  was written to after its last close-after-write is still open in some program, however long
  that program pauses (a network copy that stalls for seconds between chunks), so it is not ready.
  The kernel reports the close even when the writer dies, so this cannot wait forever; if events
  were lost, a file untouched for OPEN_WRITER_SECONDS (or ten settle periods) is taken anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

# A zero-byte file is usually a copy that has not started writing yet (a program that opens the
# file, then spends seconds encoding): it gets at least this long before being called empty.
EMPTY_GRACE_SECONDS = 5.0
OPEN_WRITER_SECONDS = 120.0


@dataclass
class Pending:
    """A photo seen in the folder, waiting to settle (or for room in the queue)."""

    sig: tuple | None = None
    since: float = 0.0  # monotonic time `sig` was first seen
    not_before: float = 0.0  # retry time after a full queue
    writing: bool = False  # written to since the last close-after-write event


class Settler:
    """The candidates waiting to settle, keyed by path."""

    def __init__(self, settle_seconds: float, *, track_writers: bool = False):
        self.settle_seconds = settle_seconds
        # True only while an observer that reports close-after-write events feeds wrote()/closed():
        # without those events a "writing" flag would never be cleared.
        self.track_writers = track_writers
        self._pending: dict[str, Pending] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._pending

    def __bool__(self) -> bool:
        return bool(self._pending)

    def keys(self) -> list[str]:
        return list(self._pending)

    def get(self, key: str) -> Pending | None:
        return self._pending.get(key)

    def add(self, key: str) -> bool:
        """Start watching `key`; False when it is already waiting."""
        if key in self._pending:
            return False
        self._pending[key] = Pending()
        return True

    def discard(self, key: str) -> None:
        self._pending.pop(key, None)

    def clear(self) -> None:
        self._pending.clear()

    def settle_time(self, sig: tuple) -> float:
        return self.settle_seconds if sig[0] > 0 else max(5 * self.settle_seconds, EMPTY_GRACE_SECONDS)

    def open_writer_limit(self) -> float:
        return max(OPEN_WRITER_SECONDS, 10 * self.settle_seconds)

    def wrote(self, key: str) -> None:
        """A program wrote to `key` (it has the file open for writing)."""
        pend = self._pending.get(key)
        if pend is not None:
            pend.writing = True

    def closed(self, key: str) -> None:
        """A program that wrote to `key` closed it (or it was renamed into place, complete)."""
        pend = self._pending.get(key)
        if pend is not None:
            pend.writing = False

    def observe(self, key: str, sig: tuple, now: float) -> bool:
        """Record what `key` looks like at `now`; True when it has been unchanged long enough."""
        pend = self._pending.get(key)
        if pend is None:
            return False
        if sig != pend.sig:
            pend.sig, pend.since = sig, now
        quiet_for = now - pend.since
        if self.track_writers and pend.writing and quiet_for < self.open_writer_limit():
            return False
        return quiet_for >= self.settle_time(sig) and now >= pend.not_before

    def ready(self, sigs: dict[str, tuple], now: float) -> list[str]:
        """Feed every observation in; the settled keys, oldest mtime first."""
        out = [key for key, sig in sigs.items() if self.observe(key, sig, now)]
        out.sort(key=lambda k: (sigs[k][1], k))
        return out

    def unsettle(self, key: str) -> None:
        """It changed while being read: it must settle again from scratch."""
        pend = self._pending.get(key)
        if pend is not None:
            pend.sig = None

    def defer(self, key: str, until: float) -> None:
        pend = self._pending.get(key)
        if pend is not None:
            pend.not_before = until

    def retry_all(self) -> None:
        """Room in the queue: photos that waited for it may be taken at once."""
        for pend in self._pending.values():
            pend.not_before = 0.0
