"""The analysis engine on nft JSON (no root): each construct it follows, and what it refuses
to guess. The same constructs against the real kernel are in tests/test_analyze.py."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from harden.analysis import xt
from harden.analysis.engine import Packet, decide
from harden.analysis.matrix import Cuts, matrix
from harden.analysis.model import from_snapshot, parse
from harden.analysis.results import Analysis, expectation, manifest_cuts
from harden.analysis.xt import parse_save
from harden.errors import EnvironmentProblem
from harden.manifest.parse import manifest_from_text
from harden.policy.model import build_policy


def payload(proto: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": field}}


def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def ruleset(*items: dict[str, Any]) -> dict[str, Any]:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]}


def chain(family: str, table: str, name: str, **base: Any) -> dict[str, Any]:
    return {"chain": {"family": family, "table": table, "name": name, **base}}


def rule(family: str, table: str, name: str, handle: int, *expr: Any) -> dict[str, Any]:
    return {
        "rule": {
            "family": family,
            "table": table,
            "chain": name,
            "handle": handle,
            "expr": list(expr),
        }
    }


INPUT = {"type": "filter", "hook": "input", "prio": 0, "policy": "drop"}
ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}


def packet(
    dport: int,
    *,
    proto: str = "tcp",
    sport: int = 40000,
    peer: str = "203.0.113.9",
    iface: str = "eth0",
    hook: str = "input",
) -> Packet:
    address = ip_address(peer)
    family = 4 if address.version == 4 else 6
    return Packet(hook, family, proto, dport, sport, address, iface)  # type: ignore[arg-type]


FACTS = xt.Facts("input", "tcp", 8080, 40000, ip_address("203.0.113.9"))

HOST = ruleset(
    chain("inet", "h", "input", **INPUT),
    chain("inet", "h", "sub"),
    {
        "set": {
            "family": "inet",
            "table": "h",
            "name": "ssh",
            "type": "ipv4_addr",
            "flags": ["interval"],
            "elem": [{"prefix": {"addr": "198.18.1.0", "len": 24}}],
        }
    },
    {
        "set": {
            "family": "inet",
            "table": "h",
            "name": "seen",
            "type": "ipv4_addr",
            "flags": ["dynamic"],
        }
    },
    rule(
        "inet",
        "h",
        "input",
        1,
        match({"ct": {"key": "state"}}, ["established", "related"], "in"),
        ACCEPT,
    ),
    rule(
        "inet",
        "h",
        "input",
        2,
        match(payload("tcp", "dport"), 22),
        match(payload("ip", "saddr"), "@ssh"),
        ACCEPT,
    ),
    rule("inet", "h", "input", 3, match(payload("tcp", "sport"), 53), ACCEPT),
    rule(
        "inet",
        "h",
        "input",
        4,
        {"vmap": {"key": payload("tcp", "dport"), "data": {"set": [[80, ACCEPT], [81, DROP]]}}},
    ),
    rule(
        "inet",
        "h",
        "input",
        5,
        match(payload("tcp", "dport"), {"range": [100, 200]}),
        {"jump": {"target": "sub"}},
    ),
    rule("inet", "h", "input", 6, match(payload("udp", "dport"), {"set": [53, 123]}), ACCEPT),
    rule(
        "inet",
        "h",
        "input",
        7,
        match(payload("udp", "dport"), 5353),
        match(payload("ip", "saddr"), "@seen"),
        ACCEPT,
    ),
    rule(
        "inet",
        "h",
        "input",
        8,
        match(payload("tcp", "dport"), 8080),
        {"limit": {"rate": 1, "per": "second"}},
        ACCEPT,
    ),
    rule(
        "inet",
        "h",
        "sub",
        9,
        match(payload("ip", "saddr"), {"prefix": {"addr": "10.0.0.0", "len": 8}}, "!="),
        {"return": None},
    ),
    rule("inet", "h", "sub", 10, ACCEPT),
    chain("ip", "other", "in", type="filter", hook="input", prio=10, policy="accept"),
    rule("ip", "other", "in", 11, match(payload("udp", "dport"), 123), DROP),
)


@pytest.mark.parametrize(
    ("probe", "verdict", "handles"),
    [
        (packet(22, peer="198.18.1.7"), "accept", [2, 0]),  # a named set of prefixes
        (packet(22), "drop", [0]),  # not from the set: the chain's policy
        (packet(8000, sport=53), "accept", [3, 0]),  # keyed on the source port
        (packet(80), "accept", [4, 0]),  # a verdict map
        (packet(81), "drop", [4]),
        (packet(150, peer="10.1.2.3"), "accept", [5, 10, 0]),  # jump, no return
        (packet(150), "drop", [9, 0]),  # jump, return, then the policy
        (packet(53, proto="udp"), "accept", [6, 0]),  # an anonymous set
        (packet(123, proto="udp"), "drop", [6, 11]),  # accept ends one base chain only
        (packet(123, proto="udp", peer="2001:db8::1"), "accept", [6]),  # ip tables skip IPv6
    ],
)
def test_a_packet_follows_every_base_chain_in_priority_order(
    probe: Packet, verdict: str, handles: list[int]
) -> None:
    decision = decide(parse(HOST), probe)
    assert decision.verdict == verdict
    assert [r.handle for r in decision.rules] == handles
    assert decision.unknown == ()


def test_what_the_model_cannot_read_is_unknown_with_the_reason() -> None:
    rs = parse(HOST)
    # A rate limit is not unknown but a key the sender chooses (a slow one passes).
    limited = decide(rs, packet(8080))
    assert limited.verdict == "accept" and any("limit" in k for k in limited.keyed)
    dynamic = decide(rs, packet(5353, proto="udp"))
    assert dynamic.verdict == "unknown" and any("@seen" in u for u in dynamic.unknown)


def test_a_key_the_sender_chooses_exposes_its_accept() -> None:
    """meta skuid 65534 accept in output: some sender is nobody, so the cell is an accept."""
    rs = parse(
        ruleset(
            chain("inet", "h", "output", type="filter", hook="output", prio=0, policy="drop"),
            rule("inet", "h", "output", 1, match({"meta": {"key": "skuid"}}, 65534), ACCEPT),
            rule("inet", "h", "output", 2, match(payload("udp", "dport"), 53), ACCEPT),
        )
    )
    nobody = decide(rs, packet(443, hook="output"))
    assert nobody.verdict == "accept" and nobody.keyed == ("meta skuid",)
    assert decide(rs, packet(53, proto="udp", hook="output")).keyed == ()


def test_a_dnat_on_the_way_leaves_the_cell_unknown() -> None:
    rs = parse(
        ruleset(
            chain("ip", "nat", "pre", type="nat", hook="prerouting", prio=-100, policy="accept"),
            rule(
                "ip",
                "nat",
                "pre",
                1,
                match(payload("tcp", "dport"), 8080),
                {"dnat": {"addr": "10.0.0.2", "port": 80}},
            ),
        )
    )
    assert decide(rs, packet(8080)).verdict == "unknown"
    assert decide(rs, packet(8081)).verdict == "accept"  # no base chain drops it


def test_the_matrix_cuts_at_every_constant_and_merges_alike_cells() -> None:
    rows = matrix(parse(HOST), "input")
    plain = [
        r
        for r in rows
        if (r.family, r.proto) == (4, "tcp") and r.sports[0].first != 53
        and r.to_json()["sources"] == "any"
    ]  # fmt: skip
    four_tcp = {r.to_json()["dports"]: r.verdict for r in plain}
    assert four_tcp["80"] == "accept" and four_tcp["8080"] == "accept"  # under its limit
    sport53 = [r for r in rows if r.family == 4 and r.proto == "tcp" and str(r.sports[0]) == "53"]
    assert sport53 and all(r.verdict == "accept" for r in sport53)


def test_compared_with_a_manifest_leaks_and_blocked_services_are_found() -> None:
    manifest = manifest_from_text(
        "version: 1\nservices:\n"
        "  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24]}\n"
        "  - {name: web, port: 80, proto: tcp}\n"
        "  - {name: ntp, port: 123, proto: udp}\n",
        "m.yaml",
    )
    policy = build_policy(manifest)
    rs = parse(HOST)
    rows = matrix(rs, "input", manifest_cuts(policy, "input"), expectation(policy, "input"))
    result = Analysis(("input",), rows, "m.yaml")
    assert int(result.exit_status) == 1
    assert any(str(r.sports[0]) == "53" for r in result.leaks)  # the source-port accept
    [blocked] = [r for r in result.blocked if r.family == 4]
    assert blocked.proto == "udp" and blocked.to_json()["dports"] == "123"
    assert "is dropped by rule 11 of ip other in" in result.to_text()


def test_an_empty_ruleset_accepts_everything_and_a_reading_error_is_no_empty_ruleset() -> None:
    rows = matrix(parse(ruleset()), "input", Cuts())
    assert {(r.family, r.proto, r.verdict) for r in rows} == {
        (4, "tcp", "accept"),
        (4, "udp", "accept"),
        (6, "tcp", "accept"),
        (6, "udp", "accept"),
    }
    with pytest.raises(EnvironmentProblem):
        parse({"error": "no permission"})


# The cases a review of the engine found, each a test.

POLICY_DROP = {"type": "filter", "hook": "input", "prio": 0, "policy": "drop"}


def rows_for(rs: dict[str, Any], hook: str = "input") -> list[Any]:
    return [r for r in matrix(parse(rs), hook) if r.family == 4 and r.proto == "tcp"]


def test_named_verdict_maps_cut_the_matrix_and_lead_to_their_chains() -> None:
    rs = ruleset(
        chain("inet", "h", "input", **POLICY_DROP),
        chain("inet", "h", "t"),
        {"map": {"family": "inet", "table": "h", "name": "m", "type": "inet_service",
                 "map": "verdict", "elem": [[22, ACCEPT], [2222, {"jump": {"target": "t"}}]]}},
        rule("inet", "h", "input", 1, {"vmap": {"key": payload("tcp", "dport"), "data": "@m"}}),
        rule("inet", "h", "t", 2, match(payload("ip", "saddr"), "198.51.100.1"), ACCEPT),
    )  # fmt: skip
    accepted = {(r.to_json()["dports"], str(r.to_json()["sources"])) for r in rows_for(rs)
                if r.verdict == "accept"}  # fmt: skip
    assert ("22", "any") in accepted and ("2222", "['198.51.100.1/32']") in accepted


def test_xt_multiport_iprange_address_ranges_and_iif_cut_the_matrix() -> None:
    saved = parse_save(
        "*filter\n-A INPUT -p tcp -m multiport --dports 80,443 -j ACCEPT\n"
        "-A INPUT -m iprange --src-range 198.51.100.10-198.51.100.20 -j ACCEPT\n",
        "ip",
    )
    doc = ruleset(
        chain("ip", "filter", "INPUT", **POLICY_DROP),
        rule("ip", "filter", "INPUT", 1, match({"meta": {"key": "l4proto"}}, 6),
             {"xt": {"type": "match", "name": "multiport"}}, ACCEPT),
        rule("ip", "filter", "INPUT", 2, {"xt": {"type": "match", "name": "iprange"}}, ACCEPT),
        chain("inet", "h", "input", **POLICY_DROP | {"prio": 10, "policy": "accept"}),
    )  # fmt: skip
    rows = [r for r in matrix(parse(doc, saved), "input") if r.family == 4 and r.proto == "tcp"]
    accepted = {
        r.to_json()["dports"]: r.to_json()["sources"] for r in rows if r.verdict == "accept"
    }
    assert "198.51.100.10/31" in accepted["1-79,81-442,444-65535"]
    assert accepted["80,443"] == "any"
    ranged = ruleset(
        chain("inet", "h", "input", **POLICY_DROP),
        {"set": {"family": "inet", "table": "h", "name": "s", "type": "ipv4_addr",
                 "flags": ["interval"], "elem": [{"range": ["198.51.100.10", "198.51.100.20"]}]}},
        rule("inet", "h", "input", 1, match(payload("ip", "saddr"), "@s"), ACCEPT),
        rule("inet", "h", "input", 2, match({"meta": {"key": "iif"}}, "eth1"), ACCEPT),
    )  # fmt: skip
    accepted_rows = [r for r in rows_for(ranged) if r.verdict == "accept"]
    assert any("198.51.100.10/31" in str(r.to_json()["sources"]) for r in accepted_rows)
    assert any(r.ifaces == ("eth1",) for r in accepted_rows)  # meta iif is a dimension too
    assert {r.verdict for r in rows_for(ranged) if r.ifaces == ("*",)} == {"drop"}


def test_a_wildcard_interface_cell_is_not_tested_with_an_exact_name() -> None:
    rs = ruleset(
        chain("inet", "h", "input", **POLICY_DROP),
        rule("inet", "h", "input", 1, match({"meta": {"key": "iifname"}}, "eth0"), DROP),
        rule("inet", "h", "input", 2, match({"meta": {"key": "iifname"}}, "eth*"), ACCEPT),
    )
    verdicts = {iface: r.verdict for r in rows_for(rs) for iface in r.ifaces}
    assert verdicts == {"eth*": "accept", "eth0": "drop", "*": "drop"}


def test_loopback_sources_are_cut_out_not_the_cells_after_them() -> None:
    rs = ruleset(
        chain("inet", "h", "input", **POLICY_DROP),
        rule("inet", "h", "input", 1, match(payload("ip", "saddr"), "127.0.0.1"), ACCEPT),
        rule("inet", "h", "input", 2, match(payload("tcp", "dport"), 22), ACCEPT),
    )
    [ssh] = [r for r in rows_for(rs) if r.verdict == "accept"]
    sources = [str(n) for n in ssh.peers]
    assert "128.0.0.0/1" in sources and not any(s.startswith("127.") for s in sources)


def test_marks_and_notrack_on_the_way_make_later_matches_unknown() -> None:
    marked = ruleset(
        chain("inet", "h", "pre", type="filter", hook="prerouting", prio=-150, policy="accept"),
        rule("inet", "h", "pre", 1, match(payload("tcp", "dport"), 8080),
             {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}),
        chain("inet", "h", "input", **POLICY_DROP),
        rule("inet", "h", "input", 2, match({"meta": {"key": "mark"}}, 1), ACCEPT),
    )  # fmt: skip
    assert decide(parse(marked), packet(8080)).verdict == "unknown"
    untracked = ruleset(
        chain("inet", "h", "raw", type="filter", hook="prerouting", prio=-300, policy="accept"),
        rule("inet", "h", "raw", 1, match(payload("udp", "dport"), 53), {"notrack": None}),
        chain("inet", "h", "input", **POLICY_DROP),
        rule("inet", "h", "input", 2, match({"ct": {"key": "state"}}, "new", "in"),
             match(payload("udp", "dport"), 53), ACCEPT),
    )  # fmt: skip
    assert decide(parse(untracked), packet(53, proto="udp")).verdict == "unknown"


def test_a_one_word_flags_field_still_marks_a_set_that_changes() -> None:
    rs = ruleset(
        chain("inet", "h", "input", **POLICY_DROP),
        {"set": {"family": "inet", "table": "h", "name": "s", "type": "ipv4_addr",
                 "flags": "dynamic", "elem": ["203.0.113.9"]}},
        rule("inet", "h", "input", 1, match(payload("ip", "saddr"), "@s"), ACCEPT),
    )  # fmt: skip
    assert decide(parse(rs), packet(22)).verdict == "unknown"


def test_a_netdev_ingress_chain_drops_before_everything_on_its_device() -> None:
    rs = ruleset(
        chain("netdev", "n", "in", type="filter", hook="ingress", prio=0, policy="drop",
              dev="eth0"),
    )  # fmt: skip
    assert decide(parse(rs), packet(22, iface="eth0")).verdict == "drop"
    assert decide(parse(rs), packet(22, iface="eth1")).verdict == "accept"
    cells = {r.ifaces: r.verdict for r in rows_for(rs)}
    assert cells == {("eth0",): "drop", ("*",): "accept"}


def test_a_uid_on_input_never_matches_and_contradictory_uid_tests_are_no_exposure() -> None:
    inbound = ruleset(
        chain("inet", "h", "input", **POLICY_DROP),
        rule("inet", "h", "input", 1, match({"meta": {"key": "skuid"}}, 1000), ACCEPT),
    )
    assert decide(parse(inbound), packet(22)).verdict == "drop"
    out = {"type": "filter", "hook": "output", "prio": 0, "policy": "drop"}
    contradiction = ruleset(
        chain("inet", "h", "output", **out),
        rule("inet", "h", "output", 1, match({"meta": {"key": "skuid"}}, 1000), DROP),
        rule("inet", "h", "output", 2, match({"meta": {"key": "skuid"}}, 1000), ACCEPT),
    )
    assert decide(parse(contradiction), packet(443, hook="output")).verdict == "drop"


def test_nat_rules_without_a_verdict_do_not_blur_a_keyed_accept() -> None:
    out = {"type": "filter", "hook": "output", "prio": 0, "policy": "drop"}
    rs = ruleset(
        chain("inet", "h", "output", **out),
        rule("inet", "h", "output", 1, match({"meta": {"key": "skuid"}}, 1000), ACCEPT),
        chain("ip", "nat", "post", type="nat", hook="postrouting", prio=100, policy="accept"),
        *(
            rule("ip", "nat", "post", 10 + n,
                 match({"meta": {"key": "oifname"}}, f"docker{n}", "!="),
                 match(payload("ip", "saddr"), {"prefix": {"addr": f"172.{n}.0.0", "len": 16}}),
                 {"masquerade": None})
            for n in range(8)
        ),
    )  # fmt: skip
    decision = decide(parse(rs), packet(443, hook="output", peer="198.51.100.1"))
    assert decision.verdict == "accept" and decision.keyed == ("meta skuid",)


def test_every_way_unknown_keeps_its_reasons() -> None:
    rs = ruleset(
        chain("ip", "nat", "pre", type="nat", hook="prerouting", prio=-100, policy="accept"),
        rule("ip", "nat", "pre", 1, {"dnat": {"addr": "10.0.0.2"}}),
    )
    decision = decide(parse(rs), packet(80))
    assert decision.verdict == "unknown" and any("DNAT" in u for u in decision.unknown)


# A Docker-style host: 8080 published to a container (10.0.0.2:80 behind br0), 9090
# redirected to a local 22, forward dropping all but the container's port 80.
NAT = {"type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}
FWD = {"type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}
DOCKERISH = ruleset(
    chain("ip", "nat", "pre", **NAT),
    rule("ip", "nat", "pre", 1, match(payload("tcp", "dport"), 8080),
         {"dnat": {"addr": "10.0.0.2", "port": 80}}),
    rule("ip", "nat", "pre", 2, match(payload("tcp", "dport"), 8081),
         {"dnat": {"addr": "10.9.9.9", "port": 80}}),
    rule("ip", "nat", "pre", 3, match(payload("tcp", "dport"), 9090), {"redirect": {"port": 22}}),
    chain("ip", "filter", "fwd", **FWD),
    rule("ip", "filter", "fwd", 4, match(payload("ip", "daddr"), "10.0.0.2"),
         match({"meta": {"key": "oifname"}}, "br0"), match(payload("tcp", "dport"), 80), ACCEPT),
    chain("ip", "filter", "in", **INPUT),
    rule("ip", "filter", "in", 5, match(payload("tcp", "dport"), 22), ACCEPT),
)  # fmt: skip


def snapshot_of(document: dict[str, Any]) -> Any:
    routes = [{"dst": "10.0.0.0/24", "dev": "br0"}, {"dst": "203.0.113.0/24", "dev": "eth0"}]
    return from_snapshot(
        {"nftables": document["nftables"], "addresses": ["203.0.113.1"], "routes": routes}
    )[0]


def test_a_dnat_is_judged_by_the_port_it_was_sent_to_through_forward() -> None:
    rs = snapshot_of(DOCKERISH)
    published = decide(rs, packet(8080))
    assert published.verdict == "accept"
    assert [r.handle for r in published.rules] == [1, 4]  # the dnat, then forward's accept
    # The same forward rule does not hold for a port that was not translated there.
    assert decide(rs, packet(80)).verdict == "drop"
    # No route to the new destination in the main table: not a guess.
    lost = decide(rs, packet(8081))
    assert lost.verdict == "unknown" and "no route" in lost.unknown[0]
    # A redirect stays on this host: input judges the port it became (22).
    assert decide(rs, packet(9090)).verdict == "accept"
    rows = [r for r in matrix(rs, "input") if (r.family, r.proto) == (4, "tcp")]

    def row(port: int) -> str:
        [found] = [r.verdict for r in rows if any(port in p for p in r.dports)]
        return found

    assert [row(p) for p in (80, 8080, 8081, 8082, 9090)] == [
        "drop", "accept", "unknown", "drop", "accept"
    ]  # fmt: skip
    # Without the addresses and routes (an old snapshot): where it goes is unknown.
    assert decide(parse(DOCKERISH), packet(8080)).verdict == "unknown"


def test_hardens_translated_chain_reads_the_original_port() -> None:
    """ct status dnat + ct original proto-dst: what harden's own forward chain matches."""
    original = {"ct": {"key": "proto-dst", "dir": "original"}}
    rs = ruleset(
        chain("ip", "nat", "pre", **NAT),
        rule("ip", "nat", "pre", 1, {"dnat": {"addr": "10.0.0.2", "port": 80}}),
        chain("inet", "harden", "forward", **FWD),
        rule("inet", "harden", "forward", 2, match({"ct": {"key": "status"}}, "dnat", "in"),
             match(original, 8443), ACCEPT),
    )  # fmt: skip
    assert decide(snapshot_of(rs), packet(8443)).verdict == "accept"
    assert decide(snapshot_of(rs), packet(8444)).verdict == "drop"
    rows = matrix(snapshot_of(rs), "input")
    accepted = [r for r in rows if (r.family, r.proto, r.verdict) == (4, "tcp", "accept")]
    assert [(r.dports[0].first, r.dports[0].last) for r in accepted] == [(8443, 8443)]


