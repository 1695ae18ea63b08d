"""The round engine against a scripted target: quiet rule, retries, enumeration, loss.

Pure and fast: no sockets, no root; a fake clock makes every wait free.
"""

from __future__ import annotations

import itertools
import random
from ipaddress import ip_address

import pytest

from harden import defaults
from harden.errors import EnvironmentProblem
from harden.files import parse_manifest
from harden.outputs.jsondoc import verify_json
from harden.outputs.table import verify_text
from harden.policy.model import build_policy
from harden.types import Address
from harden.verify.classify import Reason
from harden.verify.engine.rounds import Options, _Run, refill, verify
from harden.verify.findings import Findings
from harden.verify.plan import Plan, Target, plan_probes
from harden.verify.report import Report, evaluate
from tests.scripted import BURST, FakeClock, Probe, ScriptedTarget, ScriptedTransport

MANIFEST = """
version: 1
services:
  - {name: ssh, port: 22, proto: tcp}
  - {name: web, port: 80, proto: tcp}
  - {name: dns, port: 53, proto: udp}
"""
PORTS = tuple(range(1, 201))
ADDRESS = ip_address("198.19.254.1")
SOURCE = ip_address("198.19.254.2")
EXTRA = ip_address("198.19.254.3")
TARGET = Target(ADDRESS, SOURCE)
INTERVAL = 1.0  # the target's icmp_ratelimit, equal to the engine's default assumption
WAIT = 0.1
# Short reply waits, so the ping and TCP phases end well inside one ICMP refill interval
# and the UDP phase's quiet wait is what decides when it may start.
FAST = Options(wait=WAIT)
UNDECLARED_UDP = [p for p in PORTS if p != 53]
UNDECLARED_TCP = [p for p in PORTS if p not in (22, 80)]


def make_plan() -> Plan:
    return plan_probes(build_policy(parse_manifest(MANIFEST)), [TARGET], PORTS)


def host(**kwargs: object) -> ScriptedTarget:
    """The declared services answer; everything else drops unless ``kwargs`` say otherwise."""
    target = ScriptedTarget(ADDRESS, tcp={22: "open", 80: "open"}, udp={53: "open"})
    for name, value in kwargs.items():
        setattr(target, name, value)
    return target


def run(
    target: ScriptedTarget, options: Options = FAST, clock: FakeClock | None = None
) -> tuple[Findings, Report, ScriptedTransport]:
    clock = clock or FakeClock()
    transport = ScriptedTransport(target, clock)
    findings = verify(make_plan(), [TARGET], transport, options, clock=clock)
    return findings, evaluate(make_plan(), findings), transport


def failed(report: Report) -> set[tuple[str, int | None, str]]:
    return {(e.proto, e.port, e.observed) for e in report.failures}


def udp_leaks(findings: Findings) -> list[int]:
    return sorted(p for p, r in findings.replies[(TARGET, "udp")].items() if r.is_icmp_error)


# -- the scripted target itself ---------------------------------------------------


def test_scripted_bucket_is_linux_token_bucket() -> None:
    target = host(default_udp="closed", default_tcp="closed")
    clock = FakeClock()
    transport = ScriptedTransport(target, clock)
    transport.send_udp(TARGET, SOURCE, list(range(100, 120)), None)
    assert [e.port for e in target.errors_to(SOURCE)] == list(range(100, 100 + BURST))
    clock.sleep(INTERVAL * 0.9)
    assert transport.replies(transport.send_udp(TARGET, SOURCE, [130, 131], None)) == {}
    clock.sleep(INTERVAL * 0.2)  # 1.1 intervals since the bucket emptied: one token
    found = transport.replies(transport.send_udp(TARGET, SOURCE, [140, 141], None))
    assert list(found) == [140] and found[140].reason is Reason.PORT_UNREACHABLE
    assert transport.last_icmp_error(TARGET, SOURCE) == clock.now()
    assert transport.last_icmp_error(TARGET, EXTRA) is None
    # RSTs are not rate-limited.
    rst = transport.replies(transport.send_tcp(TARGET, list(range(1000, 1100)), None))
    assert len(rst) == 100 and {r.reason for r in rst.values()} == {Reason.RST}


# -- 1. a firewalled host ----------------------------------------------------------


