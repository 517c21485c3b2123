"""Closed-loop HTTP load in a background thread, bounded in time and requests, recording every outcome."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from bench.http import load_limits


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent and answered (monotonic s), its status, or the transport error."""

    sent: float
    done: float
    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Load:
    """``concurrency`` clients POSTing ``body`` to ``url`` back-to-back until :meth:`stop`, ``max_seconds``
    or ``max_requests``; ``start()`` returns at once."""

    url: str
    body: bytes
    concurrency: int
    max_seconds: float = 120.0
    max_requests: int = 20_000
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        """Stop sending; wait for the requests in flight; every outcome, in completion order."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)
        return list(self.outcomes)

    def _more(self) -> bool:
        return len(self.outcomes) < self.max_requests

    async def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        limits = await asyncio.to_thread(load_limits, [self.url.rsplit("/", 1)[0]], self.concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one_client() -> None:
                while not self._stop.is_set() and time.monotonic() < end and self._more():
                    sent = time.monotonic()
                    try:
                        response = await client.post(
                            self.url, content=self.body, headers={"content-type": "image/png"}
                        )
                        self.outcomes.append(Outcome(sent, time.monotonic(), response.status_code))
                    except httpx.HTTPError as exc:
                        self.outcomes.append(Outcome(sent, time.monotonic(), None, type(exc).__name__))

            await asyncio.gather(*(one_client() for _ in range(self.concurrency)))


def figures(outcomes: list[Outcome]) -> dict[str, object]:
    """Sent, answered (200), failed, and what the failures were."""
    failed = [o for o in outcomes if not o.ok]
    kinds = Counter(str(o.status) if o.status is not None else o.error for o in failed)
    answered = len(outcomes) - len(failed)
    return {"sent": len(outcomes), "answered": answered, "failed": len(failed), "failures": dict(kinds)}
