"""Firewall backends as plug-ins: one ``BackendSpec`` each, registered here.

Everything else asks this registry: the CLI's choices, render, the boot unit, the apply
path. Adding a backend is one package under ``harden/backends/`` with a ``SPEC`` and one
line below (docs/contributing.md, "Adding a backend"). docs/design.md, "One transaction,
harden's own table only", says what each backend promises.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, cast

from harden.backends import iptables, nftables
from harden.backends.spec import BackendSpec
from harden.errors import RenderError
from harden.policy.model import MAX_KEY, Policy

__all__ = [
    "REGISTRY",
    "BackendSpec",
    "Firewall",
    "firewall",
    "names",
    "others",
    "register",
    "render",
    "spec",
]


class Firewall(Protocol):
    """What the apply path needs from a backend. Snapshots are opaque text."""

    name: str
    # True: load() is one kernel transaction. False (iptables): one per address family;
    # if the second family fails at commit, the first is put back before load() raises.
    atomic: bool

    def render(self, policy: Policy) -> dict[str, str]:
        """The ruleset files for this backend: file name -> text (pure)."""
        ...

    def check(self, files: dict[str, str]) -> str:
        """Raise ApplyError if the kernel would refuse the ruleset; change nothing.

        Returns the canonical form ``live()`` will show once the files are loaded.
        """
        ...

    def load(self, files: dict[str, str]) -> None:
        """Replace harden's rules with checked ``files``; on failure nothing changed."""
        ...

    def snapshot(self) -> str:
        """Harden's own live rules, enough to restore them exactly ("" if none)."""
        ...

    def restore(self, snapshot: str) -> None:
        """Put back what ``snapshot`` captured (remove harden's rules if it is empty)."""
        ...

    def live(self) -> str:
        """Harden's live rules in canonical form, without counter values."""
        ...

    def counters(self) -> dict[str, int]:
        """Packets seen by harden's named counters (closed_*, witness_*); {} if none."""
        ...

    def identity(self) -> str | None:
        """What changes when harden's rules are replaced (None: nothing this backend shows)."""
        ...

    def persist_targets(self, root: Path) -> list[Path]:
        """The files ``persist`` writes under ``root`` (checked before anything loads)."""
        ...

    def persist(self, files: dict[str, str], root: Path) -> list[Path]:
        """Install ``files`` so they load at boot, under ``root``; return the files written."""
        ...


REGISTRY: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> None:
    """Add a backend; refuse one that cannot name every allow key a policy may hold."""
    if spec.key_max < MAX_KEY:
        raise ValueError(f"backend {spec.name}: names hold {spec.key_max} < {MAX_KEY} characters")
    REGISTRY[spec.name] = spec


register(nftables.SPEC)  # the default: one inet table for IPv4 and IPv6, loaded atomically
register(iptables.SPEC)


def names() -> tuple[str, ...]:
    """The registered backends' names, the default first."""
    return tuple(REGISTRY)


def spec(name: str) -> BackendSpec:
    """The spec of a registered backend (RenderError names the choices otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise RenderError(f"unknown backend {name!r} (choose from {', '.join(REGISTRY)})") from None


def render(policy: Policy, backend: str) -> dict[str, str]:
    """Render the policy for a backend: file name -> file text (pure)."""
    return spec(backend).render(policy)


def firewall(backend: str) -> Firewall:
    """The backend's kernel implementation (imported now, not before)."""
    module, _, name = spec(backend).firewall.partition(":")
    return cast(Firewall, getattr(importlib.import_module(module), name)())


def others(backend: str) -> tuple[str, ...]:
    """Every backend but ``backend`` (a switch removes their rules)."""
    return tuple(name for name in REGISTRY if name != backend)
