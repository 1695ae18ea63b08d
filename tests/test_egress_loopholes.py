"""Egress that lets out only what the manifest says, against the real kernel (namespaces).

Two loopholes a review found in the output chain: `ct state related` let through whatever
another table's conntrack helper expected (after an FTP PORT command, any local program
could connect to the address it named), and `egress.dhcp` let udp 68 -> 67 go anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harden.lab.netns import Namespace, connect

from .labutil import HARDEN, write

pytestmark = pytest.mark.netns
NsFactory = Callable[[str], Namespace]
HOST, CLIENT, SERVER = "198.18.72.1", "198.18.72.2", "198.18.72.3"

# A local program's connect, as any user could run it: "ok", or why it failed.
CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("ok")
except OSError as exc:
    print(type(exc).__name__)
"""


def hosts(netns: NsFactory, tmp: Path, manifest: str, backend: str) -> tuple[Namespace, Namespace]:
    host, outside = netns("lh"), netns("lo")
    connect(host, outside, [f"{HOST}/24"], [f"{CLIENT}/24", f"{SERVER}/24"])
    path = write(tmp, "m.yaml", manifest)
    apply: list[str | Path] = [*HARDEN, "apply", path, "--backend", backend]
    proc = host.run([*apply, "--state-dir", tmp / "s"], check=False)
    assert proc.returncode == 0, proc.stderr
    return host, outside


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_conntrack_helper_in_another_table_opens_no_outbound_connection(
    netns: NsFactory, tmp_path: Path, in_netns: Callable[..., object], backend: str
) -> None:
    manifest = (
        "version: 1\npolicy: {ipv6: false}\nservices:\n  - {name: ftp, port: 21, proto: tcp}\n"
        "egress: {policy: drop}\n"
    )
    host, outside = hosts(netns, tmp_path, manifest, backend)
    # Another table assigns the FTP helper to the control connection, as an FTP server's
    # own firewall setup would.
    host.run(
        [
            "nft",
            'add table inet other; add ct helper inet other ftp-21 { type "ftp" protocol tcp; };'
            " add chain inet other pre { type filter hook prerouting priority 0; };"
            ' add rule inet other pre tcp dport 21 ct helper set "ftp-21"',
        ]
    )
    listen = "import socket,sys,time\ns=socket.create_server((sys.argv[1],int(sys.argv[2])))\n"
    listen += "print('ready',flush=True)\nwhile True:\n    c,_=s.accept(); time.sleep(30)\n"
    in_netns(host, sys.executable, "-c", listen, HOST, "21")  # the FTP server's port
    in_netns(outside, sys.executable, "-c", listen, CLIENT, "10000")  # where PORT points
    local = [sys.executable, "-c", CONNECT, CLIENT, "10000"]
    assert host.run(local).stdout.strip() != "ok"  # not declared: refused before
    # The client's PORT command: the helper now expects a connection to CLIENT:10000.
    port = f"import socket,time\nc=socket.create_connection(('{HOST}',21))\n"
    # The helper reads a client line only where an earlier one ended: a login line first.
    port += "c.sendall(b'USER ftp\\r\\n'); time.sleep(0.3)\n"
    port += "c.sendall(b'PORT 198,18,72,2,39,16\\r\\n'); time.sleep(1)\n"
    outside.run([sys.executable, "-c", port])
    assert host.run(local).stdout.strip() != "ok", "a helper's expectation let a local program out"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_dhcp_goes_only_to_the_broadcast_address_and_the_declared_servers(
    netns: NsFactory, tmp_path: Path, backend: str
) -> None:
    manifest = (
        "version: 1\npolicy: {ipv6: false}\nservices: []\n"
        f"egress: {{policy: drop, dhcp: true, dhcp_servers: [{SERVER}]}}\n"
    )
    host, _ = hosts(netns, tmp_path, manifest, backend)
    send = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[2].encode())\n"
        "s.bind(('0.0.0.0', 68))\n"
        "try:\n    s.sendto(b'dhcp', (sys.argv[1], 67)); print('sent')\n"
        "except OSError as exc:\n    print(type(exc).__name__)\n"
    )
    device = host.run(["ip", "-o", "-4", "addr", "show", "to", HOST]).stdout.split()[1]
    outcome = {
        to: host.run([sys.executable, "-c", send, to, device]).stdout.strip()
        for to in ("255.255.255.255", SERVER, CLIENT)
    }
    assert outcome == {
        "255.255.255.255": "sent",
        SERVER: "sent",
        CLIENT: "PermissionError",  # dropped by the output chain: not a DHCP server
    }, outcome
