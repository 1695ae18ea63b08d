"""harden analyze on a real firewalld, on both of its backends, under a real systemd.

firewalld needs systemd and D-Bus; the booted machine of tests/test_boot.py has both (its
image ships firewalld, enabled here for the machine's boot). What its public zone makes,
nftables (``table inet firewalld``) or iptables (iptables-nft's ``ip filter`` chains,
decoded from iptables-nft-save, and ebtables-nft's ``bridge`` tables), is read whole: no
row is unknown for want of decoding, its rows are labelled firewalld, and what the
model says is what a prober on the machine's link meets.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from .nspawnlab import BootLab
from .test_boot import MANIFEST, Boot, apply, firewalld_running, layer, machine, verify

__all__ = ["layer", "machine"]  # the fixtures test_boot.py defines, used here too

pytestmark = pytest.mark.netns
FIREWALLD_BACKENDS = ["nftables", "iptables"]
SAMPLE = (22, 80, 443, 1000, 8443)  # ssh (firewalld allows it), web (MANIFEST), others


def firewalld(machine: Boot, backend: str) -> BootLab:
    """A machine booted with firewalld.service, on ``backend``."""
    lab = machine(("firewalld.service",))
    firewalld_running(lab)
    if backend == "iptables":
        lab.sh(
            "sed -i 's/^FirewallBackend=.*/FirewallBackend=iptables/' "
            "/etc/firewalld/firewalld.conf && systemctl restart firewalld"
        )
        firewalld_running(lab)
        tables = lab.sh("nft list tables").stdout
        assert "inet firewalld" not in tables, f"the nftables backend's table is left\n{tables}"
    settled(lab)
    return lab


def settled(lab: BootLab, tries: int = 20) -> None:
    """Wait until firewalld has written all its rules: two listings a second apart agree
    (its iptables backend goes on loading after it says it runs, and a ruleset read
    half-written is not firewalld's)."""
    listing = "nft list ruleset | sed '/counter packets/d'; iptables-save | sed '/^#/d'"
    before = lab.sh(listing).stdout
    for _ in range(tries):
        time.sleep(1.0)
        now = lab.sh(listing).stdout
        if now == before:
            return
        before = now
    raise AssertionError("firewalld's rules did not settle")


def analyze(lab: BootLab, *args: str) -> tuple[int, dict[str, Any]]:
    proc = lab.sh("harden analyze --format json " + " ".join(args), check=False)
    assert proc.returncode in (0, 1, 5), proc.stdout + proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, data


def row_for(data: dict[str, Any], family: str, proto: str, port: int) -> dict[str, Any]:
    """The input row (from any source, any interface) that holds ``port``."""
    rows: list[dict[str, Any]] = data["rows"]
    for row in rows:
        if (row["hook"], row["family"], row["proto"]) != ("input", family, proto):
            continue
        if row["sources"] != "any" or row["sports"] != "any":
            continue
        for part in row["dports"].split(","):
            low, _, high = part.partition("-")
            if int(low) <= port <= int(high or low):
                return row
    raise AssertionError(f"no row holds input {family} {proto}/{port}")


def meets(lab: BootLab, address: str, port: int) -> str:
    """What a TCP connection from the prober meets: open, rejected (an error) or silent.

    Silent only if a second try, with more time, is silent too: on a loaded machine (make
    test's workers booting containers) a first connection's SYN and its retransmission can
    both go unanswered for 2 s although nothing drops them; a drop stays silent.
    """
    code = (
        "import socket, sys\n"
        "peer, wait = (sys.argv[1], int(sys.argv[2])), float(sys.argv[3])\n"
        "try: socket.create_connection(peer, timeout=wait).close()\n"
        "except TimeoutError: print('silent')\n"
        "except ConnectionRefusedError: print('rst')\n"
        "except OSError: print('rejected')\n"
        "else: print('open')\n"
    )
    for timeout in ("2", "8"):
        proc = lab.prober.run(
            [sys.executable, "-c", code, address, str(port), timeout], check=False
        )
        if (met := proc.stdout.strip()) != "silent":
            break
    return met


# What a connection meets for each verdict: an accept answers (sshd listens on 22; a port
# nothing listens on answers with the kernel's RST), a reject errors, a drop is silent.
MEETS = {"accept": {"open", "rst"}, "reject": {"rejected", "rst"}, "drop": {"silent"}}


@pytest.mark.parametrize("backend", FIREWALLD_BACKENDS)
def test_firewalld_is_read_whole_and_the_kernel_agrees(machine: Boot, backend: str) -> None:
    """firewalld alone: its public zone accepts ssh and rejects the rest, on both families.
    Every rule is read (nothing unknown for want of decoding: firewalld's IPv6 reverse-path
    filter, nft ``fib`` or xt ``rpfilter``, passes a source plausible for its interface);
    the only row that may be unknown is its DHCPv6 rule's, which tells the host's own
    addresses apart once the link has its link-local address.
    Each sampled port's verdict is what a connection from the link meets."""
    lab = firewalld(machine, backend)
    status, data = analyze(lab)
    assert status == 0 and data["unknown"] == [], data["unknown"]
    undecided = [r for r in data["rows"] if r["verdict"] == "unknown"]
    for row in undecided:
        assert (row["family"], row["proto"], row["dports"]) == ("ipv6", "udp", "546"), json.dumps(
            row
        )
        assert all("this host's own address" in u for u in row["unknown"]), row
    for family, address in (("ipv4", lab.v4), ("ipv6", lab.v6)):
        for port in SAMPLE:
            row = row_for(data, family, "tcp", port)
            assert row["verdict"] == ("accept" if port == 22 else "reject"), (port, row)
            assert row["managers"] == ["firewalld"], row
            assert meets(lab, address, port) in MEETS[row["verdict"]], (family, port, row)


@pytest.mark.parametrize("backend", FIREWALLD_BACKENDS)
def test_firewalld_blocking_declared_ports_is_named_and_the_prober_agrees(
    machine: Boot, backend: str
) -> None:
    """harden applied beside firewalld (MANIFEST: ssh, web on 80 and 443): firewalld's
    public zone rejects the web ports harden lets through. analyze --manifest exits 1
    naming firewalld's rule for each, on both families, and nothing else; a full verify
    from the prober fails exactly those ports."""
    lab = firewalld(machine, backend)
    apply(lab, "nftables")
    status, data = analyze(lab, "--manifest", "/etc/harden/manifest.yaml")
    assert status == 1, data
    assert data["leaks"] == [], data["leaks"]
    blocked = {
        (row["family"], row["proto"], int(port))
        for row in data["blocked"]
        for port in row["dports"].split(",")
    }
    assert blocked == {(f, "tcp", p) for f in ("ipv4", "ipv6") for p in (80, 443)}, blocked
    for row in data["blocked"]:
        assert row["verdict"] == "reject" and "firewalld" in row["managers"], row
    text = lab.sh("harden analyze --manifest /etc/harden/manifest.yaml", check=False).stdout
    assert "BLOCKED: declared tcp/80,443 (input, ipv4) is rejected by rule" in text, text
    report = verify(lab)
    failed = {
        (p["family"], p["proto"], p["port"]) for p in report["ports"] if p["status"] == "fail"
    }
    assert failed == blocked, (failed, MANIFEST)
