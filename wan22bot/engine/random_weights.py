"""Full-size Wan 2.2 I2V A14B components with random weights, built directly on the GPU.

For timing without the 60 GB checkpoint: matmul and attention cost do not depend on the weight
values, so a forward with random weights takes as long as one with the real ones. Every number
measured this way is labelled "random weights, timing only". Weights are drawn ~N(0, 1/fan_in)
so activations stay in a realistic range through 40 blocks (no inf/NaN fast paths).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from .components import Components

A14B_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
    rope_max_seq_len=1024, pos_embed_seq_len=None,
)
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
    feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", relative_attention_num_buckets=32,
    relative_attention_max_distance=128, layer_norm_epsilon=1e-6, scalable_attention=True,
    tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
)


@torch.no_grad()
def _materialise(model: nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    # cast on the meta device first: allocating fp32 and casting after would need twice the memory
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fan_in = math.prod(p.shape[1:])
            p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)
        elif "norm" in name or name.endswith("scale_shift_table"):
            p.fill_(1.0) if "norm" in name else p.normal_(0.0, 0.02, generator=gen)
        else:
            p.zero_()
    for name, b in model.named_buffers():
        if b.is_floating_point() and not torch.isfinite(b).all():
            b.zero_()
    return model.to(dtype)


def random_expert(device: torch.device, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> nn.Module:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        m = WanTransformer3DModel(**A14B_TRANSFORMER)
    m = _materialise(m, device, dtype, seed)
    # rope tables are computed buffers (not parameters): rebuild them for real on the device
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    m.rope = WanRotaryPosEmbed(A14B_TRANSFORMER["attention_head_dim"], A14B_TRANSFORMER["patch_size"],
                               A14B_TRANSFORMER["rope_max_seq_len"]).to(device)
    keep = getattr(m, "_keep_in_fp32_modules", None) or []
    for name, mod in m.named_modules():
        if any(k in name.split(".") for k in keep):
            mod.float()
    return m.eval()


def random_components(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> Components:
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    from .tiny import tiny_tokenizer

    def text_encoder():
        with torch.device("meta"):
            te = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
        return _materialise(te, device, dtype, 7).eval()

    torch.manual_seed(11)
    vae = AutoencoderKLWan().to(device).eval()
    return Components(
        tokenizer=tiny_tokenizer(),  # token ids only index the embedding; cost is fixed by 512-token padding
        # builders, not modules: the generator builds each in turn (see TwoPassGenerator.load)
        text_encoder=text_encoder,
        vae=vae,
        transformer=lambda: random_expert(device, dtype, 1),
        transformer_2=lambda: random_expert(device, dtype, 2),
        default_width=832,
        default_height=1216,
        default_frames=81,
        max_sequence_length=512,
        description="Wan 2.2 I2V A14B architecture, random weights (timing only)",
    )
