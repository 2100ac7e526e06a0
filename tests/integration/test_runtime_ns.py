"""Containers for real: two node namespaces, three containers, a private munged, two users.

Job 1 (user A) has container c0 on node 1 (10.252.0.1) and c1 on node 2 (10.252.0.2);
job 2 (user B) has container d0 on node 2 (10.252.0.65). Exec requests go through
`hpcmig-rsh` from a node namespace (as the agent would) or from inside a container.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network

import pytest

from hpcmig.network import NodeNet, container_net
from hpcmig.network.plan import ContainerNet
from hpcmig.runtime import Container, ContainerSpec, get_runtime
from hpcmig.runtime import ns as ns_runtime
from hpcmig.runtime import protocol as P
from tests.integration import rt_support as S

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(S.missing() is not None, reason=str(S.missing()))]

N1, N2 = "hpcmig-rt-n1", "hpcmig-rt-n2"
POOL = IPv4Network("10.252.0.0/16")
RSH = f"{sys.executable} -m hpcmig.runtime.rsh"


@dataclass
class Cluster:
    sock: str
    a: S.User
    b: S.User
    containers: dict[str, Container]
    nets: dict[str, ContainerNet]
    state_dir: str
    env: dict[str, str]

    def rsh(self, node: str, *args: str, **kw: object) -> S._proc.Result:
        return S.rsh(node, *args, munge_socket=self.sock, **kw)  # type: ignore[arg-type]

    def root_in(self, name: str, *argv: str, check: bool = False) -> S._proc.Result:
        """As root inside a container's namespaces (what the agent can do with nsenter)."""
        prefix = get_runtime("ns").enter_argv(self.containers[name])
        return S.sh(*prefix, *argv, check=check)


def start(rt: object, name: str, job: str, user: S.User, net: ContainerNet, state_dir: str,
          env: dict[str, str]) -> Container:
    spec = ContainerSpec(name=name, job_id=job, uid=user.uid, gid=user.gid,
                         netns=net.netns_path, address=str(net.address), env=env,
                         state_dir=state_dir, stop_grace=2.0)
    return rt.start(spec)  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    rt = get_runtime("ns")
    ns_runtime.become_subreaper()  # like the agent: stopped inits are ours to reap
    tmp = tempfile.mkdtemp(prefix="hpcmig-rt-")
    os.chmod(tmp, 0o755)
    hosts = os.path.join(tmp, "hosts")
    with open(hosts, "w") as fh:
        fh.write("10.252.0.1 c0\n10.252.0.2 c1\n10.252.0.65 d0\n")
    os.chmod(hosts, 0o644)
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(S.munged())
        a, b = stack.enter_context(S.users())
        nodes = stack.enter_context(S.nodes())
        probe = S.sh("setpriv", f"--reuid={a.uid}", f"--regid={a.gid}", "--clear-groups",
                     sys.executable, "-c", "import hpcmig.runtime.rsh", check=False)
        if probe.returncode != 0:
            pytest.skip(f"an unprivileged user cannot import hpcmig from {sys.executable}: "
                        f"{probe.stderr.strip()[-200:]}")
        n1, n2 = NodeNet(N1), NodeNet(N2)
        nets = {"c0": container_net("10.252.0.1", "hpcmig-rtc-c0"),
                "c1": container_net("10.252.0.2", "hpcmig-rtc-c1"),
                "d0": container_net("10.252.0.65", "hpcmig-rtc-d0")}
        where = {"c0": n1, "c1": n2, "d0": n2}
        env = {"PATH": f"{S.VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HPCMIG_HOSTS": hosts,
               "HPCMIG_MUNGE_SOCKET": sock}
        containers: dict[str, Container] = {}
        try:
            for name, net in nets.items():
                where[name].create_container_net(net)
            n1.route_via("10.252.0.2", nodes[N2])
            n1.route_via("10.252.0.65", nodes[N2])
            n2.route_via("10.252.0.1", nodes[N1])
            for node in (n1, n2):
                node.install_isolation(POOL)
                node.allow_job(IPv4Network("10.252.0.0/26"))
                node.allow_job(IPv4Network("10.252.0.64/26"))
            for name, job, user in (("c0", "1", a), ("c1", "1", a), ("d0", "2", b)):
                containers[name] = start(rt, f"hpcmig-rt-{name}", job, user, nets[name], tmp,
                                         env)
            yield Cluster(sock, a, b, containers, nets, tmp, env)
        finally:
            for c in containers.values():
                rt.stop(c)
            for name, net in nets.items():
                where[name].remove_container_net(net)
            for node in (n1, n2):
                node.remove_isolation()
            shutil.rmtree(tmp, ignore_errors=True)


