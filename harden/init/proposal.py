"""A manifest proposed from the sockets a host listens on (``harden init``), pure.

The shell (harden/init/host.py) reads the kernel and hands over :class:`Listener` values,
the SSH ports it found and a way to name a port from /etc/services; :func:`propose`
turns them into manifest text that harden's own parser accepts, and says what it
left out and why. The same input always gives the same text (everything is sorted).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    collapse_addresses,
    ip_address,
)
from typing import Any

from harden.manifest.parse import manifest_from_text
from harden.manifest.ports import PortRange
from harden.policy.containers import Bridge
from harden.types import PROTOS, Address, Network, Proto

SCHEMA = "harden.init/1"
HEADER = """\
# Proposed by harden init from the sockets this host listens on.
# Review it before applying: every port not listed here will be closed, and every
# service below is open to any source until you add 'sources'.
"""
DOCKER_NOTE = "published by docker-proxy: the container's port is exposed through DNAT too"
SSH_NOTE = "the live SSH port: always kept"
MAX_COMMENT = 200  # Service.comment's limit
MAX_NAME = 64  # Service.name's limit

_LINK_LOCAL6 = IPv6Network("fe80::/10")
_PLAIN_NAME = re.compile(r"[a-z][a-z0-9-]*")
# Words YAML 1.1 reads as booleans or null: quoted when a name is one of them.
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}

PortName = Callable[[int, Proto], str | None]


@dataclass(frozen=True)
class Listener:
    """One listening TCP or bound UDP socket: address (None: ``*``, every address), owners."""

    proto: Proto
    address: Address | None
    port: int
    processes: tuple[str, ...] = ()  # names of the owning processes (ss -p), may be empty

    @property
    def shown_address(self) -> str:
        """The address as ss prints it, ``*`` for the dual-stack wildcard."""
        return "*" if self.address is None else str(self.address)

    @property
    def process(self) -> str:
        """The owners' names, sorted and joined with ``,``; empty if unknown."""
        return ",".join(sorted(set(self.processes)))


@dataclass(frozen=True)
class LeftOut:
    """A listener the proposal does not open, and why."""

    listener: Listener
    why: str

    def to_json(self) -> dict[str, Any]:
        """One entry of ``left_out``."""
        return {
            "proto": self.listener.proto,
            "port": self.listener.port,
            "address": self.listener.shown_address,
            "process": self.listener.process or None,
            "why": self.why,
        }

    def to_text(self) -> str:
        """One YAML comment line (without the ``#``)."""
        owner = f" ({self.listener.process})" if self.listener.process else ""
        return (
            f"{self.listener.proto}/{self.listener.port} on {self.listener.shown_address}"
            f"{owner}: {self.why}"
        )


@dataclass(frozen=True)
class Proposed:
    """One proposed service: a port of one process, with the protocols it serves there."""

    name: str
    port: int
    protos: tuple[Proto, ...]
    process: str
    addresses: tuple[str, ...]
    comment: str
    ssh: bool = False
    docker: bool = False

    def to_json(self) -> dict[str, Any]:
        """One entry of ``services``."""
        return {
            "name": self.name,
            "port": self.port,
            "proto": list(self.protos),
            "process": self.process or None,
            "addresses": list(self.addresses),
            "comment": self.comment,
            "ssh": self.ssh,
            "docker_published": self.docker,
        }

    def to_yaml(self) -> str:
        """One flow-style list item of ``services``."""
        proto = self.protos[0] if len(self.protos) == 1 else f"[{', '.join(self.protos)}]"
        return (
            f"  - {{name: {_scalar(self.name)}, port: {self.port}, proto: {proto}, "
            f"comment: {json.dumps(self.comment)}}}\n"
        )


@dataclass(frozen=True)
class Outgoing:
    """One established outbound connection (ss): its protocol, remote end and owners."""

    proto: Proto
    remote: Address
    port: int  # the remote port
    processes: tuple[str, ...] = ()  # names of the owning processes (ss -p), may be empty


