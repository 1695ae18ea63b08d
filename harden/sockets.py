"""The host's sockets as ``ss`` lists them, and whose processes hold them.

The SSH guard (apply) and ``harden init`` both read them; parsing is pure, ``run_ss``
runs the command, ``root_process`` reads /proc.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from harden.errors import EnvironmentProblem
from harden.types import Address

_OWNER = re.compile(r'\("((?:[^"\\]|\\.)*)",pid=(\d+)')


def normalise(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (``::ffff:198.18.1.5``) as the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class TcpSocket:
    """One line of ``ss -Htanp``: state, local and peer endpoints, owning processes."""

    state: str  # ss's names: LISTEN, ESTAB, TIME-WAIT, ...
    local: tuple[Address | None, int]  # None: a wildcard address (``*``)
    peer: tuple[Address | None, int | None]
    owners: tuple[tuple[str, int], ...]  # (process name, pid)

    @property
    def held_by_sshd(self) -> bool:
        """Whether a process named sshd owns this socket."""
        return any(name == "sshd" for name, _ in self.owners)

    @property
    def held_by_systemd(self) -> bool:
        """Whether systemd (pid 1 or a process named systemd) owns this socket."""
        return any(name == "systemd" or pid == 1 for name, pid in self.owners)


def run_ss(args: str, needed_by: str) -> list[TcpSocket]:
    """The sockets ``ss ARGS`` lists (``-Htanp``, ``-Hlunp``); EnvironmentProblem if it fails."""
    try:
        proc = subprocess.run(["ss", args], capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{needed_by} needs 'ss' (Debian package iproute2)") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"could not run 'ss {args}': {exc}") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise EnvironmentProblem(f"'ss {args}' failed: {detail[0]}")
    return parse_ss(proc.stdout)


def parse_ss(text: str) -> list[TcpSocket]:
    """Parse ``ss -Htanp`` output; lines that do not parse are skipped."""
    sockets = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        try:
            local_addr, local_port = parse_endpoint(fields[3])
            peer = parse_endpoint(fields[4])
        except ValueError:
            continue
        if local_port is None:
            continue
        owners = tuple(
            (name, int(pid)) for name, pid in _OWNER.findall(fields[5] if len(fields) > 5 else "")
        )
        sockets.append(TcpSocket(fields[0], (local_addr, local_port), peer, owners))
    return sockets


def parse_endpoint(text: str) -> tuple[Address | None, int | None]:
    """``198.18.1.1:22``, ``[fd00::1]:22``, ``[::ffff:198.18.1.5]:22``, ``*:22``, ``[::]:*``.

    Returns (address, port); a wildcard address or port is None, an IPv4-mapped
    address comes back as IPv4, and a zone (``%eth0``) is dropped.
    Raises ValueError for anything else.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"not an address:port: {text!r}")
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"unbalanced bracket: {text!r}")
        host = host[1:end] + host[end + 1 :]  # ss may print the zone after the bracket
    host = host.split("%", 1)[0]
    address = None if host in ("*", "") else normalise(ipaddress.ip_address(host))
    port = None if port_text == "*" else int(port_text)
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {text!r}")
    return address, port


def root_process(pid: int) -> bool:
    """Whether ``pid`` runs as root from an executable only root can change.

    Any user can name a process "sshd" (prctl PR_SET_NAME) and listen on a high port;
    believing it would let that user block root's apply and steer ``harden init``. The
    real sshd runs as uid 0 from a root-owned binary.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        exe = Path(f"/proc/{pid}/exe").stat()  # the binary it runs (still there if replaced)
    except OSError:
        return False
    uids = next((line.split()[1:3] for line in status.splitlines() if line.startswith("Uid:")), [])
    return uids == ["0", "0"] and exe.st_uid == 0 and not exe.st_mode & 0o022


Trusted = Callable[[int], bool]


def trusted_owner(socket: TcpSocket, names: Iterable[str], trusted: Trusted) -> bool:
    """Whether a process with one of ``names`` that ``trusted`` vouches for owns ``socket``."""
    wanted = set(names)
    return any(name in wanted and trusted(pid) for name, pid in socket.owners)