def test_firewalled_host_passes_and_every_undeclared_udp_port_is_probed() -> None:
    target = host()
    findings, report, transport = run(target)
    assert report.verdict == "pass", failed(report)
    rounds = 1 + FAST.retries
    # Every undeclared UDP port went out in every round and reached the target.
    assert sent_of(findings)["4/udp/silent"] == rounds * len(UNDECLARED_UDP)
    assert sent_of(findings)["4/udp/allowed"] == 1  # answered in round 1: not resent
    assert all(target.received[("udp", p)] == rounds for p in UNDECLARED_UDP)
    assert sent_of(findings)["4/tcp/silent"] == rounds * len(UNDECLARED_TCP)
    assert sent_of(findings)["4/tcp/allowed"] == 2
    assert findings.echo == {ADDRESS: True}
    udp = findings.replies[(TARGET, "udp")]
    assert list(udp) == [53] and udp[53].reason is Reason.UDP_REPLY
    assert {p: r.reason for p, r in findings.replies[(TARGET, "tcp")].items()} == {
        22: Reason.SYN_ACK,
        80: Reason.SYN_ACK,
    }
    assert not findings.unproven
    assert any(f"{rounds} sweep(s)" in n for n in findings.notes)
    # No UDP round began before one quiet refill interval since the capture started.
    assert transport.udp_sweeps()[0].start >= transport.started + refill(INTERVAL)
    assert target.icmp_errors == []


# -- 2. the quiet rule ---------------------------------------------------------------


def drained_unfirewalled() -> tuple[ScriptedTarget, FakeClock]:
    """No UDP firewall; a previous scan from our address emptied its ICMP budget."""
    target = host(default_udp="closed")
    clock = FakeClock()
    target.drain(SOURCE, clock.now())
    clock.sleep(0.01)  # verify starts just after
    return target, clock


def test_quiet_rule_drained_budget_on_an_unfirewalled_host_still_fails() -> None:
    target, clock = drained_unfirewalled()
    findings, report, transport = run(target, clock=clock)
    assert report.verdict == "fail"
    leaks = udp_leaks(findings)
    assert leaks and leaks[0] == 1  # the first closed port of the first sweep drew an error
    assert ("udp", 1, "closed") in failed(report)
    first = transport.udp_sweeps()[0]
    assert first.start >= transport.started + refill(INTERVAL)
    assert any(first.start <= e.time <= first.end and e.port == 1 for e in target.icmp_errors)


