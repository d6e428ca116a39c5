"""Choosing the attention kernel per expert.

Diffusers routes Wan's attention through `dispatch_attention_fn`; `set_attention_backend` picks one
of its registered kernels, and the PyTorch SDPA names map straight onto those. SageAttention 2 and
FlashAttention-3 go in through our own processor (`custom_attention.install_core`) instead:
diffusers' backend names are a closed enum, its FA3 entry expects the `flash_attn_interface` module
(the forward-only FA3 build installs `fa3_fwd_interface`), and both kernels must reach a
`fullgraph=True` compile as one opaque op, which `opaque_core` guarantees.

`auto` picks by a one-call self-check at load time, in this order: SageAttention 2.x (int8 QK,
fp8 PV; the fastest kernel inside the accuracy guard on Hopper and RTX 50xx), FlashAttention-3 bf16
(Hopper), then PyTorch SDPA (which picks cuDNN on Hopper). A candidate that is not installed, raises
or misses the self-check's error bound is skipped with the reason logged. On Hopper, Sage 2 is tried
first as `sage-fused` (its kernel fed by our own quantisation, which torch.compile fuses into the
blocks; only when the blocks are compiled), then `sage-warp`, then `sage`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ModelError

log = logging.getLogger(__name__)

DIFFUSERS_NAMES = {
    "sdpa": "native",
    "cudnn": "_native_cudnn",
    "flash": "_native_flash",
    "efficient": "_native_efficient",
    "math": "_native_math",
}
# What one attention call may differ from an fp32 reference before a kernel is judged broken.
# Measured on random data at Wan's head size: SageAttention 2 0.039, FA3 bf16 0.004, FA3 fp8 0.054,
# cuDNN fp8 0.060. The model-level accuracy guard (0.05 through all 40 blocks) is checked by the
# benchmark (`python -m wan22bot.bench.levers`), not here.
SELF_CHECK_MAX_ERROR = 0.1
AUTO_ORDER = ("sage-fused", "sage-warp", "sage", "fa3")
SAGE_VARIANTS = ("sage-fused", "sage-warp")  # sm90 choices of the sage kernel
Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttentionChoice:
    requested: str
    backend: str
    self_check_error: float | None = None  # one call vs an fp32 reference, where a check ran
    skipped: tuple[str, ...] = ()  # why `auto` passed over each faster candidate

    def describe(self) -> str:
        err = "" if self.self_check_error is None else f", self-check error {self.self_check_error:.4f}"
        via = " (auto)" if self.requested == "auto" else ""
        return f"{self.backend}{via}{err}"


def sage_version() -> str | None:
    if importlib.util.find_spec("sageattention") is None:
        return None
    try:
        from importlib.metadata import version

        return version("sageattention")
    except Exception:
        return "unknown"


def _major(version: str | None) -> int:
    try:
        return int((version or "0").split(".")[0])
    except ValueError:
        return 0


def sage_major() -> int:
    """1 or 2 (0 when absent). A source build run in place has no version metadata: 2.x is the one
    with CUDA kernels (`sageattn_qk_int8_pv_fp16_cuda`), 1.x is Triton only."""
    v = sage_version()
    if v is None:
        return 0
    if _major(v):
        return _major(v)
    try:
        import sageattention  # type: ignore[import-not-found]
    except Exception:
        return 0
    return 2 if hasattr(sageattention, "sageattn_qk_int8_pv_fp16_cuda") else 1


def fa3_installed() -> bool:
    return importlib.util.find_spec("fa3_fwd_interface") is not None


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run on `device`, or None when it can."""
    cuda = device.type == "cuda"
    if name in ("auto", "sdpa", "math"):
        return None
    if name in ("cudnn", "flash", "efficient"):
        return None if cuda else "needs a CUDA device"
    if name in ("sage", "sage-warp", "sage-fused"):
        sv = sage_version()
        if sv is None:
            return "sageattention is not installed (build SageAttention 2 from its source: see README)"
        if name != "sage" and sage_major() < 2:
            return f"sageattention {sv} is 1.x; {name} needs the 2.x CUDA kernels"
        if not cuda:
            return "needs a CUDA device"
        if name == "sage-fused" and _capability(device) != (9, 0):
            return "it feeds SageAttention 2's Hopper (sm90) kernel; use sage on this GPU"
        return None
    if name in ("fa3", "fa3-fp8"):
        if not fa3_installed():
            return "FlashAttention-3 is not installed (pip install 'wan22bot[hopper]')"
        if _capability(device) != (9, 0):
            return "FlashAttention-3 runs on Hopper GPUs (H100/H200) only"
        return None
    if name == "fp8":
        from . import fp8_attention

        msg = fp8_attention.availability(device)
        return None if msg.startswith("ok") else msg
    return f"unknown attention backend '{name}'"


def available_backends(device: torch.device) -> dict[str, str]:
    """Backend name -> why it is (or is not) usable here. Used by `wan22bot check`."""
    out = {}
    for name in ("auto", "sdpa", "math", "cudnn", "flash", "efficient", "sage", "sage-warp", "sage-fused", "fa3",
                 "fa3-fp8", "fp8"):
        why = unavailable_reason(name, device)
        if why is None and name == "sage":
            v = sage_version()
            why_ok = f"ok (sageattention {v}" + (")" if sage_major() >= 2 else "; 1.x is slower than cuDNN on Hopper)")
            out[name] = why_ok
        else:
            out[name] = "ok" if why is None else why
    return out


