"""The side effects of applying: one module per firewall backend, one small interface."""

from __future__ import annotations

from typing import Protocol

from harden.core.render import Backend


class Firewall(Protocol):
    """What the apply path needs from a backend. Snapshots are opaque text."""

    @property
    def name(self) -> Backend:
        """The backend's name."""

    def check(self, files: dict[str, str]) -> None:
        """Raise ApplyError if the kernel would refuse the ruleset; change nothing."""

    def snapshot(self) -> str:
        """Harden's own live rules, enough to restore them exactly ("" if none)."""

    def load(self, files: dict[str, str]) -> None:
        """Replace harden's rules with the ruleset in one transaction."""

    def restore(self, snapshot: str) -> None:
        """Put back what ``snapshot`` captured (remove harden's rules if it is empty)."""

    def live(self) -> str:
        """Harden's live rules in canonical form, without counter values."""

    def canonical(self, files: dict[str, str]) -> str:
        """The canonical form ``live()`` would show once the ruleset is loaded."""


def firewall(backend: Backend) -> Firewall:
    """The backend implementation for a name."""
    if backend == "nftables":
        from harden.apply.backends.nft import NftFirewall

        return NftFirewall()
    from harden.apply.backends.iptables import IptablesFirewall

    return IptablesFirewall()