def test_without_the_quiet_wait_a_drained_budget_gives_a_false_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Removing the quiet wait makes the test above fail: it guards the rule."""

    def no_wait(
        self: _Run, target: Target, source: Address, interval: float, after: float, until: float
    ) -> bool:
        return False

    monkeypatch.setattr(_Run, "quiet", no_wait)
    target, clock = drained_unfirewalled()
    findings, report, transport = run(target, clock=clock)
    # Every closed port got the datagram (it reached the UDP layer) ...
    assert all(target.received[("udp", p)] >= 1 for p in UNDECLARED_UDP)
    # ... yet all the rounds ran while the budget was empty: nothing answered.
    assert transport.udp_sweeps()[-1].end < transport.started + INTERVAL
    assert udp_leaks(findings) == []
    assert report.verdict == "pass"  # false: this host has no UDP firewall at all


# -- 3. retries after a round that drew a (lost) error ------------------------------


def lose_udp_round_1(probe: Probe) -> bool:
    return probe.proto == "udp" and probe.round == 1


def one_leak(**kwargs: object) -> ScriptedTarget:
    """A firewalled host with one leaking UDP port whose first error is lost."""
    target = host(lose_reply=lose_udp_round_1, **kwargs)
    target.udp[150] = "closed"
    return target


def test_the_kth_sweep_begins_k_refill_intervals_after_the_start() -> None:
    target = one_leak()
    clock = FakeClock(send_cost=1e-4)  # rounds take time: start and end differ
    findings, report, transport = run(target, clock=clock)
    first, second = transport.udp_sweeps()[:2]
    # Round 1 drew one error, which was lost: the engine saw nothing ...
    errors = target.errors_to(SOURCE)
    assert errors[0].port == 150 and errors[0].lost
    assert first.start <= errors[0].time <= first.end
    # ... yet round 2 began only when the budget had earned a second token since we
    # began watching, so it held one even though round 1 spent one unseen.
    assert first.start >= transport.started + refill(INTERVAL, 1) - 1e-9
    assert second.start >= transport.started + refill(INTERVAL, 2) - 1e-9
    assert second.start < transport.started + refill(INTERVAL, 2) + 0.01  # and no later
    assert ("udp", 150, "closed") in failed(report)
    assert errors[1].port == 150 and not errors[1].lost
    assert (TARGET, "udp") not in findings.unproven  # the rest proven by later passes


def test_three_sweeps_draw_three_errors_whatever_the_budget_held() -> None:
    """The argument of "Sweeps counted from the start": k sweeps draw k errors.

    Every error this leaking host sends is lost, so the engine never learns of the leak
    (a false PASS, which loss of every error makes unavoidable); what matters is that it
    drew as many errors as it swept, so a PASS needs every one of them to be lost.
    """
    for leaks in (1, 2, 10):
        target = host(lose_reply=lambda probe: probe.proto == "udp")
        for port in range(150, 150 + leaks):
            target.udp[port] = "closed"
        _, _, transport = run(target, clock=FakeClock(send_cost=1e-4))
        sweeps = len(transport.udp_sweeps())
        assert sweeps == 1 + FAST.retries
        assert len(target.errors_to(SOURCE)) >= sweeps


def test_counting_the_wait_only_from_errors_seen_would_miss_a_leak(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bucket with one token, spent by round 1's lost error: only the round-end term saves us."""
    _, report, _ = run(one_leak(initial_tokens=1.0))
    assert report.verdict == "fail"

    quiet = _Run.quiet

    def since_capture_only(
        self: _Run, target: Target, source: Address, interval: float, after: float, until: float
    ) -> bool:
        return quiet(self, target, source, interval, self.transport.started, until)

    monkeypatch.setattr(_Run, "quiet", since_capture_only)
    _, report, _ = run(one_leak(initial_tokens=1.0))
    assert report.verdict == "pass"  # false: port 150 leaks


# -- 4. enumeration ------------------------------------------------------------------


def enumerate_run(seconds: float) -> tuple[Findings, ScriptedTarget, ScriptedTransport, float]:
    """A host with no UDP firewall; returns when the enumeration phase began, too."""
    target = host(default_udp="closed")
    findings, _, transport = run(target, Options(wait=WAIT, enumerate_seconds=seconds))
    return findings, target, transport, transport.udp_sweeps()[0].end + WAIT


@pytest.mark.parametrize("seconds", [0.0, 1.0, 3.0, 6.0])
def test_enumeration_lists_more_leaks_as_the_budget_refills(seconds: float) -> None:
    findings, target, transport, began = enumerate_run(seconds)
    leaks = udp_leaks(findings)
    # Round 1 spends the full burst; then each refill names one new port, in order.
    refills = len(transport.udp_sweeps()) - 1
    assert leaks == UNDECLARED_UDP[: BURST + refills]
    assert refills >= int(seconds / (refill(INTERVAL) + WAIT))
    # Every error that reached us is listed, and nothing else.
    assert leaks == sorted(e.port for e in target.errors_to(SOURCE) if e.port is not None)
    # No retry rounds once the budget is known to be spent: enumeration passes only,
    # each after a refill interval.
    gaps = [b.start - a.end for a, b in itertools.pairwise(transport.udp_sweeps())]
    assert all(g >= INTERVAL for g in gaps)
    # Bounded in time: the last pass begins at most one refill after the deadline.
    assert transport.clock.now() - began <= seconds + INTERVAL + min(WAIT, 0.2) + 1e-9
    assert findings.unproven == {(TARGET, "udp"): "unprobed"}
    assert any("more ports may answer" in n for n in findings.notes)
    assert evaluate(make_plan(), findings).verdict == "fail"


def test_longer_enumeration_lists_more_leaks() -> None:
    counts = [len(udp_leaks(enumerate_run(s)[0])) for s in (0.0, 3.0, 6.0)]
    assert counts[0] == BURST and counts[0] < counts[1] < counts[2]


