"""harden analyze and explain against real kernels: the three cases a sweep cannot see.

Each namespace gets harden's real ruleset (harden apply), then what an operator or
another tool adds: a source-port accept inside harden's own table, a uid-keyed accept in
its output chain, another table whose rule or policy drops a declared port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from harden.lab.netns import Namespace, connect

from .conftest import REPO
from .dockerlab import docker_lab
from .kubelab import kube_node
from .labutil import HARDEN

pytestmark = pytest.mark.netns

WEB = REPO / "rulesets" / "web-server.yaml"
EGRESS = REPO / "rulesets" / "egress-host.yaml"
NsFactory = Callable[[str], Namespace]


def harden(ns: Namespace, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return ns.run([*HARDEN, *map(str, args)], check=False, timeout=120)


def applied(netns: NsFactory, manifest: Path, tmp_path: Path) -> Namespace:
    ns = netns("an")
    proc = harden(
        ns, "apply", manifest, "--state-dir", tmp_path / "state", "--no-persist", "--root", tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    return ns


def analyze(ns: Namespace, *args: str | Path) -> tuple[int, dict[str, Any]]:
    proc = harden(ns, "analyze", "--format", "json", *args)
    assert proc.returncode in (0, 1, 5), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def handle(ns: Namespace, family_table: str, chain: str, needle: str) -> int:
    """The handle nft gave the rule whose text contains ``needle``."""
    listing = ns.run(["nft", "-a", "list", "chain", *family_table.split(), chain]).stdout
    line = next(line for line in listing.splitlines() if needle in line)
    return int(line.rsplit("# handle ", 1)[1])


def test_the_applied_manifest_is_exactly_what_the_live_rules_give(
    netns: NsFactory, tmp_path: Path
) -> None:
    ns = applied(netns, WEB, tmp_path)
    code, data = analyze(ns, "--manifest", WEB)
    assert (code, data["leaks"], data["blocked"]) == (0, [], [])
    assert data["schema"] == "harden.analysis/1"
    accepted = {(r["family"], r["proto"], r["dports"]) for r in data["rows"]}
    assert ("ipv4", "tcp", "80,443") in accepted and ("ipv6", "tcp", "80,443") in accepted


def test_a_source_port_accept_in_hardens_own_table_is_a_static_leak(
    netns: NsFactory, tmp_path: Path
) -> None:
    """tcp sport 53 accept: any port answers whoever connects from port 53; a sweep from a
    random high source port never sees it."""
    ns = applied(netns, WEB, tmp_path)
    ns.run(["nft", "insert rule inet harden input tcp sport 53 accept"])
    rule = handle(ns, "inet harden", "input", "tcp sport 53 accept")
    code, data = analyze(ns, "--manifest", WEB)
    assert code == 1
    leaks = [r for r in data["leaks"] if r["sports"] == "53"]
    assert {r["family"] for r in leaks} == {"ipv4", "ipv6"}
    assert all(r["verdict"] == "accept" and r["dports"].startswith("1-") for r in leaks)
    assert all(r["rules"][0]["handle"] == rule for r in leaks)
    text = harden(ns, "analyze", "--manifest", WEB).stdout
    assert "LEAK: input ipv4 tcp dport " in text and f"#{rule} (tcp sport == 53 accept)" in text


def test_a_uid_keyed_accept_in_the_output_chain_is_a_static_leak(
    netns: NsFactory, tmp_path: Path
) -> None:
    """meta skuid 65534 accept: user nobody reaches any destination; verify --egress, whose
    probes are root's, passes."""
    ns = applied(netns, EGRESS, tmp_path)
    code, data = analyze(ns, "--manifest", EGRESS)
    assert (code, data["leaks"]) == (0, [])
    ns.run(["nft", "insert rule inet harden output meta skuid 65534 accept"])
    code, data = analyze(ns, "--manifest", EGRESS)
    assert code == 1
    leaks = [r for r in data["leaks"] if r["hook"] == "output"]
    assert leaks and all("meta skuid" in r["keyed_on"] for r in leaks)
    assert {(r["family"], r["proto"]) for r in leaks} >= {("ipv4", "tcp"), ("ipv6", "udp")}
    assert any(r["dports"] == "1-65535" for r in leaks)