@dataclass(frozen=True)
class EgressProposal:
    """One proposed ``egress.allow`` entry, and where it came from."""

    name: str
    port: int
    protos: tuple[Proto, ...]
    destinations: tuple[Network, ...] | None  # None: any destination
    comment: str
    source: str  # the files it was read from, or "ss"

    def to_json(self) -> dict[str, Any]:
        """One entry of ``egress_proposals`` (``destinations`` null: any)."""
        return {
            "name": self.name,
            "port": self.port,
            "proto": list(self.protos),
            "destinations": None
            if self.destinations is None
            else [str(n) for n in self.destinations],
            "comment": self.comment,
            "from": self.source,
        }

    def to_yaml(self) -> str:
        """One flow-style list item of ``egress.allow`` (uncommented, indented 4)."""
        proto = self.protos[0] if len(self.protos) == 1 else f"[{', '.join(self.protos)}]"
        where = ""
        if self.destinations is not None:
            nets = (str(n) if n.version == 4 else json.dumps(str(n)) for n in self.destinations)
            where = f"destinations: [{', '.join(nets)}], "
        return (
            f"    - {{name: {_scalar(self.name)}, comment: {json.dumps(self.comment)}, "
            f"{where}port: {self.port}, proto: {proto}}}\n"
        )


@dataclass(frozen=True)
class Proposal:
    """What ``harden init`` proposes: the manifest text, its services, what it left out."""

    manifest: str
    services: tuple[Proposed, ...]
    left_out: tuple[LeftOut, ...] = field(default=())
    # Other firewalls' base chains on harden's hooks (labels), and warnings about them.
    others: tuple[str, ...] = ()
    # egress.allow entries from what the host uses now (commented out in the manifest).
    egress: tuple[EgressProposal, ...] = ()
    dhcp: bool = False  # a DHCP client listens: the commented block proposes egress.dhcp
    # Container and VM bridges: the egress block lets this host reach what runs on them.
    bridges: tuple[Bridge, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``init --format json`` (schema ``harden.init/1``)."""
        return {
            "schema": SCHEMA,
            "manifest": self.manifest,
            "services": [s.to_json() for s in self.services],
            "left_out": [x.to_json() for x in self.left_out],
            "other_firewalls": list(self.others),
            "egress_proposals": [e.to_json() for e in self.egress],
            "egress_dhcp": self.dhcp,
            "container_bridges": [
                {"name": b.name, "owner": b.owner, "networks": [str(n) for n in b.networks]}
                for b in self.bridges
            ],
        }

    def to_text(self) -> str:
        """The manifest's YAML text."""
        return self.manifest


def reach(address: Address | None) -> str | None:
    """Why a listener on ``address`` cannot be reached from another host, or None if it can."""
    if address is None:
        return None
    if address.is_loopback:
        return "loopback only: not reachable from other hosts"
    if isinstance(address, IPv6Address) and address in _LINK_LOCAL6:
        return "IPv6 link-local only: reachable from this link alone, by a scoped address"
    return None


def is_wildcard(address: Address | None) -> bool:
    """``*``, ``0.0.0.0`` or ``::``: every address of its family (or of both)."""
    return address is None or address.is_unspecified


def propose(
    listeners: Iterable[Listener],
    ssh_ports: Iterable[int] = (),
    port_name: PortName | None = None,
    others: Iterable[str] = (),
    egress: Iterable[EgressProposal] = (),
    bridges: Iterable[Bridge] = (),
) -> Proposal:
    """Propose a manifest: one service per (process, port) that other hosts can reach.

    ``ssh_ports`` are the live SSH ports (sshd's listeners, the local ports of SSH
    sessions): each is kept whatever its listener looks like, and proposed even with
    no listener in sight. ``port_name`` names a port from /etc/services. ``egress``
    (:func:`propose_egress`) goes into a commented-out ``egress`` block, with an allow
    to each container or VM bridge's networks (``bridges``), so that enforcing it keeps
    this host's way to what runs there.
    """
    ssh = set(ssh_ports)
    groups: dict[tuple[str, int], list[Listener]] = {}
    left: list[LeftOut] = []
    listeners_ = sorted(set(listeners), key=_order)
    for listener in listeners_:
        why = reach(listener.address)
        if why is not None and not (listener.proto == "tcp" and listener.port in ssh):
            left.append(LeftOut(listener, why))
            continue
        groups.setdefault((listener.process, listener.port), []).append(listener)
    served = {m.port for members in groups.values() for m in members if m.proto == "tcp"}
    for port in sorted(ssh - served):
        groups[("", port)] = [Listener("tcp", None, port, ("",))]  # a session, no listener seen

    services = _services(groups, ssh, port_name)
    shown = tuple(others)
    egress_ = tuple(egress)
    dhcp = _dhcp_client(listeners_)
    bridges_ = tuple(bridges)
    text = _manifest_text(services, left, shown, egress_, dhcp, bridges_)
    manifest_from_text(text, "<harden init proposal>")  # a proposal harden refuses is a bug
    return Proposal(text, tuple(services), tuple(left), shown, egress_, dhcp is not None, bridges_)


def _services(
    groups: dict[tuple[str, int], list[Listener]], ssh: set[int], port_name: PortName | None
) -> list[Proposed]:
    """One service per (process, port) group, by port; a port served twice is declared once."""
    services: list[Proposed] = []
    claimed: dict[tuple[Proto, int], int] = {}  # -> index in services
    names: set[str] = set()
    for (process, port), members in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0])):
        protos = tuple(p for p in PROTOS if any(m.proto == p for m in members))
        taken = [p for p in protos if (p, port) in claimed]
        for proto in taken:  # another process serves it too: one service may declare it
            first = services[claimed[(proto, port)]]
            also = f"{proto} also served by {process or 'an unknown process'}"
            services[claimed[(proto, port)]] = _with_note(first, also)
        protos = tuple(p for p in protos if p not in taken)
        if not protos:
            continue
        is_ssh = port in ssh and "tcp" in protos
        name = _unique(_names(port, protos, process, is_ssh, port_name), port, names)
        names.add(name)
        for proto in protos:
            claimed[(proto, port)] = len(services)
        addresses = tuple(sorted({m.shown_address for m in members if m.proto in protos}))
        services.append(
            Proposed(
                name,
                port,
                protos,
                process,
                addresses,
                _comment(process, [m for m in members if m.proto in protos], is_ssh),
                ssh=is_ssh,
                docker="docker-proxy" in process.split(","),
            )
        )
    return services


