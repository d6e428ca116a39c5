"""Shared fixtures: tiny experts / VAE / UMT5 in ComfyUI's formats, and a sentencepiece model trained here."""

from __future__ import annotations

import pytest
import torch

from . import writers as W


@pytest.fixture(scope="session")
def spm_proto(tmp_path_factory) -> bytes:
    return W.train_spiece(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="session")
def expert_high():
    return W.tiny_expert(11)


@pytest.fixture(scope="session")
def expert_low():
    return W.tiny_expert(12)


def expert_inputs(seed: int = 0):
    g = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn(1, 36, 2, 8, 8, generator=g)
    text = torch.randn(1, 8, W.EXPERT_CONFIG["text_dim"], generator=g)
    return dict(hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=text, return_dict=False)


@torch.no_grad()
def run_expert(model) -> torch.Tensor:
    return model(**expert_inputs())[0]


def built(x):
    """A component, or the zero-argument builder the loader may hand out instead."""
    return x if isinstance(x, torch.nn.Module) else x()
