"""What a worker says about itself: the in-process GPU thread (worker.py) or the worker processes
(gpus/supervisor.py). Torch-free, so a daemon whose models live in worker processes never loads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Health:
    ok: bool
    state: str  # "idle" | "loading" | "running" | "stuck" | "dead" | "stopped"
    detail: str = ""
    seconds_since_beat: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "state": self.state, "detail": self.detail,
                "seconds_since_beat": round(self.seconds_since_beat, 1)}
