"""harden verify vs nmap on the same namespace lab, in one run.

    .venv/bin/python -m bench.verify_vs_nmap [--runs 3] [--slow]

A default-DROP target (tcp 22, 80, 443 and udp 53 allowed and listening) is probed
over IPv4 on all 65,535 TCP and 65,535 UDP ports by harden verify and by nmap
(-sS/-sU with --min-rate 20000 --max-retries 1; with --slow also -sS -p- -T4).
Prints median wall time, peak memory, the ratio to harden, and whether the port
verdicts agree. Then the soundness check: the same UDP sweep against the target
with its firewall removed, where a tool that reads silence as "closed" is wrong.
Needs root; touches nothing outside its own namespaces.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import measure
from harden.backends import render
from harden.files import parse_manifest
from harden.lab.net import LabNet
from harden.policy.model import build_policy

MANIFEST = """version: 1
services:
  - {name: ssh, port: 22, proto: tcp}
  - {name: web, ports: [80, 443], proto: tcp}
  - {name: dns, port: 53, proto: udp}
"""


def nmap_open(output: str) -> dict[str, set[int]]:
    """Ports per state from nmap's grepable output."""
    states: dict[str, set[int]] = {}
    for line in output.splitlines():
        if "Ports:" in line:
            for item in line.split("Ports:")[1].split("\t")[0].split(","):
                port, state = item.strip().split("/")[:2]
                states.setdefault(state, set()).add(int(port))
    return states


def harden_states(report: dict[str, object], proto: str) -> dict[str, set[int]]:
    """Ports per observed state (open / silent / ...) from a harden JSON report."""
    states: dict[str, set[int]] = {}
    for entry in report["ports"]:  # type: ignore[attr-defined]
        if entry["proto"] == proto:
            states.setdefault(entry["observed"], set()).add(entry["port"])
    return states


