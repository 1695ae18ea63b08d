"""Read the live ruleset for ``harden analyze`` and ``harden explain`` (the impure half).

Everything the kernel holds in nftables, through libnftables (``nft -j list ruleset``,
set elements included). Rules nftables cannot show (the legacy x_tables') make every row
uncertain: a source that cannot be read is never taken for an empty one.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from harden.analysis.engine import Packet, decide
from harden.analysis.model import Ruleset, Snapshot, from_snapshot, host_notes
from harden.analysis.results import Analysis, Explanation, judged_rows
from harden.apply.hostinfo import legacy_note, legacy_rules, local_addresses, main_routes, nft_saves
from harden.backends.nftables.firewall import NftFirewall
from harden.policy.model import Policy
from harden.privileges import require_net_admin


def snapshot() -> Snapshot:
    """What the model reads of this network namespace, as JSON (see ``Snapshot``).

    ``harden counters`` carries it to ``verify --witness``, which analyses it against its
    own manifest.
    """
    unknown = []
    legacy = legacy_rules()
    if legacy:
        unknown.append(legacy_note(legacy) + ": every row may differ")
    text = NftFirewall().listing()  # its libnftables context, and cache, go with it
    _give_back()
    items = json.loads(text).get("nftables", [])
    del text
    rules = (item["rule"] for item in items if "rule" in item)
    # The extensions' options, when nft shows an extension it cannot print in full.
    xt = any(isinstance(e, dict) and "xt" in e for r in rules for e in r.get("expr", ()))
    return {
        "nftables": items,
        "saves": nft_saves() if xt else {},
        "addresses": local_addresses(),
        "routes": main_routes(),
        "route_localnet": _route_localnet(),
        "unknown": unknown,
    }


def _route_localnet() -> list[str]:
    """The interfaces (or ``all``) with route_localnet on: they deliver packets to 127/8."""
    found = []
    for conf in sorted(Path("/proc/sys/net/ipv4/conf").glob("*/route_localnet")):
        with suppress(OSError):
            if conf.read_text().strip() == "1":
                found.append(conf.parent.name)
    return found


def _give_back() -> None:
    """Return the memory libnftables freed to the system (glibc keeps it otherwise).

    Listing a large ruleset is the peak of a run: libnftables' cache of 25,000 rules takes
    about 180 MB, as much as ``nft -j list ruleset`` alone. Handed back, the model and the
    matrix built after it stay below that peak instead of adding to it.
    """
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def live_ruleset() -> tuple[Ruleset, list[str]]:
    """The ruleset of this network namespace, and why any of it cannot be read."""
    return from_snapshot(snapshot())


def analyze(
    hooks: tuple[str, ...],
    policy: Policy | None,
    manifest: str | None,
    progress: Callable[[str, int], None] = lambda what, cells: None,
) -> Analysis:
    """The exposure matrix of ``hooks``, compared with ``policy`` if given."""
    require_net_admin("analyze", "it reads the live ruleset, which the kernel lists only to root")
    found = snapshot()
    ruleset, unknown = from_snapshot(found)
    rows = judged_rows(ruleset, hooks, policy, progress)
    return Analysis(hooks, rows, manifest, unknown, host_notes(found))


def explain(packet: Packet) -> Explanation:
    """One packet's way through the live ruleset."""
    require_net_admin("explain", "it reads the live ruleset, which the kernel lists only to root")
    ruleset, unknown = live_ruleset()
    decision = decide(ruleset, packet)
    if unknown and decision.verdict != "unknown":
        decision = replace(decision, verdict="unknown", unknown=tuple(unknown))
    return Explanation(packet, decision)
