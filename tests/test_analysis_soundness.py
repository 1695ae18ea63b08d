"""The model against the kernel: hypothesis-generated rulesets, real packets, every answer compared.

Each example is a random ruleset (tables of both families and ``inet``, base chains at
several priorities with either policy, regular chains reached by jump and goto, returns,
verdict maps, sets, ranges, negations, source-port, address and interface matches,
rejects). It is loaded into a namespace, and real SYNs go to it from a prober holding a
pool of source addresses of both families, from source ports the rules name and others.
The kernel's answer (a RST: accepted, nothing listens; an ICMP error: rejected; silence:
dropped) is compared with the model twice: ``decide()`` for the packet, and the matrix
row that holds it (what ``harden analyze`` prints). Any difference fails the test, with
the ruleset and the packet. docs/design.md, "Why the model is sound".
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harden.analysis.engine import Packet, decide
from harden.analysis.matrix import OTHER, Row, matrix
from harden.analysis.model import parse
from harden.lab.netns import Namespace, connect

pytestmark = pytest.mark.netns
NsFactory = Callable[[str], Namespace]

# More for a longer hunt: HARDEN_SOUNDNESS_EXAMPLES=500 make test (the first 25 are the same).
EXAMPLES = int(os.environ.get("HARDEN_SOUNDNESS_EXAMPLES", "25"))
PROBES = 440  # per example: 25 x 440 = 11,000 packets a run, 10,000 of them decided
TARGET = {4: "10.77.0.1", 6: "fd77::1"}
SOURCES = {
    4: ["10.77.0.2", "10.77.1.5", "10.77.1.200", "10.77.2.9", "10.77.200.1"],
    6: ["fd77::2", "fd77:0:1::5", "fd77:0:2::9", "fd77:ff::1"],
}
NETS = {
    4: ["10.77.1.0/24", "10.77.0.0/23", "10.77.2.9", "10.77.128.0/17", "10.77.1.128/25"],
    6: ["fd77:0:1::/48", "fd77::/46", "fd77:ff::1", "fd77:0:2::/64"],
}
PORTS = [22, 53, 67, 80, 443, 1000, 1001, 8080, 30000, 65535]
# Told apart from a RST (accepted, nothing listens): admin-prohibited, in each family's words.
REJECT = {
    "inet": "reject with icmpx admin-prohibited",
    "ip": "reject with icmp admin-prohibited",
    "ip6": "reject with icmpv6 admin-prohibited",
}


# -- rulesets -------------------------------------------------------------------------------


def ports(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["one", "range", "set", "not"]))
    a, b = sorted(draw(st.lists(st.sampled_from(PORTS), min_size=2, max_size=2)))
    if kind == "one":
        return str(a)
    if kind == "range":
        return f"{a}-{b}" if a < b else str(a)
    if kind == "not":
        return f"!= {a}"
    picks = sorted(set(draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=4))))
    return "{ " + ", ".join(map(str, picks)) + " }"


def match(draw: st.DrawFn, fam: int, iface: str) -> str:
    """One match; ``fam``: the address family of the rule's address matches (nft refuses
    a rule that mixes them, or one with two transport protocols)."""
    kind = draw(st.sampled_from(["dport", "dport", "sport", "saddr", "iif", "l4", "ct", "th"]))
    if kind == "dport":
        return f"tcp dport {ports(draw)}"
    if kind == "sport":
        return f"tcp sport {ports(draw)}"
    if kind == "th":
        return f"meta l4proto tcp th dport {ports(draw)}"
    if kind == "iif":
        name = draw(st.sampled_from([iface, "nothere0", "lo"]))
        return f'iifname {draw(st.sampled_from(["", "!= "]))}"{name}"'
    if kind == "l4":
        return "meta l4proto tcp"
    if kind == "ct":
        return (
            f"ct state {draw(st.sampled_from(['new', 'established,related', 'new,established']))}"
        )
    key = "ip saddr" if fam == 4 else "ip6 saddr"
    nets = draw(st.lists(st.sampled_from(NETS[fam]), min_size=1, max_size=3, unique=True))
    neg = draw(st.sampled_from(["", "!= "])) if len(nets) == 1 else ""
    return f"{key} {neg}{nets[0]}" if len(nets) == 1 else f"{key} {{ {', '.join(nets)} }}"


def rule(draw: st.DrawFn, family: str, iface: str, chain: int, chains: int) -> str:
    """A rule of regular chain ``chain`` (-1: the base chain); it jumps only to later ones."""
    fam = draw(st.sampled_from({"ip": [4], "ip6": [6], "inet": [4, 6]}[family]))
    matches = [match(draw, fam, iface) for _ in range(draw(st.integers(0, 3)))]
    if draw(st.integers(0, 9)) == 0:
        matches = ["meta l4proto udp"]  # a rule no TCP probe matches
    verdicts = ["accept", "drop", REJECT[family], "counter"]
    if chain + 1 < chains:
        later = st.integers(chain + 1, chains - 1)
        verdicts += [f"jump r{draw(later)}", f"jump r{draw(later)}", f"goto r{draw(later)}"]
    if chain >= 0:
        verdicts += ["return"]
    verdict = draw(st.sampled_from(verdicts))
    if draw(st.integers(0, 9)) == 0 and "meta l4proto udp" not in matches:
        a, b = draw(st.lists(st.sampled_from(PORTS), min_size=2, max_size=2, unique=True))
        verdict = f"tcp dport vmap {{ {a} : accept, {b} : drop }}"
    return " ".join([*matches, verdict])


@st.composite
def rulesets(draw: st.DrawFn, iface: str) -> str:
    """An nft script: one to three tables, each with a base input chain and regular chains."""
    out = ["flush ruleset"]
    for t in range(draw(st.integers(1, 3))):
        family = draw(st.sampled_from(["inet", "inet", "ip", "ip6"]))
        chains = draw(st.integers(0, 3))
        # Equal priorities too: the kernel's order among them is not listed (unknown cells).
        prio = draw(st.sampled_from([-10, -5, 0, 0, 5, 10]))
        policy = draw(st.sampled_from(["accept", "accept", "drop"]))
        out.append(f"table {family} t{t} {{")
        for c in range(chains - 1, -1, -1):  # defined before the chains that jump to them
            body = [rule(draw, family, iface, c, chains) for _ in range(draw(st.integers(1, 4)))]
            out.append(f"  chain r{c} {{\n" + "".join(f"    {r}\n" for r in body) + "  }")
        rules = [rule(draw, family, iface, -1, chains) for _ in range(draw(st.integers(1, 6)))]
        out.append(
            f"  chain in {{\n    type filter hook input priority {prio}; policy {policy};\n"
            + "".join(f"    {r}\n" for r in rules)
            + "  }"
        )
        out.append("}")
    return "\n".join(out) + "\n"


# -- the lab --------------------------------------------------------------------------------

# In the prober's namespace: one non-blocking connect per probe, from its source address
# and port. A RST (ECONNREFUSED: accepted, nothing listens) or an ICMP error on the error
# queue (IP_RECVERR: rejected; an ICMPv6 error does not abort a SYN_SENT socket, so
# SO_ERROR alone would miss it), or nothing before the wait ends (dropped).
PROBER = r"""
import errno, json, select, socket, sys, time
IP_RECVERR, IPV6_RECVERR, MSG_ERRQUEUE = 11, 25, 0x2000
probes = json.load(sys.stdin)
wait = float(sys.argv[1])
out = ["drop"] * len(probes)
socks = {}
poller = select.poll()
for i, (family, src, sport, dst, dport) in enumerate(probes):
    s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == 4:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    s.setblocking(False)
    s.bind((src, sport))
    s.connect_ex((dst, dport))
    socks[s.fileno()] = (i, s)
    poller.register(s, select.POLLOUT | select.POLLERR)
