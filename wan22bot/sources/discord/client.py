"""The discord.py client and its slash commands. Thin: each command hands over to the source.

Commands: ``/animate image:<attachment> [prompt] [frames] [seed] [interpolate]``, ``/queue``,
``/cancel [job]`` and ``/status``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import discord
from discord import app_commands

from ...config import max_frames

if TYPE_CHECKING:
    from .source import DiscordSource

log = logging.getLogger(__name__)

FRAME_CHOICES = (25, 49, 81, 161)
MAX_SEED = 2**53 - 1  # Discord integers are doubles on the client side


def intents_for(dc) -> discord.Intents:
    """Only what the configured features need; message content (privileged) only for watched channels
    (a message that mentions the bot carries its content without the intent)."""
    intents = discord.Intents.none()
    intents.guilds = True
    if dc.watch_channels or dc.respond_to_mentions:
        intents.guild_messages = True
    if dc.watch_channels:
        intents.message_content = True
    if dc.allow_dms and dc.respond_to_mentions:
        intents.dm_messages = True
    return intents


class BotClient(discord.Client):
    def __init__(self, source: "DiscordSource", *, intents: discord.Intents, fps: int,
                 guild_ready_timeout: float = 2.0):
        # The bot never joins voice: skip discord.py's warnings about voice libraries at every start.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(intents=intents, guild_ready_timeout=guild_ready_timeout,
                         allowed_mentions=discord.AllowedMentions.none(), chunk_guilds_at_startup=False)
        self.source = source
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = self._command_error  # type: ignore[method-assign]
        add_commands(self.tree, source, fps)

    async def on_ready(self) -> None:
        await self.source.gateway_up("ready")

    async def on_resumed(self) -> None:
        await self.source.gateway_up("resumed")

    async def on_message(self, message: discord.Message) -> None:
        await self.source.on_message(message)

    async def _command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        name = interaction.command.name if interaction.command else "?"
        log.error("discord: /%s failed: %s", name, error, exc_info=error)
        text = "Something went wrong on the bot's side; the daemon log has the details."
        try:
            if interaction.response.is_done():
                await interaction.edit_original_response(content=text)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            pass


def add_commands(tree: app_commands.CommandTree, source: "DiscordSource", fps: int) -> None:
    limit = max_frames(source.cfg.model.kind)  # only lengths the loaded model can make
    choices = [app_commands.Choice(name=f"{n} frames (about {n / max(fps, 1):.1f} s)", value=n)
               for n in FRAME_CHOICES if n <= limit]

    @tree.command(name="animate", description="Turn a photo into a short video")
    @app_commands.describe(
        image="The photo to animate (JPEG, PNG, WebP...)",
        prompt="What should happen in the video",
        frames="How long the video is",
        seed="Seed for a repeatable result (random if left out)",
        interpolate="Double the frame rate with RIFE (smoother, a little slower)",
    )
    @app_commands.choices(frames=choices)
    async def animate(
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: Optional[app_commands.Range[str, 1, 2000]] = None,
        frames: Optional[int] = None,
        seed: Optional[app_commands.Range[int, 0, MAX_SEED]] = None,
        interpolate: Optional[bool] = None,
    ) -> None:
        await source.on_animate(interaction, image, prompt=prompt, frames=frames, seed=seed,
                                interpolate=interpolate)

    @tree.command(name="queue", description="Your videos in the queue and their positions")
    async def queue(interaction: discord.Interaction) -> None:
        await source.on_queue(interaction)

    @tree.command(name="cancel", description="Cancel one of your videos (your latest if no job is given)")
    @app_commands.describe(job="The job id shown when it was queued (see /queue)")
    async def cancel(interaction: discord.Interaction, job: Optional[app_commands.Range[str, 1, 64]] = None) -> None:
        await source.on_cancel(interaction, job)

    @tree.command(name="status", description="Model, device, GPU memory, queue and the last job's timings")
    async def status(interaction: discord.Interaction) -> None:
        await source.on_status(interaction)
