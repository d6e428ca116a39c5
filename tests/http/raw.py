"""Hand-built requests for what aiohttp's client will not send: control characters in part headers, and
bodies that arrive a byte at a time."""

from __future__ import annotations

import asyncio

BOUNDARY = "wan22botTestBoundary7MA4YWxk"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart_photo(disposition: bytes, data: bytes) -> bytes:
    """A multipart body with one `photo` part whose Content-Disposition parameters are given raw."""
    return (f"--{BOUNDARY}\r\n".encode()
            + b'Content-Disposition: form-data; name="photo"; ' + disposition + b"\r\n"
            + b"Content-Type: application/octet-stream\r\n\r\n"
            + data + f"\r\n--{BOUNDARY}--\r\n".encode())


class RawUpload:
    """A POST /api/jobs over a plain socket, sent as slowly as a test wants."""

    def __init__(self, port: int, body: bytes):
        self.port = port
        self.body = body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, first_bytes: int) -> None:
        """Connect, send the headers and the first `first_bytes` of the body."""
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                f"Content-Length: {len(self.body)}\r\n\r\n").encode()
        self.writer.write(head + self.body[:first_bytes])
        await self.writer.drain()

    async def trickle(self, start: int, every: float) -> None:
        """One more byte every `every` seconds (the slow client under test), until cancelled or refused."""
        for i in range(start, len(self.body)):
            await asyncio.sleep(every)
            try:
                self.writer.write(self.body[i:i + 1])
                await self.writer.drain()
            except ConnectionError:
                return

    async def status(self, timeout: float) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of the answer, waiting at most `timeout` seconds."""
        async def read() -> tuple[int, dict[str, str], bytes]:
            line = await self.reader.readline()
            status = int(line.split()[1])
            headers = {}
            while (h := await self.reader.readline()) not in (b"\r\n", b""):
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
            return status, headers, body

        return await asyncio.wait_for(read(), timeout)

    async def closed_by_server(self, timeout: float) -> bool:
        """True once the server has closed the connection (EOF), within `timeout` seconds."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout) == b""
        except ConnectionError:
            return True

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except ConnectionError:
                pass
