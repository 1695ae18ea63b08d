"""The service manifest: pydantic models, YAML loading, one-line errors."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from harden.manifest.ports import PortRange, parse_port, show
from harden.types import PROTOS, Network, Proto


def _port(value: object, info: ValidationInfo) -> PortRange:
    context = info.context or {}
    return parse_port(value, context.get("service_port"))


def _parse_network(value: object) -> Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a network like 198.18.1.0/24 or fd00::/64, got {show(value)}")
    if (quad := _IPV4.fullmatch(value)) is not None:
        # The common case of a long allowlist, without parsing the text twice over: the
        # same network ipaddress gives, and anything odd (host bits set) goes the long way.
        address, prefix = quad.groups()
        a, b, c, d = address.split(".")
        number = int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)
        bits = int(prefix) if prefix is not None else 32
        if bits <= 32 and number & ((1 << (32 - bits)) - 1) == 0:
            return ipaddress.IPv4Network((number, bits))
    elif (six := _ipv6(value)) is not None:
        return six
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        if _HOSTNAME.fullmatch(value.strip()):
            raise ValueError(
                f"{show(value)} is a host name, and networks are required (harden resolves no "
                "names: a name's addresses can change after apply); write its addresses as "
                "networks, e.g. 203.0.113.10/32"
            ) from None
        raise ValueError(f"bad network {show(value)}: {exc}") from None


# A dotted quad as ipaddress reads one (no leading zeros, each octet at most 255),
# optionally with a prefix length of plain digits.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"((?:{_OCTET}\.){{3}}{_OCTET})(?:/(0|[1-9][0-9]?))?")
_HEX = re.compile(r"[0-9a-fA-F]{1,4}")
_PREFIX6 = re.compile(r"0|[1-9][0-9]?|1[01][0-9]|12[0-8]")


def _ipv6(value: str) -> ipaddress.IPv6Network | None:
    """An IPv6 network in plain hex groups (one "::" at most), else None: ipaddress's."""
    address, slash, prefix = value.partition("/")
    if slash and not _PREFIX6.fullmatch(prefix):
        return None
    halves = address.split("::")
    if len(halves) > 2:
        return None
    groups = [h.split(":") if h else [] for h in halves]
    count = sum(map(len, groups))
    if count > (7 if len(halves) == 2 else 8) or count < (0 if len(halves) == 2 else 8):
        return None
    if not all(_HEX.fullmatch(g) for half in groups for g in half):
        return None
    head = [int(g, 16) for g in groups[0]]
    tail = [int(g, 16) for g in groups[1]] if len(groups) == 2 else []
    number = 0
    for word in [*head, *[0] * (8 - len(head) - len(tail)), *tail]:
        number = number << 16 | word
    bits = int(prefix) if slash else 128
    if number & ((1 << (128 - bits)) - 1):
        return None  # host bits set: ipaddress says so in its words
    return ipaddress.IPv6Network((number, bits))


# Something with a letter in it and only name characters: a DNS name, not a network.
_HOSTNAME = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.?")


