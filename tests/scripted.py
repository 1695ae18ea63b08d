"""A deterministic scripted target behind the Transport protocol, and a fake clock.

Drives harden.verify.engine.rounds without sockets or root. The target models what matters
to the engine's rules (docs/design.md, "Why silence proves what it proves"):

- per port: "open" (SYN-ACK / UDP reply), "closed" (RST to TCP, ICMP port-unreachable
  to UDP), "drop" (nothing) or "reject" (ICMP admin-prohibited);
- Linux's per-peer ICMP error rate limit (inet_peer_xrlim_allow): a token bucket per
  destination address, one token per ``interval`` seconds, burst 6; RSTs and
  SYN-ACKs are not limited;
- loss of probes and of replies (seeded random, or scripted per probe); a lost ICMP
  error still spent its token, since the target did send it.

Replies are computed at send time with zero latency: a probe sent at clock time t is
answered at t, from the bucket as it stands at t.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from harden.types import Address, Family, Proto
from harden.verify.classify import Reason, Reply
from harden.verify.engine.transport import OnSent, Round
from harden.verify.findings import Mode
from harden.verify.plan import Target

Behaviour = Literal["open", "closed", "drop", "reject"]
BURST = 6  # Linux XRLIM_BURST_FACTOR: the bucket holds at most six tokens


class FakeClock:
    """Time that passes only when someone sleeps (or sends, at ``send_cost`` per probe)."""

    def __init__(self, start: float = 1000.0, send_cost: float = 0.0) -> None:
        self.time = start
        self.send_cost = send_cost
        self.slept: list[float] = []  # every sleep the engine asked for, in order

    def now(self) -> float:
        """The current fake time."""
        return self.time

    def sleep(self, seconds: float) -> None:
        """Advance time by ``seconds`` (never backwards)."""
        self.slept.append(seconds)
        self.time += max(0.0, seconds)

    def sent_one(self) -> None:
        """Charge the cost of sending one probe."""
        self.time += self.send_cost


@dataclass(frozen=True)
class Probe:
    """One probe as the target saw it (for scripted loss decisions)."""

    proto: Proto
    port: int
    source: Address
    round: int  # 1-based count of this protocol's rounds sent to the target
    time: float


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error the target sent (rate-limited kind), and whether it got lost."""

    time: float
    source: Address  # the peer it was sent to
    port: int | None  # the probed port it quotes (None: not caused by our probes)
    lost: bool


@dataclass
class _Bucket:
    credit: float  # seconds of credit, as the kernel keeps it (tokens * interval)
    last: float


@dataclass
class _Chatter:
    """Unrelated ICMP errors the target sends a peer every ``every`` seconds from ``next``."""

    next: float
    every: float
    until: float