def test_iptables_dnat_and_conntrack_options_are_decoded() -> None:
    save = (
        "*nat\n-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT "
        "--to-destination 172.17.0.2:80\n-A PRE -p tcp -j REDIRECT --to-ports 22\n"
        "-A V6 -j DNAT --to-destination [fd00::2]:80\n-A R -j DNAT --to-destination "
        "10.0.0.1-10.0.0.9\nCOMMIT\n*filter\n-A F -m conntrack --ctstate DNAT "
        "--ctorigdstport 8443 --ctdir ORIGINAL -j ACCEPT\nCOMMIT\n"
    )
    saved = parse_save(save, "ip")
    [dnat] = saved[("ip", "nat", "DOCKER")][0].extensions[-1:]
    assert xt.test(dnat, FACTS) == xt.Nat(ip_address("172.17.0.2"), 80)
    [redirect] = saved[("ip", "nat", "PRE")][0].extensions
    assert xt.test(redirect, FACTS) == xt.Nat(None, 22)
    [v6] = saved[("ip", "nat", "V6")][0].extensions
    assert xt.test(v6, FACTS) == xt.Nat(ip_address("fd00::2"), 80)
    [spread] = saved[("ip", "nat", "R")][0].extensions
    assert "range" in str(xt.test(spread, FACTS))
    [ct, _] = saved[("ip", "filter", "F")][0].extensions
    translated = xt.Facts("input", "tcp", 80, 40000, ip_address("203.0.113.9"), True, 8443)
    assert xt.test(ct, translated) is True
    assert xt.test(ct, FACTS) is False  # not translated: neither NEW-only nor DNAT holds