def _parse_protos(value: object) -> tuple[Proto, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise ValueError("expected 'tcp', 'udp' or a list of them, got an empty list")
    protos: list[Proto] = []
    for item in items:
        if item not in PROTOS:
            raise ValueError(f"expected 'tcp', 'udp' or a list of them, got {show(item)}")
        if item in protos:
            raise ValueError(f"protocol {item!r} listed twice")
        protos.append(item)
    return tuple(sorted(protos))


Port = Annotated[
    PortRange,
    PlainValidator(_port),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "description": "'N', 'N-M' or a name from /etc/services"},
            ]
        }
    ),
]
Source = Annotated[
    Network,
    PlainValidator(_parse_network),
    WithJsonSchema({"type": "string", "description": "IPv4 or IPv6 network, e.g. 198.18.1.0/24"}),
]
Protos = Annotated[
    tuple[Proto, ...],
    PlainValidator(_parse_protos),
    WithJsonSchema(
        {
            "anyOf": [
                {"enum": list(PROTOS)},
                {"type": "array", "items": {"enum": list(PROTOS)}, "minItems": 1},
            ]
        }
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# An interface name (at most IFNAMSIZ - 1 = 15 characters), or a prefix ending in "*".
# Both backends match a trailing wildcard (nft "br-*", iptables "br-+") and nothing
# else, so no other glob is accepted: we refuse what a backend cannot express.
_IFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}|[A-Za-z0-9_.-]{1,14}\*")


def _parse_iface(value: object) -> str:
    if not isinstance(value, str) or not _IFACE.fullmatch(value):
        raise ValueError(
            "expected an interface name (up to 15 of A-Z a-z 0-9 _ . -) or a prefix "
            f"ending in '*' such as 'br-*', got {show(value)}"
        )
    return value


Iface = Annotated[
    str,
    PlainValidator(_parse_iface),
    WithJsonSchema({"type": "string", "description": "interface name, or prefix ending in '*'"}),
]

# Periods a new-connection limit may use, in seconds; both nftables (limit rate N/unit)
# and iptables (hashlimit N/unit) take these four units.
RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_UNIT_ALIASES = {"s": 1, "m": 60, "h": 3600, "d": 86400, **RATE_UNITS}
_LIMIT = re.compile(r"(\d{1,5})\s*/\s*(\d{0,5})\s*([a-z]+)")
MAX_LIMIT_COUNT = 10_000  # iptables hashlimit refuses larger bursts


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` new connections per ``period`` seconds from one source address.

    Rendered as a token bucket holding ``count`` tokens and refilling at
    ``rate`` per ``unit``: the same average, and a burst of ``count``.
    """

    count: int
    period: int  # seconds
    rate: int
    unit: str  # second | minute | hour | day

    def __str__(self) -> str:
        """``6/30s``."""
        return f"{self.count}/{self.period}s"


def _parse_limit(value: object) -> RateLimit:
    match = _LIMIT.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match is None or match.group(3) not in _UNIT_ALIASES:
        raise ValueError(
            "expected new connections per source and period, like '6/30s', '10/minute' "
            f"or '100/h', got {show(value)}"
        )
    count = int(match.group(1))
    period = int(match.group(2) or 1) * _UNIT_ALIASES[match.group(3)]
    if not 1 <= count <= MAX_LIMIT_COUNT or period == 0:
        raise ValueError(f"the count must be 1 to {MAX_LIMIT_COUNT} and the period above 0")
    for unit, seconds in RATE_UNITS.items():
        if (count * seconds) % period == 0:
            return RateLimit(count, period, count * seconds // period, unit)
    raise ValueError(
        f"{count} per {period} s is no whole number of connections per second, minute, "
        "hour or day, which is what nftables and iptables can express; "
        "pick a period that divides evenly"
    )


Limit = Annotated[
    RateLimit,
    PlainValidator(_parse_limit),
    WithJsonSchema({"type": "string", "description": "new connections per source, e.g. '6/30s'"}),
]


# Booleans are strict: a YAML string "no" or a 0 never becomes a boolean by accident.
class Icmp(_Model):
    """ICMP behaviour. Essential ICMP/ICMPv6 (ND, PMTU, errors) is always allowed."""

    echo: StrictBool = Field(True, description="answer ping (rate-limited)")


class Settings(_Model):
    """Host-wide policy."""

    closed: Literal["drop", "reject"] = Field(
        "drop",
        description="drop: silent (default); reject: ICMP admin-prohibited for every protocol",
    )
    icmp: Icmp = Icmp()
    ipv6: StrictBool = Field(True, description="serve the services over IPv6 too")
    log_dropped: StrictBool = Field(False, description="rate-limited kernel log of dropped packets")
    trusted_interfaces: tuple[Iface, ...] = Field(
        (),
        description="interfaces whose traffic is not the outside world (container bridges "
        "such as docker0 or 'br-*', cni0, a management link): accepted in input and never "
        "filtered in forward",
    )
    dhcpv6: StrictBool = Field(
        False,
        description="accept DHCPv6 replies (udp 547 -> 546 from fe80::/10) for a host whose "
        "addresses come from DHCPv6",
    )


class _HasPorts(Protocol):
    @property
    def port(self) -> PortRange | None: ...

    @property
    def ports(self) -> tuple[PortRange, ...] | None: ...


class _PortOrPorts:
    """The ``port``/``ports`` pair of a service or an egress allow: exactly one is given."""

    @property
    def port_list(self: _HasPorts) -> tuple[PortRange, ...]:
        """The declared ports, whichever of ``port``/``ports`` was used."""
        if self.ports is not None:
            return self.ports
        assert self.port is not None  # guaranteed by _exactly_one_port
        return (self.port,)

    @property
    def port_field(self: _HasPorts) -> str:
        """The manifest key that holds the ports (for error paths)."""
        return "port" if self.ports is None else "ports"


_P = TypeVar("_P", bound=_HasPorts)


def _exactly_one_port(model: _P) -> _P:
    if (model.port is None) == (model.ports is None):
        raise ValueError("give exactly one of 'port' or 'ports'")
    return model


class Service(_PortOrPorts, _Model):
    """One declared service: ports of one or two protocols, optionally from some sources."""

    name: str = Field(min_length=1, max_length=64)
    comment: str | None = Field(None, max_length=200)
    port: Port | None = None
    ports: tuple[Port, ...] | None = Field(None, min_length=1)
    proto: Protos
    sources: tuple[Source, ...] | None = Field(
        None, min_length=1, description="allowed source networks; omit for any source"
    )
    limit: Limit | None = Field(
        None,
        description="new connections per source address, like ufw's 'limit' ('6/30s'): "
        "more are dropped",
    )
    log: StrictBool = Field(
        False, description="rate-limited kernel log of refused attempts (source or limit)"
    )

    @model_validator(mode="after")
    def _one_of_port_ports(self) -> Service:
        return _exactly_one_port(self)


class Verify(_Model):
    """What the target does for its verifier."""

    probers: tuple[Source, ...] = Field(
        min_length=1,
        description="networks harden verify runs from: the ruleset counts their probes "
        "(arrived, and dropped at the closed path) so 'verify --witness' can check both sides",
    )


class ForwardAllow(_Model):
    """Routed, untranslated traffic harden lets through when ``forward.policy`` is drop."""

    name: str = Field(min_length=1, max_length=64)
    comment: str | None = Field(None, max_length=200)
    in_interface: Iface = Field(description="interface the traffic arrives on")
    out_interface: Iface | None = Field(None, description="interface it leaves by; omit: any")
    sources: tuple[Source, ...] | None = Field(None, min_length=1)
    destinations: tuple[Source, ...] | None = Field(None, min_length=1)
    proto: Protos | None = None
    ports: tuple[Port, ...] | None = Field(
        None, min_length=1, description="destination ports (needs proto)"
    )

    @model_validator(mode="after")
    def _ports_need_proto(self) -> ForwardAllow:
        if self.ports is not None and self.proto is None:
            raise ValueError("'ports' needs 'proto'")
        return self


class Forward(_Model):
    """Routed traffic that was not destination-NATed.

    Translated traffic (Docker, Kubernetes, port forwards) is always held to
    ``services`` by its original port; this covers the rest.
    """

    policy: Literal["accept", "drop"] = Field(
        "accept",
        description="accept: routed traffic is left to the host's other rules (default); "
        "drop: only 'allow' entries, trusted interfaces and replies pass",
    )
    allow: tuple[ForwardAllow, ...] = ()

    @model_validator(mode="after")
    def _allow_needs_drop(self) -> Forward:
        if self.allow and self.policy != "drop":
            raise ValueError("'allow' entries need 'policy: drop' (otherwise all is allowed)")
        return self


class EgressAllow(_PortOrPorts, _Model):
    """Outbound traffic harden lets out when ``egress.policy`` is drop or reject."""

    name: str = Field(min_length=1, max_length=64)
    comment: str | None = Field(None, max_length=200)
    destinations: tuple[Source, ...] | None = Field(
        None, min_length=1, description="destination networks; omit for any destination"
    )
    port: Port | None = None
    ports: tuple[Port, ...] | None = Field(None, min_length=1)
    proto: Protos

    @model_validator(mode="after")
    def _one_of_port_ports(self) -> EgressAllow:
        return _exactly_one_port(self)


class Egress(_Model):
    """What the host may send: new outbound connections (docs/design.md, "Egress").

    Replies to inbound connections, loopback, ICMP errors, neighbour discovery and MLD
    are always allowed.
    """

    policy: Literal["accept", "drop", "reject"] = Field(
        "accept",
        description="accept: the host may connect anywhere (default); drop: only 'allow' "
        "entries leave; reject: the same, and a local program gets an error at once",
    )
    dhcp: StrictBool = Field(
        False,
        description="let the DHCP client renew its lease (udp 68 -> 67 to the broadcast "
        "address and the dhcp_servers, and DHCPv6 546 -> 547 with policy.ipv6)",
    )
    dhcp_servers: tuple[ipaddress.IPv4Address, ...] = Field(
        (),
        description="the DHCP servers the client may renew with by unicast (without them, "
        "renewals wait for the broadcast of the rebinding time)",
    )
    allow: tuple[EgressAllow, ...] = ()

    @model_validator(mode="after")
    def _servers_need_dhcp(self) -> Egress:
        if self.dhcp_servers and not self.dhcp:
            raise ValueError("'dhcp_servers' needs 'dhcp: true'")
        return self

    @model_validator(mode="after")
    def _allow_needs_policy(self) -> Egress:
        if self.allow and self.policy == "accept":
            raise ValueError(
                "'allow' entries need 'policy: drop' or 'policy: reject' (otherwise all is allowed)"
            )
        return self


@dataclass(frozen=True)
class PortCheck:
    """A port a pull request must keep open or never open (``harden ci``)."""

    proto: Proto
    ports: PortRange
    source: Network | None = None  # "from NETWORK": every address of it; None: any source

    def __str__(self) -> str:
        text = f"{self.proto}/{self.ports}"
        return f"{text} from {self.source}" if self.source is not None else text


def _port_check(value: object, info: ValidationInfo) -> PortCheck:
    if not isinstance(value, str):
        raise ValueError(f"expected 'PROTO/PORT' or 'PROTO/PORT from NETWORK', got {show(value)}")
    what, _, source = value.strip().partition(" from ")
    proto, slash, port = what.strip().partition("/")
    if not slash or proto not in PROTOS:
        raise ValueError(f"expected 'tcp/PORT' or 'udp/PORT', got {show(value)}")
    return PortCheck(
        proto,
        _port(port.strip(), info),
        _parse_network(source) if source else None,
    )


Check = Annotated[
    PortCheck,
    PlainValidator(_port_check),
    WithJsonSchema(
        {
            "type": "string",
            "description": "PROTO/PORT, optionally 'from NETWORK': tcp/22, "
            "tcp/443 from 198.18.0.0/24",
        }
    ),
]


class Ci(_Model):
    """What a change to this manifest must keep, checked by ``harden ci`` (never a rule)."""

    keep_open: tuple[Check, ...] = Field(
        (), description="ports every change must leave open (from NETWORK: to all of it)"
    )
    never_open: tuple[Check, ...] = Field(
        (), description="ports no change may open (from NETWORK: to any of it)"
    )


class Manifest(_Model):
    """A host's service manifest (version 1)."""

    version: Literal[1]
    host: str | None = Field(None, max_length=253, description="a label; never a selector")
    policy: Settings = Settings()
    services: tuple[Service, ...] = ()
    forward: Forward = Forward()
    egress: Egress = Egress()
    verify: Verify | None = None
    ci: Ci = Ci()

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: object) -> object:
        # Literal[1] alone takes True and 1.0 (both == 1).
        if type(value) is not int:
            raise ValueError(f"expected the integer 1, got {show(value)}")
        return value


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the manifest."""
    return Manifest.model_json_schema()
