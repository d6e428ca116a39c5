"""Free loopback ports for the servers the tests start, never the same in two test processes.

A port found by binding port 0 is only handed to its server seconds later (a daemon imports torch
first). With the suite on two processes (`pytest -n 2`), the other process could be handed the same
port in that window and start its own server there. So each test process draws from its own slice
of 12000-31999, below Linux's ephemeral range (32768+, where bind(0) and outgoing connections take
their ports), and never hands out a port twice: two servers can then only meet on a port if
something else on the machine took it, which the bind check here catches.
"""

from __future__ import annotations

import os
import random
import socket

_LOW, _HIGH = 12000, 32000
_given: set[int] = set()


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
