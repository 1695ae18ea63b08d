"""harden init: a manifest proposed from the listening sockets, then applied and verified.

The pure proposal is tested on hand-made listeners and ss lines; the namespace tests
(needs root) start real listeners in a server namespace, run ``harden init`` there,
apply the proposal with the real apply path and verify it from a second namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from harden.apply.guard import parse_ss
from harden.core.proposal import DOCKER_NOTE, Listener, propose
from harden.files import parse_manifest
from harden.init import listeners, live_ssh_ports
from harden.lab.netns import Namespace, connect

from .labutil import HARDEN

NsFactory = Callable[[str], Namespace]
NAMES = {(22, "tcp"): "ssh", (53, "tcp"): "domain", (53, "udp"): "domain", (80, "tcp"): "http"}


def names(port: int, proto: str) -> str | None:
    return NAMES.get((port, proto))


def lst(proto: str, address: str | None, port: int, *procs: str) -> Listener:
    return Listener(
        "tcp" if proto == "tcp" else "udp",
        None if address is None else ip_address(address),
        port,
        procs,
    )


# The pure proposal.


def test_wildcard_loopback_bound_and_docker_listeners() -> None:
    proposal = propose(
        [
            lst("tcp", None, 22, "sshd"),
            lst("tcp", "0.0.0.0", 53, "named"),
            lst("udp", "::", 53, "named"),
            lst("tcp", "127.0.0.1", 631, "cupsd"),
            lst("udp", "fe80::1", 546, "dhcpcd"),
            lst("tcp", "198.18.0.1", 8443, "api server"),
            lst("tcp", "0.0.0.0", 8080, "docker-proxy"),
        ],
        [22],
        names,
    )
    services = {s.name: s for s in proposal.services}
    assert list(services) == ["ssh", "domain", "docker-proxy", "api-server"]  # by port
    assert services["domain"].protos == ("tcp", "udp")
    assert "bound to 198.18.0.1 only" in services["api-server"].comment
    assert DOCKER_NOTE in services["docker-proxy"].comment
    assert services["ssh"].ssh and "always kept" in services["ssh"].comment
    assert [(x.listener.port, x.why.split(":")[0]) for x in proposal.left_out] == [
        (546, "IPv6 link-local only"),
        (631, "loopback only"),
    ]
    assert "#   tcp/631 on 127.0.0.1 (cupsd): loopback only" in proposal.manifest
    manifest = parse_manifest(proposal.manifest)
    assert [s.sources for s in manifest.services] == [None] * 4  # open to any source


def test_the_ssh_port_is_kept_even_on_loopback_or_with_no_listener() -> None:
    proposal = propose([lst("tcp", "127.0.0.1", 2222, "sshd")], [2222, 22], names)
    assert [(s.name, s.port, s.protos) for s in proposal.services] == [
        ("ssh", 22, ("tcp",)),
        ("sshd", 2222, ("tcp",)),
    ]
    assert "no listener was seen" in proposal.services[0].comment
    assert "bound to 127.0.0.1 only" in proposal.services[1].comment
    assert proposal.left_out == ()


def test_deterministic_unique_names_and_no_overlap() -> None:
    listeners_ = [
        lst("tcp", "198.18.0.1", 80, "nginx"),
        lst("tcp", "198.18.0.2", 80, "apache2"),  # the same tcp/80: one service declares it
        lst("udp", None, 80, "nginx"),
        lst("tcp", None, 5000, "1 weird/name!"),
        lst("tcp", None, 5001, "1 weird/name!"),
        lst("tcp", None, 5002, "yes"),
    ]
    one = propose(listeners_, [], names)
    assert one.manifest == propose(reversed(listeners_), [], names).manifest
    got = [(s.name, s.port, s.protos) for s in one.services]
    assert got == [
        ("http", 80, ("tcp",)),
        ("nginx", 80, ("udp",)),
        ("svc-1-weird-name", 5000, ("tcp",)),
        ("svc-1-weird-name-5001", 5001, ("tcp",)),
        ("yes", 5002, ("tcp",)),
    ]
    assert "tcp also served by nginx" in one.services[0].comment
    assert '{name: "yes",' in one.manifest
    parse_manifest(one.manifest)


def test_nothing_listening_is_still_a_valid_manifest() -> None:
    proposal = propose([], [], names)
    assert proposal.services == () and parse_manifest(proposal.manifest).services == ()
    assert proposal.to_json()["schema"] == "harden.init/1"


def test_ss_lines_become_listeners_and_ssh_ports() -> None:
    tcp = parse_ss(
        'LISTEN 0 128 0.0.0.0:2222 0.0.0.0:* users:(("sshd",pid=10,fd=3))\n'
        'LISTEN 0 128 [::1]:631 [::]:* users:(("cupsd",pid=11,fd=4))\n'
        'ESTAB 0 0 198.18.0.1:2200 198.19.0.5:40000 users:(("sshd-session",pid=12,fd=4))\n'
        'ESTAB 0 0 198.18.0.1:80 198.19.0.5:40001 users:(("nginx",pid=13,fd=5))\n'
    )
    udp = parse_ss(
        'UNCONN 0 0 *:53 *:* users:(("named",pid=20,fd=6),("named",pid=21,fd=6))\n'
        'UNCONN 0 0 [fe80::1]%eth0:546 [::]:* users:(("dhcpcd",pid=22,fd=7))\n'
        'ESTAB 0 0 198.18.0.1:41000 198.18.0.53:53 users:(("resolver",pid=23,fd=8))\n'
    )
    found = listeners(tcp, udp)
    assert [(x.proto, x.shown_address, x.port, x.process) for x in found] == [
        ("tcp", "0.0.0.0", 2222, "sshd"),
        ("tcp", "::1", 631, "cupsd"),
        ("udp", "*", 53, "named"),
        ("udp", "fe80::1", 546, "dhcpcd"),
    ]

    def root(pid: int) -> bool:
        return True  # as if pids 10 and 12 ran as root from root-owned binaries

    assert live_ssh_ports(tcp, {}, root) == {2222, 2200}
    env = {"SSH_CONNECTION": "198.19.0.5 40002 198.18.0.1 2022"}
    assert live_ssh_ports(tcp, env, root) == {2222, 2200, 2022}
    # An "sshd" that is not root's is anyone's: only SSH_CONNECTION still counts.
    assert live_ssh_ports(tcp, env, lambda pid: False) == {2022}


# The real thing, in namespaces.

# Listens on every [proto, host, port, v6only] spec given as JSON, under the process name
# argv[1]: TCP accepts and closes, UDP echoes. Prints "ready" once all are bound.
LISTENER = """\
import ctypes, json, selectors, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
sel = selectors.DefaultSelector()
for proto, host, port, v6only in json.loads(sys.argv[2]):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind((host, port))
    if proto == "tcp":
        s.listen(64)
    sel.register(s, selectors.EVENT_READ, proto)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        try:
            if key.data == "tcp":
                key.fileobj.accept()[0].close()
            else:
                data, peer = key.fileobj.recvfrom(2048)
                key.fileobj.sendto(data or b"x", peer)
        except OSError:
            pass
