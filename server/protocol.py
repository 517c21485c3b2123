"""The HTTP/1.1 connection layer: uvicorn's h11 protocol with this service's rules for connections.

:func:`http_protocol` builds the class ``python -m server`` gives uvicorn. What it changes:

- **One idle timer** (``idle_timeout_s``) runs from a connection's opening and from each response until a
  complete request head has arrived; it replaces uvicorn's keep-alive timer and bounds slow heads
  (slowloris). When it fires while request bytes are already in the server's buffers, they are served: the
  head gets one grace period (:data:`HEAD_GRACE_S`) to complete, else 408: the timer never closes a
  connection holding bytes it has received. Responses advertise the timeout as ``Keep-Alive: timeout=N``
  (clients must drop idle connections before it: what arrives after the close cannot be answered).
- **Refusals close the connection**: a response started before the request body was fully received
  (401, 413, 415, 431, ...) carries ``Connection: close`` and the rest of the body is never served.
- **Lingering close**: when the server closes a connection whose request is unfinished (body still
  arriving, or unparsed bytes received), it half-closes its side once the answer is written (a FIN: the
  client sees the end of the answer), then reads and discards what the client still sends until the client
  closes, :data:`LINGER_S` passes or more than :data:`LINGER_BYTES` have been discarded, and only then
  closes. (Closing a socket with received bytes unread makes the kernel send a reset instead of a FIN: the
  client's next send fails, and a client that stops there, as httpx's asyncio transport does, never reads
  the answer it was sent.) A lingering connection counts toward ``max_connections`` until it closes.
- **The HTTP layer's own errors are JSON** ``{"detail": ...}`` with h11's status: 400 (malformed request
  line, header or chunk, bad Content-Length), 431 (a head over twice ``max_header_bytes``; smaller ones get
  the app's 431), 501 (a transfer coding other than chunked). A request with both Content-Length and
  Transfer-Encoding is a 400 too (RFC 9112 section 6.3). Each closes the connection.
- **At most** ``max_connections`` connections: a further one is answered 503 + Retry-After and closed.
- **Send timeout** (``send_timeout_s``): a connection whose unsent response bytes stop moving is cut.

Each refusal and cut (a lingering close ended by its time or byte bound included) is counted in
``fcn_http_errors_total{reason}``; ``fcn_connections`` is the number of open connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol
from uvicorn.server import ServerState

from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("server")

HEAD_GRACE_S = 1.0
"""Time a request head already arriving when the idle timer fires gets to complete (once per head)."""
LINGER_S = 2.0
"""Longest a lingering close waits for the client to stop sending after the answer (nginx: lingering_time)."""
LINGER_BYTES = 1024 * 1024
"""Most request bytes a lingering close discards: the read that passes this ends it (issue #18's bound: a
refused body costs at most this and :data:`LINGER_S`, not its Content-Length)."""
CLOSE = (b"connection", b"close")
FRAMING = "request has both Content-Length and Transfer-Encoding (RFC 9112 section 6.3); send only one"

Header = tuple[bytes, bytes]
_QUOTED_BYTES = re.compile(r"[:\s]+(bytearray\()?b['\"].*$", re.S)
"""h11 quotes the offending bytes after its message; the answer names the problem only."""


class StrictConnection(h11.Connection):
    """h11's server side, which also refuses Content-Length together with Transfer-Encoding (h11 lets
    Transfer-Encoding win) and keeps the error that ended the connection for the answer."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise
        if type(event) is h11.Request:
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                self.error = h11.RemoteProtocolError(FRAMING, 400)
                raise self.error
        return event


def asks_to_close(headers: Iterable[Header]) -> bool:
    """True if a ``Connection`` header among ``headers`` holds the token ``close``."""
    return any(
        name.lower() == b"connection" and b"close" in [t.strip().lower() for t in value.split(b",")]
        for name, value in headers
    )