def test_enumeration_sends_nothing_after_its_deadline() -> None:
    seconds = 3.0
    _, _, transport, began = enumerate_run(seconds)
    assert all(s.start <= began + seconds for s in transport.udp_sweeps())


# -- 5. loss -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_ten_percent_loss_on_a_firewalled_host_still_passes(seed: int) -> None:
    target = host(loss=0.1, rng=random.Random(seed))
    findings, report, _ = run(target)
    assert report.verdict == "pass", failed(report)
    tcp = findings.replies[(TARGET, "tcp")]
    assert {p: r.reason for p, r in tcp.items()} == {22: Reason.SYN_ACK, 80: Reason.SYN_ACK}
    assert findings.echo == {ADDRESS: True}
    # Loss did happen: some probes never reached the target.
    probes = sum(findings.sent.values())
    assert sum(target.received.values()) < probes


def test_declared_tcp_ports_get_extra_rounds_under_loss() -> None:
    # Lose the replies to port 22 for the first five rounds: only the declared-port
    # rounds (past 1 + retries) find it open.
    def early(probe: Probe) -> bool:
        return probe.proto == "tcp" and probe.port == 22 and probe.round <= 5

    target = host(lose_reply=early)
    findings, report, transport = run(target)
    assert report.verdict == "pass", failed(report)
    assert findings.replies[(TARGET, "tcp")][22].reason is Reason.SYN_ACK
    assert target.received[("tcp", 22)] == 6
    tcp = [s.ports for s in transport.sweeps if s.proto == "tcp"]
    assert [len(p) for p in tcp[: 1 + FAST.retries]] == [200, 199, 199]
    assert tcp[1 + FAST.retries :] == [(22,), (22,), (22,)]


def test_declared_tcp_port_whose_replies_are_all_lost_fails_as_unreachable() -> None:
    target = host(lose_reply=lambda p: p.proto == "tcp" and p.port == 22)
    _, report, _ = run(target)
    assert report.verdict == "fail"
    assert failed(report) == {("tcp", 22, "silent")}
    entry = next(e for e in report.failures if e.port == 22)
    assert "unreachable" in entry.detail
    o = FAST
    assert target.received[("tcp", 22)] == 1 + o.retries + o.declared_retries
    assert target.received[("tcp", 80)] == 1  # answered at once
    assert all(target.received[("tcp", p)] == 1 + o.retries for p in UNDECLARED_TCP)


# -- 6. a quiet period that never comes ------------------------------------------------


def test_a_target_that_never_goes_quiet_is_an_environment_problem() -> None:
    target = host()
    clock = FakeClock()
    target.chatter(SOURCE, clock.now(), every=INTERVAL / 2)
    transport = ScriptedTransport(target, clock)
    options = Options(wait=WAIT, max_quiet_wait=5.0)
    with pytest.raises(EnvironmentProblem, match="keeps sending ICMP errors") as caught:
        verify(make_plan(), [TARGET], transport, options, clock=clock)
    assert caught.value.exit_status == 4
    assert transport.udp_sweeps() == []  # no unsound UDP round was sent
    began = transport.sweeps[-1].end + WAIT  # the quiet wait followed the last TCP round
    waited = clock.now() - began
    assert options.max_quiet_wait - refill(INTERVAL) <= waited <= options.max_quiet_wait
    # Errors kept reaching our address: never a full interval without one.
    times = [e.time for e in target.errors_to(SOURCE) if e.time >= transport.started]
    assert all(b - a <= INTERVAL + 1e-9 for a, b in itertools.pairwise(times))


def test_the_quiet_wait_counts_from_the_last_error_seen() -> None:
    target = host()
    clock = FakeClock()
    stop = clock.now() + 4.0
    target.chatter(SOURCE, clock.now(), every=INTERVAL / 2, until=stop)
    _, report, transport = run(target, clock=clock)
    assert report.verdict == "pass", failed(report)
    last = max(e.time for e in target.errors_to(SOURCE))
    assert last <= stop
    first = transport.udp_sweeps()[0]
    assert first.start >= last + refill(INTERVAL) - 1e-9
    assert first.start - last < refill(INTERVAL) + 0.01


# -- 7. extra source addresses ---------------------------------------------------------