def _manifest_text(
    services: list[Proposed],
    left: list[LeftOut],
    others: tuple[str, ...],
    egress: tuple[EgressProposal, ...],
    dhcp: str | None,
    bridges: tuple[Bridge, ...] = (),
) -> str:
    """The proposal's YAML: the services, then comments (egress, left out, other firewalls)."""
    text = HEADER + "version: 1\n"
    if services:
        text += "services:\n" + "".join(s.to_yaml() for s in services)
    else:
        text += "services: []\n"
    if egress or dhcp or bridges:
        text += egress_block(egress, dhcp, bridges)
    if left:
        text += "# Left out:\n" + "".join(f"#   {x.to_text()}\n" for x in left)
    if others:
        text += (
            "# Other firewalls on this host filter too (harden only narrows: a port one of\n"
            "# them drops stays closed whatever this manifest says):\n"
            + "".join(f"#   {line}\n" for line in others)
        )
    return text


def _order(listener: Listener) -> tuple[int, str, str, int, str]:
    address = listener.address
    family = 0 if address is None else address.version
    return listener.port, listener.proto, listener.process, family, str(address or "")


def _names(
    port: int, protos: tuple[Proto, ...], process: str, ssh: bool, port_name: PortName | None
) -> list[str]:
    """Candidate names, best first: /etc/services, "ssh" for an SSH port, the process."""
    candidates = [port_name(port, p) if port_name else None for p in protos]
    if ssh:
        candidates.append("ssh")
    candidates.append(process.split(",")[0])
    names = [_sanitise(c) for c in candidates if c]
    return [n for i, n in enumerate(names) if n and n not in names[:i]] or [f"port-{port}"]


