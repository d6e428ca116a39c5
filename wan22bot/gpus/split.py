"""One job over several devices: sequence-parallel (Ulysses) attention in both experts.

Every rank holds both experts. Rank 0 runs the whole render (text encoder, image encode, the two
passes, VAE decode, encoder); before each expert call it broadcasts the call's inputs, and the
other ranks run the same call. Inside the call each rank keeps 1/N of the video tokens from the
first block to the output projection: rotary tables and hidden states are split along the
sequence, self-attention trades sequence for heads with an all-to-all (each rank then attends over
all tokens for H/N heads), and the output projection's result is gathered so each rank returns the
full prediction. Cross-attention needs no exchange: the text is whole on every rank.

Why this is the default rather than diffusers' own `enable_parallelism(ContextParallelConfig(
ulysses_degree=N))` (which `use_diffusers_context_parallel` below offers on CUDA): in diffusers
0.42.1 that cannot run without an accelerator (ModelMixin._resolve_parallel_config computes
`rank % torch.accelerator.device_count()`, `integer modulo by zero` on a CPU-only torch), so the
CPU/gloo tests could not check it; and it only covers diffusers' own attention backends, not the
processor with a pluggable core (engine/custom_attention.py) that SageAttention and FA3 come in
through. The layout here is the same as its Wan plan (split at `rope` and at `blocks.0`, gather at
`proj_out`); the exchange wraps whatever core the expert already uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist

from ..engine.custom_attention import CoreAttnProcessor, Core, sdpa_core
from ..errors import ModelError

log = logging.getLogger(__name__)

# header: [command, x dims (5), text dims (3), timestep numel, dtype code]; command 0 = leave
STOP, HIGH, LOW = 0, 1, 2
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _seq_to_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, S/n, H, D) sequence-sharded -> (B, S, H/n, D) head-sharded."""
    b, s, h, d = x.shape
    send = x.reshape(b, s, n, h // n, d).permute(2, 0, 1, 3, 4).contiguous()  # [head group j] -> rank j
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send)  # recv[j]: rank j's tokens, my heads
    return recv.permute(1, 0, 2, 3, 4).reshape(b, n * s, h // n, d)


def _heads_to_seq(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, S, H/n, D) head-sharded -> (B, S/n, H, D) sequence-sharded."""
    b, s, hn, d = x.shape
    send = x.reshape(b, n, s // n, hn, d).permute(1, 0, 2, 3, 4).contiguous()  # [token chunk j] -> rank j
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send)  # recv[j]: my tokens, rank j's heads
    return recv.permute(1, 2, 0, 3, 4).reshape(b, s // n, n * hn, d)


def ulysses_core(inner: Core, n: int) -> Core:
    def core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (_seq_to_heads(t, n) for t in (q, k, v))
        return _heads_to_seq(inner(q, k, v), n)

    return core


def _shard(t: torch.Tensor, dim: int, rank: int, n: int) -> torch.Tensor:
    size = t.shape[dim]
    if size % n:  # the leader checks before announcing a call; this guards other callers
        raise ModelError(f"split mode: {size} tokens do not divide among {n} devices")
    return t.chunk(n, dim=dim)[rank].contiguous()


def _gather(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def make_sequence_parallel(model: torch.nn.Module, rank: int, n: int) -> int:
    """Shard `model` (a WanTransformer3DModel) along the token sequence over the default group.

    Returns how many self-attention blocks now exchange heads. Heads must divide by `n` (config.py
    checks this for the known model kinds; checked again here for any other).
    """
    heads = model.config.num_attention_heads
    if heads % n:
        raise ModelError(f"split mode: the expert's {heads} attention heads do not divide among {n} devices; "
                         "list a device count that divides them in [gpus] devices")

    def split_rope(_mod, _args, out):
        cos, sin = out
        return _shard(cos, 1, rank, n), _shard(sin, 1, rank, n)

    def split_hidden(_mod, args):
        return (_shard(args[0], 1, rank, n), *args[1:])

    def gather_out(_mod, _args, out):
        return _gather(out, 1, n)

    model.rope.register_forward_hook(split_rope)
    model.blocks[0].register_forward_pre_hook(split_hidden)
    model.proj_out.register_forward_hook(gather_out)
    count, kept = 0, set()
    for block in model.blocks:
        proc = block.attn1.processor
        # SageAttention / FA3 come as a core and keep it; diffusers-dispatched backends (sdpa,
        # cudnn, flash) become PyTorch SDPA, which picks cuDNN or flash on its own on Hopper
        # (the Triton Q/K prep's processor hands over its bare sage-fused core the same way)
        inner = getattr(proc, "core", None) or sdpa_core
        kept.add(getattr(inner, "__name__", type(inner).__name__))
        block.attn1.set_processor(CoreAttnProcessor(ulysses_core(inner, n)))
        count += 1
    log.info("split: %d self-attention blocks exchange heads over %d devices (core: %s)", count, n,
             ", ".join(sorted(kept)))
    return count


def use_diffusers_context_parallel(model: torch.nn.Module, n: int) -> None:
    """Ulysses through diffusers itself (split_engine = "diffusers", CUDA only).

    Its context-parallel hooks only wrap diffusers' own attention processors with a backend that
    supports it, so the expert goes back to WanAttnProcessor on cuDNN SDPA (SageAttention/FA3
    through our processor are not used on this path).
    """
    from diffusers.models._modeling_parallel import ContextParallelConfig
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    heads = model.config.num_attention_heads
    if heads % n:
        raise ModelError(f"split mode: the expert's {heads} attention heads do not divide among {n} devices")
    for block in model.blocks:
        block.attn1.set_processor(WanAttnProcessor())
        block.attn2.set_processor(WanAttnProcessor())
    model.set_attention_backend("_native_cudnn")
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=n))
    log.info("split: diffusers context parallelism, ulysses_degree=%d, cuDNN attention", n)


class Leader:
    """Rank 0: announces each expert call so the followers run it too."""

    def __init__(self, experts: dict[int, torch.nn.Module], device: torch.device, world_size: int):
        self.device = device
        self.n = world_size
        # True from an announced call until its forward returns: an error in between leaves the
        # other ranks inside a collective, and only restarting the group brings them back in step
        self.in_call = False
        for code, model in experts.items():
            model.register_forward_pre_hook(self._announcer(code), with_kwargs=True)
            model.register_forward_hook(self._returned)

    def _returned(self, _mod, _args, _out) -> None:
        self.in_call = False

    def _announcer(self, code: int) -> Callable:
        def hook(mod, args, kwargs):
            x, t, enc = kwargs["hidden_states"], kwargs["timestep"], kwargs["encoder_hidden_states"]
            pt, ph, pw = mod.config.patch_size
            tokens = (x.shape[2] // pt) * (x.shape[3] // ph) * (x.shape[4] // pw)
            if tokens % self.n:
                # refused here, before the others are told: the job fails, the group stays up
                raise ModelError(f"split mode: this video has {tokens} tokens, which do not divide among {self.n} "
                                 "devices; choose another size or frame count, or use [gpus] mode = \"per-device\"")
            header = torch.tensor([code, *x.shape, *enc.shape, t.numel(), DTYPES.index(x.dtype)],
                                  dtype=torch.int64, device=self.device)
            self.in_call = True
            dist.broadcast(header, 0)
            for tensor in (x, t.float(), enc):
                dist.broadcast(tensor.contiguous(), 0)
            return None

        return hook

    def stop(self) -> None:
        dist.broadcast(torch.zeros(11, dtype=torch.int64, device=self.device), 0)


def follow(experts: dict[int, torch.nn.Module], device: torch.device, on_call: Callable[[], None] = lambda: None) -> None:
    """Ranks > 0: run each expert call rank 0 announces, until it says stop."""
    while True:
        header = torch.empty(11, dtype=torch.int64, device=device)
        dist.broadcast(header, 0)
        code, *dims = header.tolist()
        if code == STOP:
            return
        dtype = DTYPES[dims[9]]
        x = torch.empty(dims[0:5], dtype=dtype, device=device)
        t = torch.empty(dims[8], dtype=torch.float32, device=device)
        enc = torch.empty(dims[5:8], dtype=dtype, device=device)
        for tensor in (x, t, enc):
            dist.broadcast(tensor, 0)
        with torch.no_grad():
            experts[code](hidden_states=x, timestep=t, encoder_hidden_states=enc, return_dict=False)
        on_call()
