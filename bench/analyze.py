"""harden analyze on large rulesets, collection included, against ``nft -j list ruleset``.

    .venv/bin/python -m bench.analyze [--runs 3] [--sizes 2000,25000] [--timeout 120]

For each size N, a fresh namespace gets a realistic ruleset of N rules in all: a real
harden apply of a manifest whose services declare many source networks, plus a
``table inet bench`` filled up to N with rules of varied shape (ports from a pool of 200,
--ports; networks from a pool of 64 IPv4 /24s and 32 IPv6 /64s, --nets; jumps to a few
regular chains). The engine cuts each dimension at every constant, so distinct ports x
networks size the cells. In the same run and namespace, the median over --runs of: the
floor, ``nft -j list ruleset`` alone (its time, and its own peak RSS: libnftables' listing
is also the peak of analyze, which lists through the same library); ``harden analyze
--format json``; the same with ``--manifest``. Also the rows and unknown rows analyze
reports, and the cells the engine announces (a separate, untimed count). The issue's goals
on a 2-core machine: <= 1 s at 2,000 rules; <= 5 s and <= 200 MB peak RSS at 25,000. A
run over --timeout is cut and shown as "> timeout". Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.common import measure
from harden.lab.netns import Namespace

HARDEN = [sys.executable, "-m", "harden.cli"]
# The pools every rule draws its constants from: the matrix cuts each dimension at every
# constant, so distinct ports x distinct networks is what sizes the cell count.
PORTS: list[int] = []
NETS4: list[str] = []
NETS6: list[str] = []
CHAINS = 4
GOALS: dict[int, tuple[float, float | None]] = {2000: (1.0, None), 25000: (5.0, 200.0)}
# The cells of each (hook, family, protocol), as the engine announces them before deciding
# them; its loop over the cells is emptied, so this counts without deciding (untimed).
CELLS = """
import harden.analysis.matrix
from harden.analysis.collect import analyze
harden.analysis.matrix.product = lambda *dimensions: iter(())
analyze(("input", "output"), None, None, lambda what, n: print(what, n, flush=True))
"""


def pools(ports: int, nets: int) -> None:
    """Fill the pools: ``ports`` distinct ports, ``nets`` IPv4 /24s and half as many /64s."""
    common = [22, 25, 53, 80, 123, 443, 993, 3306, 5432, 6379]
    PORTS[:] = (common + [8000 + 37 * i for i in range(max(ports - len(common), 0))])[:ports]
    NETS4[:] = [f"10.{i // 16}.{(i % 16) * 16}.0/24" for i in range(nets)]
    NETS6[:] = [f"fd00:{i:x}::/64" for i in range(max(nets // 2, 1))]


def manifest() -> str:
    """A harden manifest whose services declare many source networks (from the pools)."""
    return yaml.safe_dump(
        {
            "version": 1,
            "host": "bench",
            "policy": {"closed": "drop", "icmp": {"echo": True}, "ipv6": True},
            "services": [
                {
                    "name": "ssh",
                    "port": 22,
                    "proto": "tcp",
                    "sources": NETS4[: len(NETS4) // 4 + 1] + NETS6[: len(NETS6) // 4 + 1],
                },
                {"name": "web", "ports": [80, 443], "proto": "tcp"},
                {"name": "dns", "port": 53, "proto": ["tcp", "udp"]},
                {
                    "name": "partner-api",
                    "ports": [str(p) for p in PORTS[10:50]],
                    "proto": "tcp",
                    "sources": NETS4 + NETS6,
                },
                {
                    "name": "databases",
                    "ports": [3306, 5432, 6379],
                    "proto": "tcp",
                    "sources": NETS4[len(NETS4) // 2 :] + NETS6[len(NETS6) // 2 :],
                },
            ],
        },
        sort_keys=False,
    )


def _shape(i: int) -> str:
    """The i-th rule of the bench table's input chain (the shapes in turn)."""
    port, other = PORTS[i % len(PORTS)], PORTS[(i * 7 + 3) % len(PORTS)]
    net4, net6 = NETS4[(i // 5) % len(NETS4)], NETS6[(i // 5) % len(NETS6)]
    if i % 50 == 49:
        return f"tcp dport {port} jump c{i % CHAINS}"
    return [
        f"tcp dport {port} accept",
        f"ip saddr {net4} tcp dport {port} accept",
        f"udp dport {{ {port}, {other} }} accept" if port != other else f"udp dport {port} accept",
        f"ip6 saddr {net6} tcp dport {port} drop",
        f"ip saddr {net4} udp dport {port} drop",
    ][i % 5]


def mixed(n: int) -> str:
    """``table inet bench``: an input base chain (policy drop) and regular chains, n rules."""
    in_chains = n // 10  # a tenth of the rules in the regular chains jumped to
    head = ["ct state established,related accept", 'iif "lo" accept']
    body = [_shape(i) for i in range(max(n - in_chains - len(head), 0))]
    chains = [[] for _ in range(CHAINS)]  # type: list[list[str]]
    for i in range(in_chains):
        port, net4 = PORTS[(i * 3) % len(PORTS)], NETS4[(i * 11) % len(NETS4)]
        chains[i % CHAINS].append(
            f"ip saddr {net4} tcp dport {port} accept" if i % 3 else f"tcp dport {port} return"
        )
    out = ["table inet bench {"]
    for k, rules in enumerate(chains):
        out += [f"\tchain c{k} {{", *(f"\t\t{r}" for r in rules), "\t}"]
    out += ["\tchain input {", "\t\ttype filter hook input priority 10; policy drop;"]
    out += [f"\t\t{r}" for r in head + body]
    out += ["\t}", "}", ""]
    return "\n".join(out)


def rule_count(ns: Namespace) -> int:
    listing = json.loads(ns.run(["nft", "-j", "list", "ruleset"], timeout=300).stdout)
    return sum(1 for item in listing["nftables"] if "rule" in item)


@dataclass
class Timed:
    """The medians of one command's runs (None: a run went over the timeout)."""

    seconds: float | None
    peak_mb: float
    stdout: str


def timed(ns: Namespace, cmd: list[str], runs: int, timeout: float) -> Timed:
    """Median wall seconds and peak RSS over ``runs``; stop at the first run cut by timeout."""
    seconds, peaks, out = [], [], ""
    for _ in range(runs):
        wall, peak, out = measure(ns.name, ["timeout", str(timeout), *cmd])
        peaks.append(peak)
        if wall >= timeout:
            return Timed(None, max(peaks), "")
        seconds.append(wall)
    return Timed(statistics.median(seconds), statistics.median(peaks), out)


def cells(ns: Namespace, timeout: float) -> str:
    """Total cells the matrix engine decides, from the lines it announces; partial if cut."""
    cmd = ["ip", "netns", "exec", ns.name, "timeout", str(timeout), sys.executable, "-c", CELLS]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, cwd="/")
        text, cut = out.stdout, out.returncode == 124
    except subprocess.TimeoutExpired as e:
        text, cut = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else "", True
    lines = [line.rsplit(" ", 1) for line in text.splitlines() if line.strip()]
    print("  cells: " + ", ".join(f"{what} {int(n):,}" for what, n in lines), flush=True)
    total = sum(int(n) for _, n in lines)
    return f">= {total:,}" if cut else f"{total:,}"


def rows(t: Timed) -> tuple[str, str]:
    """Rows shown, and rows whose verdict is unknown (plus whole-ruleset reasons)."""
    if t.seconds is None:
        return "-", "-"
    data = json.loads(t.stdout)
    unknown = sum(1 for r in data["rows"] if r["verdict"] == "unknown") + len(data["unknown"])
    return str(len(data["rows"])), str(unknown)


def goal(n: int, t: Timed) -> tuple[str, str]:
    """The issue's goal for this size and whether the measured figures meet it."""
    if n not in GOALS:
        return "-", "-"
    secs, mb = GOALS[n]
    text = f"<={secs:g}s" + (f",<={mb:g}MB" if mb is not None else "")
    met = t.seconds is not None and t.seconds <= secs and (mb is None or t.peak_mb <= mb)
    return text, "yes" if met else "no"


def main() -> None:
    """Build each size's ruleset in a throwaway namespace, time, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="2000,25000")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--ports", type=int, default=200, help="distinct ports in the pool")
    parser.add_argument("--nets", type=int, default=64, help="IPv4 /24s (and half as many /64s)")
    args = parser.parse_args()
    pools(args.ports, args.nets)
    print(
        f"{os.cpu_count()} CPUs, medians over {args.runs} run(s), timeout {args.timeout:g} s, "
        f"pools: {len(PORTS)} ports, {len(NETS4)} IPv4 and {len(NETS6)} IPv6 networks"
    )
    table = []
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp, Namespace("ba") as ns:
            path = Path(tmp) / "m.yaml"
            path.write_text(manifest())
            ns.run(
                [
                    *HARDEN,
                    "apply",
                    str(path),
                    "--no-persist",
                    "--root",
                    str(Path(tmp) / "root"),  # never the machine's own boot files
                    "--state-dir",
                    str(Path(tmp) / "st"),
                ],
                timeout=120,
            )
            nft = Path(tmp) / "bench.nft"
            nft.write_text(mixed(n - rule_count(ns)))
            ns.run(["nft", "-f", str(nft)], timeout=600)
            total = rule_count(ns)
            print(f"size {n}: {total} rules loaded", flush=True)
            count = cells(ns, args.timeout)
            floor = timed(ns, ["nft", "-j", "list", "ruleset"], args.runs, args.timeout)
            plain = timed(ns, [*HARDEN, "analyze", "--format", "json"], args.runs, args.timeout)
            against = timed(
                ns,
                [*HARDEN, "analyze", "--manifest", str(path), "--format", "json"],
                args.runs,
                args.timeout,
            )
            for label, t in (("analyze", plain), ("analyze --manifest", against)):
                table.append((total, label, floor, t, count, *rows(t), *goal(n, t)))
    print(
        f"{'size':>6} {'command':<19} {'floor(nft -j) s':>15} {'analyze s':>10} {'ratio':>7} "
        f"{'peak MB':>8} {'floor MB':>8} {'cells':>12} {'rows':>5} {'unknown':>7} "
        f"{'goal':>15} {'met':>4}"
    )
    for total, label, floor, t, count, nrows, unknown, aim, met in table:
        assert floor.seconds is not None
        secs = (
            f"{t.seconds:10.2f}"
            if t.seconds is not None
            else f"{'> ' + format(args.timeout, 'g'):>10}"
        )
        ratio = f"{t.seconds / floor.seconds:6.0f}x" if t.seconds is not None else f"{'-':>7}"
        print(
            f"{total:6d} {label:<19} {floor.seconds:15.3f} {secs} {ratio} {t.peak_mb:8.0f} "
            f"{floor.peak_mb:8.0f} {count:>12} {nrows:>5} {unknown:>7} {aim:>15} {met:>4}"
        )


if __name__ == "__main__":
    main()
