"""Prometheus metrics for `GET /metrics`, on a registry of our own (not prometheus_client's global one).

Two kinds of numbers:
- event-driven ones (stage time histograms, finished-job counters) are updated from the queue's job
  events as they happen;
- state ones (queue depth, jobs by state, model loaded, GPU memory) are read at scrape time:
  `await metrics.render()` takes a snapshot of the queue counts (an async journal call) and the
  collector below reports it. GPU memory gauges exist only when CUDA is in use.

Nothing here imports torch: if the process has not loaded it, there is no GPU to report.
"""

from __future__ import annotations

import sys
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .jobs import FINAL_STATES, TIMING_KEYS, JobState

CONTENT_TYPE = CONTENT_TYPE_LATEST

# From a tiny-model CPU run (hundredths of a second) to a cold 161-frame run on a large card.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 1800.0)
OUTCOMES = FINAL_STATES


class Metrics:
    """All wan22bot metrics. `queue` and `worker` may be None (then their gauges are left out)."""

    def __init__(self, queue: Any = None, worker: Any = None):
        self.queue = queue
        self.worker = worker
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "wan22bot_stage_seconds", "Seconds each stage of a finished job took", ["stage"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.jobs_finished = Counter(
            "wan22bot_jobs_finished", "Jobs that reached a final state since the daemon started", ["outcome"],
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "wan22bot_jobs_submitted", "Jobs queued since the daemon started", ["source"], registry=self.registry,
        )
        self.http_requests = Counter(
            "wan22bot_http_requests", "HTTP requests answered", ["route", "status"], registry=self.registry,
        )
        self.uploads_rejected = Counter(
            "wan22bot_http_uploads_rejected", "Uploads refused before queueing", ["reason"], registry=self.registry,
        )
        for stage in TIMING_KEYS:  # every series exists from the start, so dashboards see zeros
            self.stage_seconds.labels(stage=stage)
        for outcome in OUTCOMES:
            self.jobs_finished.labels(outcome=outcome)
        self._counts: dict[str, int] = {}
        self.registry.register(_StateCollector(self))

    # ------------------------------------------------------------------ events
    def on_event(self, event: Any) -> None:
        """A queue listener (synchronous; cheap)."""
        kind = event.kind
        if kind == "queued":
            self.jobs_submitted.labels(source=event.job.source).inc()
        elif kind in OUTCOMES:
            self.jobs_finished.labels(outcome=kind).inc()
            result = event.job.result
            if kind == "done" and result is not None:
                self.observe_timings(result.timings)

    def observe_timings(self, timings: dict[str, float]) -> None:
        for stage in TIMING_KEYS:
            v = timings.get(stage)
            if v is not None and v >= 0:
                self.stage_seconds.labels(stage=stage).observe(float(v))

    # ------------------------------------------------------------------ scrape
    async def refresh(self) -> None:
        if self.queue is not None:
            self._counts = dict(await self.queue.counts())

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


class _StateCollector:
    """Reports the state read at scrape time (a custom collector so absent things stay absent)."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def collect(self):
        m = self.m
        if m.queue is not None:
            counts = m._counts
            depth = GaugeMetricFamily("wan22bot_queue_depth", "Jobs waiting in the queue")
            depth.add_metric([], counts.get(JobState.queued.value, 0))
            yield depth
            by_state = GaugeMetricFamily("wan22bot_jobs_by_state", "Jobs in the journal by state", labels=["state"])
            for state in JobState:
                by_state.add_metric([state.value], counts.get(state.value, 0))
            yield by_state
            limit = GaugeMetricFamily("wan22bot_queue_max_length", "Queued jobs accepted before refusing more")
            limit.add_metric([], getattr(m.queue, "max_length", 0))
            yield limit
        worker = m.worker
        if worker is not None:
            renderer = getattr(worker, "renderer", None)
            loaded = GaugeMetricFamily("wan22bot_model_loaded", "1 while the models are resident")
            loaded.add_metric([], 1.0 if renderer is not None and renderer.loaded else 0.0)
            yield loaded
            busy = GaugeMetricFamily("wan22bot_worker_busy", "1 while a job is running")
            busy.add_metric([], 1.0 if getattr(worker, "current", None) is not None else 0.0)
            yield busy
            if hasattr(worker, "states"):
                yield from worker_process_families(worker.states())
        yield from gpu_memory_families()


def worker_process_families(states: list[dict[str, Any]]):
    """Per worker process ([gpus] devices): up, busy, restarts, and the memory it reported."""
    labels = ["worker", "device"]
    up = GaugeMetricFamily("wan22bot_worker_process_up", "1 while the process has its models resident", labels=labels)
    busy = GaugeMetricFamily("wan22bot_worker_process_busy", "1 while the process runs a job", labels=labels)
    restarts = GaugeMetricFamily("wan22bot_worker_process_restarts", "Times the daemon started it again",
                                 labels=labels)
    mem = GaugeMetricFamily("wan22bot_worker_process_memory_bytes",
                            "Memory the process reported: allocated/reserved/total on CUDA, rss on the CPU",
                            labels=[*labels, "kind"])
    for s in states:
        key = [s["name"], s["device"]]
        up.add_metric(key, 1.0 if s["state"] in ("idle", "busy", "following") else 0.0)
        busy.add_metric(key, 1.0 if s["busy"] else 0.0)
        restarts.add_metric(key, float(s["restarts"]))
        for kind, v in (s.get("memory") or {}).items():
            mem.add_metric([*key, kind], float(v))
    yield from (up, busy, restarts, mem)


def gpu_memory_families():
    """torch.cuda memory gauges, only when torch is loaded and CUDA is initialised."""
    info = gpu_memory()
    if not info:
        return
    alloc = GaugeMetricFamily("wan22bot_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated", labels=["device"])
    reserved = GaugeMetricFamily("wan22bot_gpu_memory_reserved_bytes", "torch.cuda.memory_reserved", labels=["device"])
    total = GaugeMetricFamily("wan22bot_gpu_memory_total_bytes", "Memory of the card", labels=["device"])
    for d in info:
        alloc.add_metric([d["device"]], d["allocated"])
        reserved.add_metric([d["device"]], d["reserved"])
        total.add_metric([d["device"]], d["total"])
    yield alloc
    yield reserved
    yield total


def gpu_memory() -> list[dict[str, Any]]:
    """Per CUDA device: allocated/reserved/total bytes and the name. Empty without CUDA.

    Only looks at torch if something already imported it, and only asks CUDA once it is
    initialised, so a scrape never pays for a torch import or creates a CUDA context.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append({
                "device": f"cuda:{i}",
                "name": props.name,
                "allocated": int(torch.cuda.memory_allocated(i)),
                "reserved": int(torch.cuda.memory_reserved(i)),
                "total": int(props.total_memory),
            })
        return out
    except Exception:  # a driver hiccup must not break a scrape or the status page
        return []
