"""Where the bot token comes from: never the config file, and never a log line.

Looked up in this order (the same order `wan22bot check` reports):

1. the environment variable named by ``discord.token_env`` (default ``WAN22BOT_DISCORD_TOKEN``);
2. the file named by ``discord.token_file``;
3. ``$CREDENTIALS_DIRECTORY/discord-token`` (the shipped unit's ``LoadCredential=discord-token``,
   from ``/etc/credstore/discord-token``; systemd skips it when that file is missing).

Error messages name where the token was looked for, never what it contains.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ...config import DiscordConfig
from ...errors import ConfigError

CREDENTIAL_NAME = "discord-token"


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None


def read_token(dc: DiscordConfig, environ: Mapping[str, str] | None = None) -> str:
    """The bot token, or a ConfigError saying where to put one."""
    env = os.environ if environ is None else environ
    token = (env.get(dc.token_env) or "").strip()
    where = f"the environment variable {dc.token_env}"
    if not token and dc.token_file is not None:
        where = f"discord.token_file ({dc.token_file})"
        token = _read(Path(dc.token_file), "discord.token_file")
    if not token and env.get("CREDENTIALS_DIRECTORY"):
        cred = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if cred.is_file():
            where = f"the systemd credential {CREDENTIAL_NAME}"
            token = _read(cred, "the systemd credential")
    if not token:
        raise ConfigError(
            f"discord.enabled is on but there is no bot token: put it in the environment variable "
            f"{dc.token_env}, in a file named by discord.token_file, or in a systemd credential named "
            f"{CREDENTIAL_NAME} (LoadCredential=)"
        )
    if token[:4].lower() == "bot ":
        token = token[4:].strip()
    if not token or any(ch.isspace() for ch in token):
        raise ConfigError(f"the Discord token from {where} contains spaces or line breaks; it must be one word")
    return token
