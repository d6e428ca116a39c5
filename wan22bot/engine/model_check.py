"""The model part of `wan22bot check`: each file's kind and weight layout, then one small forward each.

A layout read wrongly shows as non-finite numbers long before a render, so every single-file part
is loaded (one at a time, so peak memory is one part) and run once on a tiny input; the result must
be finite. Parts from a Diffusers folder are only located, not loaded.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import ModelError
from .model_files import MODEL_PARTS, WHAT, resolve_model_files


@dataclass
class ModelReport:
    ok: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _finite(t: torch.Tensor) -> bool:
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)  # NaN propagates, inf shows; no temporary of t's size
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


@torch.no_grad()
def forward_is_finite(part: str, path: Path, dtype: torch.dtype) -> str | None:
    """Load `part` from `path`, run it once on a tiny input; None when finite, else what went wrong."""
    from .single_files import load_expert, load_text_encoder, load_vae

    g = torch.Generator("cpu").manual_seed(0)
    if part in ("high_noise", "low_noise"):
        model = load_expert(path, dtype).module
        cfg = model.config
        x = torch.randn(1, cfg.in_channels, 1, 4, 4, generator=g).to(dtype)
        text = torch.randn(1, 8, cfg.text_dim, generator=g).to(dtype)
        out = model(hidden_states=x, timestep=torch.tensor([999.0]), encoder_hidden_states=text, return_dict=False)[0]
    elif part == "text_encoder":
        loaded, tok = load_text_encoder(path, dtype)
        model = loaded.module
        ids = torch.tensor([[5, 6, 7, 1]]) if tok is None else tok("a photo", max_length=8).input_ids
        out = model(ids.clamp(max=model.config.vocab_size - 1), torch.ones_like(ids)).last_hidden_state
    elif part == "vae":
        model = load_vae(path).module
        z = torch.randn(1, model.config.z_dim, 1, 2, 2, generator=g)
        out = model.decode(z, return_dict=False)[0]
    else:
        raise ValueError(part)
    finite = _finite(out)
    # torch's CPU flash attention turns a NaN query into finite output, so the output alone can
    # miss broken weights: every tensor must be finite too.
    bad = next((name for name, t in model.state_dict().items() if t.is_floating_point() and not _finite(t)), None)
    del model, out
    gc.collect()
    if bad is not None:
        return f"its weights hold NaN/inf (e.g. {bad}): the file is damaged or its layout is not read correctly"
    return None if finite else "its test forward gives NaN/inf: the weights are not read correctly"


def check_model(cfg: ModelConfig, forward: bool = True, dtype: torch.dtype = torch.bfloat16) -> ModelReport:
    from .components import check_model_files
    from .single_files import inspect_file

    rep = ModelReport()
    if cfg.kind == "tiny":
        return rep
    rep.errors.extend(check_model_files(cfg))
    files = resolve_model_files(cfg)
    readable: dict[str, Path] = {}
    for part in MODEL_PARTS:
        p = files.get(part)
        if p is None:
            if files.origin.get(part) == "model.path":
                rep.ok.append(f"{part}: from the Diffusers folder {Path(cfg.path) / _folder(part)}")
            continue
        if not Path(p).is_file():
            continue  # already reported
        try:
            rep.ok.append(f"{part}: {p}: {inspect_file(p, part)}")
            readable[part] = Path(p)
        except ModelError as exc:
            rep.errors.append(f"{part}: {exc}")
    # each LoRA's own line (key counts) comes from lora_check
    if files.get("lora_high") is None or files.get("lora_low") is None:
        rep.warnings.append("no LoRA for one or both experts: the 'fast' preset expects the LightX2V 4-step LoRAs "
                            "(loras/ in the comfyui folder, or model.lora_high / model.lora_low)")
    if forward and not rep.errors:
        for part, p in readable.items():
            try:
                problem = forward_is_finite(part, p, dtype)
            except ModelError as exc:
                problem = str(exc)
            except (RuntimeError, ValueError) as exc:
                problem = f"its test forward failed ({exc})"
            if problem:
                rep.errors.append(f"{part}: {p}: {problem}")
            else:
                rep.ok.append(f"{part}: loaded and one test forward is finite")
    return rep


def _folder(part: str) -> str:
    return {"high_noise": "transformer", "low_noise": "transformer_2", "text_encoder": "text_encoder",
            "vae": "vae"}[part]


__all__ = ["ModelReport", "check_model", "forward_is_finite", "WHAT"]
