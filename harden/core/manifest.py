"""The service manifest: pydantic models, YAML loading, one-line errors."""

from __future__ import annotations

import difflib
import ipaddress
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from harden.core.ports import PortRange, ServicePort, parse_port, show
from harden.core.text import one_line
from harden.core.types import PROTOS, Network, Proto
from harden.errors import ManifestError


def _port(value: object, info: ValidationInfo) -> PortRange:
    context = info.context or {}
    return parse_port(value, context.get("service_port"))


def _parse_network(value: object) -> Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a network like 198.18.1.0/24 or fd00::/64, got {show(value)}")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"bad network {show(value)}: {exc}") from None


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


class Service(_Model):
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
        if (self.port is None) == (self.ports is None):
            raise ValueError("give exactly one of 'port' or 'ports'")
        return self

    @property
    def port_list(self) -> tuple[PortRange, ...]:
        """The declared ports, whichever of ``port``/``ports`` was used."""
        if self.ports is not None:
            return self.ports
        assert self.port is not None  # guaranteed by _one_of_port_ports
        return (self.port,)

    @property
    def port_field(self) -> str:
        """The manifest key that holds the ports (for error paths)."""
        return "port" if self.ports is None else "ports"


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


class Manifest(_Model):
    """A host's service manifest (version 1)."""

    version: Literal[1]
    host: str | None = Field(None, max_length=253, description="a label; never a selector")
    policy: Settings = Settings()
    services: tuple[Service, ...] = ()
    forward: Forward = Forward()
    verify: Verify | None = None

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


