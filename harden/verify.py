"""Run a probe plan against real targets and collect what they answered.

The sound-UDP rule (LAB.md, trap 1): a target limits the ICMP errors it sends to each
peer (a token bucket: one token per ``icmp_ratelimit`` ms, a burst of about six). A
UDP sweep that meets silence proves "no port reached the UDP layer" only if the
bucket held a token when the sweep began. We cannot read the target's bucket, but we
can watch everything it sends us: once we have seen no ICMP error from it for one
refill interval, it holds at least one token, so the first leaking port of the next
sweep draws an ICMP error. Each retry round waits for that quiet again, which also
covers an error that was sent but lost.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from harden.classify import EchoReply, Reply, State, classify
from harden.errors import EnvironmentProblem
from harden.manifest import Proto
from harden.plan import Expect, Plan, Target
from harden.probe.payloads import udp_payloads
from harden.probe.raw import Capture, Route, Sender, fresh_sport, is_icmp_error, route_to

Address = IPv4Address | IPv6Address
# phase description, units done (or None to start a phase with a total)
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class Options:
    """Knobs of a verification run; defaults are conservative, not fast."""

    wait: float = 0.4  # seconds to wait for replies after a round
    retries: int = 2  # extra rounds for silent probes (loss)
    declared_retries: int = 4  # more rounds for declared ports that stay silent
    ratelimit_ms: dict[int, int] = field(default_factory=lambda: {4: 1000, 6: 1000})
    enumerate_seconds: float = 3.0  # keep listing UDP leaks this long as the budget refills
    max_quiet_wait: float = 20.0
    # More addresses of this host: each has its own ICMP budget at the target, so a UDP
    # retry round from another source need not wait for the first one's to refill.
    extra_sources: tuple[Address, ...] = ()


@dataclass
class Findings:
    """What each (target, protocol, port) answered; absent = silent."""

    replies: dict[tuple[Target, Proto], dict[int, Reply]] = field(default_factory=dict)
    echo: dict[Address, bool] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)  # "4/tcp/silent" -> probes sent
    notes: list[str] = field(default_factory=list)
    budget_limited: set[tuple[Target, Proto]] = field(default_factory=set)
    seconds: float = 0.0
    mode: str = "raw"


def resolve_targets(addresses: list[Address]) -> list[tuple[Target, Route]]:
    """Each target with the route (and so the source address) this host uses for it."""
    out = []
    for address in addresses:
        route = route_to(address)
        out.append((Target(address, route.source), route))
    return out


def verify(
    plan: Plan,
    routes: dict[Target, Route],
    options: Options,
    progress: Progress = lambda phase, done, total: None,
) -> Findings:
    """Probe every target of the plan; TCP first, then UDP under the budget rule."""
    findings = Findings()
    start = time.monotonic()
    capture = Capture(list(routes.values()))
    try:
        for target, route in routes.items():
            sender = Sender(route)
            try:
                _echo(sender, capture, target, findings, options)
                _tcp(plan, sender, capture, target, findings, options, progress)
                _udp(plan, sender, capture, target, findings, options, progress)
            finally:
                sender.close()
    finally:
        capture.close()
    findings.seconds = time.monotonic() - start
    return findings


def _collect(
    capture: Capture, since: float, target: Target, proto: Proto, sport: int, seq: int | None
) -> dict[int, Reply]:
    found: dict[int, Reply] = {}
    for packet in capture.since(since):
        reply = classify(packet, target.address)
        if not isinstance(reply, Reply) or reply.proto != proto or reply.sport != sport:
            continue
        if seq is not None and reply.ack is not None and reply.ack != (seq + 1) & 0xFFFFFFFF:
            continue  # not an answer to our SYN (a stray or stale segment)
        found.setdefault(reply.port, reply)  # first wins: SYN-ACK retransmits are duplicates
    return found


def _echo(
    sender: Sender, capture: Capture, target: Target, findings: Findings, options: Options
) -> None:
    ident = random.getrandbits(16)
    since = time.monotonic()
    answered = False
    for _ in range(1 + options.retries):
        sender.ping(ident)
        time.sleep(min(options.wait, 0.3))
        answered = any(
            isinstance(r := classify(p, target.address), EchoReply) and r.ident == ident
            for p in capture.since(since)
        )
        if answered:
            break
    findings.echo[target.address] = answered


def _tcp(
    plan: Plan,
    sender: Sender,
    capture: Capture,
    target: Target,
    findings: Findings,
    options: Options,
    progress: Progress,
) -> None:
    ports = plan.ports(target, "tcp")
    if not ports:
        return
    expect = plan.expectation(target, "tcp")
    replies: dict[int, Reply] = {}
    pending = ports
    rounds = 1 + options.retries + options.declared_retries
    for round_no in range(rounds):
        if round_no > options.retries:
            # Extra rounds only for declared ports that stayed silent: loss must not
            # turn an open port into a "declared port unreachable" failure.
            pending = [p for p in pending if expect[p] is Expect.ALLOWED]
        if not pending:
            break
        sport = fresh_sport()
        progress(f"{_label(target)} tcp round {round_no + 1}", 0, len(pending))
        since = time.monotonic()
        sent = sender.syn_sweep(pending, sport, lambda n: progress("", n, None))
        _count(findings, target, "tcp", pending, expect, sent)
        time.sleep(options.wait)
        replies.update(_collect(capture, since, target, "tcp", sport, sender.seq))
        pending = [p for p in pending if p not in replies]
    findings.replies[(target, "tcp")] = replies


def _udp(
    plan: Plan,
    sender: Sender,
    capture: Capture,
    target: Target,
    findings: Findings,
    options: Options,
    progress: Progress,
) -> None:
    ports = plan.ports(target, "udp")
    if not ports:
        return
    expect = plan.expectation(target, "udp")
    payloads = udp_payloads()
    interval = options.ratelimit_ms[target.family] / 1000
    replies: dict[int, Reply] = {}
    pending = ports
    sources = [target.source, *(a for a in options.extra_sources if a.version == target.family)]
    round_end = dict.fromkeys(sources, 0.0)
    for round_no in range(1 + options.retries):
        source = sources[round_no % len(sources)]
        _quiet(capture, target, source, interval, options, after=round_end[source])
        progress(f"{_label(target)} udp round {round_no + 1}", 0, len(pending))
        since = time.monotonic()
        sent = sender.udp_sweep(pending, payloads, lambda n: progress("", n, None), source)
        round_end[source] = time.monotonic()
        _count(findings, target, "udp", pending, expect, sent)
        time.sleep(options.wait)
        replies.update(_collect(capture, since, target, "udp", sender.last_udp_sport, None))
        pending = [p for p in pending if p not in replies]
        if any(r.state is not State.OPEN for r in replies.values()):
            break  # ICMP seen: the budget is spent, enumerate instead of retrying
    errors = [p for p, r in replies.items() if r.state is not State.OPEN]
    if errors:
        _enumerate(sender, capture, target, pending, payloads, replies, interval, sources, options)
        findings.budget_limited.add((target, "udp"))
        n = sum(1 for r in replies.values() if r.state is not State.OPEN)
        findings.notes.append(
            f"{_label(target)} udp: {n} port(s) answered with ICMP; the target rate-limits "
            f"ICMP errors (about one per {interval:g} s to us), so more ports may answer "
            "than are listed"
        )
    else:
        findings.notes.append(
            f"{_label(target)} udp: {1 + options.retries} sweep(s) from "
            f"{len(sources)} source address(es), each begun after {interval:g} s without "
            "any ICMP error from the target to that source (its per-peer budget held a "
            "token); no ICMP came back, so no probed port reached the UDP layer. "
            f"Assumes the target's ICMP rate limit interval is at most {interval:g} s."
        )
    findings.replies[(target, "udp")] = replies


def _enumerate(
    sender: Sender,
    capture: Capture,
    target: Target,
    pending: list[int],
    payloads: dict[int, bytes],
    replies: dict[int, Reply],
    interval: float,
    sources: list[Address],
    options: Options,
) -> None:
    """List more ICMP-answering ports as the target's budget refills, for a bounded time."""
    deadline = time.monotonic() + options.enumerate_seconds
    turn = 0
    while pending and time.monotonic() < deadline:
        turn += 1
        source = sources[turn % len(sources)]
        if turn % len(sources) == 0:
            time.sleep(interval)  # every source's budget has been spent once: refill
        # Start after the last port that answered, so each token names a new port.
        last = max((p for p, r in replies.items() if r.state is not State.OPEN), default=0)
        order = [p for p in pending if p > last] + [p for p in pending if p <= last]
        since = time.monotonic()
        sender.udp_sweep(order, payloads, None, source)
        time.sleep(min(options.wait, 0.2))
        new = _collect(capture, since, target, "udp", sender.last_udp_sport, None)
        if not new:
            continue
        replies.update(new)
        pending = [p for p in pending if p not in new]


