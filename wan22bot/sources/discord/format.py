"""Everything the bot says, as pure functions: jobs and progress in, text and embeds out.

No I/O and no client state here, so each message can be unit-tested on its own. Texts stay well
inside Discord's limits (2000 characters of content; embed title 256, description 4096, field
value 1024, 6000 in all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import discord

from ...queue import Job

CONTENT_LIMIT = 2000
COLOR_DONE = 0x2ECC71
COLOR_FAILED = 0xE74C3C

PASS1 = "Pass 1 (high noise)"
PASS2 = "Pass 2 (low noise)"

STAGE_LABELS = {
    "loading": "Loading the model",
    "text_encode": "Encoding the prompt",
    "image_encode": "Encoding the photo",
    "pass1": PASS1,
    "pass2": PASS2,
    "vae_decode": "Decoding the frames",
    "interpolate": "Interpolating frames",
    "encode": "Writing the MP4",
}

# (timing key, embed field name); the passes first, then the other stages.
TIMING_FIELDS = (
    ("pass1", PASS1),
    ("pass2", PASS2),
    ("text_encode", "Text encode"),
    ("image_encode", "Image encode"),
    ("vae_decode", "VAE decode"),
    ("interpolate", "Interpolation"),
    ("encode", "MP4 encode"),
    ("model_load", "Model load"),
)


def clip(text: str, limit: int) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: max(0, limit - 3)].rstrip() + "..."


def human_bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} bytes"
    if n < 2**20:
        return f"{n / 1024:.1f} KiB"
    if n < 2**30:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**30:.2f} GiB"


def secs(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 10:
        return f"{v:.2f} s"
    if v < 60:
        return f"{v:.1f} s"
    m, s = divmod(int(round(v)), 60)
    return f"{m} min {s:02d} s"


def bar(step: int, steps: int, width: int = 12) -> str:
    if steps <= 0:
        return ""
    done = max(0, min(width, round(width * step / steps)))
    return "\u2588" * done + "\u2591" * (width - done)


def name_of(job: Job) -> str:
    return clip(job.spec.original_name, 100)


# ---------------------------------------------------------------------- status message


def queued_text(name: str, job_id: str, position: int | None, waiting: int | None = None) -> str:
    if position is None:
        return f"**{name}** (job `{job_id}`) is queued."
    where = "next in line" if position == 1 else f"position {position}"
    of = f" of {waiting}" if waiting and waiting >= position and position != 1 else ""
    return f"**{name}** (job `{job_id}`) is queued: {where}{of}."


def started_text(name: str) -> str:
    return f"**{name}**: starting..."


def progress_text(name: str, stage: str | None, step: int = 0, steps: int = 0) -> str:
    label = STAGE_LABELS.get(stage or "", (stage or "working").replace("_", " ").capitalize())
    if steps:
        return f"**{name}**: {label}, step {step}/{steps} `{bar(step, steps)}`"
    return f"**{name}**: {label}..."


WHERE = {"below": " The video is below.", "channel": " The video is in the channel.", "": ""}


def done_text(name: str, total: float | None, *, where: str = "below") -> str:
    return f"**{name}**: done in {secs(total)}.{WHERE[where]}"


def failed_text(name: str, error: str | None) -> str:
    return clip(f"**{name}** could not be animated: {error or 'unknown error'}", CONTENT_LIMIT)


def cancelled_text(name: str) -> str:
    return f"**{name}**: cancelled."


def final_text(job: Job, *, where: str = "below") -> str:
    """The status message's last state; `where` says where the video went."""
    name = name_of(job)
    if job.state.value == "done":
        total = job.result.timings.get("total") if job.result else None
        return done_text(name, total, where=where)
    if job.state.value == "cancelled":
        return cancelled_text(name)
    return failed_text(name, job.error)


def notice(user_id: int, text: str) -> str:
    """A channel message for one user (used when the interaction can no longer be answered)."""
    return clip(f"<@{user_id}> {text}", CONTENT_LIMIT)


# ---------------------------------------------------------------------- the result


def result_content(user_id: int | None, name: str, note: str | None = None) -> str:
    who = f"<@{user_id}> " if user_id else ""
    text = f"{who}your video of **{name}** is ready."
    if note:
        text += f"\n{note}"
    return clip(text, CONTENT_LIMIT)


def fitted_note(original: int, fitted: int, limit: int, width: int, height: int, bitrate: int | None,
                scaled: bool) -> str:
    how = f"{width}x{height}" if scaled else "a lower bitrate"
    rate = f", {bitrate / 1000:.0f} kbit/s" if bitrate else ""
    return (f"The video ({human_bytes(original)}) was re-encoded to {human_bytes(fitted)} ({how}{rate}) "
            f"to fit the {human_bytes(limit)} upload limit here.")


def too_big_note(size: int, limit: int, link: str | None) -> str:
    head = (f"The video is {human_bytes(size)}, over the {human_bytes(limit)} upload limit here, "
            "and could not be shrunk to fit")
    if link:
        return f"{head}; download it here: {link}"
    return f"{head}. Ask the bot's operator for the file (no public download link is configured)."


