"""/animate offers only the frame counts the configured model makes."""

from __future__ import annotations

from types import SimpleNamespace

import discord
import pytest

from wan22bot.config import config_from_dict
from wan22bot.sources.discord.client import BotClient


@pytest.mark.parametrize(("model", "want"), [
    ({}, [25, 49, 81]),
    ({"kind": "wan2.2-i2v-a14b", "path": "/models/wan"}, [25, 49, 81, 161]),
])
async def test_frame_choices_follow_the_model(model, want):
    cfg = config_from_dict({"model": model})
    # The command tree reads only the config from the source while it is built.
    client = BotClient(SimpleNamespace(cfg=cfg), intents=discord.Intents.none(), fps=16)
    try:
        animate = client.tree.get_command("animate")
        frames = next(p for p in animate.parameters if p.name == "frames")
        assert [c.value for c in frames.choices] == want
        assert frames.choices[-1].name == f"{want[-1]} frames (about {want[-1] / 16:.1f} s)"
    finally:
        await client.close()
