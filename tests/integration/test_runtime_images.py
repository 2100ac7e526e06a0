""".sif images as container roots, for real: two nodes, each with its own mount namespace.

Job 1 (user A) has image containers i0 on node 1 (10.252.0.1) and i1 on node 2
(10.252.0.2), both running the test image `sifbuild.build_test_image()` (its own Debian root,
ID=hpcmig-test). Every runtime call runs inside the node's mount namespace (`S.in_node`),
as the agent would, so each node's image mounts are its own; exec requests come through
`hpcmig-rsh` from the node's network namespace, or from inside a container.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

import pytest

from hpcmig.mpi import openmpi_on_prrte
from hpcmig.mpi_launch import openmpi_rsh_options
from hpcmig.network import NodeNet, container_net
from hpcmig.network.plan import ContainerNet
from hpcmig.runtime import Container, ContainerSpec, get_runtime, image
from hpcmig.runtime import ns as ns_runtime
from hpcmig.runtime.sifbuild import build_test_image
from tests.integration import rt_support as S
from tests.integration.test_runtime_ns import CRIU, criu_cannot_dump_job_processes

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(S.missing() is not None, reason=str(S.missing()))]

N1, N2 = "hpcmig-rt-n1", "hpcmig-rt-n2"
STATE = "/run/hpcmig-rt-img"
POOL = IPv4Network("10.252.0.0/16")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What the agent does on its node: one runtime call, JSON in and out.
NODE_OP = """
import json, sys
from hpcmig.runtime import Container, ContainerSpec, get_runtime
req = json.load(sys.stdin)
rt = get_runtime(req["runtime"])
out = None
if req["op"] == "start":
    out = rt.start(ContainerSpec.from_json(req["spec"])).to_json()
elif req["op"] == "stop":
    rt.stop(Container.from_json(req["container"]))
elif req["op"] == "prepare_restore":
    rt.prepare_restore(ContainerSpec.from_json(req["spec"]), req.get("archive"))
elif req["op"] == "save_writable":
    out = rt.save_writable(Container.from_json(req["container"]), req["archive"])
