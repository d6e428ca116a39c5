"""Log lines that user input cannot forge.

Job ids come from URLs, file names from strangers' disks and uploads, Discord names from anyone.
Written raw, a newline in one of them starts a fake log line and an ESC sequence rewrites the
terminal. Two layers keep that out:

- `safe(value)` escapes C0 controls (newline, CR, tab, ESC...), DEL, C1 controls and the Unicode
  line/paragraph separators, Python-repr style (`\\n`, `\\x1b`, `\\x85`, `\\u2028`); use it where a
  user value goes into text that is not a log record (an error file, a Discord message is fine raw).
- `install()` makes every log record escape its final message (the format string with its
  arguments filled in), whichever logger or library wrote it and whichever handler prints it; and
  `SafeFormatter` escapes tracebacks too, keeping their line breaks but indenting every line after
  the first, so an exception message cannot start a line of its own either.

Escaping the finished message rather than each argument is deliberate: it also covers values
pasted into f-strings and libraries' own records, at the cost of escaping a deliberate newline in a
message, which wan22bot never writes (multi-line text goes in tracebacks or in files).
"""

from __future__ import annotations

import logging

_ESCAPES: dict[int, str] = {}
for _code in [*range(0x00, 0x20), *range(0x7F, 0xA0)]:
    _ESCAPES[_code] = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}.get(_code, f"\\x{_code:02x}")
_ESCAPES[0x2028] = "\\u2028"
_ESCAPES[0x2029] = "\\u2029"
_KEEP_NEWLINES = {k: v for k, v in _ESCAPES.items() if k != 0x0A}


def safe(value: object) -> str:
    """`str(value)` with every control character escaped, so it stays on one line and inert."""
    return str(value).translate(_ESCAPES)


class SafeLogRecord(logging.LogRecord):
    def getMessage(self) -> str:  # noqa: N802 (logging's name)
        return safe(super().getMessage())


class SafeFormatter(logging.Formatter):
    """Escapes tracebacks and stack dumps as well (the message is escaped by the record)."""

    def formatException(self, ei) -> str:  # noqa: N802
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return _indent(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        if not isinstance(record, SafeLogRecord):  # made before install() or by a foreign factory
            record.msg, record.args = safe(record.getMessage()), None
        # Another handler may have cached its own, unescaped rendering of the traceback.
        cached = record.exc_text
        record.exc_text = _indent(cached) if cached and not record.exc_info else None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached


def _indent(text: str) -> str:
    lines = text.translate(_KEEP_NEWLINES).split("\n")
    return "\n".join([lines[0], *("  " + line for line in lines[1:])])


def install() -> None:
    """Every log record from now on escapes its message (idempotent)."""
    if logging.getLogRecordFactory() is not SafeLogRecord:
        logging.setLogRecordFactory(SafeLogRecord)
