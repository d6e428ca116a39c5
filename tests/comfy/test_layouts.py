"""Every weight layout a ComfyUI file may use: read exactly, or refused with a message naming it."""

from __future__ import annotations

import json

import pytest
import torch

from wan22bot.engine.single_files import load_expert, load_text_encoder
from wan22bot.engine.weights import open_checkpoint
from wan22bot.errors import ModelError

from . import writers as W
from .conftest import run_expert

PREFIX = "model.diffusion_model."
FORWARD_TOL = 1e-5  # fp32 on both sides from identical weights


@pytest.fixture(scope="module")
def source(expert_high):
    return W.expert_sd(expert_high)


def _reference(real):
    return W.reference_model(lambda: W.WanTransformer3DModel(**W.EXPERT_CONFIG), real, W.expert_original_name)


def _assert_exact(model, real):
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value.float(), real[W.expert_original_name(key)], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("layout,prefix", [
    ("bf16", PREFIX), ("fp16", ""), ("fp32", PREFIX), ("fp8_scaled", PREFIX), ("fp8_scaled", ""),
    ("comfy_quant", ""), ("comfy_quant", PREFIX),
])
def test_expert_layouts_load_exactly(tmp_path, source, layout, prefix):
    tensors, real = W.quantise(source, layout, prefix=prefix)
    path = W.save(tensors, tmp_path / f"expert_{layout}.safetensors")
    loaded = load_expert(path, torch.float32)
    _assert_exact(loaded.module, real)
    out, ref = run_expert(loaded.module), run_expert(_reference(real))
    assert torch.isfinite(out).all() and (out - ref).abs().max().item() <= FORWARD_TOL
    words = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "fp8_scaled": "fp8_scaled (",
             "comfy_quant": "per-layer quantisation ("}
    assert words[layout] in loaded.summary and "2 blocks, width 256" in loaded.summary


