"""Pure and file-level parts of the apply path (no root, no kernel)."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from harden.apply import boot
from harden.apply.guard import (
    current_namespace_name,
    lockout_reason,
    parse_conntrack,
    parse_unit_listen,
    require_namespace,
    socket_unit_ports,
    ssh_guard,
    ssh_ports,
    ssh_sessions,
)
from harden.backends import firewall, render
from harden.errors import EnvironmentProblem
from harden.files import parse_manifest
from harden.policy.model import build_policy
from harden.sockets import parse_endpoint, parse_ss
from harden.types import Backend

SSH_FROM_OPS = """version: 1
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24, "fd00:1::/64"]}
"""


def policy(text: str):  # type: ignore[no-untyped-def]
    return build_policy(parse_manifest(text))


def session(client: str, port: int = 22) -> dict[str, str]:
    return {"SSH_CONNECTION": f"{client} 51000 198.18.0.1 {port}"}


def peer(text: str) -> IPv4Address | IPv6Address:
    return ip_address(text)


def test_ssh_guard_lets_an_allowed_session_through() -> None:
    ops = policy(SSH_FROM_OPS)
    assert ssh_guard(ops, session("198.18.1.20"), [22], [(peer("198.18.1.20"), 22)]) is None
    assert ssh_guard(ops, session("fd00:1::20"), [22], [(peer("fd00:1::20"), 22)]) is None
    assert ssh_guard(ops, session("::ffff:198.18.1.20"), [], []) is None
    # An IPv4-mapped peer is judged as the IPv4 address it carries.
    assert ssh_guard(ops, {}, [22], [(peer("::ffff:198.18.1.20"), 22)]) is None


def test_ssh_guard_refuses_to_cut_the_session() -> None:
    reason = ssh_guard(policy(SSH_FROM_OPS), session("198.19.5.5"), [], [])
    assert reason is not None and "198.19.5.5" in reason and "tcp/22" in reason
    reason = ssh_guard(policy(SSH_FROM_OPS), session("198.18.1.20", port=2222), [], [])
    assert reason is not None and "tcp/2222" in reason


def test_ssh_guard_refuses_an_established_session_from_outside_the_sources() -> None:
    ops = policy(SSH_FROM_OPS)
    sessions = [(peer("198.18.1.20"), 22), (peer("198.19.5.5"), 22)]
    reason = ssh_guard(ops, {}, [22], sessions)
    assert reason == (
        "an SSH session from 198.19.5.5 to port 22 is established, and the manifest "
        "does not allow tcp/22 from 198.19.5.5: the session survives only if conntrack "
        "tracks it already, and new SSH logins from 198.19.5.5 would be refused"
    )
    # What conntrack tracks decides the session's own fate.
    tracked = ssh_guard(ops, {}, [22], sessions, {(peer("198.19.5.5"), 22)})
    assert tracked is not None and "the session survives (conntrack tracks it)" in tracked
    cut = ssh_guard(ops, {}, [22], sessions, {(peer("198.18.1.20"), 22)})
    assert cut is not None and "the session is cut at once (conntrack does not" in cut
    # The port is the session's own: allowed on 22 does not cover a session to 2222.
    reason = ssh_guard(ops, {}, [22, 2222], [(peer("198.18.1.20"), 2222)])
    assert reason is not None and "198.18.1.20" in reason and "tcp/2222" in reason
    # Several: the first is named, the rest counted, on one line.
    reason = ssh_guard(ops, {}, [22], [(peer("198.19.5.6"), 22), (peer("198.19.5.5"), 22)])
    assert reason is not None and "from 198.19.5.5 " in reason and "1 more" in reason
    assert "\n" not in reason


def test_ssh_guard_judges_ipv6_and_ipv4_mapped_peers() -> None:
    ops = policy(SSH_FROM_OPS)
    reason = ssh_guard(ops, {}, [22], [(peer("fd00:2::7"), 22)])
    assert reason is not None and "from fd00:2::7 to port 22" in reason
    reason = ssh_guard(ops, {}, [22], [(peer("::ffff:198.19.5.5"), 22)])
    assert reason is not None and "from 198.19.5.5 to port 22" in reason  # named as IPv4
    v4_only = policy(
        "version: 1\npolicy: {ipv6: false}\nservices:\n  - {name: ssh, port: 22, proto: tcp}\n"
    )
    reason = ssh_guard(v4_only, {}, [22], [(peer("fd00:1::20"), 22)])
    assert reason is not None and "fd00:1::20" in reason


def test_ssh_guard_without_ssh_connection_still_sees_the_session() -> None:
    # sudo's env_reset dropped SSH_CONNECTION: the kernel's session list decides.
    reason = ssh_guard(policy(SSH_FROM_OPS), {}, [22], [(peer("198.19.5.5"), 22)])
    assert reason is not None and "198.19.5.5" in reason
    # SSH_CONNECTION, when present, is checked even if the kernel shows no session.
    assert ssh_guard(policy(SSH_FROM_OPS), session("198.19.5.5"), [22], []) is not None


def test_ssh_guard_refuses_to_close_a_listening_sshd() -> None:
    assert ssh_guard(policy("version: 1\n"), {}, [22], []) is not None
    assert ssh_guard(policy(SSH_FROM_OPS), {}, [22], []) is None  # open to some sources
    assert ssh_guard(policy("version: 1\n"), {}, [], []) is None


def test_parse_endpoint_reads_every_address_form() -> None:
    assert parse_endpoint("198.18.1.1:22") == (peer("198.18.1.1"), 22)
    assert parse_endpoint("[fd00::1]:22") == (peer("fd00::1"), 22)
    assert parse_endpoint("[::ffff:198.18.1.5]:22") == (peer("198.18.1.5"), 22)
    assert parse_endpoint("[fe80::1]%eth0:22") == (peer("fe80::1"), 22)
    assert parse_endpoint("[fe80::1%eth0]:22") == (peer("fe80::1"), 22)
    assert parse_endpoint("*:22") == (None, 22)
    assert parse_endpoint("[::]:*") == (peer("::"), None)
    for bad in ("22", "x:22", "198.18.1.1:99999", "[::1:22"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


SS = """\
LISTEN 0      128          0.0.0.0:22            0.0.0.0:*     users:(("sshd",pid=812,fd=3))
LISTEN 0      4096               *:2222                *:*     users:(("systemd",pid=1,fd=51))
LISTEN 0      4096               *:80                  *:*     users:(("systemd",pid=1,fd=52))
LISTEN 0      511          0.0.0.0:8080          0.0.0.0:*     users:(("nginx",pid=9,fd=6))
ESTAB  0      0        198.18.0.1:22     198.19.5.5:51000     users:(("sshd",pid=901,fd=4))
ESTAB  0      0    [::ffff:198.18.0.1]:2222 [::ffff:198.18.1.5]:40000 users:(("sshd",pid=9,fd=4))
ESTAB  0      0       [fd00::1]:22       [fd00:2::7]:41000
ESTAB  0      0        198.18.0.1:8080   198.19.5.5:52000     users:(("nginx",pid=9,fd=7))
ESTAB  0      0        198.18.0.1:40022  198.19.5.9:22
TIME-WAIT 0   0        198.18.0.1:22     198.19.5.8:53000
garbage
"""


def test_ssh_ports_and_sessions_from_ss_output() -> None:
    sockets = parse_ss(SS)

    def root(pid: int) -> bool:
        return True  # as if every pid in SS ran as root from a root-owned binary

    # systemd's listeners count only where its unit lists them.
    assert ssh_ports(sockets, set(), root) == [22]
    assert ssh_ports(sockets, {2222}, root) == [22, 2222]
    assert ssh_ports(sockets, set(), lambda pid: False) == []  # an "sshd" not root's
    sessions = ssh_sessions(sockets, [22, 2222])
    assert sessions == [
        (peer("198.19.5.5"), 22),
        (peer("198.18.1.5"), 2222),  # IPv4-mapped, read as IPv4
        (peer("fd00:2::7"), 22),  # no owner shown (another user's): still a session
    ]


def test_parse_unit_listen() -> None:
    active = "ActiveState=active\nListen=0.0.0.0:22 (Stream)\nListen=[::]:2222 (Stream)\n"
    assert parse_unit_listen(active) == {22, 2222}
    assert parse_unit_listen("Listen=22 (Stream)\nActiveState=active\n") == {22}
    assert parse_unit_listen("Listen=/run/ssh.sock (Stream)\nActiveState=active\n") == set()
    assert parse_unit_listen("ActiveState=active\nListen=[::]:53 (Datagram)\n") == set()
    assert parse_unit_listen("ActiveState=inactive\nListen=0.0.0.0:22 (Stream)\n") == set()
    assert parse_unit_listen("") == set()


def test_guard_fails_closed_without_ss_and_open_without_systemctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither ss nor systemctl to be found
    reason = lockout_reason(policy(SSH_FROM_OPS), {})
    assert reason is not None and "'ss'" in reason and "\n" not in reason
    assert socket_unit_ports() == set()


def test_require_namespace_refuses_outside_a_named_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert current_namespace_name() is None  # the test suite runs in the machine's own
    monkeypatch.setenv("HARDEN_REQUIRE_NETNS", "1")
    with pytest.raises(EnvironmentProblem, match="not inside a named network namespace"):
        require_namespace()
    monkeypatch.setenv("HARDEN_REQUIRE_NETNS", "0")
    require_namespace()


def test_persist_nftables_loads_only_harden_s_table_and_enables_its_unit(tmp_path: Path) -> None:
    """harden.service loads harden.nft (one table): Debian's nftables.conf, which starts
    with "flush ruleset", is not used, and an older harden's include is taken out of it."""
    files = render(policy(SSH_FROM_OPS), "nftables")
    conf = tmp_path / "etc" / "nftables.conf"
    conf.parent.mkdir(parents=True)
    debian = "#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n}\n"
    conf.write_text(debian + '\n# added by harden\ninclude "/etc/harden/harden.nft"\n')
    written = firewall("nftables").persist(files, tmp_path)
    assert tmp_path / "etc/harden/harden.nft" in written
    assert (tmp_path / "etc/harden/harden.nft").read_text() == files["harden.nft"]
    assert conf.read_text() == debian
    unit = (tmp_path / "etc/systemd/system/harden.service").read_text()
    assert "ExecStart=/usr/sbin/nft -f /etc/harden/harden.nft" in unit
    assert "Before=network-pre.target" in unit and "WantedBy=sysinit.target" in unit
    link = tmp_path / "etc/systemd/system/sysinit.target.wants/harden.service"
    assert str(link.readlink()) == "/etc/systemd/system/harden.service"
    assert boot.describe(tmp_path)["loads_at_boot"] is True


