"""Site configuration: one TOML file, one defaults table, unknown keys rejected.

Design note: this module owns where hpcmig keeps things and how its pieces find each other
(agent port, hpcmigd's address, MUNGE socket, address pool). It reads `$HPCMIG_CONFIG` or
/etc/hpcmig/hpcmig.toml (a missing file means all defaults) and validates every key; it does
not create directories or talk to anything. `state_dir` must be one directory every node and
the controller see (the address pool lives there); `run_dir` is node-local. The one table,
`[health]`, is hpcmigd's health policy (hpcmig.health.rules.Policy, pure; docs/health.md);
the flat `health_*` keys say what a node's sampler reads.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from hpcmig.errors import UsageError
from hpcmig.health.rules import Policy

CONFIG_ENV = "HPCMIG_CONFIG"
DEFAULT_PATH = "/etc/hpcmig/hpcmig.toml"
HEALTH_LOADS = ("loadavg", "mntns")
MIGRATION_MODES = ("postcopy", "stop-and-copy")  # how a live move carries memory


@dataclass(frozen=True)
class Config:
    state_dir: str = "/var/lib/hpcmig"  # shared by every node: address pool, controller store
    run_dir: str = "/run/hpcmig"  # node-local: agent socket files, containers, hook log
    checkpoint_dir: str = "/var/spool/hpcmig/ckpt"  # shared: checkpoint images
    agent_port: int = 7101
    munge_socket: str = ""  # "" = $HPCMIG_MUNGE_SOCKET, slurm.conf AuthInfo, munge's default
    pool: str = "10.252.0.0/16"
    block_prefix: int = 26
    runtime: str = "ns"
    mpi: str = "mpich"
    admin_users: tuple[str, ...] = ()  # besides root and SlurmUser, may act on any job
    controller_host: str = "127.0.0.1"  # where hpcmigd serves and every client finds it
    controller_port: int = 7100
    metrics_port: int = 9817  # hpcmigd's Prometheus /metrics (0: off)
    metrics_address: str = "127.0.0.1"
    health_check_dir: str = "/etc/hpcmig/checks.d"  # NHC-style check scripts ("": none)
    health_paths: tuple[str, ...] = ()  # watched for free space besides the three dirs above
    health_load: str = "loadavg"  # or "mntns": run queue of this node's mount namespace
    ckpt_keep: int = 2  # periodic checkpoints: complete generations kept per job
    node_mtbf_hours: float = 720.0  # one node's mean time between failures (ckpt=auto)
    dmtcp_prefix: str = ""  # DMTCP's install prefix (<prefix>/bin/dmtcp_launch); "": PATH
    # seconds a DMTCP checkpoint may take before the job restarts from the one before
    dmtcp_checkpoint_timeout: float = 600.0
    remap_pause: float = 2.0  # seconds one live move pauses a job (`hpcmig remap`'s payback)
    link_bandwidth: float = 12.5e9  # bytes/s one network hop carries (`hpcmig remap`'s model)
    remap_every: float = 0.0  # hpcmigd remaps running jobs this often, in seconds (0: off)
    migration_mode: str = "postcopy"  # or "stop-and-copy": how a live move carries memory
    network_fastpath: bool = True  # containers' packets by the tc program where nodes can
    # the L2 data path (hpcmig.network.l2): MPI's traffic on a macvlan of each container on
    # the node's uplink, with an address of network_l2_pool; the nodes on one Ethernet segment
    network_l2: bool = False
    network_l2_pool: str = "10.250.0.0/16"  # as large as `pool`, not overlapping it
    network_l2_uplink: str = "eth0"  # each node's device on that segment
    health: Policy = field(default_factory=Policy)  # the [health] table: hpcmigd's rules

    @property
    def pool_state(self) -> Path:
        return Path(self.state_dir) / "addresses.json"

    @property
    def containers_dir(self) -> str:
        return os.path.join(self.run_dir, "containers")

    @property
    def agent_dir(self) -> Path:
        return Path(self.run_dir) / "agent"

    @property
    def watched_paths(self) -> tuple[str, ...]:
        """Where a node's health sample measures free space."""
        return tuple(dict.fromkeys((self.state_dir, self.checkpoint_dir, self.run_dir,
                                    *self.health_paths)))

    def validate(self) -> Config:
        for name in ("state_dir", "run_dir", "checkpoint_dir"):
            if not str(getattr(self, name)).startswith("/"):
                raise UsageError(f"config: {name} must be an absolute path")
        if self.health_check_dir and not self.health_check_dir.startswith("/"):
            raise UsageError("config: health_check_dir must be an absolute path (\"\": none)")
        for path in self.health_paths:
            if not path.startswith("/"):
                raise UsageError(f"config: health_paths: {path!r} is not an absolute path")
        if self.dmtcp_prefix and not self.dmtcp_prefix.startswith("/"):
            raise UsageError("config: dmtcp_prefix must be an absolute path (\"\": PATH)")
        if not self.dmtcp_checkpoint_timeout > 0:
            raise UsageError("config: dmtcp_checkpoint_timeout must be > 0, "
                             f"got {self.dmtcp_checkpoint_timeout}")
        if self.migration_mode not in MIGRATION_MODES:
            raise UsageError(f"config: migration_mode must be postcopy or stop-and-copy, "
                             f"got {self.migration_mode!r}")
        if self.health_load not in HEALTH_LOADS:
            raise UsageError(f"config: health_load must be loadavg or mntns, "
                             f"got {self.health_load!r}")
        for name in ("agent_port", "controller_port"):
            if not 0 < getattr(self, name) < 65536:
                raise UsageError(f"config: bad {name} {getattr(self, name)}")
        if not 0 <= self.metrics_port < 65536:
            raise UsageError(f"config: bad metrics_port {self.metrics_port} (0 turns it off)")
        try:
            net = IPv4Network(self.pool)
        except ValueError as exc:
            raise UsageError(f"config: bad pool {self.pool!r}: {exc}") from None
        if not net.prefixlen < self.block_prefix <= 30:
            raise UsageError(f"config: block_prefix must be in ({net.prefixlen}, 30]")
        if self.network_l2:  # (off, its keys may not fit: a site's own pool, say)
            self._validate_l2(net)
        if self.mpi not in ("mpich", "openmpi"):
            raise UsageError(f"config: mpi must be mpich or openmpi, got {self.mpi!r}")
        if self.ckpt_keep < 1:
            raise UsageError(f"config: ckpt_keep must be >= 1, got {self.ckpt_keep}")
        if not self.node_mtbf_hours > 0:
            raise UsageError(f"config: node_mtbf_hours must be > 0, got {self.node_mtbf_hours}")
        if not (self.remap_pause >= 0 and self.link_bandwidth > 0 and self.remap_every >= 0):
            raise UsageError("config: remap_pause and remap_every must be >= 0, "
                             "link_bandwidth > 0")
        self.health.validate("config: [health]")
        return self

    def _validate_l2(self, pool: IPv4Network) -> None:
        try:
            data = IPv4Network(self.network_l2_pool)
        except ValueError as exc:
            raise UsageError(f"config: bad network_l2_pool {self.network_l2_pool!r}: {exc}"
                             ) from None
        if data.prefixlen != pool.prefixlen or data.overlaps(pool):
            raise UsageError(f"config: network_l2_pool {data} must be as large as pool "
                             f"{pool} and must not overlap it")
        if not self.network_l2_uplink or "/" in self.network_l2_uplink or len(
                self.network_l2_uplink) > 15:
            raise UsageError(f"config: bad network_l2_uplink {self.network_l2_uplink!r} "
                             "(a network device's name)")


