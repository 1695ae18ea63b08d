"""Routes to targets, and proof of life at the link layer for a target on our link."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address

from harden.errors import EnvironmentProblem, OptionError
from harden.text import one_line
from harden.types import Address


@dataclass(frozen=True)
class Route:
    """How this host reaches a target: interface, source address, on-link or not."""

    target: Address
    dev: str
    source: Address
    on_link: bool = False  # no gateway: the target can be asked for at the link layer


def check_target(target: Address, option: str = "target") -> None:
    """Refuse what is not one host: multicast, unspecified, loopback (HardenError, exit 2)."""
    kind = None
    if target.is_multicast:
        kind = "a multicast address"
    elif target.is_unspecified:
        kind = "the unspecified address"
    elif target.is_loopback:
        kind = "a loopback address"
    elif isinstance(target, IPv4Address) and target == IPv4Address("255.255.255.255"):
        kind = "the broadcast address"
    if kind:
        raise OptionError(option, f"{target} is {kind}, not one host: nothing to verify")


def route_to(target: Address, option: str = "target") -> Route:
    """Ask the kernel which interface and source address reach ``target``."""
    check_target(target, option)
    args = ["ip", "-j", "-6" if target.version == 6 else "-4", "route", "get", str(target)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"no route to {target}: {one_line(proc.stderr)}")
    info = json.loads(proc.stdout)[0]
    kind = info.get("type", "unicast")
    if kind == "local" or info.get("dev") == "lo":
        raise OptionError(
            option,
            f"{target} is an address of this host: verify from another host (or namespace)",
        )
    if kind in ("broadcast", "multicast", "anycast"):
        raise OptionError(option, f"{target} is a {kind} address here, not one host")
    if kind != "unicast" or "dev" not in info or "prefsrc" not in info:
        raise EnvironmentProblem(f"no usable route to {target} (route type {kind})")
    return Route(target, info["dev"], ip_address(info["prefsrc"]), "gateway" not in info)


def link_probe(route: Route, tries: int = 3, timeout: float = 0.3) -> str | None:
    """Ask the link now whether anything holds the target's address: ARP, or ND over IPv6.

    The proof of life for an on-link host that drops every probe. Only an answer to a
    request sent now counts: a neighbour cache entry outlives the host it names
    (docs/design.md, "Proof of life"). Returns the evidence, or None (no answer, not on
    our link, or a link without link-layer addresses such as a tunnel).
    """
    if not route.on_link:
        return None
    proc = subprocess.run(
        ["ip", "-j", "link", "show", "dev", route.dev], capture_output=True, text=True, check=False
    )
    try:
        link = json.loads(proc.stdout)[0]
    except (ValueError, IndexError):
        return None
    mac = link.get("address")
    if link.get("link_type") != "ether" or not mac:
        return None
    from scapy.layers.l2 import ARP, Ether
    from scapy.sendrecv import srp1

    target, source = str(route.target), str(route.source)
    if route.target.version == 4:
        request = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=mac, psrc=source, pdst=target
        )
        what = "ARP reply"
    else:
        from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
        from scapy.utils6 import in6_getnsma, in6_getnsmac

        group = in6_getnsma(socket.inet_pton(socket.AF_INET6, target))
        request = (
            Ether(src=mac, dst=in6_getnsmac(group))
            / IPv6(src=source, dst=socket.inet_ntop(socket.AF_INET6, group), hlim=255)
            / ICMPv6ND_NS(tgt=target)
            / ICMPv6NDOptSrcLLAddr(lladdr=mac)
        )
        what = "neighbour advertisement"
    answer = srp1(request, iface=route.dev, timeout=timeout, retry=tries - 1, verbose=False)
    if answer is None:
        return None
    return f"alive at the link layer only ({what} from {answer[Ether].src} on {route.dev})"


@dataclass(frozen=True)
class Neighbours:
    """The kernel's neighbour entries at one moment: (device, address) -> (lladdr, confirmed at).

    ``ip`` gives each entry's age since its last confirmation in whole seconds, rounded
    down, so "confirmed at" is known to within a second: the latest moment it can have been.
    """

    entries: dict[tuple[str, str], tuple[str, float]]

    @classmethod
    def now(cls) -> Neighbours:
        """Read every neighbour entry with a link-layer address."""
        asked = time.monotonic()
        proc = subprocess.run(
            ["ip", "-s", "-j", "neigh", "show"], capture_output=True, text=True, check=False
        )
        try:
            found = json.loads(proc.stdout or "[]")
        except ValueError:
            found = []
        entries = {}
        for entry in found:
            confirmed = entry.get("confirmed")
            if entry.get("lladdr") and entry.get("dev") and isinstance(confirmed, int):
                key = (str(entry["dev"]), str(ip_address(entry["dst"])))
                entries[key] = (str(entry["lladdr"]), asked - confirmed)
        return cls(entries)


def neighbour_confirmed(route: Route, before: Neighbours) -> str | None:
    """Proof of life from the kernel's neighbour entry, if an answer confirmed it since ``before``.

    For a prober without raw sockets, which cannot send ARP itself: its own probes made
    the kernel resolve the target. An entry that did not exist before the run, or whose
    last confirmation is surely later than the one it had then, was answered during the
    run; an entry that is merely still there is history (docs/design.md, "Proof of life").
    """
    if not route.on_link:
        return None
    key = (route.dev, str(route.target))
    after = Neighbours.now().entries.get(key)
    if after is None:
        return None
    lladdr, confirmed = after
    old = before.entries.get(key)
    # ``confirmed`` is at most a second later than the real moment (ages are rounded down).
    if old is not None and confirmed - 1 <= old[1]:
        return None
    return (
        f"alive at the link layer only (neighbour {lladdr} on {route.dev}, "
        "resolved during this run)"
    )
