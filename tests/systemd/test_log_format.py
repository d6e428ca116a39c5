"""Log format: journald adds its own timestamps, so under systemd the daemon's lines carry none."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

SCRIPT = (
    "import logging; from wan22bot.cli import setup_logging; setup_logging(False); "
    "logging.getLogger('wan22bot.worker').info('job %s: started', 'abc123def456')"
)
STAMP = re.compile(r"^\d{1,2}:\d{2}:\d{2} ")


def _log_line(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
    env.update(extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("env", [{"INVOCATION_ID": "5f0e3b1c2a2d4e6f"}, {"JOURNAL_STREAM": "8:12345"}])
def test_under_systemd_no_timestamp(env):
    assert _log_line(**env) == "INFO wan22bot.worker: job abc123def456: started"


def test_on_a_terminal_lines_are_timestamped():
    line = _log_line()
    assert STAMP.match(line), line
    assert line.endswith("INFO wan22bot.worker: job abc123def456: started")
