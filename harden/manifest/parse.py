"""Manifest text to a validated Manifest: safe YAML, the models, the cross-field checks."""

from __future__ import annotations

import difflib
import types
import typing

from pydantic import BaseModel, ValidationError

from harden.errors import ManifestError
from harden.gcpause import paused_gc
from harden.manifest.checks import check_manifest
from harden.manifest.model import Manifest
from harden.manifest.ports import ServicePort, show
from harden.manifest.safeyaml import load_yaml
from harden.text import one_line


@paused_gc()  # harden/gcpause.py: a large allowlist's objects, nearly none in cycles
def manifest_from_text(
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
    check_manifest(manifest, source)
    return manifest


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
    elif first["type"] != "value_error":
        message = in_our_words(first["type"], message, first.get("input"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return ManifestError(source, field_path(loc), one_line(message, 300))


# pydantic's wording, by error type, in the manifest's terms (YAML, not Python).
_EXPECTED = {
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false (YAML 1.1's yes, no, on and off are not booleans here)",
    "string_type": "expected text (quote it)",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "tuple_type": "expected a list, like [a, b]",
    "list_type": "expected a list, like [a, b]",
    "dict_type": "expected a mapping of keys to values",
    "model_type": "expected a mapping of keys to values",
    "model_attributes_type": "expected a mapping of keys to values",
}


def in_our_words(kind: str, message: str, value: object) -> str:
    """One validation error in harden's words, with the value that failed.

    ``ports: 80,443`` (one string, where a list is due) gets the list it meant.
    """
    text = _EXPECTED.get(kind) or message.replace("Input should be", "expected")
    text = text.replace("String should have", "expected").replace("List should have", "expected")
    if isinstance(value, dict | list):
        got = "a list" if isinstance(value, list) else "a mapping"
        return f"{text}, got {got}" if kind in _EXPECTED else text
    if kind in ("tuple_type", "list_type") and isinstance(value, str) and "," in value:
        items = ", ".join(part.strip() for part in value.split(","))
        return f"{text}: write [{items}], not {value}"
    return f"{text}, got {show(value)}"


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
