"""Container health probe for the detection service (stdlib only: slim images have no curl).

Usage: ``python healthcheck.py [PATH]`` (PATH defaults to ``/healthz``; use ``/readyz`` for readiness).
Requests ``http://127.0.0.1:$DETECT_PORT PATH`` and exits 0 on HTTP 200, 1 otherwise, printing the reason
(Docker keeps the output in ``docker inspect`` under ``State.Health``).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8000
TIMEOUT_S = 4.0


def probe(path: str = "/healthz", port: int | None = None, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """GET ``path`` on the local service; returns (healthy, human-readable reason)."""
    if not path.startswith("/"):
        return False, f"path must start with '/', got {path!r}"
    if port is None:
        raw_port = os.environ.get("DETECT_PORT", str(DEFAULT_PORT))
        try:
            port = int(raw_port)
        except ValueError:
            return False, f"DETECT_PORT must be an integer, got {raw_port!r}"
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"{url}: HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return False, f"{url}: {reason}"


def main(argv: list[str]) -> int:
    """Probe the path given on the command line (default /healthz); 0 when healthy, 1 when not."""
    if len(argv) > 1:
        print("usage: healthcheck.py [PATH]", file=sys.stderr)
        return 1  # Docker reserves exit code 2
    healthy, reason = probe(argv[0] if argv else "/healthz")
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
