"""The pure parts of the bot on their own: message formatting, access rules, the token lookup, the
reply target, fitting a video under a size limit, and the edit throttle."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from wan22bot.config import DiscordConfig
from wan22bot.errors import ConfigError
from wan22bot.jobs import JobOptions, JobResult, JobSpec, JobState
from wan22bot.queue import Job
from wan22bot.sources.discord import access
from wan22bot.sources.discord import format as fmt
from wan22bot.sources.discord.fit import fit_video
from wan22bot.sources.discord.target import ReplyTarget
from wan22bot.sources.discord.token import read_token
from wan22bot.sources.discord.tracker import Tracker
from wan22bot.video import encode_mp4, probe_mp4

TIMINGS = {"text_encode": 0.21, "image_encode": 0.43, "pass1": 61.5, "pass2": 58.25, "vae_decode": 9.8,
           "interpolate": 0.0, "encode": 1.2, "total": 131.4}


def done_job(prompt: str | None = "a cat turns its head", name: str = "cat.jpg", **timings: float) -> Job:
    spec = JobSpec(source="discord", input_path="/spool/x.jpg", original_name=name, name="cat",
                   options=JobOptions(prompt=prompt), user="42")
    result = JobResult(output="/out/cat.mp4", sidecar="/out/cat.json", timings={**TIMINGS, **timings}, frames=81,
                       fps=16, width=832, height=1216, seed=1234, bytes=9_000_000)
    return Job(id="abc123def456", seq=1, state=JobState.done, spec=spec, created=0.0, result=result)


# ---------------------------------------------------------------------- format


def test_result_embed_names_both_passes_with_seconds():
    embed = fmt.result_embed(done_job()).to_dict()
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    names = [f["name"] for f in embed["fields"]]
    assert names[:2] == ["Pass 1 (high noise)", "Pass 2 (low noise)"]
    assert fields["Pass 1 (high noise)"] == "1 min 02 s" and fields["Pass 2 (low noise)"] == "58.2 s"
    assert fields["Text encode"] == "0.21 s" and fields["VAE decode"] == "9.80 s" and fields["MP4 encode"] == "1.20 s"
    assert "Interpolation" not in fields  # 0: it did not run
    assert fields["Frames"] == "81 (5.1 s of video)" and fields["FPS"] == "16" and fields["Seed"] == "1234"
    assert fields["Size"] == "832x1216" and fields["Total"] == "2 min 11 s"
    assert embed["description"] == "> a cat turns its head" and embed["footer"]["text"] == "job abc123def456"


def test_result_embed_with_interpolation_and_a_zero_pass():
    fields = {f["name"]: f["value"] for f in fmt.result_embed(done_job(interpolate=3.5, pass2=0.0)).to_dict()["fields"]}
    assert fields["Interpolation"] == "3.50 s"
    assert fields["Pass 2 (low noise)"] == "0.00 s"  # both passes are always named


def test_embed_and_content_stay_inside_discord_limits():
    job = done_job(prompt="word " * 400, name="n" * 300 + ".png")
    embed = fmt.result_embed(job, note="x" * 3000)
    d = embed.to_dict()
    assert len(d["title"]) <= 256 and len(d["description"]) <= 4096 and len(embed) <= 6000
    assert all(len(f["value"]) <= 1024 for f in d["fields"])
    assert len(fmt.result_content(42, "n" * 3000, "y" * 3000)) <= 2000
    assert len(fmt.failed_text("x.png", "e" * 5000)) <= 2000


def test_status_texts():
    assert fmt.queued_text("cat.png", "j1", 1, 1) == "**cat.png** (job `j1`) is queued: next in line."
    assert fmt.queued_text("cat.png", "j1", 3, 7) == "**cat.png** (job `j1`) is queued: position 3 of 7."
    assert fmt.progress_text("cat.png", "pass1", 1, 2) == (
        "**cat.png**: Pass 1 (high noise), step 1/2 `██████░░░░░░`")
    assert fmt.progress_text("cat.png", "pass2", 2, 2).startswith("**cat.png**: Pass 2 (low noise), step 2/2")
    assert fmt.progress_text("cat.png", "vae_decode") == "**cat.png**: Decoding the frames..."
    assert fmt.progress_text("cat.png", "interpolate") == "**cat.png**: Interpolating frames..."
    assert fmt.final_text(done_job()) == "**cat.jpg**: done in 2 min 11 s. The video is below."
    failed = done_job()
    failed.state, failed.error = JobState.failed, "out of memory"
    assert fmt.final_text(failed) == "**cat.jpg** could not be animated: out of memory"


def test_size_notes():
    note = fmt.fitted_note(12_000_000, 9_900_000, 10 * 2**20, 624, 912, 1_500_000, True)
    assert note == ("The video (11.4 MiB) was re-encoded to 9.4 MiB (624x912, 1500 kbit/s) "
                    "to fit the 10.0 MiB upload limit here.")
    assert "download it here: https://x/api/jobs/j/video" in fmt.too_big_note(30 * 2**20, 10 * 2**20,
                                                                              "https://x/api/jobs/j/video")
    assert "no public download link" in fmt.too_big_note(30 * 2**20, 10 * 2**20, None)


def test_queue_and_status_text():
    running = done_job()
    running.state, running.progress = JobState.running, {"stage": "pass2", "step": 1, "steps": 2}
    queued = done_job(name="dog.png")
    queued.id, queued.state = "q2", JobState.queued
    text = fmt.queue_text([(running, None), (queued, 4)], {"queued": 5, "running": 1})
    assert "`abc123def456` **cat.jpg**: rendering: Pass 2 (low noise) step 1/2" in text
    assert "`q2` **dog.png**: position 4" in text and text.endswith("Queue: 5 waiting, 1 rendering.")
    assert fmt.queue_text([], {}).startswith("You have no videos queued.")
    info = {"model_kind": "wan2.2-i2v-a14b", "loaded": True, "device": "cuda", "memory_mode": "resident",
            "gpu": [{"device": "cuda:0", "name": "H100", "allocated": 40 * 2**30, "reserved": 42 * 2**30,
                     "total": 80 * 2**30}],
            "counts": {"queued": 2, "running": 1}, "running": "cat.png (Pass 1 (high noise) step 1/2)",
            "last_timings": TIMINGS}
    text = fmt.status_text(info)
    assert "Model: wan2.2-i2v-a14b, loaded on cuda, memory mode resident." in text
    assert "GPU cuda:0 (H100): 40.00 GiB allocated, 42.00 GiB reserved of 80.00 GiB." in text
    assert "Queue: 2 waiting, 1 rendering" in text
    assert "Last job: Pass 1 (high noise) 1 min 02 s, Pass 2 (low noise) 58.2 s, total 2 min 11 s." in text
    assert "Workers:" not in text  # one in-process worker: nothing to list
    info["workers"] = [{"name": "gpubox-1a2b3c", "device": "cuda:0", "state": "busy", "job": "abc123def456"},
                       {"name": "gpubox-4d5e6f", "device": "cuda:0", "state": "idle", "job": None}]
    assert ("Workers: gpubox-1a2b3c on cuda:0: rendering abc123def456; gpubox-4d5e6f on cuda:0: idle."
            in fmt.status_text(info))


# ---------------------------------------------------------------------- access


def test_access_rules():
    who = access.Requester(user_id=1, guild_id=10, channel_id=100, role_ids=frozenset({7}))
    dm = access.Requester(user_id=1)
    assert access.refusal(DiscordConfig(), who) is None
    assert "direct messages" in access.refusal(DiscordConfig(), dm)
    assert access.refusal(DiscordConfig(allow_dms=True), dm) is None
    assert "server role" in access.refusal(DiscordConfig(allow_dms=True, allowed_roles=[7]), dm)
    assert access.refusal(DiscordConfig(allowed_guilds=[11]), who) is not None
    assert access.refusal(DiscordConfig(allowed_guilds=[10]), who) is None
    assert access.refusal(DiscordConfig(allowed_channels=[200]), who) is not None
    thread = access.Requester(user_id=1, guild_id=10, channel_id=555, parent_id=200)
    assert access.refusal(DiscordConfig(allowed_channels=[200]), thread) is None  # a thread of an allowed channel
    assert access.refusal(DiscordConfig(allowed_channels=[200]), who, watched=True) is None
    assert access.refusal(DiscordConfig(allowed_roles=[8]), who) is not None
    assert access.refusal(DiscordConfig(allowed_roles=[8], admin_roles=[7]), who) is None  # admins may
    assert access.is_admin(DiscordConfig(admin_roles=[7]), who) and not access.is_admin(DiscordConfig(), who)


def test_rate_limit_window():
    now = 10_000.0
    assert access.rate_limit_refusal([now - 10, now - 20], 3, now) is None
    assert access.rate_limit_refusal([now - 4000, now - 10, now - 20], 3, now) is None  # one is outside the hour
    text = access.rate_limit_refusal([now - 3000, now - 10, now - 20], 3, now)
    assert text == ("You have asked for 3 videos in the last hour (the limit is 3 an hour); "
                    "try again in 10 minutes.")
    assert access.queued_limit_refusal(2, 3) is None
    assert access.queued_limit_refusal(3, 3).startswith("You already have 3 videos")


def test_attachment_metadata_checks():
    assert access.attachment_refusal("a.png", "image/png", 1000, 2000) is None
    assert access.attachment_refusal("a.jpg", None, 1000, 2000) is None  # no type: the extension decides
    assert "not a photo" in access.attachment_refusal("a.pdf", None, 1000, 2000)
    assert access.attachment_refusal("a.mp4", "video/mp4", 1000, 2000) == (
        "a.mp4 is not a photo (video/mp4); attach a JPEG, PNG, WebP, BMP, TIFF or GIF image.")
    assert access.attachment_refusal("a.png", "image/png", 3 * 2**20, 2**20) == (
        "a.png is 3.0 MiB; the limit is 1.0 MiB. Send a smaller photo.")


# ---------------------------------------------------------------------- token and target


def test_token_sources(tmp_path):
    dc = DiscordConfig(token_env="T_ENV")
    assert read_token(dc, {"T_ENV": "  abc.def  "}) == "abc.def"
    assert read_token(dc, {"T_ENV": "Bot abc.def"}) == "abc.def"
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    assert read_token(DiscordConfig(token_env="T_ENV", token_file=f), {}) == "from-file"
    assert read_token(DiscordConfig(token_env="T_ENV", token_file=f), {"T_ENV": "env"}) == "env"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "discord-token").write_text("from-credential")
    assert read_token(dc, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-credential"
    with pytest.raises(ConfigError, match="no bot token: put it in the environment variable T_ENV"):
        read_token(dc, {})
    with pytest.raises(ConfigError, match="does not exist"):
        read_token(DiscordConfig(token_file=tmp_path / "missing"), {})
    with pytest.raises(ConfigError) as info:
        read_token(dc, {"T_ENV": "two words"})
    assert "two words" not in str(info.value)


def test_reply_target_round_trip_and_expiry():
    now = time.time()
    t = ReplyTarget(kind="interaction", channel_id=2**62 + 1, user_id=3, guild_id=4, application_id=5,
                    interaction_id=6, token="tok", expires_at=now + 600, size_limit=25 * 2**20)
    d = t.to_dict()
    assert d["channel_id"] == str(2**62 + 1)  # ids as strings
    assert ReplyTarget.from_dict(d) == t
    assert t.token_usable(now) and not t.token_usable(now + 560)  # a minute's margin
    m = ReplyTarget(kind="message", channel_id=1, user_id=2, message_id=9)
    assert ReplyTarget.from_dict(m.to_dict()) == m and not m.token_usable(now)
    with pytest.raises(ValueError):
        ReplyTarget.from_dict({"kind": "interaction", "channel_id": "1", "user_id": "2"})


# ---------------------------------------------------------------------- fitting a video


def test_fit_video_lowers_bitrate_then_size(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 64, 96, 3), dtype=np.uint8)  # noise: compresses badly
    src = tmp_path / "in.mp4"
    size = encode_mp4(frames, src, 16)
    limit = size // 3
    fitted = fit_video(src, tmp_path / "out.mp4", limit)
    assert fitted is not None and fitted.bytes <= limit and fitted.path.stat().st_size == fitted.bytes
    info = probe_mp4(fitted.path)
    assert info.frames == 9 and info.fps == 16.0
    assert (info.width, info.height) == (fitted.width, fitted.height)
    assert fit_video(src, tmp_path / "none.mp4", 300) is None  # smaller than any MP4 can be
    assert not (tmp_path / "none.mp4").exists()


# ---------------------------------------------------------------------- the edit throttle


class _Outbox:
    def __init__(self):
        self.edits: list[tuple[float, str]] = []

    async def edit_original(self, target, text):
        await asyncio.sleep(0.005)
        self.edits.append((asyncio.get_running_loop().time(), text))


class _Owner:
    edit_interval = 0.2

    def __init__(self):
        self.outbox = _Outbox()
        self.delivered: list = []
        self.forgotten = False

    async def deliver_tracked(self, job, tracker):
        self.delivered.append((asyncio.get_running_loop().time(), job))

    def forget(self, tracker):
        self.forgotten = True


async def test_tracker_throttles_coalesces_and_always_ends():
    owner = _Owner()
    target = ReplyTarget(kind="interaction", channel_id=1, user_id=2, application_id=3, token="t",
                         expires_at=time.time() + 900)
    tr = Tracker(owner, "j", "cat.png", target)
    task = asyncio.create_task(tr.run())
    tr.show("early")  # before the answer: not shown ahead of it
    await asyncio.sleep(0.05)
    assert owner.outbox.edits == []
    loop = asyncio.get_running_loop()
    began = loop.time()
    tr.open("position 1")
    for i in range(60):  # 60 states in about 1.2 s
        tr.show(f"step {i}")
        await asyncio.sleep(0.02)
    elapsed = loop.time() - began
    job = done_job()
    tr.finish(job)
    await asyncio.wait_for(task, 5)

    times = [t for t, _ in owner.outbox.edits]
    texts = [x for _, x in owner.outbox.edits]
    assert texts[0] == "position 1"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps and all(g >= 0.2 - 0.001 for g in gaps), gaps
    assert 4 <= len(texts) <= elapsed / 0.2 + 2 and len(texts) < 30  # one per interval, not one per state
    assert all(t.startswith("step") for t in texts[1:])
    assert owner.delivered and owner.delivered[0][1] is job and owner.forgotten
    # the end is not held back by the interval
    assert owner.delivered[0][0] - times[-1] < 0.2 + 0.1
