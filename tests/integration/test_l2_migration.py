"""Live migration on the L2 data path: real agents (network_l2 = true) and CRIU.

The setting of tests/integration/test_checkpoint_migration.py, with the agents' hpcmig.toml
turning the L2 data path on: every container has eth0 as a macvlan on its node's eth0, and
the client's one TCP connection goes to the server's data address (10.250.x.y), not its
/32. The server moves between b1 and b2; the connection must survive with the server's
count equal to the client's, the data address must answer from the target only, and the
client must wait no longer than the pause (the hold keeps the data address's frames too).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from hpcmig.checkpoint.refs import ContainerRef
from hpcmig.controller.journal import Journal
from hpcmig.controller.migration import migrate
from hpcmig.network import l2
from tests.integration import rt_support as S
from tests.integration.agent_nodes import POOL
from tests.integration.test_checkpoint_migration import (
    Env,
    _pings,
    assert_serving_once,
    holder_job,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(S.missing() is not None, reason=str(S.missing()))]

B1, B2, B3 = S.BRIDGED
DATA_POOL = "10.250.0.0/16"
DP = l2.DataPath(POOL, IPv4Network(DATA_POOL), "eth0")


def data(ref: ContainerRef) -> str:
    return str(DP.address(ref.address))


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with holder_job("92", data, network_l2=True, network_l2_pool=DATA_POOL) as e:
        yield e


def test_the_job_talks_over_the_data_path(env: Env) -> None:
    links = env.nodes.rsh(B3, env.client.address, "ip -d -o link show eth0").stdout
    assert "macvlan" in links and l2.data_mac(DP.address(env.client.address)) in links
    conns = env.nodes.rsh(B3, env.client.address, "ss -Htn state established").stdout
    assert f"{data(env.server)}:" in conns, conns  # the client's connection


@pytest.mark.parametrize("transport", ["shared", "stream+postcopy"])
def test_a_live_move_keeps_the_connection_on_the_data_path(
        env: Env, transport: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = env.spec(transport)
    before, started = _pings(env), time.time()
    with Journal(env.journal_path) as journal:
        out = migrate(journal, env.ops, spec)
    assert out.state == "done", out.error
    env.moved(env.server, spec.target)
    assert_serving_once(env, spec.target, _pings(env))
    assert not env.images_left(spec)
    conns = env.nodes.rsh(env.client_at, env.client.address, "ss -Htn state established")
    assert f"{data(env.server)}:" in conns.stdout, conns.stdout  # the same connection
    ping = env.nodes.rsh(env.client_at, env.client.address, f"ping -c1 -W1 {data(env.server)}")
    assert ping.returncode == 0, ping.stdout
    wait = env.longest_wait(started)
    assert out.pause is not None
    # no back-off: the frames for the data address waited in the source's hold and were
    # routed to the target at the unlock (hpcmig.network.l2)
    assert out.data["lock"] == "hold"
    assert wait <= out.pause + 0.3, (wait, out.pause)
    with capsys.disabled():
        print(f"\nL2 migration ({transport}) {spec.source}->{spec.target}: pause "
              f"{out.pause:.3f} s; peer: {before} pings before, longest wait "
              f"{wait * 1000:.0f} ms")
