"""The live ruleset of a verified host judged against verify's manifest (pure).

``harden counters`` carries the target's ruleset (a ``Snapshot``) to ``verify --witness``,
which reads it here, with its own manifest: what the rules accept beyond the manifest (a
static leak, whatever source, source port or uid it is keyed on), what they drop of it,
the cells the model cannot decide, and the probes a plain sweep does not send (the source
ports accepts are keyed on). docs/design.md, "The model beside the probes".
"""

from __future__ import annotations

from dataclasses import dataclass

from harden.analysis.matrix import OTHER, Row
from harden.analysis.model import Snapshot, from_snapshot, host_notes
from harden.analysis.results import Analysis, judged_rows
from harden.errors import EnvironmentProblem
from harden.manifest.ports import PortRange
from harden.policy.model import Policy
from harden.types import Address, Family, Proto

FULL = (PortRange(1, 65535),)
# Targeted probes at most: each is one packet, but a ruleset keyed on many source ports
# would otherwise turn the few a sweep misses into a second sweep.
MAX_TARGETED = 64


@dataclass(frozen=True)
class Targeted:
    """One probe a sweep from a random source port cannot send: from ``sport`` to ``dport``."""

    family: Family
    proto: Proto
    dport: int
    sport: int
    row: Row  # the leak it probes


@dataclass(frozen=True)
class StaticCheck:
    """The target's input hook (and output, if egress is restricted) against the manifest."""

    leaks: tuple[Row, ...] = ()
    blocked: tuple[Row, ...] = ()
    uncertain: tuple[Row, ...] = ()
    # Why no cell can be trusted (rules nft cannot show, a snapshot that cannot be read):
    # then the analysis judges nothing and every port is left to the probes.
    unknown: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the host's settings expose beyond the rows

    def targeted(self, sources: dict[Family, Address]) -> list[Targeted]:
        """Probes for the leaks keyed on a source port, from the prober's own address."""
        out = []
        for row in self.leaks:
            source = sources.get(row.family)
            if row.hook != "input" or row.sports == FULL:
                continue
            if source is None or not _holds(row, source):
                continue
            probe = Targeted(row.family, row.proto, row.dports[0].first, row.sports[0].first, row)
            if probe not in out:
                out.append(probe)
        return out[:MAX_TARGETED]

    def contradicted_by(self, row: Row, source: Address) -> bool:
        """Whether an answer from ``source`` to the row's ports contradicts its drop.

        Only when the row holds every source port and every interface no rule names, and
        ``source``: otherwise the probe may have come another way the rules tell apart.
        """
        plain = row.hook == "input" and row.sports == FULL and OTHER in row.ifaces
        return plain and _holds(row, source)


def _holds(row: Row, source: Address) -> bool:
    return source.version == row.family and any(source in net for net in row.peers)


def static_check(policy: Policy, data: Snapshot) -> StaticCheck:
    """The target's ruleset, read from its snapshot, judged against ``policy``."""
    try:
        ruleset, unknown = from_snapshot(data)
    except EnvironmentProblem as exc:
        return StaticCheck(unknown=(f"the target's ruleset could not be read: {exc}",))
    if unknown:
        return StaticCheck(unknown=tuple(unknown))
    # The output hook too when the manifest restricts egress: a uid- or mark-keyed accept
    # there is a leak the egress probes (root's, unmarked) cannot see.
    hooks = ("input",) if policy.egress == "accept" else ("input", "output")
    analysis = Analysis(hooks, judged_rows(ruleset, hooks, policy), "the manifest")
    return StaticCheck(
        tuple(analysis.leaks),
        tuple(analysis.blocked),
        tuple(analysis.uncertain),
        notes=tuple(host_notes(data)),
    )
