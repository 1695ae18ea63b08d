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

from harden.files import load_manifest, parse_manifest
from harden.init.host import host_files, listeners, live_ssh_ports, outgoing
from harden.init.proposal import (
    DOCKER_NOTE,
    RESOLV_CONF,
    RESOLVED_UPSTREAMS,
    TIMESYNCD_CONF,
    EgressProposal,
    Listener,
    chrony_servers,
    connection_proposals,
    dns_proposal,
    nameservers,
    ntp_proposal,
    propose,
    propose_egress,
    timesyncd_servers,
)
from harden.lab.netns import Namespace, connect
from harden.policy.containers import bridge_warnings, parse_bridges
from harden.policy.model import build_policy
from harden.sockets import parse_ss

from .conftest import REPO
from .labutil import HARDEN, uncommented_egress

EGRESS_HOST = REPO / "rulesets" / "egress-host.yaml"

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


# Egress: what the host uses now, proposed as egress.allow entries (pure).

STUB_RESOLV = """\
# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
nameserver 127.0.0.53
options edns0 trust-ad
search example.org
"""
UPSTREAM_RESOLV = """\
nameserver 198.51.100.53
nameserver 2001:db8::53
nameserver 198.51.100.53
"""
CHRONY = """\
# Use Debian vendor zone.
pool 2.debian.pool.ntp.org iburst
! pool 3.debian.pool.ntp.org iburst
sourcedir /etc/chrony/sources.d
server 127.127.1.0
server 192.0.2.123 iburst prefer
keyfile /etc/chrony/chrony.keys
"""


def dests(p: EgressProposal | None) -> list[str] | None:
    assert p is not None
    return None if p.destinations is None else [str(n) for n in p.destinations]


def test_resolvers_past_a_local_stub() -> None:
    text = "; comment\nnameserver 203.0.113.1\nnameserver fe80::1%eth0\n#nameserver 192.0.2.9\n"
    assert [str(a) for a in nameservers(text)] == ["203.0.113.1", "fe80::1"]
    plain = dns_proposal({RESOLV_CONF: text})
    assert plain is not None and (plain.name, plain.port, plain.protos) == (
        "dns",
        53,
        ("tcp", "udp"),
    )
    assert dests(plain) == ["203.0.113.1/32", "fe80::1/128"]
    assert plain.comment == "from /etc/resolv.conf"
    # systemd-resolved: the stub is skipped, its upstreams are the real servers.
    resolved = dns_proposal({RESOLV_CONF: STUB_RESOLV, RESOLVED_UPSTREAMS: UPSTREAM_RESOLV})
    assert dests(resolved) == ["198.51.100.53/32", "2001:db8::53/128"]
    assert resolved is not None and resolved.comment.startswith(f"from {RESOLVED_UPSTREAMS}")
    assert "127.0.0.53" in resolved.comment
    # Another local resolver (dnsmasq, unbound): its upstreams are unknown, so any.
    local = dns_proposal({RESOLV_CONF: "nameserver 127.0.0.1\nnameserver ::1\n"})
    assert dests(local) is None
    assert local is not None and "cannot see" in local.comment
    assert dns_proposal({}) is None
    assert dns_proposal({RESOLV_CONF: "search example.org\n"}) is None


