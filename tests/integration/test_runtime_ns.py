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
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network

import pytest

from hpcmig.network import NodeNet, container_net
from hpcmig.network.plan import ContainerNet
from hpcmig.runtime import Container, ContainerSpec, Runtime, get_runtime
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


def start(rt: Runtime, name: str, job: str, user: S.User, net: ContainerNet, state_dir: str,
          env: dict[str, str]) -> Container:
    spec = ContainerSpec(name=name, job_id=job, uid=user.uid, gid=user.gid,
                         netns=net.netns_path, address=str(net.address), env=env,
                         state_dir=state_dir, stop_grace=2.0)
    return rt.start(spec)


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
    # each init's cwd is its own directory: CRIU's parasite makes proc.crtools there, so
    # containers dumped at once (a whole-job checkpoint) must not share it
    cwds = {os.readlink(f"/proc/{c.init_pid}/cwd") for c in cluster.containers.values()}
    assert cwds == {os.path.join(cluster.state_dir, c.name) for c in cluster.containers.values()}


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
        # (the kernel ends the namespace's last processes just after its init)
        assert S.wait_for(lambda: S.processes_in_pidns(pidns) == [], 5.0), \
            S.processes_in_pidns(pidns)
        assert not os.path.exists(os.path.join(cluster.state_dir, "hpcmig-rt-c2"))
    finally:
        node.remove_container_net(net)
    assert "hpcmig-rtc-c2" not in S.netns_list()
    assert not re.search(r"10\.252\.0\.3\b", S.in_ns(N1, "ip", "route").stdout)


ECHO_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 9000)); s.listen(1)
c, _ = s.accept()
while True:
    data = c.recv(64)
    if not data:
        break
    c.sendall(data)
"""

ECHO_CLIENT = """
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
        s.sendall(b'%08d' % i)
        got = b''
        while len(got) < 8:
            chunk = s.recv(8 - len(got))
            if not chunk:
                raise OSError('connection closed')
            got += chunk
        assert got == b'%08d' % i, (got, i)
        note(str(i))
        time.sleep(0.02)
except Exception as exc:
    note('ERROR %s after %d' % (exc, i))
