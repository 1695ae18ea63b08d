"""Throwaway network namespaces: the only place harden ever loads rules in tests and labs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from harden.errors import CommandFailed, EnvironmentProblem
from harden.text import one_line


def require_root(what: str) -> None:
    """Raise EnvironmentProblem unless we can create namespaces."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(f"{what} needs root (CAP_NET_ADMIN) to create network namespaces")
    if shutil.which("ip") is None:
        raise EnvironmentProblem(f"{what} needs the 'ip' command (Debian package iproute2)")


def unique_name(prefix: str) -> str:
    """A namespace name no parallel or aborted run will collide with."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


_OURS = re.compile(r"^(?P<prefix>[a-z0-9-]+)-(?P<pid>[0-9]+)-[0-9a-f]{6}$")


def _remove(name: str) -> None:
    """Kill every process in namespace ``name``, then delete it."""
    pids = subprocess.run(
        ["ip", "netns", "pids", name], check=False, capture_output=True, text=True
    ).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def reap(prefix: str) -> list[str]:
    """Remove the namespaces named ``prefix-...`` by unique_name whose run is gone.

    The run's process id is in the name: a namespace whose process no longer exists (a
    run killed outright, or a machine's crash) is removed with its processes; a live
    run's are left alone.
    """
    require_root("reaping lab namespaces")
    listed = subprocess.run(
        ["ip", "-j", "netns", "list"], check=False, capture_output=True, text=True
    ).stdout
    names = [str(entry["name"]) for entry in json.loads(listed or "[]")]
    gone = []
    for name in names:
        found = _OURS.match(name)
        if found is None or not name.startswith(prefix + "-"):
            continue
        if Path(f"/proc/{found['pid']}").exists():
            continue
        _remove(name)
        gone.append(name)
    return gone


class Namespace:
    """A network namespace created on enter and deleted on exit, pass or fail."""

    def __init__(self, prefix: str = "harden") -> None:
        self.name = unique_name(prefix)
        self._created = False

    def __enter__(self) -> Namespace:
        """Create the namespace and bring its loopback up."""
        require_root("a network namespace")
        made = subprocess.run(["ip", "netns", "add", self.name], capture_output=True, text=True)
        if made.returncode != 0:
            # A user namespace's "root" (rootless containers, CI runners without
            # CAP_SYS_ADMIN) passes the uid check but cannot mount /run/netns: ip says so.
            raise EnvironmentProblem(
                f"cannot create network namespace {self.name}: "
                f"{one_line(made.stderr, 300) or f'ip exited {made.returncode}'}"
            )
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
        """Delete the namespace if we created it; safe to call twice.

        Every process still in it ends first (a stand-in service, a rollback watchdog):
        deleting the name alone would leave them running.
        """
        if self._created:
            _remove(self.name)
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
