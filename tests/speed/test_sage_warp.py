"""`attention = "sage-warp"`: SageAttention 2's sm90 kernel with per-warp Q/K quantisation, opt-in.

No GPU here: the selection and fallback logic is checked against a stand-in `sageattention` module
that records the calls it gets."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from wan22bot.bench import levers
from wan22bot.config import ModelConfig
from wan22bot.engine import attention, sage_attention
from wan22bot.engine.attention import choose_auto
from wan22bot.engine.sage_attention import pick_sage_warp
from wan22bot.errors import ModelError

CUDA = torch.device("cuda")  # only named


def _sage(with_sm90: bool = True, name: str = "sage_standin"):
    """A module with sageattention's entry points; each call is recorded as (function, kwargs)."""
    calls = []

    def entry(fn_name):
        def fn(q, k, v, **kw):
            calls.append((fn_name, kw))
            return q + 1
        return fn

    mod = types.ModuleType(name)
    mod.sageattn = entry("sageattn")
    core = types.ModuleType(f"{name}.core")
    core.sageattn_qk_int8_pv_fp8_cuda_sm90 = entry("sm90")
    if with_sm90:
        mod.sageattn_qk_int8_pv_fp8_cuda_sm90 = core.sageattn_qk_int8_pv_fp8_cuda_sm90
    return mod, core, calls


def _qkv():
    return tuple(torch.zeros(1, 8, 2, 4) for _ in range(3))


def test_on_sm90_it_calls_the_sm90_kernel_with_per_warp_quantisation():
    mod, _, calls = _sage()
    fn, what = pick_sage_warp((9, 0), mod)
    fn(*_qkv())
    assert calls == [("sm90", {"tensor_layout": "NHD", "is_causal": False, "qk_quant_gran": "per_warp",
                               "pv_accum_dtype": "fp32+fp32"})]
    assert "per warp" in what


def test_an_older_2x_release_has_the_sm90_kernel_in_its_core_module_only(monkeypatch):
    mod, core, calls = _sage(with_sm90=False, name="old_sage_standin")
    monkeypatch.setitem(sys.modules, "old_sage_standin", mod)
    monkeypatch.setitem(sys.modules, "old_sage_standin.core", core)
    fn, _ = pick_sage_warp((9, 0), mod)
    fn(*_qkv())
    assert calls[0][0] == "sm90" and calls[0][1]["qk_quant_gran"] == "per_warp"


@pytest.mark.parametrize("cap", [(8, 0), (8, 9), (12, 0)])
def test_other_gpus_fall_back_to_sageattn_and_say_so(cap):
    mod, _, calls = _sage()
    fn, what = pick_sage_warp(cap, mod)
    fn(*_qkv())
    assert calls == [("sageattn", {"tensor_layout": "NHD", "is_causal": False})]
    assert f"sm{cap[0]}{cap[1]} is not sm90" in what


def test_the_core_picks_once_per_capability_and_logs_what_it_runs(monkeypatch, caplog):
    mod, _, calls = _sage(name="sageattention")
    monkeypatch.setitem(sys.modules, "sageattention", mod)
    monkeypatch.setattr(sage_attention, "_WARP", {})
    caps = iter([(8, 9), (8, 9), (9, 0)])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: next(caps))
    with caplog.at_level(logging.INFO, logger="wan22bot.engine.sage_attention"):
        for _ in range(3):
            sage_attention.sage_warp_core(*_qkv())
    assert [c[0] for c in calls] == ["sageattn", "sageattn", "sm90"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "sm89 is not sm90" in lines[0] and "per warp" in lines[1]


def test_availability_names_what_is_missing(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(attention, "sage_version", lambda: None)
    assert "not installed" in attention.unavailable_reason("sage-warp", CUDA)
    monkeypatch.setattr(attention, "sage_version", lambda: "1.0.6")
    assert "1.x" in attention.unavailable_reason("sage-warp", CUDA)
    monkeypatch.setattr(attention, "sage_version", lambda: "2.2.0")
    assert attention.unavailable_reason("sage-warp", CUDA) is None
    assert attention.unavailable_reason("sage-warp", cpu) == "needs a CUDA device"
    with pytest.raises(ModelError, match="'sage-warp' cannot run here: needs a CUDA device; use 'auto' or 'sdpa'"):
        attention.apply_attention_backend(torch.nn.Module(), "sage-warp", cpu)
    assert "sage-warp" in attention.available_backends(cpu)


def test_auto_picks_it_on_hopper_only(monkeypatch):
    # measured on an H200 at 81 frames: 9.110 s against sage's 9.188 s per forward, same error
    assert attention.AUTO_ORDER[1:3] == ("sage-warp", "sage")
    monkeypatch.setattr(attention, "sage_version", lambda: "2.2.0")
    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0))
    pick = choose_auto(CUDA, checker=lambda core, device: 0.001, compiled=False)  # sage-fused wants compile
    assert pick.backend == "sage-warp"
    monkeypatch.setattr(attention, "_capability", lambda device: (12, 0))  # an RTX 50xx
    pick = choose_auto(CUDA, checker=lambda core, device: 0.001)
    assert (pick.backend, pick.skipped) == ("sage", ())
    monkeypatch.setattr(attention, "sage_version", lambda: "1.0.6")
    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0))
    pick = choose_auto(CUDA, checker=lambda core, device: 0.001, reason=attention.auto_candidate_reason)
    assert pick.backend != "sage-warp" and pick.backend != "sage"


def test_it_has_its_own_opaque_core():
    assert attention.core_for("sage-warp") is not attention.core_for("sage")


def test_config_accepts_the_name():
    assert ModelConfig(attention_high="sage-warp", attention_low="sage-warp").attention_low == "sage-warp"
    with pytest.raises(ValueError, match="sage-warp"):
        ModelConfig(attention_high="sagewarp")


def test_the_levers_bench_knows_the_variant_part():
    assert levers.CORES["sagewarp"] == "sage-warp"
    for backend in levers.CORES.values():
        assert attention.unavailable_reason(backend, CUDA) != f"unknown attention backend '{backend}'"
