"""`python -m hpcmig.workloads.reach ADDR:PORT...`: which TCP endpoints this process reaches.

Prints one line `reach: {"addr:port": true|false, ...}` (connect within 3 s). The isolation
tests run it inside one job's container against its own and another job's containers.
"""

from __future__ import annotations

import json
import socket
import sys


def reachable(endpoint: str, timeout: float = 3.0) -> bool:
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    targets = sys.argv[1:] if argv is None else argv
    print("reach: " + json.dumps({t: reachable(t) for t in targets}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
