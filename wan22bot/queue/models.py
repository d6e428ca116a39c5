"""A job as stored in the journal, and the events the queue publishes about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..jobs import JobResult, JobSpec, JobState


@dataclass
class Job:
    id: str
    seq: int
    state: JobState
    spec: JobSpec
    created: float
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    error: str | None = None
    result: JobResult | None = None
    delivered: bool = False
    content_hash: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    delivery_error: str | None = None  # why the result could not be handed back (given up)
    # set by a claim: the lane clock before it, so a claim undone by cancellation leaves no trace
    claimed_from: float | None = field(default=None, repr=False, compare=False)

    @property
    def source(self) -> str:
        return self.spec.source

    @property
    def lane(self) -> str:
        """Fairness key: each source, and each user within a source, gets its own turn."""
        return f"{self.spec.source}:{self.spec.user or ''}"

    def to_api(self, position: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "source": self.spec.source,
            "user": self.spec.user,
            "name": self.spec.name,
            "photo": self.spec.original_name,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "attempts": self.attempts,
            "position": position,
            "options": self.spec.options.model_dump(exclude_none=True),
            "progress": self.progress or None,
            "timings": self.result.timings if self.result else None,
            "output": self.result.output if self.result else None,
            "error": self.error,
            # handing the result back: "pending" until the source has it, "undeliverable" when given up
            "delivery": ("undeliverable" if self.delivery_error else "delivered" if self.delivered
                         else "pending" if self.state.final else None),
            "delivery_error": self.delivery_error,
        }


@dataclass(frozen=True)
class JobEvent:
    """Published on every state change and on progress. Sources pick the ones for their jobs."""

    job: Job
    kind: str  # "queued" | "started" | "progress" | "done" | "failed" | "cancelled" | "requeued"
    stage: str | None = None
    step: int = 0
    steps: int = 0