def test_chrony_names_mean_any_destination_and_addresses_become_destinations() -> None:
    assert chrony_servers(CHRONY) == ["2.debian.pool.ntp.org", "127.127.1.0", "192.0.2.123"]
    sources = "/etc/chrony/sources.d/site.sources"
    files = {"/etc/chrony/chrony.conf": CHRONY, sources: "server time.example.net iburst\n"}
    ntp = ntp_proposal(files)
    assert ntp is not None and (ntp.name, ntp.port, ntp.protos) == ("ntp", 123, ("udp",))
    assert dests(ntp) is None  # host names: harden resolves none
    assert "2.debian.pool.ntp.org" in ntp.comment and "time.example.net" in ntp.comment
    assert "resolves none" in ntp.comment and ntp.comment.startswith("from /etc/chrony/chrony.conf")
    assert len(ntp.comment) <= 200
    # Only addresses (the loopback one is a local reference clock): they are the destinations.
    only_ips = ntp_proposal({"/etc/chrony.conf": "server 192.0.2.123\nserver 2001:db8::123\n"})
    assert dests(only_ips) == ["192.0.2.123/32", "2001:db8::123/128"]
    # A .sources file elsewhere, or of another suffix, is not chrony's.
    assert ntp_proposal({"/etc/chrony/sources.d/x.conf": "server 192.0.2.1\n"}) is None
    assert ntp_proposal({}) is None


def test_timesyncd_servers() -> None:
    conf = "[Time]\n#NTP=\nNTP=0.pool.example 192.0.2.5\nFallbackNTP=fallback.example\n"
    assert timesyncd_servers([conf]) == ["0.pool.example", "192.0.2.5"]
    assert timesyncd_servers([conf, "[Time]\nNTP=\n"]) == ["fallback.example"]  # reset
    assert timesyncd_servers(["[Time]\nNTP=192.0.2.5\n", "[Time]\nNTP=192.0.2.6\n"]) == [
        "192.0.2.5",
        "192.0.2.6",
    ]
    assert timesyncd_servers(["[Other]\nNTP=x.example\n"]) is None  # built-in servers
    assert timesyncd_servers(["[Time]\nFallbackNTP=\n"]) == []
    ntp = ntp_proposal({TIMESYNCD_CONF: "[Time]\nNTP=192.0.2.5\n"})
    assert dests(ntp) == ["192.0.2.5/32"]
    dropin = "/etc/systemd/timesyncd.conf.d/local.conf"
    ntp = ntp_proposal({TIMESYNCD_CONF: "[Time]\n", dropin: "[Time]\nNTP=ntp.example\n"})
    assert dests(ntp) is None and ntp is not None and "ntp.example" in ntp.comment
    builtin = ntp_proposal({TIMESYNCD_CONF: "[Time]\n#NTP=\n"})
    assert dests(builtin) is None and builtin is not None and "built-in" in builtin.comment
    assert ntp_proposal({TIMESYNCD_CONF: "[Time]\nFallbackNTP=\n"}) is None


SS_TCP = """\
LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=10,fd=3))
ESTAB 0 0 198.18.0.1:22 198.19.0.5:40000 users:(("sshd-session",pid=12,fd=4))
ESTAB 0 0 198.18.0.1:41000 203.0.113.10:443 users:(("apt",pid=30,fd=5))
ESTAB 0 0 198.18.0.1:41001 203.0.113.11:443 users:(("apt",pid=30,fd=6))
ESTAB 0 0 [2001:db8::1]:41002 [2001:db8:1::443]:443 users:(("apt",pid=30,fd=7))
ESTAB 0 0 198.18.0.1:41003 198.51.100.53:53 users:(("resolver",pid=31,fd=8))
ESTAB 0 0 198.18.0.1:41004 192.0.2.25:25
ESTAB 0 0 127.0.0.1:41005 127.0.0.1:5432 users:(("app",pid=32,fd=9))
TIME-WAIT 0 0 198.18.0.1:41006 203.0.113.12:443
"""
SS_UDP = """\
UNCONN 0 0 *:68 *:* users:(("dhclient",pid=40,fd=6))
UNCONN 0 0 0.0.0.0:123 0.0.0.0:* users:(("chronyd",pid=41,fd=7))
ESTAB 0 0 198.18.0.1:50000 192.0.2.123:123 users:(("chronyd",pid=41,fd=8))
ESTAB 0 0 198.18.0.1:123 198.19.0.7:123 users:(("chronyd",pid=41,fd=9))
"""


