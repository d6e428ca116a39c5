"""JSON error answers shared by the HTTP source's middlewares and handlers."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class RequestError(Exception):
    """Raised inside a handler to answer with a JSON error."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, *, close: bool = False,
                 **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.close = close  # drop the connection after answering (the rest of the body is not wanted)
        self.extra = extra


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def http_sentence(exc: web.HTTPException, request: web.Request) -> str:
    """One sentence for aiohttp's own errors (no route, wrong method, body too large)."""
    if exc.status == 404:
        return f"there is nothing at {request.path}"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    if exc.status == 413:
        return "the request body is too large"
    return exc.reason or f"HTTP {exc.status}"