def test_a_value_less_native_option_does_not_swallow_the_target() -> None:
    [saved] = parse_save("*filter\n-A INPUT -f -j LOG --log-prefix x\n", "ip")[
        ("ip", "filter", "INPUT")
    ]
    assert [e.name for e in saved.extensions] == ["LOG"]


def test_the_hosts_own_addresses_decide_its_end_of_the_packet() -> None:
    """kube-proxy's ClusterIP rules name an address the host does not hold: with the
    host's addresses read, such a rule never matches; a rule that tells two of its
    addresses apart stays unknown; without them, every such rule is unknown."""
    cluster_ip = match(payload("ip", "daddr"), "198.18.245.10")
    rs = ruleset(
        chain("ip", "filter", "in", **INPUT),
        rule("ip", "filter", "in", 1, cluster_ip, match(payload("tcp", "dport"), 80), ACCEPT),
        rule("ip", "filter", "in", 2, match(payload("ip", "daddr"), "203.0.113.1"),
             match(payload("tcp", "dport"), 81), ACCEPT),
    )  # fmt: skip
    two = {"nftables": rs["nftables"], "addresses": ["203.0.113.1", "198.51.100.1", "127.0.0.1"]}
    known = from_snapshot({**two, "routes": []})[0]
    assert decide(known, packet(80)).verdict == "drop"
    told_apart = decide(known, packet(81))
    assert told_apart.verdict == "unknown" and "tells its addresses apart" in told_apart.unknown[0]
    assert decide(parse(rs), packet(80)).verdict == "unknown"


