"""The out-of-memory message names the stage and only gives advice that applies; the compile
cache goes to the state folder unless the user chose one."""

from __future__ import annotations

import os

import pytest
import torch

from wan22bot.engine.compile_cache import use_compile_cache
from wan22bot.engine.memory import oom_advice
from wan22bot.engine.timing import StageTimer


def test_oom_advice_names_the_stage_and_never_repeats_the_setting_in_force():
    msg = oom_advice("pass2", "swap", "fp8", 832, 1216, 81)
    assert "during pass2" in msg and "832x1216, 81 frames" in msg
    assert 'model.memory = "swap"' not in msg and 'model.weights = "fp8"' not in msg
    assert 'model.memory = "offload"' in msg and "fewer frames than 81" in msg

    msg = oom_advice("vae_decode", "swap", "fp8", 832, 1216, 81)
    assert "offload" not in msg  # offloading the experts does not shrink the decoder
    assert "fewer frames" in msg

    msg = oom_advice("pass1", "resident", "bf16", 832, 1216, 25)
    assert 'model.weights = "fp8"' in msg and 'model.memory = "swap"' in msg
    assert "fewer frames" not in msg  # 25 is already the shortest video


def test_stage_timer_knows_the_stage_it_is_in():
    timer = StageTimer(torch.device("cpu"))
    with timer.stage("pass1"):
        assert timer.current == "pass1"
    assert timer.current is None and "pass1" in timer.seconds
    assert timer.peak_gib == {}  # peaks are read on CUDA only


def test_compile_cache_goes_to_the_state_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    got = use_compile_cache(tmp_path / "state" / "compile-cache")
    assert got == tmp_path / "state" / "compile-cache" and got.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(got)
    assert os.environ["TRITON_CACHE_DIR"] == str(got / "triton")
    import torch._inductor.config as inductor_config

    assert inductor_config.fx_graph_cache is True


def test_a_cache_folder_the_user_chose_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    assert use_compile_cache(tmp_path / "state") == tmp_path / "mine"
    assert not (tmp_path / "state").exists()


def test_auto_defaults_pick_fp8_and_compile_only_where_they_pay():
    from wan22bot.config import ModelConfig
    from wan22bot.engine.generator import TwoPassGenerator, resolve_compile, resolve_weights

    cpu = torch.device("cpu")
    assert ModelConfig().weights == "auto" and ModelConfig().compile == "auto"
    assert resolve_weights("auto", cpu) == "bf16" and resolve_compile("auto", cpu) is False
    assert resolve_weights("fp8", cpu) == "fp8" and resolve_compile(True, cpu) is True
    g = TwoPassGenerator(ModelConfig())
    assert (g.weights, g.compile) == ("bf16", False)


def test_cast_for_compute_keeps_fp32_values_of_kept_modules_exact():
    """A file's fp32 norms must not pass through bf16 on their way to fp32 compute."""
    from wan22bot.engine.generator import cast_for_compute

    class Model(torch.nn.Module):
        _keep_in_fp32_modules = ["norm"]

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)

    m = Model()
    with torch.no_grad():
        m.norm.weight.copy_(torch.tensor([1.0 + 2**-20, 0.3, 0.7, 1.1]))  # not representable in bf16
    exact = m.norm.weight.clone()
    cast_for_compute(m, torch.bfloat16)
    assert m.proj.weight.dtype == torch.bfloat16
    assert m.norm.weight.dtype == torch.float32
    assert torch.equal(m.norm.weight, exact)


def test_compile_tuning_reaches_inductor_when_the_blocks_are_compiled(monkeypatch):
    import torch._inductor.config as inductor_config

    from wan22bot.config import ModelConfig
    from wan22bot.engine.compile_tuning import apply_compile_tuning
    from wan22bot.engine.generator import TwoPassGenerator
    monkeypatch.setattr(inductor_config, "coordinate_descent_tuning", False)
    assert ModelConfig().compile_tuning == "default"
    TwoPassGenerator(ModelConfig(compile=True, compile_tuning="coordinate-descent")).load()  # the tiny model
    assert inductor_config.coordinate_descent_tuning is True
    apply_compile_tuning("default")
    assert inductor_config.coordinate_descent_tuning is False
    with pytest.raises(ValueError, match="compile tuning"):
        apply_compile_tuning("max")
    with pytest.raises(ValueError, match="compile_tuning"):
        ModelConfig(compile_tuning="max")


def test_qk_prep_setting_reaches_each_expert(monkeypatch):
    """The generator asks qk_prep for each expert with the attention backend that expert got, and
    installs the Triton prep where it is wanted (here forced: the tiny model on the CPU runs SDPA)."""
    from wan22bot.config import ModelConfig
    from wan22bot.engine import qk_prep
    from wan22bot.engine.generator import TwoPassGenerator

    asked, installed = [], []

    def wanted(setting, backend, device, dtype):
        asked.append((setting, backend, device.type, dtype))
        return True, "forced by the test"

    monkeypatch.setattr(qk_prep, "wanted", wanted)
    monkeypatch.setattr(qk_prep, "install", lambda model, per_thread=None, device=None: installed.append((model, device)))
    gen = TwoPassGenerator(ModelConfig(qk_prep="triton", device="cpu"))
    gen.load()
    assert asked == [("triton", "sdpa", "cpu", gen.dtype)] * 2
    # the device the expert runs on, not where its parameters are (swap and offload park them)
    assert installed == [(gen.components.transformer, gen.device), (gen.components.transformer_2, gen.device)]
    assert ModelConfig().qk_prep == "auto"
    with pytest.raises(ValueError, match="qk_prep"):
        ModelConfig(qk_prep="cuda")


def test_block_kernels_setting_reaches_each_expert(monkeypatch):
    """The generator asks fused_block for each expert with the config's setting, fp8 scaling,
    weights and compute dtype, and installs the fused forward where it is wanted (forced here)."""
    from wan22bot.config import ModelConfig
    from wan22bot.engine import fused_block
    from wan22bot.engine.generator import TwoPassGenerator

    asked, installed = [], []

    def wanted(setting, model, device, scaling, weights, dtype):
        asked.append((setting, model, device.type, scaling, weights, dtype))
        return True, "forced by the test"

    monkeypatch.setattr(fused_block, "wanted", wanted)
    monkeypatch.setattr(fused_block, "install", lambda model: installed.append(model))
    gen = TwoPassGenerator(ModelConfig(block_kernels="triton", fp8_scaling="delayed", device="cpu"))
    gen.load()
    comps = gen.components
    assert asked == [("triton", m, "cpu", "delayed", gen.weights, gen.dtype)
                     for m in (comps.transformer, comps.transformer_2)]
    assert installed == [comps.transformer, comps.transformer_2]
    # under offload the layers scale per row, and the question says so
    asked.clear()
    TwoPassGenerator(ModelConfig(fp8_scaling="static", weights="fp8", memory="offload", device="cpu")).load()
    assert [a[3] for a in asked] == ["rowwise", "rowwise"]
    assert ModelConfig().block_kernels == "auto"
    with pytest.raises(ValueError, match="block_kernels"):
        ModelConfig(block_kernels="cuda")