print(json.dumps(out))
"""


def node_op(holder: int, op: str, runtime: str = "ns", **kw: Any) -> Any:
    r = S.in_node(holder, sys.executable, "-c", NODE_OP, check=False, timeout=120,
                  input=json.dumps({"op": op, "runtime": runtime, **kw}),
                  env={**os.environ, "PYTHONPATH": REPO})
    if r.returncode != 0:
        raise AssertionError(f"{op} failed on the node: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


@dataclass
class ImgCluster:
    sock: str
    a: S.User
    holders: dict[str, int]
    containers: dict[str, Container]
    tmp: str
    image: str
    env: dict[str, str]

    def rsh(self, node: str, *args: str, **kw: Any) -> S._proc.Result:
        return S.rsh(node, *args, munge_socket=self.sock, **kw)

    def spec(self, name: str, net: ContainerNet, user: S.User) -> ContainerSpec:
        return ContainerSpec(name=f"hpcmig-rt-{name}", job_id="1", uid=user.uid, gid=user.gid,
                             netns=net.netns_path, address=str(net.address), env=self.env,
                             image=self.image, binds=(self.tmp,), state_dir=STATE,
                             stop_grace=2.0)

    def start(self, node: str, name: str, net: ContainerNet) -> Container:
        c = Container.from_json(node_op(self.holders[node], "start",
                                        spec=self.spec(name, net, self.a).to_json()))
        self.containers[name] = c
        return c

    def stop(self, node: str, c: Container) -> None:
        node_op(self.holders[node], "stop", container=c.to_json())
        with contextlib.suppress(ChildProcessError):  # inits are reparented to us
            os.waitpid(c.init_pid, os.WNOHANG)


HOSTS = ("10.252.0.1 hpcmig-rt-i0 i0\n10.252.0.2 hpcmig-rt-i1 i1\n"
         "10.252.0.4 hpcmig-rt-e0 e0\n10.252.0.5 hpcmig-rt-e1 e1\n")


@pytest.fixture(scope="module")
def img() -> Iterator[ImgCluster]:
    t0 = time.perf_counter()
    image = str(build_test_image())
    built = time.perf_counter() - t0
    ns_runtime.become_subreaper()
    tmp = tempfile.mkdtemp(prefix="hpcmig-rt-img-")
    os.chmod(tmp, 0o777)
    with open(os.path.join(tmp, "hosts"), "w") as fh:
        fh.write(HOSTS)
    shutil.copy(os.path.join(REPO, "hpcmig", "workloads", "ring.py"), tmp)
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(S.munged())
        nodes = stack.enter_context(S.nodes())  # sweeps old users: make ours after it
        a, _b = stack.enter_context(S.users())
        holders = stack.enter_context(S.node_mounts(STATE))
        n1, n2 = NodeNet(N1), NodeNet(N2)
        nets = {"i0": container_net("10.252.0.1", "hpcmig-rtc-i0"),
                "i1": container_net("10.252.0.2", "hpcmig-rtc-i1")}
        where = {"i0": N1, "i1": N2}
        env = {"HPCMIG_HOSTS": os.path.join(tmp, "hosts"), "HPCMIG_MUNGE_SOCKET": sock}
        cl = ImgCluster(sock, a, holders, {}, tmp, image, env)
        try:
            n1.create_container_net(nets["i0"])
            n2.create_container_net(nets["i1"])
            n1.route_via("10.252.0.2", nodes[N2])
            n2.route_via("10.252.0.1", nodes[N1])
            for node in (n1, n2):
                node.install_isolation(POOL)
                node.allow_job(IPv4Network("10.252.0.0/26"))
            t1 = time.perf_counter()
            for name in ("i0", "i1"):
                cl.start(where[name], name, nets[name])
            print(f"\ntest image ready in {built:.1f} s; two image containers started in "
                  f"{time.perf_counter() - t1:.2f} s", file=sys.stderr)
            yield cl
        finally:
            for name, c in cl.containers.items():
                with contextlib.suppress(AssertionError):
                    cl.stop(where.get(name, N1), c)
            for name, net in nets.items():
                NodeNet(where[name]).remove_container_net(net)
            for node in (n1, n2):
                node.remove_isolation()
            shutil.rmtree(tmp, ignore_errors=True)


def test_the_image_is_the_root_and_the_job_user_resolves(img: ImgCluster) -> None:
    r = img.rsh(N1, "i0", "grep ^ID= /etc/os-release; id -un; hostname; echo $HPCMIG_RSH;"
                " test -e /opt/hpcmig/venv && echo host-venv || echo no-host-venv;"
                " stat -L -c %i /proc/self/ns/mnt; echo x > /tmp/w && cat /tmp/w",
                env_extra={"HPCMIG_HOSTS": img.env["HPCMIG_HOSTS"]})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ID=hpcmig-test", img.a.name, "hpcmig-rt-i0",
                                "/.hpcmig/bin/hpcmig-rsh", "no-host-venv",
                                os.readlink(f"/proc/{img.holders[N1]}/ns/mnt")[5:-1], "x"], r
    entered = S.sh(*get_runtime("ns").enter_argv(img.containers["i0"]), "cat",
                   "/etc/os-release", check=False)  # the agent's way in, as root
    assert "ID=hpcmig-test" in entered.stdout, entered
    with open(os.path.join(img.containers["i0"].log_path.replace(
            STATE, f"/proc/{img.holders[N1]}/root{STATE}"))) as fh:
        assert "serving exec requests" in fh.read()


def test_hpcmig_rsh_from_one_image_container_to_another(img: ImgCluster) -> None:
    r = img.rsh(N1, "i0", "hpcmig-rsh i1 'grep ^ID= /etc/os-release; hostname; id -u; exit 3';"
                " echo rc=$?", env_extra={"HPCMIG_HOSTS": img.env["HPCMIG_HOSTS"]})
    assert r.stdout.split() == ["ID=hpcmig-test", "hpcmig-rt-i1", str(img.a.uid), "rc=3"], \
        r.stderr


# Open MPI 4 (ORTE) or 5 (PRRTE): the launcher's own option names
_PRRTE = openmpi_on_prrte()
OMPI_RSH = " ".join(openmpi_rsh_options("$HPCMIG_RSH", _PRRTE))
OMPI_OOB = f"--{'prte' if _PRRTE else ''}mca oob_tcp_if_include eth0"

MPI_RUNS = {
    "mpich": ("{mpich_env} mpiexec.mpich -launcher rsh -launcher-exec $HPCMIG_RSH -iface eth0 "
              "-hosts i0,i1 -n 4 python3 ring.py --rounds 20"),
    "openmpi": (f"mpiexec.openmpi --host i0:2,i1:2 -n 4 {OMPI_RSH} "
                "--mca btl self,tcp --mca btl_tcp_if_include eth0 --mca pml ob1 "
                f"{OMPI_OOB} -x PMIX_MCA_gds=hash "
                "-x MPI4PY_LIBMPI=/usr/lib/x86_64-linux-gnu/libmpi.so.40 "
                "python3 ring.py --rounds 20"),
}


@pytest.mark.parametrize("mpi", sorted(MPI_RUNS))
def test_mpi4py_ring_across_two_image_containers(img: ImgCluster, mpi: str) -> None:
    """What `hpcmig run` does in an image job: the launcher in container 0 starts its daemons
    in both containers through hpcmig-rsh; the ranks run the image's python3 and MPI."""
    run = MPI_RUNS[mpi].format(mpich_env=S.mpich_env(image.TOOLS))
    r = img.rsh(N1, "i0", f"cd {img.tmp} && {run}", timeout=120,
                env_extra={"HPCMIG_HOSTS": img.env["HPCMIG_HOSTS"]})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ring: PASS" in r.stdout and "ranks=4" in r.stdout, r.stdout + r.stderr
    assert "nodes=hpcmig-rt-i0,hpcmig-rt-i1" in r.stdout


