"""ComfyUI's "simple" scheduler on a shifted flow-matching model, as a diffusers scheduler.

ComfyUI (ModelSamplingSD3, shift s) tabulates sigma(t) = s*t / (1 + (s-1)*t) at t = (i+1)/1000 and its
"simple" scheduler takes every (1000/N)-th entry from the top, then appends 0. For N=4 that is
t = 1, .75, .5, .25 -> sigmas 1.0, 0.9375, 0.8333, 0.625 at shift 5. The LightX2V 4-step LoRAs were
distilled for exactly these timesteps. Diffusers' default `set_timesteps` spaces the *shifted*
sigmas linearly instead (1, .91, .72, .02 at shift 5), which is a different sampler, so we hand it
the unshifted t values and let the scheduler apply the same shift formula.
"""

from __future__ import annotations

from diffusers import FlowMatchEulerDiscreteScheduler


def simple_unshifted(num_steps: int, num_train_timesteps: int = 1000) -> list[float]:
    """ComfyUI's simple_scheduler picks, before shifting: t = 1 - floor(x*1000/N)/1000 for x in 0..N-1."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    return [(num_train_timesteps - int(x * num_train_timesteps / num_steps)) / num_train_timesteps for x in range(num_steps)]


def shifted(t: float, shift: float) -> float:
    return shift * t / (1.0 + (shift - 1.0) * t)


def comfy_simple_sigmas(num_steps: int, shift: float) -> list[float]:
    """The sigmas ComfyUI samples with, terminal 0 included (N+1 values)."""
    return [shifted(t, shift) for t in simple_unshifted(num_steps)] + [0.0]


class ComfySimpleFlowEuler(FlowMatchEulerDiscreteScheduler):
    """Euler on flow matching with ComfyUI's "simple" spacing. `x += (sigma_next - sigma) * v`."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):  # noqa: D401
        if sigmas is None and timesteps is None:
            sigmas = simple_unshifted(num_inference_steps, self.config.num_train_timesteps)
            num_inference_steps = None
        super().set_timesteps(num_inference_steps, device, sigmas=sigmas, mu=mu, timesteps=timesteps)


def make_scheduler(shift: float) -> ComfySimpleFlowEuler:
    # use_dynamic_shifting must stay off: the shift is a constant of the workflow, not of resolution.
    return ComfySimpleFlowEuler(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False)
