"""The policy is one guarded source: a change to any Policy field shows where reviewers look.

Every field of ``Policy`` is mutated in turn; ``harden diff OLD NEW`` (exposure_diff)
and ``harden validate``'s summary must both notice. A new field fails here until both
show it, or until it is listed below as not exposure, with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from ipaddress import IPv4Address, ip_network

import pytest

from harden.apply.results import Validation
from harden.manifest.parse import manifest_from_text
from harden.manifest.ports import PortRange
from harden.policy.exposure import exposure_diff
from harden.policy.model import PerFamily, Policy, build_policy

MANIFEST = """\
version: 1
host: app-1
policy:
  closed: drop
  ipv6: true
  icmp: {echo: true}
  trusted_interfaces: [docker0]
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24, "fd00:1::/64"], limit: 10/minute}
  - {name: web, port: 443, proto: tcp}
forward:
  policy: drop
  allow:
    - {name: lan, in_interface: wg0, destinations: [198.18.50.0/24], proto: tcp, ports: [22]}
egress:
  policy: reject
  dhcp: true
  dhcp_servers: [198.18.1.1]
  allow:
    - {name: dns, destinations: [198.51.100.53/32], port: 53, proto: udp}
verify:
  probers: [198.18.9.0/24]
"""
MANIFEST_OBJ = manifest_from_text(MANIFEST, "m.yaml")
BASE = build_policy(MANIFEST_OBJ)

# Fields that change no accepted packet, and so no exposure: why, per field.
NOT_EXPOSURE = {
    "host": "a name in comments and reports",
    "log_dropped": "logs what is dropped either way",
    "probers": "count-only rules: they accept nothing",
}


SSH = next(i for i, a in enumerate(BASE.allows) if "ssh" in a.services)


def _ssh(**changes: object) -> Callable[[Policy], Policy]:
    """A change to the ssh allow (restricted to sources, with a limit)."""

    def mutate(p: Policy) -> Policy:
        allows = list(p.allows)
        allows[SSH] = dataclasses.replace(allows[SSH], **changes)  # type: ignore[arg-type]
        return dataclasses.replace(p, allows=tuple(allows))

    return mutate


def _field(name: str, value: object) -> Callable[[Policy], Policy]:
    return lambda p: dataclasses.replace(p, **{name: value})  # type: ignore[arg-type]


def _out0(p: Policy) -> Policy:
    first = dataclasses.replace(p.outbound[0], ports=(PortRange(53, 54),))
    return dataclasses.replace(p, outbound=(first, *p.outbound[1:]))


def _fwd0(p: Policy) -> Policy:
    first = dataclasses.replace(p.forwarded[0], ports=(PortRange(80, 80),))
    return dataclasses.replace(p, forwarded=(first, *p.forwarded[1:]))


MUTATIONS: dict[str, Callable[[Policy], Policy]] = {
    "host": _field("host", "app-2"),
    "closed": _field("closed", "reject"),
    "echo": _field("echo", False),
    "ipv6": _field("ipv6", False),
    "log_dropped": _field("log_dropped", True),
    "allows": _ssh(ports=(PortRange(2222, 2222),)),
    "probers": _field("probers", PerFamily((ip_network("198.18.8.0/24"),), ())),
    "trusted": _field("trusted", ("docker0", "cni0")),
    "dhcpv6": _field("dhcpv6", True),
    "forward": _field("forward", "accept"),
    "forwarded": _fwd0,
    "egress": _field("egress", "drop"),
    "outbound": _out0,
    "egress_dhcp": _field("egress_dhcp", False),
    "dhcp_servers": _field("dhcp_servers", (IPv4Address("198.18.1.2"),)),
}


def test_every_policy_field_has_a_mutation() -> None:
    """A field added to Policy fails here first: add its mutation, then make both notice."""
    assert sorted(f.name for f in dataclasses.fields(Policy)) == sorted(MUTATIONS)


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_changed_field_is_a_changed_exposure(name: str) -> None:
    changed = MUTATIONS[name](BASE)
    assert getattr(changed, name) != getattr(BASE, name)
    diff = exposure_diff(BASE, changed, "old", "new")
    if name in NOT_EXPOSURE:
        assert not diff.changed, f"{name} changes exposure after all: drop it from NOT_EXPOSURE"
    else:
        assert diff.changed, f"harden diff does not notice a changed {name}"


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_a_changed_field_changes_the_validation_summary(name: str) -> None:
    changed = MUTATIONS[name](BASE)
    before = Validation.of("m.yaml", MANIFEST_OBJ, BASE).to_json()
    after = Validation.of("m.yaml", MANIFEST_OBJ, changed).to_json()
    assert before != after, f"harden validate does not show a changed {name}"


def test_the_allow_fields_are_noticed_too() -> None:
    """Sources, limits and logging of one allow: each is exposure or shown."""
    ssh = BASE.allows[SSH]
    assert ssh.limit is not None and ssh.sources[4]
    for change in (
        {"sources": PerFamily((ip_network("198.18.2.0/24"),), ssh.sources[6])},
        {"limit": None},
    ):
        changed = _ssh(**change)(BASE)
        assert exposure_diff(BASE, changed, "old", "new").changed, change
    logged = _ssh(log=not ssh.log)(BASE)
    before = Validation.of("m.yaml", MANIFEST_OBJ, BASE).to_json()
    assert Validation.of("m.yaml", MANIFEST_OBJ, logged).to_json() != before
