"""Egress in the pure pipeline: the manifest's egress section, the policy, both renderers."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from harden.backends import render
from harden.errors import ManifestError
from harden.files import parse_manifest
from harden.manifest.ports import PortRange
from harden.outputs.jsondoc import verify_json
from harden.outputs.junit import verify_junit
from harden.outputs.metrics import verify_metrics
from harden.outputs.nmapxml import nmap_xml
from harden.outputs.table import verify_text
from harden.policy.model import Policy, build_policy
from harden.types import Verdict
from harden.verify.egress.verdict import EgressRun, egress_report
from harden.verify.report import Status

EGRESS = """\
version: 1
policy: {ipv6: %s}
services:
  - {name: ssh, port: 22, proto: tcp}
egress:
  policy: %s
  allow:
    - {name: dns, destinations: [198.51.100.53/32%s], port: 53, proto: [udp, tcp]}
    - {name: updates, destinations: [203.0.113.0/24], ports: [80, 443], proto: tcp}
    - {name: ntp, port: 123, proto: udp}
"""


def policy(verdict: str = "drop", ipv6: bool = True) -> Policy:
    v6 = ', "2001:db8::53/128"' if ipv6 else ""
    text = EGRESS % ("true" if ipv6 else "false", verdict, v6)
    return build_policy(parse_manifest(text, "egress.yaml"))


def test_sends_is_exactly_the_declared_destinations_and_ports() -> None:
    p = policy()
    assert p.sends(ip_address("198.51.100.53"), "udp", 53)
    assert p.sends(ip_address("198.51.100.53"), "tcp", 53)
    assert not p.sends(ip_address("198.51.100.54"), "udp", 53)
    assert p.sends(ip_address("2001:db8::53"), "udp", 53)
    assert p.sends(ip_address("203.0.113.200"), "tcp", 443)
    assert not p.sends(ip_address("203.0.113.200"), "udp", 443)
    assert not p.sends(ip_address("203.0.113.200"), "tcp", 22)
    assert p.sends(ip_address("192.0.2.1"), "udp", 123)  # no destinations: any
    assert p.sends(ip_address("2001:db8::1"), "udp", 123)
    assert not p.sends(ip_address("192.0.2.1"), "tcp", 123)


def test_ipv6_false_sends_nothing_over_ipv6() -> None:
    p = policy(ipv6=False)
    assert p.sends(ip_address("192.0.2.1"), "udp", 123)
    assert not p.sends(ip_address("2001:db8::1"), "udp", 123)
    nft = render(p, "nftables")["harden.nft"]
    assert "meta nfproto ipv6 udp dport { 123 }" not in nft
    assert "meta nfproto ipv4 udp dport { 123 } accept" in nft
    v6 = render(p, "iptables")["harden.rules.v6"]
    assert "--dports 123" not in v6 and v6.rstrip().endswith("COMMIT")
    assert "-A HARDEN-OUTPUT -j DROP" in v6


def test_accept_policy_sends_anything_and_renders_no_output_chain() -> None:
    p = build_policy(parse_manifest("version: 1\n", "m.yaml"))
    assert p.egress == "accept" and p.sends(ip_address("192.0.2.9"), "tcp", 4444)
    assert "hook output" not in render(p, "nftables")["harden.nft"]
    assert all("HARDEN-OUTPUT" not in text for text in render(p, "iptables").values())


def test_drop_renders_an_output_base_chain_with_a_drop_policy() -> None:
    nft = render(policy(), "nftables")["harden.nft"]
    chain = nft[nft.index("chain output {") :]
    chain = chain[: chain.index("\n\t}")]
    assert "type filter hook output priority filter; policy drop;" in chain
    assert "ct state established accept" in chain
    assert "ct state related meta l4proto { icmp, ipv6-icmp } accept" in chain
    assert 'oif "lo" accept' in chain
    assert "ip daddr { 203.0.113.0/24 } tcp dport { 80, 443 } accept" in chain
    assert "ip6 daddr { 2001:db8::53/128 } udp dport { 53 } accept" in chain
    assert "nd-neighbor-solicit" in chain and "packet-too-big" in chain
    assert "mld2-listener-report" in chain
    assert chain.rstrip().endswith("drop")
    assert "DHCP" not in chain  # only with egress.dhcp or policy.dhcpv6


def test_reject_refuses_with_admin_prohibited_on_both_backends() -> None:
    p = policy("reject")
    assert "\t\treject with icmpx admin-prohibited\n\t}" in render(p, "nftables")["harden.nft"]
    files = render(p, "iptables")
    assert (
        "-A HARDEN-OUTPUT -j REJECT --reject-with icmp-admin-prohibited" in files["harden.rules.v4"]
    )
    assert (
        "-A HARDEN-OUTPUT -j REJECT --reject-with icmp6-adm-prohibited" in files["harden.rules.v6"]
    )


def test_iptables_egress_returns_what_it_allows_and_drops_the_rest() -> None:
    v4 = render(policy(), "iptables")["harden.rules.v4"]
    rules = [line for line in v4.splitlines() if line.startswith("-A HARDEN-OUTPUT")]
    assert rules[0] == "-A HARDEN-OUTPUT -m conntrack --ctstate ESTABLISHED -j RETURN"
    assert rules[1] == "-A HARDEN-OUTPUT -p icmp -m conntrack --ctstate RELATED -j RETURN"
    assert (
        "-A HARDEN-OUTPUT -d 203.0.113.0/24 -p tcp -m multiport --dports 80,443 -m comment "
        '--comment "updates" -j RETURN' in rules
    )
    assert rules[-1] == "-A HARDEN-OUTPUT -j DROP"
    assert all(r.endswith(("-j RETURN", "-j DROP")) for r in rules)  # never a final ACCEPT


def test_dhcp_client_is_allowed_out_only_when_asked() -> None:
    text = "version: 1\npolicy: {dhcpv6: true}\negress: {policy: drop, dhcp: true}\n"
    nft = render(build_policy(parse_manifest(text, "m.yaml")), "nftables")["harden.nft"]
    assert "ip daddr { 255.255.255.255 } udp sport 68 udp dport 67 accept" in nft
    assert "meta nfproto ipv6 udp sport 546 udp dport 547 accept" in nft
    servers = text.replace("dhcp: true", "dhcp: true, dhcp_servers: [198.51.100.7]")
    files = render(build_policy(parse_manifest(servers, "m.yaml")), "iptables")
    assert (
        "ip daddr { 255.255.255.255, 198.51.100.7 } udp sport 68"
        in render(build_policy(parse_manifest(servers, "m.yaml")), "nftables")["harden.nft"]
    )
    v4 = files["harden.rules.v4"]
    assert "-A HARDEN-OUTPUT -d 198.51.100.7/32 -p udp -m udp --sport 68 --dport 67" in v4
    assert "-A HARDEN-OUTPUT -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67" in v4
    dhcp = [line for line in v4.splitlines() if "--sport 68" in line]
    assert len(dhcp) == 2 and all(" -d " in line for line in dhcp)  # never to any address
    with pytest.raises(ManifestError, match="dhcp_servers"):
        parse_manifest("version: 1\negress: {policy: drop, dhcp_servers: [198.51.100.7]}\n")


def test_forward_drop_is_the_base_chains_policy_and_loopback_forgeries_drop() -> None:
    text = "version: 1\nforward: {policy: drop}\n"
    nft = render(build_policy(parse_manifest(text, "m.yaml")), "nftables")["harden.nft"]
    assert "type filter hook forward priority filter; policy drop;" in nft
    assert 'iif != "lo" ip saddr 127.0.0.0/8 drop' in nft
    assert 'iif != "lo" ip6 saddr ::1 drop' in nft
    plain = render(build_policy(parse_manifest("version: 1\n", "m.yaml")), "nftables")
    assert "type filter hook forward priority filter; policy accept;" in plain["harden.nft"]
    files = render(build_policy(parse_manifest("version: 1\n", "m.yaml")), "iptables")
    assert "-A HARDEN-INPUT ! -i lo -s 127.0.0.0/8 -j DROP" in files["harden.rules.v4"]
    assert "-A HARDEN-INPUT ! -i lo -s ::1/128 -j DROP" in files["harden.rules.v6"]


def _run(**kw: object) -> EgressRun:
    sink = ip_address("198.51.100.53")
    base: dict[str, object] = {
        "sinks": [sink],
        "ports": (PortRange(50, 60),),
        "refused": {
            (sink, "tcp"): set(range(50, 61)) - {53},
            (sink, "udp"): set(range(50, 61)) - {53},
        },
        "arrived": {(sink, "tcp"): {53}, (sink, "udp"): {53}},
    }
    base.update(kw)
    return EgressRun(**base)  # type: ignore[arg-type]


def test_egress_judgement_passes_when_declared_arrive_and_the_rest_is_refused() -> None:
    report = egress_report(policy(), _run())
    assert report.verdict is Verdict.PASS
    assert [(e.proto, e.port, e.observed) for e in report.entries] == [
        ("tcp", 53, "arrived"),
        ("udp", 53, "arrived"),
    ]
    assert [(s.proto, s.count, s.ranges) for s in report.spans] == [
        ("tcp", 10, ("50-52", "54-60")),
        ("udp", 10, ("50-52", "54-60")),
    ]
    for text in (
        verify_text(report),
        verify_junit(report),
        verify_metrics(report),
        nmap_xml(report),
    ):
        assert "198.51.100.53" in text
    assert verify_json(report)["mode"] == "egress"


def test_egress_judgement_names_each_kind_of_deviation() -> None:
    sink = ip_address("198.51.100.53")
    refused = set(range(50, 61)) - {53, 55}  # 55 left the host; 53 (declared) refused
    run = _run(
        refused={(sink, "tcp"): refused | {53}, (sink, "udp"): set(range(50, 61))},
        arrived={(sink, "tcp"): {55, 57}, (sink, "udp"): set()},
    )
    report = egress_report(policy(), run)
    assert report.verdict is Verdict.FAIL
    found = {(e.proto, e.port): (e.observed, e.status) for e in report.entries}
    assert found == {
        ("tcp", 53): ("refused", Status.FAIL),  # declared, refused here
        ("tcp", 55): ("sent", Status.FAIL),  # a leak
        ("tcp", 57): ("arrived", Status.FAIL),  # refused here, yet at the sink
        ("udp", 53): ("refused", Status.FAIL),
    }


def test_a_declared_pair_that_left_but_never_arrived_fails_as_lost() -> None:
    sink = ip_address("198.51.100.53")
    report = egress_report(policy(), _run(arrived={(sink, "tcp"): {53}}))
    [lost] = [e for e in report.entries if e.status is Status.FAIL]
    assert (lost.proto, lost.port, lost.observed) == ("udp", 53, "lost")


def test_a_sink_that_heard_nothing_makes_absence_prove_nothing() -> None:
    sink = ip_address("192.0.2.9")
    everything = set(range(50, 61))
    run = _run(
        sinks=[sink],
        refused={(sink, "tcp"): everything, (sink, "udp"): everything},
        arrived={},
    )
    report = egress_report(policy(), run)
    assert report.verdict is Verdict.INCONCLUSIVE
    run.control = {sink}
    assert egress_report(policy(), run).verdict is Verdict.PASS


def test_a_sink_command_that_never_gets_ready_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harden.errors import EnvironmentProblem
    from harden.verify.egress import probe as egress

    monkeypatch.setattr(egress, "READY_TIMEOUT", 0.5)
    with pytest.raises(EnvironmentProblem, match="did not print 'harden sink: capturing'"):
        egress.Sink(["sleep", "30"])  # a hung ssh, a password prompt
    with pytest.raises(EnvironmentProblem, match="ended before it was ready: no such sink"):
        egress.Sink(["sh", "-c", "echo no such sink >&2; exit 3"])
    with pytest.raises(EnvironmentProblem, match="cannot run the sink command"):
        egress.Sink(["/nonexistent/harden-sink"])


def test_the_sink_command_gets_this_hosts_sources() -> None:
    from harden.verify.egress.probe import sink_command

    argv = sink_command(
        "ssh root@sink 'harden sink --from {sources}'",
        [ip_address("198.18.0.1"), ip_address("fd00::1")],
    )
    assert argv == ["ssh", "root@sink", "harden sink --from 198.18.0.1,fd00::1"]
