"""Where torch.compile keeps what it generated, so a daemon restart does not compile again.

Inductor's FX-graph and AOTAutograd caches, and Triton's kernel cache, default to a folder under
/tmp, which systemd's PrivateTmp empties at every restart. Pointing them at the state folder keeps
the generated kernels (and their autotuning) across restarts; only Dynamo's tracing (seconds) is
paid again. A user who set TORCHINDUCTOR_CACHE_DIR or TRITON_CACHE_DIR keeps theirs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def use_compile_cache(path: Path) -> Path:
    """Send the compile caches to `path` (created if missing) unless the environment already
    names a place; returns the folder in use. Call before the first compiled call."""
    path = Path(path)
    chosen = Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path)))
    os.environ.setdefault("TRITON_CACHE_DIR", str(chosen / "triton"))
    chosen.mkdir(parents=True, exist_ok=True)
    try:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError) as exc:  # an older torch: the Triton cache alone still helps
        log.debug("compile caches not configurable here: %s", exc)
    return chosen
