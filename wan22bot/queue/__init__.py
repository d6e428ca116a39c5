"""The durable job queue: a SQLite journal (journal.py) behind an asyncio front (jobqueue.py)."""

from .jobqueue import JobQueue, QueueFull
from .models import Job, JobEvent

__all__ = ["Job", "JobEvent", "JobQueue", "QueueFull"]
