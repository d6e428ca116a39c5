"""The watchdog observer: a thread that hands each touched path of the input folder to the loop,
with what happened to it ("created", "modified", "moved", "closed": closed after writing)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

FS_EVENTS = ("created", "modified", "moved", "closed")


class Forward(FileSystemEventHandler):
    """Runs in the observer thread: hands each touched path to the loop and nothing else."""

    def __init__(self, on_path: Callable[[str, str], None], loop: asyncio.AbstractEventLoop):
        self.on_path = on_path
        self.loop = loop

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in FS_EVENTS:
            return
        path = os.fsdecode(event.dest_path if event.event_type == "moved" else event.src_path)
        try:
            self.loop.call_soon_threadsafe(self.on_path, path, event.event_type)
        except RuntimeError:  # the loop has closed: we are shutting down
            pass


def start_observer(folder: Path, on_path: Callable[[str, str], None], loop: asyncio.AbstractEventLoop):
    """Blocking: a started observer of `folder` (not recursive); OSError where the platform refuses."""
    obs = Observer()
    obs.schedule(Forward(on_path, loop), str(folder), recursive=False)
    obs.daemon = True
    obs.start()
    return obs


def stop_observer(obs) -> None:
    """Blocking."""
    if obs is not None:
        obs.stop()
        obs.join(timeout=10)


def reports_close(obs) -> bool:
    """Whether `obs` reports close-after-write events (inotify, Linux); others only report changes."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except ImportError:  # not Linux
        return False
    return isinstance(obs, InotifyObserver)
