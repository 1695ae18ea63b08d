"""Pure and file-level parts of the apply path (no root, no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harden.apply.backends import firewall
from harden.apply.guard import require_namespace, ssh_guard
from harden.apply.state import Applied, Pending, State, StateDir
from harden.core.policy import build_policy
from harden.core.render import render
from harden.errors import ApplyError, EnvironmentProblem, ExitStatus, HardenError, StateError
from harden.files import parse_manifest
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
    written = firewall("nftables").persist(files, tmp_path)
    assert tmp_path / "etc/harden/harden.nft" in written
    assert (tmp_path / "etc/harden/harden.nft").read_text() == files["harden.nft"]
    firewall("nftables").persist(files, tmp_path)
    text = conf.read_text()
    assert text.count('include "/etc/harden/harden.nft"') == 1
    assert text.startswith("#!/usr/sbin/nft -f\n\nflush ruleset\n")


def test_persist_iptables_writes_rules_and_unit(tmp_path: Path) -> None:
    files = render(policy(SSH_FROM_OPS), "iptables")
    written = {
        p.relative_to(tmp_path).as_posix() for p in firewall("iptables").persist(files, tmp_path)
    }
    assert written == {
        "etc/harden/harden.rules.v4",
        "etc/harden/harden.rules.v6",
        "etc/systemd/system/harden.service",
    }
    unit = (tmp_path / "etc/systemd/system/harden.service").read_text()
    assert "ip6tables-restore --noflush /etc/harden/harden.rules.v6" in unit


def applied(name: str, at: float) -> Applied:
    return Applied("nftables", name, f"sha-{name}", f"rules-{name}", at, f"live-{name}")


def test_state_round_trip_and_private_files(tmp_path: Path) -> None:
    states = StateDir(tmp_path / "state")
    assert states.load() == State()
    state = State().applied(applied("m.yaml", 1.0), Pending("t", 1.5)).with_watchdog(42)
    with states.locked():
        states.save(state)
    assert states.load() == state
    assert states.record.stat().st_mode & 0o777 == 0o600


def test_state_reads_the_flat_record_of_harden_0_1(tmp_path: Path) -> None:
    states = StateDir(tmp_path)
    states.record.write_text(
        '{"backend": "iptables", "manifest": "old.yaml", "manifest_sha256": "ab", '
        '"ruleset_sha256": "cd", "applied_at": 5.0, "live_sha256": "ef", "pending": null, '
        '"history": [{"event": "applied", "at": 5.0}]}'
    )
    state = states.load()
    assert state.current is not None and state.current.backend == "iptables"
    assert state.current.manifest == "old.yaml" and state.live_sha256 == "ef"
    assert state.pending is None and state.previous is None


def test_a_corrupt_state_record_is_a_clear_error(tmp_path: Path) -> None:
    states = StateDir(tmp_path)
    for text in ("{not json", "[1, 2]", '{"version": 2, "current": {"backend": "pf"}}'):
        states.record.write_text(text)
        with pytest.raises(StateError, match="state"):
            states.load()


# The confirm state machine, transition by transition (pure: no kernel, no files).


def test_apply_then_confirm_keeps_the_new_rules_and_remembers_the_old() -> None:
    first = State().applied(applied("a", 10.0), None)
    assert first.current == applied("a", 10.0) and first.previous is None
    second = first.applied(applied("b", 20.0), Pending("tok", 80.0))
    assert second.current == applied("b", 20.0) and second.previous == applied("a", 10.0)
    assert second.pending is not None and second.live_sha256 == "live-b"
    kept = second.confirmed(now=50.0)
    assert kept.pending is None and kept.current == applied("b", 20.0)
    assert [e["event"] for e in kept.history] == ["applied", "applied", "confirmed"]


def test_no_new_apply_while_one_is_pending() -> None:
    pending = State().applied(applied("a", 10.0), Pending("tok", 80.0))
    with pytest.raises(HardenError, match="confirmation is pending"):
        pending.applied(applied("b", 20.0), None)
    with pytest.raises(HardenError, match="confirmation is pending"):
        pending.ensure_settled()


def test_confirm_needs_a_pending_apply_inside_its_window() -> None:
    with pytest.raises(HardenError, match="nothing to confirm"):
        State().applied(applied("a", 10.0), None).confirmed(now=11.0)
    late = State().applied(applied("a", 10.0), Pending("tok", 80.0))
    with pytest.raises(ApplyError, match="too late") as caught:
        late.confirmed(now=80.5)
    assert caught.value.exit_status is ExitStatus.APPLY_FAILED


def test_a_rollback_names_the_restored_rules_not_the_rolled_back_ones() -> None:
    state = State().applied(applied("a", 10.0), None)
    state = state.applied(applied("b", 20.0), Pending("tok", 80.0))
    back = state.rolled_back(now=81.0, live_sha256="live-a-again", reason="not confirmed in time")
    assert back.current == applied("a", 10.0)  # what is live again
    assert back.previous is None and back.pending is None
    assert back.live_sha256 == "live-a-again"
    assert back.history[-1] == {
        "event": "rolled back",
        "at": 81.0,
        "reason": "not confirmed in time",
    }


def test_rolling_back_the_first_apply_leaves_nothing_applied() -> None:
    state = State().applied(applied("a", 10.0), Pending("tok", 80.0))
    back = state.rolled_back(now=12.0, live_sha256="")
    assert back.current is None and back.pending is None
    with pytest.raises(HardenError, match="nothing to roll back"):
        back.rolled_back(now=13.0, live_sha256="")


def test_a_watchdog_attaches_only_to_a_pending_apply() -> None:
    with pytest.raises(HardenError, match="no pending apply"):
        State().applied(applied("a", 10.0), None).with_watchdog(7)
    state = State().applied(applied("a", 10.0), Pending("tok", 80.0)).with_watchdog(7)
    assert state.pending is not None and state.pending.watchdog_pid == 7
