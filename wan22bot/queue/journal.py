"""The SQLite journal behind the queue. Synchronous; the asyncio front runs it on one thread.

WAL mode with synchronous=FULL: a job acknowledged to a user survives a power cut, and readers (the
status page) never wait for the writer. Every state change is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..jobs import FINAL_STATES, JobResult, JobSpec, JobState
from .models import Job

_FINAL_SQL = ",".join(f"'{s}'" for s in FINAL_STATES)  # for "state IN (...)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    lane TEXT NOT NULL,
    spec TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    delivered INTEGER NOT NULL DEFAULT 0,
    content_hash TEXT,
    progress TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_hash ON jobs(content_hash, state);
-- the claim's "when was this lane last served" is a MAX over one lane: with this index it is one
-- index lookup per queued lane instead of a scan of every finished row
CREATE INDEX IF NOT EXISTS jobs_lane_started ON jobs(lane, started);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

COLUMNS = ("seq, id, state, spec, created, started, finished, attempts, error, result, delivered, content_hash, progress, "
           "delivery_error")
# columns added after the first release: (name, declaration), added in place at open
ADDED_COLUMNS = (
    ("delivery_attempts", "INTEGER NOT NULL DEFAULT 0"),  # failed tries to hand the result back
    ("delivery_error", "TEXT"),  # set when delivery was given up: why
    ("claimed_by", "TEXT"),  # which worker process holds a running job (several share one journal)
)

# The next job: round-robin over lanes (the lane served longest ago first), FIFO within a lane.
CLAIM_SQL = f"""
SELECT {COLUMNS} FROM jobs j WHERE j.state = 'queued'
ORDER BY (SELECT COALESCE(MAX(s.started), 0) FROM jobs s WHERE s.lane = j.lane AND s.started IS NOT NULL),
         j.seq