def test_iptables_tcp_and_udp_matches_are_decoded() -> None:
    save = (
        "*filter\n-A IN -p tcp -m tcp --dport 80:90 --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT\n"
        "-A IN -p tcp -m tcp ! --syn -j DROP\n-A IN -p udp -m udp --sport 67 -j ACCEPT\nCOMMIT\n"
    )
    first, not_syn, udp = (r.extensions[0] for r in parse_save(save, "ip")[("ip", "filter", "IN")])
    assert xt.test(first, xt.Facts("input", "tcp", 85, 40000, ip_address("203.0.113.9"))) is True
    assert xt.test(first, xt.Facts("input", "tcp", 91, 40000, ip_address("203.0.113.9"))) is False
    assert xt.test(not_syn, FACTS) is False  # a new connection's first segment is a SYN
    assert xt.test(udp, xt.Facts("input", "udp", 68, 67, ip_address("203.0.113.9"))) is True
    assert xt.test(udp, FACTS) is False  # a udp match on a tcp packet


def test_a_rate_limit_is_a_key_the_sender_chooses() -> None:
    """ssh with a meter (update @m { ip saddr limit rate over 6/minute } drop): a slow
    sender passes it, so the cell is an accept, said to be keyed on the limit."""
    meter = {
        "set": {
            "op": "update",
            "set": "@m",
            "elem": payload("ip", "saddr"),
            "stmt": [{"limit": {"rate": 6, "per": "minute", "inv": True}}],
        }
    }
    ssh = match(payload("tcp", "dport"), 22)
    rs = parse(ruleset(
        chain("ip", "filter", "in", **INPUT),
        rule("ip", "filter", "in", 1, ssh, meter, DROP),
        rule("ip", "filter", "in", 2, ssh, ACCEPT),
        rule("ip", "filter", "in", 3, match(payload("tcp", "dport"), 23),
             {"limit": {"rate": 1, "per": "second"}}, DROP),
    ))  # fmt: skip
    limited = decide(rs, packet(22))
    assert limited.verdict == "accept" and limited.keyed and "limit" in limited.keyed[0]
    assert [r.handle for r in limited.rules] == [2]
    # A drop under a limit elsewhere: the policy drops the rest anyway.
    assert decide(rs, packet(23)).verdict == "drop"


