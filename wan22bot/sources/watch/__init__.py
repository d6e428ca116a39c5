"""The watched folder: photos dropped into `paths.input` become jobs; results sort the photo away.

How a photo travels:

1. Found by the watchdog observer (a thread; paths hop onto the loop with call_soon_threadsafe), by
   the scan at start, or by the periodic rescan (a safety net for missed events, e.g. on network
   shares). Only top-level regular files of the input folder whose extension is in
   `watch.extensions` count; hidden files, partial downloads (`.part`, `.crdownload`, `.tmp`, ...),
   companions and sub-folders (processed/, failed/) do not. A symlink counts only when it points
   inside the input, processed or failed folder; others are ignored with a log line.
2. Settles: it is taken only once its size and mtime (and those of its companions) have not
   changed for `watch.settle_seconds`, checked every `watch.poll_seconds`. Where the observer
   reports close-after-write (inotify, Linux), a file written to since its last close is still
   open in its writer and is not taken, however long the writer stalls (settle.py).
3. Checked: header probe (type, bytes, megapixels), a full decode (a truncated file fails here) and
   the companions (`<photo>.txt`/`<stem>.txt` prompt, `<photo>.toml`/`<stem>.toml` options; see
   sidecars.py; a companion that is a link or not a regular file is refused). A photo that fails
   goes to the failed folder with `<photo>.error.txt`: no job. If it then changes there (its
   writer had not finished), it goes back to the input folder once settled and its note is removed.
4. Queued: every file dropped gets its own job and its own video, named after it; four copies of
   one photo under four names are four jobs. Only the same file seen twice (same path, and after a
   restart the same device, inode, size and mtime) is recognised as its job. While pending it
   stays where it is; dropped again after its job finished, it is a new job. A full queue leaves it
   in place and it is retried when the queue moves.
5. Delivered: on done the photo (and companions) move to the processed folder; on failed or
   cancelled to the failed folder with the job's error in `<photo>.error.txt`. Nothing is ever
   overwritten (`cat-2.jpg` on collision). Then the job is marked delivered; at start the jobs that
   finished while the daemon was down are delivered first.

All file work runs in threads; the event loop only keeps the bookkeeping.
"""

from .settle import EMPTY_GRACE_SECONDS, Settler
from .source import FolderSource

__all__ = ["EMPTY_GRACE_SECONDS", "FolderSource", "Settler"]
