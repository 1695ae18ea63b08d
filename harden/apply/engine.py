"""Apply safely: check -> snapshot -> load -> confirm or roll back; diff and status.

Only harden's own table (or chains) is ever loaded, snapshotted or restored
(docs/design.md, "Why apply cannot lock you out"). Each step below is one function;
the state transitions themselves are pure (harden.apply.state.State).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harden.apply.backends import Firewall, firewall
from harden.apply.guard import lockout_reason, require_namespace
from harden.apply.state import Applied, Pending, State, StateDir
from harden.core.policy import Policy, build_policy
from harden.core.render import Backend
from harden.core.results import ApplyResult, Drift, StatusReport
from harden.errors import HardenError, LockoutRefused
from harden.files import read_manifest

WATCHDOG = "harden.apply.watchdog"


def digest(text: str) -> str:
    """sha256 of text, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Prepared:
    """Everything decided before the firewall is touched."""

    manifest: Path
    manifest_sha256: str
    policy: Policy
    files: dict[str, str]

    @property
    def ruleset_sha256(self) -> str:
        """sha256 of the rendered files, concatenated."""
        return digest("".join(self.files.values()))


def prepare(manifest_path: Path, fw: Firewall) -> Prepared:
    """Read the manifest once, validate it and render it (a bad manifest fails here)."""
    text, manifest = read_manifest(manifest_path)
    policy = build_policy(manifest)
    return Prepared(manifest_path, digest(text), policy, fw.render(policy))


def check_lockout(policy: Policy, env: Mapping[str, str]) -> None:
    """Refuse (LockoutRefused, exit 2) a ruleset that would cut SSH access."""
    reason = lockout_reason(policy, env)
    if reason:
        raise LockoutRefused(f"refusing to apply: {reason} (use --force to apply anyway)")


def apply(
    manifest_path: Path,
    backend: Backend,
    *,
    state_dir: Path,
    confirm: int | None = None,
    force: bool = False,
    persist_to: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ApplyResult:
    """Check, snapshot and load the manifest's ruleset; arm the rollback watchdog."""
    fw = firewall(backend)
    prepared = prepare(manifest_path, fw)
    require_namespace()
    if not force:
        check_lockout(prepared.policy, os.environ if env is None else env)
    states = StateDir(state_dir)
    result = ApplyResult(
        changed=False,
        backend=backend,
        manifest=str(manifest_path),
        manifest_sha256=prepared.manifest_sha256,
        ruleset_sha256=prepared.ruleset_sha256,
    )
    with states.locked():
        state = states.load()
        state.ensure_settled()
        canonical = fw.check(prepared.files)
        if fw.live() == canonical:
            result.message = "unchanged: the live ruleset already matches the manifest"
            if persist_to is not None:  # asked to persist what is live: still do that
                result.persisted = [str(p) for p in fw.persist(prepared.files, persist_to)]
            return result
        states.save_snapshot(fw.snapshot())
        fw.load(prepared.files)  # on failure the previous rules are in place
        states.save_files(prepared.files)
        result.changed = True
        state = _record(states, state, fw, prepared, confirm, persist_to)
        if state.pending is not None:
            result.confirm_deadline = state.pending.deadline
            result.message = f"applied; rolls back in {confirm} s unless 'harden confirm' runs"
        else:
            result.message = "applied"
            if persist_to is not None:
                result.persisted = [str(p) for p in fw.persist(prepared.files, persist_to)]
    return result


def _record(
    states: StateDir,
    state: State,
    fw: Firewall,
    prepared: Prepared,
    confirm: int | None,
    persist_to: Path | None,
) -> State:
    now = time.time()
    applied = Applied(
        backend=fw.name,
        manifest=str(prepared.manifest),
        manifest_sha256=prepared.manifest_sha256,
        ruleset_sha256=prepared.ruleset_sha256,
        applied_at=now,
        live_sha256=digest(fw.live()),
    )
    pending = None
    if confirm is not None:
        token = secrets.token_hex(8)
        pending = Pending(
            token, now + confirm, None, persist_to is not None, str(persist_to or "/")
        )
    state = state.applied(applied, pending)
    if pending is not None:
        # The watchdog takes the lock before it reads the record, so it sees this one.
        state = state.with_watchdog(_start_watchdog(states.path, pending.token))
    states.save(state)
    return state


def _start_watchdog(state_dir: Path, token: str) -> int:
    # Its own session and no inherited descriptors: it outlives this process, its
    # terminal and the SSH session, and runs in the same network namespace.
    # Isolated (-I: no current directory or user site on the import path, no PYTHON*
    # variables) and started in /, so root never runs code from where apply was called.
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", WATCHDOG, str(state_dir.resolve()), token],
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    return proc.pid


def _stop_watchdog(pid: int | None) -> None:
    if pid is None:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if WATCHDOG.encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)


