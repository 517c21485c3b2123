"""The engine cache on disk: atomic writes, the build lock and the record of a failed build.

Replicas may share one cache folder (a ``hostPath`` on a Kubernetes node, one compose volume), so:

* every file (plan, sidecar, timing cache, build flags) is written to a temporary file in the same folder
  and renamed over the old one (:func:`write_atomic`): a reader sees the old file or the new one, never half;
* a builder holds an exclusive ``flock`` on ``<plan>.lock`` from its cache check to its last rename, and a
  reader (the server) holds a shared one while it reads the sidecar and deserializes the plan
  (:func:`cache_lock`), so the pair it reads belongs together;
* a failed build leaves ``<plan>.failed.json`` (:func:`write_build_failure`), which the server reports as
  the reason it serves ONNX Runtime instead.

Pure standard library (``fcntl``: Linux and macOS), no TensorRT.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

LOCK_SUFFIX = ".lock"
FAILURE_SUFFIX = ".failed.json"
POLL_S = 0.1


class CacheLocked(TimeoutError):
    """The cache lock could not be taken in time (a build is still running, or hung)."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o644)  # mkstemp makes 0600; the server may run as another user
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def lock_path(plan: Path) -> Path:
    """``model.plan`` → ``model.plan.lock``."""
    return Path(plan).with_name(Path(plan).name + LOCK_SUFFIX)


@contextlib.contextmanager
def cache_lock(plan: Path, *, shared: bool = False, timeout_s: float = 1800.0) -> Iterator[bool]:
    """Hold the cache lock of ``plan``: exclusive for a builder, ``shared`` for a reader.

    Yields whether a lock is held: a reader whose lock file does not exist (nothing ever built into this
    folder, or a read-only copy) reads without one. Raises :class:`CacheLocked` after ``timeout_s``.
    """
    path = lock_path(plan)
    if shared:
        try:
            descriptor = os.open(path, os.O_RDONLY)  # works on a read-only mount
        except FileNotFoundError:
            yield False
            return
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CacheLocked(
                        f"{path} stayed locked for {timeout_s:.0f} s (an engine build still running?)"
                    ) from None
                time.sleep(POLL_S)
        yield True
    finally:
        os.close(descriptor)  # closing releases the flock


def failure_path(plan: Path) -> Path:
    """``model.plan`` → ``model.plan.failed.json``."""
    return Path(plan).with_name(Path(plan).name + FAILURE_SUFFIX)


def write_build_failure(plan: Path, reason: str, exit_code: int) -> Path:
    """Record why the engine of ``plan`` could not be built (the server reports it)."""
    record = {
        "reason": reason,
        "exit_code": exit_code,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = failure_path(plan)
    write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
    return path


def read_build_failure(plan: Path) -> str | None:
    """The recorded reason the last build of ``plan`` failed, or None when there is no record."""
    path = failure_path(plan)
    try:
        record = json.loads(path.read_text())
        return f"{record['reason']} (exit code {record['exit_code']}, {record['at']})"
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable build-failure record {path} ({type(error).__name__})"


def clear_build_failure(plan: Path) -> None:
    """Forget an earlier failure (after a successful build)."""
    failure_path(plan).unlink(missing_ok=True)