def test_established_outbound_connections_grouped_by_remote_port() -> None:
    tcp, udp = parse_ss(SS_TCP), parse_ss(SS_UDP)
    found = outgoing(tcp, udp)
    assert [(c.proto, str(c.remote), c.port, c.processes) for c in found] == [
        ("tcp", "203.0.113.10", 443, ("apt",)),
        ("tcp", "203.0.113.11", 443, ("apt",)),
        ("tcp", "2001:db8:1::443", 443, ("apt",)),
        ("tcp", "198.51.100.53", 53, ("resolver",)),
        ("tcp", "192.0.2.25", 25, ()),
        ("tcp", "127.0.0.1", 5432, ("app",)),
        ("udp", "192.0.2.123", 123, ("chronyd",)),  # the one from local port 123 is inbound
    ]
    dns = dns_proposal({RESOLV_CONF: "nameserver 198.51.100.53\n"})
    assert dns is not None
    got = connection_proposals(found, [dns], names)
    # tcp/53 is left out (dns allows it already), and so is loopback's tcp/5432.
    assert [(p.name, p.port, p.protos, dests(p), p.source) for p in got] == [
        ("port-25", 25, ("tcp",), ["192.0.2.25/32"], "ss"),
        ("chronyd", 123, ("udp",), ["192.0.2.123/32"], "ss"),
        ("apt", 443, ("tcp",), ["203.0.113.10/31", "2001:db8:1::443/128"], "ss"),
    ]
    assert got[2].comment == "from 3 established connections (ss), by apt"
    assert got[0].comment == "from 1 established connection (ss)"
    https = connection_proposals(found, [dns], lambda port, proto: {443: "https"}.get(port))
    assert https[2].name == "https"  # named from /etc/services first
    # An ntp entry for any destination covers the chrony connection.
    ntp = EgressProposal("ntp", 123, ("udp",), None, "from chrony", "chrony")
    assert 123 not in {p.port for p in connection_proposals(found, [dns, ntp], names)}


def test_egress_is_proposed_commented_out_and_validates_once_uncommented() -> None:
    files = {
        RESOLV_CONF: STUB_RESOLV,
        RESOLVED_UPSTREAMS: UPSTREAM_RESOLV,
        "/etc/chrony/chrony.conf": CHRONY,
    }
    tcp, udp = parse_ss(SS_TCP), parse_ss(SS_UDP)
    egress = propose_egress(files, outgoing(tcp, udp), names)
    assert [e.name for e in egress] == ["dns", "ntp", "port-25", "apt"]
    proposal = propose(listeners(tcp, udp), [22], names, egress=egress)
    manifest = parse_manifest(proposal.manifest)
    assert manifest.egress.policy == "accept" and manifest.egress.allow == ()  # not enforced
    data = proposal.to_json()
    assert [e["name"] for e in data["egress_proposals"]] == ["dns", "ntp", "port-25", "apt"]
    assert data["egress_proposals"][0]["destinations"] == ["198.51.100.53/32", "2001:db8::53/128"]
    assert data["egress_proposals"][1]["destinations"] is None
    assert data["egress_dhcp"] is True  # dhclient on udp/68
    assert "Set policy: drop to enforce" in proposal.manifest
    assert "#   policy: drop\n#   dhcp: true" in proposal.manifest

    # Uncommented, the block is the manifest's egress section, and valid.
    lines = proposal.manifest.splitlines(True)
    start = end = lines.index("# egress:\n")
    while end == start or (end < len(lines) and lines[end].startswith("#  ")):
        end += 1
    enforced = parse_manifest(
        "".join(lines[:start] + [x[2:] for x in lines[start:end]] + lines[end:])
    )
    assert enforced.egress.policy == "drop" and enforced.egress.dhcp
    assert [a.name for a in enforced.egress.allow] == ["dns", "ntp", "port-25", "apt"]
    assert enforced.services == manifest.services
    policy = build_policy(enforced)
    assert policy.sends(ip_address("198.51.100.53"), "udp", 53)
    assert not policy.sends(ip_address("198.51.100.54"), "udp", 53)
    assert policy.sends(ip_address("198.51.100.99"), "udp", 123)  # ntp: names, any destination
    assert policy.sends(ip_address("203.0.113.11"), "tcp", 443)
    assert not policy.sends(ip_address("203.0.113.12"), "tcp", 443)


