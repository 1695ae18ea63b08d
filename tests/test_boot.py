"""What loads at boot, under a real systemd: the VM image booted as a container (nspawn).

Each test gets its own machine (tests/nspawnlab.py): harden installed from this checkout,
its link brought up after network-pre.target as a real host's network is, and a prober on
that link that probes closed ports from power-on until SSH answers. A boot takes about a
second, so every check that needs systemd's ordering but not a kernel boot lives here; the
real reboot of a VM stays in the VM tier (tests/test_vms.py, make test-vm).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .nspawnlab import BootLab, harden_layer, skip_reason
from .vmlab import REPO, Image, ensure_image

# Each test boots its own machine (its own namespaces, overlay and nspawn), so they run on
# any worker side by side; the first to need the image builds it, the others wait for it.
pytestmark = pytest.mark.netns
MANIFEST = REPO / "vagrant" / "ansible" / "manifest.yml"  # ssh, web (80, 443)
CLOSED = ("1000", "2000", "3306", "5432", "8443")  # closed in MANIFEST: probed during boot
WATCH_SECONDS = 60.0
Boot = Callable[..., BootLab]


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, Path]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("boot")
    image = ensure_image(work / "build.log")
    return image, harden_layer(image, work / "layer")


@pytest.fixture
def machine(layer: tuple[Image, Path], tmp_path: Path) -> Iterator[Boot]:
    """Factory: a booted machine (optionally with more units enabled), gone at the end."""
    made: list[BootLab] = []

    def make(units: tuple[str, ...] = ()) -> BootLab:
        lab = BootLab(*layer, tmp_path / f"m{len(made)}", units=units).__enter__()
        made.append(lab)
        lab.boot()
        return lab

    yield make
    for lab in made:
        lab.close()


def apply(lab: BootLab, backend: str, *extra: str) -> dict[str, Any]:
    lab.sh("mkdir -p /etc/harden && cat > /etc/harden/manifest.yaml", input=MANIFEST.read_text())
    out = lab.sh(
        f"harden apply /etc/harden/manifest.yaml --backend {backend} --format json "
        + " ".join(extra)
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def watched_reboot(lab: BootLab) -> dict[str, Any]:
    """Power off, start the prober's watch, boot: what answered from the link, and when."""
    watchers: list[subprocess.Popen[str]] = []

    def watch() -> None:
        watchers.append(lab.watcher(WATCH_SECONDS, CLOSED))

    lab.halt()
    try:
        lab.boot(watch)
        out, _ = watchers[0].communicate(timeout=WATCH_SECONDS + 30)
    finally:
        for proc in watchers:
            proc.kill()
    seen: dict[str, Any] = json.loads(out)
    return seen


def show(lab: BootLab, unit: str, *props: str) -> dict[str, str]:
    out = lab.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def loaded_before_the_network(lab: BootLab) -> None:
    """harden.service ran, and finished before network-pre.target, before the link came up."""
    harden = show(lab, "harden.service", "ActiveState", "Result", "ActiveEnterTimestampMonotonic")
    assert harden["ActiveState"] == "active" and harden["Result"] == "success", harden
    pre = show(lab, "network-pre.target", "ActiveEnterTimestampMonotonic")
    link = show(lab, "lab-link.service", "InactiveExitTimestampMonotonic")
    done, reached = (
        int(harden["ActiveEnterTimestampMonotonic"]),
        int(pre["ActiveEnterTimestampMonotonic"]),
    )
    assert 0 < done <= reached <= int(link["InactiveExitTimestampMonotonic"]), (harden, pre, link)


def harden_rules(lab: BootLab) -> dict[str, bool]:
    """Which of harden's backends have rules in the machine's kernel now."""
    tables = lab.sh("nft list tables").stdout
    saved = lab.sh("iptables-save; ip6tables-save").stdout
    return {"nftables": "table inet harden" in tables, "iptables": "HARDEN-INPUT" in saved}