"""


@dataclass
class Server:
    server: Namespace
    prober: Namespace
    v4: str  # the server's veth addresses
    v6: str
    tag: str  # per-run suffix of the process names
    public: list[tuple[str, int, int]]  # (proto, port, family) that must answer from outside


def start(
    ns: Namespace, name: str, specs: list[tuple[str, str, int, int]]
) -> subprocess.Popen[str]:
    """A listener process named ``name`` inside ``ns``, in its own process group."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", LISTENER, name, json.dumps(specs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def ready(proc: subprocess.Popen[str], name: str, timeout: float = 15) -> None:
    """Wait for the listener's "ready", or fail with its stderr."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(timeout) and proc.stdout.readline().strip() == "ready":
            return
    proc.kill()
    pytest.fail(f"listener {name!r} did not start: {proc.communicate(timeout=5)[1]}")


@pytest.fixture
def server(netns: NsFactory) -> Iterator[Server]:
    """A server namespace with real listeners of every kind, and a prober joined by a veth."""
    server, prober = netns("is"), netns("ip")
    n = 100 + uuid.uuid4().int % 100
    v4, v6 = f"198.18.{n}.1", f"fd00:{n}::1"
    connect(server, prober, [f"{v4}/24", f"{v6}/64"], [f"198.18.{n}.2/24", f"fd00:{n}::2/64"])
    tag = uuid.uuid4().hex[:4]
    listeners_: dict[str, list[tuple[str, str, int, int]]] = {
        "sshd": [("tcp", "::", 22, 0)],  # dual-stack: ss shows *:22
        f"web{tag}": [("tcp", "0.0.0.0", 80, 0), ("tcp", "::", 443, 1)],
        f"dns{tag}": [("tcp", "::", 53, 0), ("udp", "::", 53, 0)],
        f"time{tag}": [("udp", "0.0.0.0", 123, 0)],
        f"app{tag}": [("tcp", v4, 1500, 0), ("udp", v6, 1501, 0)],
        f"priv{tag}": [
            ("tcp", "127.0.0.1", 631, 0),
            ("udp", "::1", 1053, 0),
            ("tcp", "::1", 25, 1),
        ],
    }
    public = [
        ("tcp", 22, 4),
        ("tcp", 22, 6),
        ("tcp", 80, 4),
        ("tcp", 443, 6),
        ("tcp", 53, 4),
        ("tcp", 53, 6),
        ("udp", 53, 4),
        ("udp", 53, 6),
        ("udp", 123, 4),
        ("tcp", 1500, 4),
        ("udp", 1501, 6),
    ]
    procs: list[subprocess.Popen[str]] = []
    try:
        for name, specs in listeners_.items():
            procs.append(start(server, name, specs))
            ready(procs[-1], name)
        yield Server(server, prober, v4, v6, tag, public)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)


def harden(ns: Namespace, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return ns.run([*HARDEN, *map(str, args)], check=False, timeout=300)


@pytest.mark.netns
def test_init_proposes_what_listens(server: Server, tmp_path: Path) -> None:
    proc = harden(server.server, "init", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    assert data["schema"] == "harden.init/1"
    text = harden(server.server, "init")
    assert text.returncode == 0 and text.stdout == data["manifest"]  # the same, deterministic
    assert text.stdout.startswith("# Proposed by harden init")

    out = tmp_path / "proposed.yaml"
    wrote = harden(server.server, "init", "-o", out)
    assert wrote.returncode == 0 and wrote.stdout == "" and str(out) in wrote.stderr
    assert out.read_text() == data["manifest"]
    valid = harden(server.server, "validate", out)
    assert valid.returncode == 0, valid.stderr

    got = {(s["name"], s["port"], tuple(s["proto"])) for s in data["services"]}
    t = server.tag
    assert got == {
        ("ssh", 22, ("tcp",)),
        ("domain", 53, ("tcp", "udp")),
        ("http", 80, ("tcp",)),
        ("ntp", 123, ("udp",)),
        ("https", 443, ("tcp",)),
        (f"app{t}", 1500, ("tcp",)),
        (f"app{t}-1501", 1501, ("udp",)),
    }
    comments = {s["port"]: s["comment"] for s in data["services"]}
    assert "always kept" in comments[22] and "sshd" in comments[22]
    assert f"bound to {server.v4} only" in comments[1500]
    assert f"bound to {server.v6} only" in comments[1501]
    assert "IPv4 only" in comments[80] and "IPv6 only" in comments[443]
    left = {(x["proto"], x["port"], x["address"], x["process"]) for x in data["left_out"]}
    assert left == {
        ("tcp", 25, "::1", f"priv{t}"),
        ("tcp", 631, "127.0.0.1", f"priv{t}"),
        ("udp", 1053, "::1", f"priv{t}"),
    }
    assert all(x["why"].startswith("loopback only") for x in data["left_out"])
    for port, address in ((25, "::1"), (631, "127.0.0.1"), (1053, "::1")):
        assert f"/{port} on {address} (priv{t}): loopback only" in data["manifest"]
        assert f"port: {port}," not in data["manifest"]


@pytest.mark.netns
def test_the_proposal_applies_and_verifies(server: Server, tmp_path: Path) -> None:
    proposed = tmp_path / "proposed.yaml"
    assert harden(server.server, "init", "-o", proposed).returncode == 0
    applied = harden(server.server, "apply", proposed, "--state-dir", tmp_path / "state")
    assert applied.returncode == 0, applied.stderr  # no --force: the SSH port is in it

    report_path = tmp_path / "report.json"
    verify = harden(
        server.prober,
        "verify",
        proposed,
        *("--target", server.v4, "--target", server.v6),
        *("--ports", "1-1600", "--format", "json", "-o", report_path),
    )
    report = json.loads(report_path.read_text())
    assert verify.returncode == 0, (verify.stderr, report["ports"])
    assert report["verdict"] == "pass"
    observed = {
        (p["proto"], p["port"], int(p["family"][-1])): p["observed"] for p in report["ports"]
    }
    assert {key: observed.get(key) for key in server.public} == dict.fromkeys(server.public, "open")
    # Loopback-only listeners were left out: closed from outside (silent, not open).
    for key in [("tcp", 631, 4), ("tcp", 25, 6), ("udp", 1053, 6)]:
        assert observed.get(key) in (None, "silent")