# Cases a randomized review found where the matrix row and decide() disagreed: each now
# agrees (a rule the index left out, two cells sharing a decision, a cut missing).
def _row_and_decision(items: list[Any], probe: Packet, saves: str | None = None) -> tuple[str, str]:
    snapshot: dict[str, Any] = {"nftables": items}
    if saves is not None:
        snapshot["saves"] = {"ip": saves}
    rs = from_snapshot(snapshot)[0]
    rows = [
        r
        for r in matrix(rs, "input")
        if (r.family, r.proto) == (probe.family, probe.proto)
        and any(probe.dport in d for d in r.dports)
        and any(probe.sport in s for s in r.sports)
        and any(probe.peer in n for n in r.peers)
    ]
    [row] = [r for r in rows if probe.iface in r.ifaces] or [r for r in rows if "*" in r.ifaces]
    return row.verdict, decide(rs, probe).verdict


def _one_chain(family: str, policy: str, *rules: list[Any]) -> list[Any]:
    head = chain(family, "t", "c", type="filter", hook="input", prio=0, policy=policy)
    return [head, *(rule(family, "t", "c", n, *e) for n, e in enumerate(rules, 1))]


REVIEWED = [
    (_one_chain("inet", "accept", [match({"ct": {"key": "proto-dst", "dir": "reply"}}, 22), DROP]),
     packet(80), None, "unknown"),
    (_one_chain("ip", "drop", [{"xt": {"type": "match", "name": "conntrack"}}, ACCEPT]),
     packet(22), "*t\n-A c -m conntrack --ctorigdstport 22\nCOMMIT\n", "accept"),
    (_one_chain("ip", "drop", [{"xt": {"type": "match", "name": "tcp"}}, ACCEPT]),
     packet(22), "*t\n-A c -m tcp --dport 22\nCOMMIT\n", "accept"),
    (_one_chain("inet", "drop",
                [match({"ct": {"key": "mark"}}, 5), match(payload("tcp", "dport"), 22), ACCEPT],
                [{"limit": {"rate": 1, "per": "second"}}, ACCEPT]),
     packet(80), None, "accept"),
    (_one_chain("inet", "drop",
                *([match(payload("ip", "daddr"), "10.0.0.1"), match(payload("tcp", "dport"), k),
                   ACCEPT] for k in range(1000, 1009)),
                [match(payload("tcp", "dport"), 2000), ACCEPT]),
     packet(2000), None, "accept"),
    (_one_chain("inet", "drop", [match({"ct": {"key": "saddr", "family": "ip", "dir": "original"}},
                                       {"prefix": {"addr": "10.0.0.0", "len": 8}}), ACCEPT]),
     packet(80, peer="10.1.1.1"), None, "accept"),
    (_one_chain("inet", "drop", [match({"ct": {"key": "proto-src", "dir": "original"}}, 53),
                                 ACCEPT]),
     packet(80, sport=53), None, "accept"),
]  # fmt: skip


