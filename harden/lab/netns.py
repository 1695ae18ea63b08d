"""Throwaway network namespaces: the only place harden ever loads rules in tests and labs."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from harden.errors import CommandFailed, EnvironmentProblem


def require_root(what: str) -> None:
    """Raise EnvironmentProblem unless we can create namespaces."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(f"{what} needs root (CAP_NET_ADMIN) to create network namespaces")
    if shutil.which("ip") is None:
        raise EnvironmentProblem(f"{what} needs the 'ip' command (Debian package iproute2)")


def unique_name(prefix: str) -> str:
    """A namespace name no parallel or aborted run will collide with."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Namespace:
    """A network namespace created on enter and deleted on exit, pass or fail."""

    def __init__(self, prefix: str = "harden") -> None:
        self.name = unique_name(prefix)
        self._created = False

    def __enter__(self) -> Namespace:
        """Create the namespace and bring its loopback up."""
        require_root("a network namespace")
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self._created = True
        self.run(["ip", "link", "set", "lo", "up"])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Delete the namespace (its veths and rules go with it)."""
        self.close()

    def close(self) -> None:
        """Delete the namespace if we created it; safe to call twice."""
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
            self._created = False

    def run(
        self,
        args: Sequence[str | Path],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and capture its output as text.

        It runs in ``/``, never in the caller's working directory: a Python started
        there must not find modules a user planted in it (harden runs as root).
        """
        proc = subprocess.run(
            ["ip", "netns", "exec", self.name, *map(str, args)],
            input=input,
            text=True,
            capture_output=True,
            check=False,
            timeout=timeout,
            cwd="/",
        )
        if check and proc.returncode != 0:
            raise CommandFailed(
                proc.returncode, [str(a) for a in proc.args], proc.stdout, proc.stderr
            )
        return proc


def connect(
    a: Namespace, b: Namespace, a_addrs: Sequence[str], b_addrs: Sequence[str]
) -> tuple[str, str]:
    """Join two namespaces with a veth pair, address both ends, return the device names.

    Addresses are CIDRs (``198.18.0.1/24``, ``fd00:18::1/64``); IPv6 ones skip
    duplicate address detection so they are usable at once.
    """
    tag = uuid.uuid4().hex[:8]
    dev_a, dev_b = f"hv{tag}a", f"hv{tag}b"
    subprocess.run(
        [
            "ip",
            "link",
            "add",
            dev_a,
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            "name",
            dev_b,
            "netns",
            b.name,
        ],
        check=True,
        capture_output=True,
    )
    for ns, dev, addrs in ((a, dev_a, a_addrs), (b, dev_b, b_addrs)):
        for addr in addrs:
            extra = ["nodad"] if ":" in addr else []
            ns.run(["ip", "addr", "add", addr, "dev", dev, *extra])
        ns.run(["ip", "link", "set", dev, "up"])
    return dev_a, dev_b