def test_another_tables_rule_or_policy_dropping_a_declared_port_is_named(
    netns: NsFactory, tmp_path: Path
) -> None:
    ns = applied(netns, WEB, tmp_path)
    ns.run(
        [
            "nft",
            "add table ip other; add chain ip other in "
            "{ type filter hook input priority 10; policy accept; }; "
            "add rule ip other in tcp dport 443 drop",
        ]
    )
    rule = handle(ns, "ip other", "in", "tcp dport 443 drop")
    code, data = analyze(ns, "--manifest", WEB)
    assert code == 1
    [blocked] = data["blocked"]
    assert (blocked["family"], blocked["proto"], blocked["dports"]) == ("ipv4", "tcp", "443")
    assert blocked["rules"][-1] == {
        "table": "ip other", "chain": "in", "handle": rule, "rule": "tcp dport == 443 drop"
    }  # fmt: skip
    text = harden(ns, "analyze", "--manifest", WEB).stdout
    assert (
        f"BLOCKED: declared tcp/443 (input, ipv4) is dropped by rule {rule} of ip other in" in text
    )
    # A default-deny policy with no allow for the declared ports (ufw's "default deny").
    ns.run(["nft", "delete table ip other"])
    ns.run(
        [
            "nft",
            "add table ip6 strict; add chain ip6 strict in "
            "{ type filter hook input priority 10; policy drop; }; "
            "add rule ip6 strict in tcp dport 22 accept",
        ]
    )
    code, data = analyze(ns, "--manifest", WEB)
    assert code == 1
    blocked = {(r["family"], r["proto"], r["dports"]) for r in data["blocked"]}
    assert ("ipv6", "tcp", "80,443") in blocked and ("ipv4", "tcp", "80,443") not in blocked
    text = harden(ns, "analyze", "--manifest", WEB).stdout
    assert "is dropped by the policy of ip6 strict in" in text


