"""The connection layer (server/protocol.py) on raw sockets: idle and head timeouts, JSON errors of the
HTTP layer, request framing, refusals that close and the lingering close after them, the connection
limit, the send timeout, and the load clients' idle expiry.

One real server process over the fake backend with small limits (idle 1 s, send timeout 1 s, 12
connections, an API key). Its clients are raw sockets, or pools that expire idle connections first.
"""

from __future__ import annotations

import ast
import inspect
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from bench.http import load_limits
from server.protocol import HEAD_GRACE_S, LINGER_BYTES, LINGER_S
from server.settings import Settings

from .fakes import FakeSpec
from .helpers import LEAK_PATTERNS, metrics, solid_png, wait_until
from .rawhttp import RawResponse, connect, read_response, readable, send_unread, wait_closed
from .serverproc import REPO_ROOT, ServerProcess, fake_server

KEY = "edge-key"
IDLE_S = 1
MAX_CONNECTIONS = 12
EDGE_SETTINGS: dict[str, object] = {
    "idle_timeout_s": IDLE_S,
    "send_timeout_s": 1,
    "max_connections": MAX_CONNECTIONS,
    "max_header_bytes": 4096,
    "api_key": KEY,
    "deadline_ms": 20_000,
}
PNG = solid_png((30, 60, 90))


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with fake_server(tmp_path_factory.mktemp("edge"), EDGE_SETTINGS, FakeSpec()) as server:
        yield server


