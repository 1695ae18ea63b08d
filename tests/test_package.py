"""The Debian package, installed, used and purged on a booted Debian 12 (systemd-nspawn).

The machine is the boot tests' image (tests/nspawnlab.py) without the checkout's harden:
its only harden is the one the .deb installs. apt installs the package offline (the image
has every dependency), harden applies and persists a manifest under the machine's own
systemd, the prober verifies it from the link, and then removal keeps the firewall while
purge leaves nothing of harden behind (docs/operations.md, "The Debian package").
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .nspawnlab import BootLab, skip_reason
from .test_boot import MANIFEST, harden_rules, verify
from .vmlab import REPO, Image, ensure_image

# Both tests on one xdist worker (make test runs --dist loadgroup): the module's .deb is built once.
pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("package")]
DEB_IN_MACHINE = "/root/harden.deb"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0"
# What stays on purpose: the admin's own manifest. (The image's venv of harden's dependencies,
# /opt/harden from vagrant/qemu/build-image.sh, is not looked into.)
KEPT = {"/etc/harden", "/etc/harden/manifest.yaml"}


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built by the script make package runs (packed fast: the same files)."""
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(
        ["/usr/bin/python3", str(REPO / "packaging" / "build_deb.py"), str(out), "--fast"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Path(proc.stdout.strip())


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, Path]:
    """The image and an empty overlay layer: a machine with no harden installed."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("package")
    image = ensure_image(work / "build.log")
    empty = work / "empty"
    empty.mkdir()
    return image, empty


@pytest.fixture
def machine(bare: tuple[Image, Path], deb: Path, tmp_path: Path) -> Iterator[BootLab]:
    """A booted machine with the .deb in root's home (copied before boot), gone at the end."""
    lab = BootLab(*bare, tmp_path / "m").__enter__()
    try:
        home = lab.upper / DEB_IN_MACHINE.lstrip("/")
        home.parent.mkdir(parents=True, exist_ok=True)
        home.write_bytes(deb.read_bytes())
        lab.boot()
        yield lab
    finally:
        lab.close()


def install(lab: BootLab) -> None:
    """apt-get install of the file, offline: every dependency is in the image already."""
    assert lab.sh("command -v harden", check=False).returncode != 0, "the image has a harden"
    # Without recommends (man-db), as the image was made: the machine has no mirror.
    lab.sh(f"{APT} install --no-install-recommends {DEB_IN_MACHINE}", timeout=300)
    assert lab.sh("command -v harden").stdout.strip() == "/usr/sbin/harden"
    assert lab.sh("dpkg -S /usr/sbin/harden").stdout.startswith("harden: ")


def apply(lab: BootLab, backend: str) -> None:
    lab.sh("mkdir -p /etc/harden && cat > /etc/harden/manifest.yaml", input=MANIFEST.read_text())
    out = lab.sh(
        f"harden apply /etc/harden/manifest.yaml --backend {backend} --persist --format json"
    ).stdout
    assert json.loads(out)["changed"] is True, out
    assert lab.sh("systemctl is-enabled harden.service").stdout.strip() == "enabled"


def refused_in_window(lab: BootLab, command: str) -> None:
    """An apt command that must stop while a confirm window is open, changing nothing."""
    proc = lab.sh(command, check=False, timeout=300)
    assert proc.returncode != 0, proc.stdout
    assert "a confirm window is open" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert lab.sh("dpkg-query -W -f '${Status}' harden").stdout == "install ok installed"
    assert lab.sh("harden --version").returncode == 0


def leftovers(lab: BootLab) -> set[str]:
    """Every path on the machine's root file system whose name says harden."""
    found = lab.sh(
        "find / -xdev \\( -path /proc -o -path /sys -o -path /opt/harden \\) -prune "
        "-o -name '*harden*' -print"
    ).stdout.split()
    return set(found)


def assert_purged(lab: BootLab) -> None:
    assert harden_rules(lab) == {"nftables": False, "iptables": False}
    assert "HARDEN" not in lab.sh("iptables-save; ip6tables-save").stdout
    assert lab.sh("dpkg -L harden", check=False).returncode != 0
    assert lab.sh("systemctl cat harden.service", check=False).returncode != 0
    assert leftovers(lab) <= KEPT, leftovers(lab)
    assert lab.sh("ls -A /etc/harden").stdout.split() == ["manifest.yaml"]


def test_the_package_installs_applies_verifies_and_purges_to_nothing(machine: BootLab) -> None:
    """The packaged harden, its man page and completions, a persisted apply that verifies
    from the link, a scheduled drift check; purge takes all of it away."""
    lab = machine
    install(lab)
    lab.sh(f"rm {DEB_IN_MACHINE}")
    version = lab.sh("harden --version").stdout
    assert version.startswith("harden 0.1.0") and "python3-nftables" in version, version
    page = lab.sh("zcat /usr/share/man/man1/harden.1.gz").stdout
    # The image has no man-db (minbase): the installed page is rendered by this host's man.
    rendered = subprocess.run(
        ["man", "-l", "-"],
        input=page,
        env={"PATH": "/usr/bin:/bin", "MANPAGER": "cat", "MANWIDTH": "80"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "harden" in rendered and "SYNOPSIS" in rendered, rendered
    completion = "source /usr/share/bash-completion/completions/harden && complete -p harden"
    assert "harden" in lab.sh(f"bash -c '{completion}'").stdout
    apply(lab, "nftables")
    report = verify(lab)
    assert report["verdict"] == "pass", [p for p in report["ports"] if p["status"] == "fail"]
    lab.sh(
        "harden schedule diff /etc/harden/manifest.yaml && systemctl enable --now harden-diff.timer"
    )
    lab.sh(f"{APT} purge harden", timeout=300)
    assert_purged(lab)


def test_removing_keeps_the_firewall_and_purging_takes_it_away(machine: BootLab) -> None:
    """apt remove must not open a host: harden's chains stay live and load at boot; purge
    takes them out (the iptables backend: chains, jumps and the Docker drop-in)."""
    lab = machine
    install(lab)
    apply(lab, "iptables")
    # A change in a confirm window: its watchdog runs the installed harden, so neither an
    # upgrade (a reinstall runs the same scripts) nor a removal may go ahead until settled.
    changed = MANIFEST.read_text() + "  - {name: metrics, port: 9100, proto: tcp}\n"
    lab.sh("cat > /etc/harden/changed.yaml", input=changed)
    lab.sh("harden apply /etc/harden/changed.yaml --backend iptables --confirm 600")
    refused_in_window(lab, f"{APT} install --reinstall {DEB_IN_MACHINE}")
    refused_in_window(lab, f"{APT} remove harden")
    lab.sh("harden rollback && rm /etc/harden/changed.yaml")
    lab.sh(f"{APT} install --reinstall {DEB_IN_MACHINE} && rm {DEB_IN_MACHINE}", timeout=300)
    lab.sh(f"{APT} remove harden", timeout=300)
    assert lab.sh("command -v harden", check=False).returncode != 0
    assert lab.sh("test -e /usr/lib/harden", check=False).returncode != 0
    assert harden_rules(lab)["iptables"]
    lab.reboot()
    assert harden_rules(lab)["iptables"], lab.tail()
    assert verify(lab)["verdict"] == "pass"
    lab.sh(f"{APT} purge harden", timeout=300)
    assert_purged(lab)
