"""Apply safely: check -> snapshot -> record -> watchdog -> load; confirm or roll back.

Only harden's own table (or chains) is ever loaded, snapshotted or restored
(docs/design.md, "Why apply cannot lock you out"). The record of an apply is written
before its rules are loaded and the rollback watchdog is running before the load, so
a crash at any instant leaves either the old rules, or the new ones with a way back
(docs/design.md, "Check, snapshot, load"). The state transitions themselves are pure
(harden.apply.state.State).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harden.apply import boot
from harden.apply.guard import lockout_reason, require_namespace
from harden.apply.hostinfo import (
    FIREWALLD_IPTABLES,
    container_bridges,
    firewalld,
    other_firewalls,
)
from harden.apply.results import ApplyResult, Drift, Removed, StatusReport, Validation
from harden.apply.state import Applied, Pending, State, StateDir
from harden.backends import Firewall, firewall, names, others
from harden.errors import (
    ApplyError,
    EnvironmentProblem,
    HardenError,
    InternalError,
    LockoutRefused,
    Refused,
)
from harden.files import read_manifest, write_atomic
from harden.gcpause import paused_gc
from harden.policy.containers import bridge_warnings
from harden.policy.model import Policy, build_policy
from harden.privileges import needs_net_admin, require_net_admin
from harden.types import Backend

WATCHDOG = "harden.apply.watchdog"
WATCHDOG_START_SECONDS = 10.0


def digest(text: str) -> str:
    """sha256 of text, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Prepared:
    """Everything decided before the firewall is touched."""

    manifest: Path
    manifest_sha256: str
    policy: Policy | None  # None once nothing needs it (apply frees it before its load)
    files: dict[str, str]

    @property
    def rules(self) -> Policy:
        """The policy, while it is held."""
        if self.policy is None:
            raise InternalError("the policy was released before its last use")
        return self.policy

    @property
    def ruleset_sha256(self) -> str:
        """sha256 of the rendered files, concatenated."""
        return digest("".join(self.files.values()))


def prepare(manifest_path: Path, fw: Firewall) -> Prepared:
    """Read the manifest once, validate it and render it (a bad manifest fails here)."""
    with paused_gc():  # harden/gcpause.py; the render too (nftables' load collects after)
        text, manifest = read_manifest(manifest_path)
        policy = build_policy(manifest)
        return Prepared(manifest_path, digest(text), policy, fw.render(policy))


def check_lockout(policy: Policy, env: Mapping[str, str]) -> None:
    """Refuse (LockoutRefused, exit 2) a ruleset that would cut SSH access."""
    reason = lockout_reason(policy, env)
    if reason:
        raise LockoutRefused(f"refusing to apply: {reason} (use --force to apply anyway)")


@dataclass(frozen=True)
class BootPlan:
    """What an apply does to the boot files under ``root``."""

    root: Path
    persist_to: Path | None  # install them here (now, or on confirm)
    drop: bool  # --no-persist: remove harden's
    following: bool  # neither flag: harden's are there, so they follow what is applied

    @classmethod
    def of(cls, persist: bool | None, root: Path) -> BootPlan:
        """Decide from --persist / --no-persist / neither and what is under ``root``."""
        there = boot.present(root)
        following = persist is None and there
        return cls(
            root, root if persist or following else None, persist is False and there, following
        )


def check_firewalld(backend: Backend) -> None:
    """Refuse (exit 2) harden's iptables backend where firewalld's would flush it."""
    found = firewalld()
    if backend != "iptables" or found is None or found["backend"] != "iptables":
        return
    if found["enabled"] or found["running"]:
        raise Refused(f"refusing to apply: {FIREWALLD_IPTABLES} (or --force)")


