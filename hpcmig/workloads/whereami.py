"""`python -m hpcmig.workloads.whereami`: where each MPI rank really runs, as one JSON line.

Rank 0 gathers, per rank: host name, uid, user, PID and network namespace inodes, and the
IPv4 addresses the rank sees; the integration tests compare them with the nodes' own
namespaces to prove that ranks run inside containers, as the job's user, on virtual addresses.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import socket
import struct

SIOCGIFADDR = 0x8915


def describe() -> dict[str, object]:
    addrs = sorted(a for a in map(_ipv4, (n for _, n in socket.if_nameindex()))
                   if a and not a.startswith("127."))
    return {
        "host": socket.gethostname(),
        "uid": os.getuid(),
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "pidns": os.stat("/proc/self/ns/pid").st_ino,
        "netns": os.stat("/proc/self/ns/net").st_ino,
        "pid": os.getpid(),
        "addresses": addrs,
        "os": _os_id(),
    }


def _ipv4(nic: str) -> str | None:
    """The interface's IPv4 address (stdlib only: images need not carry psutil)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = struct.pack("256s", nic.encode()[:15])
            return socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24])
        except OSError:
            return None


def _os_id() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("ID="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def main() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    everyone = comm.gather(describe(), root=0)
    if comm.Get_rank() == 0:
        print("whereami: " + json.dumps(everyone), flush=True)
    # a final exchange between every pair of ranks, then the ring workload's own ending
    # (sendrecv to both neighbours, allreduce): every connection is used before MPI_Finalize
    # (MPICH 4.0.2 over UCX 1.13 TCP needs native/ucx_finalize.c there, see hpcmig.mpi)
    comm.alltoall([0] * comm.Get_size())
    size, rank = comm.Get_size(), comm.Get_rank()
    comm.sendrecv(rank, dest=(rank + 1) % size, source=(rank - 1) % size)
    comm.allreduce(rank)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
