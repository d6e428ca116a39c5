"""Who may call the HTTP API: loopback detection, the bearer token and the middleware enforcing it."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Callable

from aiohttp import web

from ...config import Config
from ...errors import ConfigError
from .errors import RequestError

log = logging.getLogger("wan22bot.sources.http")

PUBLIC_PATHS = {"/healthz", "/"}
SIGNED_PREFIX = "/v/"


def is_loopback(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def read_token(cfg: Config) -> str | None:
    """The bearer token from the environment, or None; a ConfigError when one is needed but missing."""
    env = cfg.http.token_env
    token = (os.environ.get(env) or "").strip() or None
    if token is None and not is_loopback(cfg.http.host):
        raise ConfigError(
            f"http.host is {cfg.http.host!r}, which other machines can reach, so the HTTP API needs a bearer "
            f"token: put one in the environment variable {env} (for example the output of `openssl rand -hex 32`) "
            "or set http.host to 127.0.0.1"
        )
    if token is None and cfg.http.public_url:
        # A proxy on this machine connects from 127.0.0.1: without a token, the whole API would be public.
        raise ConfigError(
            f"http.public_url is set ({cfg.http.public_url}), so the API is reached through a proxy and needs a "
            f"bearer token: put one in the environment variable {env} (for example the output of "
            "`openssl rand -hex 32`) or remove http.public_url"
        )
    if token is not None and len(token) < 16:
        log.warning("the HTTP bearer token in %s is shorter than 16 characters; use a longer random one", env)
    return token


def is_public(path: str, web_files: dict[str, str]) -> bool:
    """/healthz, the page and its assets hold no data and never need the token; signed video links
    (/v/...) carry their own permission, checked by their handler."""
    return (path in PUBLIC_PATHS or (path.startswith("/web/") and path[5:] in web_files)
            or path.startswith(SIGNED_PREFIX))


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.query.get("token") or None


def auth_middleware(get_token: Callable[[], str | None], web_files: dict[str, str]):
    """A middleware asking for the token (read at each request, so a reload applies at once)."""

    @web.middleware
    async def _auth_mw(request: web.Request, handler) -> web.StreamResponse:
        token = get_token()
        if token is not None and not is_public(request.path, web_files):
            given = bearer(request)
            if given is None or not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
                raise RequestError(
                    401,
                    "this server needs a bearer token: send 'Authorization: Bearer <token>' "
                    "(or add ?token=<token> to links and video URLs)" if given is None
                    else "the bearer token is not valid",
                    headers={"WWW-Authenticate": 'Bearer realm="wan22bot"'},
                )
        return await handler(request)

    return _auth_mw