def test_no_egress_seen_means_no_block() -> None:
    proposal = propose([], [], names, egress=propose_egress({}, []))
    assert "egress" not in proposal.manifest and proposal.to_json()["egress_proposals"] == []


def test_host_files_reads_under_a_root(tmp_path: Path) -> None:
    (tmp_path / "etc/chrony/sources.d").mkdir(parents=True)
    (tmp_path / "etc/resolv.conf").write_text("nameserver 192.0.2.53\n")
    (tmp_path / "etc/chrony/chrony.conf").write_text(CHRONY)
    (tmp_path / "etc/chrony/sources.d/a.sources").write_text("server 192.0.2.1\n")
    (tmp_path / "etc/chrony/sources.d/README").write_text("not a source\n")
    found = host_files(tmp_path)
    assert sorted(found) == [
        "/etc/chrony/chrony.conf",
        "/etc/chrony/sources.d/a.sources",
        "/etc/resolv.conf",
    ]
    assert [p.name for p in propose_egress(found, [])] == ["dns", "ntp"]


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


def test_container_bridges_get_an_egress_allow_that_validates_and_silences_the_warning() -> None:
    """docker0 with an address: the egress block allows every port to its network that
    the other items leave (ntp's udp/123 to any destination would overlap); a bridge
    with no address is named. Enforced, the block leaves no bridge warning; an egress
    that forgets docker0 gets one."""
    links = json.loads(
        '[{"ifname": "docker0", "addr_info": [{"family": "inet", "local": "172.17.0.1", '
        '"prefixlen": 16, "scope": "global"}, {"family": "inet6", "local": "fe80::1", '
        '"prefixlen": 64, "scope": "link"}]}, {"ifname": "virbr0", "addr_info": []}, '
        '{"ifname": "br0", "addr_info": []}, {"ifname": "br-0123456789ab", "addr_info": []}]'
    )
    bridges = parse_bridges(links)
    assert [(b.name, b.owner, [str(n) for n in b.networks]) for b in bridges] == [
        ("docker0", "Docker", ["172.17.0.0/16"]),
        ("virbr0", "libvirt", []),
        ("br-0123456789ab", "Docker", []),
    ]  # br0 is nobody's: a host's own bridge
    ntp = EgressProposal("ntp", 123, ("udp",), None, "from chrony", "chrony")
    proposal = propose([], [22], names, egress=[ntp], bridges=bridges[:1])
    assert "virbr0" not in proposal.manifest
    enforced = parse_manifest(uncommented_egress(proposal.manifest))
    allows = {a.name: (a.proto, [str(p) for p in a.port_list]) for a in enforced.egress.allow}
    assert allows == {
        "ntp": (("udp",), ["123"]),
        "docker0-tcp": (("tcp",), ["1-65535"]),
        "docker0-udp": (("udp",), ["1-122", "124-65535"]),
    }
    assert bridge_warnings(build_policy(enforced), bridges[:1]) == []
    [warning] = bridge_warnings(build_policy(load_manifest(EGRESS_HOST)), bridges[:1])
    assert "docker0 (Docker's bridge) is not trusted" in warning and "172.17.0.0/16" in warning
    trusting = EGRESS_HOST.read_text().replace(
        "  ipv6: true\n", "  ipv6: true\n  trusted_interfaces: [docker*]\n"
    )
    warnings = bridge_warnings(build_policy(parse_manifest(trusting)), bridges)
    assert [w.split()[4] for w in warnings] == ["virbr0", "br-0123456789ab"]  # docker* only
