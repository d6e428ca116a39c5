"""Free loopback ports for the servers the tests start, never the same in two test processes.

A port found by binding port 0 is only handed to its server seconds later (a daemon imports torch
first). With the suite on two processes (`pytest -n 2`), the other process could be handed the same
port in that window and start its own server there. So each test process draws from its own slice
of 12000-31999, below Linux's ephemeral range (32768+ by default, where bind(0) and outgoing
connections take their ports; on a host with another range, beside that range), and never hands
out a port twice: two servers can then only meet on a port if something else on the machine took
it, which the bind check here catches.
"""

from __future__ import annotations

import os
import random
import socket

_given: set[int] = set()


def _range(ephemeral: tuple[int, int] | None = None) -> tuple[int, int]:
    """12000-31999 or, where the host's ephemeral range (ip_local_port_range) reaches into it, the
    ports on whichever side of that range has more room (12000-31999 again if neither has 2000)."""
    if ephemeral is None:
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
                lo, hi = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            return 12000, 32000
    else:
        lo, hi = ephemeral
    if lo >= 32000 or hi < 12000:
        return 12000, 32000
    below, above = (max(1024, min(12000, lo - 8000)), lo), (hi + 1, 65536)
    best = max(below, above, key=lambda r: r[1] - r[0])
    return best if best[1] - best[0] >= 2000 else (12000, 32000)


_LOW, _HIGH = _range()


def _slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under pytest-xdist
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    k = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    span = (_HIGH - _LOW) // max(count, 1)
    return _LOW + k * span, _LOW + (k + 1) * span


def free_port() -> int:
    lo, hi = _slice()
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(lo, hi)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free loopback port found in {lo}-{hi - 1}")
