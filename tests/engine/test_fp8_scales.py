"""Static fp8 input scales kept across restarts (engine/fp8_scales.py, `[model] keep_fp8_scales`).

torch's CPU `_scaled_mm` runs the fp8 matmuls here, so the layers calibrate on the CPU as they do
on a GPU (fp8_matmul_supported is made to say yes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from PIL import Image

from wan22bot.config import ModelConfig
from wan22bot.engine import fp8_linear, fp8_scales
from wan22bot.engine.fp8_linear import convert_to_fp8
from wan22bot.engine.generator import GenerationRequest, TwoPassGenerator
from wan22bot.engine.tiny import TRANSFORMER_CONFIG


def _expert(seed=0, scaling="static"):
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()
    convert_to_fp8(model, use_scaled_mm=True, scaling=scaling)
    return model


def _run(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, 36, 2, 6, 8, generator=g)
    text = torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        return model(hidden_states=lat, timestep=torch.tensor([700.0]), encoder_hidden_states=text,
                     return_dict=False)[0]


def test_kept_scales_come_back_and_give_the_same_output(tmp_path):
    model = _expert()
    key = fp8_scales.fingerprint(model, "s")
    assert fp8_scales.save(model, tmp_path, key) is None  # nothing calibrated yet
    _run(model, seed=5)  # calibrates on other inputs
    want = _run(model)
    path = fp8_scales.save(model, tmp_path, key)
    assert path is not None and path.is_file()
    assert fp8_scales.save(model, tmp_path, key) is None  # written once
    restarted = _expert()
    assert fp8_scales.fingerprint(restarted, "s") == key
    layers = fp8_scales.static_layers(restarted)
    assert fp8_scales.restore(restarted, tmp_path, key) == len(layers) > 0
    assert all(lin.calibrated for _, lin in layers)
    assert torch.equal(_run(restarted), want)  # the scales of the first inputs, not of these
    assert not torch.equal(_run(_expert()), want)  # without them the first call calibrates on these


def test_the_key_follows_the_weights_and_the_settings():
    model = _expert()
    key = fp8_scales.fingerprint(model, "s")
    assert fp8_scales.fingerprint(_expert(seed=1), "s") != key
    assert fp8_scales.fingerprint(model, "t") != key
    # a LoRA-like low-rank change of one layer, quantised again as a LoRA switch does
    lin = model.blocks[1].ffn.net[2]
    w = lin.dequantized_weight(torch.float32)
    w += 0.05 * torch.randn(w.shape[0], 2) @ torch.randn(2, w.shape[1])
    fresh = fp8_linear.FP8Linear(torch.nn.Linear(w.shape[1], w.shape[0], bias=False), use_scaled_mm=True,
                                 scaling="static")
    fresh.weight_fp8, fresh.weight_scale = fp8_linear.quantize_tensor(w)
    lin.weight_fp8.copy_(fresh.weight_fp8)
    lin.weight_scale.copy_(fresh.weight_scale)
    assert fp8_scales.fingerprint(model, "s") != key
    assert fp8_scales.fingerprint(_expert(scaling="rowwise"), "s") is None  # nothing to keep
    # LoRAs may patch more than linear weights: a bias (diff_b), the modulation table (diff_m)
    for patch in (lambda m: m.blocks[0].attn1.to_q.bias, lambda m: m.blocks[1].scale_shift_table):
        other = _expert()
        before = fp8_scales.fingerprint(other, "s")
        with torch.no_grad():
            patch(other).add_(0.01)
        assert fp8_scales.fingerprint(other, "s") != before
    # while calibrating does not change the key
    calibrated = _expert()
    _run(calibrated)
    assert fp8_scales.fingerprint(calibrated, "s") == fp8_scales.fingerprint(_expert(), "s")


@pytest.mark.parametrize("content", ["garbage", "other layers", "text", "zero", "nan", "no format"])
def test_a_broken_or_foreign_file_is_removed_and_replaced(tmp_path, caplog, content):
    model = _expert()
    key = fp8_scales.fingerprint(model, "s")
    path = tmp_path / f"{key}.pt"
    names = [name for name, _ in fp8_scales.static_layers(model)]
    if content == "garbage":
        path.write_bytes(b"\x80\x02 not a checkpoint")
    else:
        value = {"text": "big", "zero": 0.0, "nan": float("nan")}.get(content, 1.0)
        amax = {"blocks.0.attn1.to_q": 1.0} if content == "other layers" else dict.fromkeys(names, value)
        torch.save({"amax": amax} if content == "no format" else {"format": fp8_scales.FORMAT, "amax": amax}, path)
    with caplog.at_level(logging.WARNING, logger="wan22bot.engine.fp8_scales"):
        assert fp8_scales.restore(model, tmp_path, key) == 0  # no exception: the load goes on
    assert "removed, calibrating again" in caplog.text and not path.exists()
    assert not any(lin.calibrated for _, lin in fp8_scales.static_layers(model))
    _run(model)  # calibrates
    assert fp8_scales.save(model, tmp_path, key) == path  # and a good file takes its place
    assert fp8_scales.restore(_expert(), tmp_path, key) == len(names)
    assert fp8_scales.restore(model, tmp_path, "0" * 32) == 0  # no file: calibrate, quietly


def _req(seed=3):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 64, 3), dtype=np.uint8))
    return GenerationRequest(image=img, width=64, height=96, frames=5, seed=seed, prompt="a cat")


@pytest.fixture
def fp8_matmuls_here(monkeypatch):
    monkeypatch.setattr(fp8_linear, "fp8_matmul_supported", lambda device: True)


def test_a_restarted_generator_starts_calibrated_and_renders_the_same(tmp_path, fp8_matmuls_here, caplog):
    cfg = ModelConfig(weights="fp8", fp8_scaling="static", device="cpu")
    first = TwoPassGenerator(cfg)
    first.scales_dir = tmp_path
    first.load()
    with caplog.at_level(logging.INFO, logger="wan22bot.engine.generator"):
        first.generate(_req(seed=9))  # calibrates on this job, then keeps the scales
    assert len(list(tmp_path.glob("*.pt"))) == 2 and "fp8 input scales kept in" in caplog.text
    want = first.generate(_req()).frames

    restarted = TwoPassGenerator(cfg)
    restarted.scales_dir = tmp_path
    restarted.load()
    for key in ("transformer", "transformer_2"):
        layers = fp8_scales.static_layers(getattr(restarted.components, key))
        assert layers and all(lin.calibrated for _, lin in layers)
    assert torch.equal(restarted.generate(_req()).frames, want)

    off = TwoPassGenerator(cfg.model_copy(update={"keep_fp8_scales": False}))
    off.scales_dir = tmp_path
    off.load()
    assert not any(lin.calibrated for _, lin in fp8_scales.static_layers(off.components.transformer))


def test_a_lora_switch_back_takes_its_kept_scales(tmp_path, fp8_matmuls_here):
    """Taking the LoRA out changes the weights, so the scales kept with it in do not apply; switching
    it back in finds them again and starts calibrated, without the calibrating job."""
    from tests.core.helpers import lora_tensors, write_lora

    hi = write_lora(tmp_path / "hi.safetensors", lora_tensors())
    lo = write_lora(tmp_path / "lo.safetensors", lora_tensors())
    g = TwoPassGenerator(ModelConfig(weights="fp8", fp8_scaling="static", device="cpu", lora_high=hi, lora_low=lo))
    g.scales_dir = tmp_path / "scales"
    g.load()
    with_lora = dict(g._scale_keys)
    g.generate(_req())  # LoRA in: calibrates, keeps
    g.generate(dataclasses.replace(_req(), lora=False))  # out: other keys, calibrates, keeps
    assert set(g._scale_keys.values()).isdisjoint(with_lora.values())
    assert len(list((tmp_path / "scales").glob("*.pt"))) == 4
    g._set_lora(True)
    assert g._scale_keys == with_lora
    for key in ("transformer", "transformer_2"):
        assert all(lin.calibrated for _, lin in fp8_scales.static_layers(getattr(g.components, key)))


def test_the_renderer_keeps_scales_beside_the_compile_cache(tmp_path, monkeypatch):
    from wan22bot.config import Config
    from wan22bot.render import Renderer

    cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))  # what use_compile_cache then keeps
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache / "triton"))
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fx_graph_cache", inductor_config.fx_graph_cache)  # restored after
    monkeypatch.setattr(functorch_config, "enable_autograd_cache", functorch_config.enable_autograd_cache)
    gen = TwoPassGenerator(ModelConfig(compile=True, device="cpu"))
    monkeypatch.setattr(gen, "load", lambda: None)
    Renderer(Config(), generator=gen).load()
    assert gen.scales_dir == cache / "fp8-scales"
    assert ModelConfig().keep_fp8_scales is True


def test_a_folder_that_cannot_be_written_costs_no_job(tmp_path, fp8_matmuls_here, caplog, monkeypatch):
    """A full disk or a read-only state folder: the video is still made, the scales are not kept,
    and nothing half-written is left."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder would go")
    g = TwoPassGenerator(ModelConfig(weights="fp8", fp8_scaling="static", device="cpu"))
    g.scales_dir = blocked / "fp8-scales"
    g.load()
    with caplog.at_level(logging.WARNING, logger="wan22bot.engine.fp8_scales"):
        assert g.generate(_req()).frames.shape == (5, 96, 64, 3)
    assert "not kept" in caplog.text
    # a disk that is full when the file is written: the writes go to /dev/full (ENOSPC)
    full = tmp_path / "full"
    real_fdopen = fp8_scales.os.fdopen

    def onto_a_full_disk(fd, mode="r", *a, **k):
        fp8_scales.os.close(fd)
        return open("/dev/full", mode)

    monkeypatch.setattr(fp8_scales.os, "fdopen", onto_a_full_disk)
    g.scales_dir = full
    g._restore_scales()
    with caplog.at_level(logging.WARNING, logger="wan22bot.engine.fp8_scales"):
        assert g.generate(_req()).frames.shape == (5, 96, 64, 3)
    assert "No space left" in caplog.text
    assert list(full.iterdir()) == []  # the temporary file is gone too
    monkeypatch.setattr(fp8_scales.os, "fdopen", real_fdopen)


