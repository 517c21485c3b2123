"""A fixed set of per-instance resources (sessions, infer requests) handed to one caller at a time."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Slots(Generic[T]):
    """``with slots.take() as item:`` blocks until an item is free; each item serves one caller at a time."""

    def __init__(self, items: Sequence[T]) -> None:
        if not items:
            raise ValueError("need at least one item")
        self.items = list(items)
        self._free: queue.SimpleQueue[T] = queue.SimpleQueue()
        for item in self.items:
            self._free.put(item)

    def __len__(self) -> int:
        return len(self.items)

    @contextlib.contextmanager
    def take(self) -> Iterator[T]:
        """The next free item, returned when the block ends."""
        item = self._free.get()
        try:
            yield item
        finally:
            self._free.put(item)
