"""The other firewalls on the host: base chains on harden's hooks, and what they drop (pure).

harden owns one table; ufw, firewalld, Docker, libvirt and kube-proxy add base chains of
their own on the same hooks, and in nftables a drop in any of them is final. From the
kernel's ruleset (``nft -j list ruleset``) this lists every base chain that is not
harden's on the input and forward hooks, names the manager where the names give it
away, and warns, as far as a static look can tell, when one drops a port the manifest
declares. The combined truth comes from outside: ``harden verify`` (and its witness).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harden.policy.model import Policy
from harden.types import Family, Proto

HOOKS = ("input", "forward")
# harden filters the output hook too when the manifest restricts egress.
EGRESS_HOOKS = (*HOOKS, "output")
HARDEN_TABLE = ("inet", "harden")
HARDEN_CHAINS = "HARDEN-"  # the iptables backend's chains, in the shared filter tables
MAX_DEPTH = 16  # jumps followed from a base chain (ufw nests three deep)


@dataclass(frozen=True)
class BaseChain:
    """One base chain of another table on a hook harden filters."""

    family: str
    table: str
    chain: str
    hook: str
    priority: int
    policy: str
    rules: int  # in the chain and every chain it jumps or goes to
    manager: str | None  # ufw, firewalld, Docker, libvirt, kube-proxy; None: unknown

    @property
    def label(self) -> str:
        """``ip filter INPUT (ufw): hook input, priority 0, policy drop, 42 rules``."""
        who = f" ({self.manager})" if self.manager else ""
        return (
            f"{self.family} {self.table} {self.chain}{who}: hook {self.hook}, priority "
            f"{self.priority}, policy {self.policy}, {self.rules} rule(s)"
        )

    def to_json(self) -> dict[str, Any]:
        """One entry of ``other_firewalls`` in status JSON."""
        return {
            "family": self.family,
            "table": self.table,
            "chain": self.chain,
            "hook": self.hook,
            "priority": self.priority,
            "policy": self.policy,
            "rules": self.rules,
            "manager": self.manager,
        }


def manager_of(table: str, chains: Iterable[str]) -> str | None:
    """Who made these chains of a table, from the names their tools give them.

    Every manager whose chains are there, in a fixed order ("ufw, Docker" for a FORWARD
    both jump from); None: cannot tell.
    """
    names = set(chains)
    found = []
    if table == "firewalld":
        found.append("firewalld")
    if table.startswith("libvirt") or any(n.startswith("LIBVIRT_") for n in names):
        found.append("libvirt")
    if table == "kube-proxy" or any(n.startswith("KUBE-") for n in names):
        found.append("kube-proxy")
    if any(n.startswith(("ufw-", "ufw6-")) for n in names):
        found.append("ufw")
    if any(n.startswith("DOCKER") for n in names):
        found.append("Docker")
    return ", ".join(found) or None


def other_base_chains(
    ruleset: Mapping[str, Any], hooks: tuple[str, ...] = HOOKS
) -> list[BaseChain]:
    """Every base chain on one of ``hooks`` that is not in harden's table."""
    chains = [i["chain"] for i in ruleset.get("nftables", []) if "chain" in i]
    rules = _rules(ruleset)
    out = []
    for c in chains:
        if c.get("hook") not in hooks or (c["family"], c["table"]) == HARDEN_TABLE:
            continue
        # harden's own iptables chains and the jumps to them are not another firewall.
        theirs = [
            n
            for n in _reachable(c["family"], c["table"], c["name"], rules)
            if not n.startswith(HARDEN_CHAINS)
        ]
        count = sum(
            1
            for n in theirs
            for expr in rules.get((c["family"], c["table"], n), [])
            if not _to_harden(expr)
        )
        policy = str(c.get("policy", "accept"))
        if count == 0 and policy == "accept":
            continue  # filters nothing: left by a backend switch, or only harden's jumps
        out.append(
            BaseChain(
                c["family"],
                c["table"],
                c["name"],
                c["hook"],
                int(c.get("prio", 0)),
                policy,
                count,
                manager_of(c["table"], theirs),
            )
        )
    return sorted(out, key=lambda b: (b.hook, b.priority, b.family, b.table, b.chain))


def _to_harden(expr: list[dict[str, Any]]) -> bool:
    """Whether a rule is a jump or goto to one of harden's iptables chains."""
    return any(
        str(part.get(verb, {}).get("target", "")).startswith(HARDEN_CHAINS)
        for part in expr
        if isinstance(part, dict)
        for verb in ("jump", "goto")
    )


