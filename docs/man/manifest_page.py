"""harden-manifest(5): the manifest format, field by field, from its pydantic models.

Every field of every model reachable from ``Manifest`` is listed with its type, whether
it is required or its default, its allowed values and its description; the types come
from the JSON Schema pydantic derives from the same models (``harden schema``). Only the
DESCRIPTION is written by hand.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, WithJsonSchema
from pydantic.fields import FieldInfo
from roff import bold, escape, example, inline, see_also

from harden.manifest.model import Manifest

NAME = "harden-manifest"
FORMATS = {"ipv4": "an IPv4 address", "ipv6": "an IPv6 address"}

DESCRIPTION = """\
A manifest is a YAML file that declares the services a host offers and from where;
everything else is closed. harden validate checks it, harden render prints the ruleset it
becomes, harden apply loads that, harden verify probes the host from outside against it
and harden diff compares the live rules with it.

Validation is strict: unknown keys (with a "did you mean"), duplicate keys, booleans
other than true and false (yes, no, on and off are errors), ports other than plain
decimal digits, reversed ranges, networks with host bits set and overlapping or
duplicate declarations all fail with one line naming the file and the field, and exit 2.
A port is a number from 1 to 65535, a range "N-M" (quoted) or a name from /etc/services
(https, domain). Networks are IPv4 or IPv6 networks: harden resolves no host names.
Some fields need others: exactly one of port and ports; an allow list only with a
policy that is not accept; dhcp_servers only with dhcp: true; ports of a forward.allow
entry only with its proto.

harden schema prints the same format as a JSON Schema, for editors and linters. The
prose reference, with what each setting generates, is docs/manifest.md (and
docs/egress.md) in harden's source."""


def _models(model: type[BaseModel], path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """``model`` and every model under it, depth first, each with its path (services[])."""
    yield path, model
    for name, info in model.model_fields.items():
        nested = _nested(info.annotation)
        if nested is not None:
            inner, many = nested
            yield from _models(inner, f"{path}.{name}".lstrip(".") + ("[]" if many else ""))


def _nested(annotation: Any, many: bool = False) -> tuple[type[BaseModel], bool] | None:
    """The model a field holds (itself, optional, or a list of it), and whether a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, many
    listed = many or get_origin(annotation) is tuple
    for arg in get_args(annotation):
        found = _nested(arg, listed)
        if found is not None:
            return found
    return None


def kind(schema: dict[str, Any], top: bool = True) -> str:
    """A JSON Schema in roff words: ``list of (tcp or udp)``; a nested type's description too."""
    if "anyOf" in schema:
        return " or ".join(kind(s, False) for s in schema["anyOf"] if s.get("type") != "null")
    if "const" in schema:
        return "exactly " + bold(json.dumps(schema["const"]))
    if "enum" in schema:
        return "one of " + ", ".join(bold(str(v)) for v in schema["enum"])
    words = {"boolean": "boolean (true or false)", "integer": "integer", "string": "string"}
    text = str(words.get(schema.get("type", ""), schema.get("type", "value")))
    if schema.get("type") == "array":
        text = f"list of ({kind(schema['items'], False)})"
        text += f", at least {schema['minItems']}" if "minItems" in schema else ""
    extra = [FORMATS.get(schema["format"], schema["format"])] if "format" in schema else []
    for low, high, unit in (("minimum", "maximum", ""), ("minLength", "maxLength", " characters")):
        if low in schema and high in schema:
            extra.append(f"{schema[low]} to {schema[high]}{unit}")
        elif low in schema or high in schema:
            extra.append(
                f"at least {schema[low]}{unit}"
                if low in schema
                else f"at most {schema[high]}{unit}"
            )
    if not top and "description" in schema:
        extra.append(escape(schema["description"]))
    return text + (f" ({', '.join(extra)})" if extra else "")


def default(info: FieldInfo) -> str:
    """Required, or the default as YAML would write it."""
    if info.is_required():
        return "Required."
    value = info.default
    if value is None:
        return "Optional: no default."
    if isinstance(value, BaseModel):
        return "Default: the defaults of its fields."
    shown = (
        value
        if isinstance(value, str)
        else json.dumps(list(value) if isinstance(value, tuple) else value)
    )
    return f"Default: {bold(shown)}."


def field(name: str, info: FieldInfo, schema: dict[str, Any], path: str) -> list[str]:
    """One field: its name as the tag; type, default and description below."""
    nested = _nested(info.annotation)
    custom = [m.json_schema for m in info.metadata if isinstance(m, WithJsonSchema)]
    if nested is None:
        what = kind(custom[0], False) if custom and custom[0] else kind(schema)
    else:
        where = f"{path}.{name}".lstrip(".") + ("[]" if nested[1] else "")
        what = ("list of mappings" if nested[1] else "mapping") + f", see {bold(where)}"
    described = info.description
    if described is None and nested is not None and nested[0].__doc__:
        described = inspect.cleandoc(nested[0].__doc__).split("\n\n")[0].replace("\n", " ")
    lines = [".TP", bold(name), f"Type: {what}. {default(info)}"]
    return lines + ([".br", inline(described.rstrip(".") + ".")] if described else [])


def fields() -> list[str]:
    """The FIELDS section: the top level, then a subsection per nested model."""
    schema = Manifest.model_json_schema()
    lines = [".SH FIELDS"]
    for path, model in _models(Manifest, ""):
        if path:
            lines.append(f'.SS "{escape(path)}"')
        doc = inspect.cleandoc(model.__doc__ or "")
        lines += [inline(line) if line else ".PP" for line in doc.splitlines()]
        props = schema["$defs"][model.__name__] if path else schema
        for name, info in model.model_fields.items():
            lines += field(name, info, props["properties"][name], path)
    return lines


def page(date: str, version: str, example_file: Path) -> str:
    """The whole page; ``example_file`` (a manifest) is shown as written."""
    head = [
        f'.TH "{NAME.upper()}" "5" "{date}" "{version}" "harden Manual"',
        ".SH NAME",
        f"{NAME.replace('-', chr(92) + '-')} \\- the service manifest harden reads (YAML)",
        ".SH DESCRIPTION",
    ]
    intro = [".PP" if not line else escape(line) for line in DESCRIPTION.splitlines()]
    shown = [".SH EXAMPLE", f"{escape(example_file.name)}, from harden's rulesets/:"]
    shown += example(example_file.read_text().splitlines())
    pages = [("harden", 1), ("harden-validate", 1), ("harden-render", 1), ("harden-schema", 1)]
    return "\n".join([*head, *intro, *fields(), *shown, *see_also(pages)]) + "\n"
