"""The round engine: ping, TCP rounds, then UDP rounds under the budget rule, any transport.

The sound-UDP rule (docs/design.md, "UDP: ICMP rate limiting and the quiet rule"): a
target limits the ICMP errors it sends to each peer (a token bucket: one token per
``icmp_ratelimit`` ms, a burst of about six). A UDP sweep that meets silence proves
"no port reached the UDP layer" only if the bucket held a token when the sweep
began. We cannot read the target's bucket, but we see every ICMP error it sends us:
once it has sent our source none for one refill interval, it holds at least one
token, so the first leaking port of the next sweep draws an error. The k-th sweep
from a source begins no sooner than k refill intervals after the capture started
(docs/design.md, "Sweeps counted from the start"), so k sweeps draw at least k errors
from a leaking host even when some are lost.

Every phase runs across all targets at once, so a fleet shares the waits: a round
sends to every target, then waits for replies once.
"""

from __future__ import annotations

import os
import random
from array import array
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from harden import defaults
from harden.errors import EnvironmentProblem
from harden.types import Address, Proto, Sent
from harden.verify.classify import Reason, Reply
from harden.verify.engine.transport import Clock, Round, SystemClock, Transport
from harden.verify.findings import Findings, Observed, TooSlow
from harden.verify.plan import Expect, Plan, PortMap, Target

# phase description, units done (or None to start a phase with a total)
Progress = Callable[[str, int, int | None], None]


def no_progress(phase: str, done: int, total: int | None) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True)
class Options:
    """Knobs of a verification run; defaults (harden.defaults) are conservative, not fast."""

    wait: float = defaults.WAIT
    retries: int = defaults.RETRIES
    declared_retries: int = defaults.DECLARED_RETRIES
    ratelimit_ms: dict[int, int] = field(
        default_factory=lambda: {4: defaults.ICMP_RATELIMIT_MS, 6: defaults.ICMP_RATELIMIT_MS}
    )
    enumerate_seconds: float = defaults.ENUMERATE_SECONDS
    max_quiet_wait: float = defaults.MAX_QUIET_WAIT
    # More addresses of this host: each has its own ICMP budget at the target, so a UDP
    # retry round from another source need not wait for the first one's to refill.
    extra_sources: tuple[Address, ...] = ()
    # Families whose ratelimit_ms was read from the target (the witness), not assumed.
    ratelimit_read: frozenset[int] = frozenset()


def verify(
    plan: Plan,
    targets: list[Target],
    transport: Transport,
    options: Options,
    progress: Progress = no_progress,
    clock: Clock | None = None,
) -> Findings:
    """Probe every target of the plan through ``transport`` and collect what answered."""
    clock = clock or SystemClock()
    findings = Findings(mode=transport.mode)
    start = clock.now()
    run = _Run(plan, targets, transport, options, progress, clock, findings)
    if transport.can_ping:
        run.echo()
    # Each protocol's share of the run, for reports that time their checks (JUnit).
    started = clock.now()
    run.tcp()
    tcp = clock.now() - started
    started = clock.now()
    run.udp()
    udp = clock.now() - started
    started = clock.now()
    run.finish_tcp()
    findings.timing["phase_tcp"] = tcp + clock.now() - started
    findings.timing["phase_udp"] = udp
    for target in targets:
        evidence = transport.heard_from(target) or _answered(findings, target)
        if evidence is not None:
            findings.alive[target.address] = evidence
    if any(findings.replies.get((t, "udp")) is not None for t in targets):
        findings.notes.append(
            "udp: a listener that ignores unknown datagrams answers nothing and draws no ICMP "
            "error, so from outside it looks exactly like a dropped port; only the target's "
            "own counters can tell the two apart (verify --witness)"
        )
    findings.notes.extend(transport.limitations)
    findings.seconds = clock.now() - start
    return findings


@dataclass
class _Udp:
    """One target's UDP progress."""

    expect: PortMap
    pending: Sequence[int]
    sources: list[Address]
    interval: float
    round_end: dict[Address, float]
    replies: dict[int, Reply] = field(default_factory=dict)
    rounds: int = 0
    clean_passes: int = 0  # enumeration passes in a row that drew no new ICMP error
    settled: bool = False  # the ports still pending are proven silent
    # The rate limit is too slow for the quiet rule within max_quiet_wait: silence here
    # is proven only by the witness, if at all.
    unprovable: bool = False

    @property
    def errored(self) -> bool:
        """Whether the target answered any probe with an ICMP error (its budget is spent)."""
        return any(r.is_icmp_error for r in self.replies.values())


