"""Firewall backends: each owns render, check, load, snapshot, restore and persist.

docs/design.md, "One transaction, harden's own table only", says what each promises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from harden.core.policy import Policy
from harden.core.types import Backend


class Firewall(Protocol):
    """What the apply path needs from a backend. Snapshots are opaque text."""

    name: Backend
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


def other(backend: Backend) -> Backend:
    """The backend that is not ``backend`` (a switch removes its rules)."""
    return "iptables" if backend == "nftables" else "nftables"


def firewall(backend: Backend) -> Firewall:
    """The backend implementation for a name."""
    if backend == "nftables":
        from harden.apply.backends.nft import NftFirewall

        return NftFirewall()
    from harden.apply.backends.iptables import IptablesFirewall

    return IptablesFirewall()
