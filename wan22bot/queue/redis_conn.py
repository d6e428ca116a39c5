"""The Redis connection several boxes share a queue through: credentials, key names, connecting.

The config file names the server (`[queue] url`); the password never sits there. It comes from
the environment (`WAN22BOT_REDIS_PASSWORD`) or a systemd credential (`LoadCredential=redis-password`,
read from `$CREDENTIALS_DIRECTORY`), the same for the user name (`WAN22BOT_REDIS_USERNAME`) and a
TLS CA file for rediss:// (`WAN22BOT_REDIS_CA`, or the credential `redis-ca`).

`connect` keeps trying while the server cannot be reached (a Redis restart, a box booting before
Redis) and fails at once, with a sentence naming the URL and where the password came from, when
the server refuses the login: retrying a wrong password helps nobody.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..config import Config
from ..errors import ConfigError, Wan22Error

log = logging.getLogger(__name__)

PASSWORD_ENV = "WAN22BOT_REDIS_PASSWORD"
USERNAME_ENV = "WAN22BOT_REDIS_USERNAME"
CA_ENV = "WAN22BOT_REDIS_CA"
PASSWORD_CREDENTIAL = "redis-password"
CA_CREDENTIAL = "redis-ca"

EVENTS_MAXLEN = 10000  # the events stream is trimmed (approximately) to this many entries
# a blocking read waits this long at most, so loops notice a stop without a cancellation
BLOCK_MS = 1000
# longer than any blocking read; a server that stops answering is noticed after this
SOCKET_TIMEOUT = 30.0


class RedisUnavailable(Wan22Error):
    """The Redis server could not be reached within the time given to `connect`."""


@dataclass(frozen=True)
class RedisKeys:
    """The key names of one install (`[queue] redis_prefix`), so several can share a server."""

    prefix: str
    stream: str  # P:jobs, the work
    group: str  # P:workers, the consumer group every worker reads the stream in
    events: str  # P:events, what workers say (claimed, progress) for the front to read

    def cancel(self, job_id: str) -> str:
        """P:cancel:{job}: set by the front when a running job is cancelled."""
        return f"{self.prefix}:cancel:{job_id}"

    def worker(self, name: str) -> str:
        """P:worker:{name}: a hash a live worker refreshes (expires after 3 heartbeats)."""
        return f"{self.prefix}:worker:{name}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"


class Outage:
    """A Redis outage as one loop sees it: a warning when it starts and a line when Redis answers
    again, not one at every retry (a loop retrying every few seconds would fill the journal)."""

    def __init__(self, logger: logging.Logger, what: str):
        self.log = logger
        self.what = what
        self.since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s: Redis: %s; trying again until it answers", self.what, exc)
        else:
            self.log.debug("%s: Redis still away: %s", self.what, exc)

    def answered(self) -> None:
        if self.since is not None:
            self.log.info("%s: Redis answers again (away %.1f s)", self.what, time.monotonic() - self.since)
            self.since = None


def keys(cfg: Config) -> RedisKeys:
    p = cfg.queue.redis_prefix
    return RedisKeys(prefix=p, stream=f"{p}:jobs", group=f"{p}:workers", events=f"{p}:events")


def worker_name(cfg: Config) -> str:
    """The consumer name: `[worker] name`, else "<hostname>-<6 hex of the state folder's path>".

    The same after a restart (so a worker resumes the entries it held), different for two workers
    on one host (each has its own state folder)."""
    if cfg.worker.name:
        return cfg.worker.name
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname()).strip("-")[:48] or "worker"
    digest = hashlib.sha256(str(Path(cfg.paths.state).absolute()).encode("utf-8")).hexdigest()[:6]
    return f"{host}-{digest}"


def shown_url(url: str | None) -> str:
    """The URL for a message or a log line: scheme, host, port and db; never a user or password."""
    if not url:
        return "(no [queue] url)"
    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = u.port
    except ValueError:
        port = None
    return urlunsplit((u.scheme, host + (f":{port}" if port else ""), u.path, "", ""))


@dataclass(frozen=True)
class Credentials:
    username: str | None
    password: str | None
    ca_file: Path | None
    password_from: str  # for messages: where the password came from, or that there was none


def _read_credential(folder: str | None, name: str) -> str | None:
    if not folder:
        return None
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8").strip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"the systemd credential {name} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"the systemd credential {name} cannot be read: {exc.strerror}") from None


def read_credentials(environ: Mapping[str, str] | None = None) -> Credentials:
    env = os.environ if environ is None else environ
    creds = env.get("CREDENTIALS_DIRECTORY")
    password, where = env.get(PASSWORD_ENV) or None, f"the environment variable {PASSWORD_ENV}"
    if password is None:
        password = _read_credential(creds, PASSWORD_CREDENTIAL)
        where = f"the systemd credential {PASSWORD_CREDENTIAL}"
    if password is None:
        where = (f"none was given (set {PASSWORD_ENV}, or the systemd credential {PASSWORD_CREDENTIAL}, when the "
                 "server has requirepass or ACL users)")
    ca = env.get(CA_ENV) or None
    ca_path = Path(ca) if ca else (Path(creds) / CA_CREDENTIAL if creds and (Path(creds) / CA_CREDENTIAL).is_file()
                                   else None)
    if ca_path is not None and not ca_path.is_file():
        raise ConfigError(f"{CA_ENV} = {ca}: no such file; point it at the CA certificate that signed the Redis "
                          "server's certificate")
    return Credentials(env.get(USERNAME_ENV) or None, password, ca_path, where)


def client(cfg: Config, environ: Mapping[str, str] | None = None):
    """A `redis.asyncio.Redis` for `[queue] url` with the credentials; it connects on first use."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    url = cfg.queue.url
    if not url:
        raise ConfigError('[queue] backend = "redis" needs url = "redis://host:port/db"')
    creds = read_credentials(environ)
    kw: dict = {}
    if creds.ca_file is not None:
        if urlsplit(url).scheme != "rediss":
            raise ConfigError(f"a CA file for TLS is given ({CA_ENV} or the credential {CA_CREDENTIAL}) but [queue] "
                              f"url is {shown_url(url)}: write rediss:// to talk TLS, or drop the CA")
        kw["ssl_ca_certs"] = str(creds.ca_file)
    if creds.username is not None:
        kw["username"] = creds.username
    if creds.password is not None:
        kw["password"] = creds.password
    # a couple of quick retries ride over a pooled connection that a Redis restart left dead; longer
    # outages are the callers' loops' business (they back off and log)
    return aioredis.Redis.from_url(
        url, decode_responses=False, socket_connect_timeout=5.0, socket_timeout=SOCKET_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2), health_check_interval=30, **kw)


