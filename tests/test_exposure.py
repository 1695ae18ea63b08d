"""harden diff OLD NEW: the exposure difference of two manifests, exact and normalised.

Pure and fast: no firewall, no root. ``check_exact`` samples (family, proto, port,
source address) and checks that the changes describe exactly what NEW accepts that OLD
did not (opens, widens) and the reverse (closes, narrows).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harden.core.exposure import Change, ExposureDiff, exposure, exposure_diff
from harden.core.policy import Policy, build_policy
from harden.core.ports import PortRange, merge
from harden.core.types import FAMILIES, Address
from harden.files import parse_manifest

from .conftest import REPO
from .test_properties import manifests

GOLDEN = Path(__file__).parent / "golden_exposure"
INVERSE = {"opens": "closes", "closes": "opens", "widens": "narrows", "narrows": "widens"}


def policy_of(data: dict[str, Any] | str) -> Policy:
    if isinstance(data, str):
        return build_policy(parse_manifest(data))
    # Names, comments and the host never change exposure; ASCII names keep the YAML
    # loadable whatever characters the generator drew (JSON is YAML 1.2).
    clean = copy.deepcopy(data)
    clean["host"] = None
    for service in clean["services"]:
        service["name"] = service["name"].encode("unicode_escape").decode()[:64]
        service.pop("comment", None)
    return build_policy(parse_manifest(json.dumps(clean)))


def diff_of(old: dict[str, Any] | str, new: dict[str, Any] | str) -> ExposureDiff:
    return exposure_diff(policy_of(old), policy_of(new), "old.yaml", "new.yaml")


def text_of(old: str, new: str) -> list[str]:
    return diff_of(old, new).to_text().splitlines()


# --- the exactness check ------------------------------------------------------------


def _holds(change: Change, proto: str, port: int, address: Address) -> bool:
    """Whether ``change`` adds (opens, widens) or removes (closes, narrows) this point."""
    if change.proto != proto or not any(port in r for r in change.ports):
        return False
    if change.family != "both" and change.family != f"ipv{address.version}":
        return False

    def has(sources: Any) -> bool:
        return sources is None or any(address in n for n in sources if n.version == address.version)

    if change.change in ("opens", "widens"):
        return has(change.after) and not has(change.before)
    return has(change.before) and not has(change.after)


def _sample_points(old: Policy, new: Policy, seed: int) -> tuple[list[int], list[Address]]:
    rng = random.Random(seed)
    ports = {1, 65535, *(rng.randint(1, 65535) for _ in range(5))}
    addresses: set[Address] = {
        ipaddress.ip_address("203.0.113.7"),
        ipaddress.ip_address("2001:db8::7"),
        ipaddress.ip_address(rng.getrandbits(32)),
        ipaddress.IPv6Address(rng.getrandbits(128)),
    }
    for policy in (old, new):
        for allow in policy.allows:
            for r in allow.ports:
                ports |= {p for p in (r.first - 1, r.first, r.last, r.last + 1) if 1 <= p <= 65535}
                ports.add(rng.randint(r.first, r.last))
            for family in FAMILIES:
                for net in allow.sources(family) or ():
                    first, last = int(net.network_address), int(net.broadcast_address)
                    for value in (first - 1, first, rng.randint(first, last), last, last + 1):
                        if 0 <= value < 2**net.max_prefixlen:
                            addresses.add(
                                ipaddress.ip_address(value)
                                if net.version == 4
                                else ipaddress.IPv6Address(value)
                            )
    # Bounded: every boundary when there are few, a random sample of them otherwise.
    chosen_ports = rng.sample(sorted(ports), min(len(ports), 40))
    ordered = sorted(addresses, key=lambda a: (a.version, int(a)))
    return chosen_ports, rng.sample(ordered, min(len(ordered), 40))


def check_exact(old: Policy, new: Policy, diff: ExposureDiff, seed: int = 0) -> None:
    """Every sampled point is added or removed exactly when some change says so."""
    ports, addresses = _sample_points(old, new, seed)
    adds = [c for c in diff.changes if c.change in ("opens", "widens")]
    removes = [c for c in diff.changes if c.change in ("closes", "narrows")]
    for proto in ("tcp", "udp"):
        for port in ports:
            for address in addresses:
                was, now = old.accepts(address, proto, port), new.accepts(address, proto, port)
                point = (proto, port, str(address))
                assert (now and not was) == any(_holds(c, proto, port, address) for c in adds), (
                    point
                )
                assert (was and not now) == any(_holds(c, proto, port, address) for c in removes), (
                    point
                )


# --- properties ---------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(manifests())
def test_a_manifest_against_itself_is_no_change(data: dict[str, Any]) -> None:
    diff = diff_of(data, data)
    assert not diff.changed
    assert diff.to_text() == "no exposure change"
    assert diff.to_json()["changes"] == []


def _inverted(change: Change) -> tuple[Any, ...]:
    if change.change == "policy":
        return ("policy", change.setting, change.new, change.old, change.family)
    return (
        INVERSE[change.change],
        change.family,
        change.proto,
        change.ports,
        change.after,
        change.before,
    )


def _plain(change: Change) -> tuple[Any, ...]:
    if change.change == "policy":
        return ("policy", change.setting, change.old, change.new, change.family)
    return (change.change, change.family, change.proto, change.ports, change.before, change.after)


@settings(max_examples=100, deadline=None)
@given(manifests(), manifests())
def test_old_to_new_is_the_inverse_of_new_to_old_and_exact(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    pa, pb = policy_of(a), policy_of(b)
    forward, backward = exposure_diff(pa, pb, "a", "b"), exposure_diff(pb, pa, "b", "a")
    assert sorted(map(_plain, forward.changes), key=repr) == sorted(
        map(_inverted, backward.changes), key=repr
    )
    check_exact(pa, pb, forward)
    check_exact(pb, pa, backward)


NEW_SOURCES = st.sampled_from(
    [
        None,
        ["10.1.0.0/16"],
        ["10.2.3.0/24", "10.9.0.0/16"],
        ["fd99::/48"],
        ["10.4.0.0/16", "fd98::/64"],
    ]
)


@settings(max_examples=100, deadline=None)
@given(
    manifests(),
    st.sampled_from(["tcp", "udp", ["tcp", "udp"]]),
    st.lists(st.integers(65521, 65535), min_size=1, max_size=4, unique=True),  # unused ports
    NEW_SOURCES,
)
def test_adding_one_service_opens_exactly_its_ports_to_its_sources(
    data: dict[str, Any], proto: str | list[str], ports: list[int], sources: list[str] | None
) -> None:
    ipv6 = data["policy"]["ipv6"]
    if sources is not None and not ipv6:  # a manifest refuses IPv6 sources without IPv6
        sources = [s for s in sources if ":" not in s]
        assume(sources)
    new = copy.deepcopy(data)
    service: dict[str, Any] = {"name": "added-service", "ports": ports, "proto": proto}
    if sources is not None:
        service["sources"] = sources
    new["services"] = [
        *[s for s in new["services"] if s["name"] != "added-service"],
        service,
    ]
    old_policy, new_policy = policy_of(data), policy_of(new)
    diff = exposure_diff(old_policy, new_policy, "old", "new")
    nets = [ipaddress.ip_network(s) for s in sources or ()]
    expected: dict[int, Any] = {
        4: None if sources is None else tuple(n for n in nets if n.version == 4),
        6: ()
        if not ipv6
        else None
        if sources is None
        else tuple(n for n in nets if n.version == 6),
    }
    opened = {f for f in FAMILIES if expected[f] != ()}
    protos = {proto} if isinstance(proto, str) else set(proto)
    want_ports = merge(PortRange(p, p) for p in ports)
    assert {c.proto for c in diff.changes} == (protos if opened else set())
    for change in diff.changes:
        assert change.change == "opens", change.text
        assert change.ports == want_ports
        families = {4, 6} if change.family == "both" else {int(change.family[-1])}
        assert families == opened
        if change.family == "both":
            after = None if sources is None else (*expected[4], *expected[6])
        else:
            after = expected[families.pop()]
        assert change.after == after
    check_exact(old_policy, new_policy, diff)


@settings(max_examples=100, deadline=None)
@given(manifests(), st.randoms(use_true_random=False))
def test_reordering_renaming_and_splitting_services_is_no_change(
    data: dict[str, Any], rnd: random.Random
) -> None:
    new = copy.deepcopy(data)
    services = []
    for i, service in enumerate(new["services"]):
        entries = service.pop("ports", None) or [service.pop("port")]
        protos = service["proto"] if isinstance(service["proto"], list) else [service["proto"]]
        for j, entry in enumerate(entries):  # one service per port and protocol
            for proto in protos:
                services.append(
                    {
                        **service,
                        "name": f"renamed {i}.{j} {proto}",
                        "port": entry,
                        "proto": proto,
                        "comment": "moved",
                    }
                )
    rnd.shuffle(services)
    new["services"] = services
    new["host"] = "another-host"
    new["policy"]["log_dropped"] = not new["policy"]["log_dropped"]
    assert not diff_of(data, new).changed


# --- worked examples ----------------------------------------------------------------

SSH_ANY_V4 = """version: 1
policy: {ipv6: false}
services: [{name: ssh, port: 22, proto: tcp}]
"""
SSH_OPS_V4 = """version: 1
policy: {ipv6: false}
services: [{name: admin, port: 22, proto: tcp, sources: [198.18.1.0/24]}]
"""


def test_narrows_from_any_to_a_network_ipv4_only() -> None:
    assert text_of(SSH_ANY_V4, SSH_OPS_V4) == [
        "narrows tcp/22 from any IPv4 source to 198.18.1.0/24"
    ]
    assert text_of(SSH_OPS_V4, SSH_ANY_V4) == [
        "widens tcp/22 from 198.18.1.0/24 to any IPv4 source"
    ]


def test_widens_to_a_larger_network_and_to_extra_networks() -> None:
    wide = SSH_OPS_V4.replace("198.18.1.0/24", "198.18.0.0/16")
    assert text_of(SSH_OPS_V4, wide) == ["widens tcp/22 from 198.18.1.0/24 to 198.18.0.0/16"]
    extra = SSH_OPS_V4.replace("[198.18.1.0/24]", "[198.18.1.0/24, 10.0.0.0/8]")
    assert text_of(SSH_OPS_V4, extra) == [
        "widens tcp/22 from 198.18.1.0/24 to 10.0.0.0/8, 198.18.1.0/24 (adds 10.0.0.0/8)"
    ]
    assert text_of(extra, SSH_OPS_V4) == [
        "narrows tcp/22 from 10.0.0.0/8, 198.18.1.0/24 to 198.18.1.0/24 (removes 10.0.0.0/8)"
    ]


def test_moving_to_another_network_opens_one_and_closes_the_other() -> None:
    moved = SSH_OPS_V4.replace("198.18.1.0/24", "198.18.2.0/24")
    assert text_of(SSH_OPS_V4, moved) == [
        "opens tcp/22 to 198.18.2.0/24",
        "closes tcp/22 to 198.18.1.0/24",
    ]


def test_opens_a_port_to_both_families_and_merges_adjacent_ports() -> None:
    old = "version: 1\nservices: []\n"
    new = """version: 1
