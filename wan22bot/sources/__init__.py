"""Where jobs come from: the watched folder, the HTTP API, Discord.

Each source turns an outside request into a JobSpec plus the photo's bytes, submits it to the
queue, and listens to the queue's events to deliver results back where the request came from.
Sources never call the engine.
"""

from __future__ import annotations

from typing import Protocol

from ..config import Config


class Source(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def reload(self, cfg: Config) -> None: ...
