"""`wan22bot worker -c CONFIG`: render jobs from the front's Redis queue (see worker_role.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Config
from ..worker_role import run_worker


def cmd_worker(cfg: Config, args: argparse.Namespace) -> int:
    state = Path(args.state) if args.state is not None else None
    return run_worker(cfg, cfg.source, state=state)
