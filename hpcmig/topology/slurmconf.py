"""Read Slurm's topology.conf (tree plugin, and block plugin as a two-level tree).

Design note: this module owns parsing only: text in, `Topology` out, with strict errors that
carry the file name and line number. Hostlist expressions are expanded by `hpcmig.hostlist`
(no `scontrol`, so it runs anywhere). It must not guess: an unknown key, a switch
defined twice, a child switch that does not exist, a node under two switches or a cycle is a
`UsageError`.

Tree plugin lines are ``SwitchName=S [Switches=LIST] [Nodes=LIST] [LinkSpeed=N]``. Hop
distance counts links: two nodes on one leaf switch are 2 hops apart, one level further up
4, and so on. Switches without a common parent are joined under a virtual root (Slurm would
refuse to span them; we price the detour as one more level). Block plugin lines are
``BlockName=B Nodes=LIST`` plus an optional ``BlockSizes=...``: 2 hops inside a block, 4
across blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from hpcmig.errors import UsageError
from hpcmig.hostlist import expand
from hpcmig.topology.model import Topology, from_tree

_TREE_KEYS = {"switchname", "switches", "nodes", "linkspeed"}
_BLOCK_KEYS = {"blockname", "nodes", "blocksizes"}


def _hosts(expr: str, where: str) -> list[str]:
    try:
        return expand(expr)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}") from None


def natural_key(name: str) -> list[object]:
    """Sort key that puts node2 before node10, as Slurm lists nodes."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass
class _Switch:
    name: str
    line: int
    children: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)


def parse_topology_conf(text: str, source: str = "topology.conf") -> Topology:
    """Parse the text of a topology.conf; errors name `source` and the line."""
    switches: dict[str, _Switch] = {}
    blocks: dict[str, list[str]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{lineno}"
        fields: dict[str, str] = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if not sep or not value:
                raise UsageError(f"{where}: expected KEY=VALUE, got {token!r}")
            fields[key.lower()] = value
        if "switchname" in fields:
            _add_switch(fields, switches, lineno, where)
        elif "blockname" in fields:
            _add_block(fields, blocks, where)
        elif set(fields) == {"blocksizes"}:
            continue  # block sizes only matter to Slurm's scheduler, not to distances
        else:
            raise UsageError(f"{where}: line must start with SwitchName= or BlockName=")
    if switches and blocks:
        raise UsageError(f"{source}: mixes SwitchName (tree) and BlockName (block) lines")
    if blocks:
        return _block_topology(blocks, source)
    if not switches:
        raise UsageError(f"{source}: no SwitchName= or BlockName= lines")
    return _tree_topology(switches, source)


def read_topology_conf(path: str | Path) -> Topology:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {p}: {exc.strerror or exc}") from None
    return parse_topology_conf(text, str(p))


def _add_switch(fields: dict[str, str], switches: dict[str, _Switch], line: int,
                where: str) -> None:
    unknown = set(fields) - _TREE_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = fields["switchname"]
    if name in switches:
        raise UsageError(f"{where}: switch {name} defined twice (first on line "
                         f"{switches[name].line})")
    sw = _Switch(name, line)
    if "switches" in fields:
        sw.children = _hosts(fields["switches"], where)
    if "nodes" in fields:
        sw.nodes = _hosts(fields["nodes"], where)
    if not sw.children and not sw.nodes:
        raise UsageError(f"{where}: switch {name} has neither Switches= nor Nodes=")
    switches[name] = sw


def _add_block(fields: dict[str, str], blocks: dict[str, list[str]], where: str) -> None:
    unknown = set(fields) - _BLOCK_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if "nodes" not in fields:
        return  # a BlockSizes-only line
    name = fields["blockname"]
    if name in blocks:
        raise UsageError(f"{where}: block {name} defined twice")
    blocks[name] = _hosts(fields["nodes"], where)


def _tree_topology(switches: dict[str, _Switch], source: str) -> Topology:
    parent: dict[str, str] = {}
    for sw in switches.values():
        for child in sw.children:
            if child not in switches:
                raise UsageError(f"{source}:{sw.line}: switch {sw.name} lists unknown switch "
                                 f"{child}")
            if child in parent:
                raise UsageError(f"{source}:{sw.line}: switch {child} has two parents "
                                 f"({parent[child]} and {sw.name})")
            parent[child] = sw.name
    ids = {name: i for i, name in enumerate(switches)}
    roots = [name for name in switches if name not in parent]
    if not roots:
        raise UsageError(f"{source}: the switches form a cycle")
    virtual = len(roots) > 1
    node_anc: dict[str, list[int]] = {}
    for name, sw in switches.items():
        chain, cur, seen = [], name, set()
        while True:
            if cur in seen:
                raise UsageError(f"{source}: the switches form a cycle through {cur}")
            seen.add(cur)
            chain.append(ids[cur])
            if cur not in parent:
                break
            cur = parent[cur]
        chain.reverse()
        if virtual:
            chain.insert(0, len(ids))
        for node in sw.nodes:
            if node in node_anc:
                raise UsageError(f"{source}:{sw.line}: node {node} is under two switches")
            node_anc[node] = chain
    if not node_anc:
        raise UsageError(f"{source}: no switch lists any Nodes=")
    names = sorted(node_anc, key=natural_key)
    ancestors = [node_anc[n] for n in names]
    depth = max(len(a) for a in ancestors)
    return from_tree("tree", names, ancestors, [2.0] * (depth + 1))


def _block_topology(blocks: dict[str, list[str]], source: str) -> Topology:
    seen: dict[str, str] = {}
    for bname, nodes in blocks.items():
        for n in nodes:
            if n in seen:
                raise UsageError(f"{source}: node {n} is in blocks {seen[n]} and {bname}")
            seen[n] = bname
    bid = {b: i for i, b in enumerate(blocks)}
    names = sorted(seen, key=natural_key)
    ancestors = [[0, bid[seen[n]]] for n in names]
    return from_tree("block", names, ancestors, [2.0, 2.0, 2.0])
