"""Fleet verification: one sweep engine, many targets, one report (needs root)."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from harden.backends import render
from harden.errors import ManifestError
from harden.files import parse_manifest
from harden.lab.net import FleetNet
from harden.policy.model import build_policy
from harden.verify.inventory import load_inventory

from .conftest import REPO
from .labutil import HARDEN, write

WEB = REPO / "rulesets" / "web-server.yaml"


def test_inventory_errors_name_the_field(tmp_path: Path) -> None:
    bad = write(tmp_path, "inv.yaml", "hosts:\n  - {name: a, manifest: m.yaml, targets: [1.2.3]}\n")
    with pytest.raises(ManifestError, match=r"inv\.yaml: hosts\[0\]\.targets\[0\]"):
        load_inventory(bad)
    dup = write(
        tmp_path,
        "dup.yaml",
        f"hosts:\n  - {{name: a, manifest: {WEB}, targets: "
        "[198.18.0.1]}\n  - {name: a, manifest: m.yaml, targets: [198.18.0.2]}\n",
    )
    with pytest.raises(ManifestError, match=r"hosts\[1\]\.name: duplicate host name 'a'"):
        load_inventory(dup)


def test_a_second_hosts_key_is_refused_not_silently_kept(tmp_path: Path) -> None:
    twice = write(
        tmp_path,
        "twice.yaml",
        f"hosts:\n  - {{name: a, manifest: {WEB}, targets: [198.18.0.1]}}\n"
        f"hosts:\n  - {{name: b, manifest: {WEB}, targets: [198.18.0.2]}}\n",
    )
    with pytest.raises(ManifestError, match=r"twice\.yaml: line 3 .*duplicate key 'hosts'"):
        load_inventory(twice)


@pytest.mark.netns
def test_fleet_in_one_run_one_report(tmp_path: Path) -> None:
    """Three hosts, one of them unfirewalled: one report, only that one fails."""
    with FleetNet(3) as fleet:
        write(tmp_path, "m.yaml", "version: 1\n")
        nft = tmp_path / "r.nft"
        nft.write_text(
            render(build_policy(parse_manifest("version: 1\n")), "nftables")["harden.nft"]
        )
        for host in fleet.servers[:2]:
            host.ns.run(["nft", "-f", nft])
        lines = ["hosts:"] + [
            f'  - {{name: s{i}, manifest: m.yaml, targets: [{h.v4}, "{h.v6}"]}}'
            for i, h in enumerate(fleet.servers)
        ]
        inventory = write(tmp_path, "fleet.yaml", "\n".join(lines) + "\n")
        out = tmp_path / "fleet.json"
        junit = tmp_path / "fleet.xml"
        base: list[str | Path] = [*HARDEN, "verify", "--inventory", inventory, "--ports", "1-2000"]
        sources = ["--source", str(fleet.prober.extra[0]), "--source", str(fleet.prober.extra[1])]
        proc = fleet.prober.ns.run(
            [*base, *sources, "--format", "json", "-o", out], check=False, timeout=300
        )
        assert proc.returncode == 1, proc.stderr
        report = json.loads(out.read_text())
        every = {str(a) for h in fleet.servers for a in (h.v4, h.v6)}
        assert set(report["targets"]) == every
        failing_targets = {p["target"] for p in report["ports"] if p["status"] == "fail"}
        bare = fleet.servers[2]
        assert failing_targets == {str(bare.v4), str(bare.v6)}
        proc = fleet.prober.ns.run(
            [*base, "--format", "junit", "-o", junit], check=False, timeout=300
        )
        suites = ET.parse(junit).getroot().findall("testsuite")
        assert len(suites) == 6
        failed = {s.get("name") for s in suites if s.get("failures") != "0"}
        assert failed == {f"harden verify {bare.v4}", f"harden verify {bare.v6}"}
