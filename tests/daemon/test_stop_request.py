"""The stop both long-running roles share (lifecycle.StopRequest): asked for once, STOPPING sent to
systemd once, whether a signal asks first or the role unwinds without one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import pytest

from wan22bot.config import config_from_dict
from wan22bot.daemon import Daemon
from wan22bot.lifecycle import StopRequest
from wan22bot.worker_role import WorkerRole


class Notes:
    """Stands in for the Notifier: counts STOPPING=1."""

    def __init__(self):
        self.stopping_sent = 0

    def stopping(self) -> bool:
        self.stopping_sent += 1
        return True


def lines(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.getMessage().startswith("stopping")]


async def test_a_signal_stops_once_and_says_stopping_once(caplog):
    caplog.set_level(logging.INFO)
    notes = Notes()
    stop = StopRequest(notes, logging.getLogger("wan22bot.some_role"), "what happens to the running job")

    stop.request(signal.SIGTERM)
    stop.request(signal.SIGINT)  # a second Ctrl-C while the job checkpoints changes nothing
    stop.send_stopping()  # the unwinding's own call after the signal's

    assert stop.event.is_set()
    assert notes.stopping_sent == 1
    assert lines(caplog, "wan22bot.some_role") == ["stopping (SIGTERM): what happens to the running job"]


async def test_a_request_from_code_is_named_as_such(caplog):
    caplog.set_level(logging.INFO)
    stop = StopRequest(Notes(), logging.getLogger("wan22bot.some_role"), "no new jobs")
    stop.request()
    assert lines(caplog, "wan22bot.some_role") == ["stopping (request): no new jobs"]


async def test_unwinding_without_a_request_says_stopping_but_asks_for_no_stop():
    notes = Notes()
    stop = StopRequest(notes, logging.getLogger("wan22bot.some_role"), "no new jobs")
    stop.send_stopping()  # a start that failed: systemd still hears it
    stop.send_stopping()
    assert notes.stopping_sent == 1 and not stop.event.is_set()
    stop.request(signal.SIGTERM)  # a signal during that unwinding sets the stop, and says nothing twice
    assert stop.event.is_set() and notes.stopping_sent == 1


@pytest.mark.parametrize("role, logger, what", [
    ("daemon", "wan22bot.daemon", "no new jobs; the running job is checkpointed"),
    ("worker", "wan22bot.worker_role", "no new jobs; the running job is checkpointed and handed back"),
])
async def test_both_roles_stop_through_it_with_their_own_words(tmp_path, caplog, monkeypatch, role, logger, what):
    caplog.set_level(logging.INFO)
    cfg = config_from_dict({"paths": {"state": str(tmp_path / "state"), "output": str(tmp_path / "out"),
                                      "input": str(tmp_path / "in")}})
    r = Daemon(cfg) if role == "daemon" else WorkerRole(cfg)
    notes = Notes()
    monkeypatch.setattr(r.notifier, "stopping", notes.stopping)

    r.request_stop(signal.SIGTERM)
    r.request_stop(signal.SIGTERM)

    assert r._stop.is_set() and r._stop is r.stopper.event  # what run() waits on
    assert notes.stopping_sent == 1
    assert lines(caplog, logger) == [f"stopping (SIGTERM): {what}"]


async def test_install_handles_the_signals_and_sends_stopping_last_when_nothing_asked():
    sig_mod = signal
    sent = []

    class Notifier:
        def stopping(self):
            sent.append("STOPPING")

    got = []
    stop = StopRequest(Notifier(), logging.getLogger("t"), "test")
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        stop.install(loop, stack, lambda s: got.append(s))
        os.kill(os.getpid(), sig_mod.SIGTERM)
        await asyncio.sleep(0.05)
        assert got == [sig_mod.SIGTERM] and sent == []  # the role's handler, not yet STOPPING
    assert sent == ["STOPPING"]  # the stack unwound: sent once, last
    assert not loop.remove_signal_handler(sig_mod.SIGTERM)  # the handler is gone with the stack