def apply(
    manifest_path: Path,
    backend: Backend,
    *,
    state_dir: Path,
    confirm: int | None = None,
    force: bool = False,
    persist: bool | None = None,
    root: Path = Path("/"),
    env: Mapping[str, str] | None = None,
) -> ApplyResult:
    """Check, snapshot, record, arm the watchdog, load; then the boot files under ``root``.

    ``persist``: True installs them, False removes harden's, None keeps them in step:
    installed when harden's boot files are there already, so the next boot loads what is
    live (docs/design.md, "Boot files follow what is live").
    """
    # Recorded absolute: 'harden status' run from another directory must find the file.
    manifest_path = manifest_path.absolute()
    plan = BootPlan.of(persist, root)
    fw = firewall(backend)
    prepared = prepare(manifest_path, fw)
    require_net_admin("apply", "it loads rules into the kernel and records them as root's")
    require_namespace()
    if not force:
        check_lockout(prepared.rules, os.environ if env is None else env)
        check_firewalld(backend)
    states = StateDir(state_dir)
    result = ApplyResult(
        False, backend, str(manifest_path), prepared.manifest_sha256, prepared.ruleset_sha256
    )
    with states.locked():
        old = states.load()
        old.ensure_settled()
        if plan.persist_to is not None:
            check_persist_targets(fw.persist_targets(plan.persist_to))
        others = _other_backend_rules(backend)
        live = fw.live()
        canonical = _canonical_before_load(fw, prepared, old, live, others)
        # Other firewalls are not harden's to change: read now, while the networks are
        # held, which then go before the load's peak (100,000 sources: 43 MB of 180).
        _note_others(result, prepared.rules)
        prepared = replace(prepared, policy=None)
        if canonical is not None and live == canonical and not others:
            _unchanged(result, states, old, fw, prepared, canonical, plan)
            return _note_boot(result, plan)
        deadline = _transaction(
            states,
            fw,
            prepared,
            old,
            canonical,
            others,
            confirm=confirm,
            persist_to=plan.persist_to,
        )
        _changed(result, states, fw, prepared, plan, deadline, others, confirm)
    return _note_boot(result, plan)


def _canonical_before_load(
    fw: Firewall, prepared: Prepared, old: State, live: str, others: Mapping[Backend, str]
) -> str | None:
    """The rendered rules as the kernel lists them, where the apply needs that first.

    A backend that loads in two steps (iptables, one per family) loads in a scratch
    namespace first, so that a ruleset either family refuses changes nothing. An atomic
    one (nftables) need not: the kernel takes or refuses its transaction whole, and
    what it lists once loaded is recorded then (None here). Its canonical form is still
    asked for to tell an unchanged apply from a change, unless the record tells already:
    nothing of harden's live, or live rules that are the recorded ones of other rules.
    At 100,000 sources the scratch load and listing are 2 of a 5 s apply
    (docs/design.md, "Check, snapshot, load").
    """
    if not fw.atomic:
        return fw.check(prepared.files)
    if not live or others:
        return None
    current = old.current
    if current is not None and current.backend == fw.name and digest(live) == old.live_sha256:
        if current.ruleset_sha256 == prepared.ruleset_sha256:
            return live  # these very rules, loaded by the last apply and untouched since
        return None  # the last apply's rules, and these are others: a change
    return fw.check(prepared.files)  # no record of what is live (after a reset): compare


def _unchanged(
    result: ApplyResult,
    states: StateDir,
    old: State,
    fw: Firewall,
    prepared: Prepared,
    canonical: str,
    plan: BootPlan,
) -> None:
    """The rules are live already: record them as the applied ones, and the boot files."""
    result.message = "unchanged: the live ruleset already matches the manifest"
    # Still the applied rules from now on: status and rollback must say so.
    recorded = old.recorded(_applied(prepared, fw.name, canonical))
    if recorded != old:
        states.save(recorded)
    if plan.persist_to is not None:  # asked to persist what is live: still do that
        result.persisted = [str(p) for p in fw.persist(prepared.files, plan.persist_to)]
    elif plan.drop:
        result.unpersisted = [str(p) for p in boot.uninstall(plan.root)]


def _changed(
    result: ApplyResult,
    states: StateDir,
    fw: Firewall,
    prepared: Prepared,
    plan: BootPlan,
    deadline: float | None,
    others: Mapping[Backend, str],
    window: int | None,
) -> None:
    """After a load: the message, and the boot files (unless they wait for confirm)."""
    result.changed = True
    if deadline is not None:
        result.confirm_deadline = deadline
        result.message = f"applied; rolls back in {window} s unless 'harden confirm' runs"
    else:
        result.message = "applied"
        if plan.persist_to is not None:
            result.persisted = [
                str(p) for p in _persist(states, fw, prepared.files, plan.persist_to)
            ]
    if plan.drop:
        result.unpersisted = [str(p) for p in _drop_boot(states, fw, plan.root)]
    if others:
        result.message += f" (the {', '.join(others)} rules harden had loaded are removed)"


