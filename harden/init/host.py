"""``harden init``: read this host's listening sockets and propose a manifest (never applies).

The shell half: it lists the listening TCP and bound UDP sockets with their processes
(``ss``, parsed by the SSH guard's own parser), finds the live SSH ports the way the
guard does, and hands both to :func:`harden.init.proposal.propose`. For egress it reads
the resolver and time-server configuration and takes the established outbound
connections from the same ``ss`` output (:func:`harden.init.proposal.propose_egress`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path

from harden.apply.guard import socket_unit_ports, ssh_ports, ssh_sessions
from harden.init.proposal import (
    EGRESS_DIRS,
    EGRESS_FILES,
    Listener,
    Outgoing,
    Proposal,
    propose,
    propose_egress,
)
from harden.sockets import TcpSocket, Trusted, root_process, run_ss, trusted_owner
from harden.types import Proto

SSH_PROCESSES = ("sshd", "sshd-session")  # OpenSSH 9.8+ runs each session as sshd-session
MAX_FILE = 1 << 20  # bytes read of one configuration file


def listeners(tcp: list[TcpSocket], udp: list[TcpSocket]) -> list[Listener]:
    """Listening TCP sockets and unconnected (bound) UDP sockets as Listeners."""
    found = []
    for proto, sockets, state in (("tcp", tcp, "LISTEN"), ("udp", udp, "UNCONN")):
        for s in sockets:
            if s.state == state:
                names = tuple(name for name, _ in s.owners)
                found.append(Listener(_proto(proto), s.local[0], s.local[1], names))
    return found


def outgoing(tcp: list[TcpSocket], udp: list[TcpSocket]) -> list[Outgoing]:
    """Established connections this host opened: those whose local port is not listening.

    An accepted connection shares its listener's local port (an SSH session, a web
    request); a connection the host opened has an ephemeral one.
    """
    listening = {("tcp", s.local[1]) for s in tcp if s.state == "LISTEN"}
    listening |= {("udp", s.local[1]) for s in udp if s.state == "UNCONN"}
    found = []
    for proto, sockets in (("tcp", tcp), ("udp", udp)):
        for s in sockets:
            remote, port = s.peer
            if s.state != "ESTAB" or remote is None or port is None:
                continue
            if (proto, s.local[1]) not in listening:
                names = tuple(name for name, _ in s.owners)
                found.append(Outgoing(_proto(proto), remote, port, names))
    return found


def host_files(root: Path = Path("/")) -> dict[str, str]:
    """The resolver and time-server files propose_egress reads, by path, under ``root``.

    A file that is missing or unreadable is simply not in the answer.
    """
    paths = list(EGRESS_FILES)
    for directory, suffix in EGRESS_DIRS:
        try:
            names = sorted(p.name for p in (root / directory.lstrip("/")).iterdir())
        except OSError:
            continue
        paths += [directory + name for name in names if name.endswith(suffix)]
    found = {}
    for path in paths:
        try:
            with (root / path.lstrip("/")).open("rb") as f:
                found[path] = f.read(MAX_FILE).decode(errors="replace")
        except OSError:
            continue
    return found


def live_ssh_ports(
    tcp: list[TcpSocket], env: Mapping[str, str], trusted: Trusted = root_process
) -> set[int]:
    """The ports SSH is live on: the guard's sshd ports, plus the local ports of SSH sessions.

    A session is an established connection owned by sshd (or OpenSSH's sshd-session),
    or the one ``SSH_CONNECTION`` names. A port-22 listener whose owner ss cannot show
    (not root) counts as SSH too: the guess that keeps the operator in.
    """
    units = socket_unit_ports() if any(s.held_by_systemd for s in tcp) else set()
    ports = set(ssh_ports(tcp, units, trusted))
    ports |= {port for _, port in ssh_sessions(tcp, sorted(ports))}
    # Only sessions of a root sshd: any user can name a process "sshd" (the guard's rule).
    ports |= {
        s.local[1] for s in tcp if s.state == "ESTAB" and trusted_owner(s, SSH_PROCESSES, trusted)
    }
    ports |= {s.local[1] for s in tcp if s.state == "LISTEN" and s.local[1] == 22 and not s.owners}
    connection = env.get("SSH_CONNECTION", "").split()
    if len(connection) == 4 and connection[3].isdigit() and 0 < int(connection[3]) <= 65535:
        try:
            ipaddress.ip_address(connection[2].split("%")[0])
            ports.add(int(connection[3]))
        except ValueError:
            pass  # malformed: the kernel's view above still applies
    return ports


def port_name(port: int, proto: Proto) -> str | None:
    """The port's name in /etc/services for ``proto``, or None."""
    try:
        return socket.getservbyport(port, proto)
    except (OSError, OverflowError):
        return None


def init(env: Mapping[str, str]) -> Proposal:
    """Propose a manifest for this host from its sockets and its egress (``harden init``)."""
    from harden.apply.hostinfo import container_bridges, other_firewalls

    tcp = run_ss("-Htanp", "harden init")
    udp = run_ss("-Haunp", "harden init")  # bound (UNCONN) and connected (ESTAB)
    chains, warnings = other_firewalls()
    others = [c.label for c in chains] + warnings
    egress = propose_egress(host_files(), outgoing(tcp, udp), port_name)
    return propose(
        listeners(tcp, udp), live_ssh_ports(tcp, env), port_name, others, egress,
        container_bridges(),
    )  # fmt: skip


def _proto(text: str) -> Proto:
    return "tcp" if text == "tcp" else "udp"
