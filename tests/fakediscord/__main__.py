"""Run the fake Discord on its own: ``python -m tests.fakediscord --port 0``.

Point a bot at the printed URLs (``discord.http.Route.BASE`` and
``DiscordWebSocket.DEFAULT_GATEWAY``), then watch the events it logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .server import FakeDiscord


def _short(data: dict) -> str:
    keep = {}
    for key, value in data.items():
        if key in ("payload", "message", "files", "commands", "delivered", "data"):
            continue
        keep[key] = value
    text = json.dumps(keep, default=str)
    return text if len(text) < 300 else text[:297] + "..."


async def _main(args: argparse.Namespace) -> None:
    fake = FakeDiscord(host=args.host, port=args.port, token=args.token)
    await fake.start()
    print(f"api_base:    {fake.api_base}")
    print(f"gateway_url: {fake.gateway_url}")
    print(f"cdn:         {fake.cdn_base}")
    print(f"application: {fake.application_id}")
    print(f"guild:       {fake.guild_id}  channel: {fake.channel_id}")
    print(f"token:       {args.token or '(any)'}")
    sys.stdout.flush()
    try:
        while True:
            event = await fake.events.get()
            if not args.quiet:
                print(f"[{event.at:10.3f}] {event.kind:<20} {_short(event.data)}", flush=True)
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakediscord", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token", default=None, help="bot token to require (default: accept any)")
    parser.add_argument("--quiet", action="store_true", help="do not print events")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