def _note_boot(result: ApplyResult, plan: BootPlan) -> ApplyResult:
    """Say what happened to the boot files: kept in step, installed later, or removed."""
    if result.persisted and plan.following:
        result.message += "; boot files kept in step with it (--no-persist removes them)"
    elif plan.following and result.confirm_deadline is not None:
        result.message += "; boot files follow on confirm (--no-persist removes them)"
    if result.unpersisted:
        result.message += (
            "; harden's boot files removed (--no-persist): nothing of harden's loads at boot"
        )
    return result


def _transaction(
    states: StateDir,
    fw: Firewall,
    prepared: Prepared,
    old: State,
    canonical: str | None,
    others: dict[Backend, str],
    *,
    confirm: int | None,
    persist_to: Path | None,
) -> float | None:
    """Snapshot, record the apply write-ahead, arm the watchdog, load; the confirm deadline.

    From the record on, 'harden rollback' has a way back; a failed load puts the rules
    and the record back before the error goes on.
    """
    snapshots = {**others, fw.name: fw.snapshot()}
    states.save_snapshot(snapshots)
    states.save_files(prepared.files)
    new = _applied(prepared, fw.name, canonical)
    now = new.applied_at
    deadline = None if confirm is None else now + confirm
    on_confirm = persist_to is not None and confirm is not None
    pending = Pending(secrets.token_hex(8), deadline, None, on_confirm, str(persist_to or "/"))
    state = old.applied(new, pending)
    states.save(state)  # write-ahead
    try:
        if deadline is not None:
            state = state.with_watchdog(_start_watchdog(states.path, pending.token, deadline))
            states.save(state)
        fw.load(prepared.files)
        for name in others:  # a backend switch: the other backend's rules go
            firewall(name).restore("")
    except HardenError:
        _put_back(snapshots)
        states.save(old)
        if state.pending is not None:
            _stop_watchdog(state.pending)
        raise
    states.save(state.loaded(None if canonical is not None else digest(fw.live())))
    # What an earlier apply's persist replaced is no longer this apply's to undo: a
    # rollback of this apply must leave the boot files of the rules it restores.
    states.drop_persist_undo()
    return deadline


def _applied(prepared: Prepared, backend: Backend, canonical: str | None) -> Applied:
    """The record of ``prepared`` as applied now, its rules listing as ``canonical``.

    None: not known before the load ("" until State.loaded records it).
    """
    return Applied(
        backend=backend,
        manifest=str(prepared.manifest),
        manifest_sha256=prepared.manifest_sha256,
        ruleset_sha256=prepared.ruleset_sha256,
        applied_at=time.time(),
        live_sha256=digest(canonical) if canonical is not None else "",
    )


def remove(state_dir: Path, root: Path = Path("/")) -> Removed:
    """Take harden's rules (both backends) and boot files away; other firewalls stay.

    Removing only ever opens what harden closed, so it cannot lock anyone out: in
    nftables harden's accepts were never final, and in iptables its chains RETURN to the
    rest of INPUT, so every other firewall still decides as before (docs/design.md,
    "harden only narrows, on both backends").
    """
    require_net_admin("remove", "it deletes harden's rules from the kernel")
    require_namespace()
    states = StateDir(state_dir)
    with states.locked():
        state = states.load()
        state.ensure_settled()
        gone = []
        for backend in names():
            fw = firewall(backend)
            try:
                loaded = bool(fw.live())
            except EnvironmentProblem:  # the backend's tools are not installed: nothing there
                continue
            if loaded:
                fw.restore("")
                gone.append(backend)
        files = boot.uninstall(root)
        states.drop_snapshot()
        states.save(state.removed(time.time()))
    chains, _ = other_firewalls()
    return Removed(tuple(gone), tuple(str(p) for p in files), tuple(c.label for c in chains))


def _note_others(result: ApplyResult, policy: Policy) -> ApplyResult:
    """Name the other firewalls on harden's hooks; warn of what they or the egress cut.

    A declared port one of them drops; a container or VM bridge the egress cuts off.
    """
    chains, warnings = other_firewalls(policy)
    result.others = [c.label for c in chains]
    result.warnings = warnings + bridge_warnings(policy, container_bridges())
    return result


def _other_backend_rules(backend: Backend) -> dict[Backend, str]:
    """Snapshots of harden's rules in the other backends, where any are loaded."""
    found = {}
    for name in others(backend):
        try:
            snapshot = firewall(name).snapshot()
        except EnvironmentProblem:
            continue  # that backend's tools are not installed: it cannot hold rules
        if snapshot:
            found[name] = snapshot
    return found


def _put_back(snapshots: Mapping[Backend, str]) -> None:
    for name, snapshot in snapshots.items():
        firewall(name).restore(snapshot)