def parse(text: str, origin: str = "config") -> Config:
    """Config from TOML text; unknown keys and wrong types are errors."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{origin}: {exc}") from None
    known = {f.name: f for f in fields(Config)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UsageError(f"{origin}: unknown key(s) {', '.join(unknown)}",
                         hint=f"known keys: {', '.join(known)}")
    values: dict[str, Any] = {}
    defaults = Config()
    for key, value in data.items():
        want = type(getattr(defaults, key))
        if want is Policy:
            if not isinstance(value, dict):
                raise UsageError(f"{origin}: {key} must be a table ([{key}])")
            value = Policy.from_table(value, f"{origin}: [{key}]")
        elif want is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"{origin}: {key} must be a list of strings")
            value = tuple(value)
        elif want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            raise UsageError(f"{origin}: {key} must be a {want.__name__}")
        values[key] = value
    return replace(defaults, **values).validate()


def render(config: Config, header: str = "") -> str:
    """TOML text for `config` (the testbed writes its file with this)."""
    lines = [header] if header else []
    for f in fields(Config):
        value = getattr(config, f.name)
        if isinstance(value, Policy):
            continue  # a table: after every plain key
        if isinstance(value, str):
            lines.append(f'{f.name} = "{value}"')
        elif isinstance(value, bool):
            lines.append(f"{f.name} = {str(value).lower()}")
        elif isinstance(value, tuple):
            lines.append(f"{f.name} = [{', '.join(repr(v) for v in value)}]".replace("'", '"'))
        else:
            lines.append(f"{f.name} = {value}")
    health = config.health.to_table()
    if health:
        lines += ["", "[health]"]
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}"
                  for k, v in health.items()]
    return "\n".join(lines) + "\n"


def load(path: str | None = None) -> Config:
    """The site configuration (defaults when the file does not exist)."""
    path = path or os.environ.get(CONFIG_ENV) or DEFAULT_PATH
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return parse(text, path)