def test_a_retry_from_an_extra_source_needs_no_wait_for_the_first_budget() -> None:
    target = one_leak()
    clock = FakeClock(send_cost=1e-4)
    options = Options(wait=WAIT, extra_sources=(EXTRA,))
    findings, report, transport = run(target, options, clock)
    first, second = transport.udp_sweeps()[:2]
    assert (first.source, second.source) == (SOURCE, EXTRA)
    # Round 1's error to SOURCE was lost; round 2 comes from EXTRA right after the reply
    # wait (the target answered ping at once: the least wait), not one refill later.
    assert second.start - first.end == pytest.approx(defaults.MIN_WAIT)
    assert second.start < first.end + INTERVAL
    to_extra = target.errors_to(EXTRA)
    assert to_extra[0].port == 150 and not to_extra[0].lost
    assert second.start <= to_extra[0].time <= second.end
    assert ("udp", 150, "closed") in failed(report)
    # The one leak is named; later passes, each begun with a token, drew no other error,
    # so the other ports are proven silent rather than left unprobed.
    assert findings.unproven == {}
    assert any("drew no ICMP error in sweeps each begun" in n for n in findings.notes)


def test_extra_sources_rotate_and_shorten_a_clean_run() -> None:
    clock = FakeClock()
    alone, _, _ = run(host(), FAST, clock)
    six = ip_address("fdff:18::9")  # another family: not a source toward an IPv4 target
    options = Options(wait=WAIT, extra_sources=(six, EXTRA))
    findings, report, transport = run(host(), options)
    assert report.verdict == "pass"
    sweeps = transport.udp_sweeps()
    assert [s.source for s in sweeps] == [SOURCE, EXTRA, SOURCE]
    assert sweeps[1].start - sweeps[0].end == pytest.approx(defaults.MIN_WAIT)
    # SOURCE's second sweep: two refill intervals after the start.
    assert sweeps[2].start >= transport.started + refill(INTERVAL, 2) - 1e-9
    assert findings.seconds < alone.seconds
    assert any("from 2 source address(es)" in n for n in findings.notes)


# -- a fleet shares the waits -------------------------------------------------------------


def test_every_fleet_udp_round_starts_after_a_quiet_interval_to_its_source() -> None:
    other = Target(ip_address("198.19.254.11"), SOURCE)
    first = host(default_udp="closed")
    second = ScriptedTarget(other.address, default_udp="drop")
    clock = FakeClock()
    t0 = clock.now()
    # The second target stays busy until t0 + 2 s, so the fleet's round waits until ~3.1 s;
    # the first target sends our source a burst of errors at t0 + 2.5 s, after its own
    # quiet check passed (~1.1 s) and before the shared round is sent.
    second.chatter(SOURCE, t0, every=0.5, until=t0 + 2.0)
    first.chatter(SOURCE, t0 + 2.5, every=0.01, until=t0 + 2.56)
    transport = ScriptedTransport([first, second], clock)
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [TARGET, other], PORTS)
    verify(plan, [TARGET, other], transport, FAST, clock=clock)
    for sweep, target in (
        (s, first if s.target == ADDRESS else second) for s in transport.udp_sweeps()
    ):
        seen = [e.time for e in target.errors_to(sweep.source) if not e.lost]
        assert not [t for t in seen if sweep.start - refill(INTERVAL) < t < sweep.start], sweep


def test_after_an_expected_error_the_rest_is_still_proven_silent() -> None:
    """A declared UDP port with nothing listening spends the token on a port-unreachable.

    The main sweep then proves nothing about the other ports; the follow-up passes, each
    begun with a token, must: a host that also leaks elsewhere is caught, a clean one is
    proven (not left "unprobed").
    """
    clean = host(udp={53: "closed"})  # 53 is declared: a warning, not a leak
    findings, report, _ = run(clean)
    assert findings.unproven == {} and report.verdict == "pass"
    leaky = host(udp={53: "closed", 170: "closed"})
    findings, report, _ = run(leaky)
    assert ("udp", 170, "closed") in failed(report)


def test_a_silent_host_that_never_answered_anything_is_not_proven_alive() -> None:
    nobody = host(tcp={22: "drop", 80: "drop"}, udp={53: "drop"}, echo=False)
    findings, _, _ = run(nobody)
    assert TARGET.address not in findings.alive
    somebody = host()
    findings, _, _ = run(somebody)
    assert TARGET.address in findings.alive