def test_exec_runs_as_the_job_user_in_the_containers_namespaces(cluster: Cluster) -> None:
    r = cluster.rsh(N1, "10.252.0.1", "id -u; id -g; hostname; echo $$;",
                    "for n in pid net mnt uts; do stat -L -c %i /proc/self/ns/$n; done")
    assert r.returncode == 0, r.stderr
    uid, gid, host, shell_pid, pid_ns, net_ns, mnt_ns, uts_ns = r.stdout.split()
    assert (int(uid), int(gid)) == (cluster.a.uid, cluster.a.gid)
    assert host == "hpcmig-rt-c0"
    assert int(shell_pid) < 100  # numbered inside the container's own PID namespace
    me = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in ("pid", "net", "mnt", "uts")}
    assert int(pid_ns) != me["pid"] and int(uts_ns) != me["uts"]
    assert int(net_ns) == os.stat(cluster.nets["c0"].netns_path).st_ino != me["net"]
    assert int(mnt_ns) == me["mnt"]  # shared mount namespace: what CRIU can dump


def test_stdin_stdout_and_exit_code_round_trip(cluster: Cluster) -> None:
    r = cluster.rsh(N1, "10.252.0.1", "cat; exit 3", input="hello\n")
    assert (r.returncode, r.stdout) == (3, "hello\n")
    r = cluster.rsh(N1, "-n", "10.252.0.1", "cat; echo done", input="not forwarded\n")
    assert (r.returncode, r.stdout) == (0, "done\n")


def test_rsh_between_containers_across_nodes(cluster: Cluster) -> None:
    """What MPI launchers do: hpcmig-rsh inside c0 starts a command in c1 on the other node."""
    r = cluster.rsh(N1, "c0", f"{RSH} c1 'hostname; id -u; exit 4'; echo rc=$?",
                    env_extra={"HPCMIG_HOSTS": cluster.env["HPCMIG_HOSTS"]})
    assert r.stdout.split() == ["hpcmig-rt-c1", str(cluster.a.uid), "rc=4"], r.stderr
    assert cluster.root_in("c0", "ping", "-c1", "-W2", "10.252.0.2").returncode == 0


def test_containers_of_another_job_are_unreachable(cluster: Cluster) -> None:
    probe = ("import socket,sys\n"
             "try:\n socket.create_connection((sys.argv[1], 7100), timeout=2).close()\n"
             "except OSError as e:\n print('blocked', e)\nelse:\n print('open')")
    assert cluster.root_in("c0", sys.executable, "-c", probe, "10.252.0.2").stdout == "open\n"
    assert cluster.root_in("c0", sys.executable, "-c", probe,
                           "10.252.0.65").stdout.startswith("blocked")
    assert cluster.root_in("d0", sys.executable, "-c", probe,
                           "10.252.0.2").stdout.startswith("blocked")  # same node, other job
    r = cluster.rsh(N1, "c0", f"{RSH} d0 true",
                    env_extra={"HPCMIG_HOSTS": cluster.env["HPCMIG_HOSTS"]}, timeout=60)
    assert r.returncode == 255 and "cannot reach" in r.stderr


def test_unauthenticated_request_is_refused_and_logged(cluster: Cluster) -> None:
    body = P.ExecRequest(argv=["touch", "/tmp/hpcmig-rt-pwned"], target="10.252.0.1:7100")
    script = ("import socket,sys\nfrom hpcmig.runtime import protocol as P\n"
              "s=socket.create_connection(('10.252.0.1',7100),timeout=5)\n"
              "s.sendall(P.pack_request('MUNGE:AwQFAAAforged:', sys.stdin.buffer.read()))\n"
              "d=P.FrameDecoder();fr=[]\n"
              "while (c:=s.recv(65536)): fr+=d.feed(c)\n"
              "print(fr[0].kind.name, fr[0].payload.decode())")
    r = S.in_ns(N1, sys.executable, "-c", script, input=body.to_bytes().decode())
    assert r.stdout.startswith("ERROR credential refused"), r
    assert not os.path.exists("/tmp/hpcmig-rt-pwned")
    with open(cluster.containers["c0"].log_path) as fh:
        assert "refused exec request" in fh.read()


