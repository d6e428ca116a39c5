"""/queue, /cancel, /status, the /animate options, and where the commands are synced."""

from __future__ import annotations

import re

from tests.discord.conftest import WAIT, photo_png
from wan22bot.jobs import JobState


async def command(rig, name: str, options: dict | None = None, **kw) -> str:
    """Run a command; return its ephemeral answer (deferred, then the deferred message edited)."""
    inter = await rig.fake.send_interaction(name, options or {}, **kw)
    cb = await rig.fake.wait_for("callback", timeout=WAIT, token=inter.token)
    assert cb["ephemeral"]
    edit = await rig.fake.wait_for("edit", timeout=WAIT, token=inter.token)
    assert edit["message"]["flags"] & 64
    return edit["content"]


async def queue_three(rig):
    """alice queues two photos, bob one (the worker is not running)."""
    fake = rig.fake
    bob = fake.make_user("bob")
    inters = []
    for user, seed in ((fake.user, 1), (bob, 2), (fake.user, 3)):
        inter = await rig.animate(photo=rig.attachment(photo_png(seed), name=f"p{seed}.png"), user=user)
        await fake.wait_for("edit", timeout=WAIT, token=inter.token)
        inters.append(inter)
    jobs = {j.spec.original_name: j for j in await rig.jobs()}
    return bob, inters, jobs["p1.png"], jobs["p2.png"], jobs["p3.png"]


async def test_animate_options_reach_the_job(rig):
    await rig.start(worker=False)
    inter = await rig.animate({"prompt": "  a slow   zoom ", "frames": 49, "seed": 7, "interpolate": False})
    await rig.fake.wait_for("edit", timeout=WAIT, token=inter.token)
    (job,) = await rig.jobs()
    opts = job.spec.options
    assert (opts.prompt, opts.frames, opts.seed, opts.interpolate) == ("  a slow   zoom ", 49, 7, False)
    assert job.spec.source == "discord" and job.spec.original_name == "cat.png" and job.spec.name == "cat"
    assert job.state == JobState.queued


async def test_queue_lists_your_jobs_with_positions(rig):
    await rig.start(worker=False)
    bob, _, a1, b1, a2 = await queue_three(rig)
    text = await command(rig, "queue")
    # the queue takes turns between users: alice, bob, alice
    assert f"`{a1.id}` **p1.png**: position 1" in text
    assert f"`{a2.id}` **p3.png**: position 3" in text
    assert b1.id not in text
    assert "Queue: 3 waiting, 0 rendering." in text
    assert f"`{b1.id}` **p2.png**: position 2" in await command(rig, "queue", user=bob)


async def test_cancel_own_job_and_others_only_as_admin(rig):
    fake = rig.fake
    admin_role = fake.role_ids["animators"]
    await rig.start(worker=False, admin_roles=[int(admin_role)])
    bob, inters, a1, b1, a2 = await queue_three(rig)

    # bob may not cancel alice's job
    text = await command(rig, "cancel", {"job": a1.id}, user=bob)
    assert text == (f"Job `{a1.id}` belongs to someone else; only members with an admin role can cancel "
                    "other people's videos.")
    assert (await rig.queue.get(a1.id)).state == JobState.queued

    # alice cancels her own; her /animate answer shows it
    text = await command(rig, "cancel", {"job": a1.id})
    assert text == f"Cancelled **p1.png** (job `{a1.id}`)."
    assert (await rig.queue.get(a1.id)).state == JobState.cancelled
    last = await fake.wait_for(lambda e: e.kind == "edit" and e["token"] == inters[0].token
                               and "cancelled" in e["content"], timeout=WAIT)
    assert last["content"] == "**p1.png**: cancelled."
    await rig.wait_delivered(a1.id)

    # without a job id: your latest one
    assert await command(rig, "cancel") == f"Cancelled **p3.png** (job `{a2.id}`)."
    assert await command(rig, "cancel") == "You have no videos waiting or rendering."
    assert await command(rig, "cancel", {"job": "nosuchjob"}) == "There is no job `nosuchjob`."
    assert await command(rig, "cancel", {"job": a1.id}) == f"**p1.png** (job `{a1.id}`) has already finished."

    # a member with an admin role may cancel anyone's
    mod = fake.make_user("mod")
    text = await command(rig, "cancel", {"job": b1.id}, user=mod, member_roles=["animators"])
    assert text == f"Cancelled **p2.png** (job `{b1.id}`)."
    assert [j.state for j in await rig.jobs()] == [JobState.cancelled] * 3


async def test_status(rig):
    await rig.start()
    before = await command(rig, "status")
    assert "Model: tiny, loaded on cpu" in before
    assert "Queue: 0 waiting, 0 rendering, 0 done, 0 failed." in before
    assert "Last job: none yet" in before and "GPU memory: no CUDA device in use." in before

    inter = await rig.animate()
    await rig.fake.wait_for("followup", timeout=WAIT, token=inter.token)
    after = await command(rig, "status")
    assert "Queue: 0 waiting, 0 rendering, 1 done, 0 failed." in after
    m = re.search(r"Last job: Pass 1 \(high noise\) (\S+) s, Pass 2 \(low noise\) (\S+) s, total (\S+) s\.", after)
    assert m, after
    assert float(m.group(3)) == round(rig.worker.last_timings["total"], 2)


async def test_commands_sync_to_configured_guilds(rig):
    fake = rig.fake
    await rig.start(worker=False, guilds=[int(fake.guild_id)])
    assert [c["scope"] for c in fake.sync_calls] == [fake.guild_id]
    assert {c["name"] for c in fake.commands[fake.guild_id]} == {"animate", "queue", "cancel", "status"}
    assert "global" not in fake.commands
    inter = await rig.animate()  # guild commands are matched like global ones
    assert "queued" in (await fake.wait_for("edit", timeout=WAIT, token=inter.token))["content"]


async def test_commands_are_refused_where_the_bot_is_not_allowed(rig):
    await rig.start(worker=False, allowed_guilds=[42])
    for name in ("queue", "cancel", "status"):
        inter = await rig.fake.send_interaction(name, {})
        assert await rig.refusal_text(inter) == "This server is not on the bot's list of allowed servers."


async def test_reload_applies_access_lists_and_limits(rig):
    await rig.start(worker=False)
    first = await rig.animate()
    assert "queued" in (await rig.fake.wait_for("edit", timeout=WAIT, token=first.token))["content"]
    new = rig.cfg.model_copy(deep=True)
    object.__setattr__(new.discord, "allowed_guilds", [42])
    rig.bot.reload(new)
    second = await rig.animate(photo=rig.attachment(photo_png(1)))
    assert await rig.refusal_text(second) == "This server is not on the bot's list of allowed servers."
    assert len(await rig.jobs()) == 1