@dataclass
class _Run:
    plan: Plan
    targets: list[Target]
    transport: Transport
    options: Options
    progress: Progress
    clock: Clock
    findings: Findings
    rtt: dict[Target, float] = field(default_factory=dict)  # echo round-trip times
    tcp_rounds: list[Round] = field(default_factory=list)

    def _settle(self, wait: float) -> None:
        # A blocking transport has waited for its replies while sending.
        if not self.transport.blocking:
            self.clock.sleep(wait)
            self._spent("reply_wait", wait)

    def _spent(self, what: str, seconds: float) -> None:
        timing = self.findings.timing
        timing[what] = timing.get(what, 0.0) + max(0.0, seconds)

    def _send_round(self, calls: list[tuple[Callable[..., Round], tuple[Any, ...]]]) -> list[Round]:
        """One round's sweeps, one per target: side by side where the transport allows.

        On a real prober the cost of a probe is mostly the kernel's, outside the
        interpreter lock, so targets sent from threads use every core (docs/design.md,
        "The send path").
        """
        begun = self.clock.now()
        if self.transport.parallel and len(calls) > 1:
            workers = min(len(calls), os.cpu_count() or 1)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                rounds = list(pool.map(lambda call: call[0](*call[1]), calls))
        else:
            rounds = [send(*args) for send, args in calls]
        self._spent("send", self.clock.now() - begun)
        return rounds

    def round_wait(self, targets: list[Target]) -> float:
        """How long replies to a round get.

        RTT_FACTOR echo round-trip times of the slowest target, between MIN_WAIT and
        ``wait``; ``wait`` if a target's RTT is unknown. Late replies are not lost: every
        round's replies are read again at the end of the run (docs/design.md, "Waits from
        the round-trip time").
        """
        if not targets or any(t not in self.rtt for t in targets):
            return self.options.wait
        slowest = max(self.rtt[t] for t in targets)
        return min(self.options.wait, max(defaults.MIN_WAIT, defaults.RTT_FACTOR * slowest))

    def _tick(self, n: int) -> None:
        self.progress("", n, None)

    def echo(self) -> None:
        """Ping every target (retried like a declared port); measure each round-trip time."""
        waiting = set(self.targets)
        by_address = {t.address: t for t in self.targets}
        # Ping is a declared expectation too: as many tries as a declared port gets.
        for _ in range(1 + self.options.retries + self.options.declared_retries):
            ident = random.getrandbits(16)  # a new one per try: RTTs are not mixed up
            sent_at = self.clock.now()
            self.transport.ping(sorted(waiting, key=str), ident)
            deadline = sent_at + min(self.options.wait, 0.3)
            while True:
                for address, at in self.transport.echoed(sent_at, ident).items():
                    target = by_address.get(address)
                    if target in waiting:
                        waiting.discard(target)
                        self.rtt[target] = max(0.0, at - sent_at)
                if not waiting or self.clock.now() >= deadline:
                    break
                self.clock.sleep(0.005)
                self._spent("echo_wait", 0.005)
            if not waiting:
                break
        for target in self.targets:
            self.findings.echo[target.address] = target not in waiting

    def tcp(self) -> None:
        o = self.options
        expect = {t: self.plan.expectation(t, "tcp") for t in self.targets}
        pending = {t: self.plan.ports(t, "tcp") for t in self.targets}
        replies: dict[Target, dict[int, Reply]] = {t: {} for t in self.targets}
        for round_no in range(1 + o.retries + o.declared_retries):
            if round_no > o.retries:
                # Extra rounds only for declared ports that stayed silent: loss must not
                # turn an open port into a "declared port unreachable" failure.
                pending = {
                    t: array("H", [p for p in ps if expect[t][p] is Expect.ALLOWED])
                    for t, ps in pending.items()
                }
            batch = {t: ps for t, ps in pending.items() if ps}
            if not batch:
                break
            self.progress(f"tcp round {round_no + 1}", 0, sum(map(len, batch.values())))
            rounds = self._send_round(
                [(self.transport.send_tcp, (t, ps, self._tick)) for t, ps in batch.items()]
            )
            for rnd in rounds:
                self._count(rnd, expect[rnd.target])
            self._settle(self.round_wait(list(batch)))
            for rnd in rounds:
                found = self.transport.replies(rnd)
                replies[rnd.target].update(found)
                pending[rnd.target] = _without(rnd.ports, found)
            self.tcp_rounds += _portless(rounds)
        for target in self.targets:
            self.findings.replies[(target, "tcp")] = replies[target]

    def finish_tcp(self) -> None:
        """Read every TCP round's replies again, now that the UDP phase has passed.

        A reply that came after its round's wait still counts: a late RST is a leak.
        """
        o = self.options
        for rnd in self.tcp_rounds:
            heard = self.findings.replies[(rnd.target, "tcp")]
            for port, reply in self.transport.replies(rnd).items():
                heard.setdefault(port, reply)
        for target in self.targets:
            heard = self.findings.replies[(target, "tcp")]
            expect = self.plan.expectation(target, "tcp")
            closed = sum(n for e, n in expect.count(expect).items() if e is not Expect.ALLOWED)
            answered = expect.count(p for p in heard if p in expect)
            silent = closed - sum(n for e, n in answered.items() if e is not Expect.ALLOWED)
            if silent:
                self.findings.notes.append(
                    f"{target.address} tcp: {silent} closed port(s) sent no RST and no SYN-ACK "
                    f"in {1 + o.retries} round(s) from fresh source ports"
                )

    def _udp_state(self, target: Target) -> _Udp:
        """``target``'s UDP progress before its first sweep: ports, sources, refill interval."""
        o = self.options
        sources = [target.source, *(a for a in o.extra_sources if a.version == target.family)]
        interval = o.ratelimit_ms[target.family] / 1000
        unprovable = refill(interval) > o.max_quiet_wait
        return _Udp(
            expect=self.plan.expectation(target, "udp"),
            pending=self.plan.ports(target, "udp"),
            sources=sources,
            # Sent without waiting: the sweeps can still show leaks, not silence.
            interval=0.0 if unprovable else interval,
            round_end=dict.fromkeys(sources, self.transport.started),
            unprovable=unprovable,
        )

    def udp(self) -> None:
        """UDP rounds under the quiet rule, then enumeration of the targets that leaked."""
        o = self.options
        states = {target: self._udp_state(target) for target in self.targets}
        # The k-th sweep from a source begins k refill intervals after we began watching
        # (docs/design.md, "Sweeps counted from the start"): by then the budget has
        # earned k tokens, and every earlier sweep that saw no error spent at most the
        # errors we lost, so k sweeps have drawn at least k errors from a leaking port.
        start = self.transport.started
        swept: dict[tuple[Target, Address], int] = {}
        main_rounds: list[Round] = []
        for round_no in range(1 + o.retries):
            # An ICMP error means the budget is spent: enumerate instead of retrying.
            active = {t: st for t, st in states.items() if st.pending and not st.errored}
            if not active:
                break
            picks = {t: st.sources[round_no % len(st.sources)] for t, st in active.items()}
            # quiet_all adds one refill to these: the k-th sweep waits refill(k) in all.
            self.quiet_all(
                {t: (picks[t], st) for t, st in active.items()},
                {
                    t: start
                    + refill(st.interval, swept.get((t, picks[t]), 0) + 1)
                    - refill(st.interval)
                    for t, st in active.items()
                },
            )
            total = sum(len(st.pending) for st in active.values())
            self.progress(f"udp round {round_no + 1}", 0, total)
            rounds = self._send_round(
                [
                    (self.transport.send_udp, (target, picks[target], st.pending, self._tick))
                    for target, st in active.items()
                ]
            )
            for rnd in rounds:
                st = states[rnd.target]
                st.round_end[rnd.source] = self.clock.now()
                swept[(rnd.target, rnd.source)] = swept.get((rnd.target, rnd.source), 0) + 1
                st.rounds += 1
                self._count(rnd, st.expect)
            self._settle(self.round_wait(list(active)))
            for rnd in rounds:
                st = states[rnd.target]
                found = self.transport.replies(rnd)
                st.replies.update(found)
                st.pending = _without(st.pending, found)
            main_rounds += _portless(rounds)
        # Errors that came after their round's wait still count (a late error is a leak).
        self._reread_udp(main_rounds, states)
        self.enumerate({t: st for t, st in states.items() if st.errored and not st.unprovable})
        for target, st in states.items():
            self.findings.replies[(target, "udp")] = st.replies
            self._udp_note(target, st)

    def _reread_udp(self, rounds: list[Round], states: dict[Target, _Udp]) -> None:
        """Read the UDP rounds' replies again; the first reply per port stays."""
        for rnd in rounds:
            st = states[rnd.target]
            found = self.transport.replies(rnd)
            for port, reply in found.items():
                st.replies.setdefault(port, reply)
            st.pending = _without(st.pending, found)

    def _udp_note(self, target: Target, st: _Udp) -> None:
        label = str(target.address)
        n = sum(1 for r in st.replies.values() if r.is_icmp_error)
        key: tuple[Target, Proto] = (target, "udp")
        ms = self.options.ratelimit_ms[target.family]
        if st.unprovable:
            self.findings.unproven[key] = TooSlow(ms)
            self.findings.notes.append(
                f"{label} udp: the target's ICMP rate limit is {ms} ms, too slow for the quiet "
                f"rule within {self.options.max_quiet_wait:g} s: its silent UDP ports are "
                "proven only by its witness counters"
            )
            return
        if st.errored and not st.settled:
            self.findings.unproven[key] = Observed.UNPROBED
            self.findings.notes.append(
                f"{label} udp: {n} port(s) answered with ICMP; the target rate-limits ICMP "
                f"errors (about one per {st.interval:g} s to each source), so more ports may "
                f"answer than are listed: {len(st.pending)} silent port(s) are unprobed, "
                "not proven silent"
            )
            return
        if st.errored:
            self.findings.notes.append(
                f"{label} udp: {n} port(s) answered with ICMP; the other {len(st.pending)} "
                "silent port(s) drew no ICMP error in sweeps each begun while the target's "
                "budget held a token"
            )
        elif st.rounds:
            self.findings.notes.append(
                f"{label} udp: no UDP port drew an ICMP error while the target's budget held "
                f"a token ({st.rounds} sweep(s) from {len(st.sources)} source address(es), "
                f"each begun after {st.interval:g} s without any ICMP error to that source), "
                "so no probed port reached the UDP layer unanswered"
            )
        else:
            return
        premises = self.findings.premises.setdefault(key, [])
        if target.family not in self.options.ratelimit_read:
            name = "net.ipv4.icmp_ratelimit" if target.family == 4 else "net.ipv6.icmp.ratelimit"
            premises.append(f"the target's ICMP rate limit ≤ {ms} ms ({name})")
        premises.append(
            "no other traffic spent the target's machine-wide ICMP budget during the run "
            "(net.ipv4.icmp_msgs_per_sec)"
        )
        if self.transport.mode == "connect":
            premises.append("no other traffic from this host drew ICMP errors from the target")

    def enumerate(self, leaking: dict[Target, _Udp]) -> None:
        """Sweep again as the budgets refill: list more leaks, or prove the rest silent.

        Every pass begins under the quiet rule, so with a token in the target's bucket:
        the first still-pending port that reaches the UDP layer draws an error. Passes
        that draw no new error, as many in a row as a sweep has rounds (loss), prove the
        ports still pending silent, and that target is settled. Bounded in time: a pass
        that could not begin before the deadline is not sent.
        """
        deadline = self.clock.now() + self.options.enumerate_seconds
        rounds_needed = 1 + self.options.retries
        turn = 0
        stopped: set[Target] = set()
        while True:
            turn += 1
            picks = {}
            for t, st in leaking.items():
                if not st.pending or st.settled or t in stopped:
                    continue
                source = st.sources[turn % len(st.sources)]
                # Listing leaks stops at the deadline; once passes come back clean, the
                # proof may finish (as many more passes as a sweep has rounds).
                until = deadline
                if st.clean_passes:
                    until += refill(st.interval, rounds_needed) + self.options.wait
                if self._quiet_at(t, source, st) > until:
                    stopped.add(t)
                    continue
                picks[t] = (source, st)
            if not picks:
                return
            self.quiet_all(picks)
            calls = []
            for target, (source, st) in picks.items():
                # Start after the last port that answered, so each token names a new port.
                last = max((p for p, r in st.replies.items() if r.is_icmp_error), default=0)
                order = array("H", [p for p in st.pending if p > last])
                order.extend(p for p in st.pending if p <= last)
                calls.append((self.transport.send_udp, (target, source, order, None)))
            rounds = self._send_round(calls)
            for rnd in rounds:
                leaking[rnd.target].round_end[rnd.source] = self.clock.now()
                self._count(rnd, leaking[rnd.target].expect)  # the witness counts these too
            self._settle(min(self.options.wait, 0.2))
            for rnd in rounds:
                st = leaking[rnd.target]
                found = self.transport.replies(rnd)
                st.replies.update(found)
                st.pending = _without(st.pending, found)
                st.clean_passes = (
                    0 if any(r.is_icmp_error for r in found.values()) else (st.clean_passes + 1)
                )
                st.settled = st.clean_passes >= rounds_needed

    def _quiet_at(self, target: Target, source: Address, st: _Udp) -> float:
        last = self.transport.last_icmp_error(target, source) or 0.0
        return max(st.round_end[source], last) + refill(st.interval)

    def quiet_all(
        self,
        picks: dict[Target, tuple[Address, _Udp]],
        after: dict[Target, float] | None = None,
    ) -> None:
        """Wait until every target has been quiet toward its source, all at the same time.

        ``after`` is, per target, when the refill interval may begin at the earliest
        (default: when the source's previous round ended). The waits overlap; once each
        has ended, all are checked again, because an error may have reached one source
        while we waited for another target.
        """
        deadline = self.clock.now() + self.options.max_quiet_wait
        while True:
            waits = [
                self.quiet(
                    target,
                    source,
                    st.interval,
                    st.round_end[source] if after is None else after[target],
                    deadline,
                )
                for target, (source, st) in picks.items()
            ]
            if not any(waits):
                return

    def quiet(
        self, target: Target, source: Address, interval: float, after: float, deadline: float
    ) -> bool:
        """Wait until ``target`` has sent ``source`` no ICMP error for one refill interval.

        ``after`` is when the interval may begin at the earliest: for the k-th sweep of a
        clean run, refill(k - 1) after the transport began watching; for an enumeration
        pass, when our previous round from ``source`` ended (an error it drew may have
        been lost on the way, spending a token we never saw). Returns whether it waited.
        """
        waited = False
        while True:
            last = self.transport.last_icmp_error(target, source) or 0.0
            ready = max(after, last) + refill(interval)
            now = self.clock.now()
            if now >= ready:
                return waited
            if ready > deadline:
                raise EnvironmentProblem(
                    f"{target.address} keeps sending ICMP errors: no quiet period of "
                    f"{interval:g} s within {self.options.max_quiet_wait:g} s, so a UDP "
                    "verdict would not be sound"
                )
            self.clock.sleep(ready - now)
            self._spent("quiet_wait", ready - now)
            waited = True

    def _count(self, rnd: Round, expect: PortMap) -> None:
        family = rnd.target.family
        mine = self.findings.sent_to.setdefault(rnd.target.address, {})
        for expectation, n in expect.count(rnd.ports[: rnd.count]).items():
            key = Sent(family, rnd.proto, expectation.value)
            self.findings.sent[key] = self.findings.sent.get(key, 0) + n
            mine[key] = mine.get(key, 0) + n