def verify(lab: BootLab) -> dict[str, Any]:
    """harden verify of every TCP and UDP port, both families, from the prober."""
    proc = lab.prober.run(
        [
            sys.executable,
            "-m",
            "harden.cli",
            "verify",
            str(MANIFEST),
            "--target",
            lab.v4,
            "--target",
            lab.v6,
            "--format",
            "json",
        ],
        check=False,
        timeout=300,
    )
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_persisted_rules_load_before_the_network_comes_up(machine: Boot, backend: str) -> None:
    """apply --persist, power off, boot while the prober probes closed ports from the link:
    not one RST or ICMP error from power-on to SSH, because harden.service loaded the rules
    before network-pre.target; after boot, verify of every port PASSes on both families."""
    lab = machine()
    apply(lab, backend, "--persist")
    assert lab.sh("systemctl is-enabled harden.service").stdout.strip() == "enabled"
    seen = watched_reboot(lab)
    assert seen["arp_at"] is not None and seen["ssh_at"] is not None, (seen, lab.tail())
    assert seen["probes"] > 0 and seen["replies"] == [], seen
    loaded_before_the_network(lab)
    assert harden_rules(lab) == {
        "nftables": backend == "nftables",
        "iptables": backend == "iptables",
    }
    report = verify(lab)
    assert report["verdict"] == "pass", [p for p in report["ports"] if p["status"] == "fail"]


def test_a_reboot_brings_back_what_was_live_not_the_last_persist(machine: Boot) -> None:
    """apply M1 --persist, then apply M2 without --persist (it lets in tcp/8080): the boot
    files follow, so after a reboot M2 runs, not M1 (whoever M2 let in stays in)."""
    lab = machine()
    apply(lab, "nftables", "--persist")
    wider = MANIFEST.read_text() + "  - {name: api, port: 8080, proto: tcp}\n"
    lab.sh("cat > /etc/harden/m2.yaml", input=wider)
    result = json.loads(lab.sh("harden apply /etc/harden/m2.yaml --format json").stdout)
    assert "kept in step" in result["message"], result
    assert "boot:     matches" in lab.sh("harden status").stdout
    lab.reboot()
    loaded_before_the_network(lab)
    assert lab.sh("harden diff /etc/harden/m2.yaml", check=False).returncode == 0
    listed = lab.sh("nft list table inet harden").stdout
    assert "8080" in listed, listed


@pytest.mark.parametrize(("first", "then"), [("nftables", "iptables"), ("iptables", "nftables")])
def test_after_a_backend_switch_only_the_new_backend_loads(
    machine: Boot, first: str, then: str
) -> None:
    lab = machine()
    apply(lab, first, "--persist")
    apply(lab, then, "--persist")
    seen = watched_reboot(lab)
    assert seen["replies"] == [], seen
    loaded_before_the_network(lab)
    assert harden_rules(lab) == {first: False, then: True}
    assert verify(lab)["verdict"] == "pass"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_after_remove_nothing_loads(machine: Boot, backend: str) -> None:
    """And the watch is not blind: with nothing loaded, the closed ports answer at boot."""
    lab = machine()
    apply(lab, backend, "--persist")
    lab.sh("harden remove")
    seen = watched_reboot(lab)
    assert harden_rules(lab) == {"nftables": False, "iptables": False}
    enabled = lab.sh("systemctl is-enabled harden.service", check=False).stdout.strip()
    assert enabled in ("", "not-found", "disabled"), enabled
    rsts = [r for r in seen["replies"] if "rst" in r]
    assert rsts, seen  # the kernel's RSTs: nothing stood in their way


def firewalld_running(lab: BootLab, seconds: float = 60.0) -> None:
    """Wait until firewalld has loaded its rules: ``firewall-cmd --state`` says running.

    systemd counts firewalld started once it holds its D-Bus name, before its rules are
    loaded; a restart then (a loaded machine's boot is slow) stops it half-way, leaving
    the nftables backend's table beside the iptables backend's rules.
    """
    deadline = time.monotonic() + seconds
    while lab.sh("firewall-cmd --state", check=False).stdout.strip() != "running":
        assert time.monotonic() < deadline, f"firewalld is not running\n{lab.tail()}"
        time.sleep(0.3)


