"""The real Diffusers-folder loader, fed the tiny components saved with save_pretrained."""

from __future__ import annotations

import shutil

import pytest
import torch

from wan22bot.config import ModelConfig
from wan22bot.engine.components import FOLDER_PARTS, check_model_files, load_components
from wan22bot.engine.generator import TwoPassGenerator
from wan22bot.engine.tiny import tiny_components
from wan22bot.errors import ModelError

from .conftest import SMALL_H, SMALL_W, small_request


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models") / "Wan2.2-I2V-tiny-Diffusers"
    for name, part in tiny_components(0).items():
        part.save_pretrained(root / name)
    return root


def real(path, **kw) -> ModelConfig:
    return ModelConfig(kind="wan2.2-i2v-a14b", path=path, device="cpu", **kw)


def test_saved_folder_has_every_part(model_dir):
    for part in FOLDER_PARTS:
        assert (model_dir / part).is_dir(), part
    assert check_model_files(real(model_dir)) == []


def test_folder_loader_produces_a_video(model_dir, tiny_gen, photo):
    gen = TwoPassGenerator(real(model_dir))
    assert gen.defaults == (832, 1216, 81)  # the real model's size, before anything is loaded
    req = small_request(photo, max_sequence_length=32)
    out = gen.generate(req)
    assert gen.components.description.endswith(str(model_dir))
    assert out.frames.dtype == torch.uint8 and tuple(out.frames.shape) == (5, SMALL_H, SMALL_W, 3)
    assert out.timings["pass1"] > 0 and out.timings["pass2"] > 0
    # the same weights as the built-in tiny model, so the same video (up to float rounding); an expert
    # loaded into the wrong slot, or a missing part, would change it completely
    ref = tiny_gen.generate(small_request(photo, max_sequence_length=32)).frames
    diff = (out.frames.int() - ref.int()).abs()
    assert diff.max() <= 4 and diff.float().mean() < 0.1, (diff.max(), diff.float().mean())


def test_missing_component_folder_names_it(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelError) as exc:
        TwoPassGenerator(real(broken)).load()
    msg = str(exc.value)
    assert "'vae'" in msg and str(broken) in msg


def test_missing_root_folder_names_the_path(tmp_path):
    missing = tmp_path / "not-downloaded-yet"
    with pytest.raises(ModelError) as exc:
        load_components(real(missing), torch.device("cpu"), torch.float32)
    assert str(missing) in str(exc.value) and "not a folder" in str(exc.value)


def test_check_model_files_lists_each_problem(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "vae")
    (broken / "transformer_2" / "config.json").unlink()
    for f in (broken / "text_encoder").glob("*.safetensors"):
        f.unlink()
    problems = check_model_files(real(broken, lora_high=tmp_path / "lightx2v_high.safetensors"))
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "'vae'" in text
    assert str(broken / "transformer_2") in text and "config.json" in text
    assert str(broken / "text_encoder") in text and "weight files" in text
    assert "model.lora_high" in text and "lightx2v_high.safetensors" in text
    # every problem reaches the user at load time too
    with pytest.raises(ModelError) as exc:
        load_components(real(broken), torch.device("cpu"), torch.float32)
    assert "'vae'" in str(exc.value) and "transformer_2" in str(exc.value) and "text_encoder" in str(exc.value)


def test_tiny_model_needs_no_files():
    assert check_model_files(ModelConfig(kind="tiny")) == []
