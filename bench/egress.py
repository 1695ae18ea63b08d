"""harden verify --egress: the full sweep of one sink, timed, with nmap from the same host.

    .venv/bin/python -m bench.egress [--runs 3]

Two namespaces: the hardened host, rulesets/egress-host.yaml applied (egress reject; tcp
80/443 to 203.0.113.0/24, dns to the resolvers and ntp anywhere allowed), and a sink at
203.0.113.80, inside the mirror's network, running ``harden sink``. ``harden verify
--egress`` sends a SYN and a datagram to all 65,535 TCP and 65,535 UDP ports of the sink
and checks both ends; the target is under 10 s. As the same-run reference, a tuned nmap
pair (-sS and -sU, -p- --min-rate 20000 --max-retries 0) runs from the hardened host
against the same sink: it sees every refused port as "filtered" ("open|filtered" for
UDP) and cannot tell one refused by this host's own output rules from one dropped on the
way, nor show that nothing arrived. Needs root; touches nothing outside its own namespaces.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import measure
from bench.verify_vs_nmap import nmap_open
from harden.lab.netns import Namespace, connect

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "rulesets" / "egress-host.yaml"
HOST4, SINK4 = "203.0.113.1", "203.0.113.80"
HARDEN = [sys.executable, "-m", "harden.cli"]
TARGET = 10.0  # seconds for the full sweep of one sink


def nmap_cmd(scan: str) -> list[str]:
    """The tuned nmap run of one protocol against the sink, grepable output."""
    return [
        "nmap",
        "-n",
        "-Pn",
        scan,
        "-p-",
        "--min-rate",
        "20000",
        "--max-retries",
        "0",
        "-oG",
        "-",
        SINK4,
    ]


def nmap_counts(output: str) -> dict[str, int]:
    """Ports per state in nmap's grepable output, the "Ignored State" ones included."""
    counts = {state: len(ports) for state, ports in nmap_open(output).items()}
    for state, n in re.findall(r"Ignored State: (\S+) \((\d+)\)", output):
        counts[state] = counts.get(state, 0) + int(n)
    return counts


def main() -> None:
    """Build the two namespaces, apply, time every tool, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Namespace("beh") as host,
        Namespace("bes") as sink,
    ):
        connect(host, sink, [f"{HOST4}/24"], [f"{SINK4}/24"])
        host.run([*HARDEN, "apply", MANIFEST, "--backend", "nftables", "--state-dir", tmp])
        sink_command = f"ip netns exec {sink.name} {' '.join(HARDEN)} sink --from {{sources}}"
        verify = [*HARDEN, "verify", "--egress", str(MANIFEST), "--sink", SINK4]
        verify += ["--sink-command", sink_command, "--ports", "all", "--format", "json"]
        times: list[float] = []
        peak = 0.0
        report: dict[str, Any] = {}
        for _ in range(args.runs):
            seconds, rss, stdout = measure(host.name, verify)
            times.append(seconds)
            peak = max(peak, rss)
            report = json.loads(stdout)
            time.sleep(0.5)
        nmap_rows: list[tuple[str, list[float], float, dict[str, int]]] = []
        for scan in ("-sS", "-sU"):
            nmap_times, nmap_peak, states = [], 0.0, {}
            for _ in range(args.runs):
                seconds, rss, stdout = measure(host.name, nmap_cmd(scan))
                nmap_times.append(seconds)
                nmap_peak = max(nmap_peak, rss)
                states = nmap_counts(stdout)
                time.sleep(0.5)
            nmap_rows.append((" ".join(nmap_cmd(scan)[:-3]), nmap_times, nmap_peak, states))

    median = statistics.median(times)
    ports = report["ports"]
    blocked = sum(int(s["count"]) for s in report["conforming"])
    arrived = [
        f"{p['proto']}/{p['port']}"
        for p in sorted(ports, key=lambda p: (p["proto"], p["port"]))
        if p["observed"] == "arrived"
    ]
    print(
        f"hardened host: rulesets/egress-host.yaml (egress reject), sink {SINK4}; "
        f"65,535 TCP + 65,535 UDP ports; median of {args.runs} runs\n"
    )
    print(f"{'tool':62} {'median s':>9} {'runs':>22} {'peak MB':>8}")
    rows = [("harden verify --egress (one sink, full sweep)", times, peak)]
    rows += [(name, t, rss) for name, t, rss, _ in nmap_rows]
    for name, t, rss in rows:
        runs = ", ".join(f"{x:.2f}" for x in t)
        print(f"{name:62} {statistics.median(t):9.2f} {runs:>22} {rss:8.0f}")
    nmap_total = sum(statistics.median(t) for _, t, _, _ in nmap_rows)
    print(
        f"\nharden: {str(report['verdict']).upper()}, {len(ports)} port(s) listed "
        f"({', '.join(arrived)} arrived at the sink), {blocked} refused here and absent "
        f"there; probing {report['seconds']:.2f} s of the last run"
    )
    print(
        f"target: the full sweep of one sink under {TARGET:.0f} s: "
        f"{'met' if median < TARGET else 'MISSED'} ({median:.2f} s)"
    )
    print(
        f"nmap -sS + -sU (tuned) together: {nmap_total:.2f} s, {nmap_total / median:.1f}x "
        "the harden median"
    )
    for (_, _, _, states), proto in zip(nmap_rows, ("tcp", "udp"), strict=True):
        print(f"  nmap {proto}: {states}")
    print(
        "  nmap calls every port this host's own output rules refused 'filtered' (UDP: "
        "'open|filtered'), as it would one dropped on the way: it cannot tell locally refused "
        "from dropped, and does not see what arrived at the sink"
    )


if __name__ == "__main__":
    main()
