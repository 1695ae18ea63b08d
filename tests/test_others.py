"""The other firewalls on the host, from the kernel's ruleset JSON (pure)."""

from __future__ import annotations

from typing import Any

from harden.apply.others import blocked_declared, manager_of, other_base_chains
from harden.files import parse_manifest
from harden.policy.model import build_policy

WEB = build_policy(
    parse_manifest("version: 1\nservices:\n  - {name: web, ports: [80, 443], proto: tcp}\n")
)


def chain(family: str, table: str, name: str, **base: Any) -> dict[str, Any]:
    return {"chain": {"family": family, "table": table, "name": name, **base}}


def rule(family: str, table: str, name: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"rule": {"family": family, "table": table, "chain": name, "expr": list(expr)}}


def dport(proto: str, right: Any) -> dict[str, Any]:
    return {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": proto, "field": "dport"}},
            "right": right,
        }
    }


RULESET = {
    "nftables": [
        chain("inet", "harden", "input", hook="input", prio=0, policy="drop"),
        chain("ip", "filter", "INPUT", hook="input", prio=0, policy="drop"),
        chain("ip", "filter", "ufw-user-input"),
        chain("ip", "filter", "OUTPUT", hook="output", prio=0, policy="accept"),
        chain("inet", "mine", "in", hook="input", prio=-5, policy="accept"),
        chain("inet", "firewalld", "filter_INPUT", hook="input", prio=10, policy="accept"),
        rule("ip", "filter", "INPUT", {"jump": {"target": "ufw-user-input"}}),
        rule("ip", "filter", "ufw-user-input", dport("tcp", 443), {"drop": None}),
        rule("ip", "filter", "ufw-user-input", dport("tcp", 80), {"accept": None}),
        rule("inet", "mine", "in", dport("tcp", {"range": [440, 450]}), {"reject": None}),
        rule("inet", "mine", "in", dport("udp", {"set": [80, 443]}), {"drop": None}),
        rule("inet", "harden", "input", dport("tcp", 443), {"drop": None}),
        rule("inet", "firewalld", "filter_INPUT", {"jump": {"target": "filter_IN_public"}}),
    ]
}


def test_only_other_tables_base_chains_on_harden_s_hooks_are_listed() -> None:
    chains = other_base_chains(RULESET)
    assert [(c.family, c.table, c.chain, c.manager, c.rules) for c in chains] == [
        ("inet", "mine", "in", None, 2),
        ("ip", "filter", "INPUT", "ufw", 3),  # its own rule and the chain it jumps to
        ("inet", "firewalld", "filter_INPUT", "firewalld", 1),
    ]
    assert (
        chains[1].label == "ip filter INPUT (ufw): hook input, priority 0, policy drop, 3 rule(s)"
    )


def test_a_drop_of_a_declared_port_is_warned_about_wherever_it_is_reached() -> None:
    warnings = blocked_declared(RULESET, WEB)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("inet mine in rejects declared tcp/443")
    assert warnings[1].startswith("ip filter ufw-user-input (ufw) drops declared tcp/443")
    # udp 80/443 are not declared; harden's own table is never an "other firewall".
    assert not any("udp" in w or "harden" in w.split()[1] for w in warnings)


def test_managers_are_named_from_their_tables_and_chains() -> None:
    assert manager_of("filter", ["DOCKER-USER", "FORWARD"]) == "Docker"
    assert manager_of("kube-proxy", []) == "kube-proxy"
    assert manager_of("filter", ["KUBE-SERVICES"]) == "kube-proxy"
    assert manager_of("libvirt_network", []) == "libvirt"
    assert manager_of("filter", ["INPUT"]) is None


def test_hardens_own_chains_and_empty_accepting_chains_are_no_other_firewall() -> None:
    """The iptables backend's INPUT holds only harden's jump, and a backend switch leaves
    an empty ip6 filter FORWARD that accepts: neither is another firewall."""
    ruleset = {
        "nftables": [
            chain("ip", "filter", "INPUT", hook="input", prio=0, policy="accept"),
            chain("ip", "filter", "HARDEN-INPUT"),
            rule("ip", "filter", "INPUT", {"jump": {"target": "HARDEN-INPUT"}}),
            rule("ip", "filter", "HARDEN-INPUT", dport("tcp", 22), {"accept": None}),
            rule("ip", "filter", "HARDEN-INPUT", {"drop": None}),
            chain("ip6", "filter", "FORWARD", hook="forward", prio=0, policy="accept"),
            chain("ip6", "filter", "INPUT", hook="input", prio=0, policy="drop"),
        ]
    }
    chains = other_base_chains(ruleset)
    # A drop policy decides, rules or not: that one stays.
    assert [(c.family, c.chain, c.rules) for c in chains] == [("ip6", "INPUT", 0)]


def test_a_shared_chain_is_labelled_by_the_rules_in_it() -> None:
    """ufw and Docker both jump from ip filter FORWARD: both are named; INPUT is ufw's."""
    ruleset = {
        "nftables": [
            chain("ip", "filter", "FORWARD", hook="forward", prio=0, policy="drop"),
            chain("ip", "filter", "INPUT", hook="input", prio=0, policy="drop"),
            rule("ip", "filter", "FORWARD", {"jump": {"target": "DOCKER-USER"}}),
            rule("ip", "filter", "FORWARD", {"jump": {"target": "ufw-before-forward"}}),
            rule("ip", "filter", "INPUT", {"jump": {"target": "ufw-before-input"}}),
            rule("ip", "filter", "DOCKER-USER", {"return": None}),
        ]
    }
    managers = {c.chain: c.manager for c in other_base_chains(ruleset)}
    assert managers == {"FORWARD": "ufw, Docker", "INPUT": "ufw"}
    assert manager_of("filter", ["DOCKER-USER", "ufw-user-input"]) == "ufw, Docker"
