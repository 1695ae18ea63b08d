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

from harden.core.classify import EchoReply, Reply, State, classify
from harden.core.manifest import Proto
from harden.core.plan import Expect, Plan, Target
from harden.errors import EnvironmentProblem
from harden.verify.payloads import udp_payloads
from harden.verify.raw import Capture, Route, Sender, fresh_sport, is_icmp_error, route_to

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
    """Probe every target of the plan: ping, TCP rounds, then UDP under the budget rule.

    Each phase runs across all targets at once, so a fleet shares the waits: a round
    sends to every target, then waits for replies once.
    """
    findings = Findings()
    start = time.monotonic()
    capture = Capture(list(routes.values()))
    senders: dict[Target, Sender] = {}
    try:
        for target, route in routes.items():
            senders[target] = Sender(route)
        _echo(senders, capture, findings, options)
        _tcp(plan, senders, capture, findings, options, progress)
        _udp(plan, senders, capture, findings, options, progress)
    finally:
        for sender in senders.values():
            sender.close()
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
    senders: dict[Target, Sender], capture: Capture, findings: Findings, options: Options
) -> None:
    ident = random.getrandbits(16)
    since = time.monotonic()
    waiting = set(senders)
    # Ping is a declared expectation too: as many tries as a declared port gets.
    for _ in range(1 + options.retries + options.declared_retries):
        for target in waiting:
            senders[target].ping(ident)
        time.sleep(min(options.wait, 0.3))
        packets = capture.since(since)
        for target in list(waiting):
            if any(
                isinstance(r := classify(p, target.address), EchoReply) and r.ident == ident
                for p in packets
            ):
                waiting.discard(target)
        if not waiting:
            break
    for target in senders:
        findings.echo[target.address] = target not in waiting


def _tcp(
    plan: Plan,
    senders: dict[Target, Sender],
    capture: Capture,
    findings: Findings,
    options: Options,
    progress: Progress,
) -> None:
    expect = {t: plan.expectation(t, "tcp") for t in senders}
    pending = {t: plan.ports(t, "tcp") for t in senders}
    replies: dict[Target, dict[int, Reply]] = {t: {} for t in senders}
    for round_no in range(1 + options.retries + options.declared_retries):
        if round_no > options.retries:
            # Extra rounds only for declared ports that stayed silent: loss must not
            # turn an open port into a "declared port unreachable" failure.
            pending = {
                t: [p for p in ps if expect[t][p] is Expect.ALLOWED] for t, ps in pending.items()
            }
        batch = {t: ps for t, ps in pending.items() if ps}
        if not batch:
            break
        progress(f"tcp round {round_no + 1}", 0, sum(map(len, batch.values())))
        since = time.monotonic()
        sports = {}
        for target, ports in batch.items():
            sports[target] = fresh_sport()
            sent = senders[target].syn_sweep(ports, sports[target], lambda n: progress("", n, None))
            _count(findings, target, "tcp", ports, expect[target], sent)
        time.sleep(options.wait)
        for target, ports in batch.items():
            found = _collect(capture, since, target, "tcp", sports[target], senders[target].seq)
            replies[target].update(found)
            pending[target] = [p for p in ports if p not in found]
    for target in senders:
        findings.replies[(target, "tcp")] = replies[target]


@dataclass
class _UdpState:
    """One target's UDP progress."""

    expect: dict[int, Expect]
    pending: list[int]
    sources: list[Address]
    interval: float
    round_end: dict[Address, float]
    replies: dict[int, Reply] = field(default_factory=dict)
    rounds: int = 0
    sport: int = 0  # our source port in the latest round

    @property
    def errored(self) -> bool:
        """Whether the target answered any probe with an ICMP error."""
        return any(r.state is not State.OPEN for r in self.replies.values())


def _udp(
    plan: Plan,
    senders: dict[Target, Sender],
    capture: Capture,
    findings: Findings,
    options: Options,
    progress: Progress,
) -> None:
    payloads = udp_payloads()
    states: dict[Target, _UdpState] = {}
    for target in senders:
        sources = [target.source, *(a for a in options.extra_sources if a.version == target.family)]
        states[target] = _UdpState(
            expect=plan.expectation(target, "udp"),
            pending=plan.ports(target, "udp"),
            sources=sources,
            interval=options.ratelimit_ms[target.family] / 1000,
            round_end=dict.fromkeys(sources, 0.0),
        )
    for round_no in range(1 + options.retries):
        # An ICMP error means the budget is spent: enumerate instead of retrying.
        active = {t: st for t, st in states.items() if st.pending and not st.errored}
        if not active:
            break
        picks = {t: st.sources[round_no % len(st.sources)] for t, st in active.items()}
        for target, st in active.items():  # waits overlap: each one ends at its own time
            _quiet(
                capture,
                target,
                picks[target],
                st.interval,
                options,
                after=st.round_end[picks[target]],
            )
        progress(f"udp round {round_no + 1}", 0, sum(len(st.pending) for st in active.values()))
        since = time.monotonic()
        for target, st in active.items():
            sender = senders[target]
            sent = sender.udp_sweep(
                st.pending, payloads, lambda n: progress("", n, None), picks[target]
            )
            st.round_end[picks[target]] = time.monotonic()
            st.rounds += 1
            _count(findings, target, "udp", st.pending, st.expect, sent)
            st.sport = sender.last_udp_sport
        time.sleep(options.wait)
        for target, st in active.items():
            found = _collect(capture, since, target, "udp", st.sport, None)
            st.replies.update(found)
            st.pending = [p for p in st.pending if p not in found]
    _enumerate(
        senders, capture, {t: st for t, st in states.items() if st.errored}, payloads, options
    )
    for target, st in states.items():
        findings.replies[(target, "udp")] = st.replies
        label = str(target.address)
        if st.errored:
            findings.budget_limited.add((target, "udp"))
            n = sum(1 for r in st.replies.values() if r.state is not State.OPEN)
            findings.notes.append(
                f"{label} udp: {n} port(s) answered with ICMP; the target rate-limits ICMP "
                f"errors (about one per {st.interval:g} s to each source), so more ports may "
                "answer than are listed"
            )
        elif st.rounds:
            findings.notes.append(
                f"{label} udp: {st.rounds} sweep(s) from {len(st.sources)} source "
                f"address(es), each begun after {st.interval:g} s without any ICMP error from "
                "the target to that source (its per-peer budget held a token); no ICMP came "
                "back, so no probed port reached the UDP layer. Assumes the target's ICMP "
                f"rate limit interval is at most {st.interval:g} s."
            )


