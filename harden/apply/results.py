"""The results of validate, apply, diff and status: each owns its JSON shape and its text.

The CLI prints ``to_text()`` or ``json.dumps(to_json())``; the Python API returns
``to_json()``. Golden files in tests/golden_output/ pin every shape.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harden.errors import ExitStatus
from harden.manifest.model import Manifest
from harden.policy.model import Outbound, Policy
from harden.types import FAMILIES


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _nets(nets: Sequence[object] | None) -> str | list[str]:
    """Sources of one family: "any", or the networks ([] when the family is not served)."""
    return "any" if nets is None else [str(n) for n in nets]


def _outbound_text(out: Outbound, name: str) -> str:
    """``tcp/80,443 to 203.0.113.0/24 (updates)``: one egress.allow entry, one protocol."""
    ports = few([str(p) for p in out.ports], "port ranges", MOST_PORTS)
    if out.destinations[4] is None:
        where = "any" if out.destinations[6] is None else "any (IPv4 only)"
    else:
        nets = [str(n) for fam in FAMILIES for n in out.destinations[fam] or ()]
        where = few(nets, "networks", MOST_NETWORKS)
    return f"{out.proto}/{ports} to {where} ({name})"


# How many networks and port ranges a summary line names before it only counts them: a
# 100,000-source allowlist made validate print 1.7 MB on one line. JSON keeps them all.
MOST_NETWORKS = 5
MOST_PORTS = 20


def few(items: list[str], noun: str, most: int) -> str:
    """``a,b,c`` or, past ``most``, ``a,b,… (100,000 networks, first 2 shown)``."""
    if len(items) <= most:
        return ",".join(items)
    return f"{','.join(items[:most])},… ({len(items):,} {noun}, first {most} shown)"


def egress_summary(manifest: Manifest, policy: Policy) -> dict[str, Any]:
    """The egress policy and what it lets out: the ``egress`` of validate and status.

    ``allow`` has one entry per egress.allow entry and protocol (as the rules have),
    ``summary`` the same as text lines.
    """
    names = [(e.name, e.comment) for e in manifest.egress.allow for _ in e.proto]
    allow = []
    summary = []
    for (name, comment), out in zip(names, policy.outbound, strict=True):
        allow.append(
            {
                "name": name,
                "comment": comment,
                "proto": out.proto,
                "ports": [str(p) for p in out.ports],
                "ipv4_destinations": _nets(out.destinations[4]),
                "ipv6_destinations": _nets(out.destinations[6]),
            }
        )
        summary.append(_outbound_text(out, name))
    if policy.egress_dhcp:
        summary.append("DHCP lease renewals")
    return {
        "policy": policy.egress,
        "dhcp": policy.egress_dhcp,
        "dhcp_servers": [str(server) for server in policy.dhcp_servers],
        "allow": allow,
        "summary": summary,
    }


def _settings(policy: Policy) -> dict[str, Any]:
    """What else the policy says: ping, logging, DHCPv6, the probers, the forward allows."""
    return {
        "echo": policy.echo,
        "log_dropped": policy.log_dropped,
        "dhcpv6": policy.dhcpv6,
        "probers": [str(n) for family in FAMILIES for n in policy.probers[family]],
        "forward_allows": [
            {
                "label": f.label,
                "in_interface": f.in_interface,
                "out_interface": f.out_interface,
                "protos": list(f.protos) if f.protos is not None else None,
                "ports": [str(p) for p in f.ports] if f.ports is not None else None,
                "ipv4_sources": _nets(f.sources[4]),
                "ipv6_sources": _nets(f.sources[6]),
                "ipv4_destinations": _nets(f.destinations[4]),
                "ipv6_destinations": _nets(f.destinations[6]),
            }
            for f in policy.forwarded
        ],
    }


def _egress_text(egress: dict[str, Any]) -> str:
    """``drop, allows out tcp/53 to ... (dns); udp/123 to any (ntp)``."""
    return f"{egress['policy']}, allows out {'; '.join(egress['summary']) or 'nothing'}"


def validation_document(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """``validate --format json``: every manifest's entry, in order.

    A valid one's is ``Validation.to_json``; an invalid one's ``{"manifest", "valid":
    false, "field", "error"}``.
    """
    valid = all(entry["valid"] for entry in entries)
    return {"schema": "harden.validate/1", "valid": valid, "manifests": entries}


@dataclass(frozen=True)
class Validation:
    """What one valid manifest allows (``harden validate``)."""

    manifest: str
    host: str | None
    services: int
    closed: str
    ipv6: bool
    allows: tuple[str, ...]
    trusted: tuple[str, ...] = ()
    forward: str = "accept"
    rules: tuple[dict[str, Any], ...] = ()  # the allows, structured (JSON)
    # egress_summary(): the egress policy and its allows.
    egress: dict[str, Any] = field(
        default_factory=lambda: {"policy": "accept", "dhcp": False, "allow": [], "summary": []}
    )
    # The rest of the policy, so that a change to any of it shows (JSON).
    settings: dict[str, Any] = field(default_factory=dict)
    # What this host makes of it (container bridges a restricted egress cuts off).
    warnings: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, source: str, manifest: Manifest, policy: Policy, warnings: Sequence[str] = ()
    ) -> Validation:
        """Summarise a validated manifest and its policy; ``warnings`` about this host."""
        allows = []
        rules = []
        for allow in policy.allows:
            rules.append(
                {
                    "services": list(allow.services),
                    "proto": allow.proto,
                    "ports": [str(p) for p in allow.ports],
                    "ipv4_sources": _nets(allow.sources[4]),
                    "ipv6_sources": _nets(allow.sources[6]),
                    "limit": str(allow.limit) if allow.limit else None,
                    "log": allow.log,
                }
            )
            ports = few([str(p) for p in allow.ports], "port ranges", MOST_PORTS)
            if not allow.restricted:
                where = "" if policy.ipv6 else " (IPv4 only)"
            else:
                nets = [str(n) for fam in FAMILIES for n in allow.sources[fam] or ()]
                where = " from " + few(nets, "networks", MOST_NETWORKS)
            limit = f" (limit {allow.limit} per source)" if allow.limit else ""
            allows.append(f"{allow.proto}/{ports}{where}{limit}")
        forward: str = policy.forward
        if policy.forward == "drop" and policy.forwarded:
            forward += " except " + ", ".join(f.label for f in policy.forwarded)
        return cls(
            source,
            policy.host,
            len(manifest.services),
            policy.closed,
            policy.ipv6,
            tuple(allows),
            policy.trusted,
            forward,
            tuple(rules),
            egress_summary(manifest, policy),
            _settings(policy),
            tuple(warnings),
        )

    def to_json(self) -> dict[str, Any]:
        """One entry of ``validate --format json``'s ``manifests``, one per manifest."""
        return {
            "manifest": self.manifest,
            "valid": True,
            "host": self.host,
            "services": self.services,
            "closed": self.closed,
            "ipv6": self.ipv6,
            "allows": list(self.rules),
            "summary": list(self.allows),
            "trusted_interfaces": list(self.trusted),
            "forward": self.forward,
            "egress": self.egress,
            "warnings": list(self.warnings),
        } | self.settings

    def to_text(self) -> str:
        """One line, then a line per warning."""
        allowed = "; ".join(self.allows) or "nothing (every port closed)"
        text = (
            f"{self.manifest}: valid, {self.services} service(s), "
            f"closed ports {self.closed}, allows {allowed}"
        )
        if self.trusted:
            text += f", trusts {', '.join(self.trusted)}"
        if self.forward != "accept":
            text += f", routed traffic: {self.forward}"
        if self.egress["policy"] != "accept":
            text += f", egress: {_egress_text(self.egress)}"
        return text + "".join(f"\nWARNING: {warning}" for warning in self.warnings)


