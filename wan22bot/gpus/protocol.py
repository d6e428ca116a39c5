"""Messages between the daemon and its worker processes: one JSON object per line.

The daemon writes to a worker's stdin and reads its stdout (the worker points its own fd 1 at
stderr, so a library's stray print cannot break the stream). Every message has a "t" (type).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Init:
    """Daemon -> worker, first line: everything the worker needs to start."""

    name: str  # "gpu0", ...: names the worker in logs, the journal's claimed_by and the status
    device: str  # as configured ("cuda:1" or "cpu"); the process sees a card as cuda:0
    config: dict[str, Any]  # Config.model_dump(mode="json")
    rank: int = 0  # split mode: this process's rank; 0 claims jobs, the others follow
    world_size: int = 1
    random_weights: bool = False  # benchmarks: the A14B architecture with random weights (timing only)
    t: str = "init"


@dataclass
class Command:
    """Daemon -> worker: "wake" (a job was queued), "cancel" (job), "stop" (checkpoint and leave)."""

    t: str
    job: str | None = None


@dataclass
class Event:
    """Worker -> daemon.

    t: "state" (loading/idle/busy + memory), "claimed" (job), "progress" (job, stage, step, steps),
    "settled" (job, outcome: done/failed/cancelled/checkpoint, error, result), "fatal" (error: the
    worker cannot go on; it exits after this line).
    """

    t: str
    job: str | None = None
    state: str | None = None
    stage: str | None = None
    step: int = 0
    steps: int = 0
    outcome: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    memory: dict[str, int] = field(default_factory=dict)
    load_seconds: float | None = None
    env: dict[str, str] | None = None  # first "state": the device variables the process started with


def encode(msg: Init | Command | Event) -> bytes:
    d = {k: v for k, v in asdict(msg).items() if v is not None and v != {} }
    return (json.dumps(d, separators=(",", ":")) + "\n").encode()


def decode_event(line: bytes) -> Event:
    d = json.loads(line)
    return Event(**{k: v for k, v in d.items() if k in Event.__dataclass_fields__})


def decode_command(line: str) -> Init | Command:
    d = json.loads(line)
    if d.get("t") == "init":
        return Init(**{k: v for k, v in d.items() if k in Init.__dataclass_fields__})
    return Command(**{k: v for k, v in d.items() if k in Command.__dataclass_fields__})
