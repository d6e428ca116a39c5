"""UMT5's tokenizer, built from the sentencepiece model ComfyUI's text encoder files carry (`spiece_model`).

It tokenizes the way ComfyUI's UMT5-XXL tokenizer does for a prompt without weight syntax: the
whole prompt through sentencepiece, no start token, the end token (id 1) appended, padded with id
0 up to the length asked. It answers the one call diffusers' Wan pipeline makes
(`tokenizer(prompts, padding="max_length", max_length=N, truncation=True, add_special_tokens=True,
return_attention_mask=True, return_tensors="pt")`), so the generator cannot tell it from the
Diffusers folder's tokenizer.

Differences from ComfyUI that remain (and why): a prompt longer than `max_length` tokens is cut to
`max_length - 1` tokens plus the end token (ComfyUI keeps going past 512; the pipeline's embeddings
are a fixed 512 long), and `(word:1.2)` weight syntax is text here, not a weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelError

PAD_ID, EOS_ID = 0, 1


@dataclass
class TokenizerOutput:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)


class SentencePieceUMT5Tokenizer:
    pad_token_id = PAD_ID
    eos_token_id = EOS_ID

    def __init__(self, model_proto: bytes, source: str = "the text encoder file"):
        import sentencepiece

        self.source = source
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError on a bad proto
            raise ModelError(f"{source}: its spiece_model is not a sentencepiece model ({exc}); re-download the file") from None
        if self.sp.pad_id() != PAD_ID or self.sp.eos_id() != EOS_ID:
            raise ModelError(f"{source}: its sentencepiece model has pad id {self.sp.pad_id()} and end id "
                             f"{self.sp.eos_id()}; UMT5 needs 0 and 1 (is this a UMT5 file?)")
        self.vocab_size = self.sp.get_piece_size()

    @classmethod
    def from_tensor(cls, t: torch.Tensor, source: str) -> "SentencePieceUMT5Tokenizer":
        return cls(bytes(t.to(torch.uint8).flatten().tolist()), source)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        ids = list(self.sp.encode(text))
        if max_length is not None and len(ids) > max_length - 1:
            ids = ids[: max_length - 1]
        return ids + [EOS_ID]

    def __call__(self, text, padding="max_length", max_length: int = 512, truncation: bool = True,
                 add_special_tokens: bool = True, return_attention_mask: bool = True,
                 return_tensors: str = "pt", **_ignored) -> TokenizerOutput:
        if padding != "max_length" or not add_special_tokens or return_tensors != "pt":
            raise ValueError("this tokenizer only pads to max_length with special tokens, as the Wan pipeline asks")
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.encode(t, max_length if truncation else None) for t in texts]
        width = max([max_length] + [len(r) for r in rows])
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return TokenizerOutput(input_ids=ids, attention_mask=mask)
