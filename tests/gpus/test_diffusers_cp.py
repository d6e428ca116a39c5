"""The fact behind split_engine = "ulysses" being ours on CPUs: diffusers' own context parallelism
(the "diffusers" engine) stops at building its device mesh when there is no accelerator. If a
diffusers upgrade lifts that, this test fails: then the CPU tests can cover the diffusers engine."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.ports import free_port
from wan22bot.engine.tiny import TRANSFORMER_CONFIG
from wan22bot.gpus.split import use_diffusers_context_parallel


def test_diffusers_context_parallel_cannot_build_its_mesh_on_a_cpu_only_torch():
    from diffusers import WanTransformer3DModel
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    assert not torch.cuda.is_available()
    # set_attention_backend also sets diffusers' process-wide default: put it back for later tests
    before, _ = _AttentionBackendRegistry.get_active_backend()
    port = free_port()  # outside the ephemeral range and this worker's alone: no other server takes it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()
        # everything before the mesh is accepted: diffusers' processor, the cuDNN backend name
        with pytest.raises(ZeroDivisionError, match="modulo by zero"):
            use_diffusers_context_parallel(model, 2)
        assert all(type(b.attn1.processor).__name__ == "WanAttnProcessor" for b in model.blocks)
    finally:
        _AttentionBackendRegistry.set_active_backend(before)
        dist.destroy_process_group()
