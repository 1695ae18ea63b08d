"""The apply path against real kernels, in namespaces the tests create (needs root)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harden.apply.state import Applied, Pending, StateDir
from harden.lab.netns import Namespace, connect

from .labutil import HARDEN, write

pytestmark = pytest.mark.netns

A = """version: 1
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24, "fd00:1::/64"]}
  - {name: web, ports: [80, 443], proto: tcp}
  - {name: sink, port: 9000, proto: tcp}
"""
B = A + "  - {name: dns, port: 53, proto: [tcp, udp]}\n"
BACKENDS = ["nftables", "iptables"]
NsFactory = Callable[[str], Namespace]


def harden(ns: Namespace, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return ns.run([*HARDEN, *map(str, args)], check=False, timeout=120)


def foreign_state(ns: Namespace) -> str:
    """Everything in the namespace's firewall that is not harden's."""
    # iptables-nft keeps its tables as "ip filter"/"ip6 filter": compared via *-save below.
    skip = {"table inet harden", "table ip filter", "table ip6 filter"}
    listed = ns.run(["nft", "list", "tables"]).stdout.splitlines()
    tables = [t for t in listed if t and t not in skip]
    text = "".join(ns.run(["nft", "-j", "list", *t.split()]).stdout for t in tables)
    for tool in ("iptables-save", "ip6tables-save"):
        # Rules and chains, not the table headers: loading ip6tables rules may create the
        # (empty, default-ACCEPT) ip6 filter table, which holds nothing of anyone's.
        for line in ns.run([tool]).stdout.splitlines():
            default = line.startswith(":") and line.split()[1:2] == ["ACCEPT"]
            if line.startswith(("-A ", ":")) and "HARDEN-" not in line and not default:
                text += line + "\n"
    return text


def add_foreign(ns: Namespace) -> None:
    """A Docker-like nat table and someone else's inet filter table and iptables chain."""
    ns.run(
        [
            "nft",
            "add table ip nat; add chain ip nat pre "
            "{ type nat hook prerouting priority dstnat; }; "
            "add rule ip nat pre tcp dport 8080 dnat to 198.18.0.9:80; "
            "add table inet filter; add chain inet filter others "
            "{ type filter hook forward priority 0; policy drop; }; "
            "add rule inet filter others ct state established accept",
        ]
    )
    ns.run(["iptables", "-N", "DOCKER-USER"])
    ns.run(["iptables", "-A", "DOCKER-USER", "-s", "198.18.7.0/24", "-j", "RETURN"])
    ns.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "7777", "-j", "ACCEPT"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_idempotent_diff_status_rollback(
    backend: str, netns: NsFactory, tmp_path: Path
) -> None:
    ns = netns("ap")
    add_foreign(ns)
    foreign = foreign_state(ns)
    a, b = write(tmp_path, "a.yaml", A), write(tmp_path, "b.yaml", B)
    state = tmp_path / "state"
    common: list[str | Path] = ["--backend", backend, "--state-dir", state, "--format", "json"]

    first = harden(ns, "apply", a, *common)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["changed"] is True
    again = harden(ns, "apply", a, *common)
    assert json.loads(again.stdout)["changed"] is False
    assert harden(ns, "diff", a, "--backend", backend).returncode == 0
    drift = harden(ns, "diff", b, "--backend", backend)
    assert drift.returncode == 1 and "53" in drift.stdout

    second = harden(ns, "apply", b, *common)
    assert json.loads(second.stdout)["changed"] is True
    status = json.loads(harden(ns, "status", "--state-dir", state, "--format", "json").stdout)
    assert status["manifest"] == str(b) and status["live_matches_last_apply"] is True
    assert status["pending_confirmation"] is None
    assert status["allows"] and any("53" in allow for allow in status["allows"])
    b.write_text(b.read_text() + "\n")  # edited since the apply: what is live is unknown
    status = json.loads(harden(ns, "status", "--state-dir", state, "--format", "json").stdout)
    assert status["allows"] is None

    assert harden(ns, "rollback", "--state-dir", state).returncode == 0
    assert harden(ns, "diff", a, "--backend", backend).returncode == 0
    assert foreign_state(ns) == foreign