def test_the_report_says_what_tcp_silence_proved() -> None:
    findings, _, _ = run(host())
    note = next(n for n in findings.notes if " tcp: " in n)
    assert note.endswith(
        "closed port(s) sent no RST and no SYN-ACK in 3 round(s) from fresh source ports"
    )
    assert f"tcp: {len(UNDECLARED_TCP)} closed port(s)" in note


@pytest.mark.parametrize("hz", [100, 250, 300, 1000])
@pytest.mark.parametrize("ratelimit_ms", [1000, 250, 333])
def test_refill_spans_k_intervals_of_the_targets_ticks_whatever_their_phase(
    hz: int, ratelimit_ms: int
) -> None:
    """The budget grows by whole ticks; an interval is msecs_to_jiffies, rounded up."""
    interval = ratelimit_ms / 1000
    per_token = -(-ratelimit_ms * hz // 1000)  # ticks a token costs (rounded up)
    for k in (1, 2, 3, 6):
        span = refill(interval, k)
        for phase in (0.0, 0.25, 0.5, 0.999, 0.9999):  # where in a tick we begin, in ticks
            begin = phase / hz
            ticks = int((begin + span) * hz) - int(begin * hz)  # ticks seen to elapse
            assert ticks >= k * per_token, (k, phase, span)
    assert refill(interval, 0) == 0.0


# -- the verdict rule: PASS only when every port is proven, premises stated ------------------


def test_a_pass_from_outside_states_the_icmp_premises_it_rests_on() -> None:
    _, report, _ = run(host())
    assert report.verdict == "pass"
    assert report.assumptions == [
        "the target's ICMP rate limit ≤ 1000 ms (net.ipv4.icmp_ratelimit)",
        "no other traffic spent the target's machine-wide ICMP budget during the run "
        "(net.ipv4.icmp_msgs_per_sec)",
    ]
    assert "PASS, assuming the target's ICMP rate limit ≤ 1000 ms" in verify_text(report)
    assert verify_json(report)["assumptions"] == report.assumptions
    # A rate limit read from the target (its witness) is no longer an assumption.
    options = Options(wait=WAIT, ratelimit_read=frozenset({4}))
    _, read, _ = run(host(), options)
    assert not any("icmp_ratelimit" in a for a in read.assumptions)


def test_a_rate_limit_too_slow_to_wait_for_leaves_udp_silence_unproven() -> None:
    """net.ipv4.icmp_ratelimit=100000: the quiet rule would wait 100 s a sweep. The sweeps
    go out anyway (they can still show leaks) but their silence proves nothing."""
    target = host(interval=100.0)
    clock = FakeClock()
    options = Options(wait=WAIT, ratelimit_ms={4: 100_000, 6: 100_000})
    findings, report, _ = run(target, options, clock)
    assert {k: str(v) for k, v in findings.unproven.items()} == {
        (TARGET, "udp"): "silent, ICMP rate limit of 100000 ms too slow to wait for"
    }
    assert report.verdict == "inconclusive" and report.exit_status == 5
    assert [(s.proto, s.count) for s in report.unproven] == [("udp", len(UNDECLARED_UDP))]
    assert clock.time - 1000.0 < 10  # no 100-second waits
    # A leak still shows: a fresh bucket answers the first sweep's first leaking port.
    leaky = host(interval=100.0, udp={53: "open", 150: "closed"})
    _, report, _ = run(leaky, options)
    assert report.verdict == "fail" and ("udp", 150, "closed") in failed(report)


def test_every_enumeration_pass_is_counted_for_the_witness() -> None:
    """The witness compares what arrived with what was sent: passes sent after a leak
    must be in ``sent`` too, or the target seems to count more than it was sent."""
    target = host(udp={53: "open", 150: "closed", 160: "closed"})
    findings, _, _ = run(target)
    sent = sum(n for key, n in findings.sent.items() if (key.family, key.proto) == (4, "udp"))
    assert sent == sum(n for (proto, _), n in target.received.items() if proto == "udp")


def sent_of(findings: Findings) -> dict[str, int]:
    """Probes sent, by their JSON key (``4/udp/silent``)."""
    return {str(key): n for key, n in findings.sent.items()}
