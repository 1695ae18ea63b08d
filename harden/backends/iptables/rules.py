"""The iptables backend's ruleset files: iptables-restore and ip6tables-restore (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from harden.backends.templating import environment
from harden.errors import RenderError
from harden.manifest.ports import PortRange
from harden.policy.model import Allow, Policy
from harden.types import FAMILIES

IPT_FILES = {4: "harden.rules.v4", 6: "harden.rules.v6"}

# iptables walks rules one by one for every packet; past this many rules a
# source-restricted allowlist belongs in nftables sets, so we refuse rather
# than emit a ruleset that silently becomes a bottleneck.
IPTABLES_MAX_RULES = 2000
# xt_multiport takes at most 15 ports per rule, a range counting as two.
MULTIPORT_MAX = 15


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


_ENV = environment(
    "harden.backends.iptables",
    multiport=multiport_chunks,
    ipt_chain=ipt_chain,
    ctports=ctport_ranges,
    ipt_iface=ipt_iface,
    hashlimit_name=hashlimit_name,
)


def render(policy: Policy) -> dict[str, str]:
    """``harden.rules.v4`` and ``harden.rules.v6``: harden's chains for each family."""
    files = {
        IPT_FILES[family]: _ENV.get_template("iptables.rules.j2").render(p=policy, family=family)
        for family in FAMILIES
    }
    _check_iptables_size(files)
    return files


def _check_iptables_size(files: dict[str, str]) -> None:
    for name, text in files.items():
        rules = sum(1 for line in text.splitlines() if line.startswith("-A "))
        if rules > IPTABLES_MAX_RULES:
            raise RenderError(
                f"iptables backend: {name} would hold {rules} rules, over the limit of "
                f"{IPTABLES_MAX_RULES} (every packet walks them in turn); "
                "use --backend nftables, which matches large allowlists with sets"
            )
