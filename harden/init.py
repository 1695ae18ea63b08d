"""``harden init``: read this host's listening sockets and propose a manifest (never applies).

The shell half: it lists the listening TCP and bound UDP sockets with their processes
(``ss``, parsed by the SSH guard's own parser), finds the live SSH ports the way the
guard does, and hands both to :func:`harden.core.proposal.propose`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping

from harden.apply.guard import (
    TcpSocket,
    Trusted,
    root_process,
    run_ss,
    socket_unit_ports,
    ssh_ports,
    ssh_sessions,
    trusted_owner,
)
from harden.core.proposal import Listener, Proposal, propose
from harden.core.types import Proto

SSH_PROCESSES = ("sshd", "sshd-session")  # OpenSSH 9.8+ runs each session as sshd-session


def listeners(tcp: list[TcpSocket], udp: list[TcpSocket]) -> list[Listener]:
    """Listening TCP sockets and unconnected (bound) UDP sockets as Listeners."""
    found = []
    for proto, sockets, state in (("tcp", tcp, "LISTEN"), ("udp", udp, "UNCONN")):
        for s in sockets:
            if s.state == state:
                names = tuple(name for name, _ in s.owners)
                found.append(Listener(_proto(proto), s.local[0], s.local[1], names))
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
    """Propose a manifest for this host from its sockets (``harden init``)."""
    from harden.apply.hostinfo import other_firewalls

    tcp = run_ss("-Htanp", "harden init")
    udp = run_ss("-Hlunp", "harden init")
    chains, warnings = other_firewalls()
    others = [c.label for c in chains] + warnings
    return propose(listeners(tcp, udp), live_ssh_ports(tcp, env), port_name, others)


def _proto(text: str) -> Proto:
    return "tcp" if text == "tcp" else "udp"