def login_error(cfg: Config, exc: Exception, environ: Mapping[str, str] | None = None) -> ConfigError:
    creds = read_credentials(environ)
    user = f" as user {creds.username} ({USERNAME_ENV})" if creds.username else ""
    return ConfigError(f"Redis at {shown_url(cfg.queue.url)} refused the login{user}: {exc}. The password: "
                       f"{creds.password_from}; fix the password (or the user) there")


def is_login_error(exc: BaseException) -> bool:
    import redis.exceptions as rex

    if isinstance(exc, rex.AuthenticationError):
        return True
    return isinstance(exc, rex.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))


async def connect(cfg: Config, *, wait: float | None = None, environ: Mapping[str, str] | None = None):
    """A connected `redis.asyncio.Redis` (it answered PING).

    Unreachable: tries again with a growing pause (0.5 s .. 10 s), logging each failure, for
    `wait` seconds (None: until it answers), then RedisUnavailable. A refused login: ConfigError
    at once, naming the URL and where the password came from.
    """
    import redis.exceptions as rex

    r = client(cfg, environ)
    t0 = time.monotonic()
    pause = 0.5
    outage = Outage(log, f"connecting to {shown_url(cfg.queue.url)}")
    while True:
        try:
            await r.ping()
            outage.answered()
            return r
        except Exception as exc:
            if is_login_error(exc):
                await r.aclose()
                raise login_error(cfg, exc, environ) from None
            if not isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError)):
                await r.aclose()
                raise
            if wait is not None and time.monotonic() - t0 + pause > wait:
                await r.aclose()
                raise RedisUnavailable(f"Redis at {shown_url(cfg.queue.url)} does not answer ({exc}): start it, or "
                                       "fix [queue] url") from None
            outage.failed(exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)


async def ensure_group(r, k: RedisKeys) -> None:
    """The stream and its consumer group exist (created on first use, kept if there)."""
    import redis.exceptions as rex

    try:
        # id 0: entries the front added before any worker existed are delivered too
        await r.xgroup_create(k.stream, k.group, id="0", mkstream=True)
    except rex.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def is_nogroup(exc: BaseException) -> bool:
    """The stream or its group is gone (a Redis that lost its data): create them again."""
    import redis.exceptions as rex

    return isinstance(exc, rex.ResponseError) and "NOGROUP" in str(exc)


def is_transient(exc: BaseException) -> bool:
    """Errors a loop waits out: the server is restarting, unreachable, or loading its data."""
    import redis.exceptions as rex

    return isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError)) and not is_login_error(exc)


def text(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
