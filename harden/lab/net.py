"""The lab's network: a server, an outside host and (if needed) a host inside the sources.

Addresses are picked from the benchmarking range 198.18.0.0/15 and from fd00::/8,
so that the outside host is a stranger to every source-restricted service and the
allowed host sits inside as many declared source networks as possible. Both reach
the server at the same target address, so one expectation plan serves both views.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import TracebackType
from typing import Self

from harden.errors import EnvironmentProblem
from harden.lab.netns import Namespace, connect, require_root
from harden.lab.responder import MAX_SOCKETS
from harden.manifest.ports import compress
from harden.policy.model import Allow, Policy
from harden.types import Address

Net = IPv4Network | IPv6Network

# Outside links to choose from: the first one no declared source network overlaps wins.
OUTSIDE_V4 = [IPv4Network(f"198.19.{n}.0/24") for n in range(254, 200, -1)]
OUTSIDE_V6 = [IPv6Network(f"fdff:{n:x}::/64") for n in range(0x18, 0x60)]


@dataclass
class Host:
    """One lab host: its namespace and its addresses."""

    ns: Namespace
    v4: IPv4Address
    v6: IPv6Address | None
    extra: tuple[IPv4Address | IPv6Address, ...] = ()  # more addresses to probe from


class _Namespaces:
    """Namespaces made by ``_build`` on enter, all deleted on exit, pass or fail."""

    prefix: str
    _namespaces: list[Namespace]

    def _build(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Create the namespaces and wire them up."""
        require_root("the lab")
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Delete every namespace (and whatever runs in them)."""
        self.close()

    def _ns(self, role: str) -> Namespace:
        ns = Namespace(f"{self.prefix}-{role}").__enter__()
        self._namespaces.append(ns)
        return ns

    def close(self) -> None:
        """Delete the namespaces; safe to call twice."""
        for ns in reversed(self._namespaces):
            ns.close()
        self._namespaces.clear()


def sample(ports: list[int], room: int) -> list[int]:
    """At most ``room`` of the sorted ``ports``, evenly spread, the first and last in."""
    if len(ports) <= room:
        return ports
    if room < 2:
        return ports[:room]
    step = (len(ports) - 1) / (room - 1)
    return sorted({ports[round(i * step)] for i in range(room)})


@dataclass
class LabNet(_Namespaces):
    """Namespaces and links for one lab run; removed on exit, pass or fail."""

    policy: Policy
    prefix: str = "hl"
    # What the server runs before a change (lab OLD --apply NEW): its ports get stand-in
    # services and its source networks hosts, so what the change takes away is probed
    # from where it used to answer.
    served: Policy | None = None
    server: Host = field(init=False)
    outside: Host = field(init=False)
    allowed: Host | None = field(init=False, default=None)
    # One more host per set of source networks the first allowed host is not inside
    # (each restricted service's sources), at most MORE_ALLOWED.
    more_allowed: list[Host] = field(init=False, default_factory=list)
    # Egress sinks inside the declared destinations: addresses of the outside host.
    destinations: list[Address] = field(init=False, default_factory=list)
    _outside_dev: str = field(init=False, default="")
    _namespaces: list[Namespace] = field(init=False, default_factory=list)
    _responder: subprocess.Popen[str] | None = field(init=False, default=None)

    @property
    def allows(self) -> list[Allow]:
        """The allows the lab stands in for: the policy's, then those of ``served``."""
        return [*self.policy.allows, *(self.served.allows if self.served is not None else ())]

    def _build(self) -> None:
        sources = [n for a in self.allows for fam in (4, 6) for n in a.sources[fam] or ()]
        net4 = _first_free(OUTSIDE_V4, sources)
        net6 = _first_free(OUTSIDE_V6, sources)
        server_ns, outside_ns = self._ns("srv"), self._ns("out")
        s4, o4 = net4.network_address + 1, net4.network_address + 2
        s6, o6 = net6.network_address + 1, net6.network_address + 2
        _, self._outside_dev = connect(
            server_ns,
            outside_ns,
            [f"{s4}/{net4.prefixlen}", f"{s6}/{net6.prefixlen}"],
            # A second address per family: a second ICMP budget at the server, so the
            # prober's UDP retries need not wait for the first one to refill.
            [
                f"{o4}/{net4.prefixlen}",
                f"{o6}/{net6.prefixlen}",
                f"{o4 + 1}/{net4.prefixlen}",
                f"{o6 + 1}/{net6.prefixlen}",
            ],
        )
        self.server = Host(server_ns, IPv4Address(s4), IPv6Address(s6))
        self.outside = Host(
            outside_ns, IPv4Address(o4), IPv6Address(o6), (IPv4Address(o4 + 1), IPv6Address(o6 + 1))
        )
        a4 = _best_address(s for s in sources if isinstance(s, IPv4Network))
        a6 = _best_address(s for s in sources if isinstance(s, IPv6Network))
        if a4 is not None or a6 is not None:
            spare4 = IPv4Address(
                _first_free([n for n in OUTSIDE_V4 if n != net4], sources).network_address + 2
            )
            self.allowed = self._routed_host(
                "alw",
                a4 if isinstance(a4, IPv4Address) else spare4,
                a6 if isinstance(a6, IPv6Address) else None,
            )
            self._more_allowed(spare4)

    def add_destinations(self, most: int = 4) -> list[Net]:
        """Give the outside host an address inside each declared egress destination.

        The egress proof then sends to them too: an allow to 203.0.113.0/24 is proven by
        what arrives at 203.0.113.1, not only by the outside host's own addresses, which
        no such allow covers. Returns the destination networks left without one.
        """
        nets = [n for o in self.policy.outbound for f in (4, 6) for n in o.destinations[f] or ()]
        taken = {a for h in (self.server, self.outside, self.allowed, *self.more_allowed)
                 if h is not None for a in (h.v4, h.v6)}  # fmt: skip
        left = []
        for net in dict.fromkeys(nets):
            if net.version == 6 and (self.server.v6 is None or not self.policy.ipv6):
                continue
            address = net.network_address + (1 if net.num_addresses > 2 else 0)
            if address in self.destinations or address in taken:
                continue
            if len(self.destinations) >= most:
                left.append(net)
                continue
            self._route_to_outside(address)
            self.destinations.append(address)
        return left

    def _route_to_outside(self, address: Address) -> None:
        """``address`` on the outside host's link end, routed there from the server."""
        six = address.version == 6
        bits, via = ("128", self.outside.v6) if six else ("32", self.outside.v4)
        add = ["ip", "addr", "add", f"{address}/{bits}", "dev", self._outside_dev]
        self.outside.ns.run([*add, "nodad"] if six else add)
        family = ["-6"] if six else []
        self.server.ns.run(["ip", *family, "route", "add", f"{address}/{bits}", "via", str(via)])

    def _more_allowed(self, spare4: IPv4Address) -> None:
        """A host inside each further set of source networks that no host stands in yet."""
        hosts = [h for h in (self.allowed,) if h is not None]
        for sources in source_sets(self.allows):
            if len(self.more_allowed) >= MORE_ALLOWED:
                return
            if any(_inside(h, sources) for h in hosts):
                continue
            a4 = _best_address(n for n in sources if isinstance(n, IPv4Network))
            a6 = _best_address(n for n in sources if isinstance(n, IPv6Network))
            # An address another host has (a set sharing one family's networks with an
            # earlier set) is left out: that family is stood in for already.
            taken = {a for h in hosts for a in (h.v4, h.v6)}
            a4, a6 = (None if a in taken else a for a in (a4, a6))
            if a4 is None and a6 is None:
                continue
            v4 = a4 if isinstance(a4, IPv4Address) else spare4 + 1 + len(self.more_allowed)
            host = self._routed_host(
                f"al{len(self.more_allowed) + 2}", v4, a6 if isinstance(a6, IPv6Address) else None
            )
            self.more_allowed.append(host)
            hosts.append(host)

    def _routed_host(self, role: str, v4: IPv4Address, v6: IPv6Address | None) -> Host:
        """A host whose address lies in a declared source network, routed to the server.

        The source network may be a single address, so the link carries no shared
        subnet: host routes on both ends (and fixed link-local next hops for IPv6).
        """
        ns = self._ns(role)
        dev_s, dev_h = connect(self.server.ns, ns, ["fe80::1/64"], ["fe80::2/64"])
        ns.run(["ip", "addr", "add", f"{v4}/32", "dev", dev_h])
        ns.run(["ip", "route", "add", f"{self.server.v4}/32", "dev", dev_h, "src", str(v4)])
        self.server.ns.run(["ip", "route", "add", f"{v4}/32", "dev", dev_s])
        if v6 is not None and self.server.v6 is not None:
            ns.run(["ip", "addr", "add", f"{v6}/128", "dev", dev_h, "nodad"])
            ns.run(
                [
                    "ip",
                    "-6",
                    "route",
                    "add",
                    f"{self.server.v6}/128",
                    "via",
                    "fe80::1",
                    "dev",
                    dev_h,
                    "src",
                    str(v6),
                ]
            )
            self.server.ns.run(
                ["ip", "-6", "route", "add", f"{v6}/128", "via", "fe80::2", "dev", dev_s]
            )
        return Host(ns, v4, v6)

    def start_services(self, lifetime: float = 600.0) -> list[str]:
        """Listen on the declared ports in the server namespace (TCP accept, UDP echo).

        Past MAX_SOCKETS ports (a Kubernetes node's 2,768 NodePorts, twice) a sample
        listens, spread evenly over each protocol's ports, ends included: the others are
        still probed, and answer as allowed but closed (the firewall let them through).
        ``served``'s ports listen too. Returns what that leaves untested, to be said in
        the report.
        """
        declared = {
            proto: sorted({p for a in self.allows if a.proto == proto for r in a.ports for p in r})
            for proto in ("tcp", "udp")
        }
        total = sum(map(len, declared.values()))
        listen = {
            proto: sample(ports, max(2, MAX_SOCKETS * len(ports) // total) if total else 0)
            for proto, ports in declared.items()
        }
        notes = [
            f"{proto}: a stand-in service listens on {len(listen[proto])} of the "
            f"{len(ports)} declared ports (spread evenly); the others answer as allowed "
            "but closed, which proves the firewall lets them through, not a service"
            for proto, ports in declared.items()
            if len(listen[proto]) < len(ports)
        ]
        tcp, udp = (",".join(str(r) for r in compress(listen[p])) for p in ("tcp", "udp"))
        self._responder = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.server.ns.name,
                sys.executable,
                "-I",  # root: never import from the working directory or PYTHONPATH
                "-m",
                "harden.lab.responder",
                "--tcp",
                tcp,
                "--udp",
                udp,
                "--lifetime",
                str(lifetime),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        assert self._responder.stdout is not None
        if self._responder.stdout.readline().strip() != "ready":
            err = self._responder.stderr.read() if self._responder.stderr else ""
            raise EnvironmentProblem(f"lab responder did not start: {err.strip()}")
        return notes

    def close(self) -> None:
        """Stop the responder and delete the namespaces; safe to call twice."""
        if self._responder is not None:
            self._responder.kill()
            self._responder.wait(timeout=10)
            self._responder = None
        super().close()

    def wait_reachable(self, timeout: float = 5.0) -> None:
        """Wait until the outside and allowed hosts can ping the server (links are up)."""
        deadline = time.monotonic() + timeout
        hosts = [h for h in (self.outside, self.allowed, *self.more_allowed) if h is not None]
        targets = [(h, str(self.server.v4)) for h in hosts]
        targets += [(h, str(self.server.v6)) for h in hosts if h.v6 is not None]
        for host, target in targets:
            while host.ns.run(["ping", "-c1", "-W1", target], check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(f"lab: {target} unreachable from {host.ns.name}")
                time.sleep(0.1)


MORE_ALLOWED = 3  # further allowed-source hosts at most: each is another verify run


def source_sets(allows: Iterable[Allow]) -> list[tuple[Net, ...]]:
    """Each restricted allow's source networks (both families), once each, in order."""
    found: list[tuple[Net, ...]] = []
    for allow in allows:
        nets = tuple(n for family in (4, 6) for n in allow.sources[family] or ())
        if nets and nets not in found:
            found.append(nets)
    return found


def _inside(host: Host, sources: tuple[Net, ...]) -> bool:
    """Whether ``host`` has an address in every family ``sources`` names, inside it."""
    families = {n.version for n in sources}
    mine = [a for a in (host.v4, host.v6) if a is not None and a.version in families]
    return len(mine) == len(families) and all(
        any(a in n for n in sources if n.version == a.version) for a in mine
    )


def _first_free(candidates: list[IPv4Network] | list[IPv6Network], taken: list[Net]) -> Net:
    for net in candidates:
        if not any(net.version == t.version and net.overlaps(t) for t in taken):
            return net
    raise EnvironmentProblem("lab: the manifest's sources cover every lab address range")


def _best_address(networks: Iterable[Net]) -> Address | None:
    """The candidate address that lies in the most of the given networks."""
    nets = list(networks)
    candidates: list[Address] = []
    for net in nets:
        candidates.append(
            net.network_address if net.num_addresses == 1 else net.network_address + 1
        )
    if not candidates:
        return None
    return max(candidates, key=lambda a: (sum(a in n for n in nets), -int(a)))


@dataclass
class FleetNet(_Namespaces):
    """A prober and ``count`` servers on one bridge (in the prober's namespace)."""

    count: int
    prefix: str = "hf"
    prober: Host = field(init=False)
    servers: list[Host] = field(init=False, default_factory=list)
    _namespaces: list[Namespace] = field(init=False, default_factory=list)

    def _build(self) -> None:
        prober = self._ns("prb")
        prober.run(["ip", "link", "add", "br0", "type", "bridge"])
        for addr in ("198.19.0.1/16", "198.19.0.2/16"):
            prober.run(["ip", "addr", "add", addr, "dev", "br0"])
        for addr in ("fdff:19::1/64", "fdff:19::2/64"):
            prober.run(["ip", "addr", "add", addr, "dev", "br0", "nodad"])
        prober.run(["ip", "link", "set", "br0", "up"])
        self.prober = Host(
            prober,
            IPv4Address("198.19.0.1"),
            IPv6Address("fdff:19::1"),
            (IPv4Address("198.19.0.2"), IPv6Address("fdff:19::2")),
        )
        for i in range(self.count):
            ns = self._ns(f"s{i}")
            v4 = IPv4Address("198.19.1.0") + i
            v6 = IPv6Address("fdff:19::100") + i
            port, _ = connect(prober, ns, [], [f"{v4}/16", f"{v6}/64"])
            prober.run(["ip", "link", "set", port, "master", "br0"])
            self.servers.append(Host(ns, v4, v6))
