"""Pydantic validation errors turned into what a person reads: the key, the value given, the rule.

Every place that validates user input (the config file, HTTP form fields, Discord options, the
options file beside a watched photo, `generate`'s flags) reads pydantic's errors through here, so
the key is spelled, the value shortened and the message cleaned the same way everywhere; each
caller only frames the sentence for its own audience.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input."""

    key: str  # dotted location, e.g. "generation.frames" ("" when the whole object is wrong)
    kind: str  # pydantic's error type, e.g. "int_parsing", "extra_forbidden"
    message: str  # pydantic's message without its "Value error, " prefix
    given: Any  # the offending value as pydantic saw it
    ctx: dict[str, Any] = field(default_factory=dict)

    @property
    def unknown_key(self) -> bool:
        return self.kind == "extra_forbidden"

    def explain(self, name: str | None = None, shown: str | None = None) -> str:
        """A phrase naming `name` (default: the key) and the rule it breaks, with `shown` (default:
        the given value, shortened) where that helps."""
        name = name or self.key or "the value"
        shown = show(self.given) if shown is None else shown
        got = f", got {shown}" if shown else ""
        kind, ctx = self.kind, self.ctx
        if kind in ("int_parsing", "int_type", "int_from_float"):
            return f"{name} must be a whole number{got}"
        if kind in ("bool_parsing", "bool_type"):
            return f"{name} must be true or false{got}"
        if kind in ("float_parsing", "float_type"):
            return f"{name} must be a number{got}"
        if kind == "literal_error":
            allowed = ", ".join(v.strip() for v in str(ctx.get("expected", "")).replace("'", "").split(" or "))
            return f"{name} must be one of {allowed}{got}"
        if kind in ("greater_than_equal", "greater_than"):
            return f"{name} must be at least {ctx.get('ge', ctx.get('gt'))}{got}"
        if kind in ("less_than_equal", "less_than"):
            return f"{name} must be at most {ctx.get('le', ctx.get('lt'))}{got}"
        if kind == "string_too_long":
            return f"{name} is too long: at most {ctx.get('max_length')} characters"
        if self.message.startswith(name):
            return self.message
        return f"{name} {shown}: {self.message}" if shown else f"{name}: {self.message}"


def problems(exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors():
        out.append(Problem(
            key=".".join(str(p) for p in err.get("loc", ())),
            kind=err.get("type", ""),
            message=str(err.get("msg", "invalid value")).removeprefix("Value error, "),
            given=err.get("input"),
            ctx=dict(err.get("ctx") or {}),
        ))
    return out


def first_problem(exc: ValidationError) -> Problem:
    found = problems(exc)
    return found[0] if found else Problem("", "", str(exc), None)


def show(value: Any, limit: int = 80) -> str:
    """A value as it appears in a message: repr, a table as "(table)", cut to `limit` characters."""
    text = "(table)" if isinstance(value, dict) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
