"""Photos posted in a watched channel, or in a message that mentions the bot, become videos posted
as replies to that message."""

from __future__ import annotations

import asyncio

from tests.discord.conftest import WAIT, bomb_png, field_map, mp4_info, photo_png


async def test_photo_in_watched_channel_gets_a_video_reply(rig, tmp_path):
    fake = rig.fake
    await rig.start(watch_channels=[int(fake.channel_id)])
    assert fake.identifies[0]["intents"] & (1 << 15)  # message content: needed to see the photo

    att = rig.attachment(name="beach.png", channel_id=fake.channel_id)
    sent = await fake.send_message_create(fake.channel_id, fake.user, "waves rolling in", attachments=[att])
    video = await fake.wait_for(lambda e: e.kind == "channel_message" and e["files"], timeout=WAIT)
    (job,) = await rig.jobs()
    await rig.wait_delivered(job.id)

    # a status reply first (queue position), then the video as a reply to the photo
    status = fake.channel_messages[0]
    assert status["message_reference"]["message_id"] == sent["id"]
    assert "queued" in status["content"] and job.id in status["content"]
    assert video["message_reference"]["message_id"] == sent["id"]
    assert video["content"].startswith(f"<@{fake.user['id']}>")
    assert mp4_info(video["files"][0]["data"], tmp_path)[0] == 5
    fields = field_map(video["embeds"][0])
    assert "Pass 1 (high noise)" in fields and "Pass 2 (low noise)" in fields
    # the status message was edited to its last state
    edits = [e for e in fake.channel_edits if e["message_id"] == status["message"]["id"]]
    assert edits and "done in" in edits[-1]["content"]

    assert job.spec.options.prompt == "waves rolling in"
    assert job.spec.reply == {"kind": "message", "channel_id": fake.channel_id, "user_id": fake.user["id"],
                              "guild_id": fake.guild_id, "message_id": sent["id"], "size_limit": 10 * 2**20}
    # the bot's own messages came back over the gateway (as on Discord) and were not taken as requests
    await asyncio.sleep(0.3)
    assert len(await rig.jobs()) == 1


async def test_watched_channel_ignores_chat_bots_and_other_channels(rig):
    fake = rig.fake
    renders = next(c["id"] for c in fake.guilds[fake.guild_id]["channels"] if c["name"] == "renders")
    await rig.start(worker=False, watch_channels=[int(fake.channel_id)])
    await fake.send_message_create(fake.channel_id, fake.user, "just chatting")
    other_bot = fake.make_user("otherbot", bot=True)
    await fake.send_message_create(fake.channel_id, other_bot, "mine",
                                   attachments=[rig.attachment(channel_id=fake.channel_id)])
    await fake.send_message_create(renders, fake.user, "not watched",
                                   attachments=[rig.attachment(channel_id=renders)])
    # something the bot does answer, so we know the ones before it were seen and skipped
    last = await fake.send_message_create(fake.channel_id, fake.user, "",
                                          attachments=[rig.attachment(photo_png(9), channel_id=fake.channel_id)])
    await fake.wait_for(lambda e: e.kind == "channel_message"
                        and (e["message_reference"] or {}).get("message_id") == last["id"], timeout=WAIT)
    (job,) = await rig.jobs()
    assert job.spec.reply["message_id"] == last["id"]
    assert len(fake.channel_messages) == 1


async def test_mention_with_a_photo_anywhere(rig, tmp_path):
    fake = rig.fake
    renders = next(c["id"] for c in fake.guilds[fake.guild_id]["channels"] if c["name"] == "renders")
    await rig.start(respond_to_mentions=True)
    assert not fake.identifies[0]["intents"] & (1 << 15)  # mentions carry their content without the intent

    bot_user = fake.bot_user
    att = rig.attachment(channel_id=renders)
    sent = await fake.send_message_create(renders, fake.user, f"<@{bot_user['id']}> make it snow", attachments=[att])
    video = await fake.wait_for(lambda e: e.kind == "channel_message" and e["files"], timeout=WAIT)
    assert video["channel_id"] == renders and video["message_reference"]["message_id"] == sent["id"]
    (job,) = await rig.jobs()
    assert job.spec.options.prompt == "make it snow"

    # a mention without a photo gets a hint, and no job
    await fake.send_message_create(renders, fake.user, f"<@{bot_user['id']}> hello")
    hint = await fake.wait_for(lambda e: e.kind == "channel_message" and "Attach a photo" in e["content"],
                               timeout=WAIT)
    assert hint["channel_id"] == renders
    assert len(await rig.jobs()) == 1


async def test_bad_photo_in_watched_channel_is_answered_and_not_queued(rig):
    fake = rig.fake
    await rig.start(worker=False, watch_channels=[int(fake.channel_id)], allowed_roles=[1])
    sent = await fake.send_message_create(fake.channel_id, fake.user, "",
                                          attachments=[rig.attachment(channel_id=fake.channel_id)])
    msg = await fake.wait_for("channel_message", timeout=WAIT)
    assert msg["message_reference"]["message_id"] == sent["id"]
    assert msg["content"] == "You need one of these roles to use the bot: <@&1>."

    await rig.stop_bot()
    rig.configure(watch_channels=[int(fake.channel_id)])
    await rig.start_bot()
    mark = fake.mark()
    bomb = rig.attachment(bomb_png(30000, 30000), name="bomb.png", channel_id=fake.channel_id)
    await fake.send_message_create(fake.channel_id, fake.user, "", attachments=[bomb])
    msg = await fake.wait_for("channel_message", timeout=WAIT, since=mark)
    assert msg["content"].startswith("bomb.png is 30000x30000 (900 megapixels)")
    assert await rig.jobs() == []
