"""Property tests: generated manifests always render to rulesets the kernel accepts;
mutated ones always fail with a one-line error naming the field."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harden.backends import render
from harden.errors import ManifestError
from harden.files import parse_manifest
from harden.lab.netns import Namespace
from harden.policy.model import build_policy

BLOCK = 65  # the port space cut into 1008 blocks: one entry per block, so none overlap
NAME_CHARS = st.characters(codec="utf-8", exclude_categories=["Cs"])


@st.composite
def port_entry(draw: st.DrawFn, block: int) -> int | str:
    first = block * BLOCK + 1 + draw(st.integers(0, BLOCK - 1))
    last = draw(st.integers(first, block * BLOCK + BLOCK))
    if first == last:
        as_text = draw(st.booleans())
        return str(first) if as_text else first
    return f"{first}-{last}"


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    ipv6 = draw(st.booleans())
    count = draw(st.integers(0, 6))
    names = draw(
        st.lists(
            st.text(NAME_CHARS, min_size=1, max_size=20),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    used: set[tuple[str, int]] = set()

    def fresh(kind: str, top: int) -> int:
        """A block (of ports or networks) no other entry uses, so nothing overlaps."""
        value = draw(st.integers(0, top).filter(lambda v: (kind, v) not in used))
        used.add((kind, value))
        return value

    services = []
    for name in names:
        service: dict[str, Any] = {"name": name}
        service["proto"] = draw(st.sampled_from(["tcp", "udp", ["tcp", "udp"], ["udp"]]))
        entries = [
            draw(port_entry(fresh("port", 65535 // BLOCK - 1)))
            for _ in range(draw(st.integers(1, 4)))
        ]
        if len(entries) == 1 and draw(st.booleans()):
            service["port"] = entries[0]
        else:
            service["ports"] = entries
        if draw(st.booleans()):
            sources = []
            for _ in range(draw(st.integers(1, 3))):
                if ipv6 and draw(st.booleans()):
                    base = ipaddress.IPv6Address(f"fd00:{fresh('v6', 0xFFFF):x}::")
                    sources.append(f"{base}/{draw(st.integers(32, 128))}")
                else:
                    base4 = ipaddress.IPv4Address("198.18.0.0") + 256 * fresh("v4", 511)
                    sources.append(f"{base4}/{draw(st.integers(24, 32))}")
            service["sources"] = sources
        if draw(st.booleans()):
            service["comment"] = draw(st.text(NAME_CHARS, max_size=30))
        services.append(service)
    return {
        "version": 1,
        "host": draw(st.none() | st.text(NAME_CHARS, max_size=30)),
        "policy": {
            "closed": draw(st.sampled_from(["drop", "reject"])),
            "icmp": {"echo": draw(st.booleans())},
            "ipv6": ipv6,
            "log_dropped": draw(st.booleans()),
        },
        "services": services,
    }


def as_yaml(data: dict[str, Any]) -> str:
    # JSON is YAML 1.2 with every string quoted: PyYAML's own dumper quotes by YAML 1.1
    # rules and leaves names like 0E0 plain, which a YAML 1.2 reader takes for a number.
    # Astral characters: JSON's surrogate-pair escapes become YAML's \\UXXXXXXXX.
    return re.sub(
        r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})",
        lambda m: f"\\U{ord(bytes.fromhex(m[1] + m[2]).decode('utf-16-be')):08x}",
        json.dumps(data),
    )


@pytest.fixture(scope="module")
def checker() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    with Namespace("prop") as ns:
        yield ns


@pytest.mark.netns
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_every_valid_manifest_renders_to_rules_the_kernel_accepts(
    checker: Namespace, data: dict[str, Any]
) -> None:
    policy = build_policy(parse_manifest(as_yaml(data)))
    nft = render(policy, "nftables")["harden.nft"]
    proc = checker.run(["nft", "-c", "-f", "/dev/stdin"], input=nft, check=False)
    assert proc.returncode == 0, proc.stderr + nft
    for name, text in render(policy, "iptables").items():
        tool = "iptables-restore" if name.endswith("v4") else "ip6tables-restore"
        proc = checker.run([tool, "--test", "--noflush"], input=text, check=False)
        assert proc.returncode == 0, proc.stderr + text


@settings(max_examples=200, deadline=None)
@given(manifests(), st.integers(1, 65535), st.sampled_from(["tcp", "udp"]))
def test_policy_allows_exactly_what_is_declared(
    data: dict[str, Any], port: int, proto: str
) -> None:
    manifest = parse_manifest(as_yaml(data))
    policy = build_policy(manifest)
    declared_any = declared_restricted = False
    for service in manifest.services:
        if proto in service.proto and any(r.first <= port <= r.last for r in service.port_list):
            if service.sources is None:
                declared_any = True
            else:
                declared_restricted = True
    in_open = any(
        a.proto == proto and not a.restricted and any(r.first <= port <= r.last for r in a.ports)
        for a in policy.allows
    )
    in_restricted = any(
        a.proto == proto and a.restricted and any(r.first <= port <= r.last for r in a.ports)
        for a in policy.allows
    )
    assert in_open == declared_any
    assert in_restricted == declared_restricted


MUTATIONS = ["port_zero", "port_high", "reversed", "unknown_key", "bad_cidr", "duplicate"]


@settings(max_examples=200, deadline=None)
@given(manifests(), st.sampled_from(MUTATIONS), st.data())
def test_every_mutated_manifest_fails_with_one_line_naming_the_field(
    data: dict[str, Any], mutation: str, pick: st.DataObject
) -> None:
    services = data["services"]
    if not services:
        services.append({"name": "only", "port": 22, "proto": "tcp"})
    i = pick.draw(st.integers(0, len(services) - 1))
    service = services[i]
    key = "port" if "port" in service else "ports"
    j = pick.draw(st.integers(0, len(service[key]) - 1)) if key == "ports" else None
    where = f"services[{i}].{key}" + (f"[{j}]" if j is not None else "")

    def set_port(value: object) -> None:
        if j is None:
            service["port"] = value
        else:
            service["ports"][j] = value

    if mutation == "port_zero":
        set_port(0)
    elif mutation == "port_high":
        set_port(pick.draw(st.integers(65536, 10**6)))
    elif mutation == "reversed":
        set_port("900-100")
    elif mutation == "unknown_key":
        service["sorces"] = ["198.18.0.0/24"]
        where = f"services[{i}].sorces"
    elif mutation == "bad_cidr":
        service["sources"] = [*service.get("sources", []), "198.18.1.300/24"]
        where = f"services[{i}].sources[{len(service['sources']) - 1}]"
    elif mutation == "duplicate":
        services.append(dict(service))
        where = f"services[{len(services) - 1}]"
    with pytest.raises(ManifestError) as caught:
        parse_manifest(as_yaml(data), source="m.yaml")
    message = str(caught.value)
    assert message.startswith(f"m.yaml: {where}"), message
    assert "\n" not in message


YAML_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=10)
    | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["version", "services", "policy", "name", "port", "ports", "proto", "sources", "x"]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["version", "host", "policy", "services", "extra"]), YAML_VALUES, max_size=4
    )
)
def test_arbitrary_documents_never_raise_anything_but_manifest_error(data: Any) -> None:
    try:
        parse_manifest(yaml.safe_dump(data), source="m.yaml")
    except ManifestError as exc:
        assert str(exc).startswith("m.yaml")
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_but_manifest_error(text: str) -> None:
    try:
        parse_manifest(text, source="m.yaml")
    except ManifestError as exc:
        assert "\n" not in str(exc)
