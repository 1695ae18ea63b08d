"""Egress against the real kernel: apply in a namespace, prove it from both ends with a sink.

The hardened host and the sink are namespaces joined by a veth pair. ``harden verify
--egress`` runs in the host, the sink command is ``harden sink`` in the sink namespace.
Needs root.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harden.lab.netns import Namespace, connect

from .labutil import HARDEN, write

pytestmark = pytest.mark.netns

NsFactory = Callable[[str], Namespace]
HOST4, SINK4, OTHER4 = "198.18.71.1", "198.18.71.2", "198.18.71.3"
HOST6, SINK6 = "fd00:71::1", "fd00:71::2"
PORTS = "1-500,4444,8000-8100"

MANIFEST = """\
version: 1
services:
  - {name: ssh, port: 22, proto: tcp}
egress:
  policy: %s
  allow:
    - {name: dns, destinations: [%s/32, "%s/128"], port: 53, proto: [udp, tcp]}
    - {name: web, destinations: [198.18.71.2/32], ports: [80, 443], proto: tcp}
    - {name: ntp, port: 123, proto: udp}
"""


def pair(netns: NsFactory) -> tuple[Namespace, Namespace]:
    host, sink = netns("eh"), netns("es")
    connect(
        host,
        sink,
        [f"{HOST4}/24", f"{HOST6}/64"],
        [f"{SINK4}/24", f"{OTHER4}/24", f"{SINK6}/64"],
    )
    return host, sink


def apply(host: Namespace, tmp: Path, text: str, backend: str) -> Path:
    manifest = write(tmp, f"egress-{backend}.yaml", text)
    proc = host.run(
        [*HARDEN, "apply", manifest, "--backend", backend, "--state-dir", tmp / "state"],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return manifest


def verify(
    host: Namespace, sink: Namespace, manifest: Path, *sinks: str, ports: str = PORTS
) -> tuple[int, dict[str, Any]]:
    command = f"ip netns exec {sink.name} {' '.join(HARDEN)} sink --from {{sources}}"
    args = [*HARDEN, "verify", "--egress", str(manifest), "--sink-command", command]
    for address in sinks:
        args += ["--sink", address]
    proc = host.run([*args, "--ports", ports, "--format", "json"], check=False, timeout=300)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def allowed(report: dict[str, Any]) -> dict[tuple[str, str, int], str]:
    return {
        (p["target"], p["proto"], p["port"]): p["observed"]
        for p in report["ports"]
        if p["expected"] == "allowed"
    }


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_declared_egress_arrives_and_everything_else_is_refused(
    netns: NsFactory, tmp_path: Path, backend: str
) -> None:
    host, sink = pair(netns)
    manifest = apply(host, tmp_path, MANIFEST % ("drop", SINK4, SINK6), backend)
    code, report = verify(host, sink, manifest, SINK4, SINK6)
    assert report["verdict"] == "pass" and code == 0, report
    seen = allowed(report)
    assert seen == {
        (SINK4, "tcp", 53): "arrived",
        (SINK4, "udp", 53): "arrived",
        (SINK4, "tcp", 80): "arrived",
        (SINK4, "tcp", 443): "arrived",
        (SINK4, "udp", 123): "arrived",
        (SINK6, "tcp", 53): "arrived",
        (SINK6, "udp", 53): "arrived",
        (SINK6, "udp", 123): "arrived",
    }
    blocked = {(s["target"], s["proto"]): s["count"] for s in report["conforming"]}
    total = 500 + 1 + 101
    assert blocked == {
        (SINK4, "tcp"): total - 3,
        (SINK4, "udp"): total - 2,
        (SINK6, "tcp"): total - 1,
        (SINK6, "udp"): total - 2,
    }


def test_a_sink_outside_every_destination_shows_everything_blocked(
    netns: NsFactory, tmp_path: Path
) -> None:
    """Only ntp (any destination) may reach 198.18.71.3: the rest to it is refused."""
    host, sink = pair(netns)
    manifest = apply(host, tmp_path, MANIFEST % ("reject", SINK4, SINK6), "nftables")
    code, report = verify(host, sink, manifest, OTHER4)
    assert code == 0, report
    assert allowed(report) == {(OTHER4, "udp", 123): "arrived"}
    assert report["alive"][OTHER4]


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_leak_in_the_output_path_fails(netns: NsFactory, tmp_path: Path, backend: str) -> None:
    """The live rules allow tcp/4444 out; the manifest does not: FAIL, port named."""
    host, sink = pair(netns)
    leaky = MANIFEST % ("drop", SINK4, SINK6) + (
        "    - {name: shell, destinations: [198.18.71.2/32], port: 4444, proto: tcp}\n"
    )
    apply(host, tmp_path, leaky, backend)
    manifest = write(tmp_path, "declared.yaml", MANIFEST % ("drop", SINK4, SINK6))
    code, report = verify(host, sink, manifest, SINK4)
    assert code == 1 and report["verdict"] == "fail", report
    [leak] = [p for p in report["ports"] if p["status"] == "fail"]
    assert (leak["proto"], leak["port"], leak["observed"]) == ("tcp", 4444, "sent")


def test_no_egress_policy_lets_everything_out_and_a_drop_manifest_fails(
    netns: NsFactory, tmp_path: Path
) -> None:
    host, sink = pair(netns)
    apply(host, tmp_path, "version: 1\nservices: [{name: ssh, port: 22, proto: tcp}]\n", "nftables")
    manifest = write(tmp_path, "declared.yaml", MANIFEST % ("drop", SINK4, SINK6))
    code, report = verify(host, sink, manifest, SINK4, ports="4440-4450")
    assert code == 1
    assert {p["port"] for p in report["ports"] if p["status"] == "fail"} == set(range(4440, 4451))
    accept = write(tmp_path, "accept.yaml", "version: 1\n")
    code, report = verify(host, sink, accept, SINK4, ports="4440-4450")
    assert code == 0 and len(allowed(report)) == 22, report


def test_a_sink_that_hears_nothing_is_inconclusive(netns: NsFactory, tmp_path: Path) -> None:
    """The sink captures only another sender's packets: absence there proves nothing."""
    host, sink = pair(netns)
    manifest = apply(host, tmp_path, "version: 1\negress: {policy: drop}\n", "nftables")
    command = f"ip netns exec {sink.name} {' '.join(HARDEN)} sink --from 198.18.71.99"
    proc = host.run(
        [
            *HARDEN,
            "verify",
            "--egress",
            str(manifest),
            "--sink",
            SINK4,
            "--sink-command",
            command,
            "--ports",
            "1-100",
            "--format",
            "json",
        ],
        check=False,
        timeout=120,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 5 and report["verdict"] == "inconclusive", report


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_an_established_ssh_session_survives_an_egress_apply(
    netns: NsFactory, tmp_path: Path, backend: str
) -> None:
    """A real sshd in the host namespace; a session from the sink keeps working after the
    host applies egress drop (replies are established traffic), and new outbound
    connections from the host are refused."""
    sshd = Path("/usr/sbin/sshd")
    if not sshd.exists():
        pytest.skip("openssh-server is not installed (make install adds it)")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    host, sink = pair(netns)
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "host"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "user"], check=True)
    (keys / "authorized_keys").write_text((keys / "user.pub").read_text())
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port 22\nListenAddress {HOST4}\nHostKey {keys / 'host'}\nPidFile none\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\n"
    )
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", host.name, str(sshd), "-D", "-e", "-f", str(config)],
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(host, HOST4, 22)
        session = subprocess.Popen(
            [
                "ip", "netns", "exec", sink.name, "ssh", "-T", "-i", str(keys / "user"),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", f"root@{HOST4}", "while read line; do echo got $line; done",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert session.stdin is not None and session.stdout is not None
        session.stdin.write("before\n")
        session.stdin.flush()
        assert session.stdout.readline() == "got before\n"
        apply(host, tmp_path, MANIFEST % ("reject", SINK4, SINK6), backend)
        session.stdin.write("after\n")
        session.stdin.flush()
        assert session.stdout.readline() == "got after\n"  # the session survived
        refused = host.run(
            ["bash", "-c", f"exec 3<>/dev/tcp/{SINK4}/4444"], check=False, timeout=20
        )
        # Refused at once by the egress reject (admin-prohibited: EHOSTUNREACH), not by the
        # sink's kernel (nothing listens there: that would be "Connection refused").
        assert refused.returncode != 0 and "No route to host" in refused.stderr, refused.stderr
        session.stdin.close()
        session.wait(timeout=10)
    finally:
        daemon.kill()
        daemon.wait()


def _wait_for_port(ns: Namespace, address: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = ns.run(["bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"], check=False, timeout=5)
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {address}:{port}")


def test_sink_reports_arrivals_as_json(netns: NsFactory) -> None:
    """harden sink alone: ready line, then what arrived, ports compressed to ranges."""
    host, sink = pair(netns)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", sink.name, *HARDEN, "sink", "--from", HOST4],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "harden sink: capturing"
    script = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for p in (5, 6, 7, 9): s.sendto(b'', ('{SINK4}', p))\n"
    )
    host.run(["python3", "-I", "-c", script])
    out, _ = proc.communicate(input="", timeout=30)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["schema"] == "harden.sink/1"
    assert report["arrived"] == {SINK4: {"udp": ["5-7", "9"]}}
    assert report["senders"] == [HOST4]
    assert socket.inet_aton(HOST4)  # the address the report names is the host's


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_egress_comes_and_goes_with_reapply_and_rollback_without_drift(
    netns: NsFactory, tmp_path: Path, backend: str
) -> None:
    host, _ = pair(netns)
    state = tmp_path / "state"
    egress = write(tmp_path, "egress.yaml", MANIFEST % ("drop", SINK4, SINK6))
    plain = write(
        tmp_path, "plain.yaml", "version: 1\nservices: [{name: ssh, port: 22, proto: tcp}]\n"
    )

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        state_dir = [] if args[0] == "diff" else ["--state-dir", str(state)]
        return host.run([*HARDEN, *map(str, args), *state_dir], check=False)

    def output_rules() -> str:
        if backend == "nftables":
            return host.run(
                ["nft", "list", "chain", "inet", "harden", "output"], check=False
            ).stdout
        saved = (
            host.run(["iptables-save", "-t", "filter"]).stdout
            + host.run(["ip6tables-save", "-t", "filter"]).stdout
        )
        return "\n".join(line for line in saved.splitlines() if not line.startswith("#"))

    assert run("apply", egress, "--backend", backend).returncode == 0
    assert run("diff", egress, "--backend", backend).returncode == 0  # no drift
    live = output_rules()
    assert (
        "policy drop" in live
        if backend == "nftables"
        else live.count("-A OUTPUT -j HARDEN-OUTPUT") == 2
    )
    assert run("apply", plain, "--backend", backend, "--confirm", "60").returncode == 0
    assert "HARDEN-OUTPUT" not in output_rules() and "policy drop" not in output_rules()
    assert run("rollback").returncode == 0
    assert output_rules() == live  # the egress chain and its jumps are back
    assert run("diff", egress, "--backend", backend).returncode == 0


def test_the_python_api_verifies_egress_too(netns: NsFactory, tmp_path: Path) -> None:
    host, sink = pair(netns)
    manifest = apply(host, tmp_path, MANIFEST % ("drop", SINK4, SINK6), "nftables")
    command = f"ip netns exec {sink.name} {' '.join(HARDEN)} sink --from {{sources}}"
    script = (
        "import json, sys\nfrom harden import api\n"
        "print(json.dumps(api.verify_egress(sys.argv[1], [sys.argv[2]], sys.argv[3], "
        "ports='50-60')))"
    )
    proc = host.run([HARDEN[0], "-c", script, str(manifest), SINK4, command], timeout=120)
    report = json.loads(proc.stdout)
    assert report["verdict"] == "pass" and report["mode"] == "egress"
    assert allowed(report) == {(SINK4, "tcp", 53): "arrived", (SINK4, "udp", 53): "arrived"}


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_persisted_egress_loads_at_boot_as_the_unit_runs_it(
    netns: NsFactory, tmp_path: Path, backend: str
) -> None:
    """The boot unit's commands, run in a fresh namespace as systemd would at boot
    (their /etc/harden pointed at the --root copy), restore the egress chain and, on
    iptables, OUTPUT's jump to it."""
    host, booted = netns("eb"), netns("ef")
    manifest = write(tmp_path, "m.yaml", MANIFEST % ("reject", SINK4, SINK6))
    root = tmp_path / "root"
    args: list[str | Path] = [*HARDEN, "apply", manifest, "--backend", backend]
    args += ["--state-dir", tmp_path / "st", "--persist", "--root", root]
    assert host.run(args, check=False).returncode == 0
    unit = (root / "etc/systemd/system/harden.service").read_text()
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            command = line.removeprefix("ExecStart=").replace("/etc/harden", f"{root}/etc/harden")
            booted.run(["sh", "-c", command.replace("/bin/sh -c ", "", 1).strip("'")])
    if backend == "nftables":
        live = booted.run(["nft", "list", "chain", "inet", "harden", "output"]).stdout
        assert "policy drop" in live and "reject with icmpx admin-prohibited" in live
    else:
        for tool in ("iptables-save", "ip6tables-save"):
            saved = booted.run([tool, "-t", "filter"]).stdout
            assert "-A OUTPUT -j HARDEN-OUTPUT" in saved, saved
            assert "-A HARDEN-OUTPUT -j REJECT" in saved


def test_without_root_both_ends_say_so_in_one_line(tmp_path: Path) -> None:
    manifest = write(tmp_path, "m.yaml", MANIFEST % ("drop", SINK4, SINK6))
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    sink = subprocess.run(
        [*nobody, *HARDEN, "sink", "--duration", "1"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd="/",
    )
    assert sink.returncode == 4 and "run it as root" in sink.stderr, sink.stderr
    assert len(sink.stderr.splitlines()) == 1
    refused = subprocess.run(
        [
            *HARDEN,
            "verify",
            "--egress",
            str(manifest),
            "--sink",
            "127.0.0.2",
            "--sink-command",
            "true",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("harden: error: --sink: 127.0.0.2 is a loopback address")


# One real exchange per line of argv ("tcp|udp ADDRESS PORT"), 2 s each at most: a TCP
# connect (the responder accepts) or a UDP request and its echoed reply. Prints one outcome
# per exchange: ok, timeout, or the errno's name.
TALK = """
import errno, json, socket, sys
out = []
for spec in sys.argv[1:]:
    proto, address, port = spec.split()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(2)
        try:
            if proto == "tcp":
                s.connect((address, int(port)))
            else:
                s.sendto(b"harden", (address, int(port)))
                assert s.recvfrom(64)[0] == b"harden"
            out.append("ok")
        except TimeoutError:
            out.append("timeout")
        except OSError as e:
            out.append(errno.errorcode.get(e.errno or 0, repr(e)))
print(json.dumps(out))
"""


def talk(host: Namespace, *exchanges: tuple[str, str, int]) -> dict[tuple[str, str, int], str]:
    """Outcome of each real (proto, address, port) exchange from ``host``."""
    specs = [f"{proto} {address} {port}" for proto, address, port in exchanges]
    proc = host.run(["python3", "-I", "-c", TALK, *specs], timeout=60)
    return dict(zip(exchanges, json.loads(proc.stdout), strict=True))


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_real_connections_reach_declared_ports_only(
    netns: NsFactory,
    in_netns: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
    backend: str,
) -> None:
    """Real sockets, not probes: from the hardened host, a TCP connect and a UDP
    request/reply to dns (tcp/53, udp/53, declared to SINK4 and SINK6) succeed over IPv4
    and IPv6; to tcp/8080 and udp/5353 on the same listener, same addresses, they fail:
    the connect times out (drop: the SYN never leaves) and sendto fails with EPERM."""
    host, sink = pair(netns)
    serve = [HARDEN[0], "-I", "-m", "harden.lab.responder", "--tcp", "53,8080"]
    in_netns(sink, *serve, "--udp", "53,5353", "--lifetime", "60")
    declared = [(proto, a, 53) for a in (SINK4, SINK6) for proto in ("tcp", "udp")]
    undeclared = [(p, a, n) for a in (SINK4, SINK6) for p, n in (("tcp", 8080), ("udp", 5353))]
    # Before the apply every exchange succeeds: the listener answers on all four ports.
    assert talk(host, *declared, *undeclared) == dict.fromkeys([*declared, *undeclared], "ok")
    apply(host, tmp_path, MANIFEST % ("drop", SINK4, SINK6), backend)
    assert talk(host, *declared) == dict.fromkeys(declared, "ok")
    refused = talk(host, *undeclared)
    for (proto, address, port), outcome in refused.items():
        if proto == "udp":
            assert outcome == "EPERM", (address, port, outcome)
        else:  # drop: the kernel takes a refused SYN for a lost one and retransmits
            assert outcome == "timeout", (address, port, outcome)
