"""The UMT5 tokenizer built from a file's `spiece_model`, checked against ComfyUI's tokenization rule.

ComfyUI (comfy/text_encoders/spiece_tokenizer.py + wan.py) encodes the whole prompt with
sentencepiece with add_eos=True and no bos, then pads with id 0 to at least 512 tokens.
"""

from __future__ import annotations

import pytest
import sentencepiece
import torch

from wan22bot.engine.tokenizer import SentencePieceUMT5Tokenizer
from wan22bot.errors import ModelError

from . import writers as W


def comfy_ids(proto: bytes, text: str, length: int = 512) -> list[int]:
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto, add_bos=False, add_eos=True)
    ids = list(sp.encode(text))
    return ids + [0] * (length - len(ids))


@pytest.mark.parametrize("text", ["a red kite over the sea", "", "Zebras graze; 2 jeeps pass!  ünïcode 猫"])
def test_ids_and_mask_match_comfyui(spm_proto, text):
    tok = SentencePieceUMT5Tokenizer(spm_proto)
    out = tok(text, padding="max_length", max_length=512, truncation=True, add_special_tokens=True,
              return_attention_mask=True, return_tensors="pt")
    assert out.input_ids.shape == (1, 512) and out.input_ids.dtype == torch.long
    assert out.input_ids[0].tolist() == comfy_ids(spm_proto, text)
    n = len(sentencepiece.SentencePieceProcessor(model_proto=spm_proto).encode(text)) + 1
    assert out.attention_mask[0].tolist() == [1] * n + [0] * (512 - n)
    assert out.input_ids[0, n - 1].item() == 1  # the end token closes the prompt; no start token


def test_batch_and_truncation(spm_proto):
    tok = SentencePieceUMT5Tokenizer(spm_proto)
    long = "the camera slowly pans across a quiet harbour with boats " * 10
    out = tok([long, "a cat"], max_length=16)
    assert out.input_ids.shape == (2, 16)
    assert out.input_ids[0, -1].item() == 1 and out.attention_mask[0].sum().item() == 16
    assert out.input_ids[0, :15].tolist() == comfy_ids(spm_proto, long)[:15]
    assert out.input_ids[1].tolist() == comfy_ids(spm_proto, "a cat", 16)


def test_a_model_with_other_special_ids_is_refused(tmp_path):
    import sentencepiece as spm

    (tmp_path / "c.txt").write_text(W.SPM_TEXT, encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "c.txt"), model_prefix=str(tmp_path / "m"), vocab_size=60,
                                   minloglevel=2, hard_vocab_limit=False)  # defaults: unk 0, bos 1, eos 2, no pad
    with pytest.raises(ModelError, match="pad id .* end id .* UMT5 needs 0 and 1"):
        SentencePieceUMT5Tokenizer((tmp_path / "m.model").read_bytes(), "clip/odd.safetensors")


def test_garbage_is_not_a_tokenizer():
    with pytest.raises(ModelError, match="spiece_model is not a sentencepiece model"):
        SentencePieceUMT5Tokenizer(b"not a model", "text_encoders/x.safetensors")


def test_pipeline_prompt_embeddings_use_it(spm_proto):
    """diffusers' Wan pipeline encodes a prompt through this tokenizer as through its own."""
    from diffusers import WanImageToVideoPipeline

    te = W.tiny_text_encoder(4)
    tok = SentencePieceUMT5Tokenizer(spm_proto)
    pipe = WanImageToVideoPipeline(tokenizer=tok, text_encoder=te, vae=W.tiny_vae(0), scheduler=None,
                                   transformer=None, transformer_2=None, boundary_ratio=0.9)
    emb = pipe._get_t5_prompt_embeds("a red kite", max_sequence_length=512, device=torch.device("cpu"),
                                     dtype=torch.float32)
    ids = torch.tensor([comfy_ids(spm_proto, "a red kite")])
    n = int((ids != 0).sum())
    # in the pipeline's grad mode (autograd on): under no_grad the CPU takes other kernels, a few
    # ulps apart, and the comparison could only be approximate
    want = te(ids, (ids != 0).long()).last_hidden_state[0, :n].detach()
    assert emb.shape == (1, 512, W.TEXT_CONFIG["d_model"])
    assert torch.equal(emb[0, :n], want)  # fp32, same ids and mask: the same numbers
    assert emb[0, n:].abs().max().item() == 0  # masked positions zeroed, as ComfyUI's zero_out_masked does
