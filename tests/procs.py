"""What the tests' handles on a spawned wan22bot process (daemon, worker) share: stopping it by a
signal or by kill -9, and closing the log file the process writes into."""

from __future__ import annotations

import signal


class ProcHandle:
    proc = None  # subprocess.Popen, set by the subclass's start
    _logf = None  # the log file handed to the process

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._logf.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._logf.close()
