"""Where results go when the easy path is closed: an expired interaction token, a video over the
upload limit, a daemon restart between queueing and the result."""

from __future__ import annotations

import re
from pathlib import Path

import discord
import pytest

from tests.discord.conftest import WAIT, field_map, mp4_info
from wan22bot import links
from wan22bot.jobs import JobState


async def test_expired_token_sends_the_video_to_the_channel_with_a_mention(rig, tmp_path):
    await rig.start(worker=False)
    fake = rig.fake
    inter = await rig.animate()
    await fake.wait_for("edit", timeout=WAIT, token=inter.token)
    fake.expire_token(inter)  # the webhook now answers 401 / 50027
    rig.start_worker()

    msg = await fake.wait_for(lambda e: e.kind == "channel_message" and e["files"], timeout=WAIT)
    assert msg["channel_id"] == fake.channel_id
    assert f"<@{fake.user['id']}>" in msg["content"]
    # it pings the user and nobody else
    assert [str(u) for u in msg["payload"]["allowed_mentions"]["users"]] == [fake.user["id"]]
    assert mp4_info(msg["files"][0]["data"], tmp_path)[0] == 5
    fields = field_map(msg["embeds"][0])
    assert "Pass 1 (high noise)" in fields and "Pass 2 (low noise)" in fields
    assert rig.followups_for(inter) == []
    assert any(r["status"] == 401 and inter.token in r["path"] for r in fake.rejected)  # it was tried first
    job = (await rig.jobs())[0]
    await rig.wait_delivered(job.id)


async def test_webhook_refusing_the_video_falls_back_to_the_channel(rig, tmp_path):
    await rig.start()
    fake = rig.fake
    # the status edits work, but the followup with the video gets 401 / 50027
    fake.fail_next("POST /webhooks/", 401, code=50027, message="Invalid Webhook Token")
    inter = await rig.animate()
    msg = await fake.wait_for(lambda e: e.kind == "channel_message" and e["files"], timeout=WAIT)
    assert msg["content"].startswith(f"<@{fake.user['id']}>")
    assert mp4_info(msg["files"][0]["data"], tmp_path)[0] == 5
    assert rig.followups_for(inter) == []
    assert any(r["status"] == 401 and r["method"] == "POST" for r in fake.rejected)
    await rig.wait_delivered((await rig.jobs())[0].id)


async def test_token_close_to_expiry_is_not_used_for_the_result(rig, tmp_path):
    await rig.start(worker=False)
    fake = rig.fake
    fake.callback_deadline = None  # let the fake accept the defer of an old interaction
    inter = await rig.animate(age=14 * 60 + 30)  # 30 s of token left: less than the margin
    await fake.wait_for("edit", timeout=WAIT, token=inter.token)
    rig.start_worker()

    msg = await fake.wait_for(lambda e: e.kind == "channel_message" and e["files"], timeout=WAIT)
    assert f"<@{fake.user['id']}>" in msg["content"]
    assert mp4_info(msg["files"][0]["data"], tmp_path)[0] == 5
    assert rig.followups_for(inter) == []
    assert not [r for r in fake.rejected if inter.token in r["path"]]  # the webhook was not even tried
    # while it lasts, the token still serves the status message, which points at the channel
    last = await fake.wait_for(lambda e: e.kind == "edit" and "done in" in e["content"], timeout=WAIT)
    assert last["content"].endswith("The video is in the channel.")


@pytest.mark.parametrize("expired", [False, True])
async def test_failed_job_is_reported(rig, expired):
    await rig.start(worker=False)
    fake = rig.fake
    inter = await rig.animate()
    await fake.wait_for("edit", timeout=WAIT, token=inter.token)
    job = (await rig.jobs())[0]
    Path(job.spec.input_path).unlink()  # the spooled photo is gone: the worker fails the job
    if expired:
        fake.expire_token(inter)
    rig.start_worker()
    await rig.wait_delivered(job.id)
    failed = (await rig.jobs())[0]
    assert failed.state == JobState.failed

    if expired:  # told in the channel, mentioning the user
        msg = await fake.wait_for("channel_message", timeout=WAIT)
        assert msg["content"].startswith(f"<@{fake.user['id']}>")
        assert "**cat.png** could not be animated: cat.png does not exist" in msg["content"]
    else:  # the status message (ephemeral) says why; nothing public
        last = rig.edits_for(inter)[-1]
        assert last["content"] == f"**cat.png** could not be animated: {failed.error}"
        assert last["message"]["flags"] & 64
        assert fake.channel_messages == [] and rig.followups_for(inter) == []


