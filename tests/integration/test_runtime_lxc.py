"""The `lxc` runtime for real: LXC containers on two node namespaces, one job.

Job 1 (user A) has LXC containers l0 on node 1 (10.252.0.1) and l1 on node 2 (10.252.0.2)
on the node's root, each joining the network namespace hpcmig.network made; one more, l2,
runs the `.sif` test image (started inside node 1's own mount namespace, as the agent would).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

import pytest

from hpcmig.errors import CommandError
from hpcmig.mpi import flavour, openmpi_on_prrte
from hpcmig.mpi_launch import hostfile, openmpi_rsh_options
from hpcmig.network import NodeNet, container_net
from hpcmig.runtime import Container, ContainerSpec, get_runtime
from hpcmig.runtime.sifbuild import build_test_image
from tests.integration import rt_support as S

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(S.missing() is not None, reason=str(S.missing())),
              pytest.mark.skipif(shutil.which("lxc-start") is None, reason="LXC is missing")]

N1, N2 = "hpcmig-rt-n1", "hpcmig-rt-n2"
POOL = IPv4Network("10.252.0.0/16")
STATE = "/run/hpcmig-rt-lxc"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTS = "10.252.0.1 hpcmig-rt-l0 l0\n10.252.0.2 hpcmig-rt-l1 l1\n10.252.0.3 hpcmig-rt-l2 l2\n"
NODE_OP = """
import json, sys
from hpcmig.runtime import Container, ContainerSpec, get_runtime
req = json.load(sys.stdin)
rt = get_runtime("lxc")
if req["op"] == "start":
    print(json.dumps(rt.start(ContainerSpec.from_json(req["spec"])).to_json()))
else:
    rt.stop(Container.from_json(req["container"])); print("null")
