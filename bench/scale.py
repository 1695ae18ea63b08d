"""Large allowlists: harden's set-based ruleset vs one rule per entry (the ufw/iptables style).

    .venv/bin/python -m bench.scale [--sizes 10,1000,10000] [--runs 3] [--allowlists-only]

For N source networks (and up to 1,000 port declarations) this times, in a fresh
namespace: harden's whole apply (parse, render, check, compare, snapshot, load) and
the load of the same allowlist expanded to one nft rule per source; then the
per-packet cost through each ruleset: the mean time of a TCP connect from the
source at the end of the list (every linear rule before it is walked). Then large
allowlists (100,000 IPv4 /32; 50,000 /32 plus 50,000 IPv6 /64): harden's whole apply
against ``nft -f`` of the very ruleset it renders, timed alternately in the same run,
with each one's peak memory. Needs root.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import yaml

from harden.lab.netns import Namespace, connect

CONNECTS = 400
CLIENT = """
import socket, sys, time
n = int(sys.argv[2]); t = time.perf_counter()
for _ in range(n):
    s = socket.create_connection((sys.argv[1], 443)); s.close()
print((time.perf_counter() - t) / n * 1e6)
"""
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 443)); s.listen(512); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""


def sources(n: int) -> list[str]:
    """N separate /32s (every other address, so nothing collapses), the client's last."""
    base = ipaddress.IPv4Address("198.18.0.0")
    return [str(base + 2 * i + 2) for i in range(n)]


def manifest(n: int) -> str:
    ports = [443] + [f"{20000 + 20 * i}-{20009 + 20 * i}" for i in range(min(n, 1000) - 1)]
    return yaml.safe_dump(
        {
            "version": 1,
            "services": [
                {"name": "partners", "proto": "tcp", "ports": ports, "sources": sources(n)}
            ],
        }
    )


def linear(n: int) -> str:
    """The same allowlist, one rule per source (the ports stay one shared named set)."""
    ports = ", ".join(
        ["443"] + [f"{20000 + 20 * i}-{20009 + 20 * i}" for i in range(min(n, 1000) - 1)]
    )
    rules = "\n".join(f"\t\tip saddr {s} tcp dport @ports accept" for s in sources(n))
    return (
        "table inet linear {\n\tset ports {\n\t\ttype inet_service; flags interval; "
        f"elements = {{ {ports} }}\n\t}}\n\tchain input {{\n\t\ttype filter hook input "
        "priority 0; policy drop;\n\t\tct state established,related accept\n"
        f"{rules}\n\t}}\n}}\n"
    )


def connect_cost(server: Namespace, client: Namespace) -> float:
    proc = client.run([sys.executable, "-c", CLIENT, "198.19.0.1", str(CONNECTS)], timeout=300)
    return float(proc.stdout)