@pytest.mark.parametrize(("items", "probe", "saves", "verdict"), REVIEWED)
def test_the_matrix_row_agrees_with_the_packets_own_walk(
    items: list[Any], probe: Packet, saves: str | None, verdict: str
) -> None:
    assert _row_and_decision(items, probe, saves) == (verdict, verdict)


def test_the_manifest_cuts_the_cells_where_its_own_answer_changes() -> None:
    """A foreign ``udp dport 546 accept`` on a host whose manifest takes DHCPv6 replies: the
    DHCPv6 reply itself (source port 547, from a link-local address) is no leak, every
    other packet to 546 is. Without the manifest's own cuts (source port 547, fe80::/10)
    the whole row was judged by its first packet."""
    manifest = manifest_from_text(
        "version: 1\npolicy: {dhcpv6: true}\nservices:\n  - {name: web, port: 80, proto: tcp}\n",
        "m.yaml",
    )
    policy = build_policy(manifest)
    rs = parse(
        ruleset(
            chain("inet", "other", "in", **INPUT),
            rule("inet", "other", "in", 5, match(payload("udp", "dport"), 546), ACCEPT),
        )
    )
    rows = matrix(rs, "input", manifest_cuts(policy, "input"), expectation(policy, "input"))
    result = Analysis(("input",), rows, "m.yaml")
    six = [r for r in rows if (r.family, r.proto, r.verdict) == (6, "udp", "accept")]
    reply = [r for r in six if r.expected]
    assert len(reply) == 1 and str(reply[0].sports[0]) == "547", six
    assert reply[0].to_json()["sources"] == ["fe80::/10"]
    leaks = [r for r in result.leaks if (r.family, r.proto) == (6, "udp")]
    assert leaks and all(r.to_json()["dports"] == "546" for r in leaks)
    assert not any(
        "547" in [str(s) for s in r.sports] and "fe80::/10" in r.to_json()["sources"] for r in leaks
    )


