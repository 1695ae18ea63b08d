"""Fleet verification: 1, 8, 32, 64 lab hosts, every TCP and UDP port, one prober.

    .venv/bin/python -m bench.fleet [--sizes 1,8,32,64]

Each host is a namespace on one bridge with a default-DROP ruleset (tcp/80 allowed
and listening); ``harden verify --inventory`` probes all of them in the same sweeps.
Prints wall time, peak memory, time per host and packets per second. Needs root.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import measure
from harden.backends import render
from harden.files import parse_manifest
from harden.lab.net import FleetNet
from harden.policy.model import build_policy

MANIFEST = "version: 1\nservices:\n  - {name: web, port: 80, proto: tcp}\n"


def main() -> None:
    """Build each fleet, verify it once, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,8,32,64")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    ruleset = render(build_policy(parse_manifest(MANIFEST)), "nftables")["harden.nft"]
    print(
        f"{'hosts':>5} {'ports probed':>13} {'wall s':>8} {'s/host':>7} {'peak MB':>8} "
        f"{'probes/s':>10} {'verdict':>8}"
    )
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp, FleetNet(size) as fleet:
            (Path(tmp) / "m.yaml").write_text(MANIFEST)
            (Path(tmp) / "r.nft").write_text(ruleset)
            responders = []
            lines = ["hosts:"]
            for i, host in enumerate(fleet.servers):
                host.ns.run(["nft", "-f", str(Path(tmp) / "r.nft")])
                responders.append(
                    subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            host.ns.name,
                            sys.executable,
                            "-m",
                            "harden.lab.responder",
                            "--tcp",
                            "80",
                            "--lifetime",
                            "900",
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
                lines.append(f"  - {{name: s{i}, manifest: m.yaml, targets: [{host.v4}]}}")
            for proc in responders:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            inventory = Path(tmp) / "fleet.yaml"
            inventory.write_text("\n".join(lines) + "\n")
            try:
                seconds, rss, out = measure(
                    fleet.prober.ns.name,
                    [
                        sys.executable,
                        "-m",
                        "harden.cli",
                        "verify",
                        "--inventory",
                        str(inventory),
                        "--source",
                        str(fleet.prober.extra[0]),
                        "--format",
                        "json",
                    ],
                )
            finally:
                for proc in responders:
                    proc.kill()
                    proc.wait()
            report = json.loads(out)
            probes = sum(report["sent"].values())
            print(
                f"{size:5d} {report['counts']['ports']:13d} {seconds:8.2f} "
                f"{seconds / size:7.2f} {rss:8.0f} {probes / seconds:10.0f} "
                f"{report['verdict'].upper():>8}   "
                + ", ".join(f"{k} {v:.1f} s" for k, v in report.get("timing", {}).items())
            )


if __name__ == "__main__":
    main()