"""


@dataclass
class LxcCluster:
    sock: str
    a: S.User
    tmp: str
    env: dict[str, str]
    containers: dict[str, Container]

    def rsh(self, node: str, *args: str, **kw: Any) -> S._proc.Result:
        return S.rsh(node, *args, munge_socket=self.sock,
                     env_extra={"HPCMIG_HOSTS": self.env["HPCMIG_HOSTS"]}, **kw)


@pytest.fixture(scope="module")
def lxc() -> Iterator[LxcCluster]:
    rt = get_runtime("lxc")
    tmp = tempfile.mkdtemp(prefix="hpcmig-rt-lxc-")
    os.chmod(tmp, 0o777)
    with open(os.path.join(tmp, "hosts"), "w") as fh:
        fh.write(HOSTS)
    with open(os.path.join(tmp, "hostfile.openmpi"), "w") as fh:
        fh.write(hostfile(flavour("openmpi"), ["10.252.0.1", "10.252.0.2"], [2, 2]))
    shutil.copy(os.path.join(REPO, "hpcmig", "workloads", "ring.py"), tmp)
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(S.munged())
        nodes = stack.enter_context(S.nodes())
        a, _b = stack.enter_context(S.users())
        n1, n2 = NodeNet(N1), NodeNet(N2)
        nets = {"l0": container_net("10.252.0.1", "hpcmig-rtc-l0"),
                "l1": container_net("10.252.0.2", "hpcmig-rtc-l1")}
        env = {"PATH": f"{S.VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
               "HPCMIG_HOSTS": os.path.join(tmp, "hosts"), "HPCMIG_MUNGE_SOCKET": sock}
        cl = LxcCluster(sock, a, tmp, env, {})
        try:
            n1.create_container_net(nets["l0"])
            n2.create_container_net(nets["l1"])
            n1.route_via("10.252.0.2", nodes[N2])
            n2.route_via("10.252.0.1", nodes[N1])
            for node in (n1, n2):
                node.install_isolation(POOL)
                node.allow_job(IPv4Network("10.252.0.0/26"))
            for name, net in nets.items():
                cl.containers[name] = rt.start(ContainerSpec(
                    name=f"hpcmig-rt-{name}", job_id="1", uid=a.uid, gid=a.gid,
                    netns=net.netns_path, address=str(net.address), env=env,
                    state_dir=STATE, stop_grace=2.0))
            yield cl
        finally:
            for c in cl.containers.values():
                rt.stop(c)
            n1.remove_container_net(nets["l0"])
            n2.remove_container_net(nets["l1"])
            for node in (n1, n2):
                node.remove_isolation()
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(STATE)


def test_exec_runs_as_the_job_user_in_the_lxc_container(lxc: LxcCluster) -> None:
    c = lxc.containers["l0"]
    r = lxc.rsh(N1, "10.252.0.1", "id -u; hostname; echo $$; ls /proc | grep -c '^[0-9]';"
                " for n in net mnt pid; do stat -L -c %i /proc/self/ns/$n; done")
    assert r.returncode == 0, r.stderr
    uid, host, shell_pid, nprocs, net_ns, mnt_ns, pid_ns = r.stdout.split()
    assert (int(uid), host) == (lxc.a.uid, "hpcmig-rt-l0")
    assert int(shell_pid) < 100 and int(nprocs) < 10  # its own PID namespace and /proc
    assert int(net_ns) == os.stat(c.netns).st_ino  # the netns hpcmig.network made
    assert int(mnt_ns) != os.stat("/proc/self/ns/mnt").st_ino  # LXC's own mount namespace
    assert int(pid_ns) == os.stat(f"/proc/{c.init_pid}/ns/pid").st_ino
    assert get_runtime("lxc").is_running(c)
    with open(c.log_path) as fh:
        assert "serving exec requests" in fh.read()


def test_lxc_containers_on_two_nodes_reach_each_other(lxc: LxcCluster) -> None:
    rt = get_runtime("lxc")
    ping = S.sh(*rt.enter_argv(lxc.containers["l0"]), "ping", "-c1", "-W2", "10.252.0.2",
                check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    r = lxc.rsh(N1, "l0", f"{sys.executable} -m hpcmig.runtime.rsh l1 'hostname; id -u; exit 5';"
                " echo rc=$?")
    assert r.stdout.split() == ["hpcmig-rt-l1", str(lxc.a.uid), "rc=5"], r.stderr


# Open MPI 4 (ORTE) or 5 (PRRTE): the launcher's own option names
_PRRTE = openmpi_on_prrte()
OMPI_RSH = " ".join(openmpi_rsh_options("$HPCMIG_RSH", _PRRTE))
OMPI_OOB = f"--{'prte' if _PRRTE else ''}mca oob_tcp_if_include eth0"

MPI_RUNS = {
    "mpich": ("{mpich_env} mpiexec.mpich -launcher rsh -launcher-exec $HPCMIG_RSH -iface eth0 "
              "-hosts 10.252.0.1,10.252.0.2 -n 4 python ring.py --rounds 20"),
    # (a hostfile, as `hpcmig run` writes: PRRTE's `--host A:2,B:2` finds too few slots)
    "openmpi": ("mpiexec.openmpi --hostfile hostfile.openmpi -n 4 "
                f"{OMPI_RSH} --mca btl self,tcp "
                f"--mca btl_tcp_if_include eth0 --mca pml ob1 {OMPI_OOB} "
                "-x PMIX_MCA_gds=hash -x MPI4PY_LIBMPI=/usr/lib/x86_64-linux-gnu/libmpi.so.40 "
                "-x PATH python ring.py --rounds 20"),
}


@pytest.mark.parametrize("mpi", sorted(MPI_RUNS))
def test_mpi4py_ring_across_two_lxc_containers(lxc: LxcCluster, mpi: str) -> None:
    try:
        run = MPI_RUNS[mpi].format(mpich_env=S.mpich_env())
        r = lxc.rsh(N1, "l0", f"cd {lxc.tmp} && {run}", timeout=120)
    except CommandError as exc:  # a launcher that never ends: show what still runs
        left = {name: lxc.rsh(node, name, "ps -eo pid,ppid,stat,wchan:24,args",
                              timeout=30).stdout
                for node, name in ((N1, "l0"), (N2, "l1"))}
        pytest.fail(f"{exc}\nprocesses left: {left}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ring: PASS" in r.stdout and "nodes=hpcmig-rt-l0,hpcmig-rt-l1" in r.stdout, \
        r.stdout + r.stderr


def test_an_lxc_container_on_the_sif_image(lxc: LxcCluster) -> None:
    sif = str(build_test_image())
    net = container_net("10.252.0.3", "hpcmig-rtc-l2")
    NodeNet(N1).create_container_net(net)
    spec = ContainerSpec(name="hpcmig-rt-l2", job_id="1", uid=lxc.a.uid, gid=lxc.a.gid,
                         netns=net.netns_path, address="10.252.0.3", image=sif,
                         binds=(lxc.tmp,), env={k: v for k, v in lxc.env.items()
                                                if k != "PATH"},
                         state_dir=STATE, stop_grace=2.0)
    with S.node_mounts(STATE + "-img") as holders:
        spec = ContainerSpec.from_json({**spec.to_json(), "state_dir": STATE + "-img"})

        def op(**req: Any) -> Any:
            r = S.in_node(holders[N1], sys.executable, "-c", NODE_OP, input=json.dumps(req),
                          check=False, timeout=120)
            assert r.returncode == 0, r.stderr[-2000:]
            return json.loads(r.stdout)

        c = Container.from_json(op(op="start", spec=spec.to_json()))
        try:
            r = lxc.rsh(N1, "10.252.0.3", "grep ^ID= /etc/os-release; id -un; hostname;"
                        " hpcmig-rsh l0 hostname")
            assert r.stdout.split() == ["ID=hpcmig-test", lxc.a.name, "hpcmig-rt-l2",
                                        "hpcmig-rt-l0"], r.stdout + r.stderr
        finally:
            op(op="stop", container=c.to_json())
            NodeNet(N1).remove_container_net(net)
        assert S.node_mountpoints(holders[N1], f"{STATE}-img/hpcmig-rt-l2") == []


def test_stop_leaves_nothing(lxc: LxcCluster) -> None:
    rt = get_runtime("lxc")
    net = container_net("10.252.0.4", "hpcmig-rtc-l3")
    NodeNet(N2).create_container_net(net)
    try:
        c = rt.start(ContainerSpec(name="hpcmig-rt-l3", job_id="1", uid=lxc.a.uid,
                                   gid=lxc.a.gid, netns=net.netns_path, address="10.252.0.4",
                                   env=lxc.env, state_dir=STATE, stop_grace=1.0))
        with pytest.raises(Exception, match="already running"):
            rt.start(c.spec)
        assert lxc.rsh(N2, "-n", "10.252.0.4", "sleep 60 >/dev/null 2>&1 &").returncode == 0
        pidns = os.stat(f"/proc/{c.init_pid}/ns/pid").st_ino
        assert len(S.processes_in_pidns(pidns)) == 2
        rt.stop(c)
        assert not rt.is_running(c)
        assert S.processes_in_pidns(pidns) == []
        assert not os.path.exists(f"{STATE}/hpcmig-rt-l3")
    finally:
        NodeNet(N2).remove_container_net(net)
