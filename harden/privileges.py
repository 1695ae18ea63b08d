"""Whether this process may read and change the kernel's firewall (CAP_NET_ADMIN).

The kernel lists rulesets and counters, and loads rules, only for a process with
CAP_NET_ADMIN in the network namespace's user namespace: root on a host, or the root of
a user namespace it made (``unshare -rn``). Without it, libnftables fails with "cache
initialization failed", which reads like an empty or broken ruleset. A command that
needs the kernel asks first, so an unprivileged user (a monitoring account) gets exit 4
with what needs root and why, never a false "nothing applied" (docs/design.md, "Exit
codes").
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from harden.errors import EnvironmentProblem

CAP_NET_ADMIN = 12
P = ParamSpec("P")
R = TypeVar("R")


def effective_capabilities(status: str) -> int | None:
    """The CapEff mask of a /proc/PID/status text, or None if it has none."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    return None


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (root, or root of its user namespace)."""
    try:
        mask = effective_capabilities(Path("/proc/self/status").read_text())
    except OSError:
        mask = None
    if mask is None:
        return os.geteuid() == 0
    return bool(mask >> CAP_NET_ADMIN & 1)


def require_net_admin(command: str, why: str) -> None:
    """Exit 4 before ``command`` reaches the kernel or the state, if it cannot."""
    if not has_net_admin():
        raise EnvironmentProblem(
            f"{command} needs root (CAP_NET_ADMIN): {why}; run it as root "
            f"(sudo harden {command} ...)"
        )


def needs_net_admin(command: str, why: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``require_net_admin`` before the decorated function runs."""

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            require_net_admin(command, why)
            return func(*args, **kwargs)

        return checked

    return wrap
