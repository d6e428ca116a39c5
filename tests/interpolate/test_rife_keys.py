"""The state-dict contract of IFNet and the safety/clarity of load_ifnet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wan22bot.errors import ModelError
from wan22bot.interpolate import IFNet, load_ifnet

from .helpers import random_state_dict

MANIFEST = json.loads((Path(__file__).parent / "ifnet_manifest.json").read_text())


def test_state_dict_matches_published_manifest():
    state = IFNet().state_dict()
    assert MANIFEST["count"] == 158
    assert list(state) == list(MANIFEST["tensors"])
    assert {k: list(v.shape) for k, v in state.items()} == MANIFEST["tensors"]
    assert sum(p.numel() for p in IFNet().parameters()) == MANIFEST["parameters"] == 5_664_776


def test_upstream_prefix_and_training_keys_load(tmp_path):
    state = random_state_dict(3)
    upstream = {f"module.{k}": v for k, v in state.items()}
    upstream["module.teacher.lastconv.0.bias"] = torch.zeros(52)
    upstream["teacher.conv0.0.0.weight"] = torch.zeros(3, 3)
    upstream["caltime.0.weight"] = torch.zeros(16, 3)
    path = tmp_path / "flownet.pkl"
    torch.save(upstream, path)

    net = load_ifnet(path, "cpu", torch.float32)
    loaded = net.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())


def test_wrapped_state_dict_and_dtype(tmp_path):
    path = tmp_path / "wrapped.pkl"
    torch.save({"state_dict": random_state_dict(4)}, path)
    net = load_ifnet(path, "cpu", "bf16")
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}


def test_missing_tensor_is_a_model_error(tmp_path):
    state = random_state_dict()
    del state["block3.convblock.5.beta"]
    path = tmp_path / "short.pkl"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"lack 1 of the 158 .*block3\.convblock\.5\.beta"):
        load_ifnet(path)


def test_other_network_is_a_model_error(tmp_path):
    path = tmp_path / "other.pkl"
    torch.save({"module.block_tea.conv0.0.0.weight": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match="another RIFE version"):
        load_ifnet(path)


def test_wrong_shape_is_a_model_error(tmp_path):
    state = random_state_dict()
    state["block0.lastconv.0.weight"] = torch.zeros(192, 40, 4, 4)  # an older 4.x head
    path = tmp_path / "shape.pkl"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"block0\.lastconv\.0\.weight has shape \(192, 40, 4, 4\), expected \(192, 52, 4, 4\)"):
        load_ifnet(path)


def test_non_finite_weights_are_a_model_error(tmp_path):
    state = random_state_dict()
    state["encode.cnn1.bias"][3] = float("nan")
    path = tmp_path / "nan.pkl"
    torch.save(state, path)
    with pytest.raises(ModelError, match="encode.cnn1.bias contains NaN"):
        load_ifnet(path)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "tensor"])
def test_corrupt_file_is_a_model_error(tmp_path, kind):
    path = tmp_path / "flownet.pkl"
    if kind == "garbage":
        path.write_bytes(bytes(range(256)) * 64)
    elif kind == "truncated":
        torch.save(random_state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        torch.save(torch.zeros(3), path)
    with pytest.raises(ModelError, match=str(path.name)):
        load_ifnet(path)


class _Planted:
    """Unpickling this runs ``open(marker, "w")``: it must never happen when loading weights."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_runs_no_pickled_code(tmp_path):
    marker = tmp_path / "was-executed"
    path = tmp_path / "evil.pkl"
    torch.save({"block0.conv0.0.0.weight": _Planted(marker)}, path)
    with pytest.raises(ModelError, match="not a readable"):
        load_ifnet(path)
    assert not marker.exists()


def test_missing_file_names_the_fetch_command(tmp_path):
    with pytest.raises(ModelError, match="wan22bot fetch-rife"):
        load_ifnet(tmp_path / "nope" / "flownet.pkl")
    with pytest.raises(ModelError, match="is not a file"):
        load_ifnet(tmp_path)
