"""Routed traffic, trusted interfaces and DHCPv6 replies, for real, in namespaces (both backends).

A router namespace forwards between hosts on links named like a WireGuard gateway's
(wg0, lan0, wan0); harden is applied only there. Every path is shown to work before
apply, so silence afterwards is the firewall's doing, not the lab's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harden.lab.netns import Namespace, connect

from .labutil import HARDEN, write

pytestmark = pytest.mark.netns
BACKENDS = ["nftables", "iptables"]
NsFactory = Callable[[str], Namespace]
Target = tuple[str, int]

SSH_ONLY = "version: 1\nservices:\n  - {name: ssh, port: 22, proto: tcp}\n"
FORWARD_DROP = (
    SSH_ONLY
    + """\
forward:
  policy: drop
  allow:
    - name: vpn-to-lan-web
      in_interface: wg0
      out_interface: lan0
      destinations: [198.18.50.0/24, "fd00:50::/64"]
      proto: tcp
      ports: [80]
"""
)
# Subnets per link: 198.18.N.0/24 and fd00:N::/64, the router .1/::1, the host .2/::2.
GATEWAY = {"wg0": 100, "lan0": 50, "wan0": 60}

# Each target: a fresh connection (new source port) per attempt, two attempts, in parallel.
PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def reach(target):
    for _ in range(2):
        try:
            with socket.create_connection(tuple(target), timeout=0.6):
                return True
        except OSError:
            pass
    return False
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(list(pool.map(reach, targets))))
"""
# Waits up to 2 s for one datagram on udp/546 and prints its source address (or nothing).
RECEIVE = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 546))
s.settimeout(2.0)
print("ready", flush=True)
try:
    print(s.recvfrom(2048)[1][0])
except TimeoutError:
    pass
"""
# Sends three datagrams from [argv1]:547 to [argv2]:546, both scoped to link argv3.
SEND = """
import socket, sys, time
scope = socket.if_nametoindex(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 547, 0, scope))
for _ in range(3):
    s.sendto(b"dhcpv6-reply", (sys.argv[2], 546, 0, scope))
    time.sleep(0.1)
"""


def harden(ns: Namespace, *args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = ns.run([*HARDEN, *map(str, args)], check=False, timeout=120)
    assert proc.returncode == 0, f"harden {args[0]}: {proc.stdout}{proc.stderr}"
    return proc


def apply(ns: Namespace, manifest: Path, backend: str, state: Path) -> None:
    harden(ns, "apply", manifest, "--backend", backend, "--state-dir", state)


def in_ns(ns: Namespace, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns.name, sys.executable, *args]


@pytest.fixture
def serve() -> Iterator[Callable[[Namespace, str], None]]:
    """Start harden's responder (TCP accept-and-close) in a namespace; stopped at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(ns: Namespace, tcp: str) -> None:
        cmd = in_ns(ns, "-m", "harden.lab.responder", "--tcp", tcp, "--lifetime", "120")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


def reachable(ns: Namespace, *targets: Target) -> dict[Target, bool]:
    """Which targets accept a TCP connection from ``ns``."""
    proc = ns.run([sys.executable, "-c", PROBE, json.dumps(targets)], timeout=30)
    return dict(zip(targets, json.loads(proc.stdout), strict=True))


def router_lab(netns: NsFactory, links: dict[str, int]) -> tuple[Namespace, dict[str, Namespace]]:
    """A forwarding router with one host per link; each host routes everything via the router."""
    router = netns("fwr")
    router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    hosts: dict[str, Namespace] = {}
    for name, n in links.items():
        host = hosts[name] = netns("fwh")
        dev, peer = connect(router, host, [], [])
        # Renamed before any address is added (a link going down drops its IPv6 addresses),
        # and up again without DAD: a tentative link-local address stalls IPv6 forwarding.
        router.run(["ip", "link", "set", dev, "down"])
        router.run(["ip", "link", "set", dev, "name", name])
        host.run(["ip", "link", "set", peer, "down"])
        for ns, iface, last in ((router, name, 1), (host, peer, 2)):
            ns.run(["sysctl", "-qw", f"net.ipv6.conf.{iface}.accept_dad=0"])
            ns.run(["ip", "link", "set", iface, "up"])
            ns.run(["ip", "addr", "add", f"198.18.{n}.{last}/24", "dev", iface])
            ns.run(["ip", "addr", "add", f"fd00:{n}::{last}/64", "dev", iface, "nodad"])
        host.run(["ip", "route", "add", "default", "via", f"198.18.{n}.1"])
        host.run(["ip", "-6", "route", "add", "default", "via", f"fd00:{n}::1"])
        addrs = router.run(["ip", "-br", "addr", "show", "dev", name]).stdout
        assert f"198.18.{n}.1/24" in addrs and f"fd00:{n}::1/64" in addrs, addrs
    return router, hosts