@pytest.mark.parametrize("backend", BACKENDS)
def test_drift_is_reported(backend: str, netns: NsFactory, tmp_path: Path) -> None:
    ns = netns("ap")
    a = write(tmp_path, "a.yaml", A)
    state = tmp_path / "state"
    assert harden(ns, "apply", a, "--backend", backend, "--state-dir", state).returncode == 0
    if backend == "nftables":
        ns.run(["nft", "insert rule inet harden input tcp dport 31337 accept"])
    else:
        ns.run(["iptables", "-I", "HARDEN-INPUT", "-p", "tcp", "--dport", "31337", "-j", "ACCEPT"])
    out = harden(ns, "diff", a, "--backend", backend, "--format", "json")
    assert out.returncode == 1
    assert "31337" in json.loads(out.stdout)["diff"]
    status = json.loads(harden(ns, "status", "--state-dir", state, "--format", "json").stdout)
    assert status["live_matches_last_apply"] is False
    # Re-applying repairs the drift.
    assert (
        json.loads(
            harden(
                ns, "apply", a, "--backend", backend, "--state-dir", state, "--format", "json"
            ).stdout
        )["changed"]
        is True
    )
    assert harden(ns, "diff", a, "--backend", backend).returncode == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_load_leaves_the_previous_rules_identical(
    backend: str, netns: NsFactory, tmp_path: Path
) -> None:
    ns = netns("ap")
    a = write(tmp_path, "a.yaml", A)
    assert harden(ns, "apply", a, "--backend", backend, "--state-dir", tmp_path).returncode == 0
    add_foreign(ns)
    listing = ["nft", "list", "ruleset"]
    before = ns.run(listing).stdout
    broken = {
        "nftables": {
            "harden.nft": "table inet harden\ndelete table inet harden\n"
            "table inet harden {\n chain input {\n  type filter hook input priority 0;"
            "\n  tcp dport 1 accept\n  tcp dport 2 frobnicate\n }\n}\n"
        },
        "iptables": {
            "harden.rules.v4": "*filter\n:HARDEN-INPUT - [0:0]\n"
            "-A HARDEN-INPUT -p tcp --dport 1 -j ACCEPT\nCOMMIT\n",
            "harden.rules.v6": "*filter\n:HARDEN-INPUT - [0:0]\n"
            "-A HARDEN-INPUT -p tcp --dport 1 -j NOSUCHCHAIN\nCOMMIT\n",
        },
    }[backend]
    code = (
        "import json, sys\nfrom harden.backends import firewall\nfrom harden.errors import "
        "ApplyError\ntry:\n    firewall(sys.argv[1]).load(json.loads(sys.argv[2]))\n"
        "except ApplyError as e:\n    print('refused:', e)\n    sys.exit(3)\n"
    )
    proc = ns.run([sys.executable, "-c", code, backend, json.dumps(broken)], check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert ns.run(listing).stdout == before


def _rolled_back(ns: Namespace, manifest: Path, backend: str) -> bool:
    return harden(ns, "diff", manifest, "--backend", backend).returncode == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_rollback_survives_kill_9_of_the_applying_process(
    backend: str, netns: NsFactory, tmp_path: Path
) -> None:
    ns = netns("ap")
    a, b = write(tmp_path, "a.yaml", A), write(tmp_path, "b.yaml", B)
    state = tmp_path / "state"
    assert harden(ns, "apply", a, "--backend", backend, "--state-dir", state).returncode == 0
    window = 3
    start = time.monotonic()
    # Its own session, like an SSH login: killing the whole group must not stop the rollback.
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns.name,
            *HARDEN,
            "apply",
            str(b),
            "--backend",
            backend,
            "--state-dir",
            str(state),
            "--confirm",
            str(window),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while not _rolled_back(ns, b, backend):  # wait until b is live
        assert time.monotonic() < deadline and proc.poll() in (None, 0)
        time.sleep(0.05)
    # On a busy machine apply may have returned already; its group is then gone, and the
    # rollback must come all the same (kills at every instant: tests/test_apply_trust.py).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while not _rolled_back(ns, a, backend):
        assert time.monotonic() - start < window + 5, "no rollback within the window"
        time.sleep(0.05)
    delay = time.monotonic() - start
    print(f"\n{backend}: rolled back {delay:.2f} s after apply started (window {window} s)")
    assert delay >= window - 0.5
    status = json.loads(harden(ns, "status", "--state-dir", state, "--format", "json").stdout)
    assert status["pending_confirmation"] is None
    assert status["history"][-1]["event"] == "rolled back"
    # The text says so too: which apply, when, and why.
    text = harden(ns, "status", "--state-dir", state).stdout
    assert f"last:     apply of {b} rolled back at " in text, text
    # Too late: a confirm now must not pretend the rolled-back rules were kept.
    late = harden(ns, "confirm", "--state-dir", state)
    assert late.returncode == 2 and "nothing to confirm" in late.stderr
    assert text.rstrip().splitlines()[5].endswith(": not confirmed in time"), text


def test_status_finds_a_manifest_applied_by_a_relative_path(
    netns: NsFactory, tmp_path: Path
) -> None:
    """The state records the manifest absolute: status from elsewhere still reads it."""
    ns = netns("ap")
    write(tmp_path, "a.yaml", A)
    state = tmp_path / "state"
    script = (
        f"cd {tmp_path} && {' '.join(map(str, HARDEN))} apply a.yaml --state-dir {state} && "
        f"cd / && {' '.join(map(str, HARDEN))} status --state-dir {state} --format json"
    )
    proc = ns.run(["sh", "-c", script])
    status = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert status["manifest"] == str(tmp_path / "a.yaml")
    assert status["allows"], status  # not "unknown": the file was found and matched


def test_persist_writes_boot_files_even_when_unchanged(netns: NsFactory, tmp_path: Path) -> None:
    ns = netns("ap")
    a = write(tmp_path, "a.yaml", A)
    state, root = tmp_path / "state", tmp_path / "root"
    assert harden(ns, "apply", a, "--state-dir", state).returncode == 0
    out = harden(
        ns, "apply", a, "--state-dir", state, "--persist", "--root", root, "--format", "json"
    )
    result = json.loads(out.stdout)
    assert result["changed"] is False
    assert str(root / "etc/harden/harden.nft") in result["persisted"]
    unit = (root / "etc/systemd/system/harden.service").read_text()
    assert "ExecStart=/usr/sbin/nft -f /etc/harden/harden.nft" in unit
    assert (root / "etc/systemd/system/sysinit.target.wants/harden.service").is_symlink()


def test_confirm_cancels_the_rollback(netns: NsFactory, tmp_path: Path) -> None:
    ns = netns("ap")
    a, b = write(tmp_path, "a.yaml", A), write(tmp_path, "b.yaml", B)
    state = tmp_path / "state"
    assert harden(ns, "apply", a, "--state-dir", state).returncode == 0
    # A window long enough for two more commands on a busy machine (each starts Python).
    out = harden(ns, "apply", b, "--state-dir", state, "--confirm", "6", "--format", "json")
    assert json.loads(out.stdout)["confirm_deadline"] is not None
    # A second apply while a confirmation is pending is refused.
    assert harden(ns, "apply", a, "--state-dir", state).returncode == 2
    assert harden(ns, "confirm", "--state-dir", state).returncode == 0
    time.sleep(7)
    assert _rolled_back(ns, b, "nftables")  # b stayed
    # Nothing pending, and the last apply stayed: confirming again is harmless.
    again = harden(ns, "confirm", "--state-dir", state)
    assert again.returncode == 0 and "nothing was waiting" in again.stdout


@pytest.mark.alone  # a CPU starved by other tests retransmits by itself
def test_established_flow_survives_reapplies(netns: NsFactory, tmp_path: Path) -> None:
    """A TCP stream keeps flowing, without retransmissions, across 12 re-applies."""
    server, client = netns("sv"), netns("cl")
    connect(server, client, ["198.18.0.1/24"], ["198.18.0.2/24"])
    a, b = write(tmp_path, "a.yaml", A), write(tmp_path, "b.yaml", B)
    state = tmp_path / "state"
    assert harden(server, "apply", a, "--state-dir", state).returncode == 0
    sink = subprocess.Popen(
        ["ip", "netns", "exec", server.name, sys.executable, "-c", SINK],
        stdout=subprocess.PIPE,
        text=True,
    )
    client_proc: subprocess.Popen[str] | None = None
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        retrans_before = _retransmits(client)
        stop = tmp_path / "stop"
        client_proc = subprocess.Popen(
            ["ip", "netns", "exec", client.name, sys.executable, "-c", STREAM, str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        applies = 0
        while client_proc.poll() is None and applies < 12:
            manifest = b if applies % 2 == 0 else a
            out = harden(server, "apply", manifest, "--state-dir", state, "--format", "json")
            assert json.loads(out.stdout)["changed"] is True
            applies += 1
        stop.touch()  # the stream ends after the re-applies, however long they took
        sent = int(client_proc.communicate(timeout=30)[0].strip())
        received = int((sink.communicate(timeout=10)[0] or "0").strip())
    finally:
        for proc in (client_proc, sink):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert applies == 12
    assert received == sent > 0
    lost = _retransmits(client) - retrans_before
    print(f"\n{applies} re-applies during the stream: {received} bytes, {lost} retransmits")
    assert lost == 0


STREAM = """
import os, socket, sys, time
conn = socket.create_connection(("198.18.0.1", 9000))
chunk, sent, end = b"x" * 8192, 0, time.monotonic() + 60
while time.monotonic() < end and not os.path.exists(sys.argv[1]):
    conn.sendall(chunk)
    sent += len(chunk)
    time.sleep(0.001)
conn.close()
print(sent, flush=True)
"""

SINK = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
n = 0
while d := c.recv(65536):
    n += len(d)
print(n, flush=True)
"""


def _retransmits(ns: Namespace) -> int:
    for line in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines():
        if line.startswith("Tcp:") and "RetransSegs" not in line:
            names = next(
                x
                for x in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
                if x.startswith("Tcp:") and "RetransSegs" in x
            ).split()
            return int(line.split()[names.index("RetransSegs")])
    raise AssertionError("no Tcp line in /proc/net/snmp")


def test_status_after_an_apply_killed_before_its_load_shows_what_is_live(
    netns: NsFactory, tmp_path: Path
) -> None:
    """The record says B was being applied; the kernel still holds A: status shows A's ports."""
    ns = netns("ap")
    a, b = write(tmp_path, "a.yaml", A), write(tmp_path, "b.yaml", B)
    state = tmp_path / "state"
    assert harden(ns, "apply", a, "--state-dir", state).returncode == 0
    states = StateDir(state)
    with states.locked():
        before = states.load()
        killed = Applied("nftables", str(b), "sha-b", "rules-b", time.time(), "live-b-never")
        states.save(before.applied(killed, Pending("tok", None)))  # recorded, never loaded
    status = json.loads(harden(ns, "status", "--state-dir", state, "--format", "json").stdout)
    assert status["interrupted"] is True and status["manifest"] == str(b)
    assert status["allows"] is not None and not any("53" in rule for rule in status["allows"])
    assert any("9000" in rule for rule in status["allows"])  # A's ports: what is live


LIMITED = """version: 1
policy: {ipv6: false}
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.31.0/24], limit: 5/minute}
"""


def test_limit_meters_are_state_not_drift(netns: NsFactory, tmp_path: Path) -> None:
    """Every login adds its source to the meter: not drift, kept by a re-apply, and only
    sources the service allows are metered."""
    server, allowed, stranger = netns("ls"), netns("la"), netns("lx")
    connect(server, allowed, ["198.18.31.1/24"], ["198.18.31.2/24"])
    connect(server, stranger, ["198.18.32.1/24"], ["198.18.32.2/24"])
    manifest, state = write(tmp_path, "limited.yaml", LIMITED), tmp_path / "state"
    assert harden(server, "apply", manifest, "--state-dir", state).returncode == 0
    knock = (
        "import socket\n"
        "try: socket.create_connection(({!r}, 22), timeout=0.5)\n"
        "except OSError: pass\n"
    )
    allowed.run([sys.executable, "-c", knock.format("198.18.31.1")])
    stranger.run([sys.executable, "-c", knock.format("198.18.32.1")])
    meter = server.run(["nft", "list", "set", "inet", "harden", "ssh_tcp_limit_v4"]).stdout
    assert "198.18.31.2" in meter and "198.18.32.2" not in meter, meter
    assert harden(server, "diff", manifest).returncode == 0  # meters are not drift
    again = harden(server, "apply", manifest, "--state-dir", state, "--format", "json")
    assert json.loads(again.stdout)["changed"] is False
    meter = server.run(["nft", "list", "set", "inet", "harden", "ssh_tcp_limit_v4"]).stdout
    assert "198.18.31.2" in meter  # a re-apply of the same manifest keeps them
    # The CM pattern: apply with a window, verify, confirm; the apply changed nothing.
    assert (
        harden(server, "apply", manifest, "--state-dir", state, "--confirm", "30").returncode == 0
    )
    confirmed = harden(server, "confirm", "--state-dir", state)
    assert confirmed.returncode == 0, confirmed.stderr