def check_persist_targets(paths: list[Path]) -> None:
    """Make sure every boot file can be written before any rule is loaded."""
    for path in paths:
        try:
            # The nearest directory that exists: nothing is created before the rules load.
            parent = next(d for d in path.parents if d.exists())
            with tempfile.TemporaryFile(dir=parent):
                pass
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise ApplyError(f"cannot persist to {path}: not a regular file")
        except OSError as exc:
            raise ApplyError(
                f"cannot persist to {path}: {exc.strerror} (nothing was changed)"
            ) from None


def _persist(states: StateDir, fw: Firewall, files: dict[str, str], root: Path) -> list[Path]:
    """Install the boot files, remembering what they replaced so a rollback can undo it.

    Both backends' files are remembered: persisting one removes the other's, and a
    rollback must bring them back with the rules it restores.
    """
    _remember_boot_files(states, fw, root)
    return fw.persist(files, root)


def _remember_boot_files(states: StateDir, fw: Firewall, root: Path) -> None:
    """Record what every boot file holds now, for a rollback to put back."""
    before: dict[str, tuple[str | None, int]] = {}
    for path in fw.persist_targets(root):
        if path.is_file():
            before[str(path.absolute())] = (path.read_text(), path.stat().st_mode & 0o7777)
        else:
            before[str(path.absolute())] = (None, 0o644)
    link = (root / boot.WANTS).absolute()
    before[str(link)] = (str(link.readlink()) if link.is_symlink() else None, LINK)
    states.save_persist_undo(before)


LINK = -1  # the "mode" of a remembered symlink (the wants link that enables harden.service)


def _drop_boot(states: StateDir, fw: Firewall, root: Path) -> list[Path]:
    """Remove harden's boot files (--no-persist), remembering them for a rollback."""
    _remember_boot_files(states, fw, root)
    return boot.uninstall(root)


def _unpersist(states: StateDir) -> None:
    for name, (text, mode) in states.load_persist_undo().items():
        path = Path(name)
        if text is None:
            path.unlink(missing_ok=True)
        elif mode == LINK:
            path.unlink(missing_ok=True)
            path.symlink_to(text)
        else:
            write_atomic(path, text, mode=mode)
    states.drop_persist_undo()


def _start_watchdog(state_dir: Path, token: str, deadline: float) -> int:
    """Start the detached watchdog and wait until it says it runs (else nothing changed).

    Its own session and no inherited descriptors but the ready pipe: it outlives this
    process, its terminal and the SSH session, and runs in the same network namespace.
    Isolated (-I: no current directory or user site on the import path, no PYTHON*
    variables), with a minimal environment, started in /: root never runs code from
    where apply was called.
    """
    read_end, write_end = os.pipe()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    if "HARDEN_REQUIRE_NETNS" in os.environ:
        env["HARDEN_REQUIRE_NETNS"] = os.environ["HARDEN_REQUIRE_NETNS"]
    try:
        argv = [str(state_dir.absolute()), token, repr(deadline), str(write_end)]
        proc = subprocess.Popen(
            [sys.executable, "-I", "-m", WATCHDOG, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            pass_fds=(write_end,),
            cwd="/",
            env=env,
        )
    finally:
        os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], WATCHDOG_START_SECONDS)
        said = os.read(read_end, 16) if ready else b""
    finally:
        os.close(read_end)
    if said != b"ready\n":
        proc.kill()
        raise EnvironmentProblem(
            "the rollback watchdog did not start, so no rule was loaded "
            f"(exit {proc.poll()}; try 'python3 -I -m {WATCHDOG}' to see why)"
        )
    return proc.pid


def watchdog_alive(pending: Pending) -> bool:
    """Whether the pending apply's watchdog process still runs."""
    if pending.watchdog_pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pending.watchdog_pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return WATCHDOG.encode() in cmdline and pending.token.encode() in cmdline


def _stop_watchdog(pending: Pending) -> None:
    if watchdog_alive(pending):
        assert pending.watchdog_pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pending.watchdog_pid, 15)