def confirm(state_dir: Path) -> str:
    """Keep the applied ruleset: cancel the pending rollback (and persist if asked)."""
    states = StateDir(state_dir)
    with states.locked():
        state = states.load()
        pending = state.pending
        state = state.confirmed(time.time())
        states.save(state)
    assert pending is not None and state.current is not None  # confirmed() checked
    _stop_watchdog(pending.watchdog_pid)
    message = "confirmed: the rollback is cancelled"
    if pending.persist:
        fw = firewall(state.current.backend)
        paths = fw.persist(states.load_files(), Path(pending.root))
        message += "; persisted to " + ", ".join(map(str, paths))
    return message


def _restore(states: StateDir, state: State, reason: str = "") -> State:
    snapshot = states.load_snapshot()
    if snapshot is None or state.current is None:
        raise HardenError(f"nothing to roll back: no snapshot in {states.path}")
    fw = firewall(state.current.backend)
    fw.restore(snapshot)
    state = state.rolled_back(time.time(), digest(fw.live()), reason)
    states.save(state)
    states.snapshot_file.unlink()
    return state


def rollback(state_dir: Path) -> str:
    """Restore the snapshot taken before the last apply, now."""
    require_namespace()
    states = StateDir(state_dir)
    with states.locked():
        before = states.load()
        _restore(states, before)
    if before.pending is not None:
        _stop_watchdog(before.pending.watchdog_pid)
    return "rolled back: the rules from before the last apply are restored"


def rollback_if_pending(state_dir: Path, token: str) -> bool:
    """The watchdog's deadline action: roll back if this apply is still unconfirmed."""
    require_namespace()
    states = StateDir(state_dir)
    with states.locked():
        state = states.load()
        if state.pending is None or state.pending.token != token:
            return False
        _restore(states, state, reason="not confirmed in time")
    return True


def diff(manifest_path: Path, backend: Backend) -> Drift:
    """Whether the live rules drifted from what the manifest renders, and a unified diff."""
    fw = firewall(backend)
    prepared = prepare(manifest_path, fw)
    want, have = fw.check(prepared.files), fw.live()
    if want == have:
        return Drift(False, "")
    text = "".join(
        difflib.unified_diff(
            have.splitlines(True), want.splitlines(True), "live", f"{manifest_path} ({backend})"
        )
    )
    return Drift(True, text or "(harden's rules are absent)\n")


def status(state_dir: Path) -> StatusReport:
    """What is applied, when, from which manifest, and whether a confirmation is pending."""
    state = StateDir(state_dir).load()
    current = state.current
    if current is None:
        return StatusReport(str(state_dir), history=state.history)
    deadline = left = None
    if state.pending is not None:
        deadline = state.pending.deadline
        left = max(0.0, round(deadline - time.time(), 1))
    live = digest(firewall(current.backend).live())
    return StatusReport(
        state_dir=str(state_dir),
        backend=current.backend,
        manifest=current.manifest,
        manifest_sha256=current.manifest_sha256,
        applied_at=current.applied_at,
        pending_deadline=deadline,
        seconds_left=left,
        live_matches_last_apply=live == state.live_sha256,
        history=state.history,
    )
