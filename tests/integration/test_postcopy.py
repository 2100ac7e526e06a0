"""Post-copy when the source goes before the memory arrived: the failure it is documented
to have, caused for real on throwaway nodes with real agents and CRIU.

The restored copy runs on memory the source still serves. Here the source's page server
is killed (SIGKILL) the moment the restore wrote its pid file, while 512 MiB (filled and
hashed: every page present) are still to follow:
to the target, that is a source node that crashed mid-transfer. The move must not end
"done": the target's copy cannot go on and is killed, the source's tree too (CRIU's end let
it run on), the operation stays `stuck` with a reason that names the checkpoint, and nothing
of the move is left running on either node.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
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


def test_source_lost_during_the_transfer_leaves_no_copy_and_says_why(nodes: AgentNodes
                                                                       ) -> None:
    vc = nodes.plan("93", 3, [B3, B1, B2], spares=1)
    m = vc.member(1)
    server = ContainerRef(vc.job_id, vc.restart, 1, m.address, vc.uid)
    try:
        nodes.setup(vc)
        nodes.start_holder(B1, server.address, 512)
        client = vc.member(0)
        assert S.wait_for(lambda: nodes.rsh(  # listens once its memory is filled and hashed
            client.node, client.address, f"{sys.executable} -m hpcmig.workloads.holder "
            f"check {server.address}").stdout.startswith("ok"), 120)
        [holder] = S.holder_processes()
        with open(f"/proc/{holder}/status") as fh:
            rss = next(int(x.split()[1]) for x in fh if x.startswith("VmRSS:"))
        assert rss > 512 * 1024, rss  # KiB: every page present, so the transfer takes time
        d = nodes.image_dir("shared", server, "lost")
        spec = MigrationSpec(server, B1, B2, (B3,), d, d, "shared", postcopy=True)
        killed: list[int] = []

        class LosingSource(AgentOps):
            def restore(self, node: str, ref: ContainerRef, image_dir: str,
                        lazy_from: tuple[str, int] | None = None) -> int:
                [pid] = _dumps_on(d)

                def kill_once_restored() -> None:  # CRIU writes the pid file at its end
                    while not os.path.exists(os.path.join(d, "restored.pid")):
                        time.sleep(0.001)
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

                killer = threading.Thread(target=kill_once_restored, daemon=True)
                killer.start()
                try:
                    return super().restore(node, ref, image_dir, lazy_from)
                finally:
                    killer.join(30)

        ops = LosingSource(vc, S.BRIDGED, nodes.ops(vc).port, nodes.sock)
        with Journal(str(nodes.work / "journal-lost.db")) as journal:
            out = migrate(journal, ops, spec)
        assert killed, "the source's page server was never killed"
        assert out.state == "stuck", (out.state, out.error)
        assert "did not reach" in (out.error or "") and "checkpoint" in (out.error or ""), \
            out.error
        for node in (B1, B2):
            assert ops.container_state(node, server) is ContainerState.ABSENT, node
        assert S.holder_processes() == []  # neither copy of the holder runs
        assert not _dumps_on(d)
    finally:
        nodes.teardown(vc.job_id)
    assert not nodes.container_netns()
