"""Container health check: exit 0 when GET /health/ready answers 200 (stdlib only, no curl in the image)."""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    """Probe the server's readiness endpoint on the loopback address and the port it listens on."""
    url = f"http://127.0.0.1:{os.environ.get('FCN_PORT', '8000')}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
