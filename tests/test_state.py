"""The state record: a pure confirm/rollback state machine, and its files (no kernel)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harden.apply.state import Applied, Pending, State, StateDir
from harden.errors import ApplyError, ExitStatus, HardenError, StateError, UnsafeStateDir


def applied(name: str, at: float) -> Applied:
    return Applied("nftables", name, f"sha-{name}", f"rules-{name}", at, f"live-{name}")


def loading(deadline: float | None = 80.0) -> Pending:
    return Pending("tok", deadline)


# -- transitions ------------------------------------------------------------------------


def test_an_apply_is_recorded_before_its_load_and_settles_after_it() -> None:
    state = State().applied(applied("a", 10.0), loading(None))
    assert state.interrupted and state.pending is not None  # written before the load
    with pytest.raises(HardenError, match="interrupted"):
        state.ensure_settled()
    settled = state.loaded()
    assert settled.pending is None and settled.current == applied("a", 10.0)
    settled.ensure_settled()


def test_with_a_confirm_window_the_load_leaves_it_pending() -> None:
    state = State().applied(applied("a", 10.0), loading()).loaded()
    assert state.pending is not None and state.pending.phase == "loaded"
    assert not state.interrupted
    with pytest.raises(HardenError, match="confirmation is pending"):
        state.ensure_settled()


def test_apply_then_confirm_keeps_the_new_rules_and_remembers_the_old() -> None:
    first = State().applied(applied("a", 10.0), loading(None)).loaded()
    assert first.current == applied("a", 10.0) and first.previous is None
    second = first.applied(applied("b", 20.0), loading()).loaded()
    assert second.current == applied("b", 20.0) and second.previous == applied("a", 10.0)
    assert second.live_sha256 == "live-b"
    kept = second.confirmed(now=50.0, live_sha256="live-b")
    assert kept.pending is None and kept.current == applied("b", 20.0)
    assert [e["event"] for e in kept.history] == ["applied", "applied", "confirmed"]


def test_an_interrupted_apply_is_confirmed_only_if_its_rules_are_live() -> None:
    state = State().applied(applied("a", 10.0), loading())  # killed before loaded()
    with pytest.raises(HardenError, match="not the live ones"):
        state.confirmed(now=20.0, live_sha256="something-else")
    assert state.confirmed(now=20.0, live_sha256="live-a").pending is None


def test_no_new_apply_while_one_is_pending() -> None:
    pending = State().applied(applied("a", 10.0), loading()).loaded()
    with pytest.raises(HardenError, match="confirmation is pending"):
        pending.applied(applied("b", 20.0), None)


def test_confirm_needs_a_pending_apply_inside_its_window() -> None:
    with pytest.raises(HardenError, match="nothing to confirm"):
        State().applied(applied("a", 10.0), loading(None)).loaded().confirmed(11.0, "live-a")
    late = State().applied(applied("a", 10.0), loading()).loaded()
    with pytest.raises(ApplyError, match="too late") as caught:
        late.confirmed(now=80.5, live_sha256="live-a")
    assert caught.value.exit_status is ExitStatus.APPLY_FAILED


def test_a_rollback_names_the_restored_rules_not_the_rolled_back_ones() -> None:
    state = State().applied(applied("a", 10.0), loading(None)).loaded()
    state = state.applied(applied("b", 20.0), loading()).loaded()
    back = state.rolled_back(now=81.0, live_sha256="live-a-again", reason="not confirmed in time")
    assert back.current == applied("a", 10.0)  # what is live again
    assert back.previous is None and back.pending is None
    assert back.live_sha256 == "live-a-again"
    last = back.history[-1]
    assert last == {
        "event": "rolled back",
        "at": 81.0,
        "manifest": applied("b", 20.0).manifest,  # the apply that was undone
        "reason": "not confirmed in time",
    }


def test_an_interrupted_apply_can_be_rolled_back() -> None:
    state = State().applied(applied("a", 10.0), loading(None)).loaded()
    state = state.applied(applied("b", 20.0), loading())  # killed mid-load
    back = state.rolled_back(now=21.0, live_sha256="live-a")
    assert back.current == applied("a", 10.0) and back.pending is None


def test_rolling_back_the_first_apply_leaves_nothing_applied() -> None:
    state = State().applied(applied("a", 10.0), loading()).loaded()
    back = state.rolled_back(now=12.0, live_sha256="")
    assert back.current is None and back.pending is None
    with pytest.raises(HardenError, match="nothing to roll back"):
        back.rolled_back(now=13.0, live_sha256="")


def test_a_watchdog_attaches_only_to_a_pending_apply() -> None:
    with pytest.raises(HardenError, match="no pending apply"):
        State().applied(applied("a", 10.0), loading(None)).loaded().with_watchdog(7)
    state = State().applied(applied("a", 10.0), loading()).with_watchdog(7)
    assert state.pending is not None and state.pending.watchdog_pid == 7


# -- files --------------------------------------------------------------------------------


def test_state_round_trip_and_private_files(tmp_path: Path) -> None:
    states = StateDir(tmp_path / "state")
    assert states.load() == State()
    state = State().applied(applied("m.yaml", 1.0), loading(1.5)).with_watchdog(42)
    with states.locked():
        states.save(state)
    assert states.load() == state
    assert states.record.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


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


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"version": 2, "current": {"backend": "pf"}}', "\xff"]
)
def test_a_corrupt_state_record_is_a_clear_error_with_a_way_out(tmp_path: Path, text: str) -> None:
    states = StateDir(tmp_path)
    states.record.write_bytes(text.encode("latin-1"))
    with pytest.raises(StateError, match="harden reset") as caught:
        states.load()
    assert caught.value.exit_status is ExitStatus.USAGE and "\n" not in str(caught.value)
    moved = states.reset(now=1234.0)
    assert [p.name for p in moved] == ["state.json.broken-1234"]
    assert states.load() == State()


def test_unsafe_state_directories_are_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(UnsafeStateDir, match="writable by group or others"):
        StateDir(shared).load()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(UnsafeStateDir, match="not a directory"):
        StateDir(link).load()
    with pytest.raises(UnsafeStateDir, match="not a directory"):
        StateDir(Path("/dev/null")).load()
    for empty in ("", "."):
        with pytest.raises(UnsafeStateDir, match="not empty"):
            StateDir(Path(empty))


def test_state_files_are_never_read_or_written_through_symlinks(tmp_path: Path) -> None:
    states = StateDir(tmp_path / "state")
    states.check(create=True)
    secret = tmp_path / "secret"
    secret.write_text("root-only\n")
    (tmp_path / "state" / "lock").symlink_to(secret)
    with pytest.raises(UnsafeStateDir), states.locked():
        pass
    assert secret.read_text() == "root-only\n"  # not truncated
    (tmp_path / "state" / "lock").unlink()
    (tmp_path / "state" / "state.json").symlink_to(secret)
    with pytest.raises(StateError, match="cannot read"):
        states.load()
    states.save(State())  # replaces the link, never writes through it
    assert secret.read_text() == "root-only\n"
    assert not (tmp_path / "state" / "state.json").is_symlink()


def test_snapshot_and_undo_records_are_checked(tmp_path: Path) -> None:
    states = StateDir(tmp_path)
    states.save_snapshot({"nftables": "table inet harden {\n}\n", "iptables": ""})
    assert states.load_snapshot() == {"nftables": "table inet harden {\n}\n", "iptables": ""}
    states.snapshot_file.write_text(json.dumps({"version": 1, "backends": {"pf": "x"}}))
    with pytest.raises(StateError, match="not a snapshot"):
        states.load_snapshot()
    states.save_persist_undo({"/etc/harden/harden.nft": (None, 0o644)})
    assert states.load_persist_undo() == {"/etc/harden/harden.nft": (None, 0o644)}
    (tmp_path / "persisted.json").write_text('{"relative/path": [null, 420]}')
    with pytest.raises(StateError):
        states.load_persist_undo()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_state_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "theirs"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    with pytest.raises(UnsafeStateDir, match="belongs to uid 65534"):
        StateDir(other).load()


def test_a_snapshot_that_reaches_beyond_hardens_table_is_refused() -> None:
    from harden.backends.iptables import firewall as iptables
    from harden.backends.nftables import firewall as nft

    nft.refuse_foreign_snapshot("")
    nft.refuse_foreign_snapshot("table inet harden {\n\tchain input {\n\t}\n}\n")
    for bad in (
        "flush ruleset\ntable inet harden {\n}\n",
        "table inet harden {\n}\ntable ip nat {\n}\n",
        "table inet filter {\n}\n",
        'include "/tmp/evil.nft"\n',
        "table inet harden {\n}\ndelete table ip nat\n",
    ):
        with pytest.raises(StateError, match="more than table inet harden"):
            nft.refuse_foreign_snapshot(bad)
    good = {"4": {"chains": ["HARDEN-INPUT"], "rules": ["-A HARDEN-INPUT -j DROP"], "jump": True}}
    assert iptables.parse_snapshot(json.dumps(good)) == good
    for chains, rules in (
        (["INPUT"], []),
        (["HARDEN-INPUT"], ["-A INPUT -j ACCEPT"]),
        (["HARDEN-INPUT"], ["-A HARDEN-INPUT -j ACCEPT\n-A INPUT -j ACCEPT"]),
        (["HARDEN-INPUT\n:EVIL"], []),
    ):
        bad_ipt = {"4": {"chains": chains, "rules": rules, "jump": True}}
        with pytest.raises(StateError, match="more than harden's own chains"):
            iptables.parse_snapshot(json.dumps(bad_ipt))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_an_ancestor_another_user_controls_is_refused(tmp_path: Path) -> None:
    """The user who owns a parent can swap the state directory for a symlink while root
    runs rollback (as the watchdog does): every ancestor must be root's or ours."""
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    (parent / "state").mkdir(mode=0o700)  # root's own, 0700: fine by itself
    os.chown(parent, 65534, 65534)
    with pytest.raises(UnsafeStateDir, match="an ancestor of the state directory, belongs"):
        StateDir(parent / "state").load()
    os.chown(parent, 0, 0)
    parent.chmod(0o777)  # writable by others, not sticky
    with pytest.raises(UnsafeStateDir, match="an ancestor of the state directory, is writable"):
        StateDir(parent / "state").load()
    parent.chmod(0o1777)  # like /tmp: root's and sticky, so nobody can swap our entry
    assert StateDir(parent / "state").load() == State()