def confirm(state_dir: Path) -> str:
    """Keep the applied ruleset: cancel the pending rollback (and persist if asked)."""
    require_net_admin("confirm", "it cancels root's pending rollback in the state directory")
    states = StateDir(state_dir)
    message = "confirmed: the rollback is cancelled"
    with states.locked():
        state = states.load()
        pending, current = state.pending, state.current
        if pending is None or current is None:
            last = state.history[-1] if state.history else {}
            if current is None or last.get("event") == "rolled back":
                raise Refused("nothing to confirm: no apply is waiting for confirmation")
            # 'apply --confirm N && verify && confirm' after an apply that changed nothing:
            # the live rules are the confirmed ones already.
            return "confirmed: nothing was waiting (the live rules are the last applied ones)"
        if pending.deadline is not None and time.time() > pending.deadline:
            if watchdog_alive(pending):
                raise ApplyError("too late: the confirm window has passed; the rollback runs now")
            raise ApplyError(
                "too late: the confirm window has passed, but its watchdog is not running, so "
                "nothing rolled back: run 'harden rollback' to restore the previous rules, or "
                "apply again"
            )
        fw = firewall(current.backend)
        live = digest(fw.live())
        if live != current.live_sha256:
            # A restart of harden.service or a reboot inside the window loaded other rules:
            # confirming would record (and persist) rules that are not running.
            raise ApplyError(
                "refusing to confirm: the live rules are not the ones this apply loaded "
                "(did harden.service restart, or the host reboot, inside the window?); "
                "nothing was confirmed or persisted: apply again, or 'harden rollback'"
            )
        state = state.confirmed(time.time(), live)
        if pending.persist:
            paths = _persist(states, fw, states.load_files(), Path(pending.root))
            message += "; persisted to " + ", ".join(map(str, paths))
        states.save(state)
    _stop_watchdog(pending)
    return message


def _restore(states: StateDir, state: State, reason: str = "") -> State:
    snapshots = states.load_snapshot()
    if snapshots is None or state.current is None:
        raise Refused(f"nothing to roll back: no snapshot in {states.path}")
    _put_back(snapshots)
    _unpersist(states)
    restored = state.previous
    live = digest(firewall(restored.backend).live()) if restored is not None else ""
    state = state.rolled_back(time.time(), live, reason)
    states.save(state)
    states.drop_snapshot()
    return state


def rollback(state_dir: Path) -> str:
    """Restore the rules (and boot files) from before the last apply, now."""
    require_net_admin("rollback", "it loads the previous rules into the kernel")
    require_namespace()
    states = StateDir(state_dir)
    with states.locked():
        before = states.load()
        after = _restore(states, before)
    if before.pending is not None:
        _stop_watchdog(before.pending)
    restored = after.current.manifest if after.current else "no harden rules"
    return f"rolled back: the rules from before the last apply are restored ({restored})"


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


def reset(state_dir: Path) -> str:
    """Move the state files aside: for a corrupt or foreign state directory."""
    states = StateDir(state_dir)
    moved = states.reset(time.time())
    if not moved:
        return f"nothing to reset in {state_dir}"
    return (
        "moved aside: " + ", ".join(p.name for p in moved) + "; harden's live rules are "
        "unchanged ('harden diff MANIFEST' compares them, 'harden apply' records them again)"
    )


def diff(manifest_path: Path, backend: Backend) -> Drift:
    """Whether the live rules drifted from what the manifest renders, and a unified diff."""
    fw = firewall(backend)
    prepared = prepare(manifest_path, fw)
    require_net_admin("diff", "it reads the live ruleset, which the kernel lists only to root")
    want, have = fw.check(prepared.files), fw.live()
    leftover = _other_backend_rules(backend)
    exposure = _exposure(prepared.rules)
    if want == have and not leftover:
        return Drift(bool(exposure["leaks"]), "", exposure)
    text = "".join(
        difflib.unified_diff(
            have.splitlines(True), want.splitlines(True), "live", f"{manifest_path} ({backend})"
        )
    )
    if want != have and not text:
        text = "(harden's rules are absent)\n"
    for name in leftover:
        text += f"(harden's {name} rules are also loaded: applying removes them)\n"
    return Drift(True, text, exposure)


def _exposure(policy: Policy) -> dict[str, list[str]]:
    """The whole live ruleset judged against ``policy``, as verify --witness judges it."""
    from harden.analysis.collect import snapshot
    from harden.analysis.crosscheck import static_check
    from harden.analysis.results import row_text

    try:
        check = static_check(policy, snapshot())
    except HardenError as exc:
        return {"leaks": [], "blocked": [], "unknown": [f"the live ruleset: {exc}"]}
    return {
        "leaks": [row_text(r) for r in check.leaks],
        "blocked": [row_text(r) for r in check.blocked],
        "unknown": [*check.unknown, *(row_text(r) for r in check.uncertain)],
    }


