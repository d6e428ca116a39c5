"""A local fake of Discord (gateway, REST v10, CDN) for end-to-end bot tests.

The real, unmodified ``discord.py`` client talks to it over loopback::

    import discord, yarl
    from tests.fakediscord import FakeDiscord

    async def test_animate(monkeypatch):
        async with FakeDiscord(token="t") as fake:
            monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
            monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                                yarl.URL(fake.gateway_url))
            client = MyBot(guild_ready_timeout=0.1)     # any discord.Client
            task = asyncio.create_task(client.start("t"))
            await asyncio.sleep(0)          # let start() initialise before waiting
            await client.wait_until_ready()
            await client.tree.sync()                    # recorded in fake.commands

            photo = fake.add_attachment("cat.png", png_bytes)      # served by the fake CDN
            inter = await fake.send_interaction("animate", {"prompt": "wave"},
                                                attachment=photo)
            ev = await fake.wait_for("followup", token=inter.token, timeout=10)
            assert ev["files"][0]["data"].startswith(b"\\x00\\x00\\x00")

            await client.close(); await task

What is recorded (lists of dicts, and every item also goes to ``fake.log`` /
``fake.events`` as a ``FakeEvent(kind, data, at)``): ``callbacks`` (kind
``callback``), ``edits`` (``@original`` edits, kind ``edit``), ``followups``,
``followup_edits``, ``channel_messages``, ``channel_edits``, ``deletions``,
``reactions``, ``typing``, ``sync_calls``/``commands``, ``identifies``,
``resumes``, ``gateway_connections``, ``dispatches``, ``rate_limited``,
``rejected`` (error answers), ``cdn_downloads`` and ``unknown_requests``.
``await fake.wait_for(kind_or_predicate, timeout, since=fake.mark(), **fields)``
waits for an event, including ones that already happened.

Fault knobs: ``expire_token``, ``rate_limit_next``, ``fail_next``,
``forbid_channel``, ``expire_attachment``, ``upload_limit`` and the
interaction's ``attachment_size_limit`` (413 / 40005), ``callback_deadline``
(3 s, then 404 / 10062), ``drop_gateway``, ``send_reconnect`` and
``invalidate_session``.

Run it standalone with ``python -m tests.fakediscord --port 0``.
"""

from .server import FakeDiscord, FakeEvent, FakeInteraction, snowflake_at, snowflake_time

__all__ = ["FakeDiscord", "FakeEvent", "FakeInteraction", "snowflake_at", "snowflake_time"]