def test_port_cells_alike_for_rules_and_manifest_are_judged_as_one_and_agree_cell_by_cell() -> None:
    """The matrix judges port cells that the same rules and the same manifest ranges hold
    once; judged cell by cell (every port cell its own class) it gives the same rows."""
    from harden.analysis import matrix as m

    manifest = manifest_from_text(
        "version: 1\nservices:\n"
        "  - {name: a, ports: ['1000-2000', 3000], proto: tcp, sources: [198.18.1.0/24]}\n"
        "  - {name: b, ports: [2600, 4000-4010], proto: tcp}\n",
        "m.yaml",
    )
    policy = build_policy(manifest)
    items = [chain("inet", "other", "in", **INPUT)]
    for n, port in enumerate((22, 1500, 1999, 2500, 3000, 4005, 5000)):
        items.append(
            rule("inet", "other", "in", 10 + n, match(payload("tcp", "dport"), port), ACCEPT)
        )
    rs = parse(ruleset(*items))
    args = (rs, "input", manifest_cuts(policy, "input"), expectation(policy, "input"))
    grouped = {
        (r.family, r.proto, r.dports, r.sports, r.peers, r.verdict, r.expected)
        for r in matrix(*args)
    }
    whole = m._port_classes
    m._port_classes = lambda dports, dclass, ranges, each: whole(dports, dclass, ranges, True)
    try:
        each = {
            (r.family, r.proto, r.dports, r.sports, r.peers, r.verdict, r.expected)
            for r in matrix(*args)
        }
    finally:
        m._port_classes = whole
    assert grouped == each
    leaked = {str(p) for r in grouped if r[5] == "accept" and r[6] is False for p in r[2]}
    assert leaked == {"22", "1500", "1999", "2500", "3000", "5000"}
    blocked = {str(p) for r in grouped if r[5] == "drop" and r[6] for p in r[2]}
    assert {"2600", "4000-4004", "4006-4010", "1000-1499"} <= blocked