@dataclass
class ScriptedTarget:
    """One host: what each port does, its ICMP budget per peer, and what gets lost."""

    address: Address
    tcp: dict[int, Behaviour] = field(default_factory=dict)
    udp: dict[int, Behaviour] = field(default_factory=dict)
    default_tcp: Behaviour = "drop"
    default_udp: Behaviour = "drop"
    echo: bool = True
    interval: float = 1.0  # the target's real icmp_ratelimit, in seconds
    initial_tokens: float = BURST  # a peer's bucket the first time it is used
    loss: float = 0.0  # probability a probe is lost, and again that its reply is
    rng: random.Random | None = None  # needed when loss > 0
    # Scripted loss: return True to lose the reply to this probe (the probe arrives).
    lose_reply: Callable[[Probe], bool] | None = None
    # What happened, for assertions.
    icmp_errors: list[IcmpError] = field(default_factory=list)
    received: Counter[tuple[Proto, int]] = field(default_factory=Counter)
    _buckets: dict[Address, _Bucket] = field(default_factory=dict)
    _chatter: dict[Address, _Chatter] = field(default_factory=dict)
    _rounds: Counter[Proto] = field(default_factory=Counter)

    def behaviour(self, proto: Proto, port: int) -> Behaviour:
        """What ``port`` does for ``proto``."""
        if proto == "tcp":
            return self.tcp.get(port, self.default_tcp)
        return self.udp.get(port, self.default_udp)

    # -- the ICMP rate limit ---------------------------------------------------

    def tokens(self, source: Address, at: float) -> float:
        """How many tokens ``source``'s bucket holds at ``at`` (for assertions)."""
        self.catch_up(source, at)
        bucket = self._buckets.get(source)
        if bucket is None:
            return self.initial_tokens
        credit = min(bucket.credit + (at - bucket.last), BURST * self.interval)
        return credit / self.interval

    def drain(self, source: Address, at: float) -> None:
        """Empty ``source``'s bucket at ``at``: what a previous scan from it leaves behind.

        The errors that emptied it are recorded as sent at ``at`` (a transport that
        started watching later does not see them).
        """
        self.catch_up(source, at)
        bucket = self._bucket(source, at)
        while self._take(bucket, at):
            self.icmp_errors.append(IcmpError(at, source, None, lost=False))
        bucket.credit, bucket.last = 0.0, at

    def chatter(
        self, source: Address, start: float, every: float, until: float = float("inf")
    ) -> None:
        """From ``start`` to ``until``, send ``source`` an unrelated ICMP error every ``every`` s.

        Models a target kept busy answering other traffic to that address (a third
        party spoofing it, another scan from it): each attempt spends a token if one
        is there and is sent, or is suppressed by the rate limit.
        """
        self._chatter[source] = _Chatter(start, every, until)

    def _bucket(self, source: Address, at: float) -> _Bucket:
        if source not in self._buckets:
            self._buckets[source] = _Bucket(self.initial_tokens * self.interval, at)
        return self._buckets[source]

    def _take(self, bucket: _Bucket, at: float) -> bool:
        # inet_peer_xrlim_allow(): credit grows with elapsed time, capped at the burst;
        # sending costs one interval of credit.
        credit = min(bucket.credit + (at - bucket.last), BURST * self.interval)
        bucket.last = at
        allowed = credit >= self.interval - 1e-9
        if allowed:
            credit -= self.interval
        bucket.credit = credit
        return allowed

    def catch_up(self, source: Address, until: float) -> None:
        """Play the chatter toward ``source`` up to ``until`` (keeps events in time order)."""
        chatter = self._chatter.get(source)
        while chatter is not None and chatter.next <= min(until, chatter.until):
            if self._take(self._bucket(source, chatter.next), chatter.next):
                self.icmp_errors.append(IcmpError(chatter.next, source, None, lost=False))
            chatter.next += chatter.every

    def _icmp(self, source: Address, port: int, at: float, lost: bool) -> bool:
        """Send an ICMP error if the budget allows; True if it was sent (and not lost)."""
        self.catch_up(source, at)
        if not self._take(self._bucket(source, at), at):
            return False
        self.icmp_errors.append(IcmpError(at, source, port, lost))
        return not lost

    # -- probes ------------------------------------------------------------------

    def start_round(self, proto: Proto) -> int:
        """Count a new round of ``proto`` probes; return its 1-based number."""
        self._rounds[proto] += 1
        return self._rounds[proto]

    def roll_loss(self) -> bool:
        """Draw once from the loss probability: True means lost."""
        if self.loss <= 0.0:
            return False
        if self.rng is None:
            raise ValueError("ScriptedTarget: loss > 0 needs a seeded rng")
        return self.rng.random() < self.loss

    def probe(self, probe: Probe, sport: int, seq: int | None) -> Reply | None:
        """The reply that reaches the prober for one probe, or None."""
        if self.roll_loss():
            return None  # the probe never arrived: nothing answered, no token spent
        self.received[(probe.proto, probe.port)] += 1
        lost = self.roll_loss() or (self.lose_reply is not None and self.lose_reply(probe))
        family: Family = 4 if self.address.version == 4 else 6
        ack = None if seq is None else (seq + 1) & 0xFFFFFFFF
        kind = self.behaviour(probe.proto, probe.port)
        if kind == "drop":
            return None
        if kind == "open":
            reason = Reason.SYN_ACK if probe.proto == "tcp" else Reason.UDP_REPLY
            reply = Reply(family, probe.proto, probe.port, sport, reason, ack=ack)
            return None if lost else reply
        if kind == "closed" and probe.proto == "tcp":
            reply = Reply(family, "tcp", probe.port, sport, Reason.RST, ack=ack)
            return None if lost else reply  # RST: not rate-limited
        if kind == "closed":
            reason, code = Reason.PORT_UNREACHABLE, 3 if family == 4 else 4
        else:
            reason, code = Reason.PROHIBITED, 13 if family == 4 else 1
        if not self._icmp(probe.source, probe.port, probe.time, lost):
            return None
        return Reply(family, probe.proto, probe.port, sport, reason, code)

    def errors_to(self, source: Address) -> list[IcmpError]:
        """Every ICMP error sent to ``source``, lost or not."""
        return [e for e in self.icmp_errors if e.source == source]


