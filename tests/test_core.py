"""Unit tests of the pure core: manifest parsing, policy normalisation, rendering helpers."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harden.backends import render
from harden.backends.iptables.rules import IPTABLES_MAX_RULES, multiport_chunks
from harden.backends.templating import safe_comment
from harden.errors import RenderError
from harden.files import parse_manifest, service_port
from harden.manifest.model import json_schema
from harden.manifest.ports import PortRange, merge, parse_port
from harden.policy.model import build_policy

from .conftest import REPO


def policy_of(text: str):  # type: ignore[no-untyped-def]
    return build_policy(parse_manifest(text))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (22, PortRange(22, 22)),
        ("22", PortRange(22, 22)),
        (" 1000 - 2000 ", PortRange(1000, 2000)),
        ("65535", PortRange(65535, 65535)),
        ("https", PortRange(443, 443)),
        ("domain", PortRange(53, 53)),
    ],
)
def test_parse_port(value: object, expected: PortRange) -> None:
    assert parse_port(value, service_port) == expected


@pytest.mark.parametrize("value", [0, 65536, -1, "0-10", "10-5", "", "1.5", True, None, [22]])
def test_parse_port_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_port(value)


def test_merge() -> None:
    ports = [PortRange(90, 100), PortRange(80, 80), PortRange(81, 89), PortRange(200, 300)]
    assert merge(ports) == (PortRange(80, 100), PortRange(200, 300))
    assert merge([PortRange(5, 10), PortRange(6, 7)]) == (PortRange(5, 10),)
    assert merge([]) == ()


def test_policy_groups_by_protocol_and_sources() -> None:
    policy = policy_of(
        """
version: 1
services:
  - {name: web, ports: [443, 80], proto: tcp}
  - {name: dns, port: 53, proto: [udp, tcp]}
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/25, 198.18.1.128/25, "fd00::/64"]}
  - {name: git, port: 9418, proto: tcp, sources: ["fd00::/64", 198.18.1.0/24]}
"""
    )
    keys = [(a.key, a.proto, tuple(map(str, a.ports))) for a in policy.allows]
    assert keys == [
        ("tcp", "tcp", ("53", "80", "443")),
        ("udp", "udp", ("53",)),
        ("git_tcp", "tcp", ("22", "9418")),
    ]
    restricted = policy.allows[2]
    assert restricted.services == ("git", "ssh")
    # The two /25 collapse into the /24 the other service names: same group.
    assert restricted.sources[4] == (ipaddress.IPv4Network("198.18.1.0/24"),)
    assert restricted.sources[6] == (ipaddress.IPv6Network("fd00::/64"),)
    assert policy.allows[0].sources[4] is None and policy.allows[0].sources[6] is None


def test_ipv6_off_means_no_ipv6_accepts() -> None:
    policy = policy_of(
        "version: 1\npolicy: {ipv6: false}\n"
        "services: [{name: web, port: 80, proto: tcp}, "
        "{name: s, port: 22, proto: tcp, sources: [198.18.1.0/24]}]"
    )
    assert all(not a.allows_family(6) for a in policy.allows)
    assert all(a.allows_family(4) for a in policy.allows)
    assert policy.accepted(6, "tcp") == ()
    assert [a.key for a in policy.accepted(4, "tcp")] == ["tcp", "s_tcp"]


def test_keys_are_safe_identifiers_and_unique() -> None:
    policy = policy_of(
        """
version: 1
services:
  - {name: "9 lives!", port: 1, proto: tcp, sources: [198.18.0.1]}
  - {name: "9 lives?", port: 2, proto: tcp, sources: [198.18.0.2]}
  - {name: "", port: 3, proto: tcp, sources: [198.18.0.3]}
