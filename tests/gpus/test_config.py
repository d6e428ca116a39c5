"""[gpus] validation and the worker processes' environment."""

from __future__ import annotations

import pytest

from wan22bot.config import config_from_dict
from wan22bot.errors import ConfigError
from wan22bot.gpus.supervisor import MULTICAST_OFF, child_env


def cfg(gpus: dict, kind: str = "tiny"):
    model = {"kind": kind, "device": "cpu"} if kind == "tiny" else {"kind": kind, "path": "/nowhere"}
    return config_from_dict({"model": model, "gpus": gpus})


def test_defaults_are_the_one_model_device():
    c = cfg({})
    assert c.devices == ["cpu"] and c.gpus.mode == "per-device"
    assert cfg({"devices": ["cuda:0", "cuda:1"]}).devices == ["cuda:0", "cuda:1"]


def test_one_listed_device_is_the_model_device():
    assert config_from_dict({"gpus": {"devices": ["cuda:1"]}}).model.device == "cuda:1"
    with pytest.raises(ConfigError, match="name the device in one place"):
        config_from_dict({"model": {"device": "cuda:0"}, "gpus": {"devices": ["cuda:1"]}})


@pytest.mark.parametrize("gpus, words", [
    ({"mode": "both"}, ["gpus.mode", "'per-device' or 'split'"]),
    ({"devices": ["gpu1"]}, ["'gpu1' is not a device", "cuda:N"]),
    ({"devices": ["cuda:x"]}, ["'cuda:x' is not a device"]),
    ({"devices": ["cuda:0", "cuda:0"]}, ["listed twice"]),
    ({"devices": ["cpu", "cuda:0"]}, ["mixed"]),
    ({"devices": ["cpu"], "mode": "split"}, ["at least two devices", "per-device"]),
    ({"mode": "split"}, ["at least two devices"]),
    ({"devices": ["cpu"] * 3, "mode": "split"}, ["2 attention heads do not divide among 3", "[2]"]),
    ({"devices": ["cpu"] * 2, "mode": "split", "split_engine": "diffusers"}, ["needs CUDA devices", "ulysses"]),
    ({"split_engine": "ring"}, ["gpus.split_engine"]),
])
def test_bad_gpus_settings_are_one_clear_error(gpus, words):
    with pytest.raises(ConfigError) as e:
        cfg(gpus)
    for w in words:
        assert w in str(e.value)


def test_split_device_count_must_divide_the_a14b_heads():
    with pytest.raises(ConfigError, match="40 attention heads do not divide among 3"):
        cfg({"devices": ["cuda:0", "cuda:1", "cuda:2"], "mode": "split"}, kind="wan2.2-i2v-a14b")
    assert cfg({"devices": [f"cuda:{i}" for i in range(4)], "mode": "split"}, kind="wan2.2-i2v-a14b").devices


def test_each_process_sees_only_its_card_and_multicast_is_off():
    devices = ["cuda:2", "cuda:5"]
    env = [child_env(devices, i, split=False, base={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}) for i in range(2)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env] == ["2", "5"]
    split = [child_env(devices, i, split=True, port=29500, base={}) for i in range(2)]
    assert {e["CUDA_VISIBLE_DEVICES"] for e in split} == {"2,5"}
    assert [(e["RANK"], e["WORLD_SIZE"], e["MASTER_PORT"]) for e in split] == [("0", "2", "29500"), ("1", "2", "29500")]
    # the daemon itself limited to cards 4 and 6: cuda:0/cuda:1 are those, as torch numbers them
    inner = [child_env(["cuda:0", "cuda:1"], i, split=False, base={"CUDA_VISIBLE_DEVICES": "4,6"}) for i in range(2)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in inner] == ["4", "6"]
    with pytest.raises(ConfigError, match="leaves 2 cards visible"):
        child_env(["cuda:0", "cuda:2"], 0, split=False, base={"CUDA_VISIBLE_DEVICES": "4,6"})
    cpu = child_env(["cpu", "cpu"], 1, split=False, base={"CUDA_VISIBLE_DEVICES": "0"})
    assert cpu["CUDA_VISIBLE_DEVICES"] == ""  # a CPU worker must not pick up a card
    for e in env + split + [cpu]:
        assert {k: e[k] for k in MULTICAST_OFF} == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                                    "NVSHMEM_DISABLE_NVLS": "1"}


def test_check_names_listed_cards_that_are_not_visible(tmp_path):
    from wan22bot.commands.check import run_checks

    paths = {"input": str(tmp_path), "output": str(tmp_path), "state": str(tmp_path)}
    rep = run_checks(config_from_dict({"paths": paths, "gpus": {"devices": ["cuda:0", "cuda:1"]}}))
    assert any("[gpus] devices lists cuda:0, cuda:1, but 0 CUDA device(s) are visible" in e for e in rep.errors)
    rep = run_checks(config_from_dict({"paths": paths, "gpus": {"devices": ["cpu", "cpu"], "mode": "split"}}))
    assert "[gpus] mode split on cpu, cpu: each job over all of them, a worker process each" in rep.ok
    assert not [e for e in rep.errors if "gpus" in e]
