"""`wan22bot fetch-models` end to end, as its own process, against a fake Hub on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_port

from .conftest import SEED, SIZES, child_env, content_for, fetch, partial_of, served, spawn

# The layout ComfyUI's loaders (and `[model] comfyui`) look for, written out rather than derived
# from the catalog so a wrong catalog entry fails here.
LAYOUT = [
    "diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
    "diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
    "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "vae/wan_2.1_vae.safetensors",
    "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
    "loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def config_block(dest: Path) -> str:
    return f'[model]\nkind = "wan2.2-i2v-a14b"\ncomfyui = "{dest}"\n'


async def wait_until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_catalog_is_the_seed_layout_from_the_comfy_org_repositories():
    from wan22bot.fetch.catalog import SEED_FILES

    assert [s.relpath for s in SEED] == LAYOUT
    assert [(f.repo_id, f.path_in_repo, f.relpath) for f in SEED_FILES] == [
        (s.repo_id, s.path_in_repo, s.relpath) for s in SEED]
    assert {f.revision for f in SEED_FILES} == {"main"}


async def test_downloads_the_six_files_into_the_comfyui_layout_and_prints_the_config(hub, tmp_path):
    run = await fetch(hub.url, tmp_path)  # default destination: ./models
    dest = tmp_path / "models"
    assert run.rc == 0, run.stderr
    assert files_under(dest) == sorted(LAYOUT)  # no split_files/, no staging or partial files left
    for i, rel in enumerate(LAYOUT):
        assert (dest / rel).read_bytes() == content_for(i), rel
    assert run.stdout == config_block(dest)
    for f in SEED:
        assert [s.status for s in hub.requests_to(f"/{f.repo_id}/resolve/main/{f.path_in_repo}")] == [302]
    assert len(hub.requests_to("/cdn/")) == 6
    assert run.stderr.count("matches the repository") == 6

    # the printed config finds every file through wan22bot's own [model] comfyui lookup
    from wan22bot.config import ModelConfig
    from wan22bot.engine.model_files import resolve_model_files

    found = resolve_model_files(ModelConfig(kind="wan2.2-i2v-a14b", comfyui=dest))
    assert found.problems == []
    assert {part: str(p.relative_to(dest)) for part, p in found.files.items()} == {
        "high_noise": LAYOUT[0], "low_noise": LAYOUT[1], "text_encoder": LAYOUT[2],
        "vae": LAYOUT[3], "lora_high": LAYOUT[4], "lora_low": LAYOUT[5]}


async def test_a_second_run_skips_files_already_present(hub, tmp_path):
    dest = tmp_path / "m"
    assert (await fetch(hub.url, tmp_path, "--dest", str(dest))).rc == 0
    mtimes = {rel: (dest / rel).stat().st_mtime_ns for rel in LAYOUT}
    hub.seen.clear()

    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 0, run.stderr
    assert run.stderr.count("already present, sha256 matches the repository: skipped") == 6
    assert hub.requests_to("/Comfy-Org/") == [] and hub.requests_to("/cdn/") == []
    assert {rel: (dest / rel).stat().st_mtime_ns for rel in LAYOUT} == mtimes
    assert run.stdout == config_block(dest)


@pytest.mark.parametrize("case", ["same-size", "truncated"])
async def test_a_present_file_with_the_wrong_bytes_is_replaced(hub, tmp_path, case):
    dest = tmp_path / "m"
    wrong = bytearray(content_for(3))
    if case == "same-size":
        wrong[100] ^= 0xFF
        expect = "vae/wan_2.1_vae.safetensors: present but its sha256 differs from the repository's"
    else:
        del wrong[1000:]
        expect = f"vae/wan_2.1_vae.safetensors: present but 1000 bytes instead of {SIZES[3]}"
    (dest / "vae").mkdir(parents=True)
    (dest / LAYOUT[3]).write_bytes(bytes(wrong))
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 0, run.stderr
    assert expect in run.stderr
    assert (dest / LAYOUT[3]).read_bytes() == content_for(3)


async def test_a_present_wrong_file_stays_when_its_replacement_fails_the_check(hub, tmp_path):
    dest = tmp_path / "m"
    (dest / "vae").mkdir(parents=True)
    (dest / LAYOUT[3]).write_bytes(b"the user's own copy")
    served(hub, 3).listed_sha256 = "cd" * 32
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 4 and "the bad download was deleted" in run.stderr
    assert (dest / LAYOUT[3]).read_bytes() == b"the user's own copy"
    assert files_under(dest / "vae") == ["wan_2.1_vae.safetensors"]


async def test_an_interrupted_download_resumes_where_it_stopped(hub, tmp_path):
    dest = tmp_path / "m"
    cut = 100 * 1024
    served(hub, 0).stall_after = cut
    partial = partial_of(hub, dest, 0)

    proc = await spawn(hub.url, tmp_path, "--dest", str(dest))
    try:
        await wait_until(lambda: partial.is_file() and partial.stat().st_size == cut)
    finally:
        proc.kill()  # as a crash or a pulled plug would
        await proc.communicate()
    assert not (dest / LAYOUT[0]).exists()
    assert partial.name.endswith(".incomplete") and partial.stat().st_size == cut

    hub.release.set()
    hub.seen.clear()
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 0, run.stderr
    assert f"{LAYOUT[0]}: resuming at" in run.stderr
    assert (dest / LAYOUT[0]).read_bytes() == content_for(0)
    sha_of_bytes = hashlib.sha256(content_for(0)).hexdigest()
    cdn_hits = hub.requests_to(f"/cdn/{sha_of_bytes}")
    assert [(s.range, s.status, s.body_bytes) for s in cdn_hits] == [(f"bytes={cut}-", 206, SIZES[0] - cut)]
    assert files_under(dest) == sorted(LAYOUT)


async def test_wrong_sha256_is_a_clear_error_and_the_bad_file_is_not_kept(hub, tmp_path):
    dest = tmp_path / "m"
    served(hub, 3).listed_sha256 = "ab" * 32  # the bytes served differ from this
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 4
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("wan22bot: error: vae/wan_2.1_vae.safetensors downloaded from Comfy-Org/Wan_2.2_ComfyUI_Repackaged")
    assert f"lists {'ab' * 32}" in last and "the bad download was deleted" in last
    assert not (dest / LAYOUT[3]).exists()
    assert not [p for p in files_under(dest) if "wan_2.1_vae" in p]
    # the files before it were fine and stay; the ones after it were not started
    assert [rel for rel in LAYOUT if (dest / rel).exists()] == LAYOUT[:3]
    assert run.stdout == ""


async def test_not_enough_free_disk_fails_before_downloading_anything(hub, tmp_path):
    dest = tmp_path / "m"
    huge = shutil.disk_usage(tmp_path).free + 10**12
    served(hub, 0).listed_size = huge
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 7
    needed = huge + sum(SIZES[1:])
    assert f"the download needs {needed / 1e9:.2f} GB and " in run.stderr
    assert "not enough free disk in" in run.stderr and "GB is free" in run.stderr
    assert hub.requests_to("/cdn/") == [] and [s for s in hub.seen if "/resolve/" in s.path] == []
    assert files_under(dest) == []


@pytest.mark.parametrize("case", ["file-404", "unlisted-file", "repo-404"])
async def test_missing_file_or_repository_is_a_clear_error(hub, tmp_path, case):
    dest = tmp_path / "m"
    lora = SEED[5]
    if case == "file-404":
        hub.status_for[f"/{lora.repo_id}/resolve/main/{lora.path_in_repo}"] = 404
        expect = (f"wan22bot: error: {lora.repo_id}/{lora.path_in_repo} was not found on the Hugging Face Hub "
                  f"at {hub.url} (404)")
    elif case == "unlisted-file":
        del hub.files[(lora.repo_id, lora.path_in_repo)]
        expect = f"wan22bot: error: {lora.path_in_repo} is not in {lora.repo_id} (revision main)"
    else:
        te = SEED[2]
        del hub.files[(te.repo_id, te.path_in_repo)]  # the only file of that repository: the repository is gone
        expect = f"wan22bot: error: repository {te.repo_id} (revision main) was not found"
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 4
    assert run.stderr.strip().splitlines()[-1].startswith(expect), run.stderr
    assert "Traceback" not in run.stderr
    assert not (dest / lora.relpath).exists()


async def test_unauthorized_is_a_clear_error(hub, tmp_path):
    hub.status_for["/api/models/"] = 401
    run = await fetch(hub.url, tmp_path, "--dest", str(tmp_path / "m"))
    assert run.rc == 4
    assert "refused the file list of Comfy-Org/" in run.stderr and "(401 Unauthorized)" in run.stderr
    assert "HF_TOKEN" in run.stderr and "Traceback" not in run.stderr


async def test_offline_mode_is_one_line(hub, tmp_path):
    run = await fetch(hub.url, tmp_path, "--dest", str(tmp_path / "m"), env={"HF_HUB_OFFLINE": "1"})
    assert run.rc == 4
    assert run.stderr.strip().splitlines() == [
        "wan22bot: error: HF_HUB_OFFLINE is set, and fetch-models needs the Hugging Face Hub; unset it and run again"]
    assert hub.seen == []


async def test_hub_unreachable_is_one_line(tmp_path):
    port = free_port()  # nothing listens there, and no other test's server is handed it
    run = await fetch(f"http://127.0.0.1:{port}", tmp_path, "--dest", str(tmp_path / "m"))
    assert run.rc == 4
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"wan22bot: error: cannot reach the Hugging Face Hub at http://127.0.0.1:{port}")
    assert "ConnectError" in lines[0] and run.stdout == ""


async def test_disk_full_during_download_keeps_the_partial_and_says_how_to_continue(hub, tmp_path):
    dest = tmp_path / "m"
    partial = partial_of(hub, dest, 0)
    partial.parent.mkdir(parents=True)
    os.symlink("/dev/full", partial)  # every write to it fails with the kernel's ENOSPC
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 7
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"wan22bot: error: disk full while downloading {LAYOUT[0]} into {dest}")
    assert f"0.0 kB of {SIZES[0] / 1e3:.1f} kB is kept in {partial}; free at least {SIZES[0] / 1e3:.1f} kB" in last
    assert last.endswith("and run fetch-models again to continue")
    assert partial.is_symlink() and not (dest / LAYOUT[0]).exists()


@pytest.mark.parametrize("case", ["parent-is-a-file", "dest-is-a-file", "read-only"])
async def test_unwritable_destination_is_refused_before_asking_the_hub(hub, tmp_path, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    if case == "parent-is-a-file":
        dest, expect = blocker / "models", f"cannot write to --dest {blocker / 'models'} (Not a directory)"
    elif case == "dest-is-a-file":
        dest, expect = blocker, f"--dest {blocker} is a file, not a folder"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes through permission bits; the two cases above cover refusal")
        dest = tmp_path / "ro"
        dest.mkdir()
        dest.chmod(0o555)
        expect = f"cannot write to --dest {dest} (Permission denied)"
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"wan22bot: error: {expect}"), run.stderr
    assert hub.seen == []


async def test_a_dropped_connection_is_resumed_within_the_same_run(hub, tmp_path):
    dest = tmp_path / "m"
    cut = 40 * 1024
    served(hub, 1).drop_after = cut
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 0, run.stderr
    assert (dest / LAYOUT[1]).read_bytes() == content_for(1)
    cdn_hits = hub.requests_to(f"/cdn/{hashlib.sha256(content_for(1)).hexdigest()}")
    assert [(s.range, s.status, s.body_bytes) for s in cdn_hits] == [
        (None, 200, cut), (f"bytes={cut}-", 206, SIZES[1] - cut)]


async def test_a_server_ignoring_range_restarts_the_file_cleanly(hub, tmp_path):
    dest = tmp_path / "m"
    partial = partial_of(hub, dest, 3)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(content_for(3)[:5000])
    served(hub, 3).ignore_range = True
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 0, run.stderr
    assert (dest / LAYOUT[3]).read_bytes() == content_for(3)
    cdn_hits = hub.requests_to(f"/cdn/{hashlib.sha256(content_for(3)).hexdigest()}")
    assert [(s.range, s.status, s.body_bytes) for s in cdn_hits] == [("bytes=5000-", 200, SIZES[3])]


async def test_a_partial_of_different_content_is_discarded_not_resumed(hub, tmp_path):
    dest = tmp_path / "m"
    stale = partial_of(hub, dest, 3).with_name(f"{SEED[3].name}.{'0' * 16}.incomplete")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"bytes of an older upload of this file")
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 0, run.stderr
    assert not stale.exists() and (dest / LAYOUT[3]).read_bytes() == content_for(3)
    cdn_hits = hub.requests_to(f"/cdn/{hashlib.sha256(content_for(3)).hexdigest()}")
    assert [s.range for s in cdn_hits] == [None]


async def test_a_second_run_into_the_same_folder_is_refused_while_one_is_running(hub, tmp_path):
    import fcntl

    dest = tmp_path / "m"
    dest.mkdir()
    with open(dest / ".wan22bot-fetch.lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 2
    assert run.stderr.strip().endswith(
        f"another wan22bot fetch-models is already downloading into {dest}; wait for it or stop it first")
    assert hub.seen == []


def test_help_lists_the_files_the_default_and_the_exit_codes():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "wan22bot", "fetch-models", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for rel in LAYOUT:
        assert rel in out.stdout
    assert "Comfy-Org/Wan_2.1_ComfyUI_repackaged" in out.stdout
    assert "else ./models" in out.stdout and "exit codes:" in out.stdout


async def test_without_dest_it_fills_the_configs_comfyui_folder(hub, tmp_path):
    (tmp_path / "config.toml").write_text('[model]\nkind = "wan2.2-i2v-a14b"\ncomfyui = "shared/ComfyUI/models"\n')
    run = await fetch(hub.url, tmp_path)
    dest = tmp_path / "shared" / "ComfyUI" / "models"
    assert run.rc == 0, run.stderr
    assert files_under(dest) == sorted(LAYOUT) and not (tmp_path / "models").exists()
    assert run.stdout == config_block(dest)


async def test_ctrl_c_keeps_the_partial_and_says_how_to_continue(hub, tmp_path):
    import signal

    dest = tmp_path / "m"
    cut = 64 * 1024
    served(hub, 0).stall_after = cut
    partial = partial_of(hub, dest, 0)
    proc = await spawn(hub.url, tmp_path, "--dest", str(dest))
    try:
        await wait_until(lambda: partial.is_file() and partial.stat().st_size == cut)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130
    assert err.decode().strip().splitlines()[-1] == (
        "wan22bot: interrupted; what was downloaded is kept: run fetch-models again to continue")
    assert partial.stat().st_size == cut and not (dest / LAYOUT[0]).exists() and out == b""


@pytest.fixture
def other_disk(tmp_path):
    """A folder on another file system than tmp_path (tmpfs), as a ComfyUI subfolder linked to a second disk."""
    import tempfile

    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    folder = Path(tempfile.mkdtemp(prefix="wan22bot-fetch-", dir="/dev/shm"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_a_subfolder_linked_to_another_disk_is_filled_in_place(hub, tmp_path, other_disk):
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "loras").symlink_to(other_disk, target_is_directory=True)
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 0, run.stderr
    assert sorted(p.name for p in other_disk.iterdir()) == sorted(s.name for s in SEED[4:])
    assert (other_disk / SEED[4].name).read_bytes() == content_for(4)
    assert (dest / LAYOUT[0]).read_bytes() == content_for(0)


async def test_free_disk_is_checked_on_each_file_system(hub, tmp_path, other_disk):
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "loras").symlink_to(other_disk, target_is_directory=True)
    served(hub, 5).listed_size = shutil.disk_usage(other_disk).free + 1  # fits tmp_path, not the other disk
    run = await fetch(hub.url, tmp_path, "--dest", str(dest))
    assert run.rc == 7
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"wan22bot: error: not enough free disk in {dest / 'loras'}: the download needs ")
    assert hub.requests_to("/cdn/") == [] and list(other_disk.iterdir()) == []


async def test_a_terminal_gets_a_progress_bar_per_file(hub, tmp_path):
    import pty

    dest = tmp_path / "m"
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wan22bot", "fetch-models", "--dest", str(dest),
            cwd=tmp_path, env=child_env(hub.url, tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=slave,
        )
        os.close(slave)
        slave = -1
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        screen = b""
        while True:  # the child has exited: read what it left on the terminal until it is drained
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            screen += data
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    for seed in SEED:
        assert seed.name[:20] in text
    assert text.count("100%") >= 6 and "\r" in text
    assert out.decode() == config_block(dest)
