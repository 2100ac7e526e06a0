"""The init's exec service end to end over TCP on 127.0.0.1, without namespaces or root.

The server runs in a forked child (it installs signal handlers and reaps with waitpid(-1));
MUNGE is replaced by a fake codec so the authentication *rules* run for real.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcmig.auth import credential, munge
from hpcmig.runtime import client
from hpcmig.runtime import protocol as P
from hpcmig.runtime._session import ExecContext, current_limits
from hpcmig.runtime.init import Init, listen

CLAIM = {"uid": os.getuid()}  # the uid the fake munged vouches for


def fake_encode(payload: bytes, socket: str | None = None) -> str:
    return f"FAKE:{CLAIM['uid']}:{payload.hex()}"


def fake_decode(cred: str) -> munge.Decoded:
    try:
        _, uid, hexed = cred.split(":")
        return munge.Decoded(bytes.fromhex(hexed), int(uid), 0)
    except ValueError:
        raise munge.MungeError("Invalid credential format", munge.EMUNGE_BAD_CRED) from None


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    monkeypatch.setattr(munge, "encode", fake_encode)
    CLAIM["uid"] = os.getuid()
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the server
        code = 70
        try:
            ctx = ExecContext(
                uid=os.getuid(), gid=os.getgid(), user=None, groups=[],
                base_env={"PATH": "/usr/bin:/bin", "BASE": "yes"}, cwd="/",
                targets=frozenset({f"127.0.0.1:{port}"}), setgroups=False,
                limits=current_limits(),
                verify=lambda c, body: credential.verify(c, body, decoder=fake_decode),
            )
            code = Init(listener, ctx, grace=1.0).run()
        finally:
            os._exit(code)
    listener.close()
    yield port, pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def test_output_streams_and_exit_code(server: tuple[int, int]) -> None:
    port, _ = server
    res = client.run_in("127.0.0.1", ["sh", "-c", "echo out; echo err >&2; exit 5"], port=port)
    assert (res.code, res.stdout, res.stderr) == (5, b"out\n", b"err\n")


def test_stdin_and_large_output_flow_through(server: tuple[int, int]) -> None:
    port, _ = server
    data = os.urandom(300_000)
    res = client.run_in("127.0.0.1", ["sh", "-c", "wc -c; head -c 5000000 /dev/zero"],
                        port=port, input=data)
    assert res.code == 0
    assert res.stdout.startswith(b"300000\n") and len(res.stdout) == 7 + 5_000_000
    assert client.run_in("127.0.0.1", ["cat"], port=port).stdout == b""  # stdin: /dev/null


def test_env_cwd_and_rlimits_reach_the_child(server: tuple[int, int], tmp_path: Path) -> None:
    port, _ = server
    res = client.run_in("127.0.0.1", ["sh", "-c", "pwd; echo $BASE $FOO; ulimit -n"],
                        port=port, env={"FOO": "bar"}, cwd=str(tmp_path),
                        rlimits={"NOFILE": [100, 200]})
    assert res.stdout.decode().split("\n")[:3] == [str(tmp_path), "yes bar", "100"]


def test_missing_program_is_exit_127(server: tuple[int, int]) -> None:
    port, _ = server
    res = client.run_in("127.0.0.1", ["/nonexistent/prog"], port=port)
    assert res.code == 127 and b"cannot run /nonexistent/prog" in res.stderr


def test_client_signal_is_delivered_to_the_remote_process_group(server: tuple[int, int]) -> None:
    port, _ = server
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    t0 = time.monotonic()
    code = client.exec_stream("127.0.0.1", ["sh", "-c", "sleep 30 & wait"], port=port,
                              stdout=lambda b: None, stderr=lambda b: None,
                              forward_signals=True, timeout=20)
    timer.join()
    assert code == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 10


def test_wrong_uid_is_refused(server: tuple[int, int]) -> None:
    port, _ = server
    CLAIM["uid"] = os.getuid() + 4242
    with pytest.raises(client.ExecRefused, match=f"uid {os.getuid() + 4242} may not exec"):
        client.run_in("127.0.0.1", ["true"], port=port)


def _raw_exchange(port: int, payload: bytes) -> list[P.Frame]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        dec, frames = P.FrameDecoder(), []
        while chunk := s.recv(65536):
            frames += dec.feed(chunk)
    return frames


def test_unauthenticated_and_misdirected_requests_are_refused(server: tuple[int, int]) -> None:
    port, _ = server
    body = P.ExecRequest(argv=["touch", "/tmp/pwned"], target=f"127.0.0.1:{port}").to_bytes()
    frames = _raw_exchange(port, P.pack_request("MUNGE:garbage", body))
    assert [f.kind for f in frames] == [P.Kind.ERROR]
    assert b"credential refused" in frames[0].payload
    # a valid credential for a request aimed at another container
    other = P.ExecRequest(argv=["true"], target="10.252.0.9:7100").to_bytes()
    frames = _raw_exchange(port, P.pack_request(fake_encode(credential.request_digest(other)),
                                                other))
    assert frames[0].kind is P.Kind.ERROR and b"not for this container" in frames[0].payload
    # garbage instead of a request frame
    frames = _raw_exchange(port, P.int_frame(P.Kind.SIGNAL, 15))
    assert frames[0].kind is P.Kind.ERROR


def test_lost_client_terminates_its_command(server: tuple[int, int], tmp_path: Path) -> None:
    port, _ = server
    pidfile = tmp_path / "pid"
    body = P.ExecRequest(argv=["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"],
                         target=f"127.0.0.1:{port}").to_bytes()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(P.pack_request(fake_encode(credential.request_digest(body)), body))
    deadline = time.monotonic() + 5
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(pidfile.read_text())
    assert Path(f"/proc/{child}").exists()
    s.close()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{child}").exists()  # killed and reaped by the server


def test_sigterm_stops_the_server_and_its_children(server: tuple[int, int],
                                                   tmp_path: Path) -> None:
    port, pid = server
    pidfile = tmp_path / "pid"
    body = P.ExecRequest(argv=["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"],
                         target=f"127.0.0.1:{port}").to_bytes()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(P.pack_request(fake_encode(credential.request_digest(body)), body))
    deadline = time.monotonic() + 5
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and time.monotonic() - t0 < 5
    assert not Path(f"/proc/{int(pidfile.read_text())}").exists()
    dec = P.FrameDecoder()
    frames = []
    while chunk := s.recv(65536):
        frames += dec.feed(chunk)
    s.close()
    assert frames[-1].kind is P.Kind.EXIT and P.frame_int(frames[-1]) == 128 + signal.SIGTERM
