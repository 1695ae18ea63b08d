"""The verify shell: resolve targets, plan, probe, evaluate (the CLI and the lab call this)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address

from harden.core.plan import Target, merge_plans, parse_port_selection, plan_probes
from harden.core.policy import Policy
from harden.core.report import Report, evaluate
from harden.verify.engine import Options, Progress, resolve_targets, verify, verify_connect
from harden.verify.raw import Route, raw_available


def run_verify(
    hosts: list[tuple[Policy, list[IPv4Address | IPv6Address]]],
    *,
    ports: str = "all",
    wait: float = 0.4,
    retries: int = 2,
    ratelimit_ms: dict[int, int] | None = None,
    extra_sources: tuple[IPv4Address | IPv6Address, ...] = (),
    progress: bool = False,
) -> Report:
    """Probe each host's addresses against its policy, all at once; one evaluated report."""
    selection = parse_port_selection(ports)
    routes: dict[Target, Route] = {}
    plans = []
    for policy, addresses in hosts:
        resolved = resolve_targets(addresses)
        routes.update(resolved)
        plans.append(plan_probes(policy, [t for t, _ in resolved], selection))
    plan = merge_plans(plans)
    options = Options(
        wait=wait,
        retries=retries,
        ratelimit_ms=ratelimit_ms or {4: 1000, 6: 1000},
        extra_sources=extra_sources,
    )
    with _progress_bar(progress) as callback:
        if raw_available():
            findings = verify(plan, routes, options, callback)
        else:
            findings = verify_connect(plan, list(routes), options, callback)
    return evaluate(plan, findings)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress]:
    if not enabled:
        yield lambda phase, done, total: None
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
