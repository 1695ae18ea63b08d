"""Render a Policy to ruleset text with jinja2 templates (pure: no files, no kernel)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import jinja2

from harden.core.policy import Allow, Policy
from harden.core.ports import PortRange
from harden.core.types import BACKENDS, FAMILIES, Backend
from harden.core.witness import counter_name
from harden.errors import RenderError

NFT_FILE = "harden.nft"
IPT_FILES = {4: "harden.rules.v4", 6: "harden.rules.v6"}

# iptables walks rules one by one for every packet; past this many rules a
# source-restricted allowlist belongs in nftables sets, so we refuse rather
# than emit a ruleset that silently becomes a bottleneck.
IPTABLES_MAX_RULES = 2000
# xt_multiport takes at most 15 ports per rule, a range counting as two.
MULTIPORT_MAX = 15

# Characters that can never end a quoted string, a statement or a line in
# either nft or iptables-restore syntax: everything else becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9 ._:/@+,=()-]")


def safe_comment(text: object, limit: int = 100) -> str:
    """Make manifest text (names, labels) inert inside a quoted comment."""
    return _UNSAFE.sub("_", str(text))[:limit]


def multiport_chunks(ports: tuple[PortRange, ...]) -> Iterator[str]:
    """Split ports into ``--dports`` lists that xt_multiport accepts."""
    chunk: list[str] = []
    weight = 0
    for rng in ports:
        cost = 1 if rng.first == rng.last else 2
        if weight + cost > MULTIPORT_MAX:
            yield ",".join(chunk)
            chunk, weight = [], 0
        chunk.append(str(rng.first) if cost == 1 else f"{rng.first}:{rng.last}")
        weight += cost
    if chunk:
        yield ",".join(chunk)


# XT_EXTENSION_MAXNAMELEN (29) less the terminating NUL.
IPT_CHAIN_MAX = 28


def ipt_chain(allow: Allow) -> str:
    """The iptables chain holding a source-restricted group's accepted sources.

    Its twin for forwarded traffic adds "-F", so that must fit too.
    """
    name = "HARDEN-" + allow.key.upper().replace("_", "-")
    if len(name) + len("-F") > IPT_CHAIN_MAX:  # policy keys are capped so this cannot happen
        raise RenderError(f"iptables chain name {name!r} is longer than {IPT_CHAIN_MAX} characters")
    return name


def ctport_ranges(ports: tuple[PortRange, ...]) -> Iterator[str]:
    """One ``--ctorigdstport`` value per range (the conntrack match takes no lists)."""
    for rng in ports:
        yield str(rng.first) if rng.first == rng.last else f"{rng.first}:{rng.last}"


def ipt_iface(name: str) -> str:
    """An interface pattern in iptables syntax: the trailing wildcard is ``+``."""
    return name[:-1] + "+" if name.endswith("*") else name


def hashlimit_name(allow: Allow, family: int) -> str:
    """A hashlimit table name (at most 15 characters) unique to the limit's parameters.

    The kernel reuses a table found by name whatever its parameters, so a changed limit
    gets a new name rather than the old table's settings.
    """
    limit = allow.limit
    digest = hashlib.sha256(f"{allow.key}/{limit}/{family}".encode()).hexdigest()[:8]
    return f"harden-{digest}"


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("harden.core", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # output is a ruleset, not HTML; inputs go through safe_comment
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.filters["comment"] = safe_comment
_ENV.filters["multiport"] = multiport_chunks
_ENV.filters["ipt_chain"] = ipt_chain
_ENV.filters["ctports"] = ctport_ranges
_ENV.filters["ipt_iface"] = ipt_iface
_ENV.filters["hashlimit_name"] = hashlimit_name
_ENV.globals["witness"] = counter_name


def render(policy: Policy, backend: Backend) -> dict[str, str]:
    """Render the policy for a backend: file name -> file text."""
    if backend == "nftables":
        return {NFT_FILE: _ENV.get_template("nftables.nft.j2").render(p=policy)}
    if backend == "iptables":
        files = {
            IPT_FILES[family]: _ENV.get_template("iptables.rules.j2").render(
                p=policy, family=family
            )
            for family in FAMILIES
        }
        _check_iptables_size(files)
        return files
    raise RenderError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


def _check_iptables_size(files: dict[str, str]) -> None:
    for name, text in files.items():
        rules = sum(1 for line in text.splitlines() if line.startswith("-A "))
        if rules > IPTABLES_MAX_RULES:
            raise RenderError(
                f"iptables backend: {name} would hold {rules} rules, over the limit of "
                f"{IPTABLES_MAX_RULES} (every packet walks them in turn); "
                "use --backend nftables, which matches large allowlists with sets"
            )
