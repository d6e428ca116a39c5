"""fp8 linear layers: row-wise, static and delayed scales, computed with torch._scaled_mm on the CPU.

References are the bf16 layer's own output; the bounds are e4m3 rounding (3 mantissa bits).
"""

from __future__ import annotations

import pytest
import torch

import wan22bot.engine.fp8_linear as fp8
from wan22bot.engine.fp8_linear import FP8Linear, convert_to_fp8, restore_linears


def _layer(seed: int = 0, fin: int = 64, fout: int = 48) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(fin, fout).to(torch.bfloat16)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("scaling", fp8.SCALINGS)
def test_each_scaling_stays_within_fp8_rounding_of_bf16(scaling):
    lin = _layer()
    x = torch.randn(2, 300, 64, dtype=torch.bfloat16)
    f = FP8Linear(lin, use_scaled_mm=True, scaling=scaling)
    with torch.no_grad():
        assert _rel(f(x), lin(x)) < 0.06


@pytest.mark.parametrize("scaling", ["rowwise", "static"])
def test_eager_chunking_gives_the_same_numbers(scaling, monkeypatch):
    """Outside torch.compile long activations are quantised in row chunks (bounded temporaries on
    a 32 GB card); per-row and frozen per-tensor scales make that exact."""
    lin = _layer(1)
    x = torch.randn(1000, 64, dtype=torch.bfloat16)
    f = FP8Linear(lin, use_scaled_mm=True, scaling=scaling)
    with torch.no_grad():
        whole = f(x)  # 1000 rows <= the default chunk: one piece (and the calibration for static)
        monkeypatch.setattr(fp8, "EAGER_CHUNK_ROWS", 96)
        chunked = f(x)
    assert torch.equal(whole, chunked)


def test_static_scale_is_calibrated_once_then_frozen():
    lin = _layer(2)
    f = FP8Linear(lin, use_scaled_mm=True, scaling="static")
    assert not f.calibrated
    small = torch.randn(50, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        f(small)
        assert f.calibrated
        frozen = f.amax_history.clone()
        assert frozen[0] == small.abs().amax().float()
        big = small * 100  # beyond the calibrated range: clamped, not rescaled
        f(big)
    assert torch.equal(f.amax_history, frozen)
    f.reset_calibration()
    assert not f.calibrated and f.amax_history.abs().sum() == 0


def test_delayed_scale_follows_earlier_calls():
    lin = _layer(3)
    f = FP8Linear(lin, use_scaled_mm=True, scaling="delayed")
    x = torch.randn(50, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        f(x)  # calibration
        f(x * 4)  # uses the calibrated scale, records 4x
        assert f.amax_history[0] == (x * 4).abs().amax().float()
        assert f.amax_history.amax() == (x * 4).abs().amax().float()
        out = f(x * 4)  # now scaled from the 4x history: as accurate as a fresh per-tensor scale
    assert _rel(out, lin(x * 4)) < 0.06


def test_unknown_scaling_is_refused():
    with pytest.raises(ValueError, match="fp8 scaling must be one of"):
        FP8Linear(_layer(), scaling="per-block")


def test_convert_and_restore_round_trip_the_module_structure():
    torch.manual_seed(4)
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))])
    model.to(torch.bfloat16)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert convert_to_fp8(model, use_scaled_mm=True, scaling="static") == 2
    assert all(isinstance(m, FP8Linear) for m in (model.blocks[0][0], model.blocks[0][2]))
    assert restore_linears(model) == 2
    model.load_state_dict(saved, strict=True)
    assert all(type(m) is torch.nn.Linear for m in (model.blocks[0][0], model.blocks[0][2]))


@pytest.mark.parametrize("scaling", ["rowwise", "static"])
def test_eager_quantisation_never_holds_the_whole_activation_in_fp32(scaling):
    """At 81 frames the FFN activation is 82,992 x 13,824: one fp32 copy of it is 4.6 GB, and the
    unchunked path held two at once beside a 14 GB fp8 expert, which a 32 GB card cannot spare.
    The largest single allocation of a forward must be one chunk's fp32 copy, not the whole."""
    from torch.profiler import ProfilerActivity, profile

    rows, fin = 40_000, 256
    f = FP8Linear(_layer(5, fin, 32), use_scaled_mm=True, scaling=scaling)
    x = torch.randn(rows, fin, dtype=torch.bfloat16)
    with torch.no_grad():
        f(x)  # calibration (static) happens outside the measured call
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            f(x)
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert largest <= fp8.EAGER_CHUNK_ROWS * fin * 4
    assert largest < rows * fin * 4


def test_a_calibrating_forward_runs_uncompiled_and_only_the_frozen_graph_is_compiled():
    """The calibrating call's graph would be used once; under eager_while_calibrating torch.compile
    skips it, and the next call compiles the graph with the frozen scale."""
    import torch._dynamo

    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    lin = FP8Linear(_layer(3), use_scaled_mm=True, scaling="static")
    model = torch.nn.Sequential(lin)
    model.compile(backend=backend, fullgraph=True)
    x = torch.randn(40, 64, dtype=torch.bfloat16)
    assert fp8.needs_calibration(model)
    with torch.no_grad():
        with fp8.eager_while_calibrating(model) as eager:
            first = model(x)
        assert eager and graphs == [] and lin.calibrated and not fp8.needs_calibration(model)
        with fp8.eager_while_calibrating(model) as eager:
            second = model(x)
    assert not eager and len(graphs) == 1 and "amax" not in graphs[0].replace("amax_history", "")
    assert torch.equal(first, second)  # the same frozen scale either way
    torch._dynamo.reset()


def test_only_uncalibrated_per_tensor_layers_ask_for_an_eager_call():
    rowwise = torch.nn.Sequential(FP8Linear(_layer(4), use_scaled_mm=True, scaling="rowwise"))
    dequantising = torch.nn.Sequential(FP8Linear(_layer(4), use_scaled_mm=False, scaling="static"))
    delayed = torch.nn.Sequential(FP8Linear(_layer(4), use_scaled_mm=True, scaling="delayed"))
    assert not fp8.needs_calibration(rowwise) and not fp8.needs_calibration(dequantising)
    assert fp8.needs_calibration(delayed)
    with fp8.eager_while_calibrating(delayed, compiled=False) as eager:
        assert not eager  # nothing is compiled: nothing to skip


def test_a_layer_no_forward_reaches_does_not_keep_later_calls_eager():
    used = FP8Linear(_layer(5), use_scaled_mm=True, scaling="static")
    unused = FP8Linear(_layer(6), use_scaled_mm=True, scaling="static")  # e.g. a projection fused away
    model = torch.nn.ModuleDict({"used": used, "unused": unused})
    assert fp8.needs_calibration(model)
    with torch.no_grad():
        used(torch.randn(8, 64, dtype=torch.bfloat16))
    assert not unused.calibrated and not fp8.needs_calibration(model)
    used.reset_calibration()  # a LoRA switch resets them all
    assert fp8.needs_calibration(model)


def test_without_set_stance_the_calibrating_call_compiles_as_before(monkeypatch):
    """torch before 2.6 has no torch.compiler.set_stance: nothing is forced, nothing fails."""
    monkeypatch.delattr(torch.compiler, "set_stance")
    model = torch.nn.Sequential(FP8Linear(_layer(7), use_scaled_mm=True, scaling="static"))
    with fp8.eager_while_calibrating(model) as eager:
        assert not eager

