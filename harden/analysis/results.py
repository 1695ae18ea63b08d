"""What ``harden analyze`` and ``harden explain`` report, and the manifest's expectations (pure).

``Analysis`` holds the matrix rows of the hooks analysed and, with a manifest, what the
live ruleset gives beyond it (static leaks) or withholds from it (declared services
blocked). docs/design.md, "Reading the live ruleset".
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network, summarize_address_range
from typing import Any

from harden.analysis.engine import Decision, Packet
from harden.analysis.matrix import LOOPBACK, Cuts, Expect, Row, any_peer, matrix
from harden.analysis.model import Ruleset
from harden.errors import ExitStatus
from harden.manifest.ports import PortRange, merge
from harden.policy.model import Policy
from harden.types import Address, Network, Proto

SCHEMA = "harden.analysis/1"


LINK_LOCAL = ip_network("fe80::/10")
BROADCAST = ip_address("255.255.255.255")


def manifest_cuts(policy: Policy, hook: str) -> Cuts:
    """The manifest's own constants: its rows line up with the live rules' cells.

    Its port ranges, and the DHCP ports and addresses its expectation reads, so that the
    manifest too answers alike for every packet of a cell.
    """
    if hook == "input":
        ranges = [r for a in policy.allows for r in a.ports]
        nets = {n for a in policy.allows for f in (4, 6) for n in a.sources[f] or ()}
        dhcp = {(547, 546)} if policy.dhcpv6 else set()
        nets |= {LINK_LOCAL} if policy.dhcpv6 else set()
    elif policy.egress == "accept":
        return Cuts()  # the manifest says nothing of what leaves the host
    else:
        ranges = [r for o in policy.outbound for r in o.ports]
        nets = {n for o in policy.outbound for f in (4, 6) for n in o.destinations[f] or ()}
        dhcp = {(68, 67), (546, 547)}
        nets |= {ip_network(a) for a in (BROADCAST, *policy.dhcp_servers)}
    ports = {(r.first, r.last) for r in ranges} | {(d, d) for _, d in dhcp}
    return Cuts(
        frozenset(ports), frozenset(s for s, _ in dhcp), frozenset(nets), frozenset(policy.trusted)
    )


def expectation(policy: Policy, hook: str) -> Expect:
    """Whether the manifest allows a packet (input: accepts it; output: lets it out).

    Asked with all of the packet but its destination port, it answers with a test of that
    port: a matrix asks once per peer, source port and interface, then of every port cell.
    None for a packet no interface but loopback carries (from 127.0.0.0/8 or ::1 on the
    wire): no sender can make one, so it is no exposure, and harden drops it anyway.
    """

    @lru_cache(maxsize=1024)
    def trusted(iface: str) -> bool:
        return any(
            iface.startswith(t[:-1]) if t.endswith("*") else iface == t for t in policy.trusted
        )

    def ranges(peer: Address, proto: Proto) -> tuple[PortRange, ...]:
        if hook == "input":
            return tuple(rng for rng, _ in policy.allowed_from(peer, proto))
        return tuple(rng for o in policy.outbound if o.reaches(peer, proto) for rng in o.ports)

    def test(proto: Proto, sport: int, peer: Address, iface: str) -> Callable[[int], bool | None]:
        if hook == "input" and peer.is_loopback:
            return lambda port: None
        if hook == "output" and policy.egress == "accept":
            return lambda port: None  # the manifest says nothing of what leaves the host
        if trusted(iface):
            return lambda port: True
        dhcp = (_dhcp_in if hook == "input" else _dhcp_out)(policy, proto, sport, peer)
        merged = merge((*ranges(peer, proto), *(PortRange(p, p) for p in dhcp)))
        firsts, lasts = [r.first for r in merged], [r.last for r in merged]

        def allowed(port: int) -> bool:
            at = bisect_right(firsts, port) - 1
            return at >= 0 and port <= lasts[at]

        return allowed

    return test


def _dhcp_in(policy: Policy, proto: Proto, sport: int, peer: Address) -> tuple[int, ...]:
    """DHCPv6 replies (policy.dhcpv6): udp 547 -> 546 from a link-local address."""
    if policy.dhcpv6 and (proto, sport) == ("udp", 547) and peer in LINK_LOCAL:
        return (546,)
    return ()


def _dhcp_out(policy: Policy, proto: Proto, sport: int, peer: Address) -> tuple[int, ...]:
    """The DHCP client's own requests (egress.dhcp; DHCPv6 with it or policy.dhcpv6)."""
    if (proto, sport) == ("udp", 68) and peer.version == 4:
        server = peer == BROADCAST or peer in policy.dhcp_servers
        return (67,) if policy.egress_dhcp and server else ()
    if (proto, sport) == ("udp", 546) and peer.version == 6:
        return (547,) if policy.ipv6 and (policy.egress_dhcp or policy.dhcpv6) else ()
    return ()