ECHO_SERVER_FILES = """
import socket
held = open('/tmp/held', 'w+'); held.write('written before the dump'); held.flush()
shm = open('/dev/shm/seg', 'w+'); shm.write('shared'); shm.flush()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000)); s.listen(1)
c, _ = s.accept()
while True:
    data = c.recv(64)
    if not data:
        break
    if data == b'FFFFFFFF':
        held.seek(0); shm.seek(0)
        ok = held.read() == 'written before the dump' and shm.read() == 'shared'
        data = b'FILES-OK' if ok else b'FILESBAD'
    c.sendall(data)
"""

# every 10th message asks the server whether its held-open files still read back
ECHO_FILES_CLIENT = """
import os, socket, sys, time
out = sys.argv[1]
def note(text):
    with open(out + '.tmp', 'w') as fh:
        fh.write(text)
    os.replace(out + '.tmp', out)
s = socket.create_connection(('10.252.0.5', 9000), timeout=60)
i = 0
try:
    while True:
        i += 1
        msg = b'FFFFFFFF' if i % 10 == 0 else b'%08d' % i
        s.sendall(msg)
        got = b''
        while len(got) < 8:
            chunk = s.recv(8 - len(got))
            if not chunk:
                raise OSError('connection closed')
            got += chunk
        assert got == (b'FILES-OK' if i % 10 == 0 else msg), (got, i)
        note(str(i))
        time.sleep(0.02)
except Exception as exc:
    note('ERROR %s after %d' % (exc, i))
"""


