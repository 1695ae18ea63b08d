"""``harden diff OLD NEW`` on large source lists: the exposure arithmetic, and the command.

    .venv/bin/python -m bench.diff [--sizes 2000,10000,100000] [--runs 3]

For N sources, OLD allows tcp/22 from N separate /32s and NEW from N others, half of them
OLD's (so the diff both opens and closes N/2 networks; none merge into a larger one).
Printed for each N, medians of --runs: the exposure arithmetic alone
(``exposure_diff`` on the two policies, what the goals are about), loading and
validating both manifests, and the whole ``harden diff`` command as a user runs it. At
2,000 sources the same arithmetic is also timed in its former, quadratic form (each
network of one list taken out of each of the other in turn, as ipaddress's
``address_exclude`` does), side by side. The goals (issue 36): 10,000 against 10,000 in
<= 1 s, 100,000 in <= 5 s. Pure Python: no root, no namespace.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network, IPv6Network, collapse_addresses
from pathlib import Path
from typing import Any

import harden.policy.exposure as exposure
from harden.files import load_manifest
from harden.policy.model import Policy, build_policy

GOALS = {10000: 1.0, 100000: 5.0}
QUADRATIC_AT = 2000


def manifest(n: int, offset: int) -> str:
    """tcp/22 from ``n`` /32s, every third address of 10.0.0.0/8 from ``offset`` on."""
    lines = ["version: 1", "services:", "  - {name: ssh, port: 22, proto: tcp, sources: ["]
    for i in range(n):
        a = (i + offset) * 3
        lines.append(f"      10.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/32,")
    lines.append("    ]}")
    return "\n".join(lines) + "\n"


def reference_collapse(nets: Iterable[Any]) -> tuple[Any, ...]:
    """ipaddress's own collapse_addresses, per family, IPv4 first."""
    nets = list(nets)
    four = collapse_addresses(n for n in nets if isinstance(n, IPv4Network))
    six = collapse_addresses(n for n in nets if isinstance(n, IPv6Network))
    return (*four, *six)


def quadratic_minus(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """The former ``minus``: each network of ``b`` taken out of each piece of ``a``.

    Also the oracle tests/test_exposure.py holds the interval arithmetic to.
    """
    out: list[Any] = []
    for net in a:
        pieces = [net]
        for cut in b:
            nxt = []
            for piece in pieces:
                if piece.version != cut.version or not piece.overlaps(cut):
                    nxt.append(piece)
                elif not piece.subnet_of(cut):
                    nxt += piece.address_exclude(cut)
            pieces = nxt
        out += pieces
    return reference_collapse(out)


def median(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(n: int, runs: int, folder: Path) -> dict[str, float]:
    old, new = folder / f"old{n}.yaml", folder / f"new{n}.yaml"
    old.write_text(manifest(n, 0))
    new.write_text(manifest(n, n // 2))
    policies: list[Policy] = []

    def load() -> None:
        policies[:] = [build_policy(load_manifest(old)), build_policy(load_manifest(new))]

    found = {"load": median(runs, load)}
    a, b = policies
    found["arithmetic"] = median(runs, lambda: exposure.exposure_diff(a, b, "old", "new"))
    if n == QUADRATIC_AT:
        fast = exposure.minus  # type: ignore[attr-defined]
        exposure.minus = quadratic_minus  # type: ignore[attr-defined]
        try:
            found["quadratic"] = median(1, lambda: exposure.exposure_diff(a, b, "old", "new"))
        finally:
            exposure.minus = fast  # type: ignore[attr-defined]
    command = [sys.executable, "-m", "harden.cli", "diff", str(old), str(new)]
    found["command"] = median(
        runs, lambda: subprocess.run(command, capture_output=True, check=False)
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2000,10000,100000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"medians over {args.runs} run(s); quadratic form: 1 run, at {QUADRATIC_AT} only")
    print(
        f"{'sources':>8} {'arithmetic s':>12} {'quadratic s':>11} {'load s':>7} "
        f"{'command s':>9} {'goal':>7} {'met':>4}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            f = measure(n, args.runs, Path(tmp))
            goal = GOALS.get(n)
            quad = f"{f['quadratic']:11.2f}" if "quadratic" in f else f"{'-':>11}"
            print(
                f"{n:8d} {f['arithmetic']:12.2f} {quad} {f['load']:7.2f} {f['command']:9.2f} "
                f"{'<=' + format(goal, 'g') + 's' if goal else '-':>7} "
                f"{('yes' if f['arithmetic'] <= goal else 'no') if goal else '-':>4}",
                flush=True,
            )


if __name__ == "__main__":
    main()
