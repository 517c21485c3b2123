"""Raw-socket HTTP/1.1 for what httpx cannot do: trickle a body, stream past a limit, send giant headers."""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body)  # type: ignore[no-any-return]


def connect(
    url: str, timeout: float = 10.0, receive_buffer: int | None = None, send_buffer: int | None = None
) -> socket.socket:
    """A TCP connection to ``url``'s host and port (``receive_buffer``, ``send_buffer``: SO_RCVBUF and
    SO_SNDBUF in bytes, set first; a small send buffer makes sends block as soon as the server stops
    reading)."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.settimeout(timeout)
    sock.connect((parts.hostname, parts.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def readable(sock: socket.socket, wait: float = 0.0) -> bool:
    """True when the server has sent something (or closed) on ``sock``."""
    return bool(select.select([sock], [], [], wait)[0])


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """True once the server closes ``sock`` (EOF or reset) within ``timeout`` s; data it sent is dropped."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if readable(sock, min(0.05, max(0.0, end - time.monotonic()))):
            try:
                if not sock.recv(65536):
                    return True
            except ConnectionError:
                return True
    return False


def send_unread(sock: socket.socket, data: bytes, block: int = 65536) -> tuple[int, OSError | None]:
    """Send ``data`` without reading anything, as an HTTP client sends a body before it reads the answer,
    until all is sent or a send fails (the server reset the connection, or the socket timed out); returns
    the bytes the kernel took and the error."""
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent : sent + block])
    except OSError as exc:
        return sent, exc
    return sent, None


def read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse:
    """Read one response (Content-Length bodies, as the server sends) from ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full response head: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body[:length])


def stream_chunked_until_answer(
    url: str, content_type: str, chunk: bytes, max_bytes: int, path: str = "/segment"
) -> tuple[RawResponse, int]:
    """Send a chunked body (no Content-Length) until the server answers; return it and the bytes sent.

    Stops sending as soon as the server has answered, so a server that enforces its byte limit while
    streaming answers after about ``limit`` bytes, not after ``max_bytes``.
    """
    sock = connect(url)
    try:
        sock.sendall(request_head(path, {"Content-Type": content_type, "Transfer-Encoding": "chunked"}))
        sent = 0
        while sent < max_bytes and not readable(sock):
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        if sent >= max_bytes:
            sock.sendall(b"0\r\n\r\n")
        return read_response(sock), sent
    finally:
        sock.close()


def send_head_only(url: str, headers: dict[str, str], path: str = "/segment") -> RawResponse:
    """Send only the request head (e.g. a huge Content-Length with no body) and read the answer."""
    sock = connect(url)
    try:
        sock.sendall(request_head(path, headers))
        return read_response(sock)
    finally:
        sock.close()


class Trickler:
    """A slow client: sends a request head, then its body one byte every ``interval`` seconds."""

    def __init__(self, url: str, body: bytes, content_type: str, interval: float) -> None:
        self.sock = connect(url, timeout=30)
        self.body = body
        self.interval = interval
        self.sent = 0
        self.sock.sendall(
            request_head("/segment", {"Content-Type": content_type, "Content-Length": str(len(body))})
        )

    def trickle(self, seconds: float) -> None:
        """Send one byte per interval for ``seconds``, or until the body is complete or the server answers."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.sent < len(self.body) and not readable(self.sock):
            self.sock.sendall(self.body[self.sent : self.sent + 1])
            self.sent += 1
            time.sleep(self.interval)

    def finish(self) -> RawResponse:
        self.sock.sendall(self.body[self.sent :])
        self.sent = len(self.body)
        return read_response(self.sock)

    def close(self) -> None:
        self.sock.close()
