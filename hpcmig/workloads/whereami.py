"""`python -m hpcmig.workloads.whereami`: where each MPI rank really runs, as one JSON line.

Rank 0 gathers, per rank: host name, uid, user, PID and network namespace inodes, and the
IPv4 addresses the rank sees; the integration tests compare them with the nodes' own
namespaces to prove that ranks run inside containers, as the job's user, on virtual addresses.
"""

from __future__ import annotations

import json
import os
import pwd
import socket

import psutil


def describe() -> dict[str, object]:
    addrs = sorted(a.address for nic in psutil.net_if_addrs().values() for a in nic
                   if a.family == socket.AF_INET and not a.address.startswith("127."))
    return {
        "host": socket.gethostname(),
        "uid": os.getuid(),
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "pidns": os.stat("/proc/self/ns/pid").st_ino,
        "netns": os.stat("/proc/self/ns/net").st_ino,
        "pid": os.getpid(),
        "addresses": addrs,
    }


def main() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    everyone = comm.gather(describe(), root=0)
    if comm.Get_rank() == 0:
        print("whereami: " + json.dumps(everyone), flush=True)
    # MPICH 4.0.2 (ch4:ucx over TCP) hangs in MPI_Finalize after a gather alone, with srun
    # as well as in containers; a final exchange between every pair of ranks avoids it.
    comm.alltoall([0] * comm.Get_size())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
