"""Other firewalls on the same host: harden only narrows, on both backends.

An admin's own drop (ufw's ``deny``, a hand-written ``inet filter`` table) stays in force
for a port harden declares: harden's accept is never final, its drop always is. Real ufw
(Debian's package) runs inside the test's namespace with its configuration directory a
bind-mounted temporary copy, so the machine's own /etc/ufw is never touched. Needs root.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harden.lab.netns import Namespace, connect

from .labutil import HARDEN, write

pytestmark = pytest.mark.netns

NsFactory = Callable[[str], Namespace]
MANIFEST = """version: 1
policy: {ipv6: false}
services:
  - {name: web, ports: [80, 443], proto: tcp}
"""
HANDWRITTEN = """table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport 443 drop
	}
}
"""


def ufw(ns: Namespace, etc: Path, *commands: str) -> None:
    """Run ufw commands in ``ns`` with ``etc`` mounted over /etc/ufw (a private mount)."""
    script = f"mount --bind {etc} /etc/ufw && " + " && ".join(f"ufw {c}" for c in commands)
    ns.run(["unshare", "-m", "sh", "-c", script])


@pytest.fixture
def responder(in_netns: Callable[..., object]) -> Callable[[Namespace], object]:
    """Stand-in web services on tcp/80 and tcp/443 inside a namespace."""
    serve = [sys.executable, "-I", "-m", "harden.lab.responder", "--tcp", "80,443", "--udp", ""]
    return lambda ns: in_netns(ns, *serve, "--lifetime", "120")


def observed(prober: Namespace, manifest: Path, target: str) -> dict[int, str]:
    """What verify saw on the declared ports (the verdict is not the point here)."""
    proc = prober.run(
        [
            *HARDEN,
            "verify",
            str(manifest),
            "--target",
            target,
            "--format",
            "json",
            "--ports",
            "79-81,442-444",
        ],
        check=False,
        timeout=120,
    )
    report = json.loads(proc.stdout)
    return {p["port"]: p["observed"] for p in report["ports"] if p["port"] in (80, 443)}


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_ufw_deny_of_a_declared_port_stays_in_force(
    netns: NsFactory,
    tmp_path: Path,
    responder: Callable[[Namespace], None],
    backend: str,
) -> None:
    if shutil.which("ufw") is None:
        pytest.skip("ufw is not installed (make install adds it)")
    server, prober = netns("us"), netns("up")
    connect(server, prober, ["198.18.61.1/24"], ["198.18.61.2/24"])
    etc = tmp_path / "ufw"
    shutil.copytree("/etc/ufw", etc, symlinks=True)
    ufw(server, etc, "--force enable", "allow 80/tcp", "deny 443/tcp")
    responder(server)
    manifest = write(tmp_path, "web.yaml", MANIFEST)
    proc = server.run(
        [*HARDEN, "apply", manifest, "--backend", backend, "--state-dir", tmp_path / "st"],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = observed(prober, manifest, "198.18.61.1")
    assert seen == {80: "open", 443: "silent"}, seen  # the admin's deny is not overridden
    assert "ENABLED=no" in Path("/etc/ufw/ufw.conf").read_text()  # the machine's is untouched


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_handwritten_table_drop_of_a_declared_port_stays_in_force(
    netns: NsFactory,
    tmp_path: Path,
    responder: Callable[[Namespace], None],
    backend: str,
) -> None:
    server, prober = netns("hs"), netns("hp")
    connect(server, prober, ["198.18.62.1/24"], ["198.18.62.2/24"])
    server.run(["nft", "-f", "-"], input=HANDWRITTEN)
    responder(server)
    manifest = write(tmp_path, "web.yaml", MANIFEST)
    proc = server.run(
        [*HARDEN, "apply", manifest, "--backend", backend, "--state-dir", tmp_path / "st"],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert observed(prober, manifest, "198.18.62.1") == {80: "open", 443: "silent"}


def test_status_apply_and_init_name_the_other_firewalls(netns: NsFactory, tmp_path: Path) -> None:
    """ufw is enabled and denies 443, which the manifest declares: every command that
    shows what harden did also shows ufw's base chains, and warns about 443."""
    if shutil.which("ufw") is None:
        pytest.skip("ufw is not installed (make install adds it)")
    server = netns("os")
    etc = tmp_path / "ufw"
    shutil.copytree("/etc/ufw", etc, symlinks=True)
    ufw(server, etc, "--force enable", "allow 80/tcp", "deny 443/tcp")
    manifest = write(tmp_path, "web.yaml", MANIFEST)
    state = tmp_path / "st"
    applied = server.run([*HARDEN, "apply", manifest, "--state-dir", state, "--format", "json"])
    result = json.loads(applied.stdout)
    assert any(
        "ip filter INPUT (ufw)" in o and "policy drop" in o for o in result["other_firewalls"]
    )
    # ipv6: false serves nothing over IPv6: only ufw's IPv4 deny is about a declared port.
    [warning] = [w for w in result["warnings"] if "443" in w]
    assert warning.startswith("ip filter ufw-user-input (ufw) drops declared tcp/443"), warning
    status = json.loads(
        server.run([*HARDEN, "status", "--state-dir", state, "--format", "json"]).stdout
    )
    ufw_chains = [c for c in status["other_firewalls"] if c["manager"] == "ufw"]
    assert {(c["family"], c["hook"]) for c in ufw_chains} >= {("ip", "input"), ("ip6", "input")}
    assert all(c["table"] != "harden" for c in status["other_firewalls"])
    assert any("tcp/443" in w for w in status["warnings"])
    text = server.run([*HARDEN, "status", "--state-dir", state]).stdout
    assert "others:   " in text and "WARNING:  " in text and "tcp/443" in text
    proposal = server.run([*HARDEN, "init"]).stdout
    assert "# Other firewalls on this host filter too" in proposal and "(ufw)" in proposal