@dataclass(frozen=True)
class Removed:
    """What ``harden remove`` took away: harden's live rules and its boot files."""

    rules: tuple[str, ...]  # the backends whose harden rules were loaded
    files: tuple[str, ...]  # boot files removed (unit, wants link, rule files)
    others: tuple[str, ...] = ()  # other firewalls' base chains, untouched

    def to_json(self) -> dict[str, Any]:
        """``remove --format json``."""
        return {
            "schema": "harden.remove/1",
            "removed_rules": list(self.rules),
            "removed_files": list(self.files),
            "other_firewalls": list(self.others),
        }

    def to_text(self) -> str:
        """What went, and what stays."""
        rules = ", ".join(self.rules) or "none were loaded"
        lines = [f"removed harden's rules: {rules}"]
        lines += [f"removed {path}" for path in self.files] or ["no boot files to remove"]
        lines += [f"left in place: {label}" for label in self.others]
        return "\n".join(lines)

    @property
    def exit_status(self) -> ExitStatus:
        """0: removing is done or there was nothing to remove."""
        return ExitStatus.OK


@dataclass
class ApplyResult:
    """What ``harden apply`` did."""

    changed: bool
    backend: str
    manifest: str
    manifest_sha256: str
    ruleset_sha256: str
    confirm_deadline: float | None = None
    persisted: list[str] = field(default_factory=list)
    unpersisted: list[str] = field(default_factory=list)  # boot files --no-persist removed
    message: str = ""
    # Other firewalls' base chains on harden's hooks (labels), and warnings about them.
    others: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """``apply --format json``."""
        return {
            "schema": "harden.apply/1",
            "changed": self.changed,
            "backend": self.backend,
            "manifest": self.manifest,
            "manifest_sha256": self.manifest_sha256,
            "ruleset_sha256": self.ruleset_sha256,
            "confirm_deadline": self.confirm_deadline,
            "persisted": list(self.persisted),
            "unpersisted": list(self.unpersisted),
            "message": self.message,
            "other_firewalls": list(self.others),
            "warnings": list(self.warnings),
        }

    def to_text(self) -> str:
        """``changed: ...`` or ``ok: ...``, then the other firewalls and any warning."""
        lines = [f"{'changed' if self.changed else 'ok'}: {self.message}"]
        lines += [f"other firewall: {label}" for label in self.others]
        lines += [f"WARNING: {warning}" for warning in self.warnings]
        return "\n".join(lines)


