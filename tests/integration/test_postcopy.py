"""Post-copy when the source goes before the memory arrived: the failure it is documented
to have, caused for real on throwaway nodes with real agents and CRIU.

The restored copy runs on memory the source still serves. Here the source's page server
is killed (SIGKILL) the moment the restore returned, while most of 512 MiB (filled and
hashed: every page present; about 1.7 s of post-copy here) are still to follow:
to the target, that is a source node that crashed mid-transfer. (Not at CRIU's pid file:
CRIU writes it before its last handshake with the lazy-pages daemon, so a kill there may
fail the restore before the copy ran, and that move rightly rolls back.) The move must not end
"done": the target's copy cannot go on and is killed, the source's tree too (CRIU's end let
it run on), the operation stays `stuck` with a reason that names the checkpoint, and nothing
of the move is left running on either node.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator

import pytest

from hpcmig import _procfs
from hpcmig.checkpoint import _tree
from hpcmig.checkpoint.refs import ContainerRef, ContainerState
from hpcmig.controller.agentops import AgentOps
from hpcmig.controller.journal import Journal
from hpcmig.controller.migration import MigrationSpec, migrate
from tests.integration import rt_support as S
from tests.integration.agent_nodes import AgentNodes, criu_agent_nodes

B1, B2, B3 = S.BRIDGED


def _dumps_on(image_dir: str) -> list[int]:
    return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if (argv := _procfs.argv(pid))[1:2] == ["dump"] and image_dir in argv
            and _tree.live(pid)]


@pytest.fixture(scope="module")
def nodes() -> Iterator[AgentNodes]:
    with criu_agent_nodes() as n:
        yield n


def _check(nodes: AgentNodes, client_node: str, client: str, server: str) -> bool:
    return nodes.rsh(client_node, client, f"{sys.executable} -m hpcmig.workloads.holder "
                     f"check {server}").stdout.startswith("ok")


@pytest.mark.parametrize(("job", "when", "ends"), [("93", "after", "stuck"),
                                                   ("94", "before", "rolled_back")])
def test_source_lost_during_the_transfer_leaves_no_copy_and_says_why(
        nodes: AgentNodes, job: str, when: str, ends: str) -> None:
    """`after` the restore returned: as the module says. `before` the restore (the page
    server gone while the copy has not run one instruction): the restore fails, the move
    rolls back and the source's holder goes on, exactly once, with its memory intact."""
    vc = nodes.plan(job, 3, [B3, B1, B2], spares=1)
    m = vc.member(1)
    server = ContainerRef(vc.job_id, vc.restart, 1, m.address, vc.uid)
    try:
        nodes.setup(vc)
        nodes.start_holder(B1, server.address, 512)
        client = vc.member(0)
        # it listens once its memory is filled and hashed
        assert S.wait_for(lambda: _check(nodes, client.node, client.address,
                                         server.address), 120)
        [holder] = S.holder_processes()
        with open(f"/proc/{holder}/status") as fh:
            rss = next(int(x.split()[1]) for x in fh if x.startswith("VmRSS:"))
        assert rss > 512 * 1024, rss  # KiB: every page present, so the transfer takes time
        d = nodes.image_dir("shared", server, f"lost-{when}")
        spec = MigrationSpec(server, B1, B2, (B3,), d, d, "shared", postcopy=True)
        killed: list[int] = []

        class LosingSource(AgentOps):
            def restore(self, node: str, ref: ContainerRef, image_dir: str,
                        lazy_from: tuple[str, int] | None = None) -> int:
                [pid] = _dumps_on(d)
                if when == "before":
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                restored = super().restore(node, ref, image_dir, lazy_from)
                if when == "after":  # the copy runs: the point of no return
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return restored

        ops = LosingSource(vc, S.BRIDGED, nodes.ops(vc).port, nodes.sock)
        with Journal(str(nodes.work / f"journal-lost-{when}.db")) as journal:
            out = migrate(journal, ops, spec)
        assert killed, "the source's page server was never killed"
        assert out.state == ends, (out.state, out.error)
        assert not _dumps_on(d)
        assert ops.container_state(B2, server) is ContainerState.ABSENT
        if ends == "stuck":
            assert "did not reach" in (out.error or "") and \
                "checkpoint" in (out.error or ""), out.error
            assert ops.container_state(B1, server) is ContainerState.ABSENT
            assert S.holder_processes() == []  # neither copy of the holder runs
        else:
            assert "lazy-pages" in (out.error or ""), out.error
            assert ops.container_state(B1, server) is ContainerState.RUNNING
            assert S.holder_processes() == [holder]  # the source's, and only it
            assert _check(nodes, client.node, client.address, server.address)
    finally:
        nodes.teardown(vc.job_id)
    assert not nodes.container_netns()