def test_only_the_job_user_or_root_may_exec(cluster: Cluster) -> None:
    ok = cluster.rsh(N1, "10.252.0.1", "id -u", as_user=cluster.a)
    assert (ok.returncode, ok.stdout.strip()) == (0, str(cluster.a.uid))
    r = cluster.rsh(N1, "10.252.0.1", "id -u", as_user=cluster.b)
    assert r.returncode == 255 and f"uid {cluster.b.uid} may not exec" in r.stderr
    r = cluster.rsh(N1, "-l", "root", "10.252.0.1", "id -u")
    assert r.returncode == 255 and "login name 'root'" in r.stderr


def test_signals_reach_the_remote_command(cluster: Cluster) -> None:
    r = S._proc.run(["timeout", "--preserve-status", "-s", "TERM", "1.5", "nsenter",
                     f"--net=/run/netns/{N1}", sys.executable, "-m", "hpcmig.runtime.rsh",
                     "10.252.0.1", "exec sleep 30"], check=False, timeout=20,
                    env={**os.environ, "HPCMIG_MUNGE_SOCKET": cluster.sock})
    assert r.returncode == 143, r
    pidns = os.stat(f"/proc/{cluster.containers['c0'].init_pid}/ns/pid").st_ino
    assert S.wait_for(lambda: len(S.processes_in_pidns(pidns)) == 1)  # only the init left


def test_exec_round_trip_time(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    loop = ("import time\nfrom hpcmig.runtime.client import run_in\n"
            "t=time.perf_counter()\n"
            "for _ in range(50): assert run_in('10.252.0.2', ['true']).code == 0\n"
            "print((time.perf_counter()-t)/50)")
    # container c0 (node 1) -> container c1 (node 2), as the job user: the MPI launch path
    r = cluster.rsh(N1, "10.252.0.1", f"{sys.executable} -c \"{loop}\"")
    assert r.returncode == 0, r.stderr
    in_process = float(r.stdout)
    t = time.perf_counter()
    for _ in range(10):
        assert cluster.rsh(N2, "10.252.0.2", "true").returncode == 0
    whole = (time.perf_counter() - t) / 10
    with capsys.disabled():
        print(f"\nexec round trip container->container across nodes: {in_process * 1e3:.1f} ms"
              f" (client library); node->local container via hpcmig-rsh: {whole * 1e3:.0f} ms"
              " (incl. Python startup)")
    assert in_process < 0.5


def test_stop_leaves_no_process_and_start_refuses_duplicates(cluster: Cluster) -> None:
    rt = get_runtime("ns")
    net = container_net("10.252.0.3", "hpcmig-rtc-c2")
    node = NodeNet(N1)
    node.create_container_net(net)
    try:
        c = start(rt, "hpcmig-rt-c2", "1", cluster.a, net, cluster.state_dir, cluster.env)
        with pytest.raises(Exception, match="already running"):
            start(rt, "hpcmig-rt-c2", "1", cluster.a, net, cluster.state_dir, cluster.env)
        r = cluster.rsh(N1, "10.252.0.3", "sleep 60 >/dev/null 2>&1 & echo started")
        assert r.stdout == "started\n"
        pidns = os.stat(f"/proc/{c.init_pid}/ns/pid").st_ino
        assert len(S.processes_in_pidns(pidns)) == 2  # init + the background sleep
        assert rt.is_running(c)
        rt.stop(c)
        assert not rt.is_running(c)
        assert S.processes_in_pidns(pidns) == []
        assert not os.path.exists(os.path.join(cluster.state_dir, "hpcmig-rt-c2"))
    finally:
        node.remove_container_net(net)
    assert "hpcmig-rtc-c2" not in S.netns_list()
    assert not re.search(r"10\.252\.0\.3\b", S.in_ns(N1, "ip", "route").stdout)