def test_bf16_load_keeps_fp32_modules_and_rounds_the_rest_once(tmp_path, source):
    tensors, real = W.quantise(source, "fp8_scaled", prefix=PREFIX)
    path = W.save(tensors, tmp_path / "e.safetensors")
    model = load_expert(path, torch.bfloat16).module
    sd = model.state_dict()
    # the norms / time embedding diffusers keeps in fp32 stay fp32, with the exact value
    assert sd["blocks.0.scale_shift_table"].dtype == torch.float32
    torch.testing.assert_close(sd["condition_embedder.time_embedder.linear_1.weight"],
                               real["time_embedding.0.weight"], rtol=0, atol=0)
    # ComfyUI's dequantisation in the compute dtype: weight.to(bf16) * scale.to(bf16)
    q = tensors[PREFIX + "blocks.0.self_attn.q.weight"]
    s = tensors[PREFIX + "blocks.0.self_attn.q.scale_weight"]
    assert sd["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert torch.equal(sd["blocks.0.attn1.to_q.weight"], q.to(torch.bfloat16) * s.to(torch.bfloat16))
    assert torch.equal(sd["blocks.0.attn1.to_q.bias"], tensors[PREFIX + "blocks.0.self_attn.q.bias"].to(torch.bfloat16))


def test_comfy_quant_from_header_metadata(tmp_path, source):
    """Files that list their quantised layers in the header's _quantization_metadata, not per tensor."""
    tensors, real = W.quantise(source, "comfy_quant", prefix=PREFIX)
    layers = {}
    for k in [k for k in tensors if k.endswith(".comfy_quant")]:
        layers[k[: -len(".comfy_quant")]] = json.loads(bytes(tensors.pop(k).tolist()))
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    path = W.save(tensors, tmp_path / "e.safetensors", metadata=meta)
    loaded = load_expert(path, torch.float32)
    _assert_exact(loaded.module, real)
    assert f"per-tensor weight_scale on {len(layers)} layers" in loaded.summary


def test_header_metadata_naming_layers_without_the_prefix(tmp_path, source):
    tensors, real = W.quantise(source, "comfy_quant", prefix=PREFIX)
    layers = {k[len(PREFIX): -len(".comfy_quant")]: {"format": "float8_e4m3fn"}
              for k in list(tensors) if k.endswith(".comfy_quant") and tensors.pop(k) is not None}
    path = W.save(tensors, tmp_path / "e.safetensors",
                  metadata={"_quantization_metadata": json.dumps({"layers": layers})})
    _assert_exact(load_expert(path, torch.float32).module, real)


def test_plain_fp8_without_scales_is_read_as_stored(tmp_path, source):
    tensors = {PREFIX + k: v.to(W.E4M3) if v.ndim == 2 else v.to(torch.bfloat16) for k, v in source.items()}
    path = W.save(tensors, tmp_path / "wan2.2_i2v_high_noise_14B_fp8_e4m3fn.safetensors")
    loaded = load_expert(path, torch.float32)
    real = {k.removeprefix(PREFIX): v.float() for k, v in tensors.items()}
    _assert_exact(loaded.module, real)
    assert "unscaled" in loaded.summary


def test_fp8_scaled_text_encoder_exact_with_its_tokenizer(tmp_path, spm_proto):
    te = W.tiny_text_encoder(5)
    tensors, real = W.quantise(W.text_sd(te), "fp8_scaled")
    tensors["spiece_model"] = W.spiece_tensor(spm_proto)
    path = W.save(tensors, tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    loaded, tok = load_text_encoder(path, torch.float32)
    model = loaded.module
    for key, value in model.state_dict().items():
        src = "shared.weight" if key == "encoder.embed_tokens.weight" else key
        torch.testing.assert_close(value, real[src], rtol=0, atol=0, msg=key)
    assert model.encoder.embed_tokens is model.shared
    ref = W.tiny_text_encoder(5)
    ref.load_state_dict({k: real["shared.weight" if k == "encoder.embed_tokens.weight" else k]
                         for k in ref.state_dict()})
    enc = tok(["a red kite over the sea"], max_length=16)
    with torch.no_grad():
        a = model(enc.input_ids, enc.attention_mask).last_hidden_state
        b = ref(enc.input_ids, enc.attention_mask).last_hidden_state
    assert (a - b).abs().max().item() <= 1e-6
    assert "UMT5 encoder" in loaded.summary and "tokenizer from its spiece_model" in loaded.summary


def test_text_encoder_with_the_embedding_under_the_encoder_name(tmp_path, spm_proto):
    te = W.tiny_text_encoder(6)
    sd = W.text_sd(te)
    sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
    tensors, real = W.quantise(sd, "bf16")
    loaded, _ = load_text_encoder(W.save(tensors, tmp_path / "umt5_xxl_fp16.safetensors"), torch.float32)
    torch.testing.assert_close(loaded.module.shared.weight, real["encoder.embed_tokens.weight"], rtol=0, atol=0)
    assert loaded.module.encoder.embed_tokens is loaded.module.shared


# ------------------------------------------------------------------------------------- refusals
def _small(tmp_path, tensors, name="x.safetensors", metadata=None):
    return W.save(tensors, tmp_path / name, metadata=metadata)


def _refused(path, *words):
    with pytest.raises(ModelError) as exc:
        open_checkpoint(path)
    msg = str(exc.value)
    assert str(path) in msg and "does not load" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_gguf_is_refused(tmp_path):
    p = tmp_path / "wan2.2_i2v_high_noise_14B_Q4_K_M.gguf"
    p.write_bytes(b"GGUF" + bytes(60))
    _refused(p, "GGUF")


def test_bitsandbytes_nf4_is_refused(tmp_path):
    p = _small(tmp_path, {"blocks.0.self_attn.q.weight": torch.zeros(8, 1, dtype=torch.uint8),
                          "blocks.0.self_attn.q.weight.absmax": torch.ones(2),
                          "blocks.0.self_attn.q.weight.quant_state.bitsandbytes__nf4": torch.zeros(4, dtype=torch.uint8)})
    _refused(p, "bitsandbytes")


def test_int8_weights_are_refused(tmp_path):
    p = _small(tmp_path, {"blocks.0.self_attn.q.weight": torch.zeros(4, 4, dtype=torch.int8)})
    _refused(p, "int8", "blocks.0.self_attn.q.weight")


@pytest.mark.parametrize("fmt,word", [("nvfp4", "NVFP4"), ("mxfp8", "MXFP8"), ("int8_tensorwise", "int8"),
                                      ("convrot_w4a4", "W4A4"), ("float8_e4m3fn_blockwise", "unknown format")])
def test_other_comfy_quant_formats_are_refused(tmp_path, fmt, word):
    t = {"blocks.0.ffn.0.weight": torch.zeros(4, 4, dtype=W.E4M3), "blocks.0.ffn.0.weight_scale": torch.tensor(1.0),
         "blocks.0.ffn.0.comfy_quant": torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)}
    _refused(_small(tmp_path, t), word, "blocks.0.ffn.0")


def test_scales_without_a_marker_are_refused(tmp_path):
    t = {"blocks.0.ffn.0.weight": torch.zeros(4, 4, dtype=W.E4M3), "blocks.0.ffn.0.scale_weight": torch.tensor(1.0)}
    _refused(_small(tmp_path, t), "scale_weight", "neither")


def test_per_row_scales_are_refused(tmp_path):
    t = {"scaled_fp8": torch.empty(0, dtype=W.E4M3), "blocks.0.ffn.0.weight": torch.zeros(4, 4, dtype=W.E4M3),
         "blocks.0.ffn.0.scale_weight": torch.ones(4)}
    _refused(_small(tmp_path, t), "non-scalar scale", "[4]")


def test_not_safetensors_is_a_clear_error(tmp_path):
    p = tmp_path / "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
    p.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ModelError, match="not a readable .safetensors file"):
        open_checkpoint(p)


