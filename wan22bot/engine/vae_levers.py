"""Speed levers for the Wan VAE, each off by default until measured on a GPU
(`[model] vae_channels_last`, `vae_cudnn_benchmark`, `vae_compile`, `vae_fast_decode`;
`python -m wan22bot.bench.tail` times each against the stock decode and reports its PSNR against an
fp32 decode).

- channels-last: the 3-D convolutions' weights in NDHWC (`channels_last_3d`), the 2-D ones (the
  resamplers) in NHWC; cuDNN then picks its channels-last kernels and the activations follow.
- cuDNN autotuning: `torch.backends.cudnn.benchmark` on while the VAE runs only. It is a
  process-wide switch, and the experts, RIFE and the colour conversion should not pay for
  autotuning their own shapes because the VAE wanted it.
- compile: `torch.compile` of the decoder module. Its cache list changes from None to one frame to
  two frames over the first three latent frames, so the first decode compiles three variants.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def to_channels_last(vae: torch.nn.Module) -> int:
    """Put every convolution weight of `vae` in channels-last order; returns how many were moved.

    `module.to(memory_format=torch.channels_last_3d)` refuses a module that also holds 4-D and
    1-D tensors (the resamplers' Conv2d, the norms), so each weight gets the format of its rank.
    """
    n = 0
    with torch.no_grad():
        for mod in vae.modules():
            if isinstance(mod, torch.nn.Conv3d):
                fmt = torch.channels_last_3d
            elif isinstance(mod, torch.nn.Conv2d):
                fmt = torch.channels_last
            else:
                continue
            mod.weight.data = mod.weight.data.contiguous(memory_format=fmt)
            n += 1
    return n


@contextmanager
def cudnn_benchmark(enabled: bool):
    """cuDNN autotuning on inside the block when `enabled`; the previous setting comes back after."""
    if not enabled:
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def compile_decoder(vae: torch.nn.Module, backend: str = "inductor") -> None:
    """torch.compile the decoder in place (the VAE's decode loop calls it once per latent frame)."""
    from torch import _dynamo

    # 3 variants per latent length (empty cache, one-frame cache, two-frame cache), a few lengths
    _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
    vae.decoder.compile(backend=backend)


def apply_vae_levers(vae: torch.nn.Module, channels_last: bool = False, compile: bool = False,
                     fast_decode: bool = False) -> list[str]:
    """Apply the load-time levers to `vae`; returns the names of those applied (for the log).

    The fast decode (engine/vae_fast_decode.py) goes last: it reads the weights' layout at each
    call, and it declines a compiled decoder (its entry then says why it was not applied).
    """
    done = []
    if channels_last:
        to_channels_last(vae)
        done.append("channels-last")
    if compile:
        compile_decoder(vae)
        done.append("compiled decoder")
    if fast_decode:
        from .vae_fast_decode import install_fast_decode

        done.append(install_fast_decode(vae).describe())
    return done
