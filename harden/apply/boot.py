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

from harden.backends import REGISTRY, spec
from harden.errors import StateError
from harden.files import write_atomic

HARDEN_ETC = Path("etc/harden")
UNIT = Path("etc/systemd/system/harden.service")
WANTS = Path("etc/systemd/system/sysinit.target.wants/harden.service")
NFT_CONF = Path("etc/nftables.conf")
# What earlier versions added to Debian's nftables.conf; removed on the next persist.
OLD_INCLUDE = ("# added by harden", 'include "/etc/harden/harden.nft"')

_HEAD = """\
# Written by harden apply --persist: loads harden's own rules at boot, nothing else.
[Unit]
Description=harden firewall ({what})
DefaultDependencies=no
Before=network-pre.target shutdown.target
Wants=network-pre.target
{after}Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
"""
_TAIL = """
[Install]
WantedBy=sysinit.target
"""


def unit_text(backend: str) -> str:
    """The harden.service unit that loads ``backend``'s boot files."""
    found = spec(backend)
    after = "".join(f"{line}\n" for line in found.boot_after)
    head = _HEAD.format(what=found.owns, after=after)
    return head + "\n".join(found.boot_exec) + "\n" + _TAIL


def _rule_paths(root: Path) -> list[Path]:
    """Every backend's rule files under ``root``."""
    return [root / HARDEN_ETC / name for found in REGISTRY.values() for name in found.rule_files]


def _extras(root: Path) -> list[Path]:
    """Every backend's other boot files (drop-ins) under ``root``."""
    return [root / name for found in REGISTRY.values() for name in found.boot_extras]


def targets(root: Path) -> list[Path]:
    """Every regular file a persist may write or remove under ``root`` (both backends)."""
    return [*_rule_paths(root), root / UNIT, root / NFT_CONF, *_extras(root)]


def _unlink_others(paths: list[Path], keep: list[Path]) -> list[Path]:
    """Remove the files of ``paths`` that are not in ``keep``; return those removed."""
    removed = []
    for path in paths:
        if path not in keep and path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def install(backend: str, files: dict[str, str], root: Path) -> list[Path]:
    """Write ``backend``'s boot files, remove the others', enable the unit; return what changed."""
    found = spec(backend)
    if set(files) != set(found.rule_files):
        raise StateError(f"not an {backend} ruleset: {sorted(files)}")
    written = []
    for name, text in sorted(files.items()):
        path = root / HARDEN_ETC / name
        write_atomic(path, text, mode=0o644)
        written.append(path)
    written += _unlink_others(_rule_paths(root), written)
    unit = root / UNIT
    write_atomic(unit, unit_text(backend), mode=0o644)
    written.append(unit)
    extras = []
    for name, text in found.boot_extras.items():
        write_atomic(root / name, text, mode=0o644)
        extras.append(root / name)
    written += extras + _unlink_others(_extras(root), extras)
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


def read_rules(root: Path, backend: str) -> dict[str, str]:
    """``backend``'s boot rule files under ``root``, by name (as render() returns them)."""
    return {name: (root / HARDEN_ETC / name).read_text() for name in spec(backend).rule_files}


def present(root: Path) -> bool:
    """Whether any of harden's boot files (either backend's rules, or the unit) is under root."""
    return any(path.is_file() for path in (*_rule_paths(root), root / UNIT))


def uninstall(root: Path) -> list[Path]:
    """Remove every boot file harden wrote under ``root``; return what was removed.

    Both backends' rule files, the unit, its wants link and the nftables.conf include of
    earlier versions. Nothing else is touched: other units, the rest of nftables.conf.
    """
    removed = []
    for path in (*_rule_paths(root), root / UNIT, root / WANTS, *_extras(root)):
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(path)
    return removed + _drop_old_include(root)


def describe(root: Path) -> dict[str, Any]:
    """What loads at boot under ``root``: the backend whose files are there, and if enabled."""
    found = [
        name
        for name, backend in REGISTRY.items()
        if all((root / HARDEN_ETC / file).is_file() for file in backend.rule_files)
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