def test_persist_iptables_writes_rules_and_unit(tmp_path: Path) -> None:
    files = render(policy(SSH_FROM_OPS), "iptables")
    written = {
        p.relative_to(tmp_path).as_posix() for p in firewall("iptables").persist(files, tmp_path)
    }
    assert written == {
        "etc/harden/harden.rules.v4",
        "etc/harden/harden.rules.v6",
        "etc/systemd/system/harden.service",
        "etc/systemd/system/sysinit.target.wants/harden.service",
        "etc/systemd/system/docker.service.d/harden.conf",
    }
    unit = (tmp_path / "etc/systemd/system/harden.service").read_text()
    assert "ip6tables-restore --noflush /etc/harden/harden.rules.v6" in unit


def test_a_backend_switch_leaves_no_stale_boot_rules(tmp_path: Path) -> None:
    """iptables, then nftables: at boot only the nftables rules may load (a drop in
    either would be final: SSH moved to another network would be cut)."""
    firewall("iptables").persist(render(policy(SSH_FROM_OPS), "iptables"), tmp_path)
    firewall("nftables").persist(render(policy(SSH_FROM_OPS), "nftables"), tmp_path)
    assert sorted(p.name for p in (tmp_path / "etc/harden").iterdir()) == ["harden.nft"]
    unit = (tmp_path / "etc/systemd/system/harden.service").read_text()
    assert "iptables" not in unit
    assert not (tmp_path / "etc/systemd/system/docker.service.d/harden.conf").exists()
    assert boot.describe(tmp_path)["backends"] == ["nftables"]
    firewall("iptables").persist(render(policy(SSH_FROM_OPS), "iptables"), tmp_path)
    names = sorted(p.name for p in (tmp_path / "etc/harden").iterdir())
    assert names == ["harden.rules.v4", "harden.rules.v6"]


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_the_boot_unit_passes_systemd_analyze(tmp_path: Path, backend: Backend) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "harden.service"
    unit.write_text(boot.unit_text(backend))
    check = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stderr == "", check.stderr


