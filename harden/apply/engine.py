"""Apply safely: check -> snapshot -> load -> confirm or roll back; diff and status.

Only harden's own table (or chains) is ever loaded, snapshotted or restored. The
pure parts (the SSH guard, comparisons) take plain data; the rest goes through a
backend (harden.apply.backends) and the state directory (harden.apply.state).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import ipaddress
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harden.apply.backends import Firewall, firewall
from harden.apply.persist import persist
from harden.apply.state import Pending, StateDir
from harden.core.manifest import load_manifest
from harden.core.policy import Policy, build_policy
from harden.core.render import Backend, render
from harden.errors import ApplyError, EnvironmentProblem, HardenError
from harden.lab.netns import current_namespace_name


@dataclass
class ApplyResult:
    """What ``harden apply`` did (its JSON output)."""

    changed: bool
    backend: str
    manifest: str
    manifest_sha256: str
    ruleset_sha256: str
    confirm_deadline: float | None = None
    persisted: list[str] = field(default_factory=list)
    message: str = ""


def require_namespace() -> None:
    """Refuse to touch a ruleset outside a named netns when HARDEN_REQUIRE_NETNS=1.

    The test suite sets it: a test that forgets ``ip netns exec`` then fails
    instead of firewalling the machine it runs on.
    """
    if os.environ.get("HARDEN_REQUIRE_NETNS") == "1" and current_namespace_name() is None:
        raise EnvironmentProblem(
            "HARDEN_REQUIRE_NETNS=1 and this process is not inside a named network namespace: "
            "refusing to change the firewall"
        )


def ssh_guard(policy: Policy, env: Mapping[str, str], sshd_ports: list[int]) -> str | None:
    """Why applying ``policy`` would lock the operator out, or None if it would not."""
    connection = env.get("SSH_CONNECTION", "").split()
    if len(connection) == 4:
        client = ipaddress.ip_address(connection[0].removeprefix("::ffff:"))
        port = int(connection[3])
        if not _accepts(policy, client, port):
            return (
                f"this session came over SSH from {client} to port {port}, and the manifest "
                f"does not allow tcp/{port} from {client}: you could not reconnect"
            )
    for port in sshd_ports:
        if not _accepts(policy, None, port):
            return f"sshd listens on tcp/{port}, and the manifest closes it to every source"
    return None


def _accepts(
    policy: Policy, client: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int
) -> bool:
    families = [client.version] if client is not None else [4, 6]
    for allow in policy.allows:
        if allow.proto != "tcp" or not any(r.first <= port <= r.last for r in allow.ports):
            continue
        for family in families:
            sources = allow.sources(family)  # type: ignore[arg-type]
            if sources is None or (sources and client is None):
                return True
            if client is not None and any(client in net for net in sources):
                return True
    return False


def sshd_ports() -> list[int]:
    """TCP ports sshd listens on in this network namespace (ss from iproute2)."""
    proc = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=False)
    ports = set()
    for line in proc.stdout.splitlines():
        if '"sshd"' in line:
            local = line.split()[3]
            ports.add(int(local.rsplit(":", 1)[1]))
    return sorted(ports)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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
    policy = build_policy(load_manifest(manifest_path))  # a bad manifest fails here, exit 2
    manifest_text = manifest_path.read_text(encoding="utf-8")
    files = render(policy, backend)
    require_namespace()
    if not force:
        reason = ssh_guard(policy, os.environ if env is None else env, sshd_ports())
        if reason:
            raise HardenError(f"refusing to apply: {reason} (use --force to apply anyway)")
    fw = firewall(backend)
    states = StateDir(state_dir)
    result = ApplyResult(
        changed=False,
        backend=backend,
        manifest=str(manifest_path),
        manifest_sha256=_digest(manifest_text),
        ruleset_sha256=_digest("".join(files.values())),
    )
    with states.locked():
        state = states.load()
        if state.pending is not None:
            raise HardenError(
                "a confirmation is pending from the last apply: run 'harden confirm' or "
                "'harden rollback' first"
            )
        fw.check(files)
        if fw.live() == fw.canonical(files):
            result.message = "unchanged: the live ruleset already matches the manifest"
            if persist_to is not None:  # asked to persist what is live: still do that
                result.persisted = [str(p) for p in persist(files, backend, persist_to)]
            return result
        snapshot = fw.snapshot()
        states.save_snapshot(snapshot)
        fw.load(files)  # one transaction: on failure the previous rules are untouched
        states.save_files(files)
        now = time.time()
        state.live_sha256 = _digest(fw.live())
        state.backend, state.manifest = backend, str(manifest_path)
        state.manifest_sha256, state.ruleset_sha256 = result.manifest_sha256, result.ruleset_sha256
        state.applied_at = now
        state.event("applied", now, manifest_sha256=result.manifest_sha256)
        result.changed = True
        if confirm is not None:
            token = secrets.token_hex(8)
            state.pending = Pending(
                token, now + confirm, None, persist_to is not None, str(persist_to or "/")
            )
            states.save(state)
            state.pending.watchdog_pid = _start_watchdog(state_dir, token)
            states.save(state)
            result.confirm_deadline = state.pending.deadline
            result.message = f"applied; rolls back in {confirm} s unless 'harden confirm' runs"
        else:
            states.save(state)
            result.message = "applied"
            if persist_to is not None:
                result.persisted = [str(p) for p in persist(files, backend, persist_to)]
    return result


def _start_watchdog(state_dir: Path, token: str) -> int:
    # Its own session and no inherited descriptors: it outlives this process, its
    # terminal and the SSH session, and runs in the same network namespace.
    proc = subprocess.Popen(
        [sys.executable, "-m", "harden.apply.watchdog", str(state_dir), token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    return proc.pid


def confirm(state_dir: Path) -> str:
    """Keep the applied ruleset: cancel the pending rollback (and persist if asked)."""
    states = StateDir(state_dir)
    with states.locked():
        state = states.load()
        pending = state.pending
        if pending is None:
            raise HardenError("nothing to confirm: no apply is waiting for confirmation")
        if time.time() > pending.deadline:
            raise ApplyError("too late: the confirm window has passed and the rollback ran")
        state.pending = None
        state.event("confirmed", time.time())
        states.save(state)
    _stop_watchdog(pending.watchdog_pid)
    message = "confirmed: the rollback is cancelled"
    if pending.persist:
        paths = persist(states.load_files(), state.backend, Path(pending.root))  # type: ignore[arg-type]
        message += "; persisted to " + ", ".join(map(str, paths))
    return message


def _stop_watchdog(pid: int | None) -> None:
    if pid is None:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"harden.apply.watchdog" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)


def rollback(state_dir: Path) -> str:
    """Restore the snapshot taken before the last apply, now."""
    require_namespace()
    states = StateDir(state_dir)
    with states.locked():
        state = states.load()
        snapshot = states.load_snapshot()
        if snapshot is None or not state.backend:
            raise HardenError("nothing to roll back: no snapshot in " + str(state_dir))
        firewall(state.backend).restore(snapshot)  # type: ignore[arg-type]
        pending, state.pending = state.pending, None
        state.live_sha256 = _digest(firewall(state.backend).live())  # type: ignore[arg-type]
        state.event("rolled back", time.time())
        states.save(state)
        states.snapshot_file.unlink()
    if pending is not None:
        _stop_watchdog(pending.watchdog_pid)
    return "rolled back: the rules from before the last apply are restored"


def rollback_if_pending(state_dir: Path, token: str) -> bool:
    """The watchdog's deadline action: roll back if this apply is still unconfirmed."""
    require_namespace()
    states = StateDir(state_dir)
    with states.locked():
        state = states.load()
        if state.pending is None or state.pending.token != token:
            return False
        snapshot = states.load_snapshot() or ""
        firewall(state.backend).restore(snapshot)  # type: ignore[arg-type]
        state.pending = None
        state.live_sha256 = _digest(firewall(state.backend).live())  # type: ignore[arg-type]
        state.event("rolled back", time.time(), reason="not confirmed in time")
        states.save(state)
    return True