def _sanitise(text: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if name and not name[0].isalpha():
        name = f"svc-{name}"
    return name[: MAX_NAME - 8].rstrip("-")  # room for a "-NNNNN" suffix


def _unique(candidates: list[str], port: int, taken: set[str]) -> str:
    """The first candidate not taken yet, else the first with the port (``appd-1501``)."""
    for candidate in [*candidates, f"{candidates[0]}-{port}"]:
        if candidate not in taken:
            return candidate
    n = 2
    while f"{candidates[0]}-{port}-{n}" in taken:
        n += 1
    return f"{candidates[0]}-{port}-{n}"


def _comment(process: str, members: list[Listener], ssh: bool) -> str:
    if members == [Listener("tcp", None, members[0].port, ("",))]:
        return f"{SSH_NOTE}; an SSH session arrives on it, but no listener was seen"
    notes = [f"served by {process}" if process else "process not shown by ss (not root?)"]
    if ssh:
        notes.append(SSH_NOTE)
    addresses = {m.address for m in members}
    specific = sorted(
        (a for a in addresses if a is not None and not a.is_unspecified),
        key=lambda a: (a.version, int(a)),
    )
    if len(specific) == len(addresses):
        notes.append(f"bound to {', '.join(map(str, specific))} only")
    elif None not in addresses:
        families = {a.version for a in addresses if a is not None}
        if families == {4}:
            notes.append("listens on IPv4 only")
        elif families == {6}:
            notes.append("listens on IPv6 only")
    if "docker-proxy" in process.split(","):
        notes.append(DOCKER_NOTE)
    return _fit("; ".join(notes))


def _with_note(service: Proposed, note: str) -> Proposed:
    return Proposed(
        service.name,
        service.port,
        service.protos,
        service.process,
        service.addresses,
        _fit(f"{service.comment}; {note}"),
        service.ssh,
        service.docker,
    )


def _fit(text: str) -> str:
    return text if len(text) <= MAX_COMMENT else text[: MAX_COMMENT - 3] + "..."


def _scalar(text: str) -> str:
    """A name as a YAML scalar: plain when it reads back as the same string."""
    if _PLAIN_NAME.fullmatch(text) and text not in _YAML_WORDS:
        return text
    return json.dumps(text)


# Egress: what the host connects to now (resolvers, time servers, established
# connections), proposed as egress.allow entries. The shell hands over the text of the
# files below by their paths, and the outbound connections ss shows.

RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAMS = "/run/systemd/resolve/resolv.conf"  # systemd-resolved's real servers
CHRONY_CONFS = ("/etc/chrony/chrony.conf", "/etc/chrony.conf")
CHRONY_SOURCES = ("/etc/chrony/sources.d/", ".sources")  # directory, file suffix
TIMESYNCD_CONF = "/etc/systemd/timesyncd.conf"
TIMESYNCD_DROPINS = ("/etc/systemd/timesyncd.conf.d/", ".conf")
EGRESS_FILES = (RESOLV_CONF, RESOLVED_UPSTREAMS, *CHRONY_CONFS, TIMESYNCD_CONF)
EGRESS_DIRS = (CHRONY_SOURCES, TIMESYNCD_DROPINS)
DHCP_CLIENT_PORTS = {("udp", 68), ("udp", 546)}  # DHCPv4 and DHCPv6 clients
EGRESS_HEADER = """\
# Egress, proposed from what this host connects to now (its resolvers, time servers
# and established connections). Commented out, so not enforced: egress.policy stays
# accept and the host may connect anywhere. Review it (whatever is not listed will be
# refused), then uncomment it to enforce it. Replies, loopback and ICMP errors always pass.
"""


def nameservers(text: str) -> list[Address]:
    """The ``nameserver`` addresses of a resolv.conf, in order, without repeats."""
    found: list[Address] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            address = ip_address(fields[1].split("%")[0])  # a zone (fe80::1%eth0) is dropped
        except ValueError:
            continue
        if address not in found:
            found.append(address)
    return found


def chrony_servers(text: str) -> list[str]:
    """The ``server`` and ``pool`` names or addresses of a chrony.conf or .sources file."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].lower() in ("server", "pool"):
            found.append(fields[1])
    return found


def timesyncd_servers(texts: Iterable[str]) -> list[str] | None:
    """The servers systemd-timesyncd's files name: ``NTP=``, else ``FallbackNTP=``.

    ``texts``: timesyncd.conf, then its drop-ins in order. An empty assignment resets
    the list. None: neither is set, so timesyncd uses its built-in fallback servers.
    """
    ntp: list[str] = []
    fallback: list[str] | None = None
    for text in texts:
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            if section != "[Time]" or line[:1] in ("#", ";") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            names = value.split()
            if key.strip() == "NTP":
                ntp = ntp + names if names else []
            elif key.strip() == "FallbackNTP":
                fallback = (fallback or []) + names if names else []
    return ntp or fallback


def propose_egress(
    files: Mapping[str, str], outgoing: Iterable[Outgoing], port_name: PortName | None = None
) -> tuple[EgressProposal, ...]:
    """Propose egress.allow entries from what this host uses now.

    ``files`` maps the paths in :data:`EGRESS_FILES` and under :data:`EGRESS_DIRS` to
    their text (absent: not there). DNS comes from the resolvers, NTP from chrony or
    systemd-timesyncd, the rest from ``outgoing`` connections grouped by remote port;
    a connection the earlier entries already allow adds nothing, so no two overlap.
    """
    found = [p for p in (dns_proposal(files), ntp_proposal(files)) if p is not None]
    return tuple(found) + tuple(connection_proposals(outgoing, found, port_name))


def dns_proposal(files: Mapping[str, str]) -> EgressProposal | None:
    """``dns`` (tcp and udp 53) to the resolvers resolv.conf names, past a local stub.

    A loopback nameserver is a local resolver (systemd-resolved's 127.0.0.53, dnsmasq,
    unbound): systemd-resolved's upstreams are in its own resolv.conf; another's are
    unknown, and then any destination is proposed.
    """
    if RESOLV_CONF not in files:
        return None
    listed = nameservers(files[RESOLV_CONF])
    servers = [a for a in listed if not a.is_loopback]
    stubs = ", ".join(str(a) for a in listed if a.is_loopback)
    source = RESOLV_CONF
    comment = f"from {RESOLV_CONF}"
    if stubs and RESOLVED_UPSTREAMS in files:
        upstreams = nameservers(files[RESOLVED_UPSTREAMS])
        servers += [a for a in upstreams if not a.is_loopback and a not in servers]
        source = f"{RESOLV_CONF}, {RESOLVED_UPSTREAMS}"
        comment = f"from {RESOLVED_UPSTREAMS} (the servers behind the local stub {stubs})"
    if stubs and not servers:
        comment = (
            f"from {RESOLV_CONF}: {stubs} is a local resolver whose upstream servers "
            "harden cannot see, so any destination"
        )
        return EgressProposal("dns", 53, PROTOS, None, _fit(comment), source)
    if not servers:
        return None
    return EgressProposal("dns", 53, PROTOS, _host_networks(servers), _fit(comment), source)


def ntp_proposal(files: Mapping[str, str]) -> EgressProposal | None:
    """``ntp`` (udp 123) to the time servers chrony or systemd-timesyncd is set up with.

    They are usually host names, and harden resolves none: then any destination, with
    the names in the comment. Servers given as addresses become the destinations.
    """
    found: dict[str, list[str]] = {}  # source file -> servers
    for path in [*CHRONY_CONFS, *_under(files, CHRONY_SOURCES)]:
        if servers := chrony_servers(files.get(path, "")):
            found[path] = servers
    dropins = _under(files, TIMESYNCD_DROPINS)
    builtin = False
    if TIMESYNCD_CONF in files or dropins:
        texts = [files.get(TIMESYNCD_CONF, ""), *(files[p] for p in dropins)]
        servers_ = timesyncd_servers(texts)
        builtin = servers_ is None and not found
        if servers_ or builtin:
            found[TIMESYNCD_CONF] = servers_ or []
    if not found:
        return None
    every = [s for servers in found.values() for s in servers]
    names = [s for s in every if _address(s) is None]
    # A loopback address is a local reference clock daemon: loopback always passes.
    addresses = [a for s in every if (a := _address(s)) is not None and not a.is_loopback]
    if not (names or addresses or builtin):
        return None
    listed = "; ".join(
        f"{path} ({', '.join(servers) or 'no NTP= set: systemd-timesyncd built-in servers'})"
        for path, servers in found.items()
    )
    comment = f"from {listed}"
    if names or builtin:
        comment += ": host names, and harden resolves none, so any destination"
    destinations = None if names or builtin else _host_networks(addresses)
    return EgressProposal("ntp", 123, ("udp",), destinations, _fit(comment), ", ".join(found))


def connection_proposals(
    outgoing: Iterable[Outgoing],
    earlier: Iterable[EgressProposal] = (),
    port_name: PortName | None = None,
) -> list[EgressProposal]:
    """One entry per (remote port, protocol) of the established outbound connections.

    Its destinations are the remote addresses seen (collapsed); loopback ones, and
    those an ``earlier`` entry already allows, are left out.
    """
    before = list(earlier)
    groups: dict[tuple[int, Proto], list[Outgoing]] = {}
    for c in sorted(outgoing, key=lambda c: (c.port, c.proto, c.remote.version, c.remote)):
        if c.remote.is_loopback or c.remote.is_unspecified or _allowed_by(before, c):
            continue
        groups.setdefault((c.port, c.proto), []).append(c)
    taken = {p.name for p in before}
    proposals = []
    for (port, proto), members in groups.items():
        processes = ",".join(sorted({p for m in members for p in m.processes if p}))
        name = _unique(_names(port, (proto,), processes, False, port_name), port, taken)
        taken.add(name)
        count = len(members)
        comment = f"from {count} established connection{'s' if count != 1 else ''} (ss)"
        if processes:
            comment += f", by {processes}"
        destinations = _host_networks([m.remote for m in members])
        proposals.append(EgressProposal(name, port, (proto,), destinations, _fit(comment), "ss"))
    return proposals


def egress_block(
    egress: Iterable[EgressProposal], dhcp: str | None = None, bridges: Iterable[Bridge] = ()
) -> str:
    """The ``egress`` section, commented out, with its explanation (``# `` on each line)."""
    lines = [
        "egress:",
        "  # drop: only what 'allow' lists leaves; reject: the same, and a local program is",
        "  # told at once. Set policy: drop to enforce (accept lets anything out).",
        "  policy: drop",
    ]
    if dhcp is not None:
        lines.append(f"  dhcp: true  # {dhcp}: keep its lease renewals")
    else:
        lines.append("  dhcp: false  # true if this host gets its address by DHCP")
    egress = list(egress)
    allows = [e.to_yaml().rstrip("\n") for e in egress]
    bridges = list(bridges)
    allows += [item for b in bridges if b.networks for item in _bridge_allows(b, egress)]
    lines += ["  allow:", *allows] if allows else []
    return EGRESS_HEADER + "".join(f"# {line}\n" for line in lines) + _bridge_notes(bridges)


def _bridge_allows(bridge: Bridge, egress: list[EgressProposal]) -> list[str]:
    """egress.allow items to a bridge's networks, every port the other items leave.

    A port another proposed item already lets out to the bridge's networks (ntp's 123
    to any destination) is left out of this one: the manifest refuses an overlap.
    """
    nets = ", ".join(str(n) if n.version == 4 else json.dumps(str(n)) for n in bridge.networks)
    comment = f"{bridge.owner}'s bridge: this host's proxies and health checks reach it"
    free: dict[str, tuple[PortRange, ...]] = {}
    for proto in PROTOS:
        taken = {
            e.port
            for e in egress
            if proto in e.protos
            and (e.destinations is None or any(_meets(n, bridge.networks) for n in e.destinations))
        }
        free[proto] = _complement(taken)
    groups = (
        [(("tcp", "udp"), free["tcp"])]
        if free["tcp"] == free["udp"]
        else [(("tcp",), free["tcp"]), (("udp",), free["udp"])]
    )
    items = []
    for protos, ranges in groups:
        name = bridge.name if len(protos) == 2 else f"{bridge.name}-{protos[0]}"
        said = protos[0] if len(protos) == 1 else "[tcp, udp]"
        ports = ", ".join(json.dumps(str(r)) for r in ranges)
        items.append(
            f"    - {{name: {_scalar(name)}, comment: {json.dumps(comment)}, "
            f"destinations: [{nets}], ports: [{ports}], proto: {said}}}"
        )
    return items


def _meets(net: Network, nets: tuple[Network, ...]) -> bool:
    return any(n.version == net.version and n.overlaps(net) for n in nets)


def _complement(taken: set[int]) -> tuple[PortRange, ...]:
    """1-65535 without ``taken``, as ranges."""
    out, start = [], 1
    for port in sorted(taken):
        if port > start:
            out.append(PortRange(start, port - 1))
        start = port + 1
    if start <= 65535:
        out.append(PortRange(start, 65535))
    return tuple(out)


def _bridge_notes(bridges: list[Bridge]) -> str:
    """Why the bridges are allowed out rather than trusted, and those with no address."""
    if not bridges:
        return ""
    names = ", ".join(b.name for b in bridges)
    lines = [
        f"With egress enforced, this host reaches what runs on {names} only through the",
        "allows above. Trusting the bridge instead (policy.trusted_interfaces) would also let",
        "everything on it reach every port of this host, so it is not proposed.",
    ]
    lines += [
        f"{b.name} ({b.owner}'s bridge) has no address now: allow its network once it has one."
        for b in bridges
        if not b.networks
    ]
    return "".join(f"# {line}\n" for line in lines)


def _dhcp_client(listeners: Iterable[Listener]) -> str | None:
    """What shows a DHCP client runs (a socket on udp/68 or udp/546), or None."""
    for listener in listeners:
        if (listener.proto, listener.port) in DHCP_CLIENT_PORTS:
            owner = f" ({listener.process})" if listener.process else ""
            return f"a DHCP client listens on udp/{listener.port}{owner}"
    return None


def _allowed_by(proposals: list[EgressProposal], c: Outgoing) -> bool:
    return any(
        c.proto in p.protos
        and c.port == p.port
        and (p.destinations is None or any(c.remote in net for net in p.destinations))
        for p in proposals
    )


def _host_networks(addresses: Iterable[Address]) -> tuple[Network, ...]:
    """The addresses as /32 and /128 networks, collapsed, IPv4 first."""
    unique = set(addresses)
    v4 = collapse_addresses(IPv4Network(a) for a in unique if isinstance(a, IPv4Address))
    v6 = collapse_addresses(IPv6Network(a) for a in unique if isinstance(a, IPv6Address))
    return (*v4, *v6)


def _address(text: str) -> Address | None:
    try:
        return ip_address(text)
    except ValueError:
        return None


def _under(files: Mapping[str, str], where: tuple[str, str]) -> list[str]:
    """The paths in ``files`` directly under a directory with a suffix, sorted."""
    directory, suffix = where
    return sorted(
        p
        for p in files
        if p.startswith(directory) and p.endswith(suffix) and "/" not in p[len(directory) :]
    )