def test_docker_and_firewalld_boot_beside_harden(machine: Boot) -> None:
    """The machine for the orderings that involve other firewalls: with docker.service and
    firewalld.service enabled, both start for real at boot and write their rules into the
    machine's namespace, after harden.service loaded its own; the boot stays silent."""
    lab = machine(("containerd.service", "docker.service", "firewalld.service"))
    apply(lab, "nftables", "--persist")
    seen = watched_reboot(lab)
    assert seen["replies"] == [], seen
    loaded_before_the_network(lab)
    for unit in ("docker.service", "firewalld.service"):
        state = show(lab, unit, "ActiveState", "ActiveEnterTimestampMonotonic")
        assert state["ActiveState"] == "active", (unit, state, lab.tail())
    tables = lab.sh("nft list tables").stdout
    assert "table inet firewalld" in tables and "table inet harden" in tables, tables
    assert "DOCKER-USER" in lab.sh("iptables-save").stdout


def test_firewalld_with_its_iptables_backend_does_not_flush_hardens_chains_at_boot(
    machine: Boot,
) -> None:
    """firewalld configured with FirewallBackend=iptables flushes every filter chain when it
    starts: harden's iptables backend is refused without --force, status says why, and with
    --force the boot loads harden's chains after firewalld, so they survive it."""
    lab = machine(("firewalld.service",))
    firewalld_running(lab)
    lab.sh(
        "sed -i 's/^FirewallBackend=.*/FirewallBackend=iptables/' /etc/firewalld/firewalld.conf"
        " && systemctl restart firewalld"
    )
    firewalld_running(lab)
    lab.sh("mkdir -p /etc/harden && cat > /etc/harden/manifest.yaml", input=MANIFEST.read_text())
    refused = lab.sh(
        "harden apply /etc/harden/manifest.yaml --backend iptables --persist", check=False
    )
    assert refused.returncode == 2 and "FirewallBackend=iptables" in refused.stderr, refused
    assert "HARDEN-INPUT" not in lab.sh("iptables-save").stdout  # nothing changed
    apply(lab, "iptables", "--persist", "--force")
    assert "FirewallBackend=iptables" in lab.sh("harden status").stdout
    seen = watched_reboot(lab)
    assert seen["replies"] == [], seen
    loaded_before_the_network(lab)
    order = {
        unit: int(show(lab, unit, "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
        for unit in ("firewalld.service", "harden.service")
    }
    assert 0 < order["firewalld.service"] <= order["harden.service"], order
    assert harden_rules(lab)["iptables"], lab.sh("iptables-save").stdout
    # Every closed port stays silent; what fails is firewalld's own doing: its public zone
    # rejects the declared web ports that harden let through (another firewall's verdict).
    failures = {(p["proto"], p["port"]) for p in verify(lab)["ports"] if p["status"] == "fail"}
    assert failures <= {("tcp", 80), ("tcp", 443)}, failures


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_docker_starting_after_harden_at_boot_gets_no_rule_ahead_of_it(
    machine: Boot, backend: str
) -> None:
    """dockerd starts after harden.service and inserts its FORWARD rules at the top. On
    the iptables backend harden's forward check must still come first (in DOCKER-USER,
    which Docker keeps first, as apply puts it on a Docker host): after the boot `harden
    diff` finds no rule ahead of harden's, on both backends, and after a dockerd restart."""
    lab = machine(("containerd.service", "docker.service"))
    apply(lab, backend, "--persist")
    seen = watched_reboot(lab)
    assert seen["replies"] == [], seen
    assert show(lab, "docker.service", "ActiveState")["ActiveState"] == "active", lab.tail()
    for _ in ("boot", "restart"):
        drift = lab.sh(f"harden diff /etc/harden/manifest.yaml --backend {backend}", check=False)
        assert drift.returncode == 0, drift.stdout + drift.stderr
        if backend == "iptables":
            forward = lab.sh("iptables -S FORWARD").stdout.splitlines()
            assert forward[1] == "-A FORWARD -j DOCKER-USER", forward  # [0]: the policy
            assert "HARDEN-FORWARD" not in "".join(forward), forward
            user = lab.sh("iptables -S DOCKER-USER").stdout.splitlines()
            assert user[1] == "-A DOCKER-USER -j HARDEN-FORWARD", user
        lab.sh("systemctl restart docker.service")