def test_io_stays_in_the_directory_checked_first(tmp_path: Path) -> None:
    """A state directory swapped for a symlink after it was checked redirects nothing."""
    first, moved, elsewhere = tmp_path / "state", tmp_path / "moved", tmp_path / "elsewhere"
    states = StateDir(first)
    with states.locked():
        states.save(State())
        first.rename(moved)
        elsewhere.mkdir()
        first.symlink_to(elsewhere)
        states.save_snapshot({"nftables": "", "iptables": ""})
        states.save_persist_undo({"/etc/harden/harden.nft": (None, 0o644)})
        assert states.load() == State()
    assert list(elsewhere.iterdir()) == []
    assert {p.name for p in moved.iterdir()} >= {"state.json", "snapshot.json", "persisted.json"}
    with pytest.raises(UnsafeStateDir, match="symlink"):
        StateDir(first).load()  # and a fresh start refuses the link


def test_a_persist_record_may_name_only_hardens_boot_files(tmp_path: Path) -> None:
    """A rollback writes what persisted.json names, as root: only harden's boot files."""
    states = StateDir(tmp_path / "state")
    root = tmp_path / "root"
    good = {
        f"{root}/etc/harden/harden.nft": (None, 0o644),
        f"{root}/etc/systemd/system/harden.service": ("[Unit]\n", 0o644),
        f"{root}/etc/systemd/system/sysinit.target.wants/harden.service": (
            "/etc/systemd/system/harden.service",
            -1,
        ),
    }
    states.save_persist_undo(good)
    assert states.load_persist_undo() == good
    bad_records: list[dict[str, tuple[str | None, int]]] = [
        {"/etc/shadow": ("root::0:0\n", 0o640)},
        {f"{root}/etc/harden/../../etc/cron.d/x": ("* * * * * root sh\n", 0o644)},
        {
            f"{root}/etc/systemd/system/sysinit.target.wants/harden.service": (
                "/etc/systemd/system/evil.service",
                -1,
            )
        },
        {f"{root}/etc/harden/harden.nft": ("/etc/passwd", -1)},  # a link where a file goes
        {"/a/etc/harden/harden.nft": (None, 0o644), "/b/etc/harden/harden.nft": (None, 0o644)},
    ]
    for record in bad_records:
        states.save_persist_undo(record)
        with pytest.raises(StateError, match="not a record harden wrote"):
            states.load_persist_undo()