EMPTY: array[int] = array("H")


def _portless(rounds: list[Round]) -> list[Round]:
    """``rounds`` kept for the final re-read, which needs no ports (fleets send many)."""
    return [replace(rnd, ports=EMPTY) for rnd in rounds]


def _answered(findings: Findings, target: Target) -> str | None:
    """Evidence from a reply that answered a probe to ``target`` from another of its addresses.

    A router's "no route" is never matched to a probe (verify/classify.py), and an
    admin-prohibited may come from a filter in front of the host, so only what a host's
    own stack sends counts: a TCP or UDP reply, or a port-unreachable.
    """
    for proto in ("tcp", "udp"):
        for port, reply in sorted(findings.replies.get((target, proto), {}).items()):
            own_stack = reply.reason not in (Reason.PROHIBITED, Reason.UNREACHABLE)
            if reply.responder is not None and own_stack:
                return f"{proto}/{port} answered {reply.detail}"
    return None


def refill(interval: float, k: int = 1) -> float:
    """How long the target surely takes to earn ``k`` tokens, counted in its timer ticks.

    Its budget grows by the ticks elapsed; an interval is a whole number of ticks,
    rounded up. Real time ``k x (interval + tick) + tick`` spans at least that many
    ticks whatever the phase of its clock (docs/design.md, "Counting in the target's
    ticks"). With no interval at all, nothing need be waited.
    """
    if k <= 0:
        return 0.0
    return k * (interval + defaults.TICK) + defaults.TICK


def _without(ports: Sequence[int], found: Mapping[int, object]) -> array[int]:
    """``ports`` less those that answered, two bytes a port (fleets hold many of these)."""
    return array("H", [p for p in ports if p not in found])