def main() -> None:
    """Build the lab, time every tool, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slow", action="store_true", help="also nmap -sS -p- -T4 (~90 s)")
    args = parser.parse_args()
    policy = build_policy(parse_manifest(MANIFEST))
    rows: list[tuple[str, list[float], float, str]] = []
    with tempfile.TemporaryDirectory() as tmp, LabNet(policy, prefix="bench") as lab:
        manifest = Path(tmp) / "m.yaml"
        manifest.write_text(MANIFEST)
        ruleset = Path(tmp) / "r.nft"
        ruleset.write_text(render(policy, "nftables")["harden.nft"])
        lab.start_services(lifetime=3600)
        lab.wait_reachable()
        lab.server.ns.run(["nft", "-f", ruleset])
        out = lab.outside.ns.name
        # The lab's outside host has a second address: a second ICMP budget at the target.
        extra = str(lab.outside.extra[0])
        target = str(lab.server.v4)
        harden = [
            sys.executable,
            "-m",
            "harden.cli",
            "verify",
            str(manifest),
            "--target",
            target,
            "--format",
            "json",
        ]
        configs = [
            ("harden verify (defaults: 2 retries)", harden),
            ("harden verify --retries 1 --wait 0.1", [*harden, "--retries", "1", "--wait", "0.1"]),
            (
                "harden verify --retries 1 --wait 0.1 --source X",
                [*harden, "--retries", "1", "--wait", "0.1", "--source", extra],
            ),
            (
                "nmap -sS -p- --min-rate 20000 --max-retries 1",
                [
                    "nmap",
                    "-n",
                    "-Pn",
                    "-sS",
                    "-p-",
                    "--min-rate",
                    "20000",
                    "--max-retries",
                    "1",
                    "-oG",
                    "-",
                    target,
                ],
            ),
            (
                "nmap -sU -p- --min-rate 20000 --max-retries 1",
                [
                    "nmap",
                    "-n",
                    "-Pn",
                    "-sU",
                    "-p-",
                    "--min-rate",
                    "20000",
                    "--max-retries",
                    "1",
                    "-oG",
                    "-",
                    target,
                ],
            ),
        ]
        # Both families of the host in one run: they share the waits.
        configs.append(
            ("harden verify (defaults), IPv4 + IPv6", [*harden, "--target", str(lab.server.v6)])
        )
        if args.slow:
            configs.append(
                ("nmap -sS -p- -T4", ["nmap", "-n", "-Pn", "-sS", "-p-", "-T4", "-oG", "-", target])
            )
        outputs: dict[str, str] = {}
        for name, cmd in configs:
            times, peak = [], 0.0
            runs = 1 if name == "nmap -sS -p- -T4" else args.runs
            for _ in range(runs):
                seconds, rss, stdout = measure(out, cmd)
                times.append(seconds)
                peak = max(peak, rss)
                outputs[name] = stdout
                time.sleep(1.2)  # let the target's ICMP budget refill between runs
            rows.append((name, times, peak, ""))
        report = json.loads(outputs[configs[0][0]])
        tcp_nmap = nmap_open(outputs[configs[3][0]])
        tcp_ours = harden_states(report, "tcp")
        tcp_agree = tcp_nmap.get("open", set()) == tcp_ours.get("open", set()) and not (
            tcp_nmap.keys() - {"open", "filtered"}
        )
        udp_nmap = nmap_open(outputs[configs[4][0]])
        # Soundness: the same UDP sweep with the firewall removed.
        lab.server.ns.run(["nft", "delete table inet harden"])
        time.sleep(1.2)
        _, _, bare_nmap = measure(out, configs[4][1])
        time.sleep(1.2)
        _, _, bare_ours = measure(out, [*harden, "--ports", "1-65535"])
        bare_report = json.loads(bare_ours)
    harden_median = statistics.median(rows[0][1])
    print(
        f"target: default-DROP host in a netns lab, IPv4, 65,535 TCP + 65,535 UDP ports; "
        f"median of {args.runs} runs\n"
    )
    print(f"{'tool':50} {'median s':>9} {'runs':>22} {'peak MB':>8} {'vs harden':>10}")
    for name, times, peak, _ in rows:
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"{name:50} {statistics.median(times):9.2f} {runs:>22} {peak:8.0f} "
            f"{statistics.median(times) / harden_median:9.2f}x"
        )
    nmap_total = statistics.median(rows[3][1]) + statistics.median(rows[4][1])
    print(f"\nnmap -sS + -sU (tuned) together: {nmap_total:.2f} s for what one harden run covers")
    for name, times, _, _ in [*rows[:3], rows[5]]:
        print(f"  {nmap_total / statistics.median(times):5.1f}x the time of {name}")
    both = statistics.median(rows[5][1])
    print(
        f"IPv4 + IPv6 of the host in one run: {both:.2f} s, {both / harden_median:.2f}x the "
        "IPv4-only default run"
    )
    timing = report.get("timing", {})
    probing = report["seconds"]
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in timing.items())
    other = probing - sum(timing.values())
    print(
        f"harden defaults, where the time went (last run): probing {probing:.2f} s = {parts}, "
        f"other (classifying, the final re-read) {other:.2f} s; the rest of the wall time "
        "is start-up before the capture (Python, the manifest) and writing the report"
    )
    print(
        f"TCP verdicts agree with nmap -sS: {'yes' if tcp_agree else 'NO'} "
        f"(open: harden {sorted(tcp_ours.get('open', set()))}, "
        f"nmap {sorted(tcp_nmap.get('open', set()))})"
    )
    print(
        f"UDP on the firewalled host: harden verdict {report['verdict'].upper()}; nmap "
        f"{ {k: len(v) for k, v in udp_nmap.items()} }"
    )
    bare = nmap_open(bare_nmap)
    udp_leaks = [
        p["port"] for p in bare_report["ports"] if p["proto"] == "udp" and p["status"] == "fail"
    ]
    print(
        f"UDP on the same host with NO firewall: harden verdict "
        f"{bare_report['verdict'].upper()}, {len(udp_leaks)} UDP leaks named "
        f"(budget-limited); nmap { ({k: len(v) for k, v in bare.items()}) }, the rest "
        "open|filtered: rate limiting hides leaks from a sweep that reads silence as filtered"
    )


if __name__ == "__main__":
    main()
