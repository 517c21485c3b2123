"""A local HTTP file server on 127.0.0.1 for the download tests: Range, cut connections, redirects, HTML.

Every request is recorded as ``(path, Range header)``; ``serve_forever`` runs in a daemon thread and the
context manager shuts it down.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass
class Routes:
    """What the server answers, by request path (query strings included)."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, list[int]] = field(default_factory=dict)
    """Per path, one entry per request: close the connection after that many body bytes (the
    Content-Length header still announces the whole body)."""
    ignore_range: set[str] = field(default_factory=set)
    redirects: dict[str, str] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)
    """HTML pages (``text/html``)."""
    status: dict[str, int] = field(default_factory=dict)
    """Error statuses."""
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    routes: Routes

    def log_message(self, format: str, *args: object) -> None:  # silence the access log
        pass

    def do_GET(self) -> None:
        routes = self.routes
        routes.requests.append((self.path, self.headers.get("Range")))
        if self.path in routes.status:
            self.send_error(routes.status[self.path])
        elif self.path in routes.redirects:
            self.send_response(302)
            self.send_header("Location", routes.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path in routes.pages:
            body = routes.pages[self.path].encode()
            self._send(200, body, {"Content-Type": "text/html; charset=utf-8"})
        elif self.path in routes.files:
            self._send_file(routes.files[self.path])
        else:
            self.send_error(404)

    def _send_file(self, data: bytes) -> None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and self.path not in self.routes.ignore_range else 0
        if start >= len(data) and start:
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        headers = {"Content-Type": "application/octet-stream"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        cuts = self.routes.cut_after.get(self.path)
        cut = cuts.pop(0) if cuts else None
        self._send(206 if start else 200, body, headers, limit=cut)

    def _send(self, status: int, body: bytes, headers: dict[str, str], limit: int | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if limit is None else body[:limit])
        self.wfile.flush()
        self.close_connection = True


class FileServer:
    """``with FileServer(routes) as server:`` then ``server.url("/path")``."""

    def __init__(self, routes: Routes) -> None:
        handler = type("Handler", (_Handler,), {"routes": routes})
        self.routes = routes
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str = "") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
