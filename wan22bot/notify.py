"""systemd's sd_notify protocol (READY, STATUS, WATCHDOG, STOPPING), spoken directly.

A datagram to $NOTIFY_SOCKET; a no-op when not started by systemd with Type=notify.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self.addr = ("\0" + addr[1:]) if addr and addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        ok_pid = pid is None or pid == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1e6 if usec and usec.isdigit() and ok_pid else None

    @property
    def enabled(self) -> bool:
        return bool(self.addr)

    def send(self, **fields: str) -> bool:
        if not self.addr:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.addr)
                s.sendall(msg)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.send(ready="1", status=status) if status else self.send(ready="1")

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def watchdog(self) -> bool:
        return self.send(watchdog="1")

    def stopping(self) -> bool:
        return self.send(stopping="1")

    def reloading(self) -> bool:
        return self.send(reloading="1")
