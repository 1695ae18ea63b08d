"""harden's state: what is applied, what was before it, and a pending confirmation.

``State`` is a pure state machine (every transition returns a new State and refuses
an illegal one); ``StateDir`` keeps it on disk, written atomically (temp file +
rename) under an flock, so apply, ``harden confirm`` and the rollback watchdog never
see half a record. See docs/design.md, "The confirm window and the watchdog".
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, get_args

from harden import defaults
from harden.core.render import Backend
from harden.errors import ApplyError, HardenError, StateError
from harden.files import write_atomic

DEFAULT_STATE_DIR = defaults.STATE_DIR
HISTORY = 20  # events kept


@dataclass(frozen=True)
class Applied:
    """One ruleset that harden loaded: where it came from and what the kernel showed."""

    backend: Backend
    manifest: str
    manifest_sha256: str
    ruleset_sha256: str
    applied_at: float
    live_sha256: str  # harden's live rules right after loading them


@dataclass(frozen=True)
class Pending:
    """An apply waiting for ``harden confirm`` before its deadline."""

    token: str
    deadline: float  # time.time()
    watchdog_pid: int | None = None
    persist: bool = False
    root: str = "/"


@dataclass(frozen=True)
class State:
    """The record: the current ruleset, the one before it, a pending confirmation."""

    current: Applied | None = None
    previous: Applied | None = None  # what a rollback restores (None: harden had nothing)
    pending: Pending | None = None
    live_sha256: str = ""  # harden's live rules after the last transition
    history: tuple[dict[str, Any], ...] = ()  # the last events, newest last

    def _event(self, what: str, when: float, **extra: Any) -> tuple[dict[str, Any], ...]:
        return (*self.history, {"event": what, "at": when, **extra})[-HISTORY:]

    def ensure_settled(self) -> None:
        """Refuse a new apply while the last one waits for confirmation."""
        if self.pending is not None:
            raise HardenError(
                "a confirmation is pending from the last apply: run 'harden confirm' or "
                "'harden rollback' first"
            )

    def applied(self, new: Applied, pending: Pending | None) -> State:
        """A ruleset was loaded; with ``pending`` it rolls back unless confirmed."""
        self.ensure_settled()
        return State(
            current=new,
            previous=self.current,
            pending=pending,
            live_sha256=new.live_sha256,
            history=self._event("applied", new.applied_at, manifest_sha256=new.manifest_sha256),
        )

    def confirmed(self, now: float) -> State:
        """The pending ruleset is kept: no rollback."""
        if self.pending is None:
            raise HardenError("nothing to confirm: no apply is waiting for confirmation")
        if now > self.pending.deadline:
            raise ApplyError("too late: the confirm window has passed and the rollback ran")
        return replace(self, pending=None, history=self._event("confirmed", now))

    def rolled_back(self, now: float, live_sha256: str, reason: str = "") -> State:
        """The rules from before the last apply are live again."""
        if self.current is None:
            raise HardenError("nothing to roll back: harden has applied nothing")
        extra = {"reason": reason} if reason else {}
        return State(
            current=self.previous,
            previous=None,
            pending=None,
            live_sha256=live_sha256,
            history=self._event("rolled back", now, **extra),
        )

    def with_watchdog(self, pid: int) -> State:
        """Remember the pending rollback's watchdog process."""
        if self.pending is None:
            raise HardenError("no pending apply to attach a watchdog to")
        return replace(self, pending=replace(self.pending, watchdog_pid=pid))

    def to_json(self) -> dict[str, Any]:
        """The on-disk record."""
        return {"version": 2, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        """Parse the on-disk record; StateError if it is not one."""
        try:
            if data.get("version") != 2:
                return _from_version_1(data)
            return State(
                current=_applied(data.get("current")),
                previous=_applied(data.get("previous")),
                pending=Pending(**data["pending"]) if data.get("pending") else None,
                live_sha256=str(data.get("live_sha256", "")),
                history=tuple(data.get("history", ())),
            )
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise StateError(f"state record is not one harden wrote ({exc})") from None


def _applied(data: dict[str, Any] | None) -> Applied | None:
    if data is None:
        return None
    applied = Applied(**data)
    if applied.backend not in get_args(Backend):
        raise ValueError(f"unknown backend {applied.backend!r}")
    return applied


def _from_version_1(data: dict[str, Any]) -> State:
    # The flat record of harden 0.1 (one apply, no "previous").
    current = None
    if data.get("backend"):
        current = _applied(
            {
                "backend": data["backend"],
                "manifest": data.get("manifest", ""),
                "manifest_sha256": data.get("manifest_sha256", ""),
                "ruleset_sha256": data.get("ruleset_sha256", ""),
                "applied_at": data.get("applied_at", 0.0),
                "live_sha256": data.get("live_sha256", ""),
            }
        )
    pending = data.get("pending")
    return State(
        current=current,
        pending=Pending(**pending) if pending else None,
        live_sha256=str(data.get("live_sha256", "")),
        history=tuple(data.get("history", ())),
    )


class StateDir:
    """The files of a state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def record(self) -> Path:
        """The JSON state record."""
        return self.path / "state.json"

    @property
    def snapshot_file(self) -> Path:
        """Harden's rules as they were before the last apply."""
        return self.path / "snapshot"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state directory's lock (apply, confirm, rollback, watchdog)."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self) -> State:
        """The record, or an empty one if nothing was ever applied."""
        try:
            data = json.loads(self.record.read_text())
        except FileNotFoundError:
            return State()
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {self.record}: {exc}") from None
        if not isinstance(data, dict):
            raise StateError(f"{self.record} is not a harden state record")
        return State.from_json(data)

    def save(self, state: State) -> None:
        """Write the record atomically."""
        write_atomic(self.record, json.dumps(state.to_json(), indent=2) + "\n")

    def save_snapshot(self, text: str) -> None:
        """Keep the pre-apply rules (may be empty: harden had nothing loaded)."""
        write_atomic(self.snapshot_file, text)

    def save_files(self, files: dict[str, str]) -> None:
        """Keep the rendered files that were loaded (persisted on confirm)."""
        write_atomic(self.path / "applied.json", json.dumps(files, indent=2) + "\n")

    def load_files(self) -> dict[str, str]:
        """The rendered files of the last apply."""
        files: dict[str, str] = json.loads((self.path / "applied.json").read_text())
        return files

    def load_snapshot(self) -> str | None:
        """The kept snapshot, or None if there is none."""
        try:
            return self.snapshot_file.read_text()
        except FileNotFoundError:
            return None
