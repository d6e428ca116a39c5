"""The Discord source: a discord.py client inside the daemon.

    format.py   pure functions that turn jobs and progress into message text and embeds
    access.py   who may ask, where, and how often (pure)
    target.py   the persisted reply target (interaction webhook or channel message)
    token.py    where the bot token comes from (never the config file)
    fit.py      re-encoding a video to fit an upload limit (blocking; run in a thread)
    outbox.py   the REST calls that show progress and post results
    tracker.py  one job's throttled status message and its final delivery
    client.py   the discord.Client subclass and the slash commands
    source.py   DiscordSource: lifecycle, requests in, queue events out
"""

from .source import DiscordSource

__all__ = ["DiscordSource"]