MEMORY_PROBE = r"""
import sys, torch
from wan22bot.engine.single_files import load_expert
import diffusers, transformers, accelerate  # imported before the baseline

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

before = anon()
model = load_expert(sys.argv[1], torch.bfloat16).module
size = sum(p.numel() * p.element_size() for p in model.parameters())
print((anon() - before) / size)
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_loading_an_fp8_expert_holds_about_one_bf16_copy(tmp_path):
    """Loading needs about the finished model's memory, not a second copy.

    The fp8 tensors are read from the file's pages; reading them as heap copies left a 1.5 GB expert
    at 1.57x its bf16 size after loading (malloc keeps the freed fp8 buffers); at this small size
    the fixed interpreter and allocator overhead is about 0.15x."""
    import subprocess
    import sys

    from .test_detection import wan_expert_shapes

    g = torch.Generator().manual_seed(0)
    t = {"scaled_fp8": torch.empty(0, dtype=W.E4M3)}
    for k, s in wan_expert_shapes(dim=1024, ffn=4096, layers=8).items():
        if k.endswith(".weight") and len(s) == 2:
            t[k] = (torch.randn(s, generator=g) * 8).to(W.E4M3)
            t[k[: -len(".weight")] + ".scale_weight"] = torch.tensor(0.003)
        else:
            t[k] = torch.randn(s, generator=g).to(torch.bfloat16)
    path = W.save(t, tmp_path / "expert.safetensors")
    del t
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ratio = float(r.stdout.strip().splitlines()[-1])
    # measured: 1.155-1.159 here; heap copies of the fp8 tensors (or full-size temporaries such as
    # an isfinite() mask per weight) gave 1.32-1.51
    assert ratio < 1.25, ratio


def test_stored_tensors_are_read_from_the_file_map_not_copied(tmp_path, source):
    """What keeps the load at one copy: raw tensors are views of the mapped file, the values returned
    are fresh tensors (never the map, which must not be written through)."""
    import ctypes

    from wan22bot.engine.weights import open_checkpoint

    tensors, _ = W.quantise(source, "fp8_scaled")
    ckpt = open_checkpoint(W.save(tensors, tmp_path / "e.safetensors"))
    mm = ckpt._file._mm
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    raw = ckpt.raw("blocks.0.ffn.0.weight")
    assert base <= raw.data_ptr() < base + len(mm)
    value = ckpt.tensor("blocks.0.ffn.0.weight", torch.bfloat16)
    assert not base <= value.data_ptr() < base + len(mm)
    same = ckpt.tensor("blocks.0.norm3.weight", torch.bfloat16)  # stored bf16: still a copy
    assert not base <= same.data_ptr() < base + len(mm)
    del raw
