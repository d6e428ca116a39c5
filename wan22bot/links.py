"""Signed, expiring links to finished videos, for places that cannot send the bearer token.

A Discord message can only hold a plain URL, and a bearer token pasted into it would be readable
by everyone in the channel for ever. So the link carries its own permission instead:

    {http.public_url}/v/{job_id}?exp={unix seconds}&sig={HMAC-SHA256(secret, job_id "\\n" exp), hex}

valid until `exp` (http.link_days after it was made), for that one job's video only. The secret is
derived from the HTTP bearer token when one is set (a new token revokes every link), else it is a
random key kept in `<state>/link-secret` (mode 0600), made at the HTTP source's first start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from .config import Config

SECRET_FILE = "link-secret"
PREFIX = "/v/"
_CONTEXT = b"wan22bot signed video links v1"


def link_secret(cfg: Config) -> bytes:
    token = (os.environ.get(cfg.http.token_env) or "").strip()
    if token:
        return hmac.new(token.encode("utf-8"), _CONTEXT, hashlib.sha256).digest()
    return _state_secret(Path(cfg.paths.state) / SECRET_FILE)


def _state_secret(path: Path) -> bytes:
    for _ in range(2):
        try:
            text = path.read_text(encoding="ascii").strip()
            if len(text) == 64:
                return bytes.fromhex(text)
            raise ValueError(f"{path} does not hold a 64-digit hex key; delete it and a new one is made "
                             "(links made with the old one stop working)")
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two sources starting together agree on one key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


def signature(secret: bytes, job_id: str, exp: int) -> str:
    return hmac.new(secret, f"{job_id}\n{exp}".encode("utf-8"), hashlib.sha256).hexdigest()


def signed_path(secret: bytes, job_id: str, exp: int) -> str:
    return f"{PREFIX}{quote(job_id, safe='')}?exp={exp}&sig={signature(secret, job_id, exp)}"


def video_link(cfg: Config, job_id: str, *, now: float | None = None) -> str | None:
    """The public, signed link to a job's video; None when http.public_url is not set."""
    base = cfg.http.public_url
    if not base:
        return None
    exp = int((time.time() if now is None else now) + cfg.http.link_days * 86400)
    return base.rstrip("/") + signed_path(link_secret(cfg), job_id, exp)


def refusal(secret: bytes, job_id: str, exp_text: str | None, sig: str | None, *,
            now: float | None = None) -> str | None:
    """None when the link is good, else why it is not (one sentence)."""
    if not exp_text or not sig or not exp_text.isdigit():
        return "this video link is incomplete (it needs its exp and sig parts); copy the whole link"
    exp = int(exp_text)
    good = signature(secret, job_id, exp)
    if not hmac.compare_digest(good.encode("ascii"), sig.encode("utf-8", "replace")):
        return ("this video link is not valid: it was changed, or the server's link key changed since it was "
                "made; ask for the video again")
    if (time.time() if now is None else now) > exp:
        when = datetime.fromtimestamp(exp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return f"this video link expired on {when}; ask for the video again"
    return None