end = time.monotonic() + wait
while socks and time.monotonic() < end:
    for fd, _ in poller.poll(max(1, int((end - time.monotonic()) * 1000))):
        i, s = socks.pop(fd)
        poller.unregister(fd)
        try:
            s.recvmsg(512, 512, MSG_ERRQUEUE)
            out[i] = "reject"
        except OSError:
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            out[i] = "accept" if e in (0, errno.ECONNREFUSED) else f"errno {e}"
        s.close()
print(json.dumps(out))
"""


@dataclass
class Lab:
    target: Namespace
    prober: Namespace
    iface: str  # the target's end


@pytest.fixture(scope="module")
def lab() -> Any:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    with Namespace("sd") as target, Namespace("sp") as prober:
        dev_t, dev_p = connect(
            target, prober, ["10.77.0.1/16", "fd77::1/16"], ["10.77.0.2/16", "fd77::2/16"]
        )
        for src in SOURCES[4][1:]:
            prober.run(["ip", "addr", "add", f"{src}/32", "dev", dev_p])
        for src in SOURCES[6][1:]:
            prober.run(["ip", "addr", "add", f"{src}/128", "dev", dev_p, "nodad"])
        # Permanent neighbours both ways: a ruleset that drops ICMPv6 would otherwise drop
        # neighbour discovery, and the probes would never leave the prober.
        mac = {ns: _mac(ns, dev) for ns, dev in ((target, dev_t), (prober, dev_p))}
        for family in (4, 6):
            for src in SOURCES[family]:
                _neighbour(target, src, mac[prober], dev_t)
            _neighbour(prober, TARGET[family], mac[target], dev_p)
        for key in ("net.ipv4.icmp_ratelimit", "net.ipv6.icmp.ratelimit"):
            target.run(["sysctl", "-qw", f"{key}=0"])
        target.run(["sysctl", "-qw", "net.ipv4.icmp_msgs_per_sec=100000"], check=False)
        target.run(["sysctl", "-qw", "net.ipv4.icmp_msgs_burst=100000"], check=False)
        yield Lab(target, prober, dev_t)


def _mac(ns: Namespace, dev: str) -> str:
    return str(json.loads(ns.run(["ip", "-j", "link", "show", dev]).stdout)[0]["address"])


def _neighbour(ns: Namespace, address: str, mac: str, dev: str) -> None:
    ns.run(["ip", "neigh", "replace", address, "lladdr", mac, "dev", dev, "nud", "permanent"])


def send(lab: Lab, probes: list[tuple[int, str, int, str, int]], wait: float = 0.5) -> list[str]:
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.prober.name, sys.executable, "-c", PROBER, str(wait)],
        input=json.dumps(probes), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return list(json.loads(proc.stdout))


def cell(rows: list[Row], packet: Packet) -> str:
    """The verdict of the matrix row that holds ``packet``."""
    rows = [r for r in rows if (r.family, r.proto) == (packet.family, packet.proto)]
    named = {i for r in rows for i in r.ifaces if i != OTHER}
    iface = packet.iface if packet.iface in named else OTHER
    [row] = [
        r
        for r in rows
        if any(packet.dport in p for p in r.dports)
        and any(packet.sport in p for p in r.sports)
        and any(packet.peer in n for n in r.peers)
        and iface in r.ifaces
    ]
    return row.verdict


def probes_for(seed: int) -> list[tuple[int, str, int, str, int]]:
    rng = random.Random(seed)
    near = sorted({p + d for p in PORTS for d in (-1, 0, 1) if 1 <= p + d <= 65535})
    out: dict[tuple[int, str, int, str, int], None] = {}  # one of each: a 4-tuple is one socket
    while len(out) < PROBES:
        family = rng.choice((4, 6))
        dport = rng.choice(near) if rng.random() < 0.85 else rng.randint(1, 65535)
        sport = rng.choice(near) if rng.random() < 0.5 else rng.randint(1025, 65535)
        out[(family, rng.choice(SOURCES[family]), sport, TARGET[family], dport)] = None
    return list(out)


@pytest.fixture(scope="module")
def compared() -> Any:
    """The packets compared, per ruleset: at least 10,000 a run, checked as the module ends
    (in the worker that ran the property, wherever xdist put it)."""
    counts: list[int] = []
    yield counts
    if EXAMPLES >= 25 and counts:
        assert sum(counts) >= 10_000, f"{sum(counts)} packets compared over {len(counts)}"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    # No shrinking: each step reloads a kernel ruleset; the failure prints the whole script.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_the_model_agrees_with_the_kernel_on_every_probe(
    lab: Lab, compared: list[int], data: st.DataObject, seed: int
) -> None:
    script = data.draw(rulesets(lab.iface), label="ruleset")
    load = lab.target.run(["nft", "-f", "-"], input=script, check=False)
    assert load.returncode == 0, (load.stderr, script)
    document = json.loads(lab.target.run(["nft", "-j", "list", "ruleset"]).stdout)
    ruleset = parse(document)
    rows = matrix(ruleset, "input")
    probes = probes_for(seed)
    observed = send(lab, probes)
    disagree = []
    checked = 0
    for probe, seen in zip(probes, observed, strict=True):
        family, src, sport, _, dport = probe
        packet = Packet(
            "input", 4 if family == 4 else 6, "tcp", dport, sport, ip_address(src), lab.iface
        )
        model, row = decide(ruleset, packet).verdict, cell(rows, packet)
        assert model == row, (packet, model, row, script)
        if model == "unknown":  # chains of one priority ending it differently: not a guess
            assert "share priority" in " ".join(decide(ruleset, packet).unknown), script
            continue
        checked += 1
        if model != seen:
            disagree.append((probe, model, seen))
    # A lost reply is retried once; a model that disagrees with two answers is wrong.
    if disagree:
        again = send(lab, [p for p, _, _ in disagree], wait=1.5)
        disagree = [(p, m, s) for (p, m, _), s in zip(disagree, again, strict=True) if m != s]
    assert not disagree, (disagree[:5], script)
    compared.append(checked)
