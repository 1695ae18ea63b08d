"""Boot persistence: harden's own unit loads harden's own rules, and it is enabled.

One unit, ``harden.service``, for both backends, ordered before ``network-pre.target``
and wanted by ``sysinit.target`` (as Debian's nftables.service is), so the rules are in
place before any interface comes up. It loads only harden's table or chains: Debian's
``/etc/nftables.conf`` starts with ``flush ruleset``, and enabling nftables.service to
load harden's file would also wipe Docker's and libvirt's tables at every restart.

Persisting one backend removes the other backend's boot files: both loading at boot
would make either one's drop final, and a manifest that moved SSH to another network
would lock the operator out after a reboot. docs/design.md, "Idempotence and persistence".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harden.core.types import Backend
from harden.errors import StateError
from harden.files import write_atomic

HARDEN_ETC = Path("etc/harden")
RULE_FILES: dict[Backend, tuple[str, ...]] = {
    "nftables": ("harden.nft",),
    "iptables": ("harden.rules.v4", "harden.rules.v6"),
}
UNIT = Path("etc/systemd/system/harden.service")
WANTS = Path("etc/systemd/system/sysinit.target.wants/harden.service")
NFT_CONF = Path("etc/nftables.conf")
# iptables backend: dockerd inserts its FORWARD rules ahead of harden's jump each time it
# starts (after harden.service, at boot). This drop-in moves harden's forward check into
# DOCKER-USER, which Docker keeps first, once dockerd is up: what apply does on a host
# where Docker runs. Ignored by systemd where Docker is not installed.
DOCKER_DROPIN = Path("etc/systemd/system/docker.service.d/harden.conf")
_DOCKER_DROPIN_TEXT = """\
# Written by harden apply --persist (iptables backend): Docker inserts its FORWARD rules
# ahead of harden's jump when it starts; harden's forward check moves into DOCKER-USER,
# which Docker keeps first. docs/design.md, "Idempotence and persistence".
[Service]
ExecStartPost=-/bin/sh -c '{tool} -n -L HARDEN-FORWARD >/dev/null 2>&1 || exit 0; \\
  {tool} -n -L DOCKER-USER >/dev/null 2>&1 || exit 0; \\
  {tool} -C DOCKER-USER -j HARDEN-FORWARD 2>/dev/null || \\
  {tool} -I DOCKER-USER 1 -j HARDEN-FORWARD; \\
  while {tool} -D FORWARD -j HARDEN-FORWARD 2>/dev/null; do :; done'
"""
# What earlier versions added to Debian's nftables.conf; removed on the next persist.
OLD_INCLUDE = ("# added by harden", 'include "/etc/harden/harden.nft"')

_HEAD = """\
# Written by harden apply --persist: loads harden's own rules at boot, nothing else.
[Unit]
Description=harden firewall ({what})
DefaultDependencies=no
Before=network-pre.target shutdown.target
Wants=network-pre.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
"""
_TAIL = """
[Install]
WantedBy=sysinit.target
"""
# firewalld's iptables backend flushes every chain of the filter tables as it loads its
# own: harden's chains load after it. firewalld runs before network-pre.target, so this
# keeps harden there too; without firewalld the ordering is void. firewalld counts as
# started once it holds its D-Bus name, before its rules are in: the unit also waits (up
# to 10 s) until firewall-cmd --state says it is running.
_AFTER: dict[Backend, str] = {"nftables": "", "iptables": "After=firewalld.service\n"}
_WAIT_FIREWALLD = (
    "ExecStartPre=/bin/sh -c 'systemctl -q is-active firewalld.service || exit 0; i=0;"
    " until firewall-cmd --state >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 100 ] && exit 0;"
    " sleep 0.1; done'"
)


_EXEC: dict[Backend, tuple[str, ...]] = {
    # The file declares, deletes and recreates table inet harden: one transaction that
    # touches no other table.
    "nftables": ("ExecStart=/usr/sbin/nft -f /etc/harden/harden.nft",),
    "iptables": (
        _WAIT_FIREWALLD,
        "ExecStart=/usr/sbin/iptables-restore --noflush /etc/harden/harden.rules.v4",
        "ExecStart=/usr/sbin/ip6tables-restore --noflush /etc/harden/harden.rules.v6",
        "ExecStart=/bin/sh -c 'iptables -C INPUT -j HARDEN-INPUT"
        " || iptables -I INPUT 1 -j HARDEN-INPUT'",
        "ExecStart=/bin/sh -c 'ip6tables -C INPUT -j HARDEN-INPUT"
        " || ip6tables -I INPUT 1 -j HARDEN-INPUT'",
        "ExecStart=/bin/sh -c 'iptables -C FORWARD -j HARDEN-FORWARD"
        " || iptables -I FORWARD 1 -j HARDEN-FORWARD'",
        "ExecStart=/bin/sh -c 'ip6tables -C FORWARD -j HARDEN-FORWARD"
        " || ip6tables -I FORWARD 1 -j HARDEN-FORWARD'",
        # Egress: only a ruleset that restricts it has HARDEN-OUTPUT.
        "ExecStart=/bin/sh -c 'iptables -n -L HARDEN-OUTPUT >/dev/null 2>&1 || exit 0;"
        " iptables -C OUTPUT -j HARDEN-OUTPUT || iptables -I OUTPUT 1 -j HARDEN-OUTPUT'",
        "ExecStart=/bin/sh -c 'ip6tables -n -L HARDEN-OUTPUT >/dev/null 2>&1 || exit 0;"
        " ip6tables -C OUTPUT -j HARDEN-OUTPUT || ip6tables -I OUTPUT 1 -j HARDEN-OUTPUT'",
    ),
}


def unit_text(backend: Backend) -> str:
    """The harden.service unit that loads ``backend``'s boot files."""
    what = "table inet harden" if backend == "nftables" else "iptables chains HARDEN-*"
    head = _HEAD.format(what=what).replace(
        "Wants=network-pre.target\n", "Wants=network-pre.target\n" + _AFTER[backend]
    )
    return head + "\n".join(_EXEC[backend]) + "\n" + _TAIL


