"""The two-pass generator on the real tiny model: determinism, timings, progress, cancel, the hand loop."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from wan22bot.engine.generator import STAGES, Progress
from wan22bot.engine.presets import PRESETS
from wan22bot.errors import Cancelled, InputError

from .conftest import SMALL_H, SMALL_W, small_request


@contextmanager
def count_expert_calls(gen):
    """Counts forward calls of each expert with real forward hooks."""
    counts = {"transformer": 0, "transformer_2": 0}
    handles = []
    for key in counts:
        model = getattr(gen.components, key)

        def hook(_mod, _inp, _out, key=key):
            counts[key] += 1

        handles.append(model.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def fast_request(photo, **kw):
    p = PRESETS["fast"]
    return small_request(photo, steps=p.steps, switch_step=p.switch_step, cfg=p.cfg, lora=p.lora, **kw)


@pytest.fixture(scope="module")
def base_run(tiny_gen, photo):
    """One fast-preset run with progress recorded and expert calls counted."""
    events: list[Progress] = []
    with count_expert_calls(tiny_gen) as counts:
        out = tiny_gen.generate(fast_request(photo), progress=events.append)
    return out, events, dict(counts)


def test_output_is_uint8_frames_height_width_rgb(base_run):
    out, _, _ = base_run
    assert out.frames.dtype == torch.uint8
    assert tuple(out.frames.shape) == (5, SMALL_H, SMALL_W, 3)
    assert (out.width, out.height, out.seed) == (SMALL_W, SMALL_H, 1234)
    # not a constant image: the decoder produced content
    assert out.frames.float().std() > 1.0


def test_timings_cover_every_stage(base_run):
    out, _, _ = base_run
    for key in ("text_encode", "image_encode", "pass1", "pass2", "vae_decode"):
        assert key in STAGES
        assert out.timings[key] > 0, key


def test_progress_reports_each_pass_step_in_order(base_run):
    _, events, _ = base_run
    steps = [(e.stage, e.step, e.steps, e.total_step, e.total_steps) for e in events if e.stage in ("pass1", "pass2")]
    assert steps == [
        ("pass1", 1, 2, 1, 4),
        ("pass1", 2, 2, 2, 4),
        ("pass2", 1, 2, 3, 4),
        ("pass2", 2, 2, 4, 4),
    ]
    stages = [e.stage for e in events]
    assert stages.index("text_encode") < stages.index("image_encode") < stages.index("pass1")
    assert stages.index("pass2") < stages.index("vae_decode")


def test_pass1_runs_high_noise_expert_and_pass2_low_noise_expert(base_run):
    _, _, counts = base_run
    assert counts == {"transformer": 2, "transformer_2": 2}


def test_same_seed_and_inputs_give_identical_frames(tiny_gen, photo, base_run):
    again = tiny_gen.generate(fast_request(photo))
    assert torch.equal(again.frames, base_run[0].frames)


def test_different_seed_gives_different_frames(tiny_gen, photo, base_run):
    other = tiny_gen.generate(fast_request(photo, seed=99))
    assert not torch.equal(other.frames, base_run[0].frames)
    assert (other.frames.float() - base_run[0].frames.float()).abs().mean() > 0.5


def test_different_prompt_gives_different_frames(tiny_gen, photo, base_run):
    other = tiny_gen.generate(fast_request(photo, prompt="a blue boat in a storm"))
    assert not torch.equal(other.frames, base_run[0].frames)


def test_cancel_raises_at_a_step_boundary_and_generator_stays_usable(tiny_gen, photo):
    events: list[Progress] = []

    def cancel_after_first_step() -> bool:
        return any(e.stage == "pass1" and e.step == 1 for e in events)

    with count_expert_calls(tiny_gen) as counts:
        with pytest.raises(Cancelled, match="step 2 of 4"):
            tiny_gen.generate(fast_request(photo), progress=events.append, should_cancel=cancel_after_first_step)
    assert counts == {"transformer": 1, "transformer_2": 0}
    assert not any(e.stage in ("pass2", "vae_decode") for e in events)
    # the lock was released: the next job runs
    out = tiny_gen.generate(small_request(photo, frames=1, steps=2, switch_step=1))
    assert tuple(out.frames.shape) == (1, SMALL_H, SMALL_W, 3)


def test_cancel_after_the_last_step_stops_before_decoding(tiny_gen, photo):
    events: list[Progress] = []
    with pytest.raises(Cancelled, match="decod"):
        tiny_gen.generate(small_request(photo, frames=1, steps=2, switch_step=1), progress=events.append,
                          should_cancel=lambda: any(e.stage == "pass2" for e in events))
    assert not any(e.stage == "vae_decode" for e in events)


@pytest.mark.parametrize("switch, expect", [(0, {"transformer": 0, "transformer_2": 4}),
                                            (4, {"transformer": 4, "transformer_2": 0})])
def test_switch_step_at_either_end_leaves_one_pass_empty(tiny_gen, photo, switch, expect):
    events: list[Progress] = []
    with count_expert_calls(tiny_gen) as counts:
        out = tiny_gen.generate(small_request(photo, frames=1, switch_step=switch), progress=events.append)
    assert counts == expect
    assert tuple(out.frames.shape) == (1, SMALL_H, SMALL_W, 3)
    done = [(e.stage, e.total_step) for e in events if e.stage in ("pass1", "pass2")]
    assert [t for _, t in done] == [1, 2, 3, 4]
    assert all(s == ("pass1" if t <= switch else "pass2") for s, t in done)
    assert "pass1" in out.timings and "pass2" in out.timings


def test_cfg_above_one_runs_each_expert_twice_per_step(tiny_gen, photo):
    with count_expert_calls(tiny_gen) as counts:
        guided = tiny_gen.generate(small_request(photo, frames=1, cfg=3.5, negative_prompt="static, blurry"))
    assert counts == {"transformer": 4, "transformer_2": 4}
    plain = tiny_gen.generate(small_request(photo, frames=1, cfg=1.0))
    assert not torch.equal(guided.frames, plain.frames)


def test_bad_requests_are_input_errors(tiny_gen, photo):
    with pytest.raises(InputError, match="switch_step"):
        tiny_gen.generate(small_request(photo, steps=4, switch_step=5))
    with pytest.raises(InputError, match="816 and 832"):
        tiny_gen.generate(small_request(photo, width=830))
    with pytest.raises(InputError, match="49 and 53"):
        tiny_gen.generate(small_request(photo, frames=50))