LIMIT 1
"""


def _row_to_job(r: tuple[Any, ...]) -> Job:
    seq, jid, state, spec, created, started, finished, attempts, error, result, delivered, chash, progress, derr = r
    return Job(
        id=jid,
        seq=seq,
        state=JobState(state),
        spec=JobSpec.model_validate_json(spec),
        created=created,
        started=started,
        finished=finished,
        attempts=attempts,
        error=error,
        result=JobResult.model_validate_json(result) if result else None,
        delivered=bool(delivered),
        content_hash=chash,
        progress=json.loads(progress) if progress else {},
        delivery_error=derr,
    )


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, decl in ADDED_COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _tx(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
                self._db.execute("COMMIT")
                return out
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ writes
    def insert(self, spec: JobSpec, content_hash: str | None = None, job_id: str | None = None) -> Job:
        jid = job_id or uuid.uuid4().hex[:12]
        now = time.time()
        lane = f"{spec.source}:{spec.user or ''}"

        def tx(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO jobs (id, state, source, lane, spec, created, content_hash) VALUES (?,?,?,?,?,?,?)",
                (jid, JobState.queued.value, spec.source, lane, spec.model_dump_json(), now, content_hash),
            )
            return cur.lastrowid

        seq = self._tx(tx)
        return Job(id=jid, seq=seq, state=JobState.queued, spec=spec, created=now, content_hash=content_hash)

    def claim_next(self, owner: str | None = None) -> Job | None:
        """Mark the next job running and return it. Round-robin over lanes (source:user), FIFO within.

        The lane served longest ago goes first (never-served lanes before all), so one Discord user
        with ten photos queued cannot starve the watched folder. The select and the update are one
        BEGIN IMMEDIATE transaction, so processes sharing the file never claim the same job; `owner`
        names the claiming worker process, so its jobs can be put back when it dies.
        """

        def tx(db: sqlite3.Connection) -> Job | None:
            row = db.execute(CLAIM_SQL).fetchone()
            if row is None:
                return None
            job = _row_to_job(row)
            now = time.time()
            db.execute("UPDATE jobs SET state='running', started=?, attempts=attempts+1, progress=NULL, "
                       "claimed_by=? WHERE id=?", (now, owner, job.id))
            job.claimed_from = job.started  # what unclaim() puts back
            job.state, job.started, job.attempts, job.progress = JobState.running, now, job.attempts + 1, {}
            return job

        return self._tx(tx)

    def unclaim(self, job: Job) -> None:
        """Undo a claim whose job never started (the claimer was cancelled): queued again, as if the
        claim had not happened - same attempts, same place in its lane's turn."""
        self._q("UPDATE jobs SET state='queued', started=?, attempts=MAX(attempts-1, 0), progress=NULL "
                "WHERE id=? AND state='running'", (job.claimed_from, job.id))

    def finish(self, job_id: str, state: JobState, *, error: str | None = None, result: JobResult | None = None) -> None:
        self._q(
            "UPDATE jobs SET state=?, finished=?, error=?, result=?, progress=NULL WHERE id=?",
            (state.value, time.time(), error, result.model_dump_json() if result else None, job_id),
        )

    def requeue(self, job_id: str, *, count_attempt: bool) -> bool:
        """Back to the queue (shutdown checkpoint or crash recovery), if it is still running: a job
        that settled meanwhile (its result came in while a front reconciled a lost Redis, say)
        keeps its final state. Returns whether it went back."""
        dec = "" if count_attempt else ", attempts = MAX(attempts - 1, 0)"
        with self._lock:
            cur = self._db.execute(f"UPDATE jobs SET state='queued', progress=NULL {dec} WHERE id=? AND state='running'",
                                   (job_id,))
            return cur.rowcount > 0

    def release_owned(self, owner: str, max_attempts: int) -> tuple[list[str], list[str]]:
        """A worker process died: its running jobs go back to the queue (the attempt it spent
        counts), or fail once they have had `max_attempts`. Returns (requeued, failed)."""

        def tx(db: sqlite3.Connection):
            rows = db.execute("SELECT id, attempts FROM jobs WHERE state='running' AND claimed_by=?",
                              (owner,)).fetchall()
            requeued, failed = [], []
            for jid, attempts in rows:
                if attempts >= max_attempts:
                    db.execute("UPDATE jobs SET state='failed', finished=?, error=? WHERE id=?",
                               (time.time(), f"gave up after {attempts} attempts: the worker process on "
                                             f"{owner} died while running this job each time", jid))
                    failed.append(jid)
                else:
                    db.execute("UPDATE jobs SET state='queued', progress=NULL, claimed_by=NULL WHERE id=?", (jid,))
                    requeued.append(jid)
            return requeued, failed

        return self._tx(tx)

    def recover(self, max_attempts: int, *, keep_claimed_by: str | None = None) -> tuple[list[str], list[str]]:
        """At start: jobs left 'running' by a crash go back to the queue, or fail after max_attempts.

        Jobs claimed by `keep_claimed_by` are left running: they run elsewhere (another box) and
        whoever claimed them settles them."""

        def tx(db: sqlite3.Connection):
            sql, args = "SELECT id, attempts FROM jobs WHERE state='running'", ()
            if keep_claimed_by is not None:
                sql, args = sql + " AND claimed_by IS NOT ?", (keep_claimed_by,)  # IS NOT: NULL owners too
            rows = db.execute(sql, args).fetchall()
            requeued, failed = [], []
            for jid, attempts in rows:
                if attempts >= max_attempts:
                    db.execute(
                        "UPDATE jobs SET state='failed', finished=?, error=? WHERE id=?",
                        (time.time(), f"gave up after {attempts} attempts: the daemon stopped while running this "
                                      "job each time (see the log for a crash or out-of-memory kill)", jid),
                    )
                    failed.append(jid)
                else:
                    db.execute("UPDATE jobs SET state='queued', progress=NULL WHERE id=?", (jid,))
                    requeued.append(jid)
            return requeued, failed

        return self._tx(tx)

    def absolutize_paths(self, spool: Path, output: Path) -> int:
        """Rows written by older versions hold paths relative to the directory that daemon was
        started in, which a restart elsewhere cannot resolve. The queue only ever put spooled
        photos in the spool folder and videos in the output folder, so each relative path is
        re-anchored by its file name there. Returns how many rows changed."""

        def anchor(value: str | None, folder: Path) -> str | None:
            if not value or Path(value).is_absolute():
                return value
            return str(folder / Path(value).name)

        def tx(db: sqlite3.Connection) -> int:
            n = 0
            rows = db.execute(
                "SELECT id, spec, result FROM jobs WHERE substr(json_extract(spec, '$.input_path'), 1, 1) != '/' "
                "OR substr(json_extract(result, '$.output'), 1, 1) != '/'").fetchall()
            for jid, spec_json, result_json in rows:
                spec = JobSpec.model_validate_json(spec_json)
                new_spec = spec.model_copy(update={"input_path": anchor(spec.input_path, spool) or ""})
                new_result = None
                if result_json:
                    r = JobResult.model_validate_json(result_json)
                    new_result = r.model_copy(update={"output": anchor(r.output, output),
                                                      "sidecar": anchor(r.sidecar, output)})
                if new_spec != spec or (new_result is not None and new_result.model_dump_json() != result_json):
                    db.execute("UPDATE jobs SET spec=?, result=? WHERE id=?",
                               (new_spec.model_dump_json(), new_result.model_dump_json() if new_result else None,
                                jid))
                    n += 1
            return n

        return self._tx(tx)

    def prune_finished(self, cutoff: float) -> int:
        """Delete finished rows older than `cutoff` that have been delivered. Returns the count."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM jobs WHERE finished IS NOT NULL AND finished < ? AND delivered=1 "
                f"AND state IN ({_FINAL_SQL})", (cutoff,))
            return cur.rowcount

    def delivered_outputs(self) -> list[tuple[str, Path, Path]]:
        """(job id, video, sidecar) of every delivered finished job: the only videos housekeeping
        may delete. A video not yet delivered, or a file the journal never wrote, is never listed."""
        rows = self._q("SELECT id, result FROM jobs WHERE state='done' AND delivered=1 AND result IS NOT NULL")
        out = []
        for jid, result_json in rows:
            r = JobResult.model_validate_json(result_json)
            out.append((jid, Path(r.output), Path(r.sidecar)))
        return out

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self._q("UPDATE jobs SET progress=? WHERE id=?", (json.dumps(progress), job_id))

    def mark_delivered(self, job_id: str) -> None:
        self._q("UPDATE jobs SET delivered=1 WHERE id=?", (job_id,))

    def delivery_failed(self, job_id: str, reason: str, max_attempts: int) -> tuple[int, bool]:
        """Count one failed try to hand a result back. At `max_attempts` the job is settled as
        undeliverable (no more sweeps pick it up) with the reason kept. Returns (tries, gave up)."""

        def tx(db: sqlite3.Connection) -> tuple[int, bool]:
            db.execute("UPDATE jobs SET delivery_attempts = delivery_attempts + 1 WHERE id=? AND delivered=0",
                       (job_id,))
            row = db.execute("SELECT delivery_attempts, delivered FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row[1]:
                return (row[0] if row else 0), False
            if row[0] < max_attempts:
                return row[0], False
            db.execute("UPDATE jobs SET delivered=1, delivery_error=? WHERE id=?",
                       (f"undeliverable after {row[0]} attempts: {reason}", job_id))
            return row[0], True

        return self._tx(tx)

    def cancel_queued(self, job_id: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state='cancelled', finished=?, error='cancelled' WHERE id=? AND state='queued'",
                (time.time(), job_id),
            )
            return cur.rowcount == 1

    def delete(self, job_id: str) -> None:
        self._q("DELETE FROM jobs WHERE id=?", (job_id,))

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str) -> Job | None:
        rows = self._q(f"SELECT {COLUMNS} FROM jobs WHERE id=?", (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def list(self, *, states: list[JobState] | None = None, source: str | None = None, user: str | None = None,
             limit: int = 200) -> list[Job]:
        where, args = [], []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += [s.value for s in states]
        if source:
            where.append("source = ?")
            args.append(source)
        if user is not None:
            where.append("lane = ?")
            args.append(f"{source or ''}:{user}" if source else user)
        sql = f"SELECT {COLUMNS} FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY seq DESC LIMIT ?"
        return [_row_to_job(r) for r in self._q(sql, (*args, limit))]

    def queued_in_order(self) -> list[Job]:
        """Queued jobs in the order claim_next would take them (for queue positions)."""
        queued = [_row_to_job(r) for r in self._q(f"SELECT {COLUMNS} FROM jobs WHERE state='queued' ORDER BY seq")]
        last = dict(self._q("SELECT lane, MAX(started) FROM jobs WHERE started IS NOT NULL GROUP BY lane"))
        order: list[Job] = []
        lanes: dict[str, list[Job]] = {}
        for j in queued:
            lanes.setdefault(j.lane, []).append(j)
        clock = time.time()
        while lanes:
            lane = min(lanes, key=lambda ln: (last.get(ln) or 0.0, lanes[ln][0].seq))
            order.append(lanes[lane].pop(0))
            clock += 1.0
            last[lane] = clock  # served now: goes to the back of the rotation
            if not lanes[lane]:
                del lanes[lane]
        return order

    def running_owned(self, owner: str) -> list[Job]:
        """Running jobs claimed under `owner` (the Redis dispatcher's: out on the stream), oldest first."""
        rows = self._q(f"SELECT {COLUMNS} FROM jobs WHERE state='running' AND claimed_by=? ORDER BY seq", (owner,))
        return [_row_to_job(r) for r in rows]

    def find_active_hash(self, content_hash: str, source: str) -> Job | None:
        rows = self._q(
            f"SELECT {COLUMNS} FROM jobs WHERE content_hash=? AND source=? AND state IN ('queued','running') LIMIT 1",
            (content_hash, source),
        )
        return _row_to_job(rows[0]) if rows else None

    def undelivered(self, source: str) -> list[Job]:
        rows = self._q(
            f"SELECT {COLUMNS} FROM jobs WHERE source=? AND delivered=0 AND state IN ({_FINAL_SQL}) "
            "ORDER BY seq",
            (source,),
        )
        return [_row_to_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in JobState}
        for state, n in self._q("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            out[state] = n
        return out

    def finished_before(self, cutoff: float) -> list[Job]:
        rows = self._q(f"SELECT {COLUMNS} FROM jobs WHERE finished IS NOT NULL AND finished < ? ORDER BY seq", (cutoff,))
        return [_row_to_job(r) for r in rows]

    def vacuum(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
