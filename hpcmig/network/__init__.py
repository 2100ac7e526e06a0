"""hpcmig.network: the job-private routed network of the virtual cluster.

Design note: `pool` hands out address blocks per job (pure + a locked state file), `plan`
computes the ip/nft commands (pure), `node` applies them in one node's network namespace;
`fastpath`/`fastload` are its tc programs, `l2`/`l2node` the opt-in L2 data path for MPI.
Nothing here starts containers (hpcmig.runtime) or decides placement (controller).
"""

from hpcmig.network.node import NetworkError, NodeNet
from hpcmig.network.plan import ContainerNet, container_net, hosts_file
from hpcmig.network.pool import (
    DEFAULT_POOL,
    DEFAULT_PREFIX,
    AddressPool,
    PoolExhausted,
    container_address,
    container_index,
)

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_PREFIX",
    "AddressPool",
    "ContainerNet",
    "NetworkError",
    "NodeNet",
    "PoolExhausted",
    "container_address",
    "container_index",
    "container_net",
    "hosts_file",
]
