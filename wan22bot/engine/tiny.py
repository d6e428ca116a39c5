"""The built-in tiny model: Wan 2.2 I2V's own diffusers classes at toy sizes, random weights.

It is not a mock. The generator runs every line it runs for the 14B checkpoint (UMT5 text encoder,
Wan VAE encode of the conditioning video, two WanTransformer3DModel experts, VAE decode), only with
small configs built in code and an offline character-level tokenizer, so it makes a (noise) video
in seconds on two CPU cores. Weights are drawn from a fixed seed, so runs are reproducible.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

TINY_WIDTH, TINY_HEIGHT, TINY_FRAMES = 96, 144, 25
TINY_MAX_SEQUENCE_LENGTH = 32
TINY_BOUNDARY_RATIO = 0.9

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=36,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=32,
)
VAE_CONFIG = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TEXT_CONFIG = dict(
    vocab_size=128,
    d_model=32,
    d_ff=37,
    d_kv=8,
    num_heads=4,
    num_layers=2,
    relative_attention_num_buckets=8,
    feed_forward_proj="relu",
    pad_token_id=0,
    eos_token_id=1,
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level: every printable ASCII character is a token, so different prompts differ."""
    chars = [c for c in string.printable if c not in " \t\n\r\x0b\x0c"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in chars:
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Split("", "isolated")])
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_components(seed: int = 0) -> dict:
    """Fresh random components; each is drawn after re-seeding so the set is reproducible."""
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**VAE_CONFIG).eval()
    torch.manual_seed(seed + 1)
    text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_CONFIG)).eval()
    torch.manual_seed(seed + 2)
    transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()
    torch.manual_seed(seed + 3)
    transformer_2 = WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()
    return dict(
        tokenizer=tiny_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        transformer_2=transformer_2,
    )
