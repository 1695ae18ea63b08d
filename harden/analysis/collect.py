"""Read the live ruleset for ``harden analyze`` and ``harden explain`` (the impure half).

Everything the kernel holds in nftables, through libnftables (``nft -j list ruleset``,
set elements included). Rules nftables cannot show (the legacy x_tables') make every row
uncertain: a source that cannot be read is never taken for an empty one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from harden.analysis.engine import Packet, decide
from harden.analysis.matrix import matrix
from harden.analysis.model import Ruleset, parse
from harden.analysis.results import Analysis, Explanation, expectation, manifest_cuts
from harden.analysis.xt import ChainKey, SavedRule, parse_save
from harden.apply.hostinfo import legacy_note, legacy_rules, nft_saves
from harden.backends.nftables.firewall import NftFirewall
from harden.policy.model import Policy


def live_ruleset() -> tuple[Ruleset, list[str]]:
    """The ruleset of this network namespace, and why any of it cannot be read."""
    unknown = []
    legacy = legacy_rules()
    if legacy:
        unknown.append(legacy_note(legacy) + ": every row may differ")
    document = NftFirewall().ruleset()
    ruleset = parse(document, _saved(document))
    bridged = sorted(
        {f"bridge {c.table}" for c in ruleset.chains.values() if c.family == "bridge" and c.hook}
    )
    if bridged:
        unknown.append(f"bridge-family chains ({', '.join(bridged)}) are not modelled")
    return ruleset, unknown


def _saved(document: dict[str, Any]) -> dict[ChainKey, list[SavedRule]] | None:
    """The extensions' options, when nft shows an extension it cannot print in full."""
    rules = (item["rule"] for item in document.get("nftables", ()) if "rule" in item)
    if not any(isinstance(e, dict) and "xt" in e for r in rules for e in r.get("expr", ())):
        return None
    saved: dict[ChainKey, list[SavedRule]] = {}
    for family, text in nft_saves().items():
        saved.update(parse_save(text, family))
    return saved


def analyze(
    hooks: tuple[str, ...],
    policy: Policy | None,
    manifest: str | None,
    progress: Callable[[str, int], None] = lambda what, cells: None,
) -> Analysis:
    """The exposure matrix of ``hooks``, compared with ``policy`` if given."""
    ruleset, unknown = live_ruleset()
    rows = []
    for hook in hooks:
        if policy is None:
            rows += matrix(ruleset, hook, progress=progress)
        else:
            cuts, expect = manifest_cuts(policy, hook), expectation(policy, hook)
            rows += matrix(ruleset, hook, cuts, expect, progress)
    return Analysis(hooks, rows, manifest, unknown)


def explain(packet: Packet) -> Explanation:
    """One packet's way through the live ruleset."""
    ruleset, unknown = live_ruleset()
    decision = decide(ruleset, packet)
    if unknown and decision.verdict != "unknown":
        decision = replace(decision, verdict="unknown", unknown=tuple(unknown))
    return Explanation(packet, decision)