"""


def _criu(images: str, log: str, node: str, *argv: str) -> None:
    r = S.in_ns(node, *argv, check=False, timeout=60)
    if r.returncode != 0:
        with open(os.path.join(images, log)) as fh:
            tail = "".join(fh.readlines()[-15:])
        pytest.fail(f"{argv[1] if argv[0] == CRIU else 'criu restore'} failed:\n{tail}")


def _progress(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


CRIU = os.environ.get("HPCMIG_CRIU", "criu")  # e.g. a patched build under test


def criu_cannot_dump_job_processes() -> str | None:
    """Probe the two known breaks on this platform with a non-root process holding a TCP
    socket: CRIU < 4.2 on Linux >= 6.16 fails on every INET socket (SO_PASSCRED is
    AF_UNIX/AF_NETLINK-only there; checkpoint-restore/criu#2705, fixed in v4.2), and without
    CAP_SYS_RESOURCE CRIU cannot read a non-root task's rlimits (prlimit is EPERM)."""
    work = tempfile.mkdtemp(prefix="hpcmig-rt-criuprobe-")
    pid = S._proc.spawn(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                         sys.executable, "-c", "import socket,time\n"
                         "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
                         "time.sleep(60)"], log_path=os.path.join(work, "out"))
    try:
        time.sleep(0.3)
        r = S.sh(CRIU, "dump", "-t", str(pid), "-D", work, "-o", "probe.log", "--leave-running",
                 "--shell-job", check=False, timeout=30)
        if r.returncode == 0:
            return None
        with open(os.path.join(work, "probe.log")) as fh:
            log = fh.read()
        if "Can't get 1:16 opt" in log:
            return (f"{CRIU} cannot dump INET sockets on Linux {os.uname().release} "
                    "(needs CRIU >= 4.2, checkpoint-restore/criu#2705; see docs/runtime.md)")
        if "Can't get rlimit" in log:
            return (f"{CRIU} cannot read rlimits of non-root tasks: this machine lacks "
                    "CAP_SYS_RESOURCE (see docs/runtime.md for the CRIU fallback patch)")
        return None  # some other failure: let the test show it
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.skipif(shutil.which(CRIU) is None, reason=f"{CRIU} is not installed")
def test_criu_moves_a_container_to_another_node_with_its_tcp_connection(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """PLATFORM.md's recipe: blackhole, dump with the netns external, same /32 on the other
    node, restore into a fresh netns; the TCP connection from the peer container survives."""
    if S.sh(CRIU, "check", check=False).returncode != 0:
        pytest.skip(f"{CRIU} check fails on this kernel")
    broken = criu_cannot_dump_job_processes()
    if broken:
        pytest.skip(broken)
    rt = get_runtime("ns")
    n1, n2 = NodeNet(N1), NodeNet(N2)
    e0 = container_net("10.252.0.4", "hpcmig-rtc-e0")
    e1 = container_net("10.252.0.5", "hpcmig-rtc-e1")
    e1_new = container_net("10.252.0.5", "hpcmig-rtc-e1b")
    work = tempfile.mkdtemp(prefix="hpcmig-rt-criu-")
    os.chmod(work, 0o777)
    progress = os.path.join(work, "progress")
    images = os.path.join(work, "images")
    os.mkdir(images)
    made = [(n1, e0), (n2, e1)]
    started: list[Container] = []
    try:
        n1.create_container_net(e0)
        n2.create_container_net(e1)
        n1.route_via(e1.address, S.NODES[N2])
        n2.route_via(e0.address, S.NODES[N1])
        c_e0 = start(rt, "hpcmig-rt-e0", "1", cluster.a, e0, cluster.state_dir, cluster.env)
        started.append(c_e0)
        c_e1 = start(rt, "hpcmig-rt-e1", "1", cluster.a, e1, cluster.state_dir, cluster.env)
        started.append(c_e1)
        py = sys.executable
        assert cluster.rsh(N2, "-n", "10.252.0.5",
                           f"{py} -c \"{ECHO_SERVER}\" </dev/null >/dev/null 2>&1 &"
                           ).returncode == 0
        time.sleep(0.5)
        assert cluster.rsh(N1, "-n", "10.252.0.4",
                           f"{py} -c \"{ECHO_CLIENT}\" {progress} </dev/null >/dev/null 2>&1 &"
                           ).returncode == 0
        assert S.wait_for(lambda: _progress(progress).isdigit() and
                          int(_progress(progress)) > 20, 10), _progress(progress)

        # -- migrate e1 from node 2 to node 1 --
        net_inode = os.stat(e1.netns_path).st_ino
        t0 = time.perf_counter()
        n2.hold(e1.address)  # network lock: peers retransmit, no RST
        _criu(images, "dump.log", N2, CRIU, "dump", "-t", str(c_e1.init_pid), "-D", images,
              "-o", "dump.log", "--tcp-established", "--network-lock", "skip",
              "--external", f"net[{net_inode}]:e1net")
        t_dump = time.perf_counter() - t0
        frozen_at = _progress(progress)
        # same /32 in a fresh netns on node 1, held there until the restore is done
        n1.create_container_net(e1_new, routed=False)
        made.append((n1, e1_new))
        n2.route_via(e1.address, S.NODES[N1])
        t1 = time.perf_counter()
        _criu(images, "restore.log", N1, "sh", "-c",
              f"exec 7<{e1_new.netns_path}; exec {CRIU} restore -D {images} -o restore.log "
              f"--tcp-established -d --pidfile {images}/pid --inherit-fd fd[7]:e1net")
        t_restore = time.perf_counter() - t1
        n1.point_local(e1_new)  # unlock: packets flow to the restored sockets
        with open(f"{images}/pid") as fh:
            new_pid = int(fh.read())
        moved = Container(**{**c_e1.__dict__, "init_pid": new_pid, "netns": e1_new.netns_path})
        started[1] = moved
        pause = time.perf_counter() - t0

        # the peer's connection survived and keeps counting
        assert S.wait_for(lambda: _progress(progress).isdigit()
                          and int(_progress(progress)) > int(frozen_at) + 20, 15), \
            _progress(progress)
        # the restored init still serves exec requests, in the new netns on node 1
        r = cluster.rsh(N1, "10.252.0.5", "hostname; stat -L -c %i /proc/self/ns/net")
        assert r.stdout.split() == ["hpcmig-rt-e1", str(os.stat(e1_new.netns_path).st_ino)]
        size = sum(os.path.getsize(os.path.join(images, f)) for f in os.listdir(images))
        with capsys.disabled():
            print(f"\ncriu: dump {t_dump:.2f} s, restore {t_restore:.2f} s, lock-to-restored "
                  f"{pause:.2f} s, images {size / 1e6:.1f} MB; echo counter {frozen_at} at "
                  f"dump -> {_progress(progress)} after restore")
    finally:
        for c in started:
            rt.stop(c)
        for node, net in made:
            node.remove_container_net(net)
        n1.unroute(e1.address)
        n2.unroute(e1.address)
        n2.unroute(e0.address)
        shutil.rmtree(work, ignore_errors=True)
    assert not [ns for ns in S.netns_list() if ns.startswith("hpcmig-rtc-e")]