def _progress(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _criu(holder: int, node: str, images: str, log: str, *argv: str) -> None:
    r = S.in_node(holder, *argv, netns=node, check=False, timeout=120)
    if r.returncode != 0:
        with open(os.path.join(images, log)) as fh:
            tail = "".join(fh.readlines()[-15:])
        pytest.fail(f"criu failed ({log}):\n{tail}")


@pytest.mark.skipif(shutil.which(CRIU) is None, reason=f"{CRIU} is not installed")
def test_criu_moves_an_image_container_to_another_node(
        img: ImgCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Dump an image container on node 2 (its mount namespace), archive its writable layer,
    rebuild the root at the same path on node 1 (`prepare_restore`), restore there: the TCP
    connection from the peer survives, and so do a held-open file in the image's /tmp and
    one in /dev/shm."""
    if S.sh(CRIU, "check", check=False).returncode != 0:
        pytest.skip(f"{CRIU} check fails on this kernel")
    broken = criu_cannot_dump_job_processes()
    if broken:
        pytest.skip(broken)
    h1, h2 = img.holders[N1], img.holders[N2]
    n1, n2 = NodeNet(N1), NodeNet(N2)
    e0 = container_net("10.252.0.4", "hpcmig-rtc-e0")
    e1 = container_net("10.252.0.5", "hpcmig-rtc-e1")
    e1_new = container_net("10.252.0.5", "hpcmig-rtc-e1b")
    progress = os.path.join(img.tmp, "progress")
    work = tempfile.mkdtemp(prefix="hpcmig-rt-imgcriu-")
    images = os.path.join(work, "images")
    os.mkdir(images)
    archive = os.path.join(work, "writable.tar")
    made = [(n1, e0), (n2, e1)]
    running: dict[str, tuple[str, Container]] = {}
    try:
        n1.create_container_net(e0)
        n2.create_container_net(e1)
        n1.route_via(e1.address, S.NODES[N2])
        n2.route_via(e0.address, S.NODES[N1])
        running["e0"] = (N1, img.start(N1, "e0", e0))
        c_e1 = img.start(N2, "e1", e1)
        running["e1"] = (N2, c_e1)
        assert img.rsh(N2, "-n", "10.252.0.5", f"python3 -c \"{ECHO_SERVER_FILES}\" "
                       "</dev/null >/dev/null 2>&1 &").returncode == 0
        time.sleep(1.0)
        assert img.rsh(N1, "-n", "10.252.0.4", f"python3 -c \"{ECHO_FILES_CLIENT}\" {progress} "
                       "</dev/null >/dev/null 2>&1 &").returncode == 0
        assert S.wait_for(lambda: _progress(progress).isdigit() and
                          int(_progress(progress)) > 20, 15), _progress(progress)

        # -- migrate e1 from node 2 to node 1 --
        net_inode = os.stat(e1.netns_path).st_ino
        t0 = time.perf_counter()
        n2.hold(e1.address)
        _criu(h2, N2, images, "dump.log", CRIU, "dump", "-t", str(c_e1.init_pid), "-D",
              images, "-o", "dump.log", "--tcp-established", "--network-lock", "skip",
              "--external", f"net[{net_inode}]:e1net")
        t_dump = time.perf_counter() - t0
        frozen_at = _progress(progress)
        assert node_op(h2, "save_writable", container=c_e1.to_json(), archive=archive)
        t_saved = time.perf_counter() - t0
        n1.create_container_net(e1_new, routed=False)
        made.append((n1, e1_new))
        n2.route_via(e1.address, S.NODES[N1])
        node_op(h1, "prepare_restore", spec=c_e1.spec.to_json(), archive=archive)
        t1 = time.perf_counter()
        _criu(h1, N1, images, "restore.log", "sh", "-c",
              f"exec 7<{e1_new.netns_path}; exec {CRIU} restore -D {images} -o restore.log "
              f"--tcp-established -d --pidfile {images}/pid --inherit-fd fd[7]:e1net")
        t_restore = time.perf_counter() - t1
        n1.point_local(e1_new)
        pause = time.perf_counter() - t0
        with open(f"{images}/pid") as fh:
            moved = Container(**{**c_e1.__dict__, "init_pid": int(fh.read()),
                                 "netns": e1_new.netns_path})
        running["e1"] = (N1, moved)
        img.stop(N2, c_e1)  # the source: its init is gone; this releases its mounts
        assert S.node_mountpoints(h2, f"{STATE}/hpcmig-rt-e1") == []

        assert S.wait_for(lambda: _progress(progress).isdigit()
                          and int(_progress(progress)) > int(frozen_at) + 20, 20), \
            _progress(progress)
        r = img.rsh(N1, "10.252.0.5", "hostname; grep ^ID= /etc/os-release; cat /tmp/held;"
                    " echo; stat -L -c %i /proc/self/ns/net")
        assert r.stdout.split("\n")[:3] == ["hpcmig-rt-e1", "ID=hpcmig-test",
                                            "written before the dump"], r
        assert r.stdout.split()[-1] == str(os.stat(e1_new.netns_path).st_ino)
        root = os.readlink(f"/proc/{moved.init_pid}/root")
        assert root == f"{STATE}/hpcmig-rt-e1/root"
        size = sum(os.path.getsize(os.path.join(images, f)) for f in os.listdir(images))
        with capsys.disabled():
            print(f"\ncriu (image container): dump {t_dump:.2f} s, writable layer saved at "
                  f"{t_saved:.2f} s ({os.path.getsize(archive) / 1e3:.0f} kB), restore "
                  f"{t_restore:.2f} s, lock-to-restored {pause:.2f} s, images "
                  f"{size / 1e6:.1f} MB; echo counter {frozen_at} -> {_progress(progress)}")
    finally:
        for name, (node, c) in running.items():
            with contextlib.suppress(AssertionError):
                img.stop(node, c)
            img.containers.pop(name, None)
        for node_net, net in made:
            node_net.remove_container_net(net)
        n1.unroute(e1.address)
        n2.unroute(e1.address)
        n2.unroute(e0.address)
        shutil.rmtree(work, ignore_errors=True)
    assert S.node_mountpoints(h1, f"{STATE}/hpcmig-rt-e1") == []


def test_stop_unmounts_the_image_and_frees_its_loop_device(img: ImgCluster) -> None:
    net = container_net("10.252.0.3", "hpcmig-rtc-i2")
    NodeNet(N1).create_container_net(net)
    try:
        loops = S.sh("losetup", "-j", img.image).stdout.count("\n")
        c = img.start(N1, "i2", net)
        base = f"{STATE}/hpcmig-rt-i2"
        points = S.node_mountpoints(img.holders[N1], base)
        assert f"{base}/root" in points and f"{base}/image" in points
        assert f"{base}/root{img.tmp}" in points and f"{base}/root/etc/passwd" in points
        img.stop(N1, c)
        del img.containers["i2"]
        assert S.node_mountpoints(img.holders[N1], base) == []
        assert not os.path.exists(f"/proc/{img.holders[N1]}/root{base}")
        # mount(8) shares one read-only loop device per (file, offset): no new one is left
        assert S.wait_for(lambda: S.sh("losetup", "-j", img.image).stdout.count("\n")
                          <= loops, 5)
        assert os.path.exists(img.tmp)  # a bound directory is unmounted, never removed
    finally:
        NodeNet(N1).remove_container_net(net)
