"""What a backend is: one ``BackendSpec`` of facts (pure).

Its ``Firewall`` (harden.backends.Firewall), the part that touches the kernel, is named
by a string and imported only when asked for: reading the registry loads no binding.
docs/contributing.md, "Adding a backend", walks through a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from harden.policy.model import Policy


@dataclass(frozen=True)
class BackendSpec:
    """Everything the rest of harden knows about one backend."""

    name: str
    # One line for ``render --backend``'s help.
    summary: str
    # What harden owns in the kernel, as the boot unit's Description says it.
    owns: str
    # The files render() returns, in /etc/harden at boot.
    rule_files: tuple[str, ...]
    render: Callable[[Policy], dict[str, str]]
    # "module:Class" of the Firewall; imported only when a kernel is touched.
    firewall: str
    # The longest allow key the backend's names can carry (policy keys never exceed it).
    key_max: int
    # True: load() is one kernel transaction; False: one per address family.
    atomic: bool
    # The ExecStart (and ExecStartPre) lines of harden.service that load the rule files.
    boot_exec: tuple[str, ...]
    # Extra [Unit] lines of harden.service (ordering after another service).
    boot_after: tuple[str, ...] = ()
    # Other files persist writes with the rules (path under the root -> text), and that
    # a switch to another backend or a remove takes away.
    boot_extras: Mapping[str, str] = field(default_factory=dict)
    # True: a host where this backend cannot be read (its bindings missing) may still hold
    # harden's rules, so counters reports the problem instead of "no counters here".
    essential: bool = False
