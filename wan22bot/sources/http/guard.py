"""Which requests reach the API at all, before the token is looked at:

- the Host header must name this server (a DNS-rebinding page sends its own name), on every request;
- a state-changing request (POST, PUT, DELETE, PATCH) must come from this server's own page or from
  a client that is not a browser (CSRF: any page can make a browser POST a form here);
- a request that came through a proxy (forwarding headers) is not "from this machine", so the
  loopback exemption from the token does not cover it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from ...config import Config
from ...logsafe import safe
from .auth import is_loopback
from .errors import RequestError

STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(value: str) -> tuple[str, int | None] | None:
    """'Name:port', '[v6]:port' or a bare name as (lowercase name, port or None); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    elif ":" in value:  # an IPv6 address without brackets is not a valid Host
        return None
    else:
        name, port_text = value, None
    name = name.rstrip(".")
    if not name:
        return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _is_wildcard(name: str) -> bool:
    return name in ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class HostPolicy:
    names: frozenset[str]  # host names this server answers to on its own port
    port: int  # the bound port
    ip_literals: bool  # bound to every address: any IP literal is ours (and cannot be a rebinding name)
    public: tuple[str, str, int] | None  # public_url's (scheme, host, port)

    @classmethod
    def build(cls, cfg: Config, port: int) -> HostPolicy:
        bound = cfg.http.host.strip().strip("[]").lower()
        names = set(cfg.http.allowed_hosts)
        if is_loopback(bound) or _is_wildcard(bound):
            names |= LOOPBACK_NAMES
        if not _is_wildcard(bound):
            names.add(bound)
        public = None
        if cfg.http.public_url:
            u = urlsplit(cfg.http.public_url)
            if u.hostname:
                public = (u.scheme.lower(), u.hostname.lower(), u.port or DEFAULT_PORTS.get(u.scheme.lower(), 80))
        return cls(frozenset(n.lower().strip("[]") for n in names), port, _is_wildcard(bound), public)

    def host_ok(self, host: tuple[str, int | None]) -> bool:
        name, port = host
        if self.public is not None and name == self.public[1] and port in (None, self.public[2]):
            return True
        if port not in (None, self.port):
            return False
        return name in self.names or (self.ip_literals and _is_ip(name))

    def example(self) -> str:
        if self.public is not None:
            scheme, name, port = self.public
            shown = name if port == DEFAULT_PORTS.get(scheme) else f"{name}:{port}"
            return f"{scheme}://{shown}"
        name = "127.0.0.1" if "127.0.0.1" in self.names else sorted(self.names)[0]
        return f"http://{name}:{self.port}"

    def origin_ok(self, origin: str, host: tuple[str, int | None]) -> bool:
        """Same origin as the request's own (already checked) Host, or public_url's origin."""
        u = urlsplit(origin.strip())
        scheme = u.scheme.lower()
        try:
            name, port = (u.hostname or "").lower(), u.port
        except ValueError:
            return False
        if scheme not in DEFAULT_PORTS or not name or u.path not in ("", "/"):
            return False
        port = port or DEFAULT_PORTS[scheme]
        if self.public is not None and (scheme, name, port) == self.public:
            return True
        host_name, host_port = host
        return name == host_name and port == (host_port or DEFAULT_PORTS[scheme])


def forwarded_by(request: web.Request) -> str | None:
    """The first forwarding header the request carries, or None."""
    for h in FORWARDING_HEADERS:
        if h in request.headers:
            return h
    return None


def guard_middleware(get_policy: Callable[[], HostPolicy], get_token: Callable[[], str | None],
                     is_public: Callable[[str], bool]):
    @web.middleware
    async def _guard_mw(request: web.Request, handler) -> web.StreamResponse:
        policy = get_policy()
        raw_host = request.headers.get("Host", "")
        host = split_host(raw_host)
        if host is None or not policy.host_ok(host):
            raise RequestError(
                421, f"this server does not answer to the host name {safe(raw_host)!r}: open it as "
                     f"{policy.example()}, or add the name to http.allowed_hosts in the config")
        if get_token() is None and not is_public(request.path):
            via = forwarded_by(request)
            if via is not None:
                raise RequestError(
                    403, f"this request came through a proxy (it has a {via} header), and through a proxy the "
                         "API needs a bearer token: set one in the environment variable named by "
                         "http.token_env and send it as 'Authorization: Bearer <token>'")
        if request.method in STATE_CHANGING:
            origin = request.headers.get("Origin")
            if origin is not None:
                if not policy.origin_ok(origin, host):
                    raise RequestError(
                        403, f"cross-origin {request.method} refused: a page from {safe(origin)!r} cannot change "
                             f"jobs here; use the status page at {policy.example()}/ or a client that is not "
                             "a browser")
            elif request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
                raise RequestError(
                    403, f"cross-site {request.method} refused: another site's page cannot change jobs here; "
                         f"use the status page at {policy.example()}/ or a client that is not a browser")
        return await handler(request)

    return _guard_mw