@dataclass(frozen=True)
class Drift:
    """Live rules against what a manifest renders (``harden diff``)."""

    drift: bool
    diff: str
    # The whole live ruleset against the manifest (harden.analysis, any table): lines for
    # what it accepts beyond the manifest ("leaks", drift too), declared ports some rule
    # drops ("blocked", said), and why it could not all be judged ("unknown").
    exposure: dict[str, list[str]] | None = None

    def to_json(self) -> dict[str, Any]:
        """``diff --format json``."""
        out: dict[str, Any] = {"schema": "harden.drift/1", "drift": self.drift, "diff": self.diff}
        if self.exposure is not None:
            out["exposure"] = self.exposure
        return out

    def to_text(self) -> str:
        """The unified diff, or ``no drift``; then what the whole ruleset exposes beyond it."""
        if not self.drift:
            lines = ["no drift"]
        else:
            lines = [self.diff.rstrip("\n") if self.diff else "no drift in harden's rules"]
        found = self.exposure or {}
        lines += [f"LEAK (any table): {line}" for line in found.get("leaks", ())]
        lines += [f"BLOCKED (any table): {line}" for line in found.get("blocked", ())]
        lines += [f"not judged: {line}" for line in found.get("unknown", ())]
        return "\n".join(lines)

    @property
    def exit_status(self) -> ExitStatus:
        """0 no drift, 1 drift."""
        return ExitStatus.FAILED if self.drift else ExitStatus.OK