Rules = dict[tuple[str, str, str], list[list[dict[str, Any]]]]


def _rules(ruleset: Mapping[str, Any]) -> Rules:
    """Each chain's rules (their expressions), by (family, table, chain)."""
    rules: Rules = {}
    for item in ruleset.get("nftables", []):
        rule = item.get("rule")
        if rule:
            key = (rule["family"], rule["table"], rule["chain"])
            rules.setdefault(key, []).append(rule.get("expr", []))
    return rules


def _reachable(family: str, table: str, start: str, rules: Rules) -> list[str]:
    """``start`` and the chains it jumps or goes to (same table), in order, each once."""
    seen, todo = [start], [(start, 0)]
    while todo:
        name, depth = todo.pop(0)
        if depth >= MAX_DEPTH:
            continue
        for expr in rules.get((family, table, name), []):
            for part in expr:
                for verb in ("jump", "goto"):
                    target = part.get(verb, {}).get("target") if isinstance(part, dict) else None
                    if target and target not in seen:
                        seen.append(target)
                        todo.append((target, depth + 1))
    return seen


def blocked_declared(ruleset: Mapping[str, Any], policy: Policy) -> list[str]:
    """Warnings for declared ports another firewall drops, as far as a static look can tell.

    A rule that matches a declared port (``tcp dport 443``, a range or a set of ports)
    and drops or rejects it, in a foreign base chain on the input hook or any chain it
    reaches. What depends on addresses, marks or state is not looked into: verify is the
    judge of the combined result.
    """
    rules = _rules(ruleset)
    families: dict[str, tuple[Family, ...]] = {"ip": (4,), "ip6": (6,), "inet": (4, 6)}
    warnings: list[str] = []
    for chain in other_base_chains(ruleset):
        if chain.hook != "input" or chain.family not in families:
            continue
        # Only what the manifest serves over this chain's family (ipv6: false serves none).
        ranges = [
            (a.proto, r.first, r.last)
            for a in policy.allows
            if any(a.allows_family(f) for f in families[chain.family])
            for r in a.ports
        ]
        for name in _reachable(chain.family, chain.table, chain.chain, rules):
            for expr in rules.get((chain.family, chain.table, name), []):
                verdict = _final_verdict(expr)
                if verdict is None:
                    continue
                for proto, ports in _dport_matches(expr):
                    hit = sorted(
                        {
                            p
                            for q, first, last in ranges
                            if q == proto
                            for p in ports
                            if first <= p <= last
                        }
                    )
                    if hit:
                        where = f"{chain.family} {chain.table} {name}"
                        who = f" ({chain.manager})" if chain.manager else ""
                        shown = ", ".join(f"{proto}/{p}" for p in hit[:5])
                        warnings.append(
                            f"{where}{who} {verdict}s declared {shown}: a drop in any "
                            "firewall is final, so the port stays closed"
                        )
    return sorted(set(warnings))


def _final_verdict(expr: list[dict[str, Any]]) -> str | None:
    for part in expr:
        if isinstance(part, dict):
            if "drop" in part:
                return "drop"
            if "reject" in part:
                return "reject"
    return None


def _dport_matches(expr: list[dict[str, Any]]) -> list[tuple[Proto, list[int]]]:
    """(protocol, ports) of every destination-port match in a rule."""
    out: list[tuple[Proto, list[int]]] = []
    for part in expr:
        match = part.get("match") if isinstance(part, dict) else None
        if not match or match.get("op", "==") not in ("==", "in"):
            continue
        payload = match.get("left", {}).get("payload", {})
        if payload.get("field") != "dport" or payload.get("protocol") not in ("tcp", "udp"):
            continue
        proto: Proto = "tcp" if payload["protocol"] == "tcp" else "udp"
        out.append((proto, _ports(match.get("right"))))
    return out


def _ports(right: Any) -> list[int]:
    if isinstance(right, int):
        return [right]
    if isinstance(right, dict) and "range" in right:
        first, last = right["range"]
        return list(range(int(first), int(last) + 1)) if int(last) - int(first) < 65536 else []
    if isinstance(right, dict) and "set" in right:
        return [p for item in right["set"] for p in _ports(item)]
    if isinstance(right, list):
        return [p for item in right for p in _ports(item)]
    return []
