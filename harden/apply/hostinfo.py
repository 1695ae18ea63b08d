"""Facts about this host: its ICMP error limits (for the witness), its other firewalls."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from harden.apply.others import EGRESS_HOOKS, HOOKS, BaseChain, blocked_declared, other_base_chains
from harden.errors import HardenError
from harden.policy.containers import Bridge, parse_bridges
from harden.policy.model import Policy

PROC_SYS = Path("/proc/sys/net")
DEST_UNREACH = {4: 3, 6: 1}  # the ICMP / ICMPv6 type of destination unreachable


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _in_mask6(text: str, kind: int) -> bool:
    """Whether ``kind`` is in an ICMPv6 rate mask such as ``0-1,3-127``."""
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if first.isdigit() and int(first) <= kind <= int(last or first):
            return True
    return False


def icmp_settings(root: Path = PROC_SYS) -> dict[str, Any]:
    """The ICMP error limits of this network namespace, per family (absent: not readable).

    ``ratelimit_ms`` is the per-peer refill interval, ``limits_unreachable`` whether
    destination-unreachable errors are rate-limited at all (the rate mask), and
    ``msgs_per_sec`` / ``msgs_burst`` the machine-wide limit both families share.
    """
    out: dict[str, Any] = {}
    per_sec, burst = _read(root / "ipv4/icmp_msgs_per_sec"), _read(root / "ipv4/icmp_msgs_burst")
    shared = {
        "msgs_per_sec": int(per_sec) if per_sec and per_sec.isdigit() else None,
        "msgs_burst": int(burst) if burst and burst.isdigit() else None,
    }
    rate4, mask4 = _read(root / "ipv4/icmp_ratelimit"), _read(root / "ipv4/icmp_ratemask")
    if rate4 is not None and rate4.isdigit():
        limited = mask4 is None or not mask4.isdigit() or bool(int(mask4) >> DEST_UNREACH[4] & 1)
        out["ipv4"] = {"ratelimit_ms": int(rate4), "limits_unreachable": limited, **shared}
    rate6, mask6 = _read(root / "ipv6/icmp/ratelimit"), _read(root / "ipv6/icmp/ratemask")
    if rate6 is not None and rate6.isdigit():
        limited = mask6 is None or _in_mask6(mask6, DEST_UNREACH[6])
        out["ipv6"] = {"ratelimit_ms": int(rate6), "limits_unreachable": limited, **shared}
    return out


def local_addresses() -> list[str]:
    """Every address of this network namespace (``ip -j address``), sorted.

    The witness reports them, so a verifier credits its counts only to targets that are
    this host's own addresses (docs/design.md, "Proof of life").
    """
    try:
        proc = subprocess.run(
            ["ip", "-j", "address", "show"], capture_output=True, text=True, check=True
        )
        links = json.loads(proc.stdout)
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        raise HardenError(f"cannot list this host's addresses (ip -j address): {exc}") from None
    found = {
        str(info["local"])
        for link in links
        for info in link.get("addr_info", [])
        if info.get("family") in ("inet", "inet6") and "local" in info
    }
    return sorted(found)


def container_bridges() -> list[Bridge]:
    """The container and VM bridges here (``ip -j address show type bridge``).

    Advisory (validate's and apply's warnings, init's proposal): none if ip fails.
    """
    try:
        proc = subprocess.run(
            ["ip", "-j", "address", "show", "type", "bridge"],
            capture_output=True, text=True, check=True, timeout=10,
        )  # fmt: skip
        return parse_bridges(json.loads(proc.stdout or "[]"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def main_routes() -> list[dict[str, str]]:
    """The main routing table of both families, as ``{"dst", "dev"}``.

    The analysis reads it to know where a destination-NATed packet is sent; "default" is
    written 0.0.0.0/0 or ::/0.
    """
    out = []
    for flag, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        try:
            proc = subprocess.run(
                ["ip", "-j", flag, "route", "show", "table", "main"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            routes = json.loads(proc.stdout or "[]")
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            raise HardenError(f"cannot read this host's routes (ip -j route): {exc}") from None
        for route in routes:
            if "dev" in route and route.get("type", "unicast") == "unicast":
                dst = str(route.get("dst", "default"))
                out.append({"dst": default if dst == "default" else dst, "dev": str(route["dev"])})
    return out


def other_firewalls(policy: Policy | None = None) -> tuple[list[BaseChain], list[str]]:
    """The base chains of other firewalls on harden's hooks, and warnings about them.

    Warnings: a declared port one of them drops (static look, with ``policy``), and
    iptables-legacy rules, which live outside nftables where ``nft`` cannot see them.
    Nothing here changes the host.
    """
    from harden.backends.nftables.firewall import NftFirewall

    warnings: list[str] = []
    try:
        ruleset = NftFirewall().ruleset(terse=True)  # named sets' elements: not needed
    except HardenError as exc:
        return [], [f"cannot list the other firewalls: {exc}"]
    egress = policy is not None and policy.egress != "accept"
    chains = other_base_chains(ruleset, EGRESS_HOOKS if egress else HOOKS)
    if policy is not None:
        warnings += blocked_declared(ruleset, policy)
    found = firewalld()
    if found is not None and found["backend"] == "iptables":
        warnings.append(FIREWALLD_IPTABLES)
    legacy = legacy_rules()
    if legacy:
        warnings.append(legacy_note(legacy))
    return chains, warnings


def legacy_note(rules: int) -> str:
    """What to say of rules in iptables-legacy: nft (and so harden's reading) cannot see them."""
    return (
        f"iptables-legacy holds {rules} rule(s) that nft cannot see; they filter too "
        "(iptables-legacy-save lists them)"
    )


def firewalld(root: Path = Path("/")) -> dict[str, Any] | None:
    """The configured backend of firewalld, and whether it is enabled or running (or None).

    Its iptables backend flushes every chain of the filter tables, harden's HARDEN-*
    included, whenever it starts or reloads; its nftables backend leaves harden's table
    alone (docs/design.md, "harden only narrows, on both backends").
    """
    conf = root / "etc/firewalld/firewalld.conf"
    if not conf.is_file():
        return None
    backend = "nftables"  # firewalld's default since 0.6
    for line in conf.read_text(errors="replace").splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "FirewallBackend" and value.strip():
            backend = value.strip()
    return {
        "backend": backend,
        "enabled": any((root / "etc/systemd/system").glob("*.wants/firewalld.service")),
        "running": (root / "run/firewalld").exists(),
    }


FIREWALLD_IPTABLES = (
    "firewalld is configured with FirewallBackend=iptables: it flushes harden's HARDEN-* "
    "iptables chains whenever it starts or reloads; use harden's nftables backend "
    "(firewalld's nftables backend leaves harden's table alone)"
)


def legacy_rules() -> int:
    """How many rules iptables-legacy and ip6tables-legacy hold (0 if not installed)."""
    count = 0
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        if shutil.which(tool) is None:
            continue
        proc = subprocess.run([tool], capture_output=True, text=True, check=False, timeout=30)
        count += sum(1 for line in proc.stdout.splitlines() if line.startswith("-A "))
    return count


def tool_versions() -> list[str]:
    """What a bug report needs: the backends' tools and libnftables, as found here.

    ``nft`` and ``iptables`` print their versions (iptables says whether it is the
    nf_tables or the legacy variant); libnftables is the Debian package the Python
    bindings load. Anything missing says so; nothing here changes the host.
    """
    lines = []
    for tool in ("nft", "iptables", "ip6tables"):
        path = shutil.which(tool)
        if path is None:
            lines.append(f"{tool}: not installed")
            continue
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, check=False, timeout=10
        )
        lines.append(f"{tool}: {(proc.stdout or proc.stderr).strip() or 'unknown version'}")
    lines.append(f"libnftables: {_package_version('libnftables1')}")
    try:
        import nftables  # noqa: F401  (Debian's python3-nftables)

        lines.append(f"python3-nftables: {_package_version('python3-nftables')}")
    except ImportError as exc:
        from harden.backends.nftables.firewall import bindings_missing

        lines.append(f"python3-nftables: not importable: {bindings_missing(str(exc))}")
    return lines


def _package_version(package: str) -> str:
    if shutil.which("dpkg-query") is None:
        return "unknown (no dpkg-query)"
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout else "not installed"


def nft_saves() -> dict[str, str]:
    """``iptables-nft-save`` and ``ip6tables-nft-save`` output, by nft family (ip, ip6).

    They print the options of the x_tables extensions nft shows by name only. A tool that
    is missing or fails leaves its family out: its extensions stay undecoded.
    """
    found = {}
    for tool, family in (("iptables-nft-save", "ip"), ("ip6tables-nft-save", "ip6")):
        try:
            proc = subprocess.run([tool], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0:
            found[family] = proc.stdout
    return found
