"""The daemon (a real subprocess) with [gpus] devices = ["cpu", "cpu"]: two photos rendered at once,
one on each worker process; the processes in the status and the metrics, and gone after a stop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import av
import pytest

from ..daemon.conftest import PHOTO, DaemonProc
from ..http.browser import Browser, chromium_path

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _worker_pills(url: str, profile: Path) -> list[str]:
    chromium_path()
    async with Browser(profile) as browser:
        page = await browser.open(url)
        probe = "[...document.querySelectorAll('#status-line .pill')].map(p => p.textContent).filter(t => /^gpu\\d/.test(t))"
        await page.wait_for(f"({probe}).length == 2")
        pills = await page.evaluate(probe)
        assert not [c for c in browser.console if c.startswith("exception")], browser.console
        return pills


def test_daemon_runs_a_worker_process_per_device_and_reports_them(tmp_path):
    d = DaemonProc(tmp_path, extra='[gpus]\ndevices = ["cpu", "cpu"]\n')
    try:
        d.start(wait=False)
        d.wait_healthy(timeout=120)
        st = d.wait_for(lambda: (lambda s: s if s[1]["workers"] and all(w["state"] == "idle" for w in s[1]["workers"])
                                 else None)(d.get("/api/status")), 120, "both worker processes idle")[1]
        assert st["gpus"] == {"mode": "per-device", "devices": ["cpu", "cpu"]}
        assert [(w["name"], w["device"]) for w in st["workers"]] == [("gpu0", "cpu"), ("gpu1", "cpu")]
        pids = [w["pid"] for w in st["workers"]]
        assert len(set(pids)) == 2 and d.proc.pid not in pids
        d.input.mkdir(exist_ok=True)
        for name in ("a.jpg", "b.jpg"):
            shutil.copy(PHOTO, d.input / name)
        d.wait_for(lambda: sum(j["state"] == "done" for j in d.jobs()) == 2, 180, "two videos")
        jobs = d.jobs()
        for j in jobs:
            with av.open(j["output"]) as c:
                assert sum(1 for _ in c.decode(video=0)) == 5
        # one on each process, at once: each job started before the other one finished
        assert {json.loads(Path(j["output"]).with_suffix(".json").read_text())["worker"] for j in jobs} == {"gpu0", "gpu1"}
        a, b = jobs
        assert a["started"] < b["finished"] and b["started"] < a["finished"]
        st = d.get("/api/status")[1]
        assert [w["jobs_done"] for w in st["workers"]] == [1, 1]
        assert all(w["memory"]["rss"] > 0 and not w["busy"] and w["job"] is None for w in st["workers"])
        # what each process itself saw at start: no card, NVLink multicast off
        assert [w["env"] for w in st["workers"]] == [{"CUDA_VISIBLE_DEVICES": "", "NCCL_NVLS_ENABLE": "0",
                                                      "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                                      "NVSHMEM_DISABLE_NVLS": "1"}] * 2
        # the status page: a pill per worker process, rendered by a real Chromium
        pills = asyncio.run(_worker_pills(f"http://127.0.0.1:{d.port}/", tmp_path / "profile"))
        assert len(pills) == 2 and pills[0].startswith("gpu0 cpu idle") and pills[1].startswith("gpu1 cpu idle")
        assert all("GiB RSS" in p for p in pills), pills
        print("status page pills:", pills)
        # the models live in the worker processes: the daemon itself never loads torch
        assert "libtorch" not in Path(f"/proc/{d.proc.pid}/maps").read_text()
        assert "libtorch" in Path(f"/proc/{pids[0]}/maps").read_text()
        status, metrics = d.get("/metrics")
        text = metrics.decode()
        assert status == 200
        for w in ("gpu0", "gpu1"):
            assert f'wan22bot_worker_process_up{{device="cpu",worker="{w}"}} 1.0' in text
            assert f'wan22bot_worker_process_busy{{device="cpu",worker="{w}"}} 0.0' in text
            assert f'wan22bot_worker_process_restarts{{device="cpu",worker="{w}"}} 0.0' in text
            rss = re.search(rf'wan22bot_worker_process_memory_bytes{{device="cpu",kind="rss",worker="{w}"}} (\S+)', text)
            assert rss and float(rss.group(1)) > 1e8  # torch and the tiny model are resident
    finally:
        rc = d.stop()
    assert rc == 0
    assert not any(_alive(p) for p in pids)
