"""The nftables backend's ruleset file: one ``table inet harden`` transaction (pure)."""

from __future__ import annotations

from harden.backends.templating import environment
from harden.policy.model import Policy

NFT_FILE = "harden.nft"

_ENV = environment("harden.backends.nftables")


def render(policy: Policy) -> dict[str, str]:
    """``harden.nft``: declare, delete and recreate the table, in one file."""
    return {NFT_FILE: _ENV.get_template("nftables.nft.j2").render(p=policy)}
