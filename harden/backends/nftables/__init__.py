"""The nftables backend: one ``table inet harden`` through libnftables (the default)."""

from __future__ import annotations

from harden.backends.nftables.rules import NFT_FILE, render
from harden.backends.spec import BackendSpec

SPEC = BackendSpec(
    name="nftables",
    summary="one inet table",
    owns="table inet harden",
    rule_files=(NFT_FILE,),
    render=render,
    firewall="harden.backends.nftables.firewall:NftFirewall",
    # Set and chain names are far longer; the policy's own cap is the limit.
    key_max=200,
    atomic=True,
    # The file declares, deletes and recreates table inet harden: one transaction that
    # touches no other table.
    boot_exec=(f"ExecStart=/usr/sbin/nft -f /etc/harden/{NFT_FILE}",),
    essential=True,
)
