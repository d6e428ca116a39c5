"""/animate end to end: the real discord.py client in the daemon's DiscordSource, the fake Discord,
a real JobQueue and the real Worker with the tiny model."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import discord
import pytest

from tests.discord.conftest import TOKEN, WAIT, field_map, mp4_info
from wan22bot.sources.discord.format import secs

SECONDS = re.compile(r"^\d+(\.\d+)? s$|^\d+ min \d\d s$")


async def test_animate_defer_position_progress_and_video(rig, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    # Many short steps and a short interval. Each step is held to at least 20 ms (in the worker
    # thread), so each 20-step pass lasts about 8 edit intervals however fast the machine is: on a
    # quick one the tiny model finished pass 2 inside one interval and no pass-2 edit was due.
    interval = 0.05
    import wan22bot.engine.generator as generator_module

    real_make_scheduler = generator_module.make_scheduler

    def paced_scheduler(shift):
        sched = real_make_scheduler(shift)
        step = sched.step

        def paced_step(*args, **kwargs):
            t_end = time.monotonic() + 0.02
            out = step(*args, **kwargs)
            time.sleep(max(0.0, t_end - time.monotonic()))
            return out

        sched.step = paced_step
        return sched

    monkeypatch.setattr(generator_module, "make_scheduler", paced_scheduler)
    await rig.start(worker=False, generation={"steps": 40, "switch_step": 20}, fast_edits=interval)
    fake = rig.fake
    progress_events = []
    rig.queue.add_listener(lambda ev: progress_events.append(ev) if ev.kind == "progress" else None)

    # the commands were synced globally at start, with the options the issue lists
    commands = {c["name"]: c for c in fake.commands["global"]}
    assert set(commands) == {"animate", "queue", "cancel", "status"}
    options = {o["name"]: o for o in commands["animate"]["options"]}
    assert list(options) == ["image", "prompt", "frames", "seed", "interpolate"]
    assert options["image"]["type"] == 11 and options["image"]["required"]
    assert [c["value"] for c in options["frames"]["choices"]] == [25, 49, 81]  # the tiny model: at most 125
    assert options["seed"]["type"] == 4 and options["interpolate"]["type"] == 5

    # someone else is first in the queue
    bob = fake.make_user("bob")
    first = await rig.animate(photo=rig.attachment(name="bob.png"), user=bob)
    await fake.wait_for("edit", timeout=WAIT, token=first.token)

    inter = await rig.animate({"prompt": "the sea moves"})
    created = await fake.wait_for("interaction_create", token=inter.token)
    await fake.wait_for("edit", timeout=WAIT, token=inter.token)
    # bob cancels: alice moves up
    await fake.send_interaction("cancel", {}, user=bob)
    await fake.wait_for(lambda e: e.kind == "edit" and e["token"] == inter.token and "next in line" in e["content"],
                        timeout=WAIT)
    rig.start_worker()
    followup = await fake.wait_for("followup", timeout=WAIT, token=inter.token)
    job = await rig.wait_job(lambda j: j.spec.user == fake.user["id"] and j.delivered)

    # 1. deferred at once (ephemeral), 2. the photo downloaded, 3. answered with the queue position
    (callback,) = [c for c in fake.callbacks if c["token"] == inter.token]
    assert callback["type"] == 5 and callback["ephemeral"]
    assert callback["at"] - created.at < 3.0
    mine = [e.kind for e in fake.log if e.kind in ("callback", "cdn", "edit") and e.at >= created.at
            and (e.kind == "cdn" or e["token"] == inter.token)]
    assert mine[:3] == ["callback", "cdn", "edit"]
    edits = rig.edits_for(inter)
    texts = [e["content"] for e in edits]
    assert texts[0] == f"**cat.png** (job `{job.id}`) is queued: position 2 of 2."
    # then the position moves up, the passes show their steps, and the last state lands
    assert any("next in line" in t for t in texts[1:]), texts
    assert any(re.search(r"Pass 1 \(high noise\), step \d+/20", t) for t in texts), texts
    assert any(re.search(r"Pass 2 \(low noise\), step \d+/20", t) for t in texts), texts
    assert "done in" in texts[-1]
    # at most one edit per interval (the last one excepted), never repeating itself
    gaps = [b["at"] - a["at"] for a, b in zip(edits, edits[1:])]
    assert all(g >= interval - 0.005 for g in gaps[:-1]), gaps
    assert all(a != b for a, b in zip(texts, texts[1:]))
    assert len(edits) <= 2 + len([e for e in progress_events if e.job.id == job.id])

    # the result: a public followup with the MP4 and an embed naming both passes with their seconds
    assert not followup["ephemeral"] and not followup["resolved_deferred"]
    assert f"<@{fake.user['id']}>" in followup["content"]
    (upload,) = followup["files"]
    assert upload["filename"] == "cat.mp4"
    frames, fps, width, height = mp4_info(upload["data"], tmp_path)
    assert (frames, fps) == (5, 16.0) == (job.result.frames, float(job.result.fps))
    assert (width, height) == (job.result.width, job.result.height)
    embed = followup["embeds"][0]
    fields = field_map(embed)
    t = job.result.timings
    assert fields["Pass 1 (high noise)"] == secs(t["pass1"]) and SECONDS.match(fields["Pass 1 (high noise)"])
    assert fields["Pass 2 (low noise)"] == secs(t["pass2"]) and SECONDS.match(fields["Pass 2 (low noise)"])
    assert fields["VAE decode"] == secs(t["vae_decode"]) and fields["Total"] == secs(t["total"])
    assert fields["Frames"].startswith("5 ") and fields["FPS"] == "16" and fields["Seed"] == str(job.result.seed)
    assert "the sea moves" in embed["description"]

    # the reply target is persisted with the job
    reply = job.spec.reply
    assert reply["kind"] == "interaction" and reply["token"] == inter.token
    assert reply["application_id"] == fake.application_id and reply["interaction_id"] == inter.id
    assert reply["channel_id"] == fake.channel_id and reply["guild_id"] == fake.guild_id
    assert reply["user_id"] == fake.user["id"] and reply["size_limit"] == 10 * 2**20
    assert abs(reply["expires_at"] - (inter.created + 15 * 60)) < 1.0
    assert job.spec.options.prompt == "the sea moves" and job.spec.user == fake.user["id"]

    # the bot token never reaches a log line
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "logged in as" in logged and TOKEN not in logged


async def test_rate_limited_edit_is_honoured_and_result_delivered(rig, tmp_path):
    await rig.start()
    fake = rig.fake
    fake.rate_limit_next("/messages/@original", retry_after=0.4)
    inter = await rig.animate()
    followup = await fake.wait_for("followup", timeout=WAIT, token=inter.token)

    (limited,) = fake.rate_limited
    assert "/messages/@original" in limited["path"]
    first = rig.edits_for(inter)[0]
    assert first["at"] - (await fake.wait_for("rate_limited")).at >= 0.39  # waited retry_after
    assert "queued" in first["content"]
    assert mp4_info(followup["files"][0]["data"], tmp_path)[0] == 5
    job = (await rig.jobs())[0]
    await rig.wait_delivered(job.id)


async def test_result_is_delivered_while_the_gateway_is_down(rig, tmp_path):
    await rig.start(worker=False)
    fake = rig.fake
    inter = await rig.animate()
    await fake.wait_for("edit", timeout=WAIT, token=inter.token)

    # Drop the gateway and hold the client's RESUME until the result is out: delivery is REST only.
    release = asyncio.Event()
    resume = fake._on_resume

    async def held_resume(conn, d):
        await release.wait()
        await resume(conn, d)

    fake._on_resume = held_resume
    mark = fake.mark()
    assert await fake.drop_gateway(4000)
    rig.start_worker()
    followup = await fake.wait_for("followup", timeout=WAIT, since=mark, token=inter.token)
    assert fake.resumes == []  # the session was not back yet when the video went out
    assert mp4_info(followup["files"][0]["data"], tmp_path)[0] == 5
    job = (await rig.jobs())[0]
    await rig.wait_delivered(job.id)

    release.set()
    resumed = await fake.wait_for("resume", timeout=WAIT, since=mark)
    assert resumed["accepted"] and len(fake.identifies) == 1  # resumed, not a new session
    # and the bot still answers commands on the resumed session
    again = await rig.animate(photo=rig.attachment(name="dog.png"))
    await fake.wait_for("followup", timeout=WAIT, token=again.token)


async def test_attachment_url_is_read_right_after_the_defer(rig):
    """The CDN URL expires: the photo is downloaded while answering, not when the job runs."""
    await rig.start(worker=False)
    fake = rig.fake
    photo = rig.attachment()
    inter = await rig.animate(photo=photo)
    await fake.wait_for("edit", timeout=WAIT, token=inter.token)
    fake.expire_attachment(photo)  # from now on the CDN answers 404
    rig.start_worker()
    followup = await fake.wait_for("followup", timeout=WAIT, token=inter.token)
    assert followup["files"] and len(fake.cdn_downloads) == 1


@pytest.mark.parametrize("bad", ["wrong-token"])
async def test_a_refused_token_is_a_config_error_without_the_token(rig, monkeypatch, bad):
    from tests.discord.conftest import TOKEN_ENV
    from wan22bot.errors import ConfigError

    monkeypatch.setenv(TOKEN_ENV, bad)
    base = discord.http.Route.BASE
    with pytest.raises(ConfigError) as info:
        await rig.start(worker=False)
    assert "refused the bot token" in str(info.value) and bad not in str(info.value)
    assert discord.http.Route.BASE == base  # the URLs were put back