def judged_rows(
    ruleset: Ruleset,
    hooks: tuple[str, ...],
    policy: Policy | None,
    progress: Callable[[str, int], None] = lambda what, cells: None,
) -> list[Row]:
    """Every hook's matrix; with ``policy``, cut at its constants and judged by it."""
    rows: list[Row] = []
    for hook in hooks:
        if policy is None:
            rows += matrix(ruleset, hook, progress=progress)
        else:
            cuts, expect = manifest_cuts(policy, hook), expectation(policy, hook)
            rows += matrix(ruleset, hook, cuts, expect, progress)
    return rows


@dataclass
class Analysis:
    """The exposure matrix of the hooks analysed, compared with a manifest if one was given."""

    hooks: tuple[str, ...]
    rows: list[Row]
    manifest: str | None = None
    # Reasons every row is uncertain (rules nft cannot show, such as iptables-legacy).
    unknown: list[str] = field(default_factory=list)
    # What the host's settings expose beyond the rows (model.host_notes).
    notes: list[str] = field(default_factory=list)

    @property
    def shown(self) -> list[Row]:
        """The rows that are not a plain drop."""
        return [r for r in self.rows if r.verdict != "drop" or r.expected]

    @property
    def leaks(self) -> list[Row]:
        """Accepted, but the manifest declares nothing there."""
        return [r for r in self.rows if r.expected is False and r.verdict == "accept"]

    @property
    def blocked(self) -> list[Row]:
        """Declared, but a rule drops or rejects it."""
        return [r for r in self.rows if r.expected and r.verdict in ("drop", "reject")]

    @property
    def uncertain(self) -> list[Row]:
        """Cells the model cannot decide."""
        return [r for r in self.rows if r.verdict == "unknown"]

    @property
    def exit_status(self) -> ExitStatus:
        """0 without a manifest; with one, 5, 1, 5, 0 in this order of precedence.

        5 when a rule could not be read (it may change any row, a leak's too); else 1 a
        leak or a blocked service; 5 only undecided cells; 0 none.
        """
        if self.manifest is None:
            return ExitStatus.OK
        if self.unknown:
            return ExitStatus.INCONCLUSIVE  # rules it could not read may change any row
        if self.leaks or self.blocked:
            return ExitStatus.FAILED
        if self.uncertain:
            return ExitStatus.INCONCLUSIVE
        return ExitStatus.OK

    def to_json(self) -> dict[str, Any]:
        """Schema ``harden.analysis/1``: the rows that are not a plain drop."""
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "hooks": list(self.hooks),
            "rows": [r.to_json() for r in self.shown],
            "unknown": list(self.unknown),
            "notes": list(self.notes),
        }
        if self.manifest is not None:
            out["manifest"] = self.manifest
            out["leaks"] = [r.to_json() for r in self.leaks]
            out["blocked"] = [r.to_json() for r in self.blocked]
        return out

    def to_text(self) -> str:
        """One line per row that is not a plain drop, then the findings against the manifest."""
        lines = [row_text(r) for r in self.shown] or ["every new packet is dropped"]
        lines += [f"unknown: {reason}" for reason in self.unknown]
        lines += [f"note: {note}" for note in self.notes]
        if self.manifest is not None:
            lines += [f"LEAK: {row_text(r)}" for r in self.leaks]
            lines += [
                f"BLOCKED: declared {_what(r)} is {_PAST[r.verdict]} by {_by(r)}"
                for r in self.blocked
            ]
            verdict = {0: "matches", 1: "does not match", 5: "cannot be decided against"}[
                int(self.exit_status)
            ]
            lines.append(f"the live ruleset {verdict} {self.manifest}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The rows as a markdown table (for a pull request or a ticket)."""
        head = "| hook | family | proto | dports | sports | peers | interface | verdict | rules |"
        lines = [head, "|" + "---|" * 9]
        for r in self.shown:
            j = r.to_json()
            peers = j.get("sources", j.get("destinations"))
            iface = j.get("iifname", j.get("oifname"))
            rules = "; ".join(f"{x['table']} {x['chain']} #{x['handle']}" for x in j["rules"])
            lines.append(
                f"| {r.hook} | {j['family']} | {r.proto} | {j['dports']} | {j['sports']} | "
                f"{_short(peers)} | {_short(iface)} | {r.verdict} | {rules} |"
            )
        return "\n".join(lines) + "\n"


_PAST = {"drop": "dropped", "reject": "rejected"}


def _short(value: Any) -> str:
    return value if isinstance(value, str) else ", ".join(value)


def _peers(row: Row) -> str:
    """The row's addresses, or "any except ..." when that is shorter."""
    if not row.peers:
        return "none"
    if any_peer(row.peers, row.family, row.hook):
        return "any"
    # On input, loopback addresses are in no cell: "any" never needs to except them.
    taken = (*row.peers, *(LOOPBACK if row.hook == "input" else ()))
    spans = sorted(
        (int(n.network_address), int(n.broadcast_address)) for n in taken if n.version == row.family
    )
    rest: list[Network] = []
    start, top = 0, (2**32 if row.family == 4 else 2**128) - 1
    for lo, hi in spans:  # the gaps between the row's addresses, in one pass
        if lo > start:
            rest += _span(start, lo - 1, row.family)
        start = max(start, hi + 1)
        if len(rest) >= len(row.peers):
            break
    if start <= top:
        rest += _span(start, top, row.family)
    if len(rest) < len(row.peers):
        return "any except " + ", ".join(str(n) for n in rest)
    return ", ".join(map(str, row.peers))


def _span(lo: int, hi: int, family: int) -> list[Network]:
    kind = IPv4Address if family == 4 else IPv6Address
    return list(summarize_address_range(kind(lo), kind(hi)))


def _what(row: Row) -> str:
    return f"{row.proto}/{','.join(str(p) for p in row.dports)} ({row.hook}, ipv{row.family})"


def _by(row: Row) -> str:
    last = row.decision.rules[-1] if row.decision.rules else None
    if last is None:
        return "an unknown rule"
    what = "the policy of" if last.handle == 0 else f"rule {last.handle} of"
    return f"{what} {last.family} {last.table} {last.chain}"


def row_text(row: Row) -> str:
    """One row as a line: what it holds, its verdict, the rules that decided it."""
    j = row.to_json()
    iface = j.get("iifname", j.get("oifname"))
    where = "from" if row.hook == "input" else "to"
    text = (
        f"{row.hook} ipv{row.family} {row.proto} dport {j['dports']} sport {j['sports']} "
        f"{where} {_peers(row)} via {_short(iface)}: {row.verdict.upper()}"
    )
    if j["rules"]:
        text += " by " + "; ".join(
            f"{x['table']} {x['chain']} #{x['handle']} ({x['rule']})" for x in j["rules"]
        )
    if row.decision.keyed:
        text += f" [keyed on {', '.join(row.decision.keyed)}]"
    if row.decision.unknown:
        text += f" [unknown: {', '.join(row.decision.unknown)}]"
    return text


@dataclass(frozen=True)
class Explanation:
    """One packet's path through the base chains (``harden explain``)."""

    packet: Packet
    decision: Decision

    def to_json(self) -> dict[str, Any]:
        """``{"schema", "verdict", "packet", "path": [rules], "unknown", "keyed_on"}``."""
        p = self.packet
        return {
            "schema": "harden.explain/1",
            "verdict": self.decision.verdict,
            "packet": {
                "hook": p.hook, "family": f"ipv{p.family}", "proto": p.proto, "dport": p.dport,
                "sport": p.sport, "peer": str(p.peer), "iface": p.iface,
            },
            "path": [r.to_json() for r in self.decision.rules],
            "unknown": list(self.decision.unknown),
            "keyed_on": list(self.decision.keyed),
        }  # fmt: skip

    def to_text(self) -> str:
        """The rules that decided, in order, then the verdict."""
        lines = [
            f"  {r.family} {r.table} {r.chain} #{r.handle}: {r.text}" for r in self.decision.rules
        ]
        lines += [f"  unknown: {u}" for u in self.decision.unknown]
        lines += [f"  keyed on: {k}" for k in self.decision.keyed]
        p = self.packet
        where = f"from {p.peer}" if p.hook == "input" else f"to {p.peer}"
        verdict = self.decision.verdict.upper()
        lines.append(f"{p.proto}/{p.dport} {where} (sport {p.sport}, {p.iface}): {verdict}")
        return "\n".join(lines)
