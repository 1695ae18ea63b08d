"""Pure and file-level parts of the apply path (no root, no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harden.apply.engine import require_namespace, ssh_guard
from harden.apply.persist import persist
from harden.apply.state import Pending, State, StateDir
from harden.core.manifest import parse_manifest
from harden.core.policy import build_policy
from harden.core.render import render
from harden.errors import EnvironmentProblem
from harden.lab.netns import current_namespace_name

SSH_FROM_OPS = """version: 1
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24, "fd00:1::/64"]}
"""


def policy(text: str):  # type: ignore[no-untyped-def]
    return build_policy(parse_manifest(text))


def session(client: str, port: int = 22) -> dict[str, str]:
    return {"SSH_CONNECTION": f"{client} 51000 198.18.0.1 {port}"}


def test_ssh_guard_lets_an_allowed_session_through() -> None:
    assert ssh_guard(policy(SSH_FROM_OPS), session("198.18.1.20"), [22]) is None
    assert ssh_guard(policy(SSH_FROM_OPS), session("fd00:1::20"), [22]) is None
    assert ssh_guard(policy(SSH_FROM_OPS), session("::ffff:198.18.1.20"), []) is None


def test_ssh_guard_refuses_to_cut_the_session() -> None:
    reason = ssh_guard(policy(SSH_FROM_OPS), session("198.19.5.5"), [])
    assert reason is not None and "198.19.5.5" in reason and "tcp/22" in reason
    reason = ssh_guard(policy(SSH_FROM_OPS), session("198.18.1.20", port=2222), [])
    assert reason is not None and "tcp/2222" in reason


def test_ssh_guard_refuses_to_close_a_listening_sshd() -> None:
    assert ssh_guard(policy("version: 1\n"), {}, [22]) is not None
    assert ssh_guard(policy(SSH_FROM_OPS), {}, [22]) is None  # open to some sources
    assert ssh_guard(policy("version: 1\n"), {}, []) is None


def test_require_namespace_refuses_outside_a_named_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert current_namespace_name() is None  # the test suite runs in the machine's own
    monkeypatch.setenv("HARDEN_REQUIRE_NETNS", "1")
    with pytest.raises(EnvironmentProblem, match="not inside a named network namespace"):
        require_namespace()
    monkeypatch.setenv("HARDEN_REQUIRE_NETNS", "0")
    require_namespace()


def test_persist_nftables_includes_once(tmp_path: Path) -> None:
    files = render(policy(SSH_FROM_OPS), "nftables")
    conf = tmp_path / "etc" / "nftables.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n}\n")
    written = persist(files, "nftables", tmp_path)
    assert tmp_path / "etc/harden/harden.nft" in written
    assert (tmp_path / "etc/harden/harden.nft").read_text() == files["harden.nft"]
    persist(files, "nftables", tmp_path)
    text = conf.read_text()
    assert text.count('include "/etc/harden/harden.nft"') == 1
    assert text.startswith("#!/usr/sbin/nft -f\n\nflush ruleset\n")


def test_persist_iptables_writes_rules_and_unit(tmp_path: Path) -> None:
    files = render(policy(SSH_FROM_OPS), "iptables")
    written = {p.relative_to(tmp_path).as_posix() for p in persist(files, "iptables", tmp_path)}
    assert written == {
        "etc/harden/harden.rules.v4",
        "etc/harden/harden.rules.v6",
        "etc/systemd/system/harden.service",
    }
    unit = (tmp_path / "etc/systemd/system/harden.service").read_text()
    assert "ip6tables-restore --noflush /etc/harden/harden.rules.v6" in unit


def test_state_round_trip_and_private_files(tmp_path: Path) -> None:
    states = StateDir(tmp_path / "state")
    assert states.load() == State()
    state = State(backend="nftables", manifest="m.yaml", pending=Pending("t", 1.5))
    state.event("applied", 1.0)
    with states.locked():
        states.save(state)
    assert states.load() == state
    assert states.record.stat().st_mode & 0o777 == 0o600
