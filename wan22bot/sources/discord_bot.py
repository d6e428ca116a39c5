"""The Discord bot source (see wan22bot/sources/discord/ for the parts).

The daemon builds it as ``DiscordSource(cfg, queue, worker)`` when ``[discord] enabled`` is on.
"""

from .discord import DiscordSource
from .discord.token import read_token

__all__ = ["DiscordSource", "read_token"]
