"""Guards that run before anything changes: the SSH lockout check and the netns belt.

docs/design.md, "The SSH guard". The guard looks at the kernel, not at the
environment: ``SSH_CONNECTION`` is dropped by sudo's default ``env_reset`` and
may not survive Ansible's ``become``, so on its own it would miss the very
session that runs harden. Instead:

- The SSH ports are the TCP ports where a process named ``sshd`` listens, plus
  the ports that systemd holds for a socket-activated sshd (``ssh.socket`` or
  ``sshd.socket``, as ``systemctl`` lists them).
- Every ESTABLISHED TCP connection whose local port is an SSH port is an SSH
  session, whoever owns it (with ``Accept=yes`` socket activation the listener is
  systemd's and the sessions are sshd's). The new policy must accept a new
  connection from each session's peer to that port, or new SSH logins from there
  would be refused. The refusal says whether the session itself survives: harden
  accepts established connections, but only those conntrack already tracks; a
  session from before tracking began meets the new rules as new, and is cut at
  once (docs/design.md, "The SSH guard").
- ``SSH_CONNECTION``, when set, is still checked: it names the current session
  even where ``ss`` cannot see it.
- A policy that closes an SSH port to every source is refused.

The decision is the pure function :func:`ssh_guard`; :func:`lockout_reason`
(apply's entry) feeds it what :func:`tcp_sockets` and :func:`socket_unit_ports`
read from the kernel and from systemd.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

from harden.errors import EnvironmentProblem
from harden.policy.model import Policy
from harden.sockets import TcpSocket, Trusted, normalise, root_process, run_ss, trusted_owner
from harden.types import Address

Session = tuple[Address, int]  # (peer address, local port)

SSH_SOCKET_UNITS = ("ssh.socket", "sshd.socket")  # Debian/Ubuntu, Fedora/Arch names

_LISTEN_PORT = re.compile(r"(?:^|[\s:\]])(\d+)\s+\(Stream\)")


def current_namespace_name() -> str | None:
    """The name of the named network namespace (``ip netns``) this process runs in, if any.

    PID 1's namespace is not readable in every sandbox, so "not in a named
    namespace" is the safe stand-in for "in the machine's own namespace".
    """
    try:
        ours = Path("/proc/self/ns/net").stat()
        for entry in Path("/run/netns").iterdir():
            st = entry.stat()
            if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
                return entry.name
    except OSError:
        pass
    return None


def require_namespace() -> None:
    """Refuse to touch a ruleset outside a named netns when HARDEN_REQUIRE_NETNS=1.

    The test suite sets it: a test that forgets ``ip netns exec`` then fails
    instead of firewalling the machine it runs on.
    """
    if os.environ.get("HARDEN_REQUIRE_NETNS") == "1" and current_namespace_name() is None:
        raise EnvironmentProblem(
            "HARDEN_REQUIRE_NETNS=1 and this process is not inside a named network namespace: "
            "refusing to change the firewall"
        )


# The decision (pure: no kernel, no environment but the mapping it is given).


def ssh_guard(
    policy: Policy,
    env: Mapping[str, str],
    ssh_ports: Iterable[int],
    sessions: Iterable[Session],
    tracked: Collection[Session] | None = None,
) -> str | None:
    """Why applying ``policy`` would lock the operator out, or None if it would not.

    ``ssh_ports`` are the TCP ports sshd is reachable on (listening itself or via
    systemd socket activation); ``sessions`` are the established SSH connections
    as (peer address, local port); ``tracked`` those conntrack tracks as established
    (None: unknown). docs/design.md, "The SSH guard".
    """
    connection = env.get("SSH_CONNECTION", "").split()
    if len(connection) == 4:
        try:
            client: Address | None = normalise(ipaddress.ip_address(connection[0].split("%")[0]))
            port = int(connection[3])
        except ValueError:
            client = None  # malformed: the kernel's view below still applies
        if client is not None and not policy.accepts(client, "tcp", port):
            return (
                f"this session came over SSH from {client} to port {port}, and the manifest "
                f"does not allow tcp/{port} from {client}: {_fate((client, port), tracked)}, "
                f"and you could not log in again"
            )
    seen = {(normalise(peer), port) for peer, port in sessions}
    cut = sorted(
        (s for s in seen if not policy.accepts(s[0], "tcp", s[1])),
        key=lambda s: (s[0].version, s[0], s[1]),
    )
    if cut:
        peer, port = cut[0]
        more = f" (and {len(cut) - 1} more like it)" if len(cut) > 1 else ""
        return (
            f"an SSH session from {peer} to port {port} is established{more}, and the manifest "
            f"does not allow tcp/{port} from {peer}: {_fate(cut[0], tracked)}, and new SSH "
            f"logins from {peer} would be refused"
        )
    for port in sorted(set(ssh_ports)):
        if not policy.reachable("tcp", port):
            return f"sshd listens on tcp/{port}, and the manifest closes it to every source"
    return None


def _fate(session: Session, tracked: Collection[Session] | None) -> str:
    """What the new rules do to an established session harden's policy does not allow."""
    if tracked is None:
        return "the session survives only if conntrack tracks it already"
    if session in tracked:
        return "the session survives (conntrack tracks it)"
    return "the session is cut at once (conntrack does not track it yet)"