def _quiet(
    capture: Capture,
    target: Target,
    source: Address,
    interval: float,
    options: Options,
    after: float = 0.0,
) -> None:
    """Wait until the target has sent ``source`` no ICMP error for one refill interval.

    ``after`` is when our previous UDP round ended: an error it drew may have been
    sent and lost on the way, spending a token we never saw, so the interval also
    counts from there.
    """
    deadline = time.monotonic() + options.max_quiet_wait
    packed, to = target.address.packed, source.packed

    def from_target(packet: bytes) -> bool:
        v4 = packet[0] >> 4 == 4
        src, dst = (packet[12:16], packet[16:20]) if v4 else (packet[8:24], packet[24:40])
        return src == packed and dst == to and is_icmp_error(packet)

    while True:
        last = capture.last(from_target)
        ready = max(capture.started, after, last or 0.0) + interval * 1.1
        now = time.monotonic()
        if now >= ready:
            return
        if now + (ready - now) > deadline:
            raise EnvironmentProblem(
                f"{target.address} keeps sending ICMP errors: no quiet period of {interval:g} s "
                f"within {options.max_quiet_wait:g} s, so a UDP verdict would not be sound"
            )
        time.sleep(ready - now)


def _count(
    findings: Findings,
    target: Target,
    proto: Proto,
    ports: list[int],
    expect: dict[int, Expect],
    sent: int,
) -> None:
    for expectation, n in Counter(map(expect.__getitem__, ports[:sent])).items():
        key = f"{target.family}/{proto}/{expectation.value}"
        findings.sent[key] = findings.sent.get(key, 0) + n


def _label(target: Target) -> str:
    return f"{target.address}"
