"""One front, two workers, one Redis, as real processes (conftest.py): the issue's "done when".

The tests share one cluster (starting the processes is the slow part) and run in file order; each
leaves every process up and idle for the next. pytest-xdist may still hand part of the file to the
other test process, which then starts a cluster of its own: so no test counts on what an earlier
one did. (`--dist loadgroup` would keep them together, but pytest-xdist 3.8 marks the group by
rewriting `item._nodeid`, which pytest 9 no longer reads.) w2 runs as systemd runs a unit: sd_notify to a
socket, the HTTP token from a credential file rather than the environment.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import CLAIM_TIMEOUT, wait_until

pytestmark = pytest.mark.slow


def assert_one_video_each(cluster, jobs: dict[str, dict], photos: list[str]) -> None:
    """Every photo's job done, with exactly its MP4 and sidecar in the front's output folder and
    the front having stored one result for it."""
    outputs = set(cluster.outputs())
    for photo in photos:
        job = jobs[photo]
        assert job["state"] == "done", job
        assert {f"{job['name']}.mp4", f"{job['name']}.json"} <= outputs, (job["name"], outputs)
        # the front logs "done on W" just after the journal says done
        wait_until(lambda: cluster.done_on(job["id"]), 5, f"the front's line for job {job['id']}", cluster.front)
        assert len(cluster.done_on(job["id"])) == 1, cluster.done_on(job["id"])
    # nothing else: no second copy under another name, no temp file left in view
    names = {jobs[p]["name"] for p in photos}
    mine = {f for f in outputs if f.rsplit(".", 1)[0] in names}
    assert len(mine) == 2 * len(photos), mine


def test_photos_dropped_on_the_front_are_rendered_once_each_by_both_workers(cluster):
    photos = cluster.drop("p1", "p2", "p3", "p4")
    jobs = cluster.wait_final(photos, 60)
    assert_one_video_each(cluster, jobs, photos)
    renderers = {cluster.done_on(jobs[p]["id"])[0] for p in photos}
    assert renderers == {"w1", "w2"}, renderers
    # each worker's own log agrees with the front about who rendered what
    for w in cluster.workers:
        mine = {jobs[p]["id"] for p in photos if cluster.done_on(jobs[p]["id"]) == [w.name]}
        assert mine and mine <= set(w.started()), (w.name, mine, w.started())
    # the worker's renders went to the front; nothing stays in its results folder
    for w in cluster.workers:
        assert [f.name for f in (w.state / "results").iterdir()] == []


def test_the_front_status_lists_the_live_workers(cluster):
    def both_idle():
        status, body = cluster.front.get("/api/status")
        assert status == 200
        listed = {w["name"]: w for w in body["workers"]}
        return listed if all(listed.get(w.name, {}).get("state") == "idle" for w in cluster.workers) else None

    # the workers' hashes are re-read every heartbeat: the end of the last job shows within a few
    listed = wait_until(both_idle, 5, "both workers idle in /api/status", *cluster.procs)
    assert set(listed) == {"w1", "w2"}, listed
    for w in cluster.workers:
        entry = listed[w.name]
        assert entry["pid"] == w.proc.pid and entry["device"] == "cpu" and entry["loaded"] is True, entry
        assert entry["job"] is None and not entry["busy"], entry
    status, metrics = cluster.front.get("/metrics")
    assert status == 200
    for w in cluster.workers:
        assert f'wan22bot_worker_process_up{{device="cpu",worker="{w.name}"}} 1.0' in metrics.decode(), metrics


def test_w2_speaks_sd_notify_and_took_its_token_from_the_credential(cluster):
    w2 = cluster.workers[1]
    assert "Authorization" not in w2.text()
    got = cluster.notify.snapshot()
    ready = [g for g in got if g.fields.get("READY") == "1"]
    assert len(ready) == 1 and ready[0].fields.get("STATUS") == "worker w2: idle", [g.fields for g in got]
    assert {g.pid for g in got} == {w2.proc.pid}

    def three_pings():
        got = cluster.notify.snapshot()
        return got if sum(g.fields.get("WATCHDOG") == "1" for g in got) >= 3 else None

    # WATCHDOG_USEC is 1 s, so pings come about every 0.5 s: three soon after w2 started, whenever this runs
    got = wait_until(three_pings, 10, "three watchdog pings from w2", w2)
    pings = [g.t for g in got if g.fields.get("WATCHDOG") == "1"]
    assert len(pings) >= 3 and max(b - a for a, b in zip(pings, pings[1:])) < 2.0

    # STATUS follows the jobs it runs. The first test gives w2 some; on a cluster of its own (the
    # file split between test processes) this test gives it work until it has taken a job.
    def w2_ran() -> list:
        got = cluster.notify.snapshot()
        return [g for g in got if g.fields.get("STATUS", "").startswith("worker w2: running ")]

    for round_ in range(5):
        if w2_ran():
            break
        cluster.wait_final(cluster.drop(f"for-w2-{round_}a", f"for-w2-{round_}b"), 60)
    assert w2_ran(), [g.fields for g in cluster.notify.snapshot()]


def test_a_cancel_on_the_front_stops_the_job_on_its_worker(cluster):
    [photo] = cluster.drop("cancel-me")
    job = cluster.job_of(photo)
    worker = cluster.running_on(job["id"])
    status, body = cluster.front.request("DELETE", f"/api/jobs/{job['id']}")
    assert status == 200 and body["outcome"] == "cancelling", body
    jobs = cluster.wait_final([photo], 30)
    assert jobs[photo]["state"] == "cancelled", jobs[photo]
    assert wait_until(lambda: f"job {job['id']}: cancelled" in worker.text(), 10, "the worker's cancel line", worker)
    assert not any(f.startswith(job["name"]) for f in cluster.outputs())
    assert worker.alive  # the worker goes on


def test_a_worker_killed_mid_job_leaves_it_to_the_other(cluster):
    [photo] = cluster.drop("victim")
    job = cluster.job_of(photo)
    victim = cluster.running_on(job["id"])
    other = next(w for w in cluster.workers if w is not victim)
    victim.kill9()
    t_kill = time.monotonic()
    jobs = cluster.wait_final([photo], 30)
    assert_one_video_each(cluster, jobs, [photo])
    assert cluster.done_on(job["id"]) == [other.name]
    assert job["id"] in other.started()
    # taken over only once the claim timed out, not before
    assert time.monotonic() - t_kill >= CLAIM_TIMEOUT
    # back for the next tests; its results folder is emptied at start
    victim.restart().wait_ready()


def test_a_second_worker_on_one_state_folder_exits_11(cluster):
    w1 = cluster.workers[0]
    out = subprocess.run([sys.executable, "-m", "wan22bot", "worker", "-c", str(w1.config)], cwd=w1.root,
                         env=w1.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 11, out.stderr
    assert f"in use by another wan22bot worker (PID {w1.proc.pid})" in out.stderr
    assert w1.alive


def test_a_redis_restart_mid_run_loses_nothing(cluster):
    photos = cluster.drop("r1", "r2", "r3")
    first = cluster.job_of(photos[0])
    cluster.running_on(first["id"])
    cluster.redis.kill()  # SIGKILL: only what the AOF (appendfsync always) holds comes back
    # the outage reached every process mid-run (each says so), then Redis comes back
    wait_until(lambda: all("cannot write its heartbeat to Redis" in w.text() for w in cluster.workers), 10,
               "both workers to notice Redis is gone", *cluster.procs)
    cluster.redis.start()
    jobs = cluster.wait_final(photos, 60)
    assert_one_video_each(cluster, jobs, photos)
    assert "dispatcher (events): Redis: " in cluster.front.text()
    assert all(w.alive for w in cluster.workers) and cluster.front.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_the_front_stopped_mid_run_gets_every_result_once_when_back(cluster, sig):
    photos = cluster.drop(f"f{sig}-1", f"f{sig}-2", f"f{sig}-3")
    jobs = {p: cluster.job_of(p) for p in photos}
    cluster.running_on(jobs[photos[0]]["id"])
    front = cluster.front
    if sig == signal.SIGKILL:
        front.kill9()
    else:
        assert front.stop(sig, timeout=30) == 0
    # the workers finish what they hold and keep trying to hand it over
    ran = [jobs[p]["id"] for p in photos if any(jobs[p]["id"] in w.started() for w in cluster.workers)]
    assert ran
    wait_until(lambda: any(f"job {ran[0]}: the done result not delivered" in w.text() for w in cluster.workers), 20,
               "a worker to retry its delivery to the stopped front", *cluster.workers)
    front.start()
    final = cluster.wait_final(photos, 60)
    assert_one_video_each(cluster, final, photos)
    assert all(w.alive for w in cluster.workers)


def test_a_worker_stopped_mid_job_hands_it_back_and_says_stopping(cluster):
    w1, w2 = cluster.workers
    photos = cluster.drop("busy", "handed-back")
    jobs = {p: cluster.job_of(p) for p in photos}
    # two jobs, two idle workers: one each; stop w2 (the unit-like one) in the middle of its own
    on = {p: cluster.running_on(jobs[p]["id"]) for p in photos}
    assert {w.name for w in on.values()} == {"w1", "w2"}, on
    mine = next(jobs[p] for p in photos if on[p] is w2)
    t_term = time.monotonic()
    assert w2.stop(signal.SIGTERM, timeout=30) == 0
    assert f"job {mine['id']}: checkpointed for shutdown" in w2.text()
    stopping = [g for g in cluster.notify.snapshot() if g.fields.get("STOPPING") == "1"]
    assert len(stopping) == 1 and stopping[0].t >= t_term
    final = cluster.wait_final(photos, 30)
    assert_one_video_each(cluster, final, photos)
    # handed back to the front's queue at once, not left for a takeover after the claim timeout
    assert f"job {mine['id']}: handed back by w2; queued again" in cluster.front.text()
    assert f"job {mine['id']}: taken over" not in cluster.front.text()
    assert cluster.done_on(mine["id"]) == ["w1"]
    assert final[next(p for p in photos if on[p] is w2)]["attempts"] == 1  # the hand-back spent no attempt


# Last: it empties Redis, and w2 is stopped by the test before (w1 renders alone, so one job is
# rendering, one waits on the stream and one waits in the journal when Redis loses everything).
def test_a_redis_that_lost_its_data_mid_run_loses_no_job(cluster):
    """Redis without persistence (or a lost disk) comes back empty: no entry, no group, no cancel."""
    photos = cluster.drop("gone1", "gone2", "gone3")
    first = cluster.job_of(photos[0])
    cluster.running_on(first["id"])
    cluster.redis.kill()
    for p in cluster.redis.dir.iterdir():
        if p.name != "redis.log":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    cluster.redis.start()
    jobs = cluster.wait_final(photos, 20)
    assert_one_video_each(cluster, jobs, photos)
    assert cluster.workers[0].alive and cluster.front.proc.poll() is None