def docker_dropin_text() -> str:
    """The docker.service drop-in of the iptables backend (IPv4 and IPv6 lines)."""
    head, _, line = _DOCKER_DROPIN_TEXT.partition("ExecStartPost=")
    return head + "".join(f"ExecStartPost={line.format(tool=t)}" for t in ("iptables", "ip6tables"))


def targets(root: Path) -> list[Path]:
    """Every regular file a persist may write or remove under ``root`` (both backends)."""
    rules = [root / HARDEN_ETC / name for names in RULE_FILES.values() for name in names]
    return [*rules, root / UNIT, root / NFT_CONF, root / DOCKER_DROPIN]


def install(backend: Backend, files: dict[str, str], root: Path) -> list[Path]:
    """Write ``backend``'s boot files, remove the other's, enable the unit; return what changed."""
    if set(files) != set(RULE_FILES[backend]):
        raise StateError(f"not an {backend} ruleset: {sorted(files)}")
    written = []
    for name, text in sorted(files.items()):
        path = root / HARDEN_ETC / name
        write_atomic(path, text, mode=0o644)
        written.append(path)
    for other, names in RULE_FILES.items():
        if other != backend:
            for name in names:
                stale = root / HARDEN_ETC / name
                if stale.exists():
                    stale.unlink()
                    written.append(stale)
    unit = root / UNIT
    write_atomic(unit, unit_text(backend), mode=0o644)
    written.append(unit)
    dropin = root / DOCKER_DROPIN
    if backend == "iptables":
        write_atomic(dropin, docker_dropin_text(), mode=0o644)
        written.append(dropin)
    elif dropin.is_file():
        dropin.unlink()
        written.append(dropin)
    written += _drop_old_include(root)
    written.append(enable(root))
    return written


def _drop_old_include(root: Path) -> list[Path]:
    """Take the include line earlier versions added out of Debian's nftables.conf."""
    conf = root / NFT_CONF
    if not conf.is_file():
        return []
    lines = conf.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() not in OLD_INCLUDE]
    if kept == lines:
        return []
    write_atomic(conf, "".join(kept).rstrip("\n") + "\n", mode=conf.stat().st_mode & 0o777)
    return [conf]


def enable(root: Path) -> Path:
    """Enable harden.service the way ``systemctl --root ROOT enable`` does: a wants link."""
    link = root / WANTS
    link.parent.mkdir(parents=True, exist_ok=True)
    target = f"/{UNIT}"
    if link.is_symlink() and str(link.readlink()) == target:
        return link
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)
    return link


def disable(root: Path) -> None:
    """Remove the wants link (what a rollback to "nothing persisted" needs)."""
    link = root / WANTS
    if link.is_symlink():
        link.unlink()


def read_rules(root: Path, backend: Backend) -> dict[str, str]:
    """``backend``'s boot rule files under ``root``, by name (as render() returns them)."""
    return {name: (root / HARDEN_ETC / name).read_text() for name in RULE_FILES[backend]}


def present(root: Path) -> bool:
    """Whether any of harden's boot files (either backend's rules, or the unit) is under root."""
    rules = [root / HARDEN_ETC / name for names in RULE_FILES.values() for name in names]
    return any(path.is_file() for path in (*rules, root / UNIT))


def uninstall(root: Path) -> list[Path]:
    """Remove every boot file harden wrote under ``root``; return what was removed.

    Both backends' rule files, the unit, its wants link and the nftables.conf include of
    earlier versions. Nothing else is touched: other units, the rest of nftables.conf.
    """
    removed = []
    rules = [root / HARDEN_ETC / name for names in RULE_FILES.values() for name in names]
    for path in (*rules, root / UNIT, root / WANTS, root / DOCKER_DROPIN):
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(path)
    return removed + _drop_old_include(root)


def describe(root: Path) -> dict[str, Any]:
    """What loads at boot under ``root``: the backend whose files are there, and if enabled."""
    found = [
        backend
        for backend, names in RULE_FILES.items()
        if all((root / HARDEN_ETC / name).is_file() for name in names)
    ]
    unit = (root / UNIT).is_file()
    enabled = unit and (root / WANTS).is_symlink()
    conf = root / NFT_CONF
    old_include = conf.is_file() and OLD_INCLUDE[1] in conf.read_text().splitlines()
    return {
        "root": str(root),
        "backends": found,
        "unit": unit,
        "enabled": enabled,
        "loads_at_boot": bool(found) and enabled and len(found) == 1,
        "nftables_conf_include": old_include,
    }
