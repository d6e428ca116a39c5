"""Fixtures every test folder may use, and one thread per process for PyTorch.

The tests run the tiny model on tensors of a few kilobytes, where a second compute thread buys
nothing and costs a great deal when the cores are shared (the pytest process and a daemon
subprocess, or a busy CI box): a 64x96 render measured 0.2-0.7 s with one thread against 1.7-9 s
with two on a loaded two-core machine. Daemon and CLI subprocesses inherit the setting through
OMP_NUM_THREADS. Results do not depend on it (every comparison is within one process or between
processes with the same setting); set OMP_NUM_THREADS yourself to override it.
"""

from __future__ import annotations

import os
import subprocess

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# Triton kernels (engine/qk_prep.py) run under Triton's interpreter where no GPU is usable; the
# setting is read when a kernel is defined, so before anything imports them (torch does not).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_generator():
    """The built-in tiny model (random weights, seed 0) on the CPU, built and loaded once for the
    whole run: building it is most of what a short render costs, and the tests that render (core,
    watch, Discord, HTTP) only need a loaded one."""
    from wan22bot.config import ModelConfig
    from wan22bot.engine.generator import TwoPassGenerator

    gen = TwoPassGenerator(ModelConfig(kind="tiny", device="cpu"))
    gen.load()
    return gen


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs: a real ENOSPC, not a simulated one."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free loopback port (tests/redis_server.py); stopped afterwards."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def make_redis_server(tmp_path):
    """Start more servers, or ones with options (password=..., appendonly=...); all stopped afterwards."""
    from tests.redis_server import RedisServer

    started: list[RedisServer] = []

    def make(**kw) -> RedisServer:
        server = RedisServer(tmp_path, **kw)
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.kill()
