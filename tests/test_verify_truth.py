"""verify never says PASS where it proved nothing: absent hosts, special addresses, NAT.

Real kernel, in namespaces the tests create (needs root). Every address is in
198.18.0.0/15 or fd00::/8 inside those namespaces.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harden.lab.netns import Namespace, connect

from .conftest import REPO
from .labutil import HARDEN, routed, write

pytestmark = pytest.mark.netns
NsFactory = Callable[[str], Namespace]
BASTION = REPO / "rulesets" / "bastion.yaml"  # echo off, SSH only from admin networks
MODES = ["raw", "connect"]


def verify(
    ns: Namespace, manifest: Path, *args: str, mode: str = "raw"
) -> tuple[int, dict[str, Any], str]:
    """Run verify in ``ns`` (as nobody for connect mode); exit code, JSON report, stderr."""
    prefix: list[str] = []
    if mode == "connect":
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is missing")
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    proc = ns.run(
        [*prefix, *HARDEN, "verify", str(manifest), *args, "--ports", "1-40", "--format", "json"],
        check=False,
        timeout=300,
    )
    report: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, report, proc.stderr


@dataclass
class Pair:
    prober: Namespace
    server: Namespace
    net: str  # "198.18.N"


@pytest.fixture
def pair(netns: NsFactory) -> Pair:
    prober, server = netns("vp"), netns("vs")
    n = 100 + uuid.uuid4().int % 100
    connect(
        server,
        prober,
        [f"198.18.{n}.1/24", f"fd00:{n}::1/64"],
        [f"198.18.{n}.2/24", f"fd00:{n}::2/64"],
    )
    return Pair(prober, server, f"198.18.{n}")


@pytest.mark.parametrize("mode", MODES)
def test_an_address_with_no_host_behind_it_is_inconclusive(pair: Pair, mode: str) -> None:
    code, report, stderr = verify(pair.prober, BASTION, "--target", f"{pair.net}.77", mode=mode)
    assert code == 5, (stderr, report.get("alive"), report.get("ports"))
    assert report["verdict"] == "inconclusive" and report["alive"] == {}
    assert report["counts"]["conforming"] == 0  # its silence is not counted as conforming
    assert any(p["status"] == "inconclusive" for p in report["ports"])


@pytest.mark.parametrize("mode", MODES)
def test_a_blackholed_route_never_passes(pair: Pair, mode: str) -> None:
    pair.prober.run(["ip", "route", "add", "blackhole", "198.19.200.0/24"])
    code, _, stderr = verify(pair.prober, BASTION, "--target", "198.19.200.5", mode=mode)
    assert code == 4 and "route to 198.19.200.5" in stderr, stderr
    assert len(stderr.splitlines()) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("address", ["224.0.0.1", "ff0e::1", "0.0.0.0", "::"])
def test_addresses_that_are_not_one_host_are_refused(pair: Pair, mode: str, address: str) -> None:
    code, _, stderr = verify(pair.prober, BASTION, "--target", address, mode=mode)
    assert code == 2 and "not one host" in stderr, stderr


def test_the_probers_own_and_the_subnet_broadcast_address_are_refused(pair: Pair) -> None:
    for address in (f"{pair.net}.2", f"{pair.net}.255"):
        code, _, stderr = verify(pair.prober, BASTION, "--target", address)
        assert code == 2 and len(stderr.splitlines()) == 1, stderr


@pytest.mark.parametrize("mode", MODES)
def test_a_host_that_drops_everything_passes_on_its_link_layer_answer(
    pair: Pair, mode: str, tmp_path: Path
) -> None:
    """The bastion from a stranger: nothing may answer, and nothing does. On our link its
    answer at the link layer, during this run, is the proof that a host is there: an ARP
    reply to the prober's own request (raw), or the kernel's neighbour entry confirmed
    while the probes went out (connect). The PASS says what it assumes."""
    proc = pair.server.run(
        [*HARDEN, "apply", str(BASTION), "--state-dir", str(tmp_path / "s"), "--force"],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    code, report, stderr = verify(pair.prober, BASTION, "--target", f"{pair.net}.1", mode=mode)
    assert code == 0, (stderr, report.get("ports"))
    evidence = report["alive"][f"{pair.net}.1"]
    assert evidence.startswith("alive at the link layer only"), evidence
    assert ("ARP reply" if mode == "raw" else "during this run") in evidence
    assert any("proxy-ARP" in premise for premise in report["assumptions"])
    if mode == "raw":  # IPv6: a neighbour solicitation sent now
        six = f"fd00:{pair.net.rsplit('.', 1)[1]}::1"
        code, report, stderr = verify(pair.prober, BASTION, "--target", six, mode=mode)
        assert code == 0, (stderr, report.get("ports"))
        assert report["alive"][six].startswith("alive at the link layer only (neighbour adv")


@pytest.fixture
def natted(netns: NsFactory) -> Iterator[tuple[Namespace, Namespace, str, str]]:
    """prober 198.18.K.2 -> router (masquerade) 198.19.K.1 -> server 198.19.K.5."""
    prober, router, server, k = routed(netns, "n")
    router.run(
        [
            "nft",
            "add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; "
            f"add rule ip nat post oifname != lo ip saddr 198.18.{k}.0/24 masquerade",
        ]
    )
    responder = subprocess.Popen(
        [
            *("ip", "netns", "exec", server.name, sys.executable, "-m", "harden.lab.responder"),
            *("--tcp", "22", "--lifetime", "120"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"
        yield prober, server, f"198.19.{k}.5", f"198.19.{k}.1"
    finally:
        responder.kill()
        responder.wait()


def test_a_natted_prober_is_judged_from_the_address_the_target_sees(
    natted: tuple[Namespace, Namespace, str, str], tmp_path: Path
) -> None:
    prober, server, target, router = natted
    net = router.rsplit(".", 1)[0]
    manifest = write(
        tmp_path,
        "m.yaml",
        "version: 1\npolicy: {ipv6: false}\nservices:\n"
        f"  - {{name: ssh, port: 22, proto: tcp, sources: [{net}.0/24]}}\n",
    )
    state = tmp_path / "s"
    assert server.run([*HARDEN, "apply", str(manifest), "--state-dir", str(state)]).returncode == 0
    # From our own address (outside the sources) tcp/22 should be silent, but the server
    # sees the router's address (inside) and answers: a false FAIL without --seen-as.
    code, report, _ = verify(prober, manifest, "--target", target)
    assert code == 1 and any(p["port"] == 22 and p["observed"] == "open" for p in report["ports"])
    code, report, stderr = verify(prober, manifest, "--target", target, "--seen-as", router)
    assert code == 0, (
        stderr,
        [(p["proto"], p["port"], p["observed"], p["detail"]) for p in report["ports"]],
    )
    assert [(p["port"], p["status"]) for p in report["ports"]] == [(22, "ok")]
    assert any("--seen-as" in note for note in report["notes"])