def http_errors(url: str, reason: str) -> float:
    return metrics(url).get(f'fcn_http_errors_total{{reason="{reason}"}}', 0.0)


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def assert_json_refusal(response: RawResponse, status: int) -> str:
    """``status`` with ``{"detail": str}``, no internals, and ``Connection: close``."""
    assert response.status_code == status, (response.status_code, response.body[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert response.headers.get("connection") == "close", response.headers
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"], body
    for pattern in LEAK_PATTERNS:
        assert pattern not in body["detail"], (pattern, body)
    return body["detail"]


def test_idle_timeout_is_advertised_and_idle_connections_close_after_it(edge: ServerProcess) -> None:
    sock = connect(edge.url)
    try:
        sock.sendall(head("GET", "/health/live", {}))
        response = read_response(sock)
        start = time.monotonic()
        assert response.status_code == 200
        assert response.headers["keep-alive"] == f"timeout={IDLE_S}"
        assert wait_closed(sock, IDLE_S + 2.0), "the idle connection was not closed"
        assert time.monotonic() - start >= IDLE_S - 0.2, "closed before the idle timeout"
    finally:
        sock.close()
    with connect(edge.url) as sock:  # a client that asks to close is not promised a keep-alive
        sock.sendall(head("GET", "/health/live", {"Connection": "close"}))
        assert "keep-alive" not in read_response(sock).headers


def test_half_sent_head_gets_408_after_the_idle_timeout_and_its_grace(edge: ServerProcess) -> None:
    before = http_errors(edge.url, "head_timeout")
    with connect(edge.url) as sock:
        start = time.monotonic()
        sock.sendall(b"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n")
        assert httpx.get(edge.url + "/health/live").status_code == 200  # others are served meanwhile
        assert readable(sock, IDLE_S + HEAD_GRACE_S + 2.0), "the server still holds the half-sent head"
        elapsed = time.monotonic() - start
        assert "did not arrive" in assert_json_refusal(read_response(sock), 408)
        assert wait_closed(sock, 1.0)
    assert IDLE_S <= elapsed <= IDLE_S + HEAD_GRACE_S + 1.0, elapsed
    assert http_errors(edge.url, "head_timeout") == before + 1


CHUNKED = {"Content-Type": "image/png", "Transfer-Encoding": "chunked", "X-API-Key": KEY}


@pytest.mark.parametrize(
    ("raw", "status", "reason", "phrase"),
    [
        (head("POST", "/segment", {"Content-Length": "12abc"}), 400, "malformed", "Content-Length"),
        (head("POST", "/segment", {"Content-Length": "1, 2"}), 400, "malformed", "Content-Length"),
        (head("POST", "/segment", CHUNKED) + b"zz\r\n", 400, "malformed", "chunk"),
        (b"GARBAGE\r\n\r\n", 400, "malformed", "request line"),
        (b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", 400, "malformed", "header"),
        (head("GET", "/", {"Transfer-Encoding": "gzip"}), 501, "unsupported_encoding", "chunked"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 10_000, 431, "head_too_large", "4096"),
    ],
    ids=["content-length", "two-lengths", "chunk-size", "request-line", "header-line", "gzip", "huge-head"],
)
def test_errors_of_the_http_layer_are_json_and_close(
    edge: ServerProcess, raw: bytes, status: int, reason: str, phrase: str
) -> None:
    before = http_errors(edge.url, reason)
    with connect(edge.url) as sock:
        sock.sendall(raw)
        assert phrase in assert_json_refusal(read_response(sock), status)
        assert wait_closed(sock, 1.0)
    assert http_errors(edge.url, reason) == before + 1


def test_content_length_with_transfer_encoding_is_400_and_the_smuggled_request_is_never_answered(
    edge: ServerProcess,
) -> None:
    smuggled = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    both = {"Content-Type": "image/png", "Content-Length": "5", "Transfer-Encoding": "chunked"}
    with connect(edge.url) as sock:
        sock.sendall(head("POST", "/segment", both) + b"0\r\n\r\n" + smuggled)
        assert "Transfer-Encoding" in assert_json_refusal(read_response(sock), 400)
        rest = b""
        while readable(sock, 1.0):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    assert b"HTTP/1.1" not in rest, rest


def open_connections(url: str) -> float:
    """The server's ``fcn_connections`` (the connection asking for it included)."""
    return metrics(url)["fcn_connections"]


SMALL_SEND_BUFFER = 64 * 1024
"""The clients' SO_SNDBUF here: their sends block as soon as the server stops reading."""


@pytest.mark.parametrize(
    ("key", "status"), [({}, 401), ({"X-API-Key": KEY}, 413)], ids=["no-key", "over-the-body-limit"]
)
def test_a_refused_upload_sent_before_reading_gets_its_answer_not_a_reset(
    edge: ServerProcess, key: dict[str, str], status: int
) -> None:
    """A client that sends its whole body before it reads (as HTTP clients do) is refused after the head,
    while the body is still coming: the server must take the rest of the body (up to LINGER_BYTES), so the
    client's send completes and it reads the whole answer, then the server's FIN. Before the lingering
    close, the server closed its socket with unread bytes, the kernel answered with a reset, and the
    client's send failed (ConnectionResetError, once BrokenPipeError) after 64 KB to 590 KB of the body in
    10 runs of 10; an asyncio client such as httpx's then drops the answer it has not read yet
    (``httpx.ReadError``). The server ends the linger as soon as the client closes."""
    body = bytes(LINGER_BYTES)  # over the 300 kB body limit, and more than the socket buffers hold
    before = open_connections(edge.url)
    cuts = http_errors(edge.url, "linger_time") + http_errors(edge.url, "linger_bytes")
    with connect(edge.url, send_buffer=SMALL_SEND_BUFFER) as sock:
        length = {"Content-Type": "image/png", "Content-Length": str(len(body))}
        sock.sendall(head("POST", "/segment", {**length, **key}))
        sent, error = send_unread(sock, body)
        assert error is None, f"reset after {sent} of {len(body)} body bytes: {error!r}"
        assert_json_refusal(read_response(sock), status)
        assert sock.recv(1) == b"", "no end of the answer (FIN) after it"
    closed_at = time.monotonic()
    assert wait_until(lambda: open_connections(edge.url) <= before, LINGER_S), "still lingering"
    assert time.monotonic() - closed_at < LINGER_S / 2, "the linger did not end when the client closed"
    assert http_errors(edge.url, "linger_time") + http_errors(edge.url, "linger_bytes") == cuts


def _refused_then_sending(edge: ServerProcess, first: bytes, status: int) -> socket.socket:
    """A connection that sent ``first`` and read its refusal (``status``, Connection: close), then the
    server's FIN: the server is lingering on it."""
    sock = connect(edge.url, send_buffer=SMALL_SEND_BUFFER)
    sock.sendall(first)
    assert_json_refusal(read_response(sock), status)
    assert sock.recv(1) == b"", "no end of the answer (FIN) after it"
    return sock


def _send_until_cut(sock: socket.socket, block: bytes, pause: float, since: float) -> tuple[float, int]:
    """Send ``block`` every ``pause`` s until a send fails (the server cut the connection); the seconds
    from ``since`` (a ``time.monotonic()``) to the cut and the bytes the kernel took. Fails if the
    connection outlives the linger bounds by 3 s."""
    taken = 0
    while time.monotonic() - since < LINGER_S + 3.0:
        try:
            sock.sendall(block)
        except OSError:
            return time.monotonic() - since, taken
        taken += len(block)
        time.sleep(pause)
    pytest.fail(f"the connection stayed open {LINGER_S + 3.0} s after the refusal; it took {taken} bytes")


def test_a_client_still_sending_after_a_refusal_is_cut_after_the_linger_time(edge: ServerProcess) -> None:
    """A client trickling its body after a 401 (chunked) holds the connection no longer than LINGER_S: not
    cut earlier by the idle timeout (1 s), counted in fcn_connections until then, cut once. A second refused
    client (415) that closes after its answer is closed at once, and its linger timer never fires."""
    before = open_connections(edge.url)
    cuts = http_errors(edge.url, "linger_time")
    no_key = {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}
    text = {"Content-Type": "text/plain", "Content-Length": "100000", "X-API-Key": KEY}
    with _refused_then_sending(edge, head("POST", "/segment", no_key) + b"1\r\nx\r\n", 401) as trickler:
        refused_at = time.monotonic()
        _refused_then_sending(edge, head("POST", "/segment", text) + b"abc", 415).close()
        assert wait_until(lambda: open_connections(edge.url) == before + 1, 1.0), "the 415's lingers"
        elapsed, taken = _send_until_cut(trickler, b"1\r\ny\r\n", 0.05, refused_at)
    assert LINGER_S - 0.1 <= elapsed <= LINGER_S + 1.0, elapsed
    assert taken < 1000, taken
    assert wait_until(lambda: open_connections(edge.url) <= before, 1.0)
    assert http_errors(edge.url, "linger_time") == cuts + 1


def test_a_client_still_sending_after_a_refusal_is_cut_after_linger_bytes(edge: ServerProcess) -> None:
    """After a 413 for ``Content-Length: 10^15`` the server discards at most about LINGER_BYTES of what the
    client keeps sending as fast as it can, then cuts: the body is not read to its end."""
    cuts = http_errors(edge.url, "linger_bytes")
    huge = {"Content-Type": "image/png", "Content-Length": "1000000000000000", "X-API-Key": KEY}
    with _refused_then_sending(edge, head("POST", "/segment", huge), 413) as sock:
        elapsed, taken = _send_until_cut(sock, bytes(65536), 0.0, time.monotonic())
    print(f"linger bytes: cut after {elapsed:.3f} s, {taken} bytes taken (LINGER_BYTES {LINGER_BYTES})")
    assert LINGER_BYTES < taken < LINGER_BYTES + 4 * 1024 * 1024, taken  # + what the socket buffers hold
    assert elapsed < LINGER_S, elapsed
    assert http_errors(edge.url, "linger_bytes") == cuts + 1


def test_refusals_are_counted_in_the_request_metrics(edge: ServerProcess) -> None:
    before = metrics(edge.url).get('fcn_requests_total{status="401"}', 0.0)
    with httpx.Client(limits=load_limits([edge.url], 1)) as client:
        response = client.post(edge.url + "/segment", content=PNG, headers={"Content-Type": "image/png"})
    assert response.status_code == 401
    assert metrics(edge.url)['fcn_requests_total{status="401"}'] == before + 1


def test_connections_beyond_the_limit_are_refused_with_503(edge: ServerProcess) -> None:
    """Connections held by requests whose body is still arriving, up to the limit; the next one is refused
    with 503 + Retry-After; once one closes, a new connection is served again."""
    busy = head("POST", "/segment", {"Content-Type": "image/png", "Content-Length": "1000", "X-API-Key": KEY})
    before = http_errors(edge.url, "connection_limit")
    held: list[socket.socket] = []
    refused = None
    try:
        for _ in range(MAX_CONNECTIONS + 3):
            sock = connect(edge.url)
            sock.sendall(busy + b"x")
            if readable(sock, 0.2):
                refused = read_response(sock)
                assert wait_closed(sock, 1.0)
                sock.close()
                break
            held.append(sock)
        assert refused is not None, f"{len(held)} connections were accepted; the limit is {MAX_CONNECTIONS}"
        assert MAX_CONNECTIONS - 2 <= len(held) <= MAX_CONNECTIONS, len(held)
        assert "too many connections" in assert_json_refusal(refused, 503)
        assert refused.headers["retry-after"] == "1"
        held.pop().close()

        def served() -> bool:
            with connect(edge.url) as sock:
                sock.sendall(head("GET", "/health/live", {}))
                return read_response(sock).status_code == 200

        assert wait_until(served, 3.0, 0.1)
    finally:
        for sock in held:
            sock.close()
    assert http_errors(edge.url, "connection_limit") >= before + 1


def test_a_client_that_does_not_read_is_cut_after_the_send_timeout(edge: ServerProcess) -> None:
    """1000 pipelined requests for a 13 KB file, never read: the server's unsent bytes stop moving, and the
    connection is reset after the send timeout instead of holding them."""
    size = len((REPO_ROOT / "server" / "static" / "app.js").read_bytes())
    before = http_errors(edge.url, "send_timeout")
    with connect(edge.url, receive_buffer=4096) as sock:
        sock.sendall(head("GET", "/static/app.js", {}) * 1000)
        assert wait_until(lambda: http_errors(edge.url, "send_timeout") > before, 5.0, 0.2)
        received = 0
        try:
            while chunk := sock.recv(65536):
                received += len(chunk)
        except ConnectionError:
            pass
    assert received < 1000 * size / 4, received


def test_load_clients_expire_idle_connections_well_before_the_server(edge: ServerProcess) -> None:
    """Every load client (an httpx.AsyncClient in bench/ or tests/) takes its pool limits from
    bench.http.load_limits, which expires idle connections at half the idle timeout the server advertises;
    httpx's default expiry (the other clients') is at most a third of the default idle timeout."""
    assert load_limits([edge.url], 4).keepalive_expiry == IDLE_S / 2
    default_idle = Settings.model_fields["idle_timeout_s"].default
    httpx_default = inspect.signature(httpx.Limits).parameters["keepalive_expiry"].default
    assert httpx_default * 3 <= default_idle  # type: ignore[operator]
    for path in [*(REPO_ROOT / "bench").rglob("*.py"), *(REPO_ROOT / "tests").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        for node in calls:
            where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
            if ast.unparse(node.func) == "httpx.Limits":
                assert path == REPO_ROOT / "bench" / "http.py", f"{where}: pool limits not from load_limits"
            if ast.unparse(node.func) == "httpx.AsyncClient":
                assert any(k.arg == "limits" for k in node.keywords), f"{where}: a load client without limits"
                assert "load_limits" in names, f"{where}: pool limits not from load_limits"
