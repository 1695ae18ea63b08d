"""The SSH guard against a real kernel: an sshd-named listener and a live session (needs root).

docs/design.md, "The SSH guard". Each test builds a server and a client namespace
joined by a veth; a process whose name (/proc/PID/comm) is "sshd" listens on port 22
in the server, and the client holds an ESTABLISHED connection to it for the whole
test. SSH_CONNECTION is unset throughout: the guard must find the session itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harden.lab.netns import Namespace, connect

from .labutil import HARDEN, write

pytestmark = pytest.mark.netns

NsFactory = Callable[[str], Namespace]

# Renames itself to "sshd" (prctl PR_SET_NAME), listens on port 22, holds what it accepts.
LISTENER = """\
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"sshd", 0, 0, 0)
host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
server = socket.socket(family, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
server.bind((host, 22))
server.listen(8)
print(open("/proc/self/comm").read().strip(), flush=True)
held = []
while True:
    held.append(server.accept()[0])
"""

CLIENT = """\
import socket, sys, time
conn = socket.create_connection((sys.argv[1], 22), timeout=10)
print("connected", flush=True)
time.sleep(3600)
"""

# Connects, then sends a line once the file argv[2] exists (after the apply), and holds on.
CHATTY = """\
import os, socket, sys, time
conn = socket.create_connection((sys.argv[1], 22), timeout=10)
print("connected", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
conn.sendall(b"still here\\n")
time.sleep(3600)
"""

# Runs inside the server namespace: the guard's verdict on each manifest, and what it saw.
GUARD = """\
import json, sys
from harden.apply.guard import lockout_reason, ssh_ports, ssh_sessions, tcp_sockets
from harden.policy.model import build_policy
from harden.files import parse_manifest
sockets = tcp_sockets()
ports = ssh_ports(sockets, set())
print(json.dumps({
    "ports": ports,
    "sessions": [[str(peer), port] for peer, port in ssh_sessions(sockets, ports)],
    "reasons": [
        lockout_reason(build_policy(parse_manifest(open(path).read())), {})
        for path in sys.argv[1:]
    ],
}))
"""

REFUSE = """version: 1
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24]}
"""
ALLOW = """version: 1
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.19.0.0/16, "fd00:18::/64"]}
"""


@dataclass
class Lab:
    server: Namespace
    client: Namespace
    peer: str  # the client's address as the guard should name it


def start(ns: Namespace, code: str, *args: str) -> subprocess.Popen[str]:
    """A Python process inside ``ns``, in its own process group (so it can be killed whole)."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def first_line(proc: subprocess.Popen[str], timeout: float = 15) -> str:
    """The process's first line of output, or fail (with its stderr) if none comes in time."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout):
            line = proc.stdout.readline().strip()
            if line:
                return line
    proc.kill()
    _, err = proc.communicate(timeout=5)
    pytest.fail(f"no output from {proc.args!r}: {err}")


@pytest.fixture(params=["v4", "mapped", "v6"])
def lab(request: pytest.FixtureRequest, netns: NsFactory) -> Iterator[Lab]:
    """An sshd-named listener in the server and a session held open from the client.

    v4: listener on 198.18.N.1, client over IPv4. mapped: dual-stack listener on ::,
    client over IPv4, so the kernel shows the peer as ::ffff:198.19.N.2. v6: the
    same listener, client over IPv6 (fd00:18::2).
    """
    n = random.randint(2, 254)
    server, client = netns("gs"), netns("gc")
    connect(
        server, client, [f"198.18.{n}.1/15", "fd00:18::1/64"], [f"198.19.{n}.2/15", "fd00:18::2/64"]
    )
    bind, target, peer = {
        "v4": (f"198.18.{n}.1", f"198.18.{n}.1", f"198.19.{n}.2"),
        "mapped": ("::", f"198.18.{n}.1", f"198.19.{n}.2"),
        "v6": ("::", "fd00:18::1", "fd00:18::2"),
    }[request.param]
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(start(server, LISTENER, bind))
        assert first_line(procs[-1]) == "sshd"
        procs.append(start(client, CLIENT, target))
        assert first_line(procs[-1]) == "connected"
        yield Lab(server, client, peer)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)


def test_guard_sees_the_session_without_ssh_connection(lab: Lab, tmp_path: Path) -> None:
    refuse, allow = write(tmp_path, "refuse.yaml", REFUSE), write(tmp_path, "allow.yaml", ALLOW)
    proc = lab.server.run([sys.executable, "-c", GUARD, refuse, allow])
    seen = json.loads(proc.stdout)
    assert seen["ports"] == [22]
    assert seen["sessions"] == [[lab.peer, 22]]
    refused, allowed = seen["reasons"]
    assert refused == (
        f"an SSH session from {lab.peer} to port 22 is established, and the manifest "
        f"does not allow tcp/22 from {lab.peer}: the session is cut at once (conntrack does "
        f"not track it yet), and new SSH logins from {lab.peer} would be refused"
    )
    assert allowed is None


def test_apply_refuses_and_changes_nothing(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSH_CONNECTION", raising=False)  # the CLI inherits os.environ
    refuse = write(tmp_path, "refuse.yaml", REFUSE)
    proc = lab.server.run(
        [*HARDEN, "apply", refuse, "--state-dir", tmp_path / "state"], check=False, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lab.peer in lines[0] and "tcp/22" in lines[0], proc.stderr
    assert "inet harden" not in lab.server.run(["nft", "list", "tables"]).stdout


# Any user can name a process "sshd": one running as nobody, on a high port, holding a
# session, must neither block root's apply nor become "the live SSH port" in init.
IMPOSTOR = LISTENER.replace("server.bind((host, 22))", "server.bind((host, 5555))")
IMPOSTOR_CLIENT = CLIENT.replace("(sys.argv[1], 22)", "(sys.argv[1], 5555)")


def test_an_unprivileged_process_named_sshd_is_not_believed(
    netns: NsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    server, client = netns("is"), netns("ic")
    connect(server, client, ["198.18.44.1/24"], ["198.18.44.2/24"])
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    impostor = subprocess.Popen(
        ["ip", "netns", "exec", server.name, *as_nobody, sys.executable, "-c", IMPOSTOR, "0.0.0.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    session: subprocess.Popen[str] | None = None
    try:
        assert first_line(impostor) == "sshd"  # listening before the client connects
        session = start(client, IMPOSTOR_CLIENT, "198.18.44.1")
        assert first_line(session) == "connected"
        listed = server.run(["ss", "-Htanp", "sport", "= :5555"]).stdout
        assert '"sshd"' in listed and "ESTAB" in listed  # ss shows an sshd with a session
        closed = write(tmp_path, "closed.yaml", "version: 1\nservices: []\n")
        proc = server.run(
            [*HARDEN, "apply", closed, "--state-dir", tmp_path / "state"], check=False, timeout=120
        )
        assert proc.returncode == 0, proc.stderr  # not refused: that "sshd" is nobody's
        server.run([*HARDEN, "rollback", "--state-dir", tmp_path / "state"])
        proposal = json.loads(server.run([*HARDEN, "init", "--format", "json"]).stdout)
        assert not any(s.get("ssh") for s in proposal["services"]), proposal["services"]
    finally:
        for started in (impostor, *([session] if session else [])):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.pid, signal.SIGKILL)
            started.communicate(timeout=10)


def _queues(ns: Namespace, side: str) -> tuple[int, int]:
    """Recv-Q and Send-Q of the one established connection on port 22's ``side``."""
    lines = ns.run(["ss", "-Htn", "state", "established", side, "= :22"]).stdout.splitlines()
    assert len(lines) == 1, lines
    recv, send = lines[0].split()[:2]
    return int(recv), int(send)


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
def test_what_the_refusal_says_is_what_a_forced_apply_does(
    netns: NsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracked: bool
) -> None:
    """harden accepts established connections, but only those conntrack tracks. A session
    from before anything in its namespace used conntrack meets the new rules as new: the
    refusal says it is cut at once, and --force cuts it (its bytes never arrive). With
    tracking on before it connected, the refusal says it survives, and it does. Either
    way a new connection from the same peer gets nowhere."""
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    server, client = netns("fs"), netns("fc")
    connect(server, client, ["198.18.45.1/24"], ["198.18.45.2/24"])
    if tracked:  # any ct expression makes conntrack track this namespace's connections
        table = "add table ip trk; add chain ip trk in { type filter hook input priority -300; }"
        server.run(["nft", f"{table}; add rule ip trk in ct state new"])
    flag = tmp_path / "applied"
    procs = [start(server, LISTENER, "198.18.45.1")]
    try:
        assert first_line(procs[0]) == "sshd"
        procs.append(start(client, CHATTY, "198.18.45.1", str(flag)))
        assert first_line(procs[1]) == "connected"
        refuse = write(tmp_path, "refuse.yaml", REFUSE)
        state: list[str | Path] = [
            "--state-dir",
            tmp_path / "state",
            "--no-persist",
            "--root",
            tmp_path,
        ]
        proc = server.run([*HARDEN, "apply", refuse, *state], check=False, timeout=120)
        fate = "survives (conntrack tracks it)" if tracked else "is cut at once (conntrack does"
        assert proc.returncode == 2 and f"the session {fate}" in proc.stderr, proc.stderr
        proc = server.run([*HARDEN, "apply", refuse, *state, "--force"], check=False)
        assert proc.returncode == 0, proc.stderr
        flag.touch()
        sent = len("still here\n")
        deadline = time.monotonic() + 3
        while _queues(server, "sport")[0] < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        if tracked:
            assert _queues(server, "sport")[0] == sent  # arrived through harden's rules
        else:
            assert _queues(server, "sport")[0] == 0 and _queues(client, "dport")[1] == sent
        new = client.run(
            [
                sys.executable,
                "-c",
                "import socket; socket.create_connection(('198.18.45.1', 22), 2)",
            ],
            check=False,
        )
        assert new.returncode != 0 and "timed out" in new.stderr, new.stderr
    finally:
        for started in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.pid, signal.SIGKILL)
            started.communicate(timeout=10)