async def test_oversize_video_is_reencoded_to_fit(rig, tmp_path):
    await rig.start()
    fake = rig.fake
    limit = 5000
    inter = await rig.animate(attachment_size_limit=limit)
    followup = await fake.wait_for("followup", timeout=WAIT, token=inter.token)
    job = await rig.wait_delivered((await rig.jobs())[0].id)

    assert job.spec.reply["size_limit"] == limit
    assert job.result.bytes > limit  # the original would not have fit
    (upload,) = followup["files"]
    assert upload["size"] <= limit
    frames, fps, _, _ = mp4_info(upload["data"], tmp_path)
    assert (frames, fps) == (5, 16.0)
    assert "re-encoded" in followup["content"] and "upload limit" in followup["content"]
    assert "Pass 1 (high noise)" in field_map(followup["embeds"][0])
    assert list((rig.tmp / "state" / "discord").iterdir()) == []  # the re-encoded copy is cleaned up


@pytest.mark.parametrize("public_url", ["https://videos.example.test/wan", None])
async def test_video_that_cannot_fit(rig, public_url):
    await rig.start(http={"public_url": public_url})
    fake = rig.fake
    inter = await rig.animate(attachment_size_limit=600)  # below what any MP4 of it can be
    followup = await fake.wait_for("followup", timeout=WAIT, token=inter.token)
    job = await rig.wait_delivered((await rig.jobs())[0].id)

    assert followup["files"] == []
    assert "could not be shrunk to fit" in followup["content"]
    if public_url:
        # a signed, expiring link (no bearer token in a channel message); tests/http checks it opens the video
        found = re.search(rf"https://videos\.example\.test/wan/v/{job.id}\?exp=(\d+)&sig=([0-9a-f]{{64}})",
                          followup["content"])
        assert found, followup["content"]
        assert links.refusal(links.link_secret(rig.cfg), job.id, found[1], found[2]) is None
    else:
        assert "no public download link" in followup["content"] and "http" not in followup["content"]
    assert "Pass 2 (low noise)" in field_map(followup["embeds"][0])  # the timings still come


async def test_results_finished_while_the_bot_was_down_are_delivered_after_restart(rig, tmp_path):
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    await rig.start(worker=False)
    assert discord.http.Route.BASE == rig.fake.api_base  # the bot points discord.py at its config's URLs
    fake = rig.fake
    bob = fake.make_user("bob")
    alice_inter = await rig.animate()
    bob_inter = await rig.animate(photo=rig.attachment(name="dog.png"), user=bob)
    for inter in (alice_inter, bob_inter):
        await fake.wait_for("edit", timeout=WAIT, token=inter.token)

    await rig.stop_bot()
    assert (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == (base, gateway)
    rig.start_worker()
    await rig.wait_job(lambda j: j.state == JobState.done and j.spec.original_name == "cat.png")
    await rig.wait_job(lambda j: j.state == JobState.done and j.spec.original_name == "dog.png")
    fake.expire_token(bob_inter)  # bob's token lapsed while the bot was down
    assert fake.followups == [] and fake.channel_messages == []
    assert [j.delivered for j in await rig.jobs()] == [False, False]

    await rig.start_bot()  # a new DiscordSource, as after a daemon restart
    followup = await fake.wait_for("followup", timeout=WAIT, token=alice_inter.token)
    assert mp4_info(followup["files"][0]["data"], tmp_path)[0] == 5
    assert "Pass 1 (high noise)" in field_map(followup["embeds"][0])
    to_bob = await fake.wait_for(lambda e: e.kind == "channel_message" and e["files"], timeout=WAIT)
    assert to_bob["content"].startswith(f"<@{bob['id']}>") and to_bob["channel_id"] == fake.channel_id
    for job in await rig.jobs():
        await rig.wait_delivered(job.id)

    # delivered once: a further restart sends nothing again
    sent = len(fake.followups) + len(fake.channel_messages)
    await rig.stop_bot()
    await rig.start_bot()
    await rig.bot._sweep()
    assert len(fake.followups) + len(fake.channel_messages) == sent
