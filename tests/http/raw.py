"""Hand-built requests for what aiohttp's client refuses to send: control characters in part headers."""

from __future__ import annotations

BOUNDARY = "wan22botTestBoundary7MA4YWxk"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart_photo(disposition: bytes, data: bytes) -> bytes:
    """A multipart body with one `photo` part whose Content-Disposition parameters are given raw."""
    return (f"--{BOUNDARY}\r\n".encode()
            + b'Content-Disposition: form-data; name="photo"; ' + disposition + b"\r\n"
            + b"Content-Type: application/octet-stream\r\n\r\n"
            + data + f"\r\n--{BOUNDARY}--\r\n".encode())