# libyaml's parser when present: 10,000-entry allowlists parse several times faster.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Nesting deeper than this is refused before composing: libyaml's composer recurses in C
# and a few tens of thousands of "[" crash the process; no manifest needs more than ~6.
MAX_DEPTH = 64
# Nodes that aliases may add (each alias counts its anchored subtree again): a "billion
# laughs" document is tiny as text but would expand to 10^9 values in any consumer.
MAX_ALIAS_NODES = 100_000

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
# Plain ASCII decimal only, as the README promises: YAML 1.1 (PyYAML's default) also
# reads 0x50, 0o17, 0120 (octal: 80), 1_0 and base 60 (1:20 is 80), and YAML 1.2 +80.
# Those stay strings here, so a port or a count written that way is refused by name.
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
# YAML 1.2 booleans only: YAML 1.1 also reads yes/no/on/off (and y/n in some parsers),
# so `echo: no` would be a boolean by accident. They stay strings, and are refused.
_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")
# A float has a point or an exponent: "+80" and "0120" are neither ints nor floats here.
_FLOAT = re.compile(
    r"[-+]?(?:[0-9]*\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)


def _core_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    base: dict[Any, list[tuple[str, re.Pattern[str]]]] = _SafeLoader.yaml_implicit_resolvers
    table = {
        first: [
            (tag, regexp) for tag, regexp in entries if tag not in (_INT_TAG, _FLOAT_TAG, _BOOL_TAG)
        ]
        for first, entries in base.items()
    }
    for first in "tTfF":
        table.setdefault(first, []).append((_BOOL_TAG, re.compile(f"^(?:{_BOOL.pattern})$")))
    for first in "-0123456789":
        table.setdefault(first, []).append((_INT_TAG, re.compile(f"^(?:{_INT.pattern})$")))
    for first in "-+.0123456789":
        table.setdefault(first, []).append((_FLOAT_TAG, re.compile(f"^(?:{_FLOAT.pattern})$")))
    return table


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader with YAML 1.2 numbers, string keys only, refusing duplicate keys.

    PyYAML would silently keep the last of two equal keys.
    """

    yaml_implicit_resolvers = _core_resolvers()

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as exc:
            # e.g. an impossible date (2026-13-45) or !!int 'abc': not a YAMLError in PyYAML.
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.tag.rsplit(':', 1)[-1]}: {exc}", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                got = show(key) if isinstance(key_node, yaml.ScalarNode) else "a collection"
                raise yaml.constructor.ConstructorError(
                    None, None, f"keys must be strings, got {got}", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_strict_int(self, node: yaml.Node) -> int:
        value = self.construct_scalar(node)
        if not (isinstance(value, str) and _INT.fullmatch(value)):
            raise ValueError(f"expected decimal digits, got {show(value)}")
        return int(value)

    def construct_strict_float(self, node: yaml.Node) -> float:
        value = self.construct_scalar(node)
        if not (isinstance(value, str) and _FLOAT.fullmatch(value)):
            raise ValueError(f"expected a decimal number, got {show(value)}")
        return float(value.lower().removeprefix("+").replace(".inf", "inf").replace(".nan", "nan"))


_UniqueKeyLoader.add_constructor(_INT_TAG, _UniqueKeyLoader.construct_strict_int)
_UniqueKeyLoader.add_constructor(_FLOAT_TAG, _UniqueKeyLoader.construct_strict_float)


def _check_shape(text: str) -> str | None:
    """Why the document is too deep or alias-heavy to compose, or None.

    Walks the parser's events (libyaml emits them without recursion) before anything is
    composed: a one-line refusal instead of a crash or an exponential expansion.
    """
    start = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
    end = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
    depth = 0
    # Node counts of the open collections, and of every closed anchored subtree.
    open_counts: list[tuple[int, str | None]] = []
    anchored: dict[str, int] = {}
    count = 0  # nodes so far in the innermost open collection (aliases expanded)
    added = 0  # nodes added by aliases
    for event in yaml.parse(text, Loader=_UniqueKeyLoader):
        if isinstance(event, start):
            depth += 1
            if depth > MAX_DEPTH:
                return f"{_where(event.start_mark)}nested deeper than {MAX_DEPTH} levels"
            open_counts.append((count, event.anchor))
            count = 0
        elif isinstance(event, end):
            depth -= 1
            outer, anchor = open_counts.pop()
            count += 1
            if anchor is not None:
                anchored[anchor] = count
            count += outer
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                anchored[event.anchor] = 1
            count += 1
        elif isinstance(event, yaml.AliasEvent):
            size = anchored.get(event.anchor or "", 1)
            count += size
            added += size
            if added > MAX_ALIAS_NODES:
                return (
                    f"{_where(event.start_mark)}aliases expand to over {MAX_ALIAS_NODES} "
                    "values (refusing an alias bomb)"
                )
    return None


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML safely, refusing duplicate keys (manifests and inventories alike)."""
    try:
        problem = _check_shape(text)
        if problem is not None:
            raise ManifestError(source, "", problem)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ManifestError(source, "", _yaml_message(exc)) from None
    except RecursionError:
        raise ManifestError(source, "", "YAML nested too deeply") from None


def parse_manifest(
    text: str, source: str = "<manifest>", service_port: ServicePort | None = None
) -> Manifest:
    """Validate manifest text; ``source`` names it in errors; names resolve via ``service_port``."""
    data = load_yaml(text, source)
    if data is None:
        raise ManifestError(source, "", "empty manifest (expected 'version: 1' and 'services')")
    if not isinstance(data, dict):
        raise ManifestError(source, "", f"expected a mapping at the top level, got {show(data)}")
    try:
        manifest = Manifest.model_validate(data, context={"service_port": service_port})
    except ValidationError as exc:
        raise _manifest_error(source, exc) from None
    _check_semantics(manifest, source)
    return manifest


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if "nesting depth" in str(problem):
        # PyYAML 6.0.3+ stops deep flow collections itself, while scanning ahead of the
        # events _check_shape counts: the same refusal, in the same words.
        return f"{_where(mark)}nested deeper than {MAX_DEPTH} levels"
    return one_line(f"{_where(mark)}YAML syntax error: {problem}", 300)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""


def field_path(loc: tuple[int | str, ...]) -> str:
    """Turn a pydantic location into ``services[2].ports[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _manifest_error(source: str, exc: ValidationError) -> ManifestError:
    errors = exc.errors(include_url=False)
    # A failed item also fails its list's length check: keep only the deepest errors,
    # and report a misspelt key before the "missing" error it causes.
    locs = [tuple(e["loc"]) for e in errors]
    errors = [
        e
        for e in errors
        if not any(len(o) > len(e["loc"]) and o[: len(e["loc"])] == tuple(e["loc"]) for o in locs)
    ]
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = tuple(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = _unknown_key_message(loc)
    elif first["type"] == "missing":
        message = "required key is missing"
    elif not isinstance(first.get("input"), dict | list) and first["type"] != "value_error":
        message += f" (got {show(first.get('input'))})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return ManifestError(source, field_path(loc), one_line(message, 300))


def _unknown_key_message(loc: tuple[int | str, ...]) -> str:
    model = _model_at(loc[:-1])
    key = str(loc[-1])
    if model is None:
        return f"unknown key {key!r}"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r} ({hint}allowed: {', '.join(allowed)})"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Manifest
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        found = _find_model(field.annotation) if field else None
        if found is None:
            return None
        model = found
    return model


def _find_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            if found := _find_model(arg):
                return found
    return None


def _check_semantics(manifest: Manifest, source: str) -> None:
    """Cross-field rules pydantic cannot express per field: names, families, overlaps."""
    names: dict[str, int] = {}
    for i, service in enumerate(manifest.services):
        if service.name in names:
            raise ManifestError(
                source,
                f"services[{i}].name",
                f"duplicate service name {service.name!r} (also services[{names[service.name]}])",
            )
        names[service.name] = i
        _check_sources(manifest, i, service, source)
    _check_port_overlaps(manifest, source)
    if manifest.policy.dhcpv6 and not manifest.policy.ipv6:
        raise ManifestError(source, "policy.dhcpv6", "DHCPv6 needs policy.ipv6: true")
    _check_forward(manifest, source)
    # IPv6 probers stay valid with policy.ipv6: false: every IPv6 port is then closed,
    # and the witness counts the probes that show it.


def _check_forward(manifest: Manifest, source: str) -> None:
    names: dict[str, int] = {}
    for i, allow in enumerate(manifest.forward.allow):
        where = f"forward.allow[{i}]"
        if allow.name in names:
            raise ManifestError(
                source,
                f"{where}.name",
                f"duplicate name {allow.name!r} (also forward.allow[{names[allow.name]}])",
            )
        names[allow.name] = i
        for key in ("sources", "destinations"):
            nets: tuple[Network, ...] = getattr(allow, key) or ()
            for j, net in enumerate(nets):
                if net.version == 6 and not manifest.policy.ipv6:
                    problem = f"IPv6 network {net} but policy.ipv6 is false"
                    raise ManifestError(source, f"{where}.{key}[{j}]", problem)
        families = {n.version for n in allow.sources or ()}
        other = {n.version for n in allow.destinations or ()}
        if allow.sources and allow.destinations and not families & other:
            raise ManifestError(
                source,
                f"{where}.destinations",
                "no destination is of the same address family as a source: matches nothing",
            )


def _check_sources(manifest: Manifest, i: int, service: Service, source: str) -> None:
    if service.sources is None:
        return
    by_family: dict[int, list[tuple[Network, int]]] = {4: [], 6: []}
    for j, net in enumerate(service.sources):
        if net.version == 6 and not manifest.policy.ipv6:
            raise ManifestError(
                source,
                f"services[{i}].sources[{j}]",
                f"IPv6 source {net} but policy.ipv6 is false",
            )
        by_family[net.version].append((net, j))
    for entries in by_family.values():
        entries.sort(key=lambda e: (int(e[0].network_address), e[0].prefixlen))
        widest: tuple[Network, int] | None = None
        for net, j in entries:
            if widest is not None and int(net.network_address) <= int(widest[0].broadcast_address):
                later, earlier = max(j, widest[1]), min(j, widest[1])
                raise ManifestError(
                    source,
                    f"services[{i}].sources[{later}]",
                    f"{service.sources[later]} overlaps {service.sources[earlier]} "
                    f"(sources[{earlier}])",
                )
            if widest is None or int(net.broadcast_address) > int(widest[0].broadcast_address):
                widest = (net, j)


def _check_port_overlaps(manifest: Manifest, source: str) -> None:
    # (range, service index, port index) per protocol, swept in sorted order: O(n log n),
    # which matters for manifests with thousands of declarations.
    for proto in PROTOS:
        entries = sorted(
            (rng, i, j)
            for i, service in enumerate(manifest.services)
            if proto in service.proto
            for j, rng in enumerate(service.port_list)
        )
        reach: tuple[PortRange, int, int] | None = None
        for rng, i, j in entries:
            if reach is not None and rng.first <= reach[0].last:
                (a_rng, a_i, _), (b_rng, b_i, b_j) = sorted([(rng, i, j), reach], key=_pos)
                svc_b = manifest.services[b_i]
                svc_a = manifest.services[a_i]
                where = f"services[{b_i}].{svc_b.port_field}"
                if svc_b.ports is not None:
                    where += f"[{b_j}]"
                other = f"services[{a_i}] ({svc_a.name})" if a_i != b_i else "this service"
                raise ManifestError(
                    source,
                    where,
                    f"{proto}/{b_rng} overlaps {proto}/{a_rng} already declared by {other}",
                )
            if reach is None or rng.last > reach[0].last:
                reach = (rng, i, j)


def _pos(entry: tuple[PortRange, int, int]) -> tuple[int, int]:
    return entry[1], entry[2]
