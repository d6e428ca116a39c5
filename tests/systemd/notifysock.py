"""A listening sd_notify socket, as systemd's manager has one: AF_UNIX, SOCK_DGRAM, sender credentials."""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass


@dataclass
class Datagram:
    t: float  # time.monotonic() at receipt
    pid: int | None  # the sender, from SCM_CREDENTIALS
    fields: dict[str, str]
    raw: bytes


def parse_fields(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode("utf-8").split("\n"):
        if line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


class NotifySocket:
    def __init__(self, address: str):
        """`address`: a file system path, or "\\0name" for the abstract namespace."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.received: list[Datagram] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def recv_one(self, timeout: float = 5.0) -> Datagram:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
            except TimeoutError:
                continue
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, _uid, _gid = struct.unpack("3i", payload[: struct.calcsize("3i")])
            return Datagram(time.monotonic(), pid, parse_fields(data), data)
        raise AssertionError(f"no notification within {timeout} s")

    def start(self) -> "NotifySocket":
        self._thread = threading.Thread(target=self._collect, daemon=True, name="notify-collector")
        self._thread.start()
        return self

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                d = self.recv_one(0.2)
            except AssertionError:
                continue
            except OSError:
                return
            with self._lock:
                self.received.append(d)

    def snapshot(self) -> list[Datagram]:
        with self._lock:
            return list(self.received)

    def wait_for(self, pred, timeout: float, what: str) -> Datagram:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in self.snapshot():
                if pred(d):
                    return d
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout} s; got {[d.fields for d in self.snapshot()]}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sock.close()
