"""One frame limit per model kind, from where the model really stops, enforced in config, `generate`,
the job settings and (in tests/http, tests/discord) the API and the slash command's choices."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from wan22bot.cli import main
from wan22bot.config import MAX_FRAMES, config_from_dict, max_frames
from wan22bot.engine.tiny import TRANSFORMER_CONFIG
from wan22bot.errors import ConfigError, InputError
from wan22bot.jobs import JobOptions
from wan22bot.render import resolve_settings

from .helpers import EXAMPLE_PHOTO


def frames_for_latents(latent_frames: int) -> int:
    return (latent_frames - 1) * 4 + 1  # the VAE packs 4 frames per latent after the first


def test_tiny_limit_is_where_the_tiny_transformer_really_stops():
    rope_len = TRANSFORMER_CONFIG["rope_max_seq_len"]
    assert MAX_FRAMES["tiny"] == frames_for_latents(rope_len) == 125
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()
    text = torch.zeros(1, 4, TRANSFORMER_CONFIG["text_dim"])

    def run(latent_frames: int) -> torch.Tensor:
        x = torch.zeros(1, TRANSFORMER_CONFIG["in_channels"], latent_frames, 2, 2)
        with torch.no_grad():
            return model(x, timestep=torch.tensor([500]), encoder_hidden_states=text, return_dict=False)[0]

    assert run(rope_len).shape[2] == rope_len  # 125 frames: fine
    with pytest.raises(RuntimeError):  # 129 frames: the internal error users saw at 161
        run(rope_len + 1)


def test_config_refuses_more_frames_than_the_model_makes():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"generation": {"frames": 161}})
    msg = str(err.value)
    assert "generation.frames" in msg and "tiny model makes at most 125 frames" in msg
    assert config_from_dict({"generation": {"frames": 125}}).generation.frames == 125
    real = config_from_dict({"model": {"kind": "wan2.2-i2v-a14b", "path": "/models/wan"}, "generation": {"frames": 161}})
    assert real.generation.frames == 161 == max_frames("wan2.2-i2v-a14b")
    with pytest.raises(ConfigError, match="at most 161"):
        config_from_dict({"model": {"kind": "wan2.2-i2v-a14b", "path": "/models/wan"}, "generation": {"frames": 165}})


def test_job_settings_refuse_more_frames_than_the_model_makes():
    cfg = config_from_dict({})
    with pytest.raises(InputError, match="tiny model makes at most 125 frames"):
        resolve_settings(cfg, JobOptions(frames=129), (64, 96), (96, 144, 25))
    assert resolve_settings(cfg, JobOptions(frames=125), (64, 96), (96, 144, 25)).frames == 125


def test_generate_161_frames_on_the_tiny_model_is_a_clear_error(tmp_path, capsys):
    conf = tmp_path / "config.toml"
    conf.write_text('[paths]\ninput = "in"\noutput = "out"\nstate = "state"\n', encoding="utf-8")
    rc = main(["generate", str(EXAMPLE_PHOTO), "--frames", "161", "-o", str(tmp_path / "never.mp4"),
               "-c", str(conf), "--quiet"])
    err = capsys.readouterr().err
    assert rc == ConfigError.exit_code == 2
    assert err.strip() == ("wan22bot: error: --frames: frames is 161, but the tiny model makes at most 125 "
                           "frames; ask for 125 or fewer")
    assert not (tmp_path / "never.mp4").exists()