""".replace('name: ""', 'name: "~~~"')
    )
    keys = [a.key for a in policy.allows]
    assert len(set(keys)) == len(keys) == 3
    for key in keys:
        assert key[0].isalpha() and key.replace("_", "").isalnum() and key.islower()


@pytest.mark.parametrize("text", ['a"b', "a}b;c", "line\nbreak", "back\\slash", "x" * 300])
def test_safe_comment_is_inert(text: str) -> None:
    safe = safe_comment(text)
    assert not set(safe) & set("\"\\\n;{}'#`$")
    assert len(safe) <= 100


def test_multiport_chunks_respect_the_limit() -> None:
    ports = (*(PortRange(p, p) for p in range(1000, 1020)), PortRange(2000, 2010))
    chunks = list(multiport_chunks(ports))
    weights = [sum(2 if ":" in part else 1 for part in chunk.split(",")) for chunk in chunks]
    assert all(w <= 15 for w in weights)
    flat = ",".join(chunks).split(",")
    assert flat == [str(p) for p in range(1000, 1020)] + ["2000:2010"]


def test_iptables_refuses_huge_allowlists_and_nftables_does_not() -> None:
    # Every other address, so nothing collapses: 2,100 separate sources.
    nets = ", ".join(str(ipaddress.IPv4Address("198.18.0.0") + 2 * i) for i in range(2100))
    policy = policy_of(
        f"version: 1\nservices: [{{name: a, port: 22, proto: tcp, sources: [{nets}]}}]"
    )
    assert len(policy.allows[0].sources[4] or ()) > IPTABLES_MAX_RULES
    with pytest.raises(RenderError, match="use --backend nftables"):
        render(policy, "iptables")
    assert "harden.nft" in render(policy, "nftables")


def test_nft_render_never_flushes_the_ruleset() -> None:
    for manifest in (REPO / "rulesets").glob("*.yaml"):
        text = render(build_policy(parse_manifest(manifest.read_text())), "nftables")["harden.nft"]
        statements = [line.strip() for line in text.splitlines() if not line.startswith("#")]
        assert "flush ruleset" not in statements
        assert statements[:2] == ["table inet harden", "delete table inet harden"]
        tables = [s for s in statements if s.startswith("table ")]
        assert set(tables) == {"table inet harden", "table inet harden {"}


def test_reject_mode_renders_admin_prohibited_everywhere() -> None:
    policy = policy_of("version: 1\npolicy: {closed: reject}\n")
    nft = render(policy, "nftables")["harden.nft"]
    assert "reject with icmpx admin-prohibited" in nft
    ipt = render(policy, "iptables")
    assert ipt["harden.rules.v4"].count("--reject-with icmp-admin-prohibited") == 3
    assert ipt["harden.rules.v6"].count("--reject-with icmp6-adm-prohibited") == 3
    # Only invalid packets and forged loopback sources are dropped: neither gets an answer.
    v4 = ipt["harden.rules.v4"].replace("INVALID -j DROP\n", "")
    assert " -j DROP\n" not in v4.replace("! -i lo -s 127.0.0.0/8 -j DROP\n", "")


def test_schema_describes_every_key() -> None:
    schema = json_schema()
    service = schema["$defs"]["Service"]["properties"]
    assert set(service) == {"name", "comment", "port", "ports", "proto", "sources", "limit", "log"}
    assert schema["additionalProperties"] is False


def test_cli_render_writes_files_and_schema_is_json(tmp_path: Path) -> None:
    manifest = REPO / "rulesets" / "web-server.yaml"
    run = [sys.executable, "-m", "harden.cli"]
    out = tmp_path / "out"
    subprocess.run(
        [*run, "render", "--backend", "iptables", str(manifest), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in out.iterdir()) == ["harden.rules.v4", "harden.rules.v6"]
    assert (
        out.joinpath("harden.rules.v4").read_text()
        == (REPO / "rulesets" / "web-server" / "harden.rules.v4").read_text()
    )
    schema = subprocess.run([*run, "schema"], check=True, capture_output=True, text=True)
    assert json.loads(schema.stdout)["title"] == "Manifest"
    summary = subprocess.run(
        [*run, "validate", "--format", "json", str(manifest)],
        check=True,
        capture_output=True,
        text=True,
    )
    dns = REPO / "rulesets" / "dns-server.yaml"
    both = subprocess.run(
        [*run, "validate", "--format", "json", str(manifest), str(dns)],
        check=True,
        capture_output=True,
        text=True,
    )
    listed = json.loads(both.stdout)
    assert listed["schema"] == "harden.validate/1" and listed["valid"] is True
    assert [entry["manifest"] for entry in listed["manifests"]] == [str(manifest), str(dns)]
    assert len(json.loads(summary.stdout)["manifests"]) == 1
    assert json.loads(summary.stdout)["manifests"][0]["summary"] == [
        "tcp/80,443",
        "udp/443",
        "tcp/22 from 198.18.1.0/24,fd00:1::/64",
    ]


def test_building_a_manifest_pauses_the_collector_and_restores_it() -> None:
    """harden/gcpause.py: a large manifest and its policy are built with one automatic
    collection (the one deferred to the end) instead of hundreds, and the collector is as
    it was afterwards (still off inside an outer pause)."""
    import gc

    from harden.gcpause import paused_gc
    from harden.manifest.parse import manifest_from_text

    sources = ", ".join(f"198.18.{i // 256}.{i % 256}/32" for i in range(0, 40_000, 2))
    text = f"version: 1\nservices: [{{name: api, proto: tcp, port: 443, sources: [{sources}]}}]\n"
    started: list[int] = []
    gc.callbacks.append(lambda phase, info: started.append(1) if phase == "start" else None)
    try:
        # The same build without the decorators (functools.wraps keeps what they wrap).
        parse, build = manifest_from_text.__wrapped__, build_policy.__wrapped__  # type: ignore
        build(parse(text))
        assert len(started) > 50, len(started)
        started.clear()
        policy = build_policy(manifest_from_text(text))
        assert len(started) <= 2 and gc.isenabled(), len(started)
        assert len(policy.allows[0].sources[4] or ()) == 20_000
        with paused_gc():
            with paused_gc():
                pass
            assert not gc.isenabled()
        assert gc.isenabled()
    finally:
        gc.callbacks.pop()
