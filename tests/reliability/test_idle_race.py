"""The keep-alive race, made deterministic on a real loopback socket.

A client reuses a kept-alive connection at the moment the server's idle timer fires: its next request is
already in the server's socket buffer, but the event loop has not read it yet. A timer that closes the
socket then loses that request (the client sees a reset, and a POST is not retried); this lost one request
in 46 load-test runs. Here the server (uvicorn with :func:`server.protocol.http_protocol`, the real app over
the fake backend, in this process) answers request 1; the test holds the loop off the socket, puts request
2 in the server's buffer, fires the connection's timers, lets the loop read, and expects request 2's 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
from collections.abc import AsyncIterator, Callable

import pytest
import uvicorn

from server.app import create_app
from server.protocol import http_protocol
from server.settings import Settings

from .fakes import FakeBackend
from .helpers import solid_png

BODY = solid_png((40, 50, 7), 48, 40)
REQUEST = (
    b"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """uvicorn with the service's protocol and app (fake backend) on loopback; yields it and its port."""
    settings = Settings(model="unused.onnx", warmup=False, max_side=128, bucket=64, idle_timeout_s=30)
    app = create_app(settings, backend_loader=lambda _: FakeBackend())
    protocol = http_protocol(settings, app.state.service.metrics)
    config = uvicorn.Config(app, http=protocol, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not (server.started and app.state.service.ready):
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.01)
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def read_status(reader: asyncio.StreamReader) -> int:
    """Read one response (Content-Length framed) and return its status; fails if the server closed."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
    await asyncio.wait_for(reader.readexactly(length), 10)
    return int(lines[0].split()[1])


def unread_bytes(transport: asyncio.Transport) -> int:
    """Bytes waiting in the server-side socket that the event loop has not read."""
    fd = transport.get_extra_info("socket").fileno()
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def fire_scheduled_timers(loop: asyncio.AbstractEventLoop, owner: object) -> list[str]:
    """Run now every timer ``owner`` has armed on ``loop`` (the idle, keep-alive or head timer)."""
    fired = []
    for handle in list(loop._scheduled):  # type: ignore[attr-defined]
        callback, args = handle._callback, handle._args
        if getattr(callback, "__self__", None) is owner and not handle.cancelled():
            handle.cancel()
            callback(*args)
            fired.append(callback.__name__)
    return fired


def fire_keep_alive_handler(loop: asyncio.AbstractEventLoop, protocol: object) -> list[str]:
    """Call uvicorn's keep-alive timeout handler, as its own timer would."""
    protocol.timeout_keep_alive_handler()  # type: ignore[attr-defined]
    return ["timeout_keep_alive_handler"]


@pytest.mark.parametrize("fire", [fire_scheduled_timers, fire_keep_alive_handler])
@pytest.mark.parametrize("split", [len(REQUEST), 40], ids=["whole-request", "partial-head"])
def test_request_in_the_buffer_when_the_idle_timer_fires_is_answered(
    fire: Callable[[asyncio.AbstractEventLoop, object], list[str]], split: int
) -> None:
    async def scenario() -> None:
        async with serving() as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            assert await read_status(reader) == 200
            (protocol,) = server.server_state.connections
            protocol.transport.pause_reading()  # the loop has not got to the socket yet
            writer.write(REQUEST[:split])
            await writer.drain()
            while unread_bytes(protocol.transport) < split:
                await asyncio.sleep(0.001)
            assert fire(asyncio.get_running_loop(), protocol), "no timer was armed on the idle connection"
            protocol.transport.resume_reading()
            writer.write(REQUEST[split:])  # the rest of a partial head arrives within the grace period
            try:
                status = await read_status(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                pytest.fail(f"the server closed the connection with request 2 in its buffer: {exc!r}")
            assert status == 200
            writer.close()

    asyncio.run(scenario())
