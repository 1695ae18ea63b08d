"""Make the applied ruleset survive a reboot (files under ``root``, default /)."""

from __future__ import annotations

from pathlib import Path

from harden.apply.state import write_atomic
from harden.core.render import IPT_FILES, NFT_FILE, Backend

NFT_CONF = Path("etc/nftables.conf")
HARDEN_ETC = Path("etc/harden")
UNIT = Path("etc/systemd/system/harden.service")

UNIT_TEXT = """\
# Written by harden apply --persist: restores harden's iptables chains at boot.
[Unit]
Description=harden firewall (iptables chains HARDEN-*)
DefaultDependencies=no
Before=network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/iptables-restore --noflush /etc/harden/harden.rules.v4
ExecStart=/usr/sbin/ip6tables-restore --noflush /etc/harden/harden.rules.v6
ExecStart=/bin/sh -c 'iptables -C INPUT -j HARDEN-INPUT || iptables -I INPUT 1 -j HARDEN-INPUT'
ExecStart=/bin/sh -c 'ip6tables -C INPUT -j HARDEN-INPUT || ip6tables -I INPUT 1 -j HARDEN-INPUT'

[Install]
WantedBy=multi-user.target
"""


def persist(files: dict[str, str], backend: Backend, root: Path) -> list[Path]:
    """Install the ruleset for boot; return the files written.

    nftables: /etc/harden/harden.nft, included from Debian's /etc/nftables.conf (loaded
    by nftables.service). iptables: the restore files and a harden.service unit.
    Enabling the service is left to the operator (``systemctl enable ...``).
    """
    written: list[Path] = []
    for name, text in files.items():
        path = root / HARDEN_ETC / name
        write_atomic(path, text, mode=0o644)
        written.append(path)
    if backend == "nftables":
        conf = root / NFT_CONF
        include = f'include "/{HARDEN_ETC / NFT_FILE}"'
        current = conf.read_text() if conf.exists() else "#!/usr/sbin/nft -f\n"
        if include not in current.splitlines():
            write_atomic(
                conf, current.rstrip("\n") + f"\n\n# added by harden\n{include}\n", mode=0o755
            )
            written.append(conf)
    else:
        assert set(files) == set(IPT_FILES.values())
        write_atomic(root / UNIT, UNIT_TEXT, mode=0o644)
        written.append(root / UNIT)
    return written
