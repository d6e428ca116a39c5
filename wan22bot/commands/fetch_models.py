"""`wan22bot fetch-models`: download the seed's six files into a ComfyUI-style models/ folder."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..config import Config

DEFAULT_DEST = Path("models")


def default_dest(cfg: Config) -> Path:
    """The config's `[model] comfyui` folder when it names one (fill it in), else ./models."""
    return cfg.model.comfyui or DEFAULT_DEST


def config_block(dest: Path) -> str:
    # a JSON string is a valid TOML basic string, escapes included
    return f'[model]\nkind = "wan2.2-i2v-a14b"\ncomfyui = {json.dumps(str(dest), ensure_ascii=False)}\n'


def cmd_fetch_models(cfg: Config, args: argparse.Namespace) -> int:
    from ..fetch.download import fetch_seed_files

    if not args.verbose:
        # one line per request would bury the progress lines
        for name in ("httpx2", "httpx"):  # huggingface_hub 2.x / 1.x
            logging.getLogger(name).setLevel(logging.WARNING)
    dest = Path(args.dest) if args.dest else default_dest(cfg)
    try:
        result = fetch_seed_files(dest)
    except KeyboardInterrupt:
        print("wan22bot: interrupted; what was downloaded is kept: run fetch-models again to continue",
              file=sys.stderr)
        return 130
    print(f"All six files are in {result.dest} ({len(result.downloaded)} downloaded, "
          f"{len(result.skipped)} already there). Use them with:", file=sys.stderr)
    sys.stderr.flush()
    print(config_block(result.dest), end="")
    return 0