services:
  - {name: alt, port: 8080, proto: tcp}
  - {name: b, ports: ["8000-8004", 9000], proto: udp}
  - {name: a, port: "8005-8079", proto: udp}
"""
    assert text_of(old, new) == [
        "opens tcp/8080 to any IPv4 and IPv6 source",
        "opens udp/8000-8079,9000 to any IPv4 and IPv6 source",
    ]


def test_ipv6_off_closes_the_ipv6_side_and_says_so() -> None:
    old = """version: 1
services:
  - {name: dns, port: 53, proto: udp}
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24, "fd00:1::/64"]}
"""
    new = old.replace("version: 1\n", "version: 1\npolicy: {ipv6: false}\n")
    new = new.replace(', "fd00:1::/64"', "")
    assert text_of(old, new) == [
        "closes tcp/22 to fd00:1::/64",
        "closes udp/53 to any IPv6 source",
        "stops serving IPv6 (ipv6: true -> false)",
    ]


def test_policy_changes_closed_and_echo() -> None:
    old = "version: 1\nservices: [{name: web, port: 443, proto: tcp}]\n"
    new = old.replace("version: 1\n", "version: 1\npolicy: {closed: reject, icmp: {echo: false}}\n")
    assert text_of(old, new) == [
        "closed ports are now rejected (ICMP admin-prohibited) instead of dropped silently "
        "(closed: drop -> reject)",
        "stops answering ping (icmp.echo: true -> false)",
    ]
    assert [c["setting"] for c in diff_of(old, new).to_json()["changes"]] == [
        "closed",
        "icmp.echo",
    ]


def test_exposure_lists_what_a_policy_accepts() -> None:
    policy = policy_of(SSH_OPS_V4)
    assert exposure(policy, 4, "tcp") == [
        (PortRange(22, 22), (ipaddress.ip_network("198.18.1.0/24"),))
    ]
    assert exposure(policy, 6, "tcp") == []


def _golden_pair() -> ExposureDiff:
    old, new = (REPO / "rulesets" / f"{n}.yaml" for n in ("web-server", "bastion"))
    return exposure_diff(
        policy_of(old.read_text()),
        policy_of(new.read_text()),
        "rulesets/web-server.yaml",
        "rulesets/bastion.yaml",
    )


@pytest.mark.parametrize("name", ["web-to-bastion.json", "web-to-bastion.md"])
def test_output_matches_golden(name: str, update_golden: bool) -> None:
    diff = _golden_pair()
    got = (
        json.dumps(diff.to_json(), indent=2) + "\n"
        if name.endswith(".json")
        else diff.to_markdown()
    )
    path = GOLDEN / name
    if update_golden:
        path.parent.mkdir(exist_ok=True)
        path.write_text(got)
    assert got == path.read_text()


def test_markdown_lists_opens_first_and_says_when_nothing_changed() -> None:
    md = diff_of(SSH_OPS_V4, SSH_ANY_V4.replace("22", "2222")).to_markdown()
    assert md.index("Opens") < md.index("Closes")
    assert "- ⚠ opens tcp/2222 to any IPv4 source" in md
    assert "No exposure change." in diff_of(SSH_OPS_V4, SSH_OPS_V4).to_markdown()


# --- the command line ---------------------------------------------------------------


def harden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harden.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_diff_of_two_rulesets_reports_the_change() -> None:
    proc = harden("diff", "rulesets/web-server.yaml", "rulesets/bastion.yaml")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == _golden_pair().to_text() + "\n"
    assert proc.stdout.splitlines() == [
        "widens tcp/22 from 198.18.1.0/24, fd00:1::/64 to 198.18.1.0/24, 198.19.7.0/24, "
        "fd00:1::/64, fd00:7::/64 (adds 198.19.7.0/24, fd00:7::/64)",
        "closes tcp/80,443 to any IPv4 and IPv6 source",
        "closes udp/443 to any IPv4 and IPv6 source",
        "stops answering ping (icmp.echo: true -> false)",
    ]
    proc = harden("diff", "rulesets/web-server.yaml", "rulesets/bastion.yaml", "--format", "json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == _golden_pair().to_json()


def test_cli_diff_of_a_manifest_with_itself_is_exit_0() -> None:
    proc = harden("diff", "rulesets/bastion.yaml", "rulesets/bastion.yaml")
    assert (proc.returncode, proc.stdout) == (0, "no exposure change\n"), proc.stderr


def test_cli_diff_refuses_backend_with_two_manifests_and_bad_manifests(tmp_path: Path) -> None:
    proc = harden(
        "diff", "rulesets/web-server.yaml", "rulesets/bastion.yaml", "--backend", "iptables"
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("harden: error: --backend") and proc.stderr.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nservices: [{name: x, port: 0, proto: tcp}]\n")
    proc = harden("diff", "rulesets/web-server.yaml", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"harden: error: {bad}: services[0].port")
    assert proc.stderr.count("\n") == 1


def test_forwarding_settings_are_reviewed() -> None:
    """Trusting an interface, routing policy, forward allows, limits and DHCPv6 are named."""
    old = "version: 1\nservices: [{name: ssh, port: 22, proto: tcp, limit: 6/30s}]\n"
    new = (
        "version: 1\npolicy: {trusted_interfaces: [docker0], dhcpv6: true}\n"
        "services: [{name: ssh, port: 22, proto: tcp}]\n"
        "forward: {policy: drop, allow: [{name: vpn, in_interface: wg0}]}\n"
    )
    texts = [c.text for c in diff_of(old, new).changes]
    assert texts == [
        "trusted interfaces change (+docker0): everything arriving on docker0 is accepted",
        "drops routed traffic (forward.policy: accept -> drop)",
        "adds the forward allow 'vpn'",
        "accepts DHCPv6 replies (dhcpv6: false -> true)",
        "ssh/tcp: new connections per source limited 6/30s -> none",
    ]
    assert not diff_of(new, new).changed