def core_for(name: str) -> Core:
    """The self-attention core kernel for a processor-installed backend, as an opaque op."""
    from .custom_attention import opaque_core

    if name == "sage":
        from .sage_attention import sage_core

        return opaque_core("sage_sdpa", sage_core)
    if name == "sage-warp":
        from .sage_attention import sage_warp_core

        return opaque_core("sage_warp_sdpa", sage_warp_core)
    if name == "sage-fused":
        # not opaque on purpose: its quantisation is torch code for the compiler to fuse; the
        # kernel call inside is a custom op of its own
        from .sage_prequant import sage_fused_core

        return sage_fused_core
    if name == "fa3":
        from .fa3_attention import fa3_core

        return opaque_core("fa3_sdpa", fa3_core)
    if name == "fa3-fp8":
        from .fa3_attention import fa3_fp8_core

        return opaque_core("fa3_fp8_sdpa", fa3_fp8_core)
    if name == "fp8":
        from .fp8_attention import fp8_sdpa

        return opaque_core("fp8_sdpa", fp8_sdpa)
    raise ModelError(f"attention backend '{name}' has no processor core")


@torch.no_grad()
def self_check(core: Core, device: torch.device, tokens: int = 4096, heads: int = 40, dim: int = 128,
               seed: int = 0) -> float:
    """Relative error of one `core` call against fp32 attention on fresh random (B, S, H, D) inputs."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(1, tokens, heads, dim, generator=g, device=device, dtype=torch.bfloat16) for _ in range(3))
    ref = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    out = core(q, k, v).float()
    if out.shape != ref.shape:
        raise ModelError(f"the kernel returned shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm())


def _set_diffusers_backend(model: torch.nn.Module, backend: str) -> None:
    """Pin `backend` on this model's processors only.

    diffusers' `set_attention_backend` also makes its backend the process-wide default, which every
    processor without a backend of its own then follows: one expert's `cudnn` would leak into the
    other expert (and any later model). Each model's processors are pinned explicitly, and the
    process-wide default is put back to native SDPA.
    """
    if not hasattr(model, "set_attention_backend"):
        return
    model.set_attention_backend(backend)
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)


def _install(model: torch.nn.Module, name: str) -> None:
    from .custom_attention import install_core

    install_core(model, core_for(name))


def auto_candidate_reason(name: str, device: torch.device) -> str | None:
    """Why `auto` must pass over `name` before even trying it (None: try it)."""
    why = unavailable_reason(name, device)
    if why is None and name == "sage-warp" and _capability(device) != (9, 0):
        # per-warp Q/K quantisation is a choice of the sm90 kernel; elsewhere it would be plain sage
        why = "its per-warp kernel is the Hopper (sm90) one; sage covers this GPU"
    if why is None and name == "sage" and sage_major() < 2:
        why = f"sageattention {sage_version()} is 1.x (slower than cuDNN on Hopper; auto wants 2.x)"
    return why


def choose_auto(device: torch.device, checker=self_check, reason=auto_candidate_reason,
                compiled: bool = True) -> AttentionChoice:
    """Sage 2.x (on Hopper first fed by our fused quantisation when compiled, then its per-warp
    sm90 kernel), then FA3 bf16, then SDPA: the first candidate installed here that passes a
    self-check."""
    if device.type != "cuda":
        return AttentionChoice("auto", "sdpa")
    skipped = []
    for name in AUTO_ORDER:
        if name == "sage-fused" and not compiled:
            continue  # its quantisation is torch code that pays off only inside compiled blocks
        why = reason(name, device)
        if why is not None:
            if name not in SAGE_VARIANTS:  # a variant of sage: sage's own line says why all are out
                skipped.append(f"{name}: {why}")
            continue
        try:
            err = checker(core_for(name), device)
        except Exception as exc:  # a broken build raises here, not in the middle of a job
            skipped.append(f"{name}: self-check raised {type(exc).__name__}: {exc}")
            continue
        if not err <= SELF_CHECK_MAX_ERROR:
            skipped.append(f"{name}: self-check error {err:.4f} > {SELF_CHECK_MAX_ERROR}")
            continue
        return AttentionChoice("auto", name, err, tuple(skipped))
    return AttentionChoice("auto", "sdpa", None, tuple(skipped))


def apply_attention_backend(model: torch.nn.Module, name: str, device: torch.device,
                            choice: AttentionChoice | None = None, compiled: bool = True) -> AttentionChoice:
    """Set `name` on one expert; returns what is used. Raises ModelError if unusable.

    Pass `choice` to reuse an `auto` decision already made for the other expert (one self-check
    per process is enough: both experts run the same kernels). `compiled` says whether the blocks
    will be compiled (`auto` then may pick `sage-fused`).
    """
    if name == "auto":
        choice = (choice if choice is not None and choice.requested == "auto"
                  else choose_auto(device, compiled=compiled))
        for line in choice.skipped:
            log.info("attention auto: skipped %s", line)
        if choice.backend != "sdpa":
            _install(model, choice.backend)
        else:
            _set_diffusers_backend(model, DIFFUSERS_NAMES["sdpa"])
        return choice
    why = unavailable_reason(name, device)
    if why is not None:
        raise ModelError(f"attention backend '{name}' cannot run here: {why}; use 'auto' or 'sdpa'")
    if name in DIFFUSERS_NAMES:
        _set_diffusers_backend(model, DIFFUSERS_NAMES[name])
        return AttentionChoice(name, name)
    if name == "fp8":
        from . import fp8_attention

        fp8_attention.install(model, device)  # probes the cuDNN graph once before the first job
        return AttentionChoice(name, name)
    _install(model, name)
    return AttentionChoice(name, name)