def _enumerate(
    senders: dict[Target, Sender],
    capture: Capture,
    leaking: dict[Target, _UdpState],
    payloads: dict[int, bytes],
    options: Options,
) -> None:
    """List more ICMP-answering ports as the targets' budgets refill, for a bounded time."""
    deadline = time.monotonic() + options.enumerate_seconds
    turn = 0
    while time.monotonic() < deadline:
        active = {t: st for t, st in leaking.items() if st.pending}
        if not active:
            return
        turn += 1
        refill = max(st.interval for st in active.values())
        if all(turn % len(st.sources) == 0 for st in active.values()):
            time.sleep(refill)  # every source's budget has been spent once: refill
        since = time.monotonic()
        sports = {}
        for target, st in active.items():
            # Start after the last port that answered, so each token names a new port.
            last = max((p for p, r in st.replies.items() if r.state is not State.OPEN), default=0)
            order = [p for p in st.pending if p > last] + [p for p in st.pending if p <= last]
            senders[target].udp_sweep(order, payloads, None, st.sources[turn % len(st.sources)])
            sports[target] = senders[target].last_udp_sport
        time.sleep(min(options.wait, 0.2))
        for target, st in active.items():
            found = _collect(capture, since, target, "udp", sports[target], None)
            st.replies.update(found)
            st.pending = [p for p in st.pending if p not in found]


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


def verify_connect(
    plan: Plan,
    targets: list[Target],
    options: Options,
    progress: Progress = lambda phase, done, total: None,
) -> Findings:
    """The unprivileged fallback: connect() and connected UDP sockets, slower but sound.

    Without a capture the prober cannot watch the target's ICMP budget, so every UDP
    round starts one full refill interval after the previous one (and after start-up):
    only errors we provoked ourselves could have spent a token, and we see those.
    """
    from harden.verify import connect

    findings = Findings(mode="connect")
    start = time.monotonic()
    payloads = udp_payloads()
    timeout = max(options.wait, 1.0)
    for target in targets:
        label = str(target.address)
        tcp_ports = plan.ports(target, "tcp")
        replies: dict[int, Reply] = {}
        for round_no in range(1 + options.retries):
            pending = [p for p in tcp_ports if p not in replies]
            if not pending:
                break
            progress(f"{label} tcp connect round {round_no + 1}", 0, len(pending))
            replies.update(connect.tcp_sweep(target.address, pending, timeout))
        findings.replies[(target, "tcp")] = replies
        interval = options.ratelimit_ms[target.family] / 1000
        udp_ports = plan.ports(target, "udp")
        udp: dict[int, Reply] = {}
        rounds = 0
        for round_no in range(1 + options.retries):
            pending = [p for p in udp_ports if p not in udp]
            if not pending:
                break
            time.sleep(interval * 1.1)
            progress(f"{label} udp round {round_no + 1}", 0, len(pending))
            udp.update(connect.udp_sweep(target.address, pending, payloads, options.wait))
            rounds += 1
            if any(r.state is not State.OPEN for r in udp.values()):
                break
        findings.replies[(target, "udp")] = udp
        if any(r.state is not State.OPEN for r in udp.values()):
            findings.budget_limited.add((target, "udp"))
            findings.notes.append(
                f"{label} udp: ICMP errors came back; the target rate-limits "
                "them, so more ports may answer than are listed"
            )
        elif rounds:
            findings.notes.append(
                f"{label} udp: {rounds} round(s), each begun {interval:g} s after the previous "
                "one; no ICMP error came back, so no probed port reached the UDP layer "
                f"(assumes a rate limit interval of at most {interval:g} s and no other "
                "traffic from this host drawing ICMP errors meanwhile)"
            )
    findings.notes.append(
        "unprivileged mode (no CAP_NET_RAW): connect() probes, ping not checked, ICMP "
        "unreachable codes not visible; run as root for the fast raw sweep"
    )
    findings.seconds = time.monotonic() - start
    return findings
