"""Every refusal is a clear ephemeral message, and none of them queues anything."""

from __future__ import annotations

import pytest

from tests.discord.conftest import WAIT, bomb_png, photo_png


async def assert_nothing_queued(rig) -> None:
    assert await rig.jobs() == []
    assert list((rig.tmp / "state" / "spool").iterdir()) == []


async def test_guild_not_allowed(rig):
    await rig.start(worker=False, allowed_guilds=[1234567890])
    inter = await rig.animate()
    text = await rig.refusal_text(inter)
    assert text == "This server is not on the bot's list of allowed servers."
    await assert_nothing_queued(rig)
    assert rig.fake.cdn_downloads == []  # refused before touching the photo


async def test_channel_not_allowed_and_allowed(rig):
    fake = rig.fake
    renders = next(c["id"] for c in fake.guilds[fake.guild_id]["channels"] if c["name"] == "renders")
    await rig.start(worker=False, allowed_channels=[int(renders)])
    inter = await rig.animate()  # in #general
    text = await rig.refusal_text(inter)
    assert "isn't one the bot works in" in text and f"<#{renders}>" in text
    await assert_nothing_queued(rig)

    ok = await rig.animate(channel_id=renders)
    edit = await fake.wait_for("edit", timeout=WAIT, token=ok.token)
    assert "queued" in edit["content"]
    assert len(await rig.jobs()) == 1


async def test_role_not_allowed_and_allowed(rig):
    fake = rig.fake
    animators = fake.role_ids["animators"]
    await rig.start(worker=False, allowed_roles=[int(animators)])
    inter = await rig.animate()
    text = await rig.refusal_text(inter)
    assert text == f"You need one of these roles to use the bot: <@&{animators}>."
    await assert_nothing_queued(rig)

    ok = await rig.animate(member_roles=["animators"])
    edit = await fake.wait_for("edit", timeout=WAIT, token=ok.token)
    assert "queued" in edit["content"]
    assert len(await rig.jobs()) == 1


async def test_dms_refused_unless_allowed(rig):
    fake = rig.fake
    await rig.start(worker=False)
    inter = await rig.animate(guild_id=None)
    text = await rig.refusal_text(inter)
    assert "direct messages" in text
    await assert_nothing_queued(rig)

    await rig.stop_bot()
    rig.configure(allow_dms=True)
    rig.bot = None
    await rig.start_bot()
    ok = await rig.animate(guild_id=None)
    edit = await fake.wait_for("edit", timeout=WAIT, token=ok.token)
    assert "queued" in edit["content"]
    (job,) = await rig.jobs()
    assert job.spec.reply["channel_id"] == fake.dm_channel(fake.user)["id"] and "guild_id" not in job.spec.reply


async def test_per_user_queue_limit(rig):
    fake = rig.fake
    await rig.start(worker=False, max_queued_per_user=1)
    first = await rig.animate()
    await fake.wait_for("edit", timeout=WAIT, token=first.token)
    second = await rig.animate(photo=rig.attachment(photo_png(1)))
    text = await rig.refusal_text(second)
    assert text.startswith("You already have 1 video waiting or rendering (the limit is 1)")
    assert len(await rig.jobs()) == 1
    assert len(fake.cdn_downloads) == 1  # the refused photo was not even downloaded

    # the limit is per user
    bob = fake.make_user("bob")
    other = await rig.animate(user=bob)
    assert "queued" in (await fake.wait_for("edit", timeout=WAIT, token=other.token))["content"]
    assert len(await rig.jobs()) == 2


async def test_rate_limit_per_hour(rig):
    fake = rig.fake
    await rig.start(worker=False, rate_limit_per_hour=2, max_queued_per_user=10)
    for seed in (1, 2):
        ok = await rig.animate(photo=rig.attachment(photo_png(seed)))
        await fake.wait_for("edit", timeout=WAIT, token=ok.token)
    # cancelling does not give the allowance back: it counts requests, not queue slots
    await rig.queue.cancel((await rig.jobs())[0].id)
    third = await rig.animate(photo=rig.attachment(photo_png(3)))
    text = await rig.refusal_text(third)
    assert "the limit is 2 an hour" in text and "try again in 60 minutes" in text
    assert len(await rig.jobs()) == 2


async def test_queue_full(rig):
    fake = rig.fake
    await rig.start(worker=False, queue_length=1)
    first = await rig.animate()
    await fake.wait_for("edit", timeout=WAIT, token=first.token)
    second = await rig.animate(user=fake.make_user("bob"))
    text = await rig.refusal_text(second)
    assert text == "The queue is full (1 waiting); please try again later."
    assert len(await rig.jobs()) == 1


def _truncated_png() -> bytes:
    data = photo_png(5, (64, 64))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "name, data, content_type, expected, downloaded",
    [
        ("notes.txt", b"just some text", "text/plain", "notes.txt is not a photo (text/plain)", False),
        ("fake.png", b"this is not a png at all", "image/png", "fake.png is not an image wan22bot can read", True),
        ("huge.png", photo_png(4, (128, 128)), "image/png", "huge.png is 48.", False),
        ("bomb.png", bomb_png(30000, 30000), "image/png", "bomb.png is 30000x30000 (900 megapixels); the limit is 50",
         True),
        # past Pillow's own guard the header is refused before our megapixel check
        ("bigger-bomb.png", bomb_png(100_000, 100_000), "image/png", "bigger-bomb.png has more than", True),
        ("cut.png", _truncated_png(), "image/png", "cut.png is damaged or truncated", True),
    ],
    ids=["not-an-image", "garbage-bytes", "too-large", "decompression-bomb", "bigger-bomb", "truncated"],
)
async def test_bad_attachments(rig, name, data, content_type, expected, downloaded):
    await rig.start(worker=False, generation={"max_file_mb": 0.03})  # 30 KiB
    inter = await rig.animate(photo=rig.attachment(data, name=name, content_type=content_type))
    text = await rig.refusal_text(inter)
    assert text.startswith(expected), text
    if expected.startswith("huge.png"):
        assert "the limit is 30.7 KiB" in text
    await assert_nothing_queued(rig)
    assert bool(rig.fake.cdn_downloads) == downloaded


async def test_interpolation_without_rife_weights_is_refused(rig):
    await rig.start(worker=False)
    inter = await rig.animate({"interpolate": True})
    text = await rig.refusal_text(inter)
    assert "interpolation isn't available" in text.lower()
    await assert_nothing_queued(rig)