def lockout_reason(policy: Policy, env: Mapping[str, str]) -> str | None:
    """Why applying ``policy`` here would lock the operator out, or None (apply's entry).

    Reads this network namespace's TCP sockets (ss) and, only if systemd holds a
    listener, the ports of sshd's socket unit (systemctl). If the sockets cannot
    be listed at all, that is the reason: the guard fails closed (``--force``
    overrides it).
    """
    try:
        sockets = tcp_sockets()
    except EnvironmentProblem as problem:
        return f"{problem}: cannot tell whether new SSH logins would be refused"
    unit_ports = socket_unit_ports() if any(s.held_by_systemd for s in sockets) else set()
    ports = ssh_ports(sockets, unit_ports)
    sessions = ssh_sessions(sockets, ports)
    if ssh_guard(policy, env, ports, sessions) is None:
        return None
    # Only a refusal reads the conntrack table (large on a busy host) to say more.
    return ssh_guard(policy, env, ports, sessions, tracked_sessions())


# Reading the kernel: parse functions are pure; tcp_sockets and socket_unit_ports run commands.


def tcp_sockets() -> list[TcpSocket]:
    """All TCP sockets of this network namespace, in every state (``ss -Htanp``).

    Raises EnvironmentProblem if ss is missing or fails.
    """
    return run_ss("-Htanp", "the SSH guard")


def ssh_ports(
    sockets: Iterable[TcpSocket], unit_ports: set[int], trusted: Trusted = root_process
) -> list[int]:
    """Ports sshd listens on here: its own listeners, and systemd's that belong to its unit.

    Only an sshd (or systemd) that ``trusted`` vouches for counts: root, from a
    root-owned executable.
    """
    return sorted(
        {
            s.local[1]
            for s in sockets
            if s.state == "LISTEN"
            and (
                trusted_owner(s, ("sshd",), trusted)
                or (s.held_by_systemd and s.local[1] in unit_ports and _systemd(s, trusted))
            )
        }
    )


def _systemd(socket: TcpSocket, trusted: Trusted) -> bool:
    return any(pid == 1 or (name == "systemd" and trusted(pid)) for name, pid in socket.owners)


def ssh_sessions(sockets: Iterable[TcpSocket], ports: Sequence[int]) -> list[Session]:
    """Established connections to an SSH port, as (peer address, local port)."""
    return [
        (s.peer[0], s.local[1])
        for s in sockets
        if s.state == "ESTAB" and s.local[1] in ports and s.peer[0] is not None
    ]


def tracked_sessions(path: Path = Path("/proc/net/nf_conntrack")) -> set[Session] | None:
    """The TCP connections conntrack tracks as established in this namespace, or None.

    None when the table cannot be read (conntrack not loaded, or built without its
    procfs file): the guard then says it cannot tell.
    """
    try:
        return parse_conntrack(path.read_text())
    except OSError:
        return None


def parse_conntrack(text: str) -> set[Session]:
    """Established TCP entries of /proc/net/nf_conntrack as (original source, dport)."""
    found: set[Session] = set()
    for line in text.splitlines():
        fields = line.split()
        if "tcp" not in fields[:3] or "ESTABLISHED" not in fields:
            continue
        pairs: dict[str, str] = {}
        for field in fields:  # the original direction's come first
            if "=" in field:
                key, value = field.split("=", 1)
                pairs.setdefault(key, value)
        try:
            peer = normalise(ipaddress.ip_address(pairs["src"]))
            found.add((peer, int(pairs["dport"])))
        except (KeyError, ValueError):
            continue
    return found


def socket_unit_ports() -> set[int]:
    """TCP ports of sshd's systemd socket unit, if it is active; empty if that cannot be told.

    Asks ``systemctl show`` for each name in SSH_SOCKET_UNITS; a missing
    systemctl, a system not booted with systemd or an inactive unit count as none.
    """
    ports: set[int] = set()
    for unit in SSH_SOCKET_UNITS:
        try:
            proc = subprocess.run(
                ["systemctl", "show", unit, "-p", "ActiveState", "-p", "Listen"],
                capture_output=True,
                text=True,
                check=False,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ports
        if proc.returncode == 0:
            ports |= parse_unit_listen(proc.stdout)
    return ports


def parse_unit_listen(text: str) -> set[int]:
    """Ports from ``systemctl show UNIT -p ActiveState -p Listen``, if the unit is active.

    Listen lines look like ``Listen=0.0.0.0:22 (Stream)``, ``Listen=[::]:22 (Stream)``
    or ``Listen=22 (Stream)`` (one per socket, or several on one line).
    """
    props: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props.setdefault(key.strip(), []).append(value.strip())
    if props.get("ActiveState", [""])[0] != "active":
        return set()
    ports = set()
    for value in props.get("Listen", []):
        for match in _LISTEN_PORT.finditer(value):
            port = int(match.group(1))
            if 0 < port <= 65535:
                ports.add(port)
    return ports
