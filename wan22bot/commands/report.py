"""Terminal output shared by the commands: the progress line and the timing tables."""

from __future__ import annotations

import sys
import time

from ..engine.generator import Progress

STAGE_LABELS = {
    "text_encode": "Text encode",
    "image_encode": "Image encode",
    "pass1": "Pass 1 (high noise)",
    "pass2": "Pass 2 (low noise)",
    "vae_decode": "VAE decode",
    "interpolate": "Interpolate (RIFE)",
    "yuv": "RGB to YUV",
    "encode": "MP4 encode (overlapped)",
    "tail": "Decode to MP4 (wall)",
    "total": "Total",
    "model_load": "(Model load, not in total)",
}


class ProgressLine:
    """A one-line progress display on a terminal; silent when stderr is not a TTY (logs, systemd)."""

    def __init__(self, enabled: bool | None = None, stream=sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()
        self._last = ""

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        label = STAGE_LABELS.get(p.stage, p.stage)
        if p.steps:
            width = 20
            filled = int(width * p.step / p.steps)
            bar = "#" * filled + "-" * (width - filled)
            text = f"{label:<20} [{bar}] step {p.step}/{p.steps} (overall {p.total_step}/{p.total_steps})"
        else:
            text = f"{label:<20} ..."
        text += f"  {time.perf_counter() - self.t0:6.1f}s"
        self.stream.write("\r" + text.ljust(len(self._last)))
        self.stream.flush()
        self._last = text

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()


def timing_table(timings: dict[str, float], frames: int, fps: int) -> str:
    rows = [(STAGE_LABELS[k], timings.get(k, 0.0)) for k in STAGE_LABELS if k in timings]
    w = max(len(r[0]) for r in rows)
    lines = [f"{'Stage':<{w}}  {'Seconds':>8}", f"{'-' * w}  {'-' * 8}"]
    for label, secs in rows:
        lines.append(f"{label:<{w}}  {secs:8.2f}")
    passes = [timings.get("pass1", 0.0), timings.get("pass2", 0.0)]
    lines.append("")
    lines.append(f"Frames: {frames}   Video: {frames / fps:.2f} s at {fps} fps   "
                 f"Per-pass average: {sum(passes) / 2:.2f} s")
    return "\n".join(lines)