@dataclass(frozen=True)
class Sweep:
    """A round the transport sent, with when it began and ended (clock time)."""

    proto: Proto
    target: Address
    source: Address
    ports: tuple[int, ...]
    start: float
    end: float


class ScriptedTransport:
    """The Transport protocol over ScriptedTargets and a FakeClock (raw mode, non-blocking)."""

    mode: Mode = "raw"
    can_ping: bool = True
    blocking: bool = False
    parallel: bool = False
    limitations: tuple[str, ...] = ()

    def __init__(
        self, targets: ScriptedTarget | Iterable[ScriptedTarget], clock: FakeClock
    ) -> None:
        hosts = [targets] if isinstance(targets, ScriptedTarget) else list(targets)
        self.targets = {t.address: t for t in hosts}
        self.clock = clock
        self.started = clock.now()
        self.sweeps: list[Sweep] = []
        self.closed = False
        self._sport = 40000
        self._echoes: list[tuple[Target, int, float]] = []
        self.rtt = 0.0  # echo replies arrive this long after the request
        self._heard: dict[Address, str] = {}

    def _host(self, target: Target) -> ScriptedTarget:
        return self.targets[target.address]

    def _fresh_sport(self) -> int:
        self._sport += 1
        return self._sport

    def ping(self, targets: Sequence[Target], ident: int) -> None:
        """One echo request each; answered at once if the host answers ping."""
        for target in targets:
            host = self._host(target)
            if host.echo and not host.roll_loss() and not host.roll_loss():
                self._echoes.append((target, ident, self.clock.now()))

    def echoed(self, since: float, ident: int) -> dict[Address, float]:
        """Address -> when its echo reply with ``ident`` arrived (since ``since``)."""
        out: dict[Address, float] = {}
        for t, i, at in self._echoes:
            if i == ident and at >= since and at + self.rtt <= self.clock.now():
                out.setdefault(t.address, at + self.rtt)
        return out

    def _send(
        self,
        target: Target,
        proto: Proto,
        source: Address,
        ports: Sequence[int],
        progress: OnSent | None,
    ) -> Round:
        host = self._host(target)
        number = host.start_round(proto)
        start = self.clock.now()
        sport = self._fresh_sport()
        seq = 0x1000 * number if proto == "tcp" else None
        found: dict[int, Reply] = {}
        count = 0
        for port in ports:
            self.clock.sent_one()
            probe = Probe(proto, port, source, number, self.clock.now())
            reply = host.probe(probe, sport, seq)
            if reply is not None:
                found.setdefault(port, reply)
            count += 1
        if progress is not None:
            progress(count)
        self.sweeps.append(
            Sweep(proto, target.address, source, tuple(ports), start, self.clock.now())
        )
        return Round(target, proto, source, ports, start, sport, seq, count, found)

    def send_tcp(self, target: Target, ports: Sequence[int], progress: OnSent | None) -> Round:
        """One SYN per port from the target's source address."""
        return self._send(target, "tcp", target.source, ports, progress)

    def send_udp(
        self, target: Target, source: Address, ports: Sequence[int], progress: OnSent | None
    ) -> Round:
        """One datagram per port from ``source``."""
        return self._send(target, "udp", source, ports, progress)

    def replies(self, sent: Round) -> dict[int, Reply]:
        """The replies that reached us (lost ones were never stored)."""
        for port, reply in sent.found.items():
            self._heard.setdefault(sent.target.address, f"{sent.proto}/{port} {reply.detail}")
        return dict(sent.found)

    def heard_from(self, target: Target) -> str | None:
        """The first reply or echo reply that reached us from ``target``."""
        if target.address not in self._heard and any(t == target for t, _, _ in self._echoes):
            return "echo reply"
        return self._heard.get(target.address)

    def last_icmp_error(self, target: Target, source: Address) -> float | None:
        """The newest ICMP error to ``source`` that reached us since we began watching."""
        host = self._host(target)
        host.catch_up(source, self.clock.now())
        seen = [
            e.time
            for e in host.icmp_errors
            if e.source == source and not e.lost and e.time >= self.started
        ]
        return max(seen, default=None)

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True

    def udp_sweeps(self) -> list[Sweep]:
        """The UDP rounds sent, in order."""
        return [s for s in self.sweeps if s.proto == "udp"]