def test_a_lora_switch_recalibrates_every_layer_and_offload_keeps_no_state(tmp_path, fp8_matmuls_here):
    """After a LoRA switch every static layer calibrates again (the patched ones' inputs are not
    the only ones that change); under memory = offload the layers scale per row (diffusers'
    streamed offload restores buffers from the copies it took at set-up)."""
    from tests.core.helpers import lora_tensors, write_lora

    # a LoRA on block 0's layers only: block 1's layers are not patched, but their inputs change
    hi = write_lora(tmp_path / "hi.safetensors", lora_tensors(blocks=(0,)))
    lo = write_lora(tmp_path / "lo.safetensors", lora_tensors(blocks=(0,)))
    g = TwoPassGenerator(ModelConfig(weights="fp8", fp8_scaling="static", device="cpu", lora_high=hi, lora_low=lo))
    g.load()
    g.generate(_req())
    layers = fp8_scales.static_layers(g.components.transformer)
    assert all(lin.calibrated for _, lin in layers)
    g._set_lora(False)  # no scales kept (no folder): nothing comes back
    assert not any(lin.calibrated for _, lin in layers)
    off = TwoPassGenerator(ModelConfig(weights="fp8", fp8_scaling="static", device="cpu", memory="offload"))
    off.load()
    scalings = {m.scaling for m in off.components.transformer.modules() if isinstance(m, fp8_linear.FP8Linear)}
    assert scalings == {"rowwise"}


