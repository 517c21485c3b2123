"""ASGI middleware: request id and log line, request metrics, the header size limit (431)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_response
from server.logs import request_id_var
from server.metrics import Metrics

log = logging.getLogger("server")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
"""The X-Request-ID values echoed and logged as given; any other value is replaced by a new id."""


def request_id_of(scope: Scope) -> tuple[str, str | None]:
    """The client's X-Request-ID if it matches :data:`REQUEST_ID`, else a new id; and the value replaced."""
    given = dict(scope["headers"]).get(b"x-request-id")
    if given is None:
        return uuid.uuid4().hex, None
    text = given.decode("latin-1")
    if REQUEST_ID.fullmatch(text):
        return text, None
    return uuid.uuid4().hex, text


class RequestIdMiddleware:
    """Gives each request an id (the client's X-Request-ID if safe), echoes it, logs one line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, replaced = request_id_of(scope)
        token = request_id_var.set(request_id)
        if replaced is not None:
            log.info(
                "X-Request-ID replaced: 1 to 128 of A-Z a-z 0-9 . _ : / + = - are accepted",
                extra={"given": ascii(replaced[:64]) + ("..." if len(replaced) > 64 else "")},
            )
        start = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={"status": status, "ms": round((time.perf_counter() - start) * 1000, 2)},
            )
            request_id_var.reset(token)


def is_inference(path: str) -> bool:
    """``POST /segment`` and the protocol's ``/v2/models/.../infer``: the requests counted and timed."""
    return path == "/segment" or (path.startswith("/v2/models/") and path.endswith("/infer"))


class RequestMetrics:
    """Counts every answer to an inference request by status and by the model version that answered
    (``X-Model`` / ``X-Model-Version``; empty for refusals such as 401, 413 or 431) and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_inference(scope["path"]):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                model = headers.get(b"x-model", b"").decode("latin-1")
                version = headers.get(b"x-model-version", b"").decode("latin-1")
                self.metrics.requests.labels(str(message["status"]), model, version).inc()
                self.metrics.request_seconds.observe(time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, counting_send)


class HeaderLimitMiddleware:
    """Answers 431 when the request's headers add up to more than ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.limit:
                detail = f"request headers total {size} bytes; the limit is {self.limit} bytes"
                await error_response(431, detail, {"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)
