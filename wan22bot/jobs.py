"""The boundary types that flow source -> queue -> worker -> source.

A source turns an outside request into a `JobSpec` (plus a spooled input file); the queue stores it
as JSON; the worker turns it into a `GenerationRequest` for the engine; the result comes back as a
`JobResult`. Only plain, JSON-serialisable data crosses these lines.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .config import check_frames

TIMING_KEYS = ("text_encode", "image_encode", "pass1", "pass2", "vae_decode", "interpolate", "encode", "total")


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def final(self) -> bool:
        return self.value in FINAL_STATES


# The states a job ends in (and the event kinds that announce them): one tuple for every module.
FINAL_STATES = ("done", "failed", "cancelled")


class JobOptions(BaseModel):
    """Per-job overrides of the `[generation]` defaults. None means "use the config"."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, max_length=2000)
    negative_prompt: str | None = Field(None, max_length=2000)
    frames: int | None = None
    seed: int | None = Field(None, ge=-1, le=2**63 - 1)
    interpolate: bool | None = None
    preset: Literal["fast", "quality"] | None = None
    steps: int | None = Field(None, ge=1, le=200)

    @field_validator("frames")
    @classmethod
    def _frames(cls, v: int | None) -> int | None:
        if v is not None:
            check_frames(v)
        return v


class JobSpec(BaseModel):
    """What a source asks for. `reply` is the source's own delivery target (persisted with the job)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["watch", "http", "discord", "cli"]
    input_path: str  # the spooled copy, owned by the queue
    original_name: str  # for messages and the output name
    name: str  # output stem, unique in the output folder
    options: JobOptions = JobOptions()
    user: str | None = None  # who asked (fairness, limits)
    reply: dict[str, Any] = {}


class JobResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output: str  # the MP4
    sidecar: str  # the JSON beside it
    timings: dict[str, float]
    frames: int
    fps: int
    width: int
    height: int
    seed: int
    bytes: int
