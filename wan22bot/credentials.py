"""The HTTP bearer token as a systemd credential.

Every reader of the HTTP token (the API's auth, signed links, the worker's result uploads) looks
in the environment variable named by `[http] token_env`. The shipped units hand the token over as
a credential instead (`LoadCredential=http-token`, from /etc/credstore/http-token), so it is never
written in a unit file or in systemd's environment: at start, a process that finds the variable
empty and the credential present copies it into its own environment, once, before anything reads
it. The variable, when set, wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from .config import Config
from .errors import ConfigError

HTTP_TOKEN_CREDENTIAL = "http-token"


def adopt_http_token_credential(cfg: Config, environ: MutableMapping[str, str] | None = None) -> str | None:
    """Put `$CREDENTIALS_DIRECTORY/http-token` into `[http] token_env` when that is empty.

    Returns where the token came from ("environment", "credential") or None when there is none.
    """
    env = os.environ if environ is None else environ
    name = cfg.http.token_env
    if (env.get(name) or "").strip():
        return "environment"
    creds = env.get("CREDENTIALS_DIRECTORY")
    if not creds:
        return None
    path = Path(creds) / HTTP_TOKEN_CREDENTIAL
    if not path.is_file():
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"the systemd credential {HTTP_TOKEN_CREDENTIAL} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"the systemd credential {HTTP_TOKEN_CREDENTIAL} cannot be read: {exc.strerror}") from None
    if not token or any(ch.isspace() for ch in token):
        raise ConfigError(f"the systemd credential {HTTP_TOKEN_CREDENTIAL} must hold one word (the token), "
                          "with no spaces or line breaks inside")
    env[name] = token
    return "credential"
