"""A manifest proposed from the sockets a host listens on (``harden init``), pure.

The shell (harden/init.py) reads the kernel and hands over :class:`Listener` values,
the SSH ports it found and a way to name a port from /etc/services; :func:`propose`
turns them into manifest text that harden's own parser accepts, and says what it
left out and why. The same input always gives the same text (everything is sorted).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network
from typing import Any

from harden.core.parse import manifest_from_text
from harden.core.types import PROTOS, Address, Proto

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
class Proposal:
    """What ``harden init`` proposes: the manifest text, its services, what it left out."""

    manifest: str
    services: tuple[Proposed, ...]
    left_out: tuple[LeftOut, ...] = field(default=())
    # Other firewalls' base chains on harden's hooks (labels), and warnings about them.
    others: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``init --format json`` (schema ``harden.init/1``)."""
        return {
            "schema": SCHEMA,
            "manifest": self.manifest,
            "services": [s.to_json() for s in self.services],
            "left_out": [x.to_json() for x in self.left_out],
            "other_firewalls": list(self.others),
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
) -> Proposal:
    """Propose a manifest: one service per (process, port) that other hosts can reach.

    ``ssh_ports`` are the live SSH ports (sshd's listeners, the local ports of SSH
    sessions): each is kept whatever its listener looks like, and proposed even with
    no listener in sight. ``port_name`` names a port from /etc/services.
    """
    ssh = set(ssh_ports)
    groups: dict[tuple[str, int], list[Listener]] = {}
    left: list[LeftOut] = []
    for listener in sorted(set(listeners), key=_order):
        why = reach(listener.address)
        if why is not None and not (listener.proto == "tcp" and listener.port in ssh):
            left.append(LeftOut(listener, why))
            continue
        groups.setdefault((listener.process, listener.port), []).append(listener)
    served = {m.port for members in groups.values() for m in members if m.proto == "tcp"}
    for port in sorted(ssh - served):
        groups[("", port)] = [Listener("tcp", None, port, ("",))]  # a session, no listener seen

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
    text = HEADER + "version: 1\n"
    if services:
        text += "services:\n" + "".join(s.to_yaml() for s in services)
    else:
        text += "services: []\n"
    if left:
        text += "# Left out:\n" + "".join(f"#   {x.to_text()}\n" for x in left)
    shown = tuple(others)
    if shown:
        text += (
            "# Other firewalls on this host filter too (harden only narrows: a port one of\n"
            "# them drops stays closed whatever this manifest says):\n"
            + "".join(f"#   {line}\n" for line in shown)
        )
    manifest_from_text(text, "<harden init proposal>")  # a proposal harden refuses is a bug
    return Proposal(text, tuple(services), tuple(left), shown)


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