def test_explain_gives_the_path_of_an_accepted_and_a_dropped_packet(
    netns: NsFactory, tmp_path: Path
) -> None:
    ns = applied(netns, WEB, tmp_path)
    proc = harden(ns, "explain", "tcp/443", "--from", "203.0.113.9", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["verdict"] == "accept"
    assert data["path"][0]["table"] == "inet harden"
    assert data["path"][0]["rule"] == "tcp dport == @tcp_ports accept"
    proc = harden(ns, "explain", "tcp/8080", "--from", "2001:db8::9", "--format", "json")
    data = json.loads(proc.stdout)
    assert data["verdict"] == "drop" and data["packet"]["family"] == "ipv6"
    assert data["path"][-1]["table"] == "inet harden"
    text = harden(ns, "explain", "udp/53", "--from", "203.0.113.9").stdout
    assert text.rstrip().endswith("udp/53 from 203.0.113.9 (sport 40000, eth0): DROP")


def test_a_rule_the_model_cannot_read_leaves_its_cells_unknown_never_guessed(
    netns: NsFactory, tmp_path: Path
) -> None:
    ns = applied(netns, WEB, tmp_path)
    ns.run(["nft", "insert rule inet harden input tcp dport 8080 meta cpu 0 accept"])
    code, data = analyze(ns, "--manifest", WEB)
    assert code == 5
    [row] = [r for r in data["rows"] if r["dports"] == "8080" and r["family"] == "ipv4"]
    assert row["verdict"] == "unknown" and any("meta cpu" in u for u in row["unknown"])
    # A rate limit is not unknown: a slow enough sender passes it, so it is a leak.
    ns.run(["nft", "insert rule inet harden input tcp dport 8081 limit rate 1/second accept"])
    code, data = analyze(ns, "--manifest", WEB)
    [leak] = [r for r in data["leaks"] if r["dports"] == "8081" and r["family"] == "ipv4"]
    assert leak["verdict"] == "accept" and any("limit" in k for k in leak["keyed_on"])


def test_bad_explain_input_is_one_line_and_exit_2(netns: NsFactory) -> None:
    ns = netns("an")
    for args, needle in (
        (["tcp-22", "--from", "198.18.0.1"], "PROTO/PORT"),
        (["tcp/0", "--from", "198.18.0.1"], "port"),
        (["tcp/22"], "--from"),
        (["tcp/22", "--from", "nowhere"], "not an IP address"),
    ):
        proc = harden(ns, "explain", *args)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_ufws_stock_dhcp_rule_is_shown_and_the_kernel_agrees(
    netns: NsFactory, tmp_path: Path
) -> None:
    """ufw's before.rules accept udp/68 from source port 67, from any address: a sweep
    from a random source port never sees it. analyze shows the row (its rules decoded from
    iptables-nft-save), and a packet from port 67 does arrive, one from another port not."""
    if shutil.which("ufw") is None:
        pytest.skip("ufw is not installed (make install adds it)")
    host, outside = netns("uf"), netns("uo")
    connect(host, outside, ["198.18.63.1/24"], ["198.18.63.2/24"])
    etc = tmp_path / "ufw"
    shutil.copytree("/etc/ufw", etc, symlinks=True)
    host.run(["unshare", "-m", "sh", "-c", f"mount --bind {etc} /etc/ufw && ufw --force enable"])
    code, data = analyze(host, "--hook", "input")
    assert code == 0
    key = ("ipv4", "udp", "68")
    [dhcp] = [r for r in data["rows"] if (r["family"], r["proto"], r["dports"]) == key]
    assert (dhcp["sports"], dhcp["sources"], dhcp["verdict"]) == ("67", "any", "accept")
    assert "ufw" in dhcp["managers"]
    assert "udp sport == 67 udp dport == 68" in dhcp["rules"][-1]["rule"]
    assert all("xt" not in r.get("unknown", "") for r in data["rows"] if r["family"] == "ipv4")
    assert arrives(host, outside, sport=67) and not arrives(host, outside, sport=40067)


def arrives(host: Namespace, outside: Namespace, *, sport: int) -> bool:
    """Whether a datagram from ``sport`` to udp/68 reaches a socket on the host."""
    listen = (
        "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.bind(('198.18.63.1', 68)); s.settimeout(3)\n"
        "try: s.recv(64); print('got')\nexcept OSError: print('none')"
    )
    send = (
        "import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('198.18.63.2', {sport}))\n"
        "for _ in range(5): s.sendto(b'x', ('198.18.63.1', 68)); time.sleep(0.2)"
    )
    with subprocess.Popen(
        ["ip", "netns", "exec", host.name, sys.executable, "-c", listen],
        stdout=subprocess.PIPE,
        text=True,
    ) as receiver:
        time.sleep(0.5)
        outside.run([sys.executable, "-c", send])
        out, _ = receiver.communicate(timeout=10)
    return out.strip() == "got"


def test_a_published_docker_port_is_judged_through_forward_and_the_kernel_agrees(
    netns: NsFactory, tmp_path: Path
) -> None:
    """Docker's DNAT sends tcp/8080 and tcp/8443 to containers: the model follows them
    through forward (judged by the port they were sent to). Docker alone accepts both;
    with harden's docker-host.yaml only the declared 8443 stays open. A connection from
    outside agrees each time."""
    with docker_lab(netns, tmp_path, "198.19.61.1", "198.19.61.2") as (d, outside):
        d.publish(8080)
        d.publish(8443)
        code, data = analyze(d.ns, "--hook", "input")
        assert code == 0
        assert verdict(data, "8080") == verdict(data, "8443") == "accept"
        [row] = [r for r in data["rows"] if r["dports"] == "8080" and r["iifname"] == "any"]
        assert "Docker" in row["managers"]
        assert any("-j DNAT --to-destination 198.19.77." in r["rule"] for r in row["rules"])
        assert reaches(outside, 8080) and reaches(outside, 8443)
        state: list[str | Path] = ["--state-dir", tmp_path / "state", "--no-persist"]
        state += ["--root", tmp_path]  # boot files: never the machine's own
        proc = harden(d.ns, "apply", REPO / "rulesets" / "docker-host.yaml", *state)
        assert proc.returncode == 0, proc.stderr
        code, data = analyze(d.ns, "--hook", "input")
        assert (verdict(data, "8080"), verdict(data, "8443")) == ("drop", "accept")
        assert not reaches(outside, 8080) and reaches(outside, 8443)


def verdict(data: dict[str, Any], port: str) -> str:
    """The verdict of IPv4 tcp/``port`` from any address on any other interface."""
    plain = ("ipv4", "tcp", "any", "any")
    for r in data["rows"]:
        if (r["family"], r["proto"], r["iifname"], r["sources"]) == plain and port in r[
            "dports"
        ].split(","):
            return str(r["verdict"])
    return "drop"  # analyze shows no plain drop


def reaches(outside: Namespace, port: int, host: str = "198.19.61.1") -> bool:
    """Whether a TCP connection from ``outside`` to ``host``:``port`` is accepted."""
    code = (
        "import socket, sys\n"
        "try: socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
        "except OSError: sys.exit(1)"
    )
    proc = outside.run([sys.executable, "-c", code, host, str(port)], check=False)
    return proc.returncode == 0


def test_diff_says_what_the_whole_live_ruleset_exposes_and_blocks(
    netns: NsFactory, tmp_path: Path
) -> None:
    """harden diff beside its text diff: another table dropping a declared port is said
    (not drift: harden's rules are as rendered); a source-port accept slipped into
    harden's table is drift, and the analysis says what it exposes."""
    ns = applied(netns, WEB, tmp_path)
    proc = harden(ns, "diff", WEB)
    assert (proc.returncode, proc.stdout.strip()) == (0, "no drift"), proc.stderr
    ns.run(
        [
            "nft",
            "add table ip other; add chain ip other in "
            "{ type filter hook input priority 10; policy accept; }; "
            "add rule ip other in tcp dport 443 drop",
        ]
    )
    proc = harden(ns, "diff", WEB)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "no drift"
    assert any(
        line.startswith("BLOCKED (any table): input ipv4 tcp dport 443") and "ip other in #" in line
        for line in lines
    ), lines
    ns.run(["nft", "insert rule inet harden input tcp sport 53 accept"])
    proc = harden(ns, "diff", WEB)
    assert proc.returncode == 1
    assert "+" in proc.stdout or "-" in proc.stdout  # the text diff of harden's table
    assert "LEAK (any table): input ipv4 tcp dport 1-" in proc.stdout
    data = json.loads(harden(ns, "diff", WEB, "--format", "json").stdout)
    assert data["drift"] is True and "sport 53" in data["diff"]
    assert all("sport 53" in line for line in data["exposure"]["leaks"])
    assert data["exposure"]["leaks"] and data["exposure"]["blocked"]


def test_kube_proxys_nodeport_and_a_hostport_are_followed_and_every_rule_read(
    netns: NsFactory,
) -> None:
    """kube-proxy's iptables rules for a NodePort (30080) and the CNI portmap's hostPort
    (8443), both DNATed to a pod: every rule is read (no unknown row), both ports are
    accepted through forward, and a connection from outside agrees."""
    node, pod_ns, outside = netns("kn"), netns("kp"), netns("ko")
    connect(node, outside, ["198.19.62.1/24"], ["198.19.62.2/24"])
    with kube_node(node, pod_ns, host_port=8443):
        code, data = analyze(node, "--hook", "input")
        assert code == 0
        assert [r for r in data["rows"] if r["verdict"] == "unknown"] == []
        for port in (30080, 8443):
            [row] = [r for r in data["rows"] if r["dports"] == str(port)]
            assert row["verdict"] == "accept" and row["sources"] == "any", row
            assert any("DNAT --to-destination 198.18.244.2:8080" in r["rule"] for r in row["rules"])
            assert reaches(outside, port, "198.19.62.1")


EVERY_FEATURE = """version: 1
policy: {ipv6: true, dhcpv6: true, trusted_interfaces: [docker0]}
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24], limit: 6/30s, log: true}
  - {name: web, ports: [80, 443], proto: tcp}
  - {name: dns, port: 53, proto: [tcp, udp]}
egress:
  policy: drop
  dhcp: true
  dhcp_servers: [198.18.1.1]
  allow:
    - {name: ntp, port: 123, proto: udp}
verify:
  probers: [198.18.9.0/24, "fd00:9::/64"]
"""


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_hardens_own_rules_are_exactly_the_manifest_with_every_feature(
    netns: NsFactory, tmp_path: Path, backend: str
) -> None:
    """DHCP and DHCPv6 both ways, a rate-limited and logged service, a trusted interface,
    egress, the witness's chains: what harden renders for them is what the manifest
    declares, no leak and nothing blocked (verify --witness judges by this)."""
    manifest = tmp_path / "every.yaml"
    manifest.write_text(EVERY_FEATURE)
    ns = netns("ev")
    state: list[str | Path] = ["--state-dir", tmp_path / "s", "--no-persist", "--backend", backend]
    state += ["--root", tmp_path]
    proc = harden(ns, "apply", manifest, *state)
    assert proc.returncode == 0, proc.stderr
    code, data = analyze(ns, "--manifest", manifest)
    assert (code, data["leaks"], data["blocked"]) == (0, [], []), data["unknown"]
    [ssh] = [r for r in data["rows"] if r["dports"] == "22" and r["family"] == "ipv4"]
    assert ssh["verdict"] == "accept" and ssh["sources"] == ["198.18.1.0/24"]
    assert any("limit" in k or "hashlimit" in k for k in ssh["keyed_on"]), ssh


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
@pytest.mark.parametrize(
    "manifest", sorted((REPO / "rulesets").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_ruleset_applied_is_exactly_its_manifest(
    netns: NsFactory, tmp_path: Path, manifest: Path, backend: str
) -> None:
    """No false leak, nothing blocked, nothing unknown: what verify --witness and diff
    judge every host by."""
    ns = netns("rs")
    args: list[str | Path] = ["--state-dir", tmp_path / "s", "--no-persist", "--force"]
    args += ["--root", tmp_path]
    proc = harden(ns, "apply", manifest, *args, "--backend", backend)
    assert proc.returncode == 0, proc.stderr
    code, data = analyze(ns, "--manifest", manifest)
    assert (code, data["leaks"], data["blocked"], data["unknown"]) == (0, [], [], [])
    assert not [r for r in data["rows"] if r["verdict"] == "unknown"]


# libvirt's default network (as libvirt 9's iptables firewall makes it on Debian 12), on
# a lab range: DNS and DHCP for the guests on virbr0, their forwarding and masquerade.
LIBVIRT = """*filter
:LIBVIRT_INP - [0:0]
:LIBVIRT_OUT - [0:0]
:LIBVIRT_FWO - [0:0]
:LIBVIRT_FWI - [0:0]
:LIBVIRT_FWX - [0:0]
-A INPUT -j LIBVIRT_INP
-A FORWARD -j LIBVIRT_FWX
-A FORWARD -j LIBVIRT_FWI
-A FORWARD -j LIBVIRT_FWO
-A OUTPUT -j LIBVIRT_OUT
-A LIBVIRT_INP -i virbr0 -p udp -m udp --dport 53 -j ACCEPT
-A LIBVIRT_INP -i virbr0 -p tcp -m tcp --dport 53 -j ACCEPT
-A LIBVIRT_INP -i virbr0 -p udp -m udp --dport 67 -j ACCEPT
-A LIBVIRT_INP -i virbr0 -p tcp -m tcp --dport 67 -j ACCEPT
-A LIBVIRT_OUT -o virbr0 -p udp -m udp --dport 53 -j ACCEPT
-A LIBVIRT_OUT -o virbr0 -p tcp -m tcp --dport 53 -j ACCEPT
-A LIBVIRT_OUT -o virbr0 -p udp -m udp --dport 68 -j ACCEPT
-A LIBVIRT_OUT -o virbr0 -p tcp -m tcp --dport 68 -j ACCEPT
-A LIBVIRT_FWO -s 198.19.122.0/24 -i virbr0 -j ACCEPT
-A LIBVIRT_FWO -i virbr0 -j REJECT --reject-with icmp-port-unreachable
-A LIBVIRT_FWI -d 198.19.122.0/24 -o virbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp-port-unreachable
-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT
COMMIT
*nat
:LIBVIRT_PRT - [0:0]
-A POSTROUTING -j LIBVIRT_PRT
-A LIBVIRT_PRT -s 198.19.122.0/24 -d 224.0.0.0/24 -j RETURN
-A LIBVIRT_PRT -s 198.19.122.0/24 -d 255.255.255.255/32 -j RETURN
-A LIBVIRT_PRT -s 198.19.122.0/24 ! -d 198.19.122.0/24 -p tcp -j MASQUERADE --to-ports 1024-65535
-A LIBVIRT_PRT -s 198.19.122.0/24 ! -d 198.19.122.0/24 -p udp -j MASQUERADE --to-ports 1024-65535
-A LIBVIRT_PRT -s 198.19.122.0/24 ! -d 198.19.122.0/24 -j MASQUERADE
COMMIT
*mangle
:LIBVIRT_PRT - [0:0]
-A POSTROUTING -j LIBVIRT_PRT
-A LIBVIRT_PRT -o virbr0 -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill
COMMIT
"""


def guest_meets(guest: Namespace, port: int) -> str:
    """What a guest on virbr0 meets connecting to the host's tcp/``port``."""
    code = (
        "import socket, sys\n"
        "try: socket.create_connection(('198.19.122.1', int(sys.argv[1])), timeout=2).close()\n"
        "except TimeoutError: print('silent')\n"
        "except OSError: print('answered')\n"
        "else: print('answered')\n"
    )
    return guest.run([sys.executable, "-c", code, str(port)], check=False).stdout.strip()


def test_libvirts_guest_services_are_read_and_trusting_its_bridge_is_what_opens_them(
    netns: NsFactory, tmp_path: Path
) -> None:
    """libvirt's rules accept DNS and DHCP from its guests on virbr0 (iptables, decoded from
    iptables-nft-save, labelled libvirt). harden beside them drops those as undeclared (a
    guest meets silence); with ``trusted_interfaces: [virbr0]`` they are accepted again
    and the manifest expects it. A guest's connection agrees each time."""
    host, guest = netns("lv"), netns("lg")
    host.run(["ip", "link", "add", "virbr0", "type", "bridge"])
    host.run(["ip", "addr", "add", "198.19.122.1/24", "dev", "virbr0"])
    host.run(["ip", "link", "set", "virbr0", "up"])
    port, _ = connect(host, guest, [], ["198.19.122.10/24"])
    host.run(["ip", "link", "set", port, "master", "virbr0", "up"])
    host.run(["iptables-restore", "-n"], input=LIBVIRT)
    code, data = analyze(host, "--hook", "input")
    assert code == 0 and data["unknown"] == []
    assert all("not decoded" not in " ".join(r.get("unknown", [])) for r in data["rows"])
    for proto in ("tcp", "udp"):
        for dport in ("53", "67"):
            [row] = [
                r
                for r in data["rows"]
                if (r["family"], r["proto"], r["dports"], r["iifname"])
                == ("ipv4", proto, dport, ["virbr0"])
            ]
            assert row["verdict"] == "accept" and row["managers"] == ["libvirt"], row
    assert guest_meets(guest, 53) == "answered"  # accepted; nothing listens: a RST
    state: list[str | Path] = ["--state-dir", tmp_path / "state", "--no-persist"]
    state += ["--root", tmp_path]  # boot files: never the machine's own
    assert harden(host, "apply", WEB, *state).returncode == 0
    code, data = analyze(host, "--hook", "input", "--manifest", WEB)
    assert code == 0, data["leaks"] + data["blocked"]
    dns = [r for r in data["rows"] if r["dports"] == "53" and r["iifname"] == ["virbr0"]]
    assert dns == [], dns  # a plain drop: not shown
    assert guest_meets(guest, 53) == "silent"
    trusting = tmp_path / "trusting.yaml"
    manifest = yaml.safe_load(WEB.read_text())
    manifest["policy"]["trusted_interfaces"] = ["virbr0"]
    trusting.write_text(yaml.safe_dump(manifest))
    assert harden(host, "apply", trusting, *state).returncode == 0
    code, data = analyze(host, "--hook", "input", "--manifest", trusting)
    assert code == 0, data["leaks"] + data["blocked"]
    bridge = [r for r in data["rows"] if r["iifname"] == ["virbr0"]]
    assert {(r["family"], r["proto"]) for r in bridge} == {
        (f, p) for f in ("ipv4", "ipv6") for p in ("tcp", "udp")
    }
    assert all((r["verdict"], r["declared"]) == ("accept", True) for r in bridge), bridge
    [dns] = [r for r in bridge if (r["family"], r["proto"], r["dports"]) == ("ipv4", "tcp", "53")]
    assert dns["managers"] == ["harden", "libvirt"], dns
    assert guest_meets(guest, 53) == "answered"


def test_route_localnet_is_said_beside_the_rows(netns: NsFactory, tmp_path: Path) -> None:
    """route_localnet (kube-proxy turns it on) delivers packets from the link to 127.0.0.1:
    the rows, for the host's own addresses, cannot show it, so analyze says so in a
    note (verify --witness carries it too: tests/test_crosscheck.py)."""
    ns = applied(netns, WEB, tmp_path)
    code, data = analyze(ns, "--hook", "input")
    assert code == 0 and data["notes"] == []
    ns.run(["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"])
    code, data = analyze(ns, "--hook", "input", "--manifest", WEB)
    assert code == 0, data
    [note] = data["notes"]
    assert note.startswith("route_localnet is on (every interface)"), note
    text = harden(ns, "analyze", "--hook", "input").stdout
    assert "note: route_localnet is on" in text
