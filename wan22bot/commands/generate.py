"""`wan22bot generate IMAGE`: one video, no daemon."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from ..config import Config, check_model_frames
from ..errors import ConfigError
from ..jobs import JobOptions
from ..render import Renderer
from ..validation import first_problem
from .report import ProgressLine, timing_table


def cmd_generate(cfg: Config, args: argparse.Namespace) -> int:
    try:
        options = JobOptions(prompt=args.prompt, frames=args.frames, seed=args.seed,
                             interpolate=args.interpolate, preset=args.preset, steps=args.steps)
    except ValidationError as exc:
        problem = first_problem(exc)
        raise ConfigError(f"--{problem.key.replace('_', '-')}: {problem.message}") from None
    try:  # before the model loads: the tiny model would fail deep inside the transformer instead
        check_model_frames(options.frames or cfg.generation.frames, cfg.model.kind)
    except ValueError as exc:
        raise ConfigError(f"--frames: {exc}") from None
    image = Path(args.image)
    if args.output is not None:
        out = Path(args.output)
        if out.suffix.lower() != ".mp4":
            out = out.with_suffix(out.suffix + ".mp4") if out.suffix else out.with_suffix(".mp4")
        out_dir, name = out.parent, out.stem
    else:
        out_dir, name = cfg.paths.output, image.stem
    renderer = Renderer(cfg)
    bar = ProgressLine(enabled=False if args.quiet else None)
    try:
        result = renderer.render(image, name, out_dir, options, progress=bar,
                                 meta={"source": "cli"})
    finally:
        bar.close()
    print(timing_table(result.timings, result.frames, result.fps))
    print(f"\nWrote {result.output} ({result.bytes / 2**20:.2f} MiB, {result.width}x{result.height}, "
          f"seed {result.seed}) and {result.sidecar}")
    return 0
