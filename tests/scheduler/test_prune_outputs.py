"""prune_outputs: old videos go by age, then oldest first down to the disk quota; nothing else is touched."""

from __future__ import annotations

import os
import time
from pathlib import Path

from wan22bot.scheduler import prune_outputs

DAY = 86400.0


def put(path: Path, size: int, age_days: float, now: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    t = now - age_days * DAY
    os.utime(path, (t, t))
    return path


def video(out: Path, name: str, age_days: float, now: float, size: int = 1000, sidecar: int | None = 200):
    mp4 = put(out / f"{name}.mp4", size, age_days, now)
    if sidecar is not None:
        put(out / f"{name}.json", sidecar, age_days, now)
    return mp4


def ours(out: Path) -> list[Path]:
    """Every MP4 directly in the folder, as if the journal had written and delivered each one
    (what the journal owns is tested in test_prune_owned.py)."""
    return sorted(out.glob("*.mp4"))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_by_age_removes_old_videos_with_their_sidecars_and_nothing_else(tmp_path):
    now = time.time()
    out = tmp_path / "out"
    old = video(out, "old", 10, now)
    older = video(out, "older", 40, now, sidecar=None)
    young = video(out, "young", 1, now)
    edge = video(out, "edge", 6.9, now)
    # not ours to delete, however old: other file types, a lone sidecar, sub-folders
    others = [put(out / "notes.txt", 10, 100, now), put(out / "photo.jpg", 10, 100, now),
              put(out / "orphan.json", 10, 100, now), put(out / "clip.mp4.part", 10, 100, now),
              put(out / "sub" / "deep.mp4", 10, 100, now), put(out / "sub" / "deep.json", 10, 100, now)]
    # outside the folder entirely
    outside = put(tmp_path / "elsewhere" / "keep.mp4", 10, 100, now)
    put(tmp_path / "elsewhere" / "keep.json", 10, 100, now)
    outside_before = snapshot(tmp_path / "elsewhere")

    removed = prune_outputs(out, retention_days=7, quota_gb=0, owned=ours(out))

    assert sorted(removed) == sorted([old, older])
    assert not old.exists() and not (out / "old.json").exists() and not older.exists()
    for p in (young, out / "young.json", edge, out / "edge.json", *others, outside):
        assert p.exists(), p
    assert snapshot(tmp_path / "elsewhere") == outside_before


def test_retention_zero_keeps_everything(tmp_path):
    now = time.time()
    out = tmp_path / "out"
    for i in range(3):
        video(out, f"v{i}", 1000 + i, now)
    before = snapshot(out)
    assert prune_outputs(out, retention_days=0, quota_gb=0, owned=ours(out)) == []
    assert snapshot(out) == before


def test_symlinked_video_removes_the_link_not_its_target(tmp_path):
    now = time.time()
    out = tmp_path / "out"
    out.mkdir()
    target = put(tmp_path / "precious" / "film.mp4", 50, 100, now)
    side = put(tmp_path / "precious" / "film.json", 5, 100, now)
    (out / "film.mp4").symlink_to(target)
    (out / "film.json").symlink_to(side)
    prune_outputs(out, retention_days=7, quota_gb=0, owned=ours(out))
    assert target.read_bytes() == b"\0" * 50 and side.exists()


def test_quota_removes_oldest_first_and_keeps_the_newest(tmp_path):
    now = time.time()
    out = tmp_path / "out"
    vids = [video(out, f"v{i}", age, now, size=1000, sidecar=None) for i, age in enumerate([5, 4, 3, 2, 1])]
    keep = put(out / "readme.txt", 100_000, 10, now)  # non-video bytes are not ours to count or delete
    removed = prune_outputs(out, retention_days=0, quota_gb=2500 / 2**30, owned=ours(out))
    assert removed == vids[:3]  # 5000 bytes -> 2000 <= 2500, oldest first
    assert [p.exists() for p in vids] == [False, False, False, True, True]
    assert keep.exists()


def test_quota_removes_the_sidecar_with_its_video(tmp_path):
    now = time.time()
    out = tmp_path / "out"
    vids = [video(out, f"v{i}", age, now, size=1000, sidecar=200) for i, age in enumerate([3, 2, 1])]
    removed = prune_outputs(out, retention_days=0, quota_gb=2700 / 2**30, owned=ours(out))  # 3600 B in use
    assert removed == vids[:1]
    assert not (out / "v0.mp4").exists() and not (out / "v0.json").exists()
    for name in ("v1", "v2"):
        assert (out / f"{name}.mp4").exists() and (out / f"{name}.json").exists()


def test_quota_under_the_limit_removes_nothing(tmp_path):
    now = time.time()
    out = tmp_path / "out"
    for i in range(3):
        video(out, f"v{i}", 3 - i, now, size=1000, sidecar=500)
    before = snapshot(out)
    assert prune_outputs(out, retention_days=30, quota_gb=4500 / 2**30, owned=ours(out)) == []  # exactly at the quota
    assert snapshot(out) == before


def test_quota_counts_removed_sidecars_and_removes_no_more_than_needed(tmp_path):
    """4 videos of 1000 B + 500 B sidecar = 6000 B, quota 4500 B: removing the oldest pair is enough."""
    now = time.time()
    out = tmp_path / "out"
    vids = [video(out, f"v{i}", age, now, size=1000, sidecar=500) for i, age in enumerate([4, 3, 2, 1])]
    removed = prune_outputs(out, retention_days=0, quota_gb=4500 / 2**30, owned=ours(out))
    assert removed == vids[:1]
    assert [p.exists() for p in vids] == [False, True, True, True]
    used = sum(p.stat().st_size for p in out.iterdir())
    assert used == 4500


def test_age_then_quota_together(tmp_path):
    now = time.time()
    out = tmp_path / "out"
    ancient = video(out, "ancient", 90, now, size=10_000, sidecar=None)
    vids = [video(out, f"v{i}", age, now, size=1000, sidecar=None) for i, age in enumerate([3, 2, 1])]
    removed = prune_outputs(out, retention_days=30, quota_gb=2000 / 2**30, owned=ours(out))
    assert removed == [ancient, vids[0]]
    assert [p.exists() for p in vids] == [False, True, True]
