"""harden remove: harden's rules (both backends) and boot files go; other firewalls stay.

Against the real kernel in namespaces; boot files under a scratch --root. Needs root.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harden.lab.netns import Namespace

from .labutil import HARDEN, write

pytestmark = pytest.mark.netns

NsFactory = Callable[[str], Namespace]
MANIFEST = """version: 1
services: [{name: ssh, port: 22, proto: tcp}]
egress: {policy: drop, allow: [{name: dns, port: 53, proto: udp}]}
"""
FOREIGN = """table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport 9 drop
	}
}
"""


def harden(ns: Namespace, *args: object) -> tuple[int, Any]:
    proc = ns.run([*HARDEN, *map(str, args), "--format", "json"], check=False)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.startswith("{") else proc.stderr


def test_nftables_rules_and_boot_files_go_and_a_foreign_table_stays(
    netns: NsFactory, tmp_path: Path
) -> None:
    ns = netns("rm")
    ns.run(["nft", "-f", "-"], input=FOREIGN)
    foreign = ns.run(["nft", "list", "table", "inet", "filter"]).stdout
    manifest, state, root = write(tmp_path, "m.yaml", MANIFEST), tmp_path / "st", tmp_path / "root"
    code, _ = harden(ns, "apply", manifest, "--state-dir", state, "--persist", "--root", root)
    assert code == 0
    assert (root / "etc/systemd/system/sysinit.target.wants/harden.service").is_symlink()
    code, result = harden(ns, "remove", "--state-dir", state, "--root", root)
    assert code == 0, result
    assert result["removed_rules"] == ["nftables"]
    assert any("inet filter input" in o for o in result["other_firewalls"]), result
    assert ns.run(["nft", "list", "table", "inet", "harden"], check=False).returncode != 0
    assert ns.run(["nft", "list", "table", "inet", "filter"]).stdout == foreign
    assert not any(p.is_file() or p.is_symlink() for p in root.rglob("*")), list(root.rglob("*"))
    code, status = harden(ns, "status", "--state-dir", state, "--root", root)
    assert code == 0 and status["backend"] is None, status
    assert status["history"][-1]["event"] == "removed"
    assert status["boot"]["loads_at_boot"] is False
    code, again = harden(ns, "remove", "--state-dir", state, "--root", root)
    assert code == 0 and again["removed_rules"] == [] and again["removed_files"] == []


def test_iptables_chains_and_every_jump_go_and_a_foreign_rule_stays(
    netns: NsFactory, tmp_path: Path
) -> None:
    ns = netns("ri")
    ns.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"])
    manifest, state = write(tmp_path, "m.yaml", MANIFEST), tmp_path / "st"
    assert harden(ns, "apply", manifest, "--backend", "iptables", "--state-dir", state)[0] == 0
    assert "-A OUTPUT -j HARDEN-OUTPUT" in ns.run(["iptables-save"]).stdout
    code, result = harden(ns, "remove", "--state-dir", state, "--root", tmp_path / "root")
    assert code == 0 and result["removed_rules"] == ["iptables"], result
    for tool in ("iptables-save", "ip6tables-save"):
        saved = ns.run([tool]).stdout
        assert "HARDEN" not in saved, saved
    assert "-A INPUT -p tcp -m tcp --dport 9 -j DROP" in ns.run(["iptables-save"]).stdout


def test_remove_waits_for_a_pending_confirmation(netns: NsFactory, tmp_path: Path) -> None:
    ns = netns("rp")
    manifest, state = write(tmp_path, "m.yaml", MANIFEST), tmp_path / "st"
    assert harden(ns, "apply", manifest, "--state-dir", state, "--confirm", "60")[0] == 0
    proc = ns.run([*HARDEN, "remove", "--state-dir", state], check=False)
    assert proc.returncode == 2 and "confirmation is pending" in proc.stderr, proc.stderr
    assert ns.run(["nft", "list", "table", "inet", "harden"], check=False).returncode == 0
    assert ns.run([*HARDEN, "rollback", "--state-dir", state]).returncode == 0