def mixed(n: int) -> list[str]:
    """N/2 separate IPv4 /32s and N/2 separate IPv6 /64s (every other one: none collapse)."""
    base6 = ipaddress.IPv6Network("fd00:100::/64")
    v6 = [
        str(ipaddress.IPv6Network((int(base6.network_address) + (2 * i << 64), 64)))
        for i in range(n // 2)
    ]
    return sources(n - n // 2) + v6


# Measures a child's peak memory (and time): GNU time is not on every Debian.
PEAK = """
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
took = time.perf_counter() - start
if proc.returncode:
    sys.exit(proc.stderr)
print(took, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def peak(ns: Namespace, argv: list[str]) -> tuple[float, float]:
    """Seconds and peak MB of ``argv`` run in ``ns``."""
    out = ns.run([sys.executable, "-c", PEAK, *argv], timeout=600).stdout.split()
    return float(out[0]), float(out[1])


def allowlist(label: str, nets: list[str], runs: int) -> None:
    """harden apply of one service from ``nets`` against nft -f of what it renders."""
    text = yaml.safe_dump(
        {"version": 1, "services": [{"name": "api", "proto": "tcp", "port": 443, "sources": nets}]}
    )
    with tempfile.TemporaryDirectory() as tmp, Namespace("al") as ns:
        path, rendered = Path(tmp) / "m.yaml", Path(tmp) / "harden.nft"
        path.write_text(text)
        harden = [sys.executable, "-m", "harden.cli"]
        rendered.write_text(ns.run([*harden, "render", str(path)], timeout=600).stdout)
        applies, loads = [], []
        for run in range(runs):  # alternating, so that a busy moment hits both alike
            ns.run(["nft", "delete", "table", "inet", "harden"], check=False)
            state = ["--state-dir", str(Path(tmp) / f"st{run}"), "--no-persist"]
            applies.append(peak(ns, [*harden, "apply", str(path), *state, "--root", tmp]))
            ns.run(["nft", "delete", "table", "inet", "harden"])
            loads.append(peak(ns, ["nft", "-f", str(rendered)]))
    apply_s, apply_mb = median(a for a, _ in applies), max(m for _, m in applies)
    load_s, load_mb = median(a for a, _ in loads), max(m for _, m in loads)
    print(
        f"{label:>26} {apply_s:9.2f} {load_s:9.2f} {apply_s / load_s:6.1f}x "
        f"{apply_mb:9.0f} {load_mb:8.0f}"
    )


def allowlists(runs: int) -> None:
    """The issue-35 goals: apply within 4x nft -f (goal 3x), 150 MB at most."""
    print(f"\nlarge allowlists, medians of {runs} alternating runs (apply: the whole CLI)")
    print(
        f"{'sources':>26} {'apply s':>9} {'nft -f s':>9} {'ratio':>7} {'apply MB':>9} {'nft MB':>8}"
    )
    allowlist("100,000 IPv4 /32", sources(100_000), runs)
    allowlist("50,000 /32 + 50,000 /64", mixed(100_000), runs)


def main() -> None:
    """Measure each size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--runs", type=int, default=3, help="runs of each allowlist")
    parser.add_argument("--allowlists-only", action="store_true")
    args = parser.parse_args()
    if args.allowlists_only:
        allowlists(args.runs)
        return
    print(
        f"{'entries':>8} {'ports':>6} {'harden apply s':>15} {'linear load s':>14} "
        f"{'connect us (sets)':>18} {'connect us (linear)':>20} {'ratio':>6}"
    )
    for n in (int(x) for x in args.sizes.split(",")):
        with (
            tempfile.TemporaryDirectory() as tmp,
            Namespace("sc") as server,
            Namespace("cl") as client,
        ):
            last = sources(n)[-1]
            connect(server, client, ["198.19.0.1/32"], [f"{last}/32"])
            dev = client.run(["ip", "-o", "link"]).stdout.split(": ")[3].split("@")[0]
            sdev = server.run(["ip", "-o", "link"]).stdout.split(": ")[3].split("@")[0]
            client.run(["ip", "route", "add", "198.19.0.1/32", "dev", dev])
            server.run(["ip", "route", "add", f"{last}/32", "dev", sdev])
            path = Path(tmp) / "m.yaml"
            path.write_text(manifest(n))
            listener = subprocess.Popen(
                ["ip", "netns", "exec", server.name, sys.executable, "-c", SERVER],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
                start = time.perf_counter()
                server.run(
                    [
                        sys.executable,
                        "-m",
                        "harden.cli",
                        "apply",
                        str(path),
                        "--state-dir",
                        str(Path(tmp) / "st"),
                    ],
                    timeout=120,
                )
                apply_s = time.perf_counter() - start
                sets_us = connect_cost(server, client)
                server.run(["nft", "delete", "table", "inet", "harden"])
                lin = Path(tmp) / "linear.nft"
                lin.write_text(linear(n))
                start = time.perf_counter()
                server.run(["nft", "-f", str(lin)], timeout=600)
                linear_s = time.perf_counter() - start
                linear_us = connect_cost(server, client)
            finally:
                listener.kill()
                listener.wait()
            print(
                f"{n:8d} {min(n, 1000):6d} {apply_s:15.2f} {linear_s:14.2f} "
                f"{sets_us:18.1f} {linear_us:20.1f} {linear_us / sets_us:5.1f}x"
            )
    allowlists(args.runs)


if __name__ == "__main__":
    main()