def test_a_reverse_path_filter_finds_the_route_back_as_the_packet_assumptions_say() -> None:
    """firewalld's IPv6_rpfilter, ``fib saddr . mark . iif oif missing drop`` in prerouting:
    a packet whose source is plausible for its interface has a route back, so the filter
    drops nothing (it was "fib lookup" unknown); a test of the device's name stays unknown,
    and so does a lookup by mark where a rule sets marks."""
    pre = {"type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}

    def host(right: Any, *more: dict[str, Any]) -> Any:
        rpf = {"fib": {"result": "oif", "flags": ["saddr", "mark", "iif"]}}
        return parse(
            ruleset(
                chain("inet", "fw", "pre", **pre),
                rule("inet", "fw", "pre", 3, match(rpf, right), DROP),
                chain("inet", "fw", "in", **INPUT),
                rule("inet", "fw", "in", 5, match(payload("tcp", "dport"), 22), ACCEPT),
                *more,
            )
        )

    six = packet(22, peer="2001:db8::9")
    assert decide(host(False), six).verdict == "accept"  # "oif missing": never
    assert decide(host(True), six).verdict == "drop"  # "oif exists": always
    assert decide(host(False), packet(22)).verdict == "accept"
    assert decide(host("eth0"), six).verdict == "unknown"
    marks = rule("inet", "fw", "pre", 2, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}})
    assert decide(host(False, marks), six).verdict == "unknown"


def test_bridge_chains_that_only_accept_leave_the_matrix_known() -> None:
    """firewalld's iptables backend makes ebtables-nft tables whose base chains jump to a
    ``*_direct`` chain of counters, return and accept: they change no verdict, so they
    no longer make every row unknown. A bridge chain that can drop still does."""
    bridge_in = {"type": "filter", "hook": "input", "prio": -200, "policy": "accept"}
    counter: dict[str, Any] = {"counter": {"packets": 0, "bytes": 0}}

    def unknown(*direct: dict[str, Any]) -> list[str]:
        items = [
            chain("bridge", "filter", "INPUT", **bridge_in),
            rule("bridge", "filter", "INPUT", 2, counter, {"jump": {"target": "INPUT_direct"}}),
            chain("bridge", "filter", "INPUT_direct"),
            *(rule("bridge", "filter", "INPUT_direct", 3 + n, d) for n, d in enumerate(direct)),
        ]
        return from_snapshot({"nftables": ruleset(*items)["nftables"]})[1]

    assert unknown(counter, {"return": None}, ACCEPT) == []
    assert unknown(counter, DROP) == ["bridge-family chains (bridge filter) are not modelled"]


def test_xt_rpfilter_passes_as_the_packet_assumptions_say() -> None:
    """firewalld's iptables backend: ``-m rpfilter --validmark --invert -j DROP``. The
    source is plausible for its interface, so the check passes and the inverted match
    fails; by mark it stays unknown where a rule sets marks."""
    from dataclasses import replace

    text = "*mangle\n:PREROUTING ACCEPT [0:0]\n"
    text += "-A PREROUTING -m rpfilter --validmark --invert -j DROP\nCOMMIT\n"
    [rules] = parse_save(text, "ip6").values()
    rpfilter = rules[0].extensions[0]
    assert rpfilter.name == "rpfilter"
    assert xt.test(rpfilter, FACTS) is False
    assert "mark" in str(xt.test(rpfilter, replace(FACTS, marks=True)))
    plain = parse_save(text.replace(" --invert", ""), "ip6")
    assert xt.test(next(iter(plain.values()))[0].extensions[0], FACTS) is True
