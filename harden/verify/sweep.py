"""The verify shell: resolve targets, plan, pick a transport, probe, evaluate."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from harden.analysis.crosscheck import static_check
from harden.errors import EnvironmentProblem, OptionError
from harden.policy.model import Policy
from harden.text import one_line
from harden.types import Address
from harden.verify.engine.connect import ConnectTransport
from harden.verify.engine.raw import RawTransport, raw_available
from harden.verify.engine.rounds import Options, Progress, no_progress, verify
from harden.verify.engine.route import Neighbours, Route, link_probe, neighbour_confirmed, route_to
from harden.verify.engine.targeted import send_targeted
from harden.verify.engine.transport import Transport
from harden.verify.findings import Findings
from harden.verify.options import PortSelection, Probing
from harden.verify.plan import Target, merge_plans, plan_probes
from harden.verify.report import Report, evaluate
from harden.verify.static import judge_static
from harden.verify.witness import Reading, compare, parse_reading


def resolve_targets(
    addresses: list[Address], seen_as: dict[int, Address] | None = None
) -> list[tuple[Target, Route]]:
    """Each target with the route (and so the source address) this host uses for it.

    ``seen_as`` (per family) is the address a NAT between us and the target turns ours
    into: expectations for source-restricted services are computed for it.
    """
    out = []
    for address in addresses:
        route = route_to(address)
        if address == route.source:
            raise OptionError("target", f"{address} is this host's own address")
        seen = (seen_as or {}).get(address.version)
        out.append((Target(address, route.source, seen), route))
    return out


def run_verify(
    hosts: list[tuple[Policy, list[Address]]],
    ports: PortSelection,
    probing: Probing,
    *,
    progress: bool = False,
) -> Report:
    """Probe each host's addresses against its policy, all at once; one evaluated report."""
    selection = ports.plan
    witness, extra_sources = probing.witness, probing.sources
    resolved = [resolve_targets(addresses, dict(probing.seen_as)) for _, addresses in hosts]
    routes: dict[Target, Route] = {t: r for pairs in resolved for t, r in pairs}
    started = time.time()
    # The capture first: the UDP schedule counts from its start, so planning, the
    # witness and scapy's import all happen inside the first refill interval
    # (docs/design.md, "Capturing replies").
    raw = raw_available()
    # Without raw sockets, the kernel's neighbour entries before and after the run are
    # the only link-layer evidence: read them before the first probe goes out.
    neighbours = Neighbours({}) if raw else Neighbours.now()
    transport: Transport = (
        RawTransport(list(routes.values()), extra_sources)
        if raw
        else ConnectTransport(probing.wait)
    )
    try:
        plan = merge_plans(
            [
                plan_probes(policy, [t for t, _ in pairs], selection)
                for (policy, _), pairs in zip(hosts, resolved, strict=True)
            ]
        )
        before = read_witness(witness) if witness else None
        options = _options(probing, before)
        with _progress_bar(progress) as callback:
            findings = verify(plan, list(routes), transport, options, callback)
    finally:
        transport.close()
    if witness:
        assert before is not None
        findings.witness = compare(before, read_witness(witness))
        _cross_check(findings, hosts[0][0], before, list(routes), raw, probing.wait)
    _link_evidence(findings, routes, neighbours)
    for target in routes:
        if target.seen_as is not None:
            findings.notes.append(
                f"{target.address}: expectations computed for source {target.seen_as} "
                f"(--seen-as), not for this host's {target.source}"
            )
    report = evaluate(plan, findings)
    if findings.static is not None and findings.witness is not None:
        covered = [t for t in routes if findings.witness.covers(t.address)]
        judge_static(report, findings.static, covered, findings.targeted)
    report.started = started
    return report


def _cross_check(
    findings: Findings,
    policy: Policy,
    before: Reading,
    targets: list[Target],
    raw: bool,
    wait: float,
) -> None:
    """Judge the target's ruleset, read before the sweep, and send the probes it calls for.

    docs/design.md, "The model beside the probes".
    """
    if before.ruleset is None:
        findings.notes.append(
            "analysis: the target's harden does not report its ruleset (older than this one): "
            "every port is left to the probes"
        )
        return
    findings.static = static_check(policy, before.ruleset)
    own = [t for t in targets if before.addresses is not None and t.address in before.addresses]
    sources = {t.family: t.seen_as or t.source for t in reversed(own)}
    probes = findings.static.targeted(sources)
    if probes and not raw:
        findings.notes.append(
            f"analysis: {len(probes)} targeted probe(s) from the source ports accepts are keyed "
            "on need raw sockets (root): not sent"
        )
    elif probes:
        findings.targeted = send_targeted(probes, {t.family: t for t in reversed(own)}, wait)


def _options(probing: Probing, before: Reading | None) -> Options:
    """The engine's options: the ICMP rate limits from the witness reading where it has them."""
    limits = probing.ratelimit_ms
    read = frozenset(before.icmp) if before else frozenset()
    return Options(
        wait=probing.wait,
        retries=probing.retries,
        # The target's own ICMP settings, where its witness reported them.
        ratelimit_ms={
            f: before.icmp[f].interval_ms if before and f in read else limits[f] for f in (4, 6)
        },
        extra_sources=probing.sources,
        ratelimit_read=read,
    )


def _link_evidence(findings: Findings, routes: dict[Target, Route], neighbours: Neighbours) -> None:
    """Mark alive the silent targets that answered at the link layer (findings.link_only)."""
    for target, route in routes.items():
        if target.address in findings.alive:
            continue
        # A host on our link that drops everything still answers at the link layer.
        if findings.mode == "raw":
            evidence = link_probe(route)
        else:
            evidence = neighbour_confirmed(route, neighbours)
        if evidence is not None:
            findings.alive[target.address] = evidence
            findings.link_only.add(target.address)


def read_witness(command: str) -> Reading:
    """Run the witness command (``harden counters --format json`` on the target) and parse it."""
    try:
        proc = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"witness command {command!r} did not finish in 120 s") from None
    if proc.returncode != 0:
        raise EnvironmentProblem(
            f"witness command {command!r} exited {proc.returncode}: {one_line(proc.stderr, 300)}"
        )
    try:
        reading = parse_reading(json.loads(proc.stdout))
    except ValueError:
        raise EnvironmentProblem(
            f"witness command {command!r} did not print 'harden counters --format json' output"
        ) from None
    if not any(name.startswith("witness_") for name in reading.counters):
        raise OptionError(
            "witness",
            "the target has no witness counters; list the prober's networks "
            "under verify.probers in its manifest and apply it",
        )
    return reading


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress]:
    if not enabled:
        yield no_progress
        return
    from rich.progress import Progress as Bar

    with Bar(transient=True) as bar:
        task = bar.add_task("probing", total=1)

        def update(phase: str, done: int, total: int | None) -> None:
            if total is not None:
                bar.reset(task, total=total, description=phase)
            else:
                bar.advance(task, done)

        yield update