def result_embed(job: Job, *, note: str | None = None) -> discord.Embed:
    """The finished video's card: both passes by name with their seconds, the other stages, frames,
    fps, seed and the total."""
    res = job.result
    embed = discord.Embed(title=clip(f"Animated {job.spec.original_name}", 256), color=COLOR_DONE)
    lines = []
    prompt = job.spec.options.prompt
    if prompt:
        lines.append(f"> {clip(' '.join(prompt.split()), 500)}")
    if note:
        lines.append(clip(note, 1500))
    if lines:
        embed.description = "\n".join(lines)
    if res is None:
        return embed
    t = res.timings
    for key, label in TIMING_FIELDS:
        v = t.get(key)
        if key in ("pass1", "pass2") or (v is not None and v > 0):
            embed.add_field(name=label, value=secs(v or 0.0), inline=True)
    seconds_of_video = res.frames / res.fps if res.fps else 0.0
    embed.add_field(name="Frames", value=f"{res.frames} ({seconds_of_video:.1f} s of video)", inline=True)
    embed.add_field(name="FPS", value=str(res.fps), inline=True)
    embed.add_field(name="Size", value=f"{res.width}x{res.height}", inline=True)
    embed.add_field(name="Seed", value=str(res.seed), inline=True)
    embed.add_field(name="Total", value=secs(t.get("total")), inline=True)
    embed.set_footer(text=f"job {job.id}")
    return embed


# ---------------------------------------------------------------------- commands


def queue_text(entries: Iterable[tuple[Job, int | None]], counts: Mapping[str, int]) -> str:
    """/queue: the asker's jobs (with positions) and the totals."""
    lines = []
    for job, position in entries:
        name = clip(job.spec.original_name, 60)
        if job.state.value == "running":
            p = job.progress or {}
            if p.get("stage"):
                label = STAGE_LABELS.get(p["stage"], p["stage"])
                step = f" step {p.get('step')}/{p.get('steps')}" if p.get("steps") else ""
                where = f"rendering: {label}{step}"
            else:
                where = "rendering"
        else:
            where = f"position {position}" if position else "queued"
        lines.append(f"`{job.id}` **{name}**: {where}")
    waiting, running = counts.get("queued", 0), counts.get("running", 0)
    head = f"Queue: {waiting} waiting, {running} rendering."
    if not lines:
        return f"You have no videos queued. {head}"
    return clip("Your videos:\n" + "\n".join(lines) + f"\n{head}", CONTENT_LIMIT)


def cancel_text(outcome: str, job: Job | None, job_id: str) -> str:
    name = f"**{clip(job.spec.original_name, 80)}** (job `{job_id}`)" if job else f"job `{job_id}`"
    return {
        "cancelled": f"Cancelled {name}.",
        "cancelling": f"Stopping {name} at its next step.",
        "final": f"{name[0].upper()}{name[1:]} has already finished.",
        "unknown": f"There is no job `{job_id}`.",
    }.get(outcome, f"{name}: {outcome}.")


def status_text(info: Mapping[str, Any]) -> str:
    """/status: model, device, GPU memory, queue depth, running job, last job's timings."""
    lines = []
    model = info.get("model_kind") or "model"
    if info.get("loaded"):
        mode = f", memory mode {info['memory_mode']}" if info.get("memory_mode") else ""
        lines.append(f"Model: {model}, loaded on {info.get('device') or '?'}{mode}.")
    else:
        lines.append(f"Model: {model}, not loaded (it loads with the next job).")
    gpus = info.get("gpu") or []
    for g in gpus:
        lines.append(f"GPU {g['device']} ({g.get('name', '')}): {human_bytes(g['allocated'])} allocated, "
                     f"{human_bytes(g['reserved'])} reserved of {human_bytes(g['total'])}.")
    if not gpus:
        lines.append("GPU memory: no CUDA device in use.")
    counts = info.get("counts") or {}
    lines.append(f"Queue: {counts.get('queued', 0)} waiting, {counts.get('running', 0)} rendering, "
                 f"{counts.get('done', 0)} done, {counts.get('failed', 0)} failed.")
    running = info.get("running")
    if running:
        lines.append(f"Rendering: {running}.")
    workers = info.get("workers")
    if workers:  # worker processes ([gpus]) or the workers on other boxes (a Redis queue)
        each = [f"{w.get('name', '?')} on {w.get('device') or '?'}: "
                f"{'rendering ' + w['job'] if w.get('job') else w.get('state', '?')}" for w in workers]
        lines.append(f"Workers: {'; '.join(each)}.")
    t = info.get("last_timings")
    if t:
        lines.append(f"Last job: {PASS1} {secs(t.get('pass1'))}, {PASS2} {secs(t.get('pass2'))}, "
                     f"total {secs(t.get('total'))}.")
    else:
        lines.append("Last job: none yet since the daemon started.")
    return clip("\n".join(lines), CONTENT_LIMIT)
