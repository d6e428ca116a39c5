"""Several devices in one box: a worker process per device, or one job split across devices.

- `protocol`: the JSON-line messages between the daemon and its worker processes.
- `procworker`: a worker process's entry (`python -m wan22bot.gpus.procworker`).
- `supervisor`: launches, watches and restarts the processes from the daemon's event loop and
  shows their state; `WorkerPool` stands where the in-process Worker stands.
- `split`: sequence-parallel (Ulysses) attention for one job over all devices.
"""
