"""What every backend's templates share: a jinja2 environment and inert comments (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jinja2

from harden.verify.witness import counter_name

# Characters that can never end a quoted string, a statement or a line in
# either nft or iptables-restore syntax: everything else becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9 ._:/@+,=()-]")


def safe_comment(text: object, limit: int = 100) -> str:
    """Make manifest text (names, labels) inert inside a quoted comment."""
    return _UNSAFE.sub("_", str(text))[:limit]


def environment(package: str, **filters: Callable[..., Any]) -> jinja2.Environment:
    """The jinja2 environment of a backend package's ``templates/`` folder.

    Every backend gets the ``comment`` filter and the ``witness`` counter names; ``filters``
    adds its own.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # output is a ruleset, not HTML; inputs go through safe_comment
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["comment"] = safe_comment
    env.filters.update(filters)
    env.globals["witness"] = counter_name
    return env