@dataclass(frozen=True)
class StatusReport:
    """What harden has applied, and whether the kernel still shows it (``harden status``)."""

    state_dir: str
    backend: str | None = None
    manifest: str | None = None
    manifest_sha256: str | None = None
    applied_at: float | None = None
    pending_deadline: float | None = None
    seconds_left: float | None = None
    live_matches_last_apply: bool | None = None
    history: tuple[dict[str, Any], ...] = ()
    interrupted: bool = False  # an apply stopped before it finished, with no watchdog armed
    watchdog: str | None = None  # "running" / "not running" while a confirmation is pending
    # What the applied manifest allows (None: its file changed or is gone since the apply).
    allows: tuple[str, ...] | None = None
    trusted: tuple[str, ...] = ()
    forward: str | None = None
    egress: dict[str, Any] | None = None  # egress_summary() of the applied manifest
    # What loads at boot (harden/apply/boot.py describe()); None: not looked at.
    boot: dict[str, Any] | None = None
    # Other firewalls' base chains on harden's hooks (apply/others.py), and warnings.
    others: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def applied(self) -> bool:
        """Whether harden has rules applied."""
        return self.backend is not None

    def to_json(self) -> dict[str, Any]:
        """``status --format json``."""
        pending = None
        if self.pending_deadline is not None:
            pending = {"deadline": self.pending_deadline, "seconds_left": self.seconds_left}
        return {
            "schema": "harden.status/1",
            "applied": self.applied,
            "backend": self.backend,
            "manifest": self.manifest,
            "manifest_sha256": self.manifest_sha256,
            "applied_at": self.applied_at,
            "pending_confirmation": pending,
            "live_matches_last_apply": self.live_matches_last_apply,
            "interrupted": self.interrupted,
            "watchdog": self.watchdog,
            "allows": None if self.allows is None else list(self.allows),
            "trusted_interfaces": list(self.trusted),
            "forward": self.forward,
            "egress": self.egress,
            "boot": self.boot,
            "other_firewalls": list(self.others),
            "warnings": list(self.warnings),
            "history": list(self.history),
        }

    @property
    def last_rollback(self) -> str | None:
        """What the newest event says if it was a rollback, e.g. by the watchdog."""
        if not self.history or self.history[-1].get("event") != "rolled back":
            return None
        event = self.history[-1]
        what = f"apply of {event['manifest']}" if event.get("manifest") else "the last apply"
        reason = f": {event['reason']}" if event.get("reason") else ""
        return f"{what} rolled back at {_utc(float(event.get('at', 0.0)))}{reason}"

    def to_text(self) -> str:
        """A few aligned lines."""
        rolled = self.last_rollback
        if not self.applied:
            text = f"nothing applied by harden (state: {self.state_dir})"
            rolled_lines = [f"last:     {rolled}"] if rolled else []
            return "\n".join([text, *rolled_lines, *self._boot_lines(), *self._other_lines()])
        sha = (self.manifest_sha256 or "")[:12]
        pending = "no"
        if self.pending_deadline is not None:
            pending = f"rolls back in {self.seconds_left} s unless confirmed"
            if self.watchdog == "not running":
                pending = (
                    f"yes, deadline in {self.seconds_left} s, but its watchdog is NOT running: "
                    "nothing will roll back by itself ('harden rollback' or 'harden confirm')"
                )
        if self.interrupted:
            pending = (
                "INTERRUPTED: the last apply stopped before it finished; 'harden rollback' "
                "restores the rules from before it, 'harden confirm' keeps them if live"
            )
        match = {True: "yes", False: "NO (drift)", None: "unknown"}[self.live_matches_last_apply]
        return "\n".join(
            [
                f"backend:  {self.backend}",
                f"manifest: {self.manifest} (sha256 {sha})",
                f"applied:  {_utc(self.applied_at or 0.0)}",
                f"pending:  {pending}",
                f"live rules match the last apply: {match}",
                *([f"last:     {rolled}"] if rolled else []),
                *self._boot_lines(),
                *self._allowed_lines(),
                *self._other_lines(),
            ]
        )

    def _other_lines(self) -> list[str]:
        """The other firewalls on harden's hooks (they filter too), and warnings."""
        lines = []
        for i, chain in enumerate(self.others):
            who = f" ({chain['manager']})" if chain.get("manager") else ""
            label = (
                f"{chain['family']} {chain['table']} {chain['chain']}{who}: hook {chain['hook']},"
                f" priority {chain['priority']}, policy {chain['policy']}, {chain['rules']} rule(s)"
            )
            lines.append(("others:   " if i == 0 else "          ") + label)
        lines += [f"WARNING:  {warning}" for warning in self.warnings]
        return lines

    def _boot_lines(self) -> list[str]:
        """Whether harden's rules load at boot, and what is wrong if they would not."""
        b = self.boot
        if b is None:
            return []
        where = "" if b["root"] == "/" else f" under {b['root']}"
        state = b.get("state") or ("matches" if b["backends"] else "absent")
        if state == "absent":
            line = f"boot:     absent: nothing of harden's loads at boot{where} (apply --persist)"
        elif state == "stale":
            line = f"boot:     STALE{where}: " + "; ".join(b["differs"])
        else:
            line = (
                f"boot:     matches: {b['backends'][0]} rules load at boot{where} "
                "(harden.service enabled), the live rules"
            )
        elsewhere = b.get("persisted_under")
        if state == "absent" and elsewhere and elsewhere != b["root"]:
            line += f"; the last persist wrote under {elsewhere} (status --root {elsewhere})"
        elif b["root"] == "/" and state == "absent":
            line += " (looked under /; --root names another prefix)"
        lines = [line]
        if b.get("nftables_conf_include"):
            lines.append(
                "          /etc/nftables.conf still includes harden.nft (an older harden's "
                "way): persist again to remove it"
            )
        return lines

    def _allowed_lines(self) -> list[str]:
        """What is allowed, one rule a line (as ``ufw status verbose`` lists them)."""
        if self.allows is None:
            return ["allowed:  unknown (the manifest file changed or is gone since the apply)"]
        lines = ["allowed:  " + (self.allows[0] if self.allows else "nothing")]
        lines += [f"          {allow}" for allow in self.allows[1:]]
        if self.trusted:
            lines.append(f"trusted:  {', '.join(self.trusted)} (all traffic accepted)")
        lines.append("closed:   everything else, including ports containers publish")
        if self.forward and self.forward != "accept":
            lines.append(f"routed:   {self.forward}")
        if self.egress and self.egress["policy"] != "accept":
            what = self.egress["summary"] or ["nothing"]
            lines.append(f"egress:   {self.egress['policy']}, allows out {what[0]}")
            lines += [f"          {line}" for line in what[1:]]
        return lines


@dataclass(frozen=True)
class Counters:
    """harden's named counters on this host (``harden counters``, read by verify --witness)."""

    backends: tuple[str, ...]
    counters: dict[str, int]
    identity: str | None
    icmp: dict[str, Any]
    addresses: list[str]
    # The live ruleset as the analysis reads it (harden.analysis.model.Snapshot): verify
    # --witness judges it against its own manifest.
    ruleset: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Schema ``harden.counters/4`` (/3 plus ``ruleset``)."""
        return {
            "schema": "harden.counters/4",
            "backends": list(self.backends),
            "counters": self.counters,
            "identity": self.identity,
            "icmp": self.icmp,
            "addresses": self.addresses,
            "ruleset": self.ruleset,
        }

    def to_text(self) -> str:
        """One counter per line, then the ICMP limits."""
        lines = [f"{k} {v}" for k, v in sorted(self.counters.items())]
        lines = lines or ["no harden counters here"]
        for family, values in self.icmp.items():
            lines.append(f"icmp {family}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        return "\n".join(lines)
