"""ComfyUI's euler + "simple" schedule on the shifted flow model (what the LightX2V LoRAs expect)."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from wan22bot.engine.schedule import ComfySimpleFlowEuler, comfy_simple_sigmas, make_scheduler, simple_unshifted

SHIFT5 = [1.0, 0.9375, 0.8333, 0.625, 0.0]
SHIFT8 = [1.0, 0.96, 0.8889, 0.7273, 0.0]


@pytest.mark.parametrize("shift, expected", [(5.0, SHIFT5), (8.0, SHIFT8)])
def test_comfy_simple_sigmas_match_comfyui(shift, expected):
    got = comfy_simple_sigmas(4, shift)
    assert len(got) == 5
    assert got == pytest.approx(expected, abs=1e-4)


def test_simple_unshifted_picks_every_quarter_from_the_top():
    assert simple_unshifted(4) == pytest.approx([1.0, 0.75, 0.5, 0.25])
    with pytest.raises(ValueError):
        simple_unshifted(0)


@pytest.mark.parametrize("shift, expected", [(5.0, SHIFT5), (8.0, SHIFT8)])
def test_scheduler_sigmas_and_timesteps(shift, expected):
    for sched in (make_scheduler(shift), ComfySimpleFlowEuler(num_train_timesteps=1000, shift=shift)):
        sched.set_timesteps(4)
        sigmas = sched.sigmas.tolist()
        assert sigmas == pytest.approx(expected, abs=1e-4)
        # the model is given sigma * 1000 as its timestep
        assert sched.timesteps.tolist() == pytest.approx([s * 1000 for s in expected[:-1]], abs=0.1)


def test_diffusers_default_schedule_is_different():
    """Diffusers spaces the *shifted* sigmas linearly: 1, .9097, .7173, .0244 at shift 5 - not ComfyUI's."""
    default = FlowMatchEulerDiscreteScheduler(shift=5.0)
    default.set_timesteps(4)
    d = default.sigmas.tolist()
    assert d == pytest.approx([1.0, 0.9097, 0.7173, 0.0244, 0.0], abs=1e-3)
    ours = comfy_simple_sigmas(4, 5.0)
    assert max(abs(a - b) for a, b in zip(d, ours)) > 0.5  # the last step is nowhere near


def test_pass_split_matches_boundary_ratio():
    """At shift 5 and 8 the first two timesteps are >= 900 (high-noise expert), the last two below."""
    for shift in (5.0, 8.0):
        s = make_scheduler(shift)
        s.set_timesteps(4)
        t = s.timesteps.tolist()
        assert [x >= 900 for x in t] == [True, True, False, False]


def test_more_steps_are_monotonic_and_end_at_zero():
    s = make_scheduler(5.0)
    s.set_timesteps(20)
    sig = s.sigmas.tolist()
    assert len(sig) == 21 and sig[0] == pytest.approx(1.0) and sig[-1] == 0.0
    assert all(a > b for a, b in zip(sig, sig[1:]))
    assert sig[:-1] == pytest.approx(comfy_simple_sigmas(20, 5.0)[:-1], abs=1e-5)


def test_euler_step_is_x_plus_dsigma_times_v():
    s = make_scheduler(5.0)
    s.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    sig = comfy_simple_sigmas(4, 5.0)
    ref = x.double()
    for i, t in enumerate(s.timesteps):
        v = torch.randn(x.shape, generator=g)
        x = s.step(v, t, x, return_dict=False)[0]
        ref = ref + (sig[i + 1] - sig[i]) * v.double()
        torch.testing.assert_close(x.double(), ref, rtol=0, atol=1e-5)
    # after the last step sigma is 0: the sample is fully denoised
    assert s.step_index == 4