def test_the_key_follows_the_text_encoder_and_the_vae(tmp_path, fp8_matmuls_here):
    g = TwoPassGenerator(ModelConfig(weights="fp8", fp8_scaling="static", device="cpu"))
    g.scales_dir = tmp_path
    g.load()
    keys = dict(g._scale_keys)
    for module in (g.components.text_encoder, g.components.vae):
        with torch.no_grad():
            next(module.parameters()).add_(0.5)
        g._context_digest = None
        g._restore_scales()
        assert set(g._scale_keys.values()).isdisjoint(keys.values())
        keys = dict(g._scale_keys)


def _calibration_graph(code: str) -> bool:
    return "amax" in code.replace("amax_history", "")


def test_the_first_job_compiles_no_calibrating_graph(fp8_matmuls_here, monkeypatch):
    """With compile on, each expert's calibrating step runs eagerly and every graph torch.compile
    builds is the frozen-scale one the later steps run (a fast counting backend stands in for
    inductor here)."""
    import torch._dynamo
    from diffusers.models.modeling_utils import ModelMixin

    from wan22bot.engine import generator

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    compile_blocks = ModelMixin.compile_repeated_blocks
    monkeypatch.setattr(ModelMixin, "compile_repeated_blocks",
                        lambda self, *a, **kw: compile_blocks(self, *a, backend=backend, **kw))
    cfg = ModelConfig(weights="fp8", fp8_scaling="static", device="cpu", compile=True, keep_fp8_scales=False)

    def one_job():
        torch._dynamo.reset()
        graphs.clear()
        g = TwoPassGenerator(cfg)
        g.load()
        frames = g.generate(_req()).frames
        for key in ("transformer", "transformer_2"):
            assert all(lin.calibrated for _, lin in fp8_scales.static_layers(getattr(g.components, key)))
        return frames

    frames = one_job()
    assert graphs and not any(_calibration_graph(c) for c in graphs)
    # the same job with the calibrating step compiled: its graph is there, and the video is the same
    monkeypatch.setattr(generator, "eager_while_calibrating", lambda model, compiled: contextlib.nullcontext(False))
    assert torch.equal(one_job(), frames)
    assert any(_calibration_graph(c) for c in graphs)
    torch._dynamo.reset()
