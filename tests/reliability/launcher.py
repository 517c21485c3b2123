"""``python -m tests.reliability.launcher``: the real server process (uvicorn, drain) over FakeBackend.

Settings come from the usual FCN_* variables; the fake's behaviour from ``RELIABILITY_FAKE_BACKEND`` (JSON).
"""

from __future__ import annotations

import os
import sys

from server.__main__ import parse_settings, serve
from tests.reliability.fakes import FAKE_ENV, FakeBackend, FakeSpec


def main() -> int:
    backend = FakeBackend(FakeSpec.from_json(os.environ.get(FAKE_ENV, "{}")))
    return serve(parse_settings([]), backend_loader=lambda _: backend)


if __name__ == "__main__":
    sys.exit(main())
