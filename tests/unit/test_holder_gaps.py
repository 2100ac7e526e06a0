"""The migration workload's gap log, written by its client and read by `holder.read_gaps`
(the live-migration test and benchmarks/migration judge the peer's wait by it): a real
server and client on loopback, the client pausing 80 ms between pings."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from hpcmig.workloads import holder


def test_the_gaps_the_client_logs_are_read_back(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "hpcmig.workloads.holder", "serve",
                               "--memory-mb", "1", "--port", str(port)],
                              stdout=subprocess.DEVNULL)
    client = None
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not listen"
                time.sleep(0.05)
        started = time.time()
        client = subprocess.Popen([sys.executable, "-m", "hpcmig.workloads.holder", "client",
                                   "127.0.0.1", "--port", str(port), "--interval", "0.08",
                                   "--progress", str(tmp_path / "progress"),
                                   "--gaps", str(tmp_path / "gaps")])
        time.sleep(1.0)
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait()
    gaps = holder.read_gaps(str(tmp_path / "gaps"))
    assert len(gaps) >= 5, gaps
    assert all(started < end < time.time() and 0.05 < gap < 1.0 for end, gap in gaps), gaps
    assert holder.read_gaps(str(tmp_path / "none")) == []
