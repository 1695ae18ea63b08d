"""``harden counters``: harden's named counters on this host, read from every backend.

What verify --witness reads on the target (docs/design.md, "What outside probing cannot
see").
"""

from __future__ import annotations

from typing import Any

from harden.analysis.collect import snapshot
from harden.apply.hostinfo import icmp_settings, local_addresses
from harden.apply.results import Counters
from harden.backends import firewall, names, spec
from harden.errors import HardenError
from harden.privileges import require_net_admin


def read_counters() -> Counters:
    """Every backend's harden counters, its identity, the ICMP limits and the addresses."""
    require_net_admin("counters", "the kernel shows firewall counters only to root")
    found: dict[str, int] = {}
    backends = []
    identities = []
    problems: list[HardenError] = []
    for name in names():
        try:
            backend = firewall(name)
            values = backend.counters()
            identity = backend.identity() if values else None
        except HardenError as exc:
            # A backend whose tools are missing holds no counters; one that is essential
            # (the nftables bindings, on a host whose nft may hold harden's table) is a
            # problem to report.
            if spec(name).essential:
                problems.append(exc)
            continue
        if values:
            backends.append(name)
            found.update(values)
            if identity is not None:
                identities.append(identity)
    if problems and not found:
        # A backend that could not be read may hold the counters: "none here" would make
        # the witness blame the manifest (nothing counted), so say why instead (exit 4).
        raise problems[0]
    return Counters(
        backends=tuple(backends),
        counters=found,
        identity=", ".join(identities) or None,
        icmp=icmp_settings(),
        # The counts are of probes to these addresses only: verify credits them to no
        # other target.
        addresses=local_addresses(),
        ruleset=_snapshot(),
    )


def _snapshot() -> dict[str, Any]:
    """The live ruleset for verify's analysis; why not, if it cannot be read."""
    try:
        return snapshot()
    except HardenError as exc:
        return {"unknown": [f"the target's ruleset could not be read: {exc}"]}