def diff(manifest_path: Path, backend: Backend) -> tuple[bool, str]:
    """Whether the live rules drifted from what the manifest renders, and a unified diff."""
    files = render(build_policy(load_manifest(manifest_path)), backend)
    fw = firewall(backend)
    want, have = fw.canonical(files), fw.live()
    if want == have:
        return False, ""
    text = "".join(
        difflib.unified_diff(
            have.splitlines(True), want.splitlines(True), "live", f"{manifest_path} ({backend})"
        )
    )
    return True, text or "(harden's rules are absent)\n"


def status(state_dir: Path) -> dict[str, Any]:
    """What is applied, when, from which manifest, and whether a confirmation is pending."""
    state = StateDir(state_dir).load()
    out: dict[str, Any] = {
        "applied": bool(state.backend),
        "backend": state.backend or None,
        "manifest": state.manifest or None,
        "manifest_sha256": state.manifest_sha256 or None,
        "applied_at": state.applied_at or None,
        "pending_confirmation": None,
        "live_matches_last_apply": None,
        "history": state.history,
    }
    if state.pending is not None:
        out["pending_confirmation"] = {
            "deadline": state.pending.deadline,
            "seconds_left": max(0.0, round(state.pending.deadline - time.time(), 1)),
        }
    if state.backend:
        fw: Firewall = firewall(state.backend)  # type: ignore[arg-type]
        out["live_matches_last_apply"] = _digest(fw.live()) == state.live_sha256
    return out