@needs_net_admin("status", "it compares harden's record with the live ruleset (root's)")
def status(state_dir: Path, root: Path = Path("/")) -> StatusReport:
    """What is applied, from which manifest, whether it is still live, what is pending."""
    states = StateDir(state_dir)
    state = states.load()
    boot_files = _boot_report(states, state, root)
    current = state.current
    pending = state.pending
    watchdog = None
    if pending is not None and pending.deadline is not None:
        watchdog = "running" if watchdog_alive(pending) else "not running"
    if current is None:
        chains, warnings = other_firewalls()
        return StatusReport(
            str(state_dir),
            history=state.history,
            boot=boot_files,
            others=tuple(c.to_json() for c in chains),
            warnings=tuple(warnings),
        )
    deadline = left = None
    if pending is not None and pending.deadline is not None:
        deadline = pending.deadline
        left = max(0.0, round(deadline - time.time(), 1))
    live = digest(firewall(current.backend).live())
    interrupted = (
        state.interrupted
        and pending is not None
        and (pending.deadline is None or watchdog != "running")
    )
    # What is live: after an apply killed before its load, that is still the previous
    # manifest's rules, not those of the manifest that never went live.
    shown: Applied | None = current
    if interrupted and live != current.live_sha256:
        previous = state.previous
        shown = previous if previous is not None and live == previous.live_sha256 else None
    summary: Validation | None = None
    live_policy: Policy | None = None
    if shown is not None:
        summary, live_policy = _allowed(Path(shown.manifest), shown.manifest_sha256)
    chains, warnings = other_firewalls(live_policy)
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
        interrupted=interrupted,
        boot=boot_files,
        others=tuple(c.to_json() for c in chains),
        warnings=tuple(warnings),
        watchdog=watchdog,
        allows=summary.allows if summary else None,
        trusted=summary.trusted if summary else (),
        forward=summary.forward if summary else None,
        egress=summary.egress if summary else None,
    )


def _boot_report(states: StateDir, state: State, root: Path) -> dict[str, Any]:
    """The ``boot`` of status: what loads at boot under ``root``, and if it is what runs."""
    described = boot.describe(root)
    return {
        **described,
        **_boot_state(state, root, described),
        "persisted_under": _persisted_root(states),
    }


def _persisted_root(states: StateDir) -> str | None:
    """Where the last persist wrote its boot files (its record names them), if known."""
    try:
        written = states.load_persist_undo()
    except HardenError:
        return None
    unit = f"/{boot.UNIT}"
    roots = {name[: -len(unit)] or "/" for name in written if name.endswith(unit)}
    return roots.pop() if len(roots) == 1 else None


def _boot_state(state: State, root: Path, described: dict[str, Any]) -> dict[str, Any]:
    """``state``: matches | stale | absent, and ``differs``: why stale.

    The boot files are compared with what is live (both loaded the same canonical way) and
    with the files of the last apply: a reboot must bring back what runs now.
    """
    if not boot.present(root):
        return {"state": "absent", "differs": []}
    differs = []
    if len(described["backends"]) != 1:
        differs.append(
            "both backends' rule files" if described["backends"] else "the unit without rules"
        )
    elif not described["enabled"]:
        differs.append("harden.service is not enabled")
    current = state.current
    if len(described["backends"]) == 1:
        backend: Backend = described["backends"][0]
        files = boot.read_rules(root, backend)
        if current is not None and current.backend != backend:
            differs.append(f"they load {backend}, the last apply was {current.backend}")
        fw = firewall(backend)
        try:
            if fw.check(files) != fw.live():
                differs.append("they do not load the live rules")
        except HardenError as exc:
            differs.append(f"they do not load: {exc}")
        # Rendered files in render()'s order, as Prepared.ruleset_sha256 digests them.
        last = current is not None and current.backend == backend
        if last and current and digest("".join(files.values())) != current.ruleset_sha256:
            differs.append(f"they are not the rules of the last apply ({current.manifest})")
    return {"state": "stale" if differs else "matches", "differs": differs}


def _allowed(path: Path, sha256: str) -> tuple[Validation | None, Policy | None]:
    """What the applied manifest allows, if its file still holds what was applied.

    The rules keep no manifest of their own: a file edited (or gone) since the apply
    cannot say what is live, so the answer is then None (unknown), never a guess.
    """
    try:
        text, manifest = read_manifest(path)
    except HardenError:
        return None, None
    if digest(text) != sha256:
        return None, None
    policy = build_policy(manifest)
    return Validation.of(str(path), manifest, policy), policy
