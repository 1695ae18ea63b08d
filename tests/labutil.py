"""Helpers for tests that run harden inside lab namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harden.backends import render
from harden.files import parse_manifest
from harden.lab.net import Host, LabNet
from harden.lab.netns import Namespace, connect
from harden.policy.model import build_policy

HARDEN = [sys.executable, "-m", "harden.cli"]


def counters_command(server: Namespace) -> str:
    """The witness command of a lab server: ``harden counters`` in its namespace."""
    return f"ip netns exec {server.name} {' '.join(HARDEN)} counters --format json"


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def lab_for(manifest: Path) -> LabNet:
    return LabNet(build_policy(parse_manifest(manifest.read_text())), prefix="tv")


def load_ruleset(lab: LabNet, manifest: Path, tmp: Path) -> None:
    """Load the manifest's nft ruleset in the server namespace (no apply machinery)."""
    nft = tmp / "ruleset.nft"
    nft.write_text(
        render(build_policy(parse_manifest(manifest.read_text())), "nftables")["harden.nft"]
    )
    lab.server.ns.run(["nft", "-f", nft])


def verify_from(
    host: Host, lab: LabNet, manifest: Path, tmp: Path, *extra: str, v6: bool = False
) -> tuple[int, dict[str, Any]]:
    """Run ``harden verify`` in ``host``'s namespace; return its exit code and JSON report."""
    out = tmp / f"report-{host.ns.name}.json"
    out.unlink(missing_ok=True)
    targets = ["--target", str(lab.server.v4)]
    if v6:
        targets += ["--target", str(lab.server.v6)]
    for address in host.extra:  # a second ICMP budget: UDP retries need not wait
        if address.version == 4 or v6:
            targets += ["--source", str(address)]
    proc = host.ns.run(
        [*HARDEN, "verify", manifest, *targets, "--format", "json", "-o", out, *extra],
        check=False,
        timeout=300,
    )
    assert out.exists(), proc.stderr
    return proc.returncode, json.loads(out.read_text())


def failing(report: dict[str, Any]) -> set[tuple[str, int | None, str]]:
    return {
        (p["proto"], p["port"], p["observed"]) for p in report["ports"] if p["status"] == "fail"
    }


def statuses(report: dict[str, Any]) -> dict[tuple[str, int | None], str]:
    return {(p["proto"], p["port"]): p["status"] for p in report["ports"]}


def nmap(host: Host, *args: str) -> dict[tuple[str, int], str]:
    """Port states nmap reports: {(proto, port): state}."""
    proc = host.ns.run(["nmap", "-n", "-Pn", "-oG", "-", *args], timeout=300)
    states: dict[tuple[str, int], str] = {}
    for line in proc.stdout.splitlines():
        if "Ports:" not in line:
            continue
        for item in line.split("Ports:")[1].split("\t")[0].split(","):
            fields = item.strip().split("/")
            states[(fields[2], int(fields[0]))] = fields[1]
    return states


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def routed(
    make: Callable[[str], Namespace], tag: str
) -> tuple[Namespace, Namespace, Namespace, int]:
    """prober 198.18.K.2 -> router (forwarding) 198.19.K.1 -> server 198.19.K.5; returns K."""
    prober, router, server = make(f"{tag}p"), make(f"{tag}r"), make(f"{tag}s")
    k = 100 + uuid.uuid4().int % 100
    connect(router, prober, [f"198.18.{k}.1/24"], [f"198.18.{k}.2/24"])
    connect(router, server, [f"198.19.{k}.1/24"], [f"198.19.{k}.5/24"])
    prober.run(["ip", "route", "add", "default", "via", f"198.18.{k}.1"])
    server.run(["ip", "route", "add", "default", "via", f"198.19.{k}.1"])
    router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    return prober, router, server, k


def uncommented_egress(manifest: str) -> str:
    """An init proposal with its commented-out egress block enforced."""
    lines = manifest.splitlines(True)
    start = end = lines.index("# egress:\n")
    while end == start or (end < len(lines) and lines[end].startswith("#  ")):
        end += 1
    return "".join(lines[:start] + [x[2:] for x in lines[start:end]] + lines[end:])