def both(n: int, port: int) -> tuple[Target, Target]:
    """The host on link ``n``, port ``port``, over IPv4 and IPv6."""
    return (f"198.18.{n}.2", port), (f"fd00:{n}::2", port)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_drop_passes_only_allowed_routes(
    backend: str, netns: NsFactory, serve: Callable[[Namespace, str], None], tmp_path: Path
) -> None:
    router, hosts = router_lab(netns, GATEWAY)
    vpn, lan, out = hosts["wg0"], hosts["lan0"], hosts["wan0"]
    serve(lan, "80,81")
    serve(vpn, "80")
    allowed = {vpn: both(50, 80)}
    denied = {vpn: both(50, 81), lan: both(100, 80), out: both(50, 80)}

    for host in (vpn, lan, out):  # the lab routes every one of them
        targets = allowed.get(host, ()) + denied[host]
        assert all(reachable(host, *targets).values()), host.name

    apply(router, write(tmp_path, "gw.yaml", FORWARD_DROP), backend, tmp_path / "state")
    assert reachable(vpn, *allowed[vpn], *denied[vpn]) == {
        **dict.fromkeys(allowed[vpn], True),
        **dict.fromkeys(denied[vpn], False),  # the allowed route, another port
    }
    assert reachable(lan, *denied[lan]) == dict.fromkeys(denied[lan], False)  # the other way
    assert reachable(out, *denied[out]) == dict.fromkeys(denied[out], False)  # another interface


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_accept_by_default_leaves_routing_alone(
    backend: str, netns: NsFactory, serve: Callable[[Namespace, str], None], tmp_path: Path
) -> None:
    router, hosts = router_lab(netns, GATEWAY)
    serve(hosts["lan0"], "81")
    targets = both(50, 81)
    assert all(reachable(hosts["wan0"], *targets).values())
    apply(router, write(tmp_path, "ssh.yaml", SSH_ONLY), backend, tmp_path / "state")
    assert reachable(hosts["wan0"], *targets) == dict.fromkeys(targets, True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trusted_interface_glob_reaches_the_host(
    backend: str, netns: NsFactory, serve: Callable[[Namespace, str], None], tmp_path: Path
) -> None:
    router, hosts = router_lab(netns, {"br-lab1": 70, "wan0": 60})
    serve(router, "8080")  # not declared in the manifest
    inside = (("198.18.70.1", 8080), ("fd00:70::1", 8080))
    outside = (("198.18.60.1", 8080), ("fd00:60::1", 8080))
    assert all(reachable(hosts["br-lab1"], *inside).values())
    assert all(reachable(hosts["wan0"], *outside).values())

    manifest = SSH_ONLY.replace("services:", 'policy: {trusted_interfaces: ["br-*"]}\nservices:')
    apply(router, write(tmp_path, "trusted.yaml", manifest), backend, tmp_path / "state")
    assert reachable(hosts["br-lab1"], *inside) == dict.fromkeys(inside, True)
    assert reachable(hosts["wan0"], *outside) == dict.fromkeys(outside, False)


def link_local(ns: Namespace, dev: str) -> str:
    """The link's fe80:: address, once duplicate address detection is done with it."""
    deadline = time.monotonic() + 10
    while True:
        out = ns.run(["ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link"]).stdout
        if "fe80::" in out and "tentative" not in out:
            return out.split("inet6 ")[1].split("/")[0]
        assert time.monotonic() < deadline, out
        time.sleep(0.1)


def arrives(client: Namespace, server: Namespace, source: str, to: str, dev: str) -> str | None:
    """Send udp 547 -> 546 from ``source`` on ``server``; the source ``client`` saw, if any."""
    recv = subprocess.Popen(in_ns(client, "-c", RECEIVE), stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        server.run([sys.executable, "-c", SEND, source, to, dev], timeout=10)
        got = recv.communicate(timeout=10)[0].strip()
    finally:
        recv.kill()
        recv.wait(timeout=10)
    return got or None


@pytest.mark.parametrize("backend", BACKENDS)
def test_dhcpv6_replies_pass_only_when_declared(
    backend: str, netns: NsFactory, tmp_path: Path
) -> None:
    client, server = netns("dhc"), netns("dhs")
    cdev, sdev = connect(client, server, ["fd00:46::1/64"], ["fd00:46::2/64"])
    to, ll = link_local(client, cdev), link_local(server, sdev)
    state = tmp_path / "state"

    def seen() -> tuple[str | None, ...]:
        return tuple(arrives(client, server, src, to, sdev) for src in (ll, "fd00:46::2"))

    assert seen() == (ll, "fd00:46::2")  # no firewall yet: both reach the socket
    apply(client, write(tmp_path, "plain.yaml", SSH_ONLY), backend, state)
    assert seen() == (None, None)
    manifest = SSH_ONLY.replace("services:", "policy: {dhcpv6: true}\nservices:")
    apply(client, write(tmp_path, "dhcpv6.yaml", manifest), backend, state)
    assert seen() == (ll, None)  # a DHCPv6 server answers from its link-local address only