def test_the_conntrack_table_is_read_by_original_source_and_port() -> None:
    """/proc/net/nf_conntrack lines: the original direction's src and dport, established
    TCP only, IPv6 written out in full and IPv4-mapped peers read as IPv4."""
    text = (
        "ipv4     2 tcp      6 431999 ESTABLISHED src=198.19.9.2 dst=198.18.9.1 sport=45288 "
        "dport=22 src=198.18.9.1 dst=198.19.9.2 sport=22 dport=45288 [ASSURED] mark=0 zone=0 "
        "use=2\n"
        "ipv6     10 tcp      6 431999 ESTABLISHED src=fd00:0018:0000:0000:0000:0000:0000:0002 "
        "dst=fd00:0018:0000:0000:0000:0000:0000:0001 sport=40000 dport=2222 "
        "src=fd00:0018:0000:0000:0000:0000:0000:0001 dst=fd00:0018:0000:0000:0000:0000:0000:0002 "
        "sport=2222 dport=40000 [ASSURED] mark=0 zone=0 use=2\n"
        "ipv4     2 tcp      6 117 SYN_SENT src=198.19.9.3 dst=198.18.9.1 sport=1 dport=22 "
        "[UNREPLIED] src=198.18.9.1 dst=198.19.9.3 sport=22 dport=1 mark=0 zone=0 use=2\n"
        "ipv4     2 udp      17 29 src=198.19.9.2 dst=198.18.9.1 sport=5 dport=53 "
        "src=198.18.9.1 dst=198.19.9.2 sport=53 dport=5 mark=0 zone=0 use=2\n"
    )
    assert parse_conntrack(text) == {(peer("198.19.9.2"), 22), (peer("fd00:18::2"), 2222)}
