"""Inference backends: ``run(uint8 [N, H, W, 3]) -> uint8 [N, H, W]`` and nothing about queues or HTTP."""

from server.backends.base import Backend, BackendError, Fallback

__all__ = ["Backend", "BackendError", "Fallback"]
