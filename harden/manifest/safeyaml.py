"""Safe YAML for manifests and inventories.

YAML 1.2 numbers and booleans, no duplicate keys, no alias bombs, no deep nesting; every
problem a one-line ManifestError.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from harden.errors import ManifestError
from harden.manifest.ports import show
from harden.text import one_line

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
                message = f"keys must be strings, got {got}"
                if isinstance(node, yaml.MappingNode) and node.flow_style and got != "a collection":
                    # {ports: 80,443}: in flow style the comma ends the value, 443 is a key.
                    message += " (inside { } a comma starts a new key: write a list, [80, 443])"
                raise yaml.constructor.ConstructorError(None, None, message, key_node.start_mark)
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


class _Unusual(Exception):
    """A document the fast path leaves to the full loader (and its error messages)."""


_STR_TAG = "tag:yaml.org,2002:str"


def _scalar(event: yaml.ScalarEvent) -> Any:
    """A scalar as _UniqueKeyLoader would construct it, or _Unusual."""
    value = event.value
    if event.tag not in (None, "!"):
        raise _Unusual  # an explicit tag
    if not event.implicit[0]:
        return value  # quoted: a string
    table = _UniqueKeyLoader.yaml_implicit_resolvers
    tag = _STR_TAG
    for candidate, regexp in [*table.get(value[:1], []), *table.get(None, [])]:
        if regexp.match(value):
            tag = candidate
            break
    if tag == _STR_TAG:
        return value
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == _BOOL_TAG:
        return value.lower() == "true"
    if tag == _INT_TAG and len(value) < 100:  # longer: the full loader says why not
        return int(value)
    raise _Unusual  # floats, timestamps, merge keys: the full loader's


def _fast_load(text: str) -> Any:
    """The common manifest (no anchors, aliases or tags) from libyaml's events, in one pass.

    What ``_check_shape`` then ``yaml.load`` give, at a third of the time: a 100,000-source
    allowlist's composed nodes cost 0.75 s and 48 MB. Anything else (or any error) is
    left to them, with their messages: raises _Unusual.
    """
    stack: list[list[Any] | dict[str, Any]] = []
    keys: list[str | None] = []
    root: Any = None
    documents = 0
    for event in yaml.parse(text, Loader=_UniqueKeyLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _Unusual
            continue
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            raise _Unusual
        if isinstance(event, yaml.AliasEvent):
            raise _Unusual
        if isinstance(event, yaml.ScalarEvent):
            value: Any = _scalar(event)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if event.tag not in (None, "!") or len(stack) >= MAX_DEPTH:
                raise _Unusual
            stack.append([] if isinstance(event, yaml.SequenceStartEvent) else {})
            keys.append(None)
            continue
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            value = stack.pop()
            if keys.pop() is not None:
                raise _Unusual
        else:
            continue
        if not stack:
            root = value
        elif isinstance(stack[-1], list):
            stack[-1].append(value)
        elif keys[-1] is None:
            if not isinstance(value, str) or value in stack[-1] or value == "<<":
                raise _Unusual  # a key that is no string, twice, or a merge
            keys[-1] = value
        else:
            stack[-1][keys[-1]] = value
            keys[-1] = None
    return root


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML safely, refusing duplicate keys (manifests and inventories alike)."""
    try:
        try:
            return _fast_load(text)
        except _Unusual:
            pass
        problem = _check_shape(text)
        if problem is not None:
            raise ManifestError(source, "", problem)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ManifestError(source, "", _yaml_message(exc)) from None
    except RecursionError:
        raise ManifestError(source, "", "YAML nested too deeply") from None


def line_of(text: str, field: str) -> int | None:
    """The line (1-based) where ``field`` (``services[0].port``) is written in ``text``.

    For an error message's file:line (CI annotations); None when the text does not parse
    or the field is not written there (a default, a whole-manifest rule).
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", field):
        if isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if getattr(k, "value", None) == part]
            if not found:
                return None
            node = found[0]
        elif isinstance(node, yaml.SequenceNode) and part.startswith("["):
            index = int(part[1:-1])
            if index >= len(node.value):
                return None
            node = node.value[index]
        else:
            return None
    return None if node is None or not field else node.start_mark.line + 1


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