def socket_readable(transport: asyncio.BaseTransport) -> bool:
    """True when the connection's socket has bytes (or the peer's EOF) the event loop has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class ClosingTransport(asyncio.Transport):
    """A connection's transport as uvicorn's code sees it: ``close()`` is handed to ``on_close`` (the
    protocol's, which may linger first), and from then on the connection is closing."""

    def __init__(self, transport: asyncio.Transport, on_close: Callable[[], None]) -> None:
        super().__init__()
        self._transport = transport
        self._on_close = on_close
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()

    def is_closing(self) -> bool:
        return self._closed or self._transport.is_closing()

    def abort(self) -> None:
        self._closed = True
        self._transport.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._transport.writelines(list_of_data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


def http_protocol(settings: Settings, metrics: Metrics) -> type[H11Protocol]:
    """The uvicorn ``http`` protocol class of this service, with ``settings``' connection limits."""
    idle_s, send_s = settings.idle_timeout_s, settings.send_timeout_s
    keep_alive = (b"keep-alive", f"timeout={int(idle_s)}".encode())
    max_head = 2 * settings.max_header_bytes

    class ServiceProtocol(H11Protocol):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self.conn: StrictConnection = StrictConnection(h11.SERVER, max_head)
            self.app = self._with_connection_headers(self.app)
            self._idle: asyncio.TimerHandle | None = None
            self._grace_used = False
            self._sender: asyncio.TimerHandle | None = None
            self._send_mark = (0, 0)
            self._writes = 0
            self._lingering = False
            self._linger: asyncio.TimerHandle | None = None
            self._discarded = 0
            self._lost = False

        # --- connection life -------------------------------------------------------------------------

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._socket_transport = transport  # uvicorn's code gets the ClosingTransport around it
            super().connection_made(ClosingTransport(transport, self._close))
            metrics.connections.set(len(self.connections))
            if len(self.connections) > settings.max_connections:
                self._refuse(
                    503,
                    f"too many connections (the limit is {settings.max_connections}); "
                    f"retry after {settings.retry_after_s} s",
                    "connection_limit",
                    [(b"retry-after", str(settings.retry_after_s).encode())],
                )
                return
            self._arm_idle(idle_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._lost = True
            for timer in (self._idle, self._sender, self._linger):
                if timer is not None:
                    timer.cancel()
            self._idle = self._sender = self._linger = None
            if self._discarded:
                log.debug("lingering close ended: %d request bytes discarded", self._discarded)
            super().connection_lost(exc)
            metrics.connections.set(len(self.connections))

        def data_received(self, data: bytes) -> None:
            if not self._lingering:
                super().data_received(data)
                return
            self._discarded += len(data)  # dropped, never buffered
            if self._linger is not None and self._discarded > LINGER_BYTES:
                self._end_linger("linger_bytes")

        def shutdown(self) -> None:
            if self._linger is not None:
                self._end_linger(None)  # the server is stopping: stop waiting for this client
            elif not self._lingering:
                super().shutdown()

        def handle_events(self) -> None:
            super().handle_events()
            if self._idle is not None and self.conn.their_state is not h11.IDLE:
                self._idle.cancel()  # a complete head arrived
                self._idle = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.get_write_buffer_size():
                self._watch_sending()
            self._unset_keepalive_if_required()  # the idle timer replaces uvicorn's keep-alive timer
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._grace_used = False
                self._arm_idle(idle_s)

        # --- closing, and the lingering close ------------------------------------------------------------

        def _close(self) -> None:
            """Close the connection (``transport.close()`` of uvicorn's code and ours): at once, or after
            lingering when the request is unfinished: its body still arriving, or bytes received unparsed."""
            transport = self._socket_transport
            unfinished = self.conn.their_state in (h11.SEND_BODY, h11.ERROR) or self.conn.trailing_data[0]
            if self._lost or not unfinished:
                transport.close()
                return
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            if transport.can_write_eof():
                transport.write_eof()  # a FIN once the answer is written: the client sees its end
            transport.resume_reading()
            self._lingering = True
            self._linger = self.loop.call_later(LINGER_S, self._end_linger, "linger_time")

        def _end_linger(self, reason: str | None) -> None:
            """Stop lingering and close; ``reason`` (a bound that was reached) is counted and logged."""
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            if reason is not None:
                metrics.http_errors.labels(reason).inc()
                log.info(
                    "lingering close cut (%s): the client had not closed; %d request bytes discarded "
                    "(at most %d bytes and %g s)", reason, self._discarded, LINGER_BYTES, LINGER_S,
                    extra={"reason": reason},
                )  # fmt: skip
            self._socket_transport.close()

        # --- the idle timer ----------------------------------------------------------------------------

        def _arm_idle(self, delay: float) -> None:
            if self._idle is not None:
                self._idle.cancel()
            self._idle = self.loop.call_later(delay, self._idle_expired)

        def timeout_keep_alive_handler(self) -> None:
            self._idle_expired()

        def _idle_expired(self) -> None:
            """Close an idle connection, unless request bytes have arrived: serve them (grace), or 408."""
            self._idle = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            arriving = bool(self.conn.trailing_data[0]) or socket_readable(self.transport)
            if arriving and not self._grace_used:
                log.debug("idle timeout with request bytes received: serving them (grace %g s)", HEAD_GRACE_S)
                self._grace_used = True
                self.flow.resume_reading()
                self._arm_idle(HEAD_GRACE_S)
            elif arriving:
                self._refuse(408, f"the request head did not arrive within {idle_s:g} s", "head_timeout")
            else:
                self.conn.send(h11.ConnectionClosed())
                self.transport.close()

        # --- answers of the HTTP layer -------------------------------------------------------------------

        def send_400_response(self, msg: str) -> None:
            error = self.conn.error
            status = error.error_status_hint if error is not None else 400
            if status == 431:
                reason = "head_too_large"
                detail = (
                    f"request head larger than {max_head} bytes "
                    f"(headers may total {settings.max_header_bytes} bytes)"
                )
            elif status == 501:
                reason = "unsupported_encoding"
                detail = "unsupported Transfer-Encoding: only chunked is accepted"
            elif error is not None and str(error) == FRAMING:
                reason, detail = "framing", FRAMING
            else:
                reason = "malformed"
                detail = f"malformed HTTP/1.1 request: {_QUOTED_BYTES.sub('', str(error or msg))[:200]}"
            self._refuse(status, detail, reason)

        def _refuse(self, status: int, detail: str, reason: str, headers: Iterable[Header] = ()) -> None:
            """Answer ``{"detail": detail}`` with ``status`` (if no response has begun) and close."""
            metrics.http_errors.labels(reason).inc()
            log.info("HTTP %d: %s", status, detail, extra={"status": status, "reason": reason})
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app, if it is reading this request, must not answer too
                self.cycle.message_event.set()
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                body = json.dumps({"detail": detail}).encode()
                head = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    CLOSE,
                    *headers,
                ]
                response = h11.Response(status_code=status, headers=head, reason=STATUS_PHRASES[status])
                out = self.conn.send(response) + self.conn.send(h11.Data(data=body))
                self.transport.write(out + self.conn.send(h11.EndOfMessage()))
            self.transport.close()

        def _with_connection_headers(self, app: ASGIApp) -> ASGIApp:
            """``app`` with ``Connection: close`` on answers given before the request body was all received
            (and on shutdown), else ``Keep-Alive: timeout=N``; every message sent is counted for the send
            timeout."""

            async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] != "http":
                    await app(scope, receive, send)
                    return

                async def send_with_headers(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        headers = list(message.get("headers", []))
                        body_unread = self.conn.their_state is h11.SEND_BODY
                        if (body_unread or not self.cycle.keep_alive) and not asks_to_close(headers):
                            headers.append(CLOSE)
                        elif not (
                            asks_to_close(headers)
                            or asks_to_close(scope["headers"])
                            or scope["http_version"] != "1.1"
                        ):
                            headers.append(keep_alive)
                        message = {**message, "headers": headers}
                    self._writes += 1
                    await send(message)

                await app(scope, receive, send_with_headers)

            return wrapped

        # --- the send timeout ----------------------------------------------------------------------------

        def pause_writing(self) -> None:
            super().pause_writing()
            self._watch_sending()

        def _watch_sending(self) -> None:
            if self._sender is None:
                self._send_mark = (self.transport.get_write_buffer_size(), self._writes)
                self._sender = self.loop.call_later(send_s, self._check_sending)

        def _check_sending(self) -> None:
            """Cut the connection if its unsent bytes have not moved since the last check."""
            self._sender = None
            waiting = self.transport.get_write_buffer_size()
            if not waiting:
                return
            if waiting < self._send_mark[0] or self._writes != self._send_mark[1]:
                self._watch_sending()
                return
            metrics.http_errors.labels("send_timeout").inc()
            log.info(
                "send timeout: %d response bytes not taken by the client in %g s", waiting, send_s,
                extra={"reason": "send_timeout"},
            )  # fmt: skip
            sock = self.transport.get_extra_info("socket")
            if sock is not None:  # reset: the kernel drops what it still buffers for this client too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    return ServiceProtocol
