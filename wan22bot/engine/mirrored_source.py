"""Fingerprints of the diffusers code that our own loops mirror line for line.

engine/vae_encode.py and engine/vae_fast_decode.py re-implement parts of diffusers' Wan VAE. Each
pins the sha256 of the functions it mirrors; another diffusers release that changes any of them
gets diffusers' own code until the mirror is checked against it.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable


def source_digest(functions: Iterable[Callable], prefix: str = "") -> str:
    """sha256 of `prefix` followed by the source text of each function, in order."""
    h = hashlib.sha256()
    if prefix:
        h.update(prefix.encode())
    for fn in functions:
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()


def digest_or_empty(compute: Callable[[], str]) -> str:
    """`compute()`, or "" when the installed package ships no source to read (so nothing matches)."""
    try:
        return compute()
    except (OSError, TypeError):
        return ""
