"""`attention = "auto"`: which kernel it picks, in which order, and when it refuses one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wan22bot.engine import attention
from wan22bot.engine.attention import AttentionChoice, choose_auto, self_check

CUDA = torch.device("cuda")  # only named: nothing below touches a GPU


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def test_self_check_measures_a_correct_kernel_as_close_and_a_broken_one_as_far():
    cpu = torch.device("cpu")
    good = self_check(_sdpa, cpu, tokens=256, heads=2, dim=32)
    assert good < 0.01  # bf16 inputs, fp32 reference: only bf16 rounding of the output
    wrong = self_check(lambda q, k, v: torch.zeros_like(q), cpu, tokens=256, heads=2, dim=32)
    assert wrong == pytest.approx(1.0)
    swapped = self_check(lambda q, k, v: _sdpa(k, q, v), cpu, tokens=256, heads=2, dim=32)
    assert swapped > attention.SELF_CHECK_MAX_ERROR
    nan = self_check(lambda q, k, v: torch.full_like(q, float("nan")), cpu, tokens=256, heads=2, dim=32)
    assert math.isinf(nan)


def _fake_reasons(missing: set[str]):
    return lambda name, device: "not installed here" if name in missing else None


def test_auto_prefers_sage_then_fa3_then_sdpa():
    checked = []

    def checker(core, device):
        checked.append(core)
        return 0.03

    pick = choose_auto(CUDA, checker=checker, reason=_fake_reasons(set()))
    assert (pick.backend, pick.self_check_error, pick.skipped) == ("sage-fused", 0.03, ())
    assert len(checked) == 1  # the first good candidate stops the search

    pick = choose_auto(CUDA, checker=checker, reason=_fake_reasons(set()), compiled=False)
    assert (pick.backend, pick.skipped) == ("sage-warp", ())  # sage-fused needs the compiled blocks

    pick = choose_auto(CUDA, checker=lambda c, d: 0.03, reason=_fake_reasons({"sage-fused", "sage-warp"}))
    assert (pick.backend, pick.skipped) == ("sage", ())  # not Hopper: plain sage, no extra line

    pick = choose_auto(CUDA, checker=lambda c, d: 0.004, reason=_fake_reasons({"sage-fused", "sage-warp", "sage"}))
    assert pick.backend == "fa3"
    assert pick.skipped == ("sage: not installed here",)

    pick = choose_auto(CUDA, checker=lambda c, d: 0.004, reason=_fake_reasons({"sage-fused", "sage-warp", "sage", "fa3"}))
    assert pick.backend == "sdpa" and pick.self_check_error is None
    assert [s.split(":")[0] for s in pick.skipped] == ["sage", "fa3"]


def test_auto_skips_a_kernel_that_fails_or_misses_its_self_check():
    errors = iter([0.5, 0.5, 0.5, 0.004])  # sage-fused, sage-warp and sage come back wrong, fa3 right
    pick = choose_auto(CUDA, checker=lambda c, d: next(errors), reason=_fake_reasons(set()))
    assert pick.backend == "fa3"
    assert "sage-fused: self-check error 0.5000" in pick.skipped[0]
    assert "sage-warp: self-check error 0.5000" in pick.skipped[1]
    assert "sage: self-check error 0.5000" in pick.skipped[2]

    def raising(core, device):
        raise RuntimeError("no kernel image is available for execution on the device")

    pick = choose_auto(CUDA, checker=raising, reason=_fake_reasons(set()))
    assert pick.backend == "sdpa"
    assert all("raised RuntimeError" in s for s in pick.skipped)


def test_auto_on_a_cpu_is_sdpa_without_a_check():
    pick = choose_auto(torch.device("cpu"), checker=lambda c, d: pytest.fail("no check on a CPU"))
    assert pick == AttentionChoice("auto", "sdpa")


def test_auto_treats_sageattention_1x_as_too_slow(monkeypatch):
    monkeypatch.setattr(attention, "unavailable_reason", lambda name, device: None)
    monkeypatch.setattr(attention, "sage_version", lambda: "1.0.6")
    assert "1.x" in attention.auto_candidate_reason("sage", CUDA)
    monkeypatch.setattr(attention, "sage_version", lambda: "2.2.0")
    assert attention.auto_candidate_reason("sage", CUDA) is None


def test_named_backends_that_cannot_run_here_are_refused_with_the_reason():
    from wan22bot.errors import ModelError

    model = torch.nn.Module()
    for name in ("fa3", "cudnn", "sage"):
        with pytest.raises(ModelError, match=f"attention backend '{name}' cannot run here"):
            attention.apply_attention_backend(model, name, torch.device("cpu"))
    report = attention.available_backends(torch.device("cpu"))
    assert report["sdpa"] == "ok" and report["fa3"] != "ok" and report["fa3-fp8"] != "ok"


def test_fa3_fp8_quantiser_keeps_values_within_e4m3_rounding():
    from wan22bot.engine.fa3_attention import quantize_per_head

    torch.manual_seed(0)
    x = torch.randn(1, 64, 4, 32, dtype=torch.bfloat16) * torch.tensor([1.0, 10.0, 0.1, 100.0]).view(1, 1, 4, 1)
    q8, scale = quantize_per_head(x)
    assert q8.dtype == torch.float8_e4m3fn and scale.shape == (1, 4)
    back = q8.float() * scale[:, None, :, None]
    rel = (back - x.float()).norm() / x.float().norm()
    assert rel < 0.04  # e4m3 keeps 3 mantissa bits: about 2-3% relative error


def test_one_experts_backend_does_not_leak_into_the_other():
    """diffusers' set_attention_backend also sets a process-wide default; an expert left on
    `auto` (SDPA) must keep native SDPA when the other expert asked for another kernel."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from wan22bot.engine.tiny import tiny_components

    parts = tiny_components(0)
    high, low = parts["transformer"], parts["transformer_2"]
    cpu = torch.device("cpu")
    attention.apply_attention_backend(high, "math", cpu)
    attention.apply_attention_backend(low, "auto", cpu)

    def backends(model):
        return {blk.attn1.processor._attention_backend for blk in model.blocks}

    assert backends(high) == {AttentionBackendName._NATIVE_MATH}
    assert backends(low) == {AttentionBackendName.NATIVE}
    assert _AttentionBackendRegistry.get_active_backend()[0] == AttentionBackendName.NATIVE

    # the other order: the explicit choice comes last and must not become the process default
    other = tiny_components(1)["transformer"]
    attention.apply_attention_backend(other, "math", cpu)
    assert backends(other) == {AttentionBackendName._NATIVE_MATH}
    assert _AttentionBackendRegistry.get_active_backend()[0] == AttentionBackendName.NATIVE
